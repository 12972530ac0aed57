"""Timing: interleaved rounds keeping each job's best, the model's own forward time, the machine's description."""

from __future__ import annotations

import itertools
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .options import Row

if TYPE_CHECKING:
    from ...pipeline.signals import Stop

Job = tuple[Row, Callable[["Slice"], "float | None"]]  # fn(slice) -> its own seconds, or None (its wall time)

WARM_WEIGHT = 0.25  # a warm-up's share of a timed round when the time left is split (it does one batch)


@dataclass
class Slice:
    """The time one round of a row may take, and the images it measured in it.

    A job either loops over chunks with :meth:`chunks` (it stops once the next chunk would not fit, after at
    least one), or plans its images up front with :meth:`plan` from its previous round's rate (a pipeline run,
    whose batches cannot be stopped half-way). A warm-up (``warm``) does the least: one chunk, or ``least``.
    A stop signal (``stop``) ends the chunks too; such a round is not recorded.
    """

    seconds: float = math.inf
    warm: bool = False
    rate: float = 0.0  # images/s of this row's previous round (its own seconds); 0: unknown
    fixed: float = 0.0  # wall seconds of that round outside its own timing (a run's start-up, say)
    images: int = 0  # set by the job: the images this round measured
    hint: tuple[float, float] | None = None  # set by the job: (rate, fixed) for the next round, if it knows better
    start: float = field(default_factory=time.perf_counter)
    paused: float = 0.0
    stop: "Stop | None" = None

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.requested

    def chunks(self, k: int, step: int) -> Iterator[tuple[int, int]]:
        """``(a, z)`` ranges of ``k`` images, ``step`` at a time, while the next one fits in the slice."""
        longest = 0.0
        for a in range(0, k, step):
            now, paused = time.perf_counter(), self.paused
            if a and (self.warm or now - self.start + longest > self.seconds or self.stopped):
                return
            yield a, min(k, a + step)
            longest = max(longest, time.perf_counter() - now - (self.paused - paused))
            self.images = min(k, a + step)

    def pause(self, seconds: float) -> None:
        """Take ``seconds`` just spent on something else (the predictions a row needed) out of this round's."""
        self.start += seconds
        self.paused += seconds

    def plan(self, least: int, most: int, step: int = 1) -> int:
        """Images that fit in the slice at the previous round's rate after its fixed seconds, whole ``step``s
        when more than one, between ``least`` and ``most``; sets :attr:`images`."""
        k = most
        if self.warm:
            k = least
        elif math.isfinite(self.seconds):  # an unknown rate: the least
            left = self.seconds - (time.perf_counter() - self.start) - self.fixed
            k = int(max(0.0, left * self.rate)) if self.rate > 0 else least
            k = k - k % step if k >= step else k
        self.images = max(least, min(most, k))
        return self.images


class Budget:
    """Splits the time left before a deadline among the rounds still to run (a warm-up counts WARM_WEIGHT);
    what a row leaves unused goes to the rows after it."""

    def __init__(self, start: float, seconds: float, units: float) -> None:
        self.deadline = start + seconds if seconds > 0 else math.inf
        self.units = units

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def take(self, weight: float = 1.0) -> float:
        """This round's slice (inf without a budget; 0 once spent: the row does its least)."""
        share = max(0.0, self.left()) * weight / max(self.units, weight) if math.isfinite(self.deadline) else math.inf
        self.units = max(0.0, self.units - weight)
        return share


