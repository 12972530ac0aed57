"""A wheel install finds the packaged templates and the bundled model, away from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds the wheel and installs it (about 30 s on 2 cores)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the tracked files plus a checkpoint a user saved under models/ (README's examples
    # train into models/cnn.pt): the wheel must ship the bundled model, not whatever lies beside it.
    src = tmp_path_factory.mktemp("src") / "xaibatch"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    (src / "models" / "cnn.pt").write_bytes(b"a user's own checkpoint")
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
        check=True,
        capture_output=True,
    )
    (whl,) = dist.glob("xaibatch-*.whl")
    return whl


def test_wheel_contains_templates_and_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "xaibatch/_templates/index.html" in names
    assert "xaibatch/_models/xaibatch-demo.pt" in names
    assert "xaibatch/_models/README.md" in names
    assert not [n for n in names if n.endswith("cnn.pt")], "a user's checkpoint under models/ went into the wheel"


def test_installed_wheel_runs_with_its_own_templates_and_model(wheel, tmp_path, labeled_dir):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import xaibatch.resources as r; print(r.templates_dir()); print(r.default_checkpoint())",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    templates, model = probe.stdout.split()
    assert Path(templates).is_relative_to(site) and Path(model).is_relative_to(site)
    assert Path(model).is_file()
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from xaibatch.cli import main; main()",
            "run",
            str(labeled_dir),
            "--out",
            str(out),
            "--workers",
            "0",
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (out / "index.html").is_file()
