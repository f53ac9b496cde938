"""``servemesh new function NAME``: the seed's layout ``category/name/version/``."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..runtime.records import check_name
from .semver import is_semver

METADATA = '''"""The function's ports: what it takes (Inputs, Params) and gives (Outputs)."""

from pydantic import BaseModel, Field

from servemesh.functions import Function

func = Function(description="{name}: describe what it does")


@func.set_input
class Inputs(BaseModel):
    text: str = Field(..., description="The text to work on")


@func.set_param
class Params(BaseModel):
    times: int = Field(1, ge=1, le=10, description="How many times to repeat it")


@func.set_output
class Outputs(BaseModel):
    result: str = Field(..., description="The text, repeated")
'''

MAIN = '''"""The function's lifecycle: on_startup (load models here), on_execute, on_shutdown."""

from metadata import Inputs, Outputs, Params, func


@func.on_startup
async def load() -> None:
    """Runs once, before the function reports ready."""


@func.on_execute
async def main(inputs: Inputs, params: Params) -> Outputs:
    return Outputs(result=" ".join([inputs.text] * params.times))


@func.on_shutdown
async def shutdown() -> None:
    """Runs once on SIGTERM, after the executions in flight finished."""
'''

DOCKERFILE = '''# built without a Docker daemon by `servemesh build` (FROM, WORKDIR, COPY, ENV, CMD, EXPOSE)
FROM {base}

WORKDIR /app

COPY . .

EXPOSE 3000

CMD ["python3", "-m", "uvicorn", "--host", "0.0.0.0", "--port", "3000", "main:func"]
'''


def new_function(name: str, root: str | Path = ".", *, category: str = "general", version: str = "1.0.0",
                 base: str = "python:3.11-slim") -> Path:
    """Write ``root/category/name/version/`` (``name`` may be ``category/name``); its path."""
    if "/" in name:
        category, name = name.split("/", 1)
    check_name("function", name)
    check_name("category", category)
    if not is_semver(version):
        raise ConfigError(f"version {version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    target = Path(root) / category / name / version
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)
    (target / "metadata.py").write_text(METADATA.replace("{name}", name))
    (target / "main.py").write_text(MAIN)
    (target / "requirements.txt").write_text("# the function's own requirements, one per line (pip syntax)\n")
    (target / "Dockerfile").write_text(DOCKERFILE.replace("{base}", base))
    return target
