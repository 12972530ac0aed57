"""How a run reports progress: a tqdm bar on a terminal; an estimate of the time left once the first batches are
done; off a terminal, a line (or a JSON ``progress`` event) about every ``RunOptions.heartbeat`` seconds."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

from ..console import silence_terminals, terminal_gone

MIN_ESTIMATE_S = 5.0  # no estimate before this much compute time: a run this short needs none


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``4000`` -> ``1h06m``: short and readable."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts computed images (from the writer's thread) and the current batch's share (from the compute loop)."""

    def __init__(
        self,
        total: int,
        bar: bool,
        heartbeat: float,
        log: Callable[[str], None],
        emit: Callable[[dict[str, Any]], None],
        json_events: bool,
        clock: Callable[[], float] = time.monotonic,
        warmup: int = 0,
        batch_size: int = 0,
        phase: str | None = None,
    ) -> None:
        self.total, self.log, self.emit, self.json_events, self.clock = total, log, emit, json_events, clock
        # None: the images computed; "scoring": those whose saved maps are only scored (pipeline/rescore.py), a pass
        # of its own, with its own rate: its events say "phase", its lines "scored"
        self.phase = phase
        self.done = 0  # images done
        self.batch: int | None = None  # the current batch's share in percent, when a method says
        self.step: str | None = None  # what a batch of several methods runs now (running)
        # batch_size: images per batch (0: not known); with it the current batch's share counts towards the rate,
        # so that a slow first batch (LIME's 32 images x 1,000 forwards: minutes on a CPU) has an estimate
        # within seconds instead of after it
        self.batch_size, self.share = batch_size, 0.0
        self.start = clock()
        # warmup: the first updates that also carry the workers' start-up (a Ray actor loads the model after the
        # run's clock started, and all of them finish their first batch at about the same time): the rate is
        # measured from the last of them on, over the images done since (the estimate was 4.7 times the time left)
        self.warmup, self.rate_start, self.rate_base = warmup, self.start, 0
        self.estimated = False
        self._lock = threading.Lock()
        self._bar = None
        if bar:
            desc = "xaibatch" if phase is None else f"xaibatch {phase}"
            self._bar = _bar_class()(total=total, unit="img", desc=desc, dynamic_ncols=True)
        self._stop = threading.Event()
        self._beat = None
        if heartbeat > 0 and self._bar is None:
            self._beat = threading.Thread(target=self._beats, args=(heartbeat,), name="xaibatch-progress", daemon=True)
            self._beat.start()

    def images_done(self) -> float:
        """Images done, with the current batch's share of its images when the batch size is known."""
        if self.batch is None or not self.batch_size:
            return self.done
        return self.done + self.share * min(self.batch_size, self.total - self.done)

    def eta(self) -> float | None:
        """Seconds left at the rate so far, or None before the first image or batch share (after the warm-up's
        updates)."""
        done = self.images_done()
        if self.warmup or done <= self.rate_base:
            return None
        return (self.clock() - self.rate_start) / (done - self.rate_base) * (self.total - done)

    def update(self, n: int) -> None:
        """``n`` more images are done; the first time enough time has passed, say how long the rest will take."""
        with self._lock:
            self.done += n
            self.batch = None
            if self._bar is not None:
                self._show(self._bar.update, n)
            if self.warmup:
                self.warmup -= 1
                if not self.warmup:
                    self.rate_start, self.rate_base = self.clock(), self.done
                return
            self._estimate()

    def _estimate(self) -> None:
        """Say how long the rest will take, once: when enough time has passed and some work is done (under the
        lock)."""
        # not before the first image: a batch a stop signal abandoned counts 0 (its ETA would be None)
        if (
            self.estimated
            or self.warmup
            or self.images_done() <= self.rate_base
            or self.done >= self.total
            or self.clock() - self.rate_start < MIN_ESTIMATE_S
        ):
            return
        self.estimated = True
        elapsed, eta = self.clock() - self.start, self.eta()
        self.emit(self._event(elapsed, eta))
        if self.json_events:  # --log-json: the event is the estimate; stderr keeps to what has no event
            return
        batch = f", current batch {self.batch}%" if self.batch is not None else ""
        what = "" if self.phase is None else " to score"
        text = (
            f"xaibatch: about {duration(eta)} left for {self.total - self.done} more image(s){what} "
            f"({self.done} done in {duration(elapsed)}{batch})"
        )
        if self._bar is not None:
            self._show(self._bar.write, text, file=sys.stderr)  # above the bar, which is redrawn
        else:
            self._show(self.log, text)

    def within(self, done: int, total: int) -> None:
        """Progress inside the current batch (LIME: per model sub-batch)."""
        pct = 100 * done // max(1, total)
        with self._lock:
            first = self.batch_size and not self.done and self.batch is None and not self.warmup
            self.batch, self.share = pct, min(1.0, done / max(1, total))
            if first and not self.rate_base:
                # the rate from the first share on: before it the workers' start, the first decoding and
                # superpixels and torch's first forwards (on the 2-core box the estimate was 1.5 times the time
                # left when measured from the start)
                self.rate_start, self.rate_base = self.clock(), self.images_done()
            if self._bar is not None:
                self._show(self._bar.set_postfix_str, self._postfix(), refresh=True)
            self._estimate()

    def running(self, step: str | None) -> None:
        """What a batch of several methods runs now (a method's name, or the faithfulness scores; None: the batch is
        done), said beside the batch's share: a first batch has no share until each of them ran once, and nine
        methods on a CPU take minutes over it."""
        with self._lock:
            self.step = step
            if self._bar is not None:
                self._show(self._bar.set_postfix_str, self._postfix(), refresh=True)

    def _postfix(self) -> str:
        """The bar's words after its counts: the batch's share and the step running, those known."""
        words = [] if self.batch is None else [f"batch {self.batch}%"]
        return ", ".join(words + [self.step] if self.step else words)

    def _event(self, elapsed: float, eta: float | None) -> dict[str, Any]:
        return {
            "event": "progress",
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "batch_percent": self.batch,
            **({"method": self.step} if self.step else {}),
            **({"phase": self.phase} if self.phase else {}),
        }

    def line(self) -> str:
        """One progress line: images done, time so far, time left (and the current batch's share)."""
        elapsed, eta = self.clock() - self.start, self.eta()
        left = f", about {duration(eta)} left" if eta is not None else ""
        batch = f", current batch {self.batch}%" if self.batch is not None else ""
        step = f", running {self.step}" if self.step else ""
        what = "images" if self.phase is None else "images scored"
        return f"xaibatch: {self.done}/{self.total} {what}, {duration(elapsed)}{left}{batch}{step}"

    def beat(self) -> None:
        """Say where the run is: a JSON event with --log-json, else a line."""
        with self._lock:
            if self.json_events:
                self.emit(self._event(self.clock() - self.start, self.eta()))
            else:
                self._show(self.log, self.line())

    def _show(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Draw or print through ``fn``; a terminal that has gone (closed with SIGHUP ignored) fails no run: its
        output goes nowhere from then on."""
        try:
            fn(*args, **kwargs)
        except OSError as e:
            if not terminal_gone(e):
                raise
            silence_terminals()

    def _beats(self, every: float) -> None:
        while not self._stop.wait(every):
            self.beat()

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._bar is not None:
            self._show(self._bar.close)


def progress_bar(
    opts: Any,
    total: int,
    log: Callable[[str], None] = lambda s: None,
    emit: Callable[[dict[str, Any]], None] = lambda e: None,
    warmup: int = 0,
    batch_size: int = 0,
    phase: str | None = None,
) -> Progress:
    """The run's progress over every image to compute (a bar only when ``opts.progress``); ``warmup``,
    ``batch_size`` and ``phase``: see Progress (the Ray engine's actors, one first batch each; the local engine's
    batches; the pass that scores saved maps)."""
    return Progress(
        total,
        bar=opts.progress,
        heartbeat=opts.heartbeat,
        log=log,
        emit=emit,
        json_events=opts.events_only,
        warmup=warmup,
        batch_size=batch_size,
        phase=phase,
    )


def _bar_class():
    """tqdm without its monitor thread, which outlives the bar: the report forks only while the run has no other
    thread (report/forked.py), so with tqdm's own class a run on a terminal built its report on one core."""
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # tqdm's clock is time.time: a wall clock set back froze the bar (it redraws once its clock passed the
            # last draw's) with a negative elapsed time ("-59:59"); NTP stepping it forward showed hours
            self._time = time.monotonic
            self.last_print_t = self.start_t = self._time()

    return Bar
