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
computed by the next run. SIGINT/SIGTERM sets a stop flag the actors poll: batches not started are
skipped, running ones finish (LIME abandons its batch), their rows are committed, exit code 5.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import layout
from ..defaults import ENGINES
from ..errors import Interrupted, UsageError
from ..scan import ImageEntry, Scan
from .options import RayOptions, RunOptions
from .plan import Hashes, Known, Plan, Tally
from .signals import Stop

INSTALL = 'pip install "xaibatch[ray]"'


def check_available(opts: RunOptions) -> None:
    """Refuse ``--engine ray`` up front when Ray is missing or the run asks for what it does not do."""
    if opts.engine not in ENGINES:
        raise UsageError(f"--engine {opts.engine}: choose {' or '.join(ENGINES)}")
    if opts.engine != "ray":
        return
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed; install it with: {INSTALL}")
    r = opts.ray
    if r.workers is not None and r.workers < 1:
        raise UsageError("--ray-workers must be at least 1")
    if (r.gpus_per_worker is not None and r.gpus_per_worker < 0) or r.cpus_per_worker <= 0:
        raise UsageError("--gpus-per-worker must be 0 or more and --cpus-per-worker more than 0")


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


def task_for(index: int, todo: tuple[str, ...], entries: list[ImageEntry], plan: Plan, known: Known) -> Task:
    """A batch's task; image paths absolute, since an actor's working folder is not the driver's."""
    rels = [e.rel for e in entries]
    sub_plan = Plan([], [], [], {r: plan.work[r] for r in rels}, [], {r: plan.stems[r] for r in rels})
    sub_known = Known(
        {r: known.images[r] for r in rels if r in known.images},
        {r: known.maps[r] for r in rels if r in known.maps},
        set(),
    )
    absolute = [dataclasses.replace(e, file=os.path.abspath(e.file)) for e in entries]
    for e in absolute:
        sub_plan.work[e.rel] = dataclasses.replace(sub_plan.work[e.rel], entry=e)
    return Task(index, todo, absolute, sub_plan, sub_known)


