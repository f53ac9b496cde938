"""Function directories in the seed's layout (``category/name/version/``), written by tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

METADATA = '''
from pydantic import BaseModel, Field

from servemesh.functions import Function

func = Function(description="Echoes text", name="{name}", version="{version}")


@func.set_input
class Inputs(BaseModel):
{inputs}


@func.set_param
class Params(BaseModel):
    times: int = Field(1, ge=1, le=5)


@func.set_output
class Outputs(BaseModel):
    result: str
    served_by: str = ""
'''

MAIN = '''
import servemesh
from metadata import Inputs, Outputs, Params, func


@func.on_execute
async def main(inputs: Inputs, params: Params) -> Outputs:
    return Outputs(result=" ".join([{expression}] * params.times), served_by=servemesh.__file__)
'''


def write_function(root: Path, *, name: str = "echo", version: str = "1.0.0", inputs: str = "text: str",
                   expression: str = "inputs.text", dockerfile: str | None = None) -> Path:
    """``root/text/name/version/`` with metadata.py and main.py (rewritten if it exists)."""
    target = root / "text" / name / version
    target.mkdir(parents=True, exist_ok=True)
    (target / "metadata.py").write_text(METADATA.format(name=name, version=version,
                                                        inputs=textwrap.indent(inputs, "    ")))
    (target / "main.py").write_text(MAIN.format(expression=expression))
    if dockerfile is not None:
        (target / "Dockerfile").write_text(dockerfile)
    return target
