"""pyproject.toml's dependency floors are the versions `.ci/floor-constraints.txt` pins (the venv `.ci/floor`
builds and tests): a floor raised in one place and not the other would be tested at a version nobody declared."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dependencies() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.findall(r'"([^"]+)"', text.split("\ndependencies = [\n", 1)[1].split("\n]", 1)[0])


def _release(version: str) -> tuple[int, ...]:
    """``2.1`` and ``2.1.0`` alike: the release numbers without trailing zeros."""
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_the_floor_constraints_pin_each_dependency_at_its_floor():
    deps = [re.fullmatch(r"([A-Za-z0-9_.-]+)(?:>=([0-9][0-9A-Za-z.]*))?", d) for d in _dependencies()]
    assert all(deps), _dependencies()  # a bare name or name>=version, nothing else
    floors = {m[1].lower(): m[2] for m in deps}
    lines = (ROOT / ".ci" / "floor-constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = dict(line.split("#")[0].strip().lower().split("==") for line in lines if line.split("#")[0].strip())
    assert set(pins) == set(floors)  # every dependency pinned, nothing else
    assert {n: _release(pins[n]) for n, v in floors.items() if v} == {n: _release(v) for n, v in floors.items() if v}