class Worker:
    """A Ray Data callable class: loads the model once, then explains and writes one batch per call."""

    config: WorkerConfig  # set on the subclass made by worker_class

    def __init__(self) -> None:
        import torch

        from ..files import OutputDir
        from .compute import BatchWorker
        from .plan import config_hashes
        from .prepare import prepare

        c = self.config
        # CPU floats depend on torch's thread count (how a sum is split): one per CPU Ray gives the actor, so
        # the maps are bit-identical to a local run at that many threads (see README, --engine ray).
        torch.set_num_threads(max(1, c.threads))
        if c.cwd and os.path.isdir(c.cwd):
            os.chdir(c.cwd)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.error: BaseException | None = None
        self.stop_flag: Any = None
        self.stopped = False
        self.last_poll = 0.0
        self.pool = ThreadPoolExecutor(max(1, c.threads), thread_name_prefix="xaibatch-decode")
        self.files = OutputDir(Path(c.out))
        try:
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
            self.prepared = prepare(c.opts, c.found)
            mine = config_hashes(self.prepared, c.opts.target, None, c.opts.max_map_side)
            if (mine.predict, mine.methods) != (c.hashes.predict, c.hashes.methods):
                what = "model" if mine.predict != c.hashes.predict else "method configuration"
                raise UsageError(
                    f"the Ray worker on {socket.gethostname()} has a different {what} than the driver: "
                    "every node needs the same checkpoint and xaibatch, and a --model factory without "
                    "--checkpoint must build the same weights in every process (seed it)"
                )
            empty_plan, empty_known = Plan([], [], [], {}, [], {}), Known({}, {}, set())  # each task brings its own
            scorer = None
            if c.opts.faithfulness is not None:  # scores only: the driver computes the chance sample once
                from ..evaluation.faithfulness import scorer_for

                scorer = scorer_for(
                    Path(c.out), c.opts.faithfulness, self.prepared.ctx, c.hashes.methods, c.hashes.predict
                )
                scorer.chance_sample = 0
            self.worker = BatchWorker(
                c.opts, self.prepared, c.hashes, empty_plan, empty_known, c.run_id, scorer, should_stop=self.should_stop
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
            job, _abandoned = self.worker.job(task.todo, task.entries, b)  # abandoned: its failures only
            return Result(task.index, commit=write_files(self.files, job, self.write_pool), worker=self.name)
        except Exception as e:
            return Result(task.index, error=e, worker=self.name)


# Times Ray retries a batch whose actor died (an OOM kill, a decoder's segfault) before giving it up: then the
# batch's images are computed one at a time, and an image that still kills its worker fails with a reason.
TASK_RETRIES = 2


def fail_dead(
    manifest: Any,
    out: Path,
    known: Known,
    rels: list[str],
    run_id: int,
    check: Callable[[], None],
    tally: Tally,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Commit as failures the images that killed their Ray worker on every try (they leave the report)."""
    from .compute import account
    from .writer import Commit, commit

    reason = (
        f"the Ray worker died on this image {TASK_RETRIES + 1} times (out of memory, or a crash decoding or "
        "explaining it)"
    )
    failed = [(rel, reason) for rel in rels]
    commit(manifest, Commit(run_id, failed=failed, discard=known.files_of(rels), count=len(failed)), out, check)
    account(tally, emit, failed, 0)


def worker_class(config: WorkerConfig) -> type:
    """A Worker subclass carrying ``config``: Ray pickles it by value, and a restarted actor needs no arguments."""
    return type("XaibatchWorker", (Worker,), {"config": config})


class StopFlag:
    """The driver's SIGINT/SIGTERM, for the actors."""

    def __init__(self) -> None:
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


# Ray retries a head that does not answer for minutes (forever when something else answers on that port).
REACH_TIMEOUT_S = 10.0  # to open a TCP connection to the head's address at all
CONNECT_TIMEOUT_S = 60.0  # for ray.init to join a cluster
START_TIMEOUT_S = 300.0  # for ray.init to start a local Ray (processes, on a loaded machine)


def connect(r: RayOptions) -> bool:
    """Join the cluster (``r.address``, else $RAY_ADDRESS, else a private new local Ray); True when this call started
    it. An address that cannot be reached within CONNECT_TIMEOUT_S, or that Ray refuses, is a UsageError (exit 2).

    A Ray the caller already initialised (a test, a notebook) is used as it is. Without an address the run never
    joins the cluster a stale ``/tmp/ray/ray_current_cluster`` names (``ray.init()`` would, and hang on a dead head).
    """
    import ray

    if ray.is_initialized():
        return False
    address = r.address or os.environ.get("RAY_ADDRESS") or "local"
    reachable(address)
    quiet = not sys.stderr.isatty()
    if quiet:  # a scheduler mails whatever reaches stderr: Ray's own logs stay in its log files (errors that stop
        # the run are xaibatch's own one-line error)
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    keep_ray_messages_off_stdout(quiet)
    # ray.init makes SIGTERM exit the process at once; the run's handler (stop after the current batches,
    # exit code 5) stays in charge.
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    limit = START_TIMEOUT_S if address == "local" else CONNECT_TIMEOUT_S
    what = "start a local Ray" if address == "local" else f"join the Ray cluster at {address}"
    try:
        with time_limit(limit if main else None), stderr_silenced(quiet):  # a failure raises: reported below
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR if quiet else logging.WARNING,
            )
    except (SystemExit, KeyboardInterrupt):  # Ray's own SIGTERM handler, or Ctrl-C, while it was connecting
        _shutdown_quietly()
        raise Interrupted("interrupted while connecting to Ray") from None
    except _TimeUp:
        _shutdown_quietly()
        raise UsageError(f"cannot {what}: no answer within {limit:g} s (is it a Ray head, and running?)") from None
    except Exception as e:
        _shutdown_quietly()
        raise UsageError(f"cannot {what}: {_first_line(e)}") from None
    finally:
        for s, h in handlers.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
    return True


class _TimeUp(BaseException):
    """SIGALRM: a time limit passed (a BaseException, so that Ray's retry loops do not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise _TimeUp in the main thread after ``seconds`` (None: no limit); Ray retries an unanswering head forever."""
    if not seconds:
        yield
        return

    def alarm(signum, frame):
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stderr_silenced(enabled: bool):
    """File descriptor 2 to /dev/null (what Ray's C++ code logs as it starts, whatever the level asked for)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _shutdown_quietly() -> None:
    try:
        import ray

        ray.shutdown()
    except BaseException:
        pass


def reachable(address: str) -> None:
    """Refuse at once (UsageError) a cluster address that names no cluster or whose head does not answer."""
    if address == "local" or address.startswith("ray://"):  # ray://: Ray's client checks it (and its extra)
        return
    try:
        from ray._private.services import canonicalize_bootstrap_address

        hostport = canonicalize_bootstrap_address(address)  # auto: $RAY_ADDRESS, else the last cluster started here
    except Exception as e:
        raise UsageError(f"--ray-address {address}: {_first_line(e)}") from None
    if hostport is None:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        why = (
            f"no answer within {REACH_TIMEOUT_S:g} s"
            if isinstance(e, TimeoutError)
            else getattr(e, "strerror", None) or str(e)
        )
        raise UsageError(
            f"cannot reach the Ray cluster at {address} ({hostport}): {why}; is its head running? "
            "(without --ray-address and $RAY_ADDRESS a Ray is started for the run)"
        ) from None


def keep_ray_messages_off_stdout(quiet: bool) -> None:
    """Ray prints its cluster messages ("(raylet) A worker died ...") to stdout, which holds only the run's own
    output (JSON lines with --log-json): send them to stderr, or nowhere when ``quiet``."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    if hasattr(ray_worker.print_to_stdstream, "xaibatch_quiet"):  # ours already
        ray_worker.print_to_stdstream.xaibatch_quiet = quiet  # type: ignore[attr-defined]
        return
    print_worker_logs = ray_worker.print_worker_logs

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        if not to_stderr.xaibatch_quiet:  # type: ignore[attr-defined]
            print_worker_logs(data, sys.stderr, ignore_prefix)

    to_stderr.xaibatch_quiet = quiet  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def quiet_ray_data() -> None:
    """No progress bars or execution banners from Ray Data: the run has its own bar, stdout may be JSON lines."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # a batch that kills its actor on every retry: the run carries on without it
    for name in ("ray.data", "ray.data._internal"):  # such a batch is logged (with a traceback): the run says it
        logging.getLogger(name).setLevel(logging.CRITICAL)


def resources(r: RayOptions) -> tuple[int, float, float]:
    """(actors, GPUs each, CPUs each): GPU workers when the cluster has GPUs, as many as it has room for."""
    import ray

    total = ray.cluster_resources()
    gpus = r.gpus_per_worker if r.gpus_per_worker is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    cpus = r.cpus_per_worker
    if gpus > total.get("GPU", 0) or cpus > total.get("CPU", 0):  # Ray would wait for them forever
        raise UsageError(
            f"the Ray cluster has {total.get('GPU', 0):g} GPU(s) and {total.get('CPU', 0):g} CPU(s): "
            f"not enough for one worker of {gpus:g} GPU and {cpus:g} CPU; check --gpus-per-worker and "
            "--cpus-per-worker"
        )
    if r.workers is not None:
        return r.workers, gpus, cpus
    room = int(total.get("GPU", 0) // gpus) if gpus > 0 else int(total.get("CPU", 1) // cpus)
    return max(1, room), gpus, cpus


def compute_ray(
    opts: RunOptions,
    out: Path,
    prepared: Any,
    plan: Plan,
    known: Known,
    hashes: Hashes,
    run_id: int,
    stop: Stop,
    tally: Tally,
    emit: Callable[[dict[str, Any]], None],
    log: Callable[[str], None] = lambda s: None,
    check: Callable[[], None] = lambda: None,
) -> None:
    """The local engine's compute() on Ray: batches to actors, their Commits committed here as they arrive."""
    if not plan.work:
        return
    import ray
    import ray.data

    from ..defaults import default_batch_size
    from ..files import atomic_write_bytes
    from ..manifest import Manifest
    from .compute import account, announce, batches, progress_bar
    from .recovery import sweep_temp_files
    from .writer import commit

    announce(prepared, plan, emit, log)
    started = connect(opts.ray)
    flag = None
    token = uuid.uuid4().hex
    probe = f".xaibatch-ray-probe.{os.getpid()}.tmp"  # a temporary file's name: a crash leaves it to the sweep
    manifest = Manifest(out / layout.MANIFEST)
    progress = None
    try:
        quiet_ray_data()
        n_workers, gpus, cpus = resources(opts.ray)
        batch_size = opts.batch_size or default_batch_size("cuda" if gpus > 0 else "cpu", prepared.model.input_size)
        tasks = [task_for(i, todo, entries, plan, known) for i, (todo, entries) in enumerate(batches(plan, batch_size))]
        n_workers = min(n_workers, len(tasks))
        log(
            f"xaibatch: {len(tasks)} batch(es) of up to {batch_size} on {n_workers} Ray worker(s) "
            f"({gpus:g} GPU, {cpus:g} CPU each)"
        )
        atomic_write_bytes(out / probe, token.encode())
        stop_name = f"xaibatch-stop-{token}"
        flag = ray.remote(StopFlag).options(name=stop_name, num_cpus=0).remote()
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
        )
        found = Scan(prepared.found.root, prepared.found.classes, [], [], list(prepared.found.empty_classes))
        config = WorkerConfig(
            worker_opts,
            found,
            hashes,
            run_id,
            os.path.abspath(out),
            probe,
            token,
            stop_name,
            threads=max(1, int(cpus)),
            cwd=os.getcwd(),
        )

        def stream(batch: list[Task]) -> set[int]:
            """Run these tasks on an actor pool, committing each Commit as it comes back; the indices that did."""
            ds = ray.data.from_items([{"task": pickle.dumps(t)} for t in batch], override_num_blocks=len(batch))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*")  # deprecated for the same named ones
                ds = ds.map_batches(  # a task whose actor dies TASK_RETRIES + 1 times is dropped (max_errored_blocks)
                    worker_class(config),
                    batch_size=1,
                    batch_format="numpy",
                    zero_copy_batch=True,
                    compute=ray.data.ActorPoolStrategy(size=min(n_workers, len(batch))),
                    num_cpus=cpus,
                    num_gpus=gpus,
                    max_restarts=-1,
                    max_task_retries=TASK_RETRIES,
                )
            back: set[int] = set()
            for row in ds.iter_rows():
                res: Result = pickle.loads(row["record"])
                if res.error is not None:
                    raise res.error
                if res.skipped and not stop.requested:  # never expected: a run must not say ok with work left
                    raise RuntimeError(f"the Ray worker {res.worker} skipped batch {res.index} without a stop")
                back.add(res.index)
                if res.skipped or res.index in committed:  # a retried batch that had already come back
                    continue
                commit(manifest, res.commit, out, check)
                committed.add(res.index)
                account(tally, emit, res.commit.failed, res.commit.computed)
                if progress is not None:
                    progress.update(res.commit.count)
            return back

        done = threading.Event()

        def forward_stop() -> None:  # a signal reaches only the driver: pass it on
            while not done.wait(0.2):
                if stop.requested:
                    flag.set.remote()
                    return

        threading.Thread(target=forward_stop, name="xaibatch-ray-stop", daemon=True).start()
        progress = progress_bar(opts, len(plan.work), log, emit)
        committed: set[int] = set()
        try:
            back = stream(tasks)
            lost = [t for t in tasks if t.index not in back]
            if lost and not stop.requested:  # each killed its worker every time: find the image(s) that do
                log(
                    f"xaibatch: {len(lost)} batch(es) made their Ray worker die {TASK_RETRIES + 1} times (out of "
                    "memory? a crash?); computing their images one at a time"
                )
                singles = [
                    task_for(len(tasks) + k, t.todo, [e], plan, known)
                    for k, (t, e) in enumerate((t, e) for t in lost for e in t.entries)
                ]
                back = stream(singles)
                dead = [t.entries[0].rel for t in singles if t.index not in back]
                if dead and not stop.requested:
                    fail_dead(manifest, out, known, dead, run_id, check, tally, emit)
        finally:
            done.set()
        # Every task has ended (a stop makes the rest skip): a temporary file left now is one a killed actor
        # never renamed. We hold the lock, so no one else writes here.
        sweep_temp_files(out, lambda pid: True)
        if opts.faithfulness is not None and not stop.requested:
            from ..evaluation.faithfulness import chance_on_driver

            chance_on_driver(
                out,
                opts.faithfulness,
                prepared,
                hashes,
                [e for _todo, entries in batches(plan, batch_size) for e in entries],
                opts.target,
            )
    finally:
        if progress is not None:
            progress.close()
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
