"""The daemonless image builder: ``build(directory, options)`` then ``push(image, registry)``.

Modules: ``dockerfile`` (the instructions honoured), ``layers`` (deterministic tars),
``deps`` (the dependency layer), ``oci`` (config, manifest, layouts), ``registry`` (the
distribution API client and its auth), ``builder`` and ``push``.
"""

from .builder import BuildOptions, Image, build, image_reference
from .push import PushReport, push
from .registry import Credentials, Reference, RegistryClient

__all__ = ["BuildOptions", "Credentials", "Image", "PushReport", "Reference", "RegistryClient", "build",
           "image_reference", "push"]
