"""The installed set is the locked set: uv.lock matches pyproject.toml, and every package the
lock selects for this interpreter and the extras in use is installed at its locked version."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PACKAGES: dict[str, list[dict[str, Any]]] = {}
for _entry in LOCK["package"]:
    PACKAGES.setdefault(canonicalize_name(_entry["name"]), []).append(_entry)


def _applies(dep: dict[str, Any], extra: str = "") -> bool:
    marker = dep.get("marker")
    return marker is None or Marker(marker).evaluate({"extra": extra})


def _version_of(dep: dict[str, Any]) -> dict[str, Any]:
    """The lock entry a dependency names: by version where the lock holds several (per marker)."""
    entries = PACKAGES[canonicalize_name(dep["name"])]
    if "version" in dep:
        return next(e for e in entries if e["version"] == dep["version"])
    assert len(entries) == 1, f"{dep['name']}: several locked versions and no version named"
    return entries[0]


def locked_set(extras: set[str]) -> dict[str, str]:
    """name -> version of everything the lock installs for upak with `extras`, here."""
    want: dict[str, str] = {}
    todo: list[tuple[dict[str, Any], set[str]]] = [(PACKAGES["upak"][0], extras)]
    while todo:
        entry, entry_extras = todo.pop()
        deps = [d for d in entry.get("dependencies", []) if _applies(d)]
        for extra in entry_extras:
            deps += [
                d for d in entry.get("optional-dependencies", {}).get(extra, []) if _applies(d)
            ]
        for dep in deps:
            target = _version_of(dep)
            name = canonicalize_name(target["name"])
            dep_extras = set(dep.get("extra", []))
            if name in want and not dep_extras:
                continue
            want[name] = target["version"]
            todo.append((target, dep_extras))
    return want


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def extras_in_use(have: dict[str, str]) -> set[str]:
    """`make test` installs dev, `make bench` dev and bench: an extra counts when all of its
    own requirements are installed."""
    used = set()
    for extra, reqs in PROJECT.get("optional-dependencies", {}).items():
        if all(canonicalize_name(Requirement(r).name) in have for r in reqs):
            used.add(extra)
    return used


def test_the_lock_matches_pyproject():
    """What `uv sync --frozen` would not notice: a requirement edited without `make lock`."""
    locked = PACKAGES["upak"][0]["metadata"]
    locked_reqs = {
        (canonicalize_name(r["name"]), r.get("specifier", ""), r.get("marker", ""))
        for r in locked["requires-dist"]
    }
    declared = set()
    for extra, reqs in [("", PROJECT["dependencies"]), *PROJECT["optional-dependencies"].items()]:
        for text in reqs:
            req = Requirement(text)
            marker = f"extra == '{extra}'" if extra else ""
            spec = ",".join(sorted(str(s) for s in req.specifier))
            declared.add((canonicalize_name(req.name), spec, marker))
    normalised = {(n, ",".join(sorted(s.split(","))) if s else "", m) for n, s, m in locked_reqs}
    assert declared == normalised, "pyproject.toml changed since uv.lock: run `make lock`"


def test_installed_versions_are_the_locked_ones():
    have = installed()
    extras = extras_in_use(have)
    assert "dev" in extras  # the suite runs on the dev set
    want = locked_set(extras)
    wrong = {
        name: f"installed {have.get(name, 'nothing')}, locked {version}"
        for name, version in want.items()
        if name != "upak" and have.get(name) != version
    }
    assert not wrong, f"the venv is not the locked set (run `make test` or `make clean`): {wrong}"
    locked_anywhere = {canonicalize_name(n) for n in PACKAGES}
    stray = sorted(set(have) - locked_anywhere)
    assert not stray, f"installed but not in uv.lock (add them to pyproject.toml): {stray}"


def test_uv_is_pinned_the_same_in_make_and_the_image():
    make = re.search(r"^UV_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    docker = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "deploy/Dockerfile").read_text(), re.M)
    assert make and docker and make.group(1) == docker.group(1)
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert "COPY pyproject.toml uv.lock" in dockerfile and "uv sync --frozen" in dockerfile
