"""Media ports: ``Image``, ``Audio``, ``Video``, ``PDF``, ``CSV`` (and ``Media`` for any bytes).

A media value is an object-store ref (``obj-<sha256>``, :mod:`servemesh.objects`), a
``str`` on the wire and in JSON Schema (``format: servemesh-object-ref`` with the media
type). Its bytes move through the store the execution is given, never through globals::

    @func.on_execute
    async def main(inputs: Inputs, params: Params, ctx: FunctionContext) -> Outputs:
        picture = await inputs.image.to_pil(ctx.objects)
        ...
        return Outputs(image=await Image.from_pil(ctx.objects, picture))

``to_numpy`` and ``to_pil`` need Pillow (``pip install pillow``); ``read`` and ``store`` need
nothing. Over HTTP, clients put bytes with ``POST /objects`` and read them with
``GET /objects/{ref}``.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar, TypeVar

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from ..errors import ConfigError, SerializationError
from ..objects import Objects, check_ref

M = TypeVar("M", bound="Media")


class Media(str):
    """An object-store ref to bytes of :attr:`media_type`."""

    media_type: ClassVar[str] = "application/octet-stream"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(cls._validate, core_schema.str_schema())

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "format": "servemesh-object-ref", "contentMediaType": cls.media_type,
                "description": f"{cls.__name__}: an object-store ref (POST /objects) to {cls.media_type} bytes"}

    @classmethod
    def _validate(cls, value: str) -> Media:
        return cls(check_ref(value))

    async def read(self, objects: Objects) -> bytes:
        """The media's bytes."""
        value = await objects.aget(str(self))
        if not isinstance(value, (bytes, bytearray)):
            raise SerializationError(f"{type(self).__name__} {self} holds {type(value).__name__}, not bytes")
        return bytes(value)

    @classmethod
    async def store(cls: type[M], objects: Objects, data: bytes, *, ttl: float | None = None) -> M:
        """Put ``data`` in the store: the media's ref."""
        return cls(await objects.acreate(bytes(data), ttl=ttl))


class Image(Media):
    media_type = "image/*"

    async def to_pil(self, objects: Objects) -> Any:
        image = _pil().open(io.BytesIO(await self.read(objects)))
        image.load()
        return image

    async def to_numpy(self, objects: Objects) -> Any:
        import numpy as np

        return np.asarray(await self.to_pil(objects))

    @classmethod
    async def from_pil(cls, objects: Objects, image: Any, format: str = "PNG") -> Image:
        out = io.BytesIO()
        image.save(out, format=format)
        return await cls.store(objects, out.getvalue())

    @classmethod
    async def from_numpy(cls, objects: Objects, array: Any, format: str = "PNG") -> Image:
        return await cls.from_pil(objects, _pil().fromarray(array), format)


class Audio(Media):
    media_type = "audio/*"


class Video(Media):
    media_type = "video/*"


class PDF(Media):
    media_type = "application/pdf"


class CSV(Media):
    media_type = "text/csv"

    async def text(self, objects: Objects, encoding: str = "utf-8") -> str:
        return (await self.read(objects)).decode(encoding)


def _pil() -> Any:
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise ConfigError("Image.to_pil / to_numpy / from_pil need Pillow: pip install pillow") from None
    return PILImage
