"""pyproject's lower bounds are the releases `make test-oldest` installs, so the floors it claims
are the floors it tests; and when run BY test-oldest, the floors really are what is installed."""

from __future__ import annotations

import os
import re
from importlib.metadata import version
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _floors() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, pin = line.split("==")
            pins[name] = pin
    return pins


def test_pyproject_floors_are_the_tested_ones():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = {}
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", dep)
        if m:
            lower[m.group(1)] = m.group(2)
    floors = _floors()
    assert set(floors) <= set(lower), f"pinned in constraints-oldest.txt but unbounded in pyproject: {set(floors) - set(lower)}"
    for name, pin in floors.items():
        assert tuple(map(int, pin.split("."))) >= tuple(map(int, lower[name].split("."))), name
        assert pin.startswith(lower[name]), f"{name}: pyproject says >={lower[name]}, the tested floor is {pin}"


def test_installed_versions_are_at_least_the_floors():
    exact = os.environ.get("PRUNE_CLI_TEST_OLDEST") == "1"  # set by `make test-oldest`
    for name, pin in _floors().items():
        have = tuple(int(x) for x in re.findall(r"\d+", version(name))[:3])
        want = tuple(map(int, pin.split(".")))
        assert have == want if exact else have >= want, f"{name} {version(name)} vs tested floor {pin}"


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists the packages by hand: a new subpackage left out is missing from a
    non-editable install (what `make test-oldest` and users get) while the editable one works."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in (src / "prune_cli").rglob("__init__.py")}
    assert found <= listed, f"not in pyproject's [tool.setuptools] packages: {sorted(found - listed)}"
