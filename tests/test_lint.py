"""The code passes ruff with the project's settings (pyproject.toml): the lint rules and `ruff format`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["xaibatch", "tests", "benchmarks", "examples"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(ruff).exists(), "ruff is not installed: pip install -e '.[test]' installs it"
    return subprocess.run([ruff, *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_is_clean():
    r = _ruff("check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean():
    r = _ruff("format", "--check")
    assert r.returncode == 0, "run `ruff format` (files it would change):\n" + r.stdout + r.stderr
