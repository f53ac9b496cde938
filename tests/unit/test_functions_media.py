"""Media ports: refs into the store an execution is given, with bytes, numpy and PIL helpers."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel

from servemesh.errors import InvalidObjectRef
from servemesh.functions import CSV, Image, Media
from servemesh.objects import MemoryStore, Objects


class Inputs(BaseModel):
    image: Image
    table: CSV | None = None


async def test_bytes_round_trip_through_the_given_store() -> None:
    async with Objects(MemoryStore()) as objects:
        ref = await Media.store(objects, b"\x00\x01")
        assert isinstance(ref, Media) and ref.startswith("obj-")
        assert await ref.read(objects) == b"\x00\x01"
        table = await CSV.store(objects, b"a,b\n1,2\n")
        assert await table.text(objects) == "a,b\n1,2\n"


async def test_numpy_and_pil_helpers() -> None:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    async with Objects(MemoryStore()) as objects:
        ref = await Image.from_numpy(objects, pixels)
        parsed = Inputs.model_validate({"image": ref})
        assert isinstance(parsed.image, Image)
        assert (await parsed.image.to_numpy(objects) == pixels).all()
        assert (await parsed.image.to_pil(objects)).size == (3, 2)


def test_a_media_port_accepts_refs_only() -> None:
    with pytest.raises(ValueError) as err:
        Inputs.model_validate({"image": "/etc/passwd"})
    assert "image" in str(err.value)
    assert issubclass(InvalidObjectRef, ValueError)
