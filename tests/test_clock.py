"""A wall clock that steps (NTP on a box without a real-time clock, a clock set back, a VM restored from a
snapshot) and file times far from now: durations stay durations, stamps stay equal to themselves."""

from __future__ import annotations

import time

import pytest
from helpers import quiet, run_opts, write_images

from xaibatch.manifest import Manifest


class SteppingClock:
    """``time.time`` that steps by ``step`` seconds at each call after the first ``calm`` calls: a wall clock that
    NTP keeps moving under a run."""

    def __init__(self, step: float, calm: int = 0) -> None:
        self.real, self.step, self.calm, self.calls = time.time, step, calm, 0

    def __call__(self) -> float:
        self.calls += 1
        return self.real() + self.step * max(0, self.calls - self.calm)


@pytest.mark.parametrize("step", [-3600.0, 365 * 86400.0])
def test_a_run_times_itself_whatever_the_wall_clock_does(tmp_path, tiny_ckpt, monkeypatch, step):
    write_images(tmp_path / "in" / "FAKE", 3, seed=1)
    write_images(tmp_path / "in" / "REAL", 3, seed=2)
    from xaibatch.pipeline import run

    monkeypatch.setattr(time, "time", SteppingClock(step))
    result = run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=quiet)
    monkeypatch.undo()
    assert 0 <= result.seconds < 300
    assert all(0 <= s < 300 for s in result.timings.values()), result.timings
    assert result.timings["first_batch"] <= result.seconds
    (row,) = Manifest(tmp_path / "out" / "xaibatch.sqlite").runs()
    assert 0 <= row.seconds <= result.seconds
