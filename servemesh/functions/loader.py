"""Loading a function directory (the seed's ``category/name/version/``: ``metadata.py`` with the
``Function`` and its models, ``main.py`` with the lifecycle functions) without running it."""

from __future__ import annotations

import ast
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from ..errors import ConfigError, FunctionInvalid
from .function import Function


def load_function(directory: str | Path) -> Function:
    """The directory's ``Function``: ``main.py`` is imported (it imports ``metadata``), which runs
    module-level code and the decorators but no lifecycle function. ``FunctionInvalid`` when the
    import fails or finds no function."""
    func, problems = load_with_problems(directory)
    if func is None:
        raise FunctionInvalid(str(directory), problems)
    return func


def load_with_problems(directory: str | Path, *,
                       without_requirements: bool = False) -> tuple[Function | None, list[str]]:
    """The function and the problems found loading it. ``without_requirements`` (validation and
    builds): when ``main.py`` imports a third-party module that is not installed here (torch on a
    build machine), the ports come from ``metadata.py`` alone and ``on_execute`` is looked for in
    ``main.py``'s source (``Function.execute_in_source``)."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigError(f"no such function directory: {directory}")
    entry = next((root / n for n in ("main.py", "metadata.py") if (root / n).is_file()), None)
    if entry is None:
        return None, [f"{root}: no main.py or metadata.py (a function directory holds metadata.py with the "
                      "Function and main.py with its on_execute)"]
    _forget_modules_of(root)
    sys.path.insert(0, str(root))  # `from metadata import func`, as with `uvicorn main:func` in the directory
    try:
        modules = [_import(root, entry.stem)]
        if entry.stem == "main" and (root / "metadata.py").is_file():
            modules.append(sys.modules.get("metadata") or _import(root, "metadata"))
    except ModuleNotFoundError as exc:
        if not (without_requirements and entry.stem == "main" and (root / "metadata.py").is_file()
                and not _is_local(root, exc.name)):
            return None, [_import_problem(root, exc)]
        try:
            modules = [sys.modules.get("metadata") or _import(root, "metadata")]
        except Exception as inner:
            return None, [_import_problem(root, inner)]
        for module in modules:
            for value in vars(module).values():
                if isinstance(value, Function):
                    value.execute_in_source = _declares_on_execute(root / "main.py")
                    value.missing_module = exc.name
    except Exception as exc:
        return None, [_import_problem(root, exc)]
    found: list[Function] = []
    for module in modules:
        found += [v for v in vars(module).values() if isinstance(v, Function) and v not in found]
    if not found:
        return None, [f"{entry}: no Function found (func = Function(description=...) in metadata.py)"]
    if len(found) > 1:
        return found[0], [f"{entry}: {len(found)} Function objects ({', '.join(f.name for f in found)}); a "
                          "directory holds one function"]
    return found[0], []


def _import(root: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {root / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _forget_modules_of(root: Path) -> None:
    """Drop modules another function directory loaded under the names this one uses (``metadata``)."""
    names = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    for name in names:  # this directory's own are reloaded too: validation sees the files as they are now
        sys.modules.pop(name, None)


def _import_problem(root: Path, exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(root))]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else str(root)
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    return f"{where}: importing the function failed: {type(exc).__name__}: {exc}"


def _is_local(root: Path, name: str | None) -> bool:
    """Whether ``name`` is a module of the function's own directory (then its absence is a bug)."""
    top = (name or "").split(".")[0]
    return not top or (root / f"{top}.py").exists() or (root / top).is_dir()


def _declares_on_execute(main: Path) -> bool:
    """Whether ``main.py`` decorates a function with ``@<something>.on_execute`` (read, not run)."""
    try:
        tree = ast.parse(main.read_text(), str(main))
    except (OSError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Attribute) and target.attr == "on_execute":
                    return True
    return False
