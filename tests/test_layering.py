"""Layering: what the lowest modules may import (ARCHITECTURE.md, "Nothing below a layer
imports from above it"), read from the source so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def upak_imports(module: str) -> set[str]:
    """Every `upak.*` module `module` imports, at any depth of its code."""
    path = SRC / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = SRC / module.replace(".", "/") / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "upak" or name.startswith("upak.")}


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        # Settings are the bottom layer: they parse their own values and import no feature,
        # no store, no domain and no web.
        ("upak.config", {"upak.ratelimit_policy"}),
        ("upak.ratelimit_policy", set()),
    ],
)
def test_the_bottom_layer_imports_nothing_above_it(module: str, allowed: set[str]) -> None:
    assert upak_imports(module) <= allowed


def test_the_domain_cli_does_not_import_the_top_level_cli() -> None:
    # upak.cli mounts the domain's commands; the other way round would be a circle.
    assert not {name for name in upak_imports("upak.domain.cli") if name == "upak.cli"}


def test_the_scan_sees_lazy_imports() -> None:
    # The helper itself: upak.domain.cli imports upak.command inside its commands.
    assert "upak.command" in upak_imports("upak.domain.cli")
