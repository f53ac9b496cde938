"""Find ``@service`` classes for ``servemesh run path/to/file.py`` or ``module:Class``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..errors import ConfigError
from .spec import SERVICE_ATTR


def load_services(target: str) -> list[type]:
    """``file.py``, ``file.py:Class``, ``package.module`` or ``package.module:Class``."""
    where, _, attr = target.partition(":") if not _is_windows_drive(target) else (target, "", "")
    module = load_module(where)
    if attr:
        found = getattr(module, attr, None)
        if found is None:
            raise ConfigError(f"{where} has no attribute {attr!r}")
        if not (isinstance(found, type) and SERVICE_ATTR in found.__dict__):
            raise ConfigError(f"{target} is not a @service class")
        return [found]
    classes = [v for v in vars(module).values()
               if isinstance(v, type) and SERVICE_ATTR in v.__dict__ and v.__module__ == module.__name__]
    if not classes:
        raise ConfigError(f"{where} defines no @service class (or name one: {where}:ClassName)")
    return classes


def load_module(where: str) -> ModuleType:
    """A module by file path (``dir/app.py``, its directory put on ``sys.path``) or by name
    (``package.module``, found from the current directory too)."""
    path = Path(where)
    if where.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"no such file: {where}")
        sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import as they would with python3
        name = f"servemesh_app_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {where}: {exc}") from exc


def _is_windows_drive(target: str) -> bool:
    return len(target) > 2 and target[1] == ":" and target[2] in "\\/"
