"""The floors of DESIGN.md, checked over the source: a module may import only its own floor or
the ones below it. Read with `ast` (nothing is imported), so function-level imports count too,
and followed transitively through our own modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("translators", "core", "auth", "providers", "addons", "cli", "datasets")
# What each package must never reach, directly or through another of our modules.
FORBIDDEN = {
    "translators": {"core", "auth", "providers", "addons", "cli", "datasets"},
    "core": {"auth", "providers", "addons", "cli", "datasets"},
    "auth": {"providers", "addons", "cli", "datasets"},
    "providers": {"addons", "cli", "datasets"},
    "addons": {"cli", "datasets"},
}
# The `python -m auth` entry point is the command's name, not part of the auth floor: it hands over
# to cli/ (see cli/__init__.py).
ENTRY_POINTS = {"auth.__main__"}
# Imports allowed for one release only: `python -m addons.prompt_log export` forwards to the tool.
DEPRECATED = {("addons.prompt_log", "datasets.export")}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports(path: Path) -> set[str]:
    """The modules of ours a source file imports (anywhere in it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from pkg import name` names a module when pkg.name is one, else the package itself.
        edges[name] = {n if n in modules else n.rpartition(".")[0] for n in our_imports(path)} - {""}
        edges[name] = {n for n in edges[name] if n in modules and (name, n) not in DEPRECATED}
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module reachable from start -> the module that imported it (to explain a breach)."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for nxt in edges.get(current, ()):
            if nxt not in seen and nxt != start:
                seen[nxt] = current
                todo.append(nxt)
    return seen


def chain(seen: dict[str, str], start: str, end: str) -> str:
    path = [end]
    while path[-1] != start and path[-1] in seen:
        path.append(seen[path[-1]])
    return " <- ".join(path)


EDGES = graph()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_reaches_a_floor_above_its_own(package: str):
    breaches = []
    for module in sorted(m for m in EDGES if m.split(".")[0] == package and m not in ENTRY_POINTS):
        seen = reachable(EDGES, module)
        for target in sorted(seen):
            if target.split(".")[0] in FORBIDDEN[package]:
                breaches.append(chain(seen, module, target))
    assert not breaches, "imports against the floors:\n" + "\n".join(breaches)


def test_the_auth_entry_point_only_hands_over_to_cli():
    assert our_imports(REPO / "auth" / "__main__.py") == {"cli.accounts", "cli.accounts.main"}


def test_the_check_sees_a_breach(tmp_path: Path):
    """The checker itself: an import inside a function of an auth module would be found."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from providers import ADAPTERS\n    import addons.router\n", encoding="utf-8")
    assert our_imports(source) == {"providers", "providers.ADAPTERS", "addons.router"}
