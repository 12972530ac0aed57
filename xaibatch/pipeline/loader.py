"""Iterate a DataLoader so that a signal stops the run within seconds, whatever its worker processes are doing.

A worker can be busy for minutes on one file (a huge or slow image); it ignores the stop signals (see
:func:`worker_init`), and the DataLoader's own shutdown waits for it and then sends it a
SIGTERM it ignores. So: a signal that arrives while the run waits for the next batch ends the wait at
once, and a loader left before its end has its workers killed (SIGKILL: they hold nothing of the
run's, only images being decoded) before it is shut down, so no join waits on them.

Both halves live here: :func:`forked_quietly` blocks the stop signals while workers fork, and
:func:`worker_init` (each worker's first act) ignores them and ties the worker's life to the run's.

How the batches cross from the workers, also here (:func:`handover`): torch puts a worker's tensors in /dev/shm and
passes their file descriptors over a socket made in the temporary folder. In a container /dev/shm is often 64 MB
(Docker's default) and the temporary folder may be read-only or missing: a batch that cannot cross was dropped
with a traceback and the run waited for it forever. Where either would fail, the batches cross as numpy arrays
through the workers' pipes (:func:`xaibatch.dataset.collate_piped`); a worker that still cannot hand over a
batch ends, and the run stops with one line (errors.loader_died).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from typing import Any, Generator, Iterator

from .signals import STOP_SIGNALS, Abandoned, Stop, die_with_parent, ignore_stop_signals
from ..threadsafe import catch_warnings, generator


def until_stopped(loader: Any, stop: Stop) -> Generator[Any, None, None]:
    """The loader's batches, ending early (and at once) when a signal arrives while waiting for one."""
    with quiet_feeders(), more_workers_than_cpus():  # the index queues' feeder threads start here, in this process
        it = forked_quietly(iter, loader)
    finished = False
    try:
        while True:
            try:
                with stop.abandon():
                    b = next(it)
            except (StopIteration, Abandoned):
                finished = True
                return
            yield b
    finally:
        if not finished or stop.requested:
            end_workers(it)


PREFETCH = 4  # batches each DataLoader worker loads ahead


def handover(workers: int, batch_bytes: int, shm: str = "/dev/shm") -> str | None:
    """Why ``workers`` DataLoader workers must send their batches (``batch_bytes`` of tensors each) through pipes
    rather than shared memory (see the module's docstring), or None: shared memory, torch's usual way (faster for
    large batches). The batches in flight, each worker's PREFETCH and the one being explained, must fit in the free
    space of ``shm``, and a socket must be possible in the temporary folder."""
    if workers == 0:
        return None
    import multiprocessing.util

    try:  # where the workers make the socket that passes the descriptors: made here, once, and inherited
        multiprocessing.util.get_temp_dir()
    except OSError:
        return "no writable temporary folder (TMPDIR, /tmp) for the workers' sockets"
    need = (workers * PREFETCH + 1) * batch_bytes
    try:
        st = os.statvfs(shm)
    except OSError:
        return None  # no /dev/shm to measure (not Linux): torch's own way
    free = st.f_bavail * st.f_frsize
    if need <= free:
        return None
    return (
        f"{shm} has {_mb(free)} free, less than the {_mb(need)} of batches in flight "
        f"(docker run --shm-size=1g, or a memory-backed emptyDir at {shm} in Kubernetes, gives it more)"
    )


def handover_warning(reason: str) -> str:
    """The line a run or ``train`` says once when :func:`handover` chose pipes (``reason``: its answer)."""
    return f"warning: the DataLoader workers send their batches through pipes (slower): {reason}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.{0 if n >= 10 * 2**20 else 1}f} MB"


@contextlib.contextmanager
def more_workers_than_cpus() -> Iterator[None]:
    """Without torch's warning that a DataLoader has more workers than CPUs (a paragraph on stderr, when the loader
    is made and again when it starts): --workers is the user's, bounded at parsing (defaults.workers_problem), and
    -q promises only "Error:" lines. Every other warning still shows."""
    with catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


def forked_quietly(start: Any, *args: Any) -> Any:
    """``start(*args)`` (which forks worker processes) with SIGINT/SIGTERM blocked, so that a signal arriving
    while a worker is new reaches only the run: the worker inherits the block until its ``worker_init`` has set
    them to be ignored. (Without it, a new worker could run the run's own handler and print half a traceback
    before being killed.)"""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        with generator():  # no other thread of ours holds torch's generator, which each new worker seeds
            return start(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal that came meanwhile is delivered here


def end_workers(it: Any) -> None:
    """Kill a DataLoader iterator's worker processes that are still alive, then let it shut down (no waiting)."""
    workers = getattr(it, "_workers", None) or []
    if getattr(it, "_worker_pids_set", False):  # torch's SIGCHLD handler would raise on a killed worker
        try:
            from torch.utils.data._utils import signal_handling

            signal_handling._remove_worker_pids(id(it))
            it._worker_pids_set = False
        except Exception:
            pass
    for w in workers:
        try:
            if w.is_alive():
                os.kill(w.pid, signal.SIGKILL)
        except (OSError, ValueError, AssertionError):
            pass
    for w in workers:
        try:
            w.join(timeout=2.0)
        except (OSError, ValueError, AssertionError):
            pass
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def images_loader(dataset: Any, batch_size: int, workers: int, device_type: str, piped: bool) -> Any:
    """The DataLoader of a run's images (its compute pass, its scoring pass): ``workers`` forked workers
    (:func:`worker_context`, :func:`worker_init`) each PREFETCH batches ahead, their batches through pipes when
    ``piped`` (:func:`handover`), pinned for a GPU; the workers' seeds drawn from a generator of the loader's own, so
    the caller's (``torch.manual_seed`` in a notebook or a training script before a run) is left where it was."""
    import functools

    import torch

    from ..dataset import collate, collate_piped

    with more_workers_than_cpus():
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_piped if piped else collate,
            pin_memory=device_type == "cuda",
            persistent_workers=False,
            prefetch_factor=PREFETCH if workers > 0 else None,
            worker_init_fn=functools.partial(worker_init, parent=os.getpid()) if workers > 0 else None,
            multiprocessing_context=worker_context(workers),
            generator=torch.Generator(),
        )


