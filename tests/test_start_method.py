"""Runs and training under another multiprocessing start method than fork: Python 3.14 made forkserver the default
on Linux (macOS has used spawn since 3.8). A DataLoader's workers start forked on Linux whatever the default
(pipeline/loader.worker_context); a worker that is not the run's child still lives and dies with the run
(test_output_safety.py: a fork server's child)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ENV, REPO, manifest_rows

UNDER = """
import multiprocessing, sys
if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv.pop(1), force=True)
    from xaibatch.cli import main
    main()
"""


def under(method: str, *args, tmp_path) -> subprocess.CompletedProcess:
    """``xaibatch ARGS...`` as a process whose default start method is ``method``."""
    script = tmp_path / "under.py"  # a file, not -c: spawn and forkserver children import the main module
    script.write_text(UNDER)
    argv = [sys.executable, str(script), method, *map(str, args)]
    return subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method", ["forkserver", pytest.param("spawn", marks=pytest.mark.slow)])
def test_a_run_with_workers_under_another_start_method(tmp_path, labeled_dir, tiny_ckpt, method):
    # Under forkserver every run with --workers failed: "Error: a DataLoader worker (pid ...) exited unexpectedly:
    # out of memory or of /dev/shm space" (each worker, a fork server's child, took the living run for dead).
    out = tmp_path / "out"
    p = under(method, "run", labeled_dir, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 2, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "10 computed" in p.stdout + p.stderr
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(10,)]


@pytest.mark.slow
def test_training_with_workers_under_forkserver(tmp_path, labeled_dir):
    ckpt = tmp_path / "m.pt"
    argv = ["train", labeled_dir, "--arch", "resnet18", "--image-size", 32, "--epochs", 1, "--workers", 1]
    p = under("forkserver", *argv, "--out", ckpt, "--device", "cpu", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert ckpt.is_file()
