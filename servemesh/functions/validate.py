"""``servemesh validate DIR``: every problem of a function at once, each with its location."""

from __future__ import annotations

from pathlib import Path

from .loader import load_with_problems
from .ports import port_problems
from .semver import is_semver


def validate(directory: str | Path) -> list[str]:
    """The function's problems (empty: it is valid). Loads it without running it: no lifecycle
    function is called. A third-party module ``main.py`` imports that is not installed here (the
    function's requirements) is no problem: ``metadata.py`` gives the ports, and ``on_execute``
    is looked for in ``main.py``'s source."""
    func, problems = load_with_problems(directory, without_requirements=True)
    if func is None:
        return problems
    created = f"{func.origin}:{func.origin_line}"
    if not is_semver(func.version):
        problems.append(f"{created}: version {func.version!r} is not a semantic version (MAJOR.MINOR.PATCH, "
                        "e.g. 1.0.0; a directory `v1` becomes `1.0.0`)")
    if func.execute is None and not func.execute_in_source:
        main = Path(directory).resolve() / "main.py"
        problems.append(f"{main if main.exists() else created}: no on_execute: decorate the function's main "
                        "coroutine with @func.on_execute")
    problems += port_problems(func)
    return problems
