"""``--engine ray``: the per-batch work in Ray Data actors; what happens once stays on the driver.

The driver (this process) keeps the lock, the scan, the plan, the manifest commits, predictions.csv
and the report, exactly as with the local engine. It cuts the plan into the local engine's batches
(:func:`.compute.batches`) and streams them through ``ray.data`` ``map_batches`` with an actor pool:
each actor loads the model once (:func:`.prepare.prepare`, the same code), and per batch decodes,
explains (:class:`.compute.BatchWorker`) and writes the files (:func:`.writer.write_files`) straight
into ``--out``, which every node must see (NFS or any shared mount; checked at start-up). It sends
back only a :class:`.writer.Commit` (rows, no pixels), which the driver commits after ``lock.check()``
(:func:`.writer.commit`), as the local writer thread does: rows only after their files exist.

Faults: Ray restarts a dead actor and retries its batch (files are rewritten atomically under the
same names; a batch committed twice is skipped); whatever is not committed when the driver stops is
computed by the next run. Actors that die while loading the model are counted (by the stop flag's
actor): the one after TASK_RETRIES such deaths stops the run instead of loading (exit code 3).
SIGINT/SIGTERM sets a stop flag the actors poll: batches not started are skipped, running ones
finish (LIME abandons its batch), their rows are committed, exit code 5.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

from .. import layout
from ..engines import ComputeJob
from ..errors import UsageError
from ..scan import Scan
from .options import RunOptions
from .plan import Tally
from .ray_connect import answers, connect, literal_hostport, quiet_ray_data, resources
from .ray_worker import Result, StopFlag, Task, WorkerConfig, task_for, worker_class
from ..threadsafe import catch_warnings

INSTALL = 'pip install "xaibatch[ray]" (from a checkout: pip install -e ".[ray]")'


def check_available(opts: RunOptions) -> None:
    """Refuse ``--engine ray`` up front when Ray is missing or the run asks for what it does not do."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed; install it with: {INSTALL}")
    r = opts.ray
    if r.workers is not None and r.workers < 1:
        raise UsageError("--ray-workers must be at least 1")
    if (r.gpus_per_worker is not None and r.gpus_per_worker < 0) or r.cpus_per_worker <= 0:
        raise UsageError("--gpus-per-worker must be 0 or more and --cpus-per-worker more than 0")
    address = r.address or os.environ.get("RAY_ADDRESS") or ""
    if hostport := literal_hostport(address):  # a head that does not answer: said before the model loads
        answers(address, hostport)


# Times Ray retries a batch whose actor died (an OOM kill, a decoder's segfault) before giving it up: then the
# batch's images are computed one at a time, and an image that still kills its worker fails with a reason.
# Also the actors that may die while loading the model: one more stops the run (ray_worker.LoadCrashed).
TASK_RETRIES = 2


