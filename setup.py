"""The one compiled part of servemesh: the in-process call's per-item step
(``servemesh/runtime/_relay.c``). Optional: where it cannot be built (no C compiler
or no Python headers) the install goes on and the same path runs in Python."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("servemesh.runtime._relay", ["servemesh/runtime/_relay.c"], optional=True),
    ],
)
