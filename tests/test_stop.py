"""A signal stops a run within seconds whatever it is busy with: a DataLoader worker stuck on one file, a
model factory that never returns; files too large to be images are refused before they are read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import write_images
from xaibatch.scan import MAX_FILE_BYTES, Failure, scan

REPO = Path(__file__).resolve().parents[1]

# The decode of any file named slow*.png never ends (as hashing a 16 TB sparse file did), in every process.
STUCK = r"""
import os, sys, time
from pathlib import Path
import xaibatch.data as _d
_real = _d.load_image
def _stuck(path, *a, **k):
    if Path(path).name.startswith("slow"):
        Path(os.environ["XB_STUCK_MARK"]).write_text(str(os.getpid()))
        while True:
            time.sleep(0.1)
    return _real(path, *a, **k)
_d.load_image = _stuck
from xaibatch.cli import main
main()
"""


def _start(args, mark: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XB_STUCK_MARK": str(mark)}
    return subprocess.Popen(
        [sys.executable, "-c", STUCK, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _wait_file(proc: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie of an exited process is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("workers,sig", [(1, signal.SIGTERM), (0, signal.SIGINT)])
def test_a_signal_stops_a_run_whose_decoder_is_stuck(tmp_path, tiny_ckpt, workers, sig):
    inp, out, mark = tmp_path / "in", tmp_path / "out", tmp_path / "stuck"
    write_images(inp, 6)
    (inp / "slow.png").write_bytes((inp / "img_000.png").read_bytes())
    proc = _start(
        [
            "run",
            str(inp),
            "--unlabeled",
            "--checkpoint",
            str(tiny_ckpt),
            "--out",
            str(out),
            "--workers",
            str(workers),
            "--batch-size",
            "4",
        ],
        mark,
        start_new_session=True,
    )
    _wait_file(proc, mark)
    stuck = int(mark.read_text())
    t0 = time.monotonic()
    os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C and systemd do
    _stdout, stderr = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    print(f"signal to exit: {took:.1f} s")
    assert proc.returncode == 5, (took, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert took < 20, took  # the report of what was done is still written
    t1 = time.monotonic()
    while not _gone(stuck) and time.monotonic() - t1 < 5:
        time.sleep(0.05)
    assert _gone(stuck), "the stuck decoder outlived the run"


FACTORY = """
import os, time
from pathlib import Path

def build():
    Path(os.environ["XB_STUCK_MARK"]).write_text("looping")
    while True:
        pass
"""


@pytest.mark.slow
def test_the_first_sigterm_stops_a_model_factory_that_never_returns(tmp_path):
    inp, out, mark = tmp_path / "in", tmp_path / "out", tmp_path / "stuck"
    write_images(inp, 2)
    (tmp_path / "forever.py").write_text(FACTORY)
    proc = _start(
        [
            "run",
            str(inp),
            "--unlabeled",
            "--model",
            f"{tmp_path / 'forever.py'}:build",
            "--out",
            str(out),
            "--classes",
            "a,b",
        ],
        mark,
    )
    _wait_file(proc, mark)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # once
    _stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 5, stderr
    assert time.monotonic() - t0 < 10
    assert "interrupted by SIGTERM while loading the model" in stderr and "Traceback" not in stderr
    assert not out.exists()  # nothing was written


def test_files_too_large_are_refused_unread(tmp_path):
    inp = tmp_path / "in"
    write_images(inp, 1)
    big = inp / "big.png"
    with big.open("wb") as f:  # sparse: no disk used, and reading it would take minutes
        f.write((inp / "img_000.png").read_bytes())
        f.truncate(MAX_FILE_BYTES + 1)
    found = scan(inp)
    assert [e.rel for e in found.images] == ["img_000.png"]
    assert found.skipped == [
        Failure(
            "big.png",
            f"file too large ({MAX_FILE_BYTES + 1:,} bytes; at most {MAX_FILE_BYTES:,}): refused without reading it",
            "image",
        )
    ]


def test_a_file_grown_past_the_limit_after_the_scan_is_not_read(tmp_path, monkeypatch):
    from xaibatch import data
    from xaibatch.errors import DecodeError

    p = tmp_path / "grown.png"
    write_images(tmp_path, 1)
    (tmp_path / "img_000.png").rename(p)
    monkeypatch.setattr(data, "too_large", lambda size: "file too large" if size > 10 else None)
    with pytest.raises(DecodeError, match="file too large"):
        data.load_image(p)
