"""Dependencies point downward: llm and sdk never import gateways or apps, and only
``servemesh.apps`` assembles them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "servemesh"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the servemesh modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found |= {name} | {f"{name}.{a.name}" for a in node.names}
    return {m for m in found if m == "servemesh" or m.startswith("servemesh.")}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("runtime", ("servemesh.sdk", "servemesh.gateway", "servemesh.llm", "servemesh.apps", "servemesh.objects")),
    ("objects", ("servemesh.sdk", "servemesh.gateway", "servemesh.llm", "servemesh.apps")),
    ("tensors", ("servemesh.runtime", "servemesh.sdk", "servemesh.gateway", "servemesh.llm", "servemesh.apps",
                 "servemesh.objects")),
    ("llm", ("servemesh.gateway", "servemesh.apps")),
    ("capability", ("servemesh.gateway", "servemesh.apps", "servemesh.sdk", "servemesh.llm")),
    ("sdk", ("servemesh.gateway", "servemesh.llm", "servemesh.apps")),
    ("sessions", ("servemesh.gateway", "servemesh.apps", "servemesh.sdk", "servemesh.llm", "servemesh.capability")),
    ("gateway", ("servemesh.apps",)),
    ("functions", ("servemesh.gateway", "servemesh.apps", "servemesh.sdk", "servemesh.llm", "servemesh.capability")),
])
def test_no_upward_imports(package, forbidden):
    for path in sorted((PACKAGE / package).rglob("*.py")):
        allowed = ALLOWED.get(path.relative_to(PACKAGE).as_posix(), set())
        bad = {m for m in imported_modules(path) if m.startswith(forbidden)} - allowed
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


#: the exceptions, each for a reason: a ``Function`` is an ASGI app (``uvicorn main:func``, the
#: seed's command), so ``Function.__call__`` imports its HTTP surface (lazily, on the first call)
ALLOWED = {"functions/function.py": {"servemesh.gateway.functions.asgi",
                                     "servemesh.gateway.functions.asgi.FunctionAsgi"}}


def test_nothing_but_the_cli_imports_apps():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "apps") or path.is_relative_to(PACKAGE / "cli"):
            continue
        assert not {m for m in imported_modules(path) if m.startswith("servemesh.apps")}, path


def test_the_resolver_sees_relative_imports():
    assert "servemesh.sdk" in imported_modules(PACKAGE / "llm" / "processor.py")
    assert "servemesh.gateway.openai" in imported_modules(PACKAGE / "apps" / "llm.py")
