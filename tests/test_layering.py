"""Layering (ARCHITECTURE.md: "Nothing below a layer imports from above it"), read from the
source, so an import inside a function counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "upak"

# What each layer may import besides itself. The bottom: the settings' own value types,
# then the settings; the store over them; the features over the store; the web on top.
BELOW_CONFIG = {"ratelimit_policy"}
SETTINGS = {"config", *BELOW_CONFIG}
MAY_IMPORT: dict[str, set[str]] = {
    "ratelimit_policy": set(),
    "config": BELOW_CONFIG,
    "connect": SETTINGS,
    "logs": SETTINGS,
    "command": SETTINGS,
    "store": {"connect", *SETTINGS},
    "features": {"store", *SETTINGS},
    "ops": {"connect", "store", *SETTINGS},  # talks to Redis itself, holds no app state
    "domain": SETTINGS,
    "web": {"connect", "logs", "store", "features", "domain", *SETTINGS},
}
# Composition roots: the commands wire layers together (`upak payments reconcile` drops the
# cached /me through the store), so they may import what they wire.
ROOTS = {
    "upak.domain.cli": {"command", "store", "features", *SETTINGS},
    "upak.cli": {"command", "connect", "logs", "ops", "domain", *SETTINGS},
    "upak.__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upak_imports(path: Path) -> set[str]:
    """Every `upak.*` module the file imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("upak.")}


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else module


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_a_module_imports_only_the_layers_below_it(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    allowed = ROOTS.get(module, MAY_IMPORT.get(own))
    assert allowed is not None, f"{module}: a new layer; say in MAY_IMPORT what it may import"
    above = {name for name in upak_imports(path) if layer_of(name) not in allowed | {own}}
    assert not above, f"{module} imports {sorted(above)}"


def test_the_domain_cli_does_not_import_the_top_level_cli() -> None:
    # upak.cli mounts the domain's commands; the other way round would be a circle.
    assert "upak.cli" not in upak_imports(PACKAGE / "domain" / "cli.py")


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    # The scan itself: an import inside a function (as config's of the domain once was).
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from upak.features.cache import Cache\n    import upak.web\n")
    assert upak_imports(module) == {"upak.features.cache", "upak.web"}


def test_the_store_s_modules_import_one_another_without_a_circle() -> None:
    """Counting imports made only for type checking: a circle there is still two modules
    that cannot be read, or changed, one without the other."""
    store = PACKAGE / "store"
    graph = {
        module_name(path): {m for m in upak_imports(path) if m.startswith("upak.store.")}
        for path in store.glob("*.py")
        if path.name != "__init__.py"
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = " -> ".join((*path[path.index(module) :], module))
            pytest.fail(f"an import circle in the store: {cycle}")
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
