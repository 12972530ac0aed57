"""``--engine ray``: what runs in a Ray Data actor, and what travels to it (a batch's Task, its Result).

Each actor loads the model once (:func:`.prepare.prepare`, the same code as the driver's), then per batch
decodes, explains (:class:`.compute.BatchWorker`) and writes the files (:func:`.writer.write_files`) straight into
``--out``; it sends back only a :class:`.writer.Commit` (rows, no pixels), which the driver commits.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError, XaibatchError
from ..scan import ImageEntry, Scan
from .options import RunOptions
from .plan import Hashes, Known, Plan


@dataclass
class Task:
    """One batch for an actor: its images and the slices of the plan and the manifest they need."""

    index: int
    todo: tuple[str, ...]  # the methods
    entries: list[ImageEntry]
    plan: Plan
    known: Known


@dataclass
class Result:
    """What an actor sends back for a task: a Commit, or that it skipped it (stop), or an error."""

    index: int
    commit: Any = None  # writer.Commit
    skipped: bool = False
    error: BaseException | None = None
    worker: str = ""  # host:pid
    split: dict[str, Any] | None = None  # the batch did not fit in the actor's memory: compute.split_event


@dataclass
class WorkerConfig:
    """What every actor needs, fixed for the run (a class attribute, so a restarted actor has it too)."""

    opts: RunOptions
    found: Scan  # the classes only: the images travel with the tasks
    hashes: Hashes
    run_id: int
    out: str
    probe: str  # a file the driver wrote under out: an actor that cannot read it does not share the folder
    token: str
    stop_name: str  # the named actor that says stop
    threads: int  # decoding threads
    cwd: str = ""  # the driver's working folder: a relative --model FILE.py resolves as it does there
    retries: int = 2  # actors that may die while loading the model before the run stops (ray_engine.TASK_RETRIES)


class LoadCrashed(XaibatchError):
    """Ray workers kept dying while they loaded the model (exit code 3): Ray would restart them forever."""


def task_for(index: int, todo: tuple[str, ...], entries: list[ImageEntry], plan: Plan, known: Known) -> Task:
    """A batch's task; image paths absolute, since an actor's working folder is not the driver's."""
    rels = [e.rel for e in entries]
    sub_plan = Plan([], [], [], {r: plan.work[r] for r in rels}, [], {r: plan.stems[r] for r in rels})
    sub_known = Known(
        {r: known.images[r] for r in rels if r in known.images},
        {r: known.maps[r] for r in rels if r in known.maps},
        {},
    )
    absolute = [dataclasses.replace(e, file=os.path.abspath(e.file)) for e in entries]
    for e in absolute:
        sub_plan.work[e.rel] = dataclasses.replace(sub_plan.work[e.rel], entry=e)
    return Task(index, todo, absolute, sub_plan, sub_known)


class Worker:
    """A Ray Data callable class: loads the model once, then explains and writes one batch per call."""

    config: WorkerConfig  # set on the subclass made by worker_class

    def __init__(self) -> None:
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.error: BaseException | None = None
        loads = Loads.join(self.config.stop_name)  # before anything heavy: torch's import can crash too
        if loads is not None and loads.died > self.config.retries:
            self.error = LoadCrashed(
                f"Ray workers died while loading the model ({loads.died} times): out of memory, or a crash or an "
                "exit in the model's code (or torch's); the Ray worker logs of the node say which "
                "(/tmp/ray/session_latest/logs)"
            )
            loads.done()
            return
        try:
            self._load()
        finally:  # loaded, or failed with an error this actor reports: either way it did not die loading
            if loads is not None:
                loads.done()

    def _load(self) -> None:
        import torch

        from ..files import OutputDir
        from .compute import BatchWorker
        from .prepare import prepare

        c = self.config
        # CPU floats depend on torch's thread count (how a sum is split): one per CPU Ray gives the actor, so
        # the maps are bit-identical to a local run at that many threads (see README, --engine ray).
        torch.set_num_threads(max(1, c.threads))
        if c.cwd and os.path.isdir(c.cwd):
            os.chdir(c.cwd)
        self.stop_flag: Any = None
        self.stopped = False
        self.last_poll = 0.0
        self.pool = ThreadPoolExecutor(max(1, c.threads), thread_name_prefix="xaibatch-decode")
        self.files = OutputDir(Path(c.out))
        try:
            _check_folders_visible(c)
            self.prepared = prepare(c.opts, c.found)
            _check_same_config(c, self.prepared)
            empty_plan, empty_known = Plan([], [], [], {}, [], {}), Known({}, {}, {})  # each task brings its own
            scorer = _scorer(c, self.prepared)
            self.splits: list[dict[str, Any]] = []  # the batch_split events of the task under way
            self.worker = BatchWorker(
                c.opts,
                self.prepared,
                c.hashes,
                empty_plan,
                empty_known,
                c.run_id,
                scorer,
                should_stop=self.should_stop,
                on_split=self.splits.append,
            )
            from .writer import writer_threads

            n = writer_threads(self.prepared.device.type, c.threads)
            self.write_pool = ThreadPoolExecutor(n, thread_name_prefix="xaibatch-encode") if n > 1 else None
        except Exception as e:  # reported with the first result: the driver turns it into the run's error
            self.error = e

    def should_stop(self) -> bool:
        """The driver's stop flag, asked at most once a second (LIME polls it per model sub-batch)."""
        import time

        import ray

        if self.stopped:
            return True
        now = time.monotonic()
        if now - self.last_poll < 1.0:
            return False
        self.last_poll = now
        try:
            if self.stop_flag is None:
                self.stop_flag = ray.get_actor(self.config.stop_name)
            self.stopped = bool(ray.get(self.stop_flag.is_set.remote(), timeout=30))
        except Exception:  # not answered: keep going (a driver that is gone takes its job's actors with it)
            return False
        return self.stopped

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = [pickle.dumps(self.run(pickle.loads(blob))) for blob in batch["task"]]
        return {"record": np.array(out, dtype=object)}

    def run(self, task: Task) -> Result:
        from ..dataset import collate
        from .writer import write_files

        if self.error is not None:
            return Result(task.index, error=self.error, worker=self.name)
        self.last_poll = 0.0  # a fresh look at the flag before each batch
        if self.should_stop():
            return Result(task.index, skipped=True, worker=self.name)
        try:
            self.worker.plan, self.worker.known = task.plan, task.known
            ds = self.worker.dataset(task.todo, task.entries)
            b = collate(list(self.pool.map(ds.__getitem__, range(len(ds)))))  # what the DataLoader makes
            self.splits.clear()
            job, _abandoned = self.worker.job(task.todo, task.entries, b)  # abandoned: its failures only
            commit = write_files(self.files, job, self.write_pool)
            return Result(task.index, commit=commit, worker=self.name, split=self.splits[-1] if self.splits else None)
        except Exception as e:
            return Result(task.index, error=e, worker=self.name)


