"""Timing: interleaved rounds keeping each job's best, the model's own forward time, the machine's description."""

from __future__ import annotations

import itertools
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

from .options import Row

Job = tuple[Row, Callable[[bool], "float | None"]]  # fn(warm) -> its own seconds, or None (its wall time counts)


def time_interleaved(jobs: list[Job], repeats: int, log: Callable[[str], None]) -> None:
    """Warm each job up once, then run every job of a family once per round; keep each job's fastest round.

    A job returns its own seconds (the compute phase of a pipeline run) or None (then its wall time counts).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's "Setting backward hooks on ReLU activations", lime's, ...
        for family in dict.fromkeys(r.family for r, _ in jobs):  # one family at a time
            group = [(r, fn) for r, fn in jobs if r.family == family]
            log(f"bench: {family}: warm-up")
            for _row, fn in group:
                fn(True)
            for k in range(repeats):
                log(f"bench: {family}: round {k + 1}/{repeats}")
                for row, fn in group:
                    t = time.perf_counter()
                    own = fn(False)
                    row.seconds = min(row.seconds, own if own is not None else time.perf_counter() - t)
                    log(f"bench: {row.family}: {row.impl}: {row.rate:,.1f} images/s")  # a cut-off run still reports


def stamped(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` with the seconds since now in front: a bench cut off by a timeout shows where its time went."""
    start = time.perf_counter()
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
