"""Progress: an estimate once the first batches are done, then a line (or a JSON event) about every minute."""

from __future__ import annotations

import time

import pytest

from helpers import write_images
from xaibatch.pipeline import RunOptions, run
from xaibatch.pipeline.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_estimate_once_after_the_first_batches_then_lines():
    clock, lines, events = Clock(), [], []
    p = Progress(100, bar=False, heartbeat=0, log=lines.append, emit=events.append, json_events=False, clock=clock)
    clock.t += 2
    p.update(10)  # too early to say
    assert lines == [] and events == []
    clock.t += 18
    p.update(10)  # 20 images in 20 s: 80 more take 80 s
    assert lines == ["xaibatch: about 1m20s left for 80 more image(s) (20 done in 20s)"]
    assert events == [
        {"event": "progress", "done": 20, "total": 100, "elapsed_s": 20.0, "eta_s": 80.0, "batch_percent": None}
    ]
    clock.t += 30
    p.within(3, 12)
    p.update(0)  # said once only
    assert len(lines) == 1
    p.within(6, 12)
    p.beat()
    assert lines[-1] == "xaibatch: 20/100 images, 50s, about 3m20s left, current batch 50%"
    p.close()


def test_the_step_running_is_in_the_line_and_the_event_while_one_runs():
    clock, lines, events = Clock(), [], []
    p = Progress(10, bar=False, heartbeat=0, log=lines.append, emit=events.append, json_events=False, clock=clock)
    p.running("captum:Occlusion")
    p.beat()
    assert lines[-1] == "xaibatch: 0/10 images, 0s, running captum:Occlusion"
    assert p._event(0.0, None)["method"] == "captum:Occlusion"
    p.running(None)
    p.beat()
    assert lines[-1] == "xaibatch: 0/10 images, 0s" and "method" not in p._event(0.0, None)
    p.close()


def test_no_estimate_for_a_run_that_ends_with_its_first_batch():
    clock, lines = Clock(), []
    p = Progress(8, bar=False, heartbeat=0, log=lines.append, emit=lambda e: None, json_events=False, clock=clock)
    clock.t += 60
    p.update(8)
    p.close()
    assert lines == []


def test_json_mode_beats_events_not_lines():
    clock, lines, events = Clock(), [], []
    p = Progress(10, bar=False, heartbeat=0, log=lines.append, emit=events.append, json_events=True, clock=clock)
    clock.t += 7
    p.beat()
    assert lines == [] and events == [
        {"event": "progress", "done": 0, "total": 10, "elapsed_s": 7.0, "eta_s": None, "batch_percent": None}
    ]
    p.close()


def test_a_batch_abandoned_by_a_stop_before_the_first_image_is_no_estimate():
    """A stop signal during the first LIME batch (which takes longer than the estimate's 5 s) counted the abandoned
    batch as 0 images done: the estimate divided by nothing and the run ended "internal error: TypeError: type
    NoneType doesn't define __round__" (exit 3) instead of exit 5."""
    clock, lines, events = Clock(), [], []
    p = Progress(100, bar=False, heartbeat=0, log=lines.append, emit=events.append, json_events=False, clock=clock)
    clock.t += 7
    p.update(0)
    assert lines == [] and events == []
    clock.t += 1
    p.update(4)  # the estimate comes with the first images
    assert lines == ["xaibatch: about 3m12s left for 96 more image(s) (4 done in 8s)"]
    p.close()


def test_json_mode_estimates_as_an_event_only():
    """--log-json promises events instead of the text lines: the estimate went to stderr as text too."""
    clock, lines, events = Clock(), [], []
    p = Progress(10, bar=False, heartbeat=0, log=lines.append, emit=events.append, json_events=True, clock=clock)
    clock.t += 6
    p.update(2)
    assert lines == [] and [e["eta_s"] for e in events] == [24.0]
    p.close()