def _check_folders_visible(c: WorkerConfig) -> None:
    """Refuse to work on a node that does not see --out (the driver's probe file) or INPUT_DIR at their paths."""
    probe = Path(c.out) / c.probe
    if not probe.is_file() or probe.read_text() != c.token:
        raise UsageError(
            f"--out {c.out} is not visible from the Ray worker on {socket.gethostname()}: with "
            "--engine ray the output folder must be on a file system every node mounts at the "
            "same path (NFS or similar)"
        )
    if not Path(c.opts.input_dir).is_dir():
        raise UsageError(
            f"INPUT_DIR {c.opts.input_dir} is not visible from the Ray worker on "
            f"{socket.gethostname()}: every node must see it at the same path"
        )


def _check_same_config(c: WorkerConfig, prepared: Any) -> None:
    """Refuse a model or method configuration whose hashes differ from the driver's."""
    from .plan import config_hashes

    mine = config_hashes(prepared, c.opts.target, None, c.opts.max_map_side)
    if (mine.predict, mine.methods) != (c.hashes.predict, c.hashes.methods):
        what = "model" if mine.predict != c.hashes.predict else "method configuration"
        raise UsageError(
            f"the Ray worker on {socket.gethostname()} has a different {what} than the driver: "
            "every node needs the same checkpoint and xaibatch, and a --model factory without "
            "--checkpoint must build the same weights in every process (seed it)"
        )


def _scorer(c: WorkerConfig, prepared: Any) -> Any:
    """The faithfulness scorer of a run with --faithfulness (None without): the maps' scores (the driver scores
    the chance sample once the maps are in, as after a local run)."""
    from ..evaluation.faithfulness import scorer_for

    return scorer_for(c.opts.faithfulness, prepared.ctx, c.hashes.methods)


def worker_class(config: WorkerConfig) -> type:
    """A Worker subclass carrying ``config``: Ray pickles it by value, and a restarted actor needs no arguments."""
    return type("XaibatchWorker", (Worker,), {"config": config})


class StopFlag:
    """What the actors ask the driver's side of the run: its SIGINT/SIGTERM, and how often one of them died while it
    loaded the model (a named actor of the run, see ray_engine)."""

    def __init__(self) -> None:
        self.flag = False
        self.loading_now: set[str] = set()  # actor ids that began loading and have not finished
        self.died = 0

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag

    def loading(self, actor: str) -> int:
        """``actor`` begins to load the model; return how many times actors died loading it. Ray restarts a dead
        actor under the same id: one still loading when it begins again died while it loaded."""
        if actor in self.loading_now:
            self.died += 1
        self.loading_now.add(actor)
        return self.died

    def loaded(self, actor: str) -> None:
        self.loading_now.discard(actor)


@dataclass
class Loads:
    """An actor's report of its loading to the run's StopFlag (none outside a Ray actor)."""

    flag: Any
    actor: str
    died: int

    @classmethod
    def join(cls, flag_name: str) -> Loads | None:
        try:
            import ray

            if not ray.is_initialized():
                return None
            actor = ray.get_runtime_context().get_actor_id()
            if actor is None:
                return None
            flag = ray.get_actor(flag_name)
            return cls(flag, actor, ray.get(flag.loading.remote(actor), timeout=30))
        except Exception:  # no answer: load as before, unbounded restarts and all
            return None

    def done(self) -> None:
        try:
            self.flag.loaded.remote(self.actor)
        except Exception:
            pass