def worker_context(workers: int) -> Any:
    """How a DataLoader's ``workers`` start (its ``multiprocessing_context``): forked on Linux, as this module
    wants them (the stop signals blocked while they fork, each worker the run's own child), whatever the
    interpreter's default start method: Python 3.14 made it forkserver on Linux, where each worker would be a fork
    server's child that imports torch anew (and, before die_with_parent knew it, took its parent for dead and
    ended the run). Elsewhere the platform's own (macOS: spawn); None without workers (torch refuses a context)."""
    if workers > 0 and sys.platform.startswith("linux"):
        import multiprocessing

        return multiprocessing.get_context("fork")
    return None


def worker_init(_worker_id: int, parent: int | None = None) -> None:
    """DataLoader workers leave SIGINT/SIGTERM/SIGHUP to the main process, which stops them after the current batch,
    and die with it (``parent``: its pid) however it dies.

    (A Ctrl-C reaches the whole process group, and systemd signals the whole
    cgroup; a worker dying on it would make the main process fail instead of
    stopping cleanly. A SIGKILLed main process cannot stop its workers: without
    this they live on, holding their memory, adopted by init.)
    """
    ignore_stop_signals()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by forked_quietly
    _quiet_when_the_reader_leaves()
    if parent is not None:
        die_with_parent(parent)


def _quiet_when_the_reader_leaves() -> None:
    """In a worker: a batch still being sent when the main process stops reading (a signal, the end of the run)
    is not an error. multiprocessing's feeder thread would print its traceback, and the worker, killed moments
    later, leaves a lone "Traceback (most recent call last):" line on the run's stderr, where schedulers read it."""
    import multiprocessing.queues

    queue = multiprocessing.queues.Queue
    queue._on_queue_feeder_error = staticmethod(_fatal())  # this worker only (forked)
    # The batch's tensors reach the run as file descriptors, handed over by multiprocessing's resource sharer, a
    # thread of this worker that reports its errors through sys.excepthook: a run that stops while taking them
    # drops the connection, and the sharer's traceback, cut off when the run kills this worker, was the same
    # lone line.
    usual = sys.excepthook

    def hook(kind: type[BaseException], e: BaseException, tb: Any) -> None:
        if not issubclass(kind, _READER_GONE):
            usual(kind, e, tb)

    sys.excepthook = hook


@contextlib.contextmanager
def quiet_feeders() -> Iterator[None]:
    """In the run's process, the same for the queues whose feeder thread starts in this block (a thread takes
    its error handler when it starts): the index queues of a DataLoader's workers, which the run kills when it
    stops early. A feeder still sending indices to a killed worker printed the start of a traceback while the
    run was exiting: the lone line again, from this side. Queues made elsewhere keep the usual handler."""
    import multiprocessing.queues

    queue = multiprocessing.queues.Queue
    usual = queue.__dict__["_on_queue_feeder_error"]
    queue._on_queue_feeder_error = staticmethod(_quiet(queue._on_queue_feeder_error))
    try:
        yield
    finally:
        queue._on_queue_feeder_error = usual


_READER_GONE = (BrokenPipeError, ConnectionError, EOFError)  # the other end of a pipe or socket went away


def _quiet(default: Any) -> Any:
    """A feeder's error handler that says nothing when the reader has gone, and what ``default`` says otherwise."""

    def on_error(e: BaseException, obj: object) -> None:
        if not isinstance(e, _READER_GONE):
            default(e, obj)

    return on_error


def _fatal() -> Any:
    """A worker's feeder error handler: a batch that could not be sent (its tensors could not be shared: /dev/shm
    full, no temporary folder) is lost, and the run would wait for it forever; so the worker says why in one line
    and ends, and the run stops on its death (errors.loader_died). A reader gone is no error (:func:`_quiet`)."""

    def on_error(e: BaseException, obj: object) -> None:
        if isinstance(e, _READER_GONE):
            return
        try:
            sys.stderr.write(f"xaibatch: a DataLoader worker could not hand over a batch: {e}\n")
            sys.stderr.flush()
        finally:
            os._exit(LOADER_WORKER_FAILED)

    return on_error


LOADER_WORKER_FAILED = 3  # a worker's exit status when it could not send a batch (errors.loader_died)