def fail_dead(
    manifest: Any,
    rels: list[str],
    run_id: int,
    check: Callable[[], None],
    tally: Tally,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Commit as failures the images that killed their Ray worker on every try (they leave the report)."""
    from ..scan import Failure
    from .compute import account
    from .writer import Commit, commit

    reason = (
        f"the Ray worker died on this image {TASK_RETRIES + 1} times (out of memory, or a crash decoding or "
        "explaining it)"
    )
    failed = [Failure(rel, reason, "image") for rel in rels]
    commit(manifest, Commit(run_id, failed=failed, count=len(failed)), check)
    account(tally, emit, failed, 0)


def worker_config(job: ComputeJob, batch_size: int, probe: str, token: str, stop_name: str, cpus: float):
    """What every actor is given: the run's options with paths absolute and the driver-only parts left out."""
    opts, out, found = job.opts, job.out, job.prepared.found
    worker_opts = dataclasses.replace(
        opts,
        input_dir=Path(os.path.abspath(opts.input_dir)),
        out_dir=Path(os.path.abspath(out)),
        checkpoint=Path(os.path.abspath(opts.checkpoint)) if opts.checkpoint is not None else None,
        on_event=None,
        progress=False,
        handle_signals=False,
        template_dir=None,
        batch_size=batch_size,
        # cuda:N names one of the driver's GPUs; an actor sees only the GPU Ray gave it, as cuda
        device="cuda" if opts.device.strip().lower().startswith("cuda:") else opts.device,
    )
    return WorkerConfig(
        worker_opts,
        Scan(found.root, found.classes, [], [], list(found.empty_classes)),
        job.hashes,
        job.run_id,
        os.path.abspath(out),
        probe,
        token,
        stop_name,
        threads=max(1, int(cpus)),
        cwd=os.getcwd(),
        retries=TASK_RETRIES,
    )


class Streamer:
    """Runs tasks on a pool of actors and commits each batch's Commit as it comes back, once per batch."""

    def __init__(self, job: ComputeJob, manifest: Any, config: WorkerConfig, workers: int, gpus: float, cpus: float):
        self.job, self.manifest, self.config = job, manifest, config
        self.workers, self.gpus, self.cpus = workers, gpus, cpus
        self.committed: set[int] = set()
        self.progress: Any = None
        self.split: int | None = None  # the smallest size an actor split a batch to (said once per size)

    def stream(self, batch: list[Task], alone: bool = False) -> set[int]:
        """Run these tasks, committing each Commit as it comes back; the indices that came back. ``alone``: one
        task in flight per actor, so that an actor's death is counted against the task that killed it only (the
        images of a lost batch, one a task: with several in flight, an image queued behind the one that kills the
        worker died with it three times and failed too, in a slow-tier run of 5 images: 3 computed, not 4)."""
        import ray.data

        from .compute import account, say_split
        from .writer import commit

        job = self.job
        ds = ray.data.from_items([{"task": pickle.dumps(t)} for t in batch], override_num_blocks=len(batch))
        with catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")  # deprecated for the same named ones
            ds = ds.map_batches(  # a task whose actor dies TASK_RETRIES + 1 times is dropped (max_errored_blocks)
                worker_class(self.config),
                batch_size=1,
                batch_format="numpy",
                zero_copy_batch=True,
                compute=ray.data.ActorPoolStrategy(
                    size=min(self.workers, len(batch)), **({"max_tasks_in_flight_per_actor": 1} if alone else {})
                ),
                num_cpus=self.cpus,
                num_gpus=self.gpus,
                max_restarts=-1,
                max_task_retries=TASK_RETRIES,
            )
        back: set[int] = set()
        for row in ds.iter_rows():
            res: Result = pickle.loads(row["record"])
            if res.error is not None:
                raise res.error
            if res.skipped and not job.stop.requested:  # never expected: a run must not say ok with work left
                raise RuntimeError(f"the Ray worker {res.worker} skipped batch {res.index} without a stop")
            back.add(res.index)
            if res.skipped or res.index in self.committed:  # a retried batch that had already come back
                continue
            commit(self.manifest, res.commit, job.check)
            self.committed.add(res.index)
            if res.split is not None and (self.split is None or res.split["size"] < self.split):
                self.split = res.split["size"]  # each actor learns the size on its own: one line per size
                say_split(job.emit, job.log, res.split, not job.opts.events_only)
            account(job.tally, job.emit, res.commit.failed, res.commit.computed)
            if self.progress is not None:
                self.progress.update(res.commit.count)
        return back

    def stream_all(self, tasks: list[Task]) -> None:
        """Run ``tasks``; a batch that killed its worker every time again image by image, and the images that
        still do fail."""
        job, plan, known = self.job, self.job.plan, self.job.known
        back = self.stream(tasks)
        lost = [t for t in tasks if t.index not in back]
        if not lost or job.stop.requested:
            return
        job.log(
            f"xaibatch: {len(lost)} batch(es) made their Ray worker die {TASK_RETRIES + 1} times (out of "
            "memory? a crash?); computing their images one at a time"
        )
        singles = [
            task_for(len(tasks) + k, t.todo, [e], plan, known)
            for k, (t, e) in enumerate((t, e) for t in lost for e in t.entries)
        ]
        back = self.stream(singles, alone=True)
        dead = [t.entries[0].rel for t in singles if t.index not in back]
        if dead and not job.stop.requested:
            fail_dead(self.manifest, dead, job.run_id, job.check, job.tally, job.emit)


def forward_stop(stop: Any, flag: Any) -> threading.Event:
    """Pass a stop on to the actors' flag (a signal reaches only the driver) until the returned event is set."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if stop.requested:
                flag.set.remote()
                return

    threading.Thread(target=watch, name="xaibatch-ray-stop", daemon=True).start()
    return done


def compute_ray(job: ComputeJob) -> None:
    """The local engine's compute() on Ray: batches to actors, their Commits committed here as they arrive."""
    opts, out, prepared, plan, known = job.opts, job.out, job.prepared, job.plan, job.known
    if not plan.work:
        return
    import ray
    import ray.data  # noqa: F401  (Streamer uses it; imported before connect(), as this engine always has)

    from ..defaults import default_batch_size
    from ..files import atomic_write_bytes, temp_name
    from ..manifest import Manifest
    from .compute import announce, batches, progress_bar
    from .recovery import sweep_temp_files
    from .writer import planned_overwrites, unclaim

    announce(prepared, plan, job.emit, job.log, known, opts.events_only)
    started = connect(opts.ray)
    flag = None
    token = uuid.uuid4().hex
    probe = temp_name("xaibatch-ray-probe")  # a crash leaves it to the sweep
    manifest = Manifest(out / layout.MANIFEST)
    streamer = None
    try:
        quiet_ray_data()
        n_workers, gpus, cpus = resources(opts.ray, opts.device)
        batch_size = opts.batch_size or default_batch_size("cuda" if gpus > 0 else "cpu", prepared.model.input_size)
        tasks = [task_for(i, todo, entries, plan, known) for i, (todo, entries) in enumerate(batches(plan, batch_size))]
        n_workers = min(n_workers, len(tasks))
        if not opts.events_only:  # --log-json: stderr keeps what a scheduler must read (a cron job mailed this line)
            job.log(
                f"xaibatch: {len(tasks)} batch(es) of up to {batch_size} on {n_workers} Ray worker(s) "
                f"({gpus:g} GPU, {cpus:g} CPU each)"
            )
        atomic_write_bytes(out / probe, token.encode())
        stop_name = f"xaibatch-stop-{token}"
        flag = ray.remote(StopFlag).options(name=stop_name, num_cpus=0).remote()
        config = worker_config(job, batch_size, probe, token, stop_name, cpus)
        unclaim(manifest, *planned_overwrites(plan.work, known), job.check)  # rows before the files they name
        streamer = Streamer(job, manifest, config, n_workers, gpus, cpus)
        done = forward_stop(job.stop, flag)
        # one first batch per actor carries its start-up (Ray's workers, torch, the model): no rate from those
        streamer.progress = progress_bar(opts, len(plan.work), job.log, job.emit, warmup=n_workers)
        try:
            streamer.stream_all(tasks)
        finally:
            done.set()
        # Every task has ended (a stop makes the rest skip): a temporary file left now is one a killed actor
        # never renamed. We hold the lock, so no one else writes here; the driver's own (the run's disk reserve,
        # files.Reserve) stay.
        sweep_temp_files(out, lambda pid: pid != os.getpid())
    finally:
        if streamer is not None and streamer.progress is not None:
            streamer.progress.close()
        manifest.close()
        try:
            (out / probe).unlink(missing_ok=True)
        except OSError:
            pass
        if flag is not None:
            try:
                ray.kill(flag)
            except Exception:
                pass
        if started:
            ray.shutdown()
