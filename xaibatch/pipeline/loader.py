"""Iterate a DataLoader so that a signal stops the run within seconds, whatever its worker processes are doing.

A worker can be busy for minutes on one file (a huge or slow image); it ignores SIGINT/SIGTERM (see
:func:`.compute.worker_init`), and the DataLoader's own shutdown waits for it and then sends it a
SIGTERM it ignores. So: a signal that arrives while the run waits for the next batch ends the wait at
once, and a loader left before its end has its workers killed (SIGKILL: they hold nothing of the
run's, only images being decoded) before it is shut down, so no join waits on them.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Iterator

from .signals import Abandoned, Stop


def until_stopped(loader: Any, stop: Stop) -> Iterator[Any]:
    """The loader's batches, ending early (and at once) when a signal arrives while waiting for one."""
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


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def forked_quietly(start: Any, *args: Any) -> Any:
    """``start(*args)`` (which forks worker processes) with SIGINT/SIGTERM blocked, so that a signal arriving
    while a worker is new reaches only the run: the worker inherits the block until its ``worker_init`` has set
    them to be ignored. (Without it, a new worker could run the run's own handler and print half a traceback
    before being killed.)"""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
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
