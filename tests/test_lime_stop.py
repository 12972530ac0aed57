"""LIME says what it will cost, and a SIGINT stops it within seconds, mid-batch, leaving a consistent folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import manifest_rows, run_argv, write_images
from outcheck import check_output_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigint_stops_a_long_lime_batch_within_seconds(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 4)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # 4 images x 200k samples in one batch: several minutes of forwards on a CPU, all inside one explain() call.
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xaibatch",
            *run_argv(inp, out, tiny_ckpt),
            "--workers",
            "0",
            "--method",
            "lime",
            "--lime-samples",
            "200000",
            "--batch-size",
            "4",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = p.stderr.readline()
        assert "LIME: 4 image(s) x 200000 samples = 800,000 model forwards" in line, line
        time.sleep(3)  # well inside the batch's forwards
        assert p.poll() is None
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 5, err
    assert took < 15, f"SIGINT took {took:.1f}s"
    assert "Traceback" not in err
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(0,)]  # the abandoned batch is not committed
    assert manifest_rows(out, "SELECT status FROM runs") == [("interrupted",)]
    check_output_folder(out, inp)
