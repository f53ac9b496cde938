"""Typed functions (seed 004): ``Inputs`` / ``Params`` / ``Outputs`` models, a lifecycle, JSON
Schema metadata, and an image builder (``servemesh.functions.build``). ``docs/functions.md``."""

from .context import FunctionContext
from .function import Empty, Function
from .loader import load_function
from .media import CSV, PDF, Audio, Image, Media, Video
from .validate import validate

__all__ = ["CSV", "PDF", "Audio", "Empty", "Function", "FunctionContext", "Image", "Media", "Video",
           "load_function", "validate"]
