"""The control plane and the region agents talk only through the contract package
(``pgcrdr.agentapi``): read every module's imports (ast, nothing is executed) and fail on an
import that crosses the boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PGCRDR = Path(__file__).resolve().parents[2] / "pgcrdr"

CONTROL_SIDE = ("controlplane", "api", "endpoint", "console", "terraform")
CONTROL_MODULES = tuple(f"pgcrdr.{p}" for p in CONTROL_SIDE)


def module_name(path: Path) -> str:
    parts = path.relative_to(PGCRDR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` (module ``module``) imports, relative imports resolved; ``from a
    import b`` counts as both ``a`` and ``a.b`` (b may be a module). Pure."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def modules_under(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (PGCRDR / pkg).rglob("*.py"))


def crossings(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{path.relative_to(PGCRDR.parent)} imports {mod}"
                  for path in paths for mod in imported_modules(path)
                  if any(is_within(mod, f) for f in forbidden))


def test_imports_are_read_absolute_relative_and_nested() -> None:
    source = ("import pgcrdr.config\nfrom ..agent import processes\nfrom . import views\n"
              "def f():\n    from pgcrdr.agent.client import AgentClient\n")
    assert imports_of(source, "pgcrdr.console.pages", is_package=False) == {
        "pgcrdr.config", "pgcrdr.agent", "pgcrdr.agent.processes", "pgcrdr.console", "pgcrdr.console.views",
        "pgcrdr.agent.client", "pgcrdr.agent.client.AgentClient"}
    assert "pgcrdr.agentapi.client" in imported_modules(PGCRDR / "controlplane" / "reconciler.py")
    assert is_within("pgcrdr.agent.models", "pgcrdr.agent")
    assert not is_within("pgcrdr.agentapi.models", "pgcrdr.agent")


@pytest.mark.parametrize("package", CONTROL_SIDE)
def test_control_plane_side_does_not_import_the_agent(package: str) -> None:
    assert crossings(modules_under(package), ("pgcrdr.agent",)) == []


def test_agent_does_not_import_the_control_plane_side() -> None:
    assert crossings(modules_under("agent"), CONTROL_MODULES) == []


def test_contract_imports_neither_side() -> None:
    assert crossings(modules_under("agentapi"), ("pgcrdr.agent", *CONTROL_MODULES)) == []
