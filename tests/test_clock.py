"""A wall clock that steps (NTP on a box without a real-time clock, a clock set back, a VM restored from a
snapshot) and file times far from now: durations stay durations, stamps stay equal to themselves."""

from __future__ import annotations

import json
import os
import re
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


FAR = 10**19  # ns: 2286, past what a signed 64-bit nanosecond count holds (2262)


def test_images_dated_past_2262_or_before_1970_are_unchanged_on_the_next_run(tmp_path, tiny_ckpt):
    from xaibatch.pipeline import run

    paths = write_images(tmp_path / "in" / "FAKE", 3, seed=1) + write_images(tmp_path / "in" / "REAL", 2, seed=2)
    broken = tmp_path / "in" / "REAL" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for path, ns in zip([*paths, broken], [FAR, -(10**18), 0, FAR + 1, 2**63, FAR], strict=True):
        os.utime(path, ns=(ns, ns))
        if path.stat().st_mtime_ns != ns:
            pytest.skip("this file system does not keep such times")
    opts = run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt)
    first = run(opts, log=quiet)  # was: OverflowError: Python int too large to convert to SQLite INTEGER
    assert (first.counts.computed, [f.rel for f in first.failed]) == (5, ["REAL/broken.png"])
    again = run(opts, log=quiet)
    assert (again.counts.computed, again.counts.unchanged, again.counts.changed) == (0, 5, 0)
    os.utime(paths[0], ns=(FAR + 2, FAR + 2))  # a new far-future time is a touch: hashed, not recomputed
    assert run(opts, log=quiet).counts.computed == 0


def test_the_bar_moves_on_after_the_clock_was_set_back(monkeypatch, capsys):
    from xaibatch.pipeline.progress import Progress

    monkeypatch.setattr("tqdm.std.time", SteppingClock(-3600.0, calm=2))  # tqdm's own name for time.time
    p = Progress(10, bar=True, heartbeat=0, log=print, emit=lambda e: None, json_events=False)
    for _ in range(5):
        time.sleep(0.12)  # past tqdm's mininterval (0.1 s) between two draws
        p.update(1)
    shown = capsys.readouterr().err  # before close(), which draws the last state whatever the clock
    p.close()
    assert "5/10" in shown  # was: frozen at 1/10 ...
    assert "[-" not in shown  # ... and "1/10 [-59:59<00:01, ...]"


def test_train_and_sanity_time_themselves_whatever_the_wall_clock_does(tmp_path, tiny_ckpt, monkeypatch):
    import json

    from xaibatch.evaluation.sanity import run_sanity
    from xaibatch.pipeline import run
    from xaibatch.tools import synth
    from xaibatch.tools.train import train

    synth.write_classes(tmp_path / "data" / "train", 8, seed=1)
    write_images(tmp_path / "in" / "FAKE", 3, seed=1)
    write_images(tmp_path / "in" / "REAL", 3, seed=2)
    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=quiet)
    monkeypatch.setattr(time, "time", SteppingClock(365 * 86400.0))
    trained = train(tmp_path / "data", "test_resnet", tmp_path / "m.pt", image_size=32, epochs=1, log=quiet)
    run_sanity(tmp_path / "out", n=4, log=quiet)
    monkeypatch.undo()
    assert 0 <= trained.seconds < 300  # was: "wrote m.pt (0.1 MB) in 31536000s"
    assert 0 <= json.loads((tmp_path / "out" / "sanity.json").read_text())["seconds"] < 300


def test_the_lock_holder_is_dated_by_how_long_it_has_held_the_folder(tmp_path, monkeypatch):
    """A box that booted at its last shutdown's time: NTP steps the clock a year on while a run holds the folder;
    the next cron run's refusal said "since 2026-12-07 23:36:30 (31536004s ago)" of a run started seconds before."""
    from xaibatch.lock import OutputLock, describe

    lock = OutputLock(tmp_path)
    lock.acquire()
    try:
        holder = json.loads((tmp_path / ".xaibatch.lock").read_text())
    finally:
        lock.release()
    year = 365 * 86400.0
    monkeypatch.setattr(time, "time", lambda real=time.time: real() + year)
    said = describe(holder)
    assert re.search(r" since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \([0-5]s ago\)$", said), said
    assert str(time.localtime(time.time()).tm_year) in said  # the year by the stepped clock: the holder's own is a
    # year behind it
    older = {k: v for k, v in holder.items() if k not in ("started_mono", "boot_id")}  # an older xaibatch's record
    assert f"({year:.0f}s ago)" in describe(older) or f"({year + 1:.0f}s ago)" in describe(older)
    assert describe({**holder, "boot_id": "another boot"}) == describe(older)