def time_interleaved(
    jobs: list[Job],
    repeats: int,
    log: Callable[[str], None],
    budget: Budget | None = None,
    stop: "Stop | None" = None,
) -> None:
    """Warm each job up once, then run every job of a family once per round; keep each job's best round.

    Every family's warm-up and first round come first: the round every row owes, whatever the budget, is never
    pushed past it by another family's optional later rounds. Then the later rounds, family by family, each only
    while the time left covers the family's cheapest rounds so far (each row's quickest timed round: a warm-up can
    do less than a round's least, LIME's with fewer samples), so a budget is overrun by no more than the first
    rounds' least work.

    A job returns its own seconds (the compute phase of a pipeline run) or None (then its wall time counts).
    With a budget each round gets a slice of the time left. ``stop`` (a signal) ends the timing with
    KeyboardInterrupt after the chunk or the run's batch under way, its round unrecorded: never raised from the
    signal handler into a job's DataLoader, threads or writer processes, whose locks it could leave held.
    """
    budget = budget or Budget(time.perf_counter(), 0, 0)
    seen: dict[int, tuple[float, float]] = {}  # id(row) -> (rate, fixed) of its last round
    cheapest: dict[int, float] = {}  # id(row) -> wall seconds of its quickest timed round
    families = {f: [(r, fn) for r, fn in jobs if r.family == f] for f in dict.fromkeys(r.family for r, _ in jobs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's "Setting backward hooks on ReLU activations", lime's, ...
        for family, group in families.items():  # one family at a time
            log(f"bench: {family}: warm-up")
            for row, fn in group:
                budget.take(WARM_WEIGHT * row.share)
                row.warm_wall, seen[id(row)] = _one(fn, Slice(warm=True, stop=stop))
            _round(family, group, 1, repeats, budget, seen, cheapest, log, stop)
        for k in range(2, repeats + 1):
            for family, group in list(families.items()):
                if budget.left() < sum(cheapest[id(r)] for r, _ in group):
                    budget.take(sum(r.share for r, _ in group) * (repeats - k + 1))
                    log(f"bench: {family}: budget spent, no round {k}")
                    del families[family]
                    continue
                _round(family, group, k, repeats, budget, seen, cheapest, log, stop)


def _round(
    family: str,
    group: list[Job],
    k: int,
    repeats: int,
    budget: Budget,
    seen: dict[int, tuple[float, float]],
    cheapest: dict[int, float],
    log: Callable[[str], None],
    stop: "Stop | None",
) -> None:
    """Round ``k`` of one family: each row once, in a slice of the budget, planned from its previous round."""
    log(f"bench: {family}: round {k}/{repeats}")
    for row, fn in group:
        rate, fixed = seen[id(row)]
        sl = Slice(budget.take(row.share), rate=rate, fixed=fixed, stop=stop)
        wall, seen[id(row)] = _one(fn, sl, row)
        row.rounds_wall += wall
        cheapest[id(row)] = min(wall, cheapest.get(id(row), wall))
        log(f"bench: {row.family}: {row.impl}: {row.rate:,.1f} images/s over {row.images} images")


def _one(fn: Callable[[Slice], "float | None"], sl: Slice, row: Row | None = None) -> tuple[float, tuple[float, float]]:
    """Run one round: its wall seconds, and (rate, fixed) for planning the next one. A timed round goes to ``row``;
    a stopped one raises KeyboardInterrupt instead."""
    if sl.stopped:
        raise KeyboardInterrupt
    own = fn(sl)
    if sl.stopped:
        raise KeyboardInterrupt
    wall = time.perf_counter() - sl.start
    seconds = own if own is not None else wall
    if row is not None:
        row.record(sl.images, seconds)
    return wall, sl.hint or (sl.images / seconds if seconds > 0 else 0.0, max(0.0, wall - seconds))


def stamped(log: Callable[[str], None], start: float | None = None) -> Callable[[str], None]:
    """``log`` with the seconds since ``start`` (now) in front: a bench cut off by a timeout shows where its
    time went."""
    start = time.perf_counter() if start is None else start
    return lambda s: log(f"[{time.perf_counter() - start:6.1f}s] {s}")


class ModelTimer:
    """Wall time spent inside forwards of modules of one type (the top-level model), via global module hooks."""

    def __init__(self, model_type: type, sync: Callable[[], None]) -> None:
        self.model_type = model_type
        self.sync = sync
        self.seconds = 0.0
        self._start: float | None = None
        self._handles: list = []

    def __enter__(self) -> "ModelTimer":
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def pre(m, _inp):
            if type(m) is self.model_type and self._start is None:
                self.sync()
                self._start = time.perf_counter()

        def post(m, _inp, _out):
            if type(m) is self.model_type and self._start is not None:
                self.sync()
                self.seconds += time.perf_counter() - self._start
                self._start = None

        self._handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def scratch(root: Path, name: str) -> Iterator[Path]:
    """A new folder name under ``root`` for each round of a row (``name-1``, ``name-2``, ...)."""
    return (root / f"{name}-{i}" for i in itertools.count(1))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def load_average() -> str:
    try:
        return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        return "?"
