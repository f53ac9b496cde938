"""The HTTP surface of a typed function, on the gateway kit."""

from .api import FunctionApi

__all__ = ["FunctionApi"]