def test_the_ray_workers_start_up_is_not_taken_for_their_rate():
    """Ray actors load the model after the run's clock starts, and finish their first batches together: from the
    first result the estimate said "about 2m20s left for 189 more image(s) (32 done in 24s)" on a 2-core box
    where the run ended 30 s later. Two actors that take 18 s to start and 3 s a batch of 32 each, 221 images."""
    clock, lines, events = Clock(), [], []
    p = Progress(221, bar=False, heartbeat=0, log=lines.append, emit=events.append, json_events=True, clock=clock)
    p.warmup = 2  # what progress_bar(..., warmup=2) sets: the Ray engine passes its number of actors
    start, arrivals = clock.t, []
    for k in range(7):  # batch k of actor k % 2 comes back at start + 18 + 3 * (k // 2 + 1), 0.1 s apart
        arrivals.append((start + 18 + 3 * (k // 2 + 1) + 0.1 * (k % 2), min(32, 221 - 32 * k)))
    for t, n in arrivals:
        clock.t = t
        p.update(n)
        if events:
            break
    (event,) = events
    truth = arrivals[-1][0] - clock.t
    assert event["eta_s"] is not None and abs(event["eta_s"] - truth) <= 3.0, (event, truth)
    p.close()


def test_duration():
    assert [duration(s) for s in (0, 59.4, 60, 75, 3599, 3600, 4000)] == [
        "0s",
        "59s",
        "1m00s",
        "1m15s",
        "59m59s",
        "1h00m",
        "1h06m",
    ]


def test_a_run_off_a_terminal_beats_every_interval(tmp_path, tiny_ckpt):
    """Through the pipeline: a heartbeat of 0.2 s over a LIME run of a few seconds gives lines, then events."""
    inp = tmp_path / "in"
    write_images(inp, 4)
    for json_events in (False, True):
        lines, events = [], []
        t0 = time.monotonic()
        run(
            RunOptions(
                input_dir=inp,
                out_dir=tmp_path / f"out{json_events}",
                methods=["lime"],
                checkpoint=tiny_ckpt,
                batch_size=2,
                workers=0,
                method_options={"lime": {"samples": 2000, "batch_size": 50}},
                heartbeat=0.2,
                on_event=events.append if json_events else None,
            ),
            log=lines.append,
        )
        took = time.monotonic() - t0
        beats = (
            [e for e in events if e["event"] == "progress"]
            if json_events
            else [s for s in lines if s.startswith("xaibatch: ") and "/4 images" in s]
        )
        assert took > 0.6 and len(beats) >= min(3, int(took / 0.2 / 3)), (took, lines, events)
        if json_events:
            assert not any("/4 images" in s for s in lines)
            assert {"done", "total", "elapsed_s", "eta_s", "batch_percent"} <= set(beats[-1])
            assert beats[-1]["total"] == 4


def test_the_bar_leaves_no_thread_behind():
    """tqdm's monitor thread outlives its bar; a run with a bar (a terminal) then had a second thread at report
    time, and report/forked.py does not fork beside threads: the report was built on one core."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from xaibatch.pipeline.progress import Progress\n"
        "p = Progress(10, bar=True, heartbeat=0, log=print, emit=lambda e: None, json_events=False)\n"
        "p.update(10)\n"
        "p.close()\n"
        "print('threads', threading.active_count())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "threads 1" in r.stdout, r.stdout


def test_a_slow_first_batch_is_estimated_from_its_share():
    """LIME's first batch of 32 images took 87 s on the 2-core box (1,000 forwards each): the estimate came only
    after it, and the heartbeat said "0/64 images, 1m00s, current batch 66%" with no time left. With the batch size
    known, the batch's share counts, from the first share on (before it: the workers' start, the first forwards):
    an estimate within seconds."""
    clock, lines, events = Clock(), [], []
    p = Progress(
        1000,
        bar=False,
        heartbeat=0,
        log=lines.append,
        emit=events.append,
        json_events=False,
        clock=clock,
        batch_size=32,
    )
    clock.t += 2
    p.within(10, 100)  # the rate starts here, at 3.2 images
    clock.t += 4
    p.within(20, 100)  # too early to say
    assert lines == []
    clock.t += 2
    p.within(35, 100)  # 8 images' worth in 6 s: 988.8 more take 741.6 s
    assert lines == ["xaibatch: about 12m22s left for 1000 more image(s) (0 done in 8s, current batch 35%)"]
    assert events[0]["eta_s"] == 741.6 and events[0]["done"] == 0 and events[0]["batch_percent"] == 35
    p.within(50, 100)
    p.beat()
    assert lines[1:] == ["xaibatch: 0/1000 images, 8s, about 7m41s left, current batch 50%"]  # 12.8 in 6 s
    p.update(32)
    p.beat()
    assert lines[2:] == ["xaibatch: 32/1000 images, 8s, about 3m22s left"]  # 28.8 in 6 s
    p.close()


def test_without_the_batch_size_a_share_is_no_estimate():
    """The Ray engine's progress knows no batch of its own: as before, an estimate only with whole images."""
    clock, lines = Clock(), []
    p = Progress(1000, bar=False, heartbeat=0, log=lines.append, emit=lambda e: None, json_events=False, clock=clock)
    clock.t += 8
    p.within(25, 100)
    p.beat()
    assert lines == ["xaibatch: 0/1000 images, 8s, current batch 25%"]
    p.close()


def test_the_true_class_pass_counts_in_the_batchs_share(tmp_path, tiny_ckpt, monkeypatch):
    """--target pred,label: after the batch's own LIME pass, its misclassified images' LIME maps of their true
    class took as long again while the line said "current batch 100%, about 0s left". Now the share steps back
    when that pass starts (8 images done of 8 + 4) and reaches 100 % with it."""
    from helpers import quiet, run_opts, write_images
    from xaibatch.pipeline import run
    from xaibatch.pipeline.progress import Progress

    shares = []
    real = Progress.within
    monkeypatch.setattr(Progress, "within", lambda self, d, t: (shares.append(d / t), real(self, d, t))[1])
    write_images(tmp_path / "in" / "FAKE", 4, seed=1)  # the tiny model calls every image REAL: 4 misclassified
    write_images(tmp_path / "in" / "REAL", 4, seed=2)
    opts = run_opts(
        tmp_path / "in",
        tmp_path / "out",
        tiny_ckpt,
        ["lime"],
        batch_size=8,
        target="pred,label",
        method_options={"lime": {"samples": 40, "batch_size": 10}},
    )
    assert run(opts, log=quiet).computed == 8
    top = shares.index(1.0)  # the batch's own pass, done
    assert shares[top + 1] == pytest.approx(8 / 12, abs=0.05) and shares[-1] == 1.0
    assert shares[top + 1 :] == sorted(shares[top + 1 :]) and len(shares) > top + 2
