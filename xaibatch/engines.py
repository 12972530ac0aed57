"""The compute engines: what an engine is given (:class:`ComputeJob`) and the registry ``--engine`` chooses from.

An engine computes a run's planned work batch by batch and commits each batch's rows after its files exist:
``local`` in this process (:func:`xaibatch.pipeline.compute.compute`: DataLoader workers, a writer thread),
``ray`` in Ray Data actors (:func:`xaibatch.pipeline.ray_engine.compute_ray`). Both cut the same batches and run
the same per-batch code (``BatchWorker``), so their outputs are the same. This module imports neither (nor torch,
nor ray): the CLI reads its choices from :data:`ENGINES` for ``--help``, and an engine's code loads when it runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import UsageError

if TYPE_CHECKING:
    from .pipeline.options import RunOptions
    from .pipeline.plan import Hashes, Known, Plan, Tally
    from .pipeline.prepare import Prepared
    from .pipeline.signals import Stop


def _quiet(_line: str) -> None:
    pass


def _no_check() -> None:
    pass


@dataclass
class ComputeJob:
    """Everything an engine needs to compute a run's planned work (``plan.work``), whichever engine it is."""

    opts: RunOptions
    out: Path
    prepared: Prepared  # the model, methods and batch size (an engine's workers may prepare their own)
    plan: Plan
    known: Known  # the manifest at the start: files a recomputed image replaces
    hashes: Hashes
    run_id: int
    stop: Stop  # SIGINT/SIGTERM: finish the current batches, start no new one
    tally: Tally  # counts and failures, updated per committed batch
    emit: Callable[[dict[str, Any]], None]  # --log-json events
    log: Callable[[str], None] = _quiet
    check: Callable[[], None] = _no_check  # lock.check: raises when the output folder is no longer ours


@dataclass(frozen=True)
class Engine:
    """An engine: ``compute`` runs a ComputeJob; ``check`` refuses up front, before torch loads, a run it cannot do.

    ``workers_device``: what the run's record shows as its device when the engine's workers load the model on their
    own devices (then the driver loads it on the CPU, only to check it and hash); None: this process's device.
    ``record``: the run record's ``engine`` entry.
    """

    compute: Callable[[ComputeJob], None]
    check: Callable[[RunOptions], None] = lambda opts: None
    workers_device: str | None = None
    record: Callable[[RunOptions], Any] = lambda opts: opts.engine


def _local(job: ComputeJob) -> None:
    from .pipeline.compute import compute  # torch (loaded with the model by now)

    compute(job)


def _ray(job: ComputeJob) -> None:
    from .pipeline.ray_engine import compute_ray

    compute_ray(job)


def _ray_check(opts: RunOptions) -> None:
    from .pipeline.ray_engine import check_available  # whether ray is installed, without importing it

    check_available(opts)


def _ray_record(opts: RunOptions) -> dict[str, Any]:
    return {"ray": dataclasses.asdict(opts.ray)}


ENGINES: dict[str, Engine] = {  # the first: the default
    "local": Engine(_local),
    "ray": Engine(_ray, _ray_check, workers_device="Ray workers", record=_ray_record),
}


def engine_for(opts: RunOptions) -> Engine:
    """The engine ``opts.engine`` names, checked against the run's options; a UsageError (exit 2) if it cannot."""
    engine = ENGINES.get(opts.engine)
    if engine is None:
        raise UsageError(f"--engine {opts.engine}: choose {' or '.join(ENGINES)}")
    engine.check(opts)
    return engine
