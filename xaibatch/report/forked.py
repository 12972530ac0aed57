"""A part of the report built by a forked process while this one builds the rest (a second core's share).

The child inherits the report's data (no pickling on the way in), runs one function and sends back its
picklable result; :meth:`Forked.result` gives it, or None when there was no child or it failed (the caller then
does the work itself, so an error is raised where it would be inline). No fork on one core, nor beside other
threads (a server, Ray's driver: locks they hold would stay held in the child); a run has only its main thread
by the time it writes the report.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
from multiprocessing import Pipe
from typing import Any, Callable

from ..defaults import cpu_count


def can_fork() -> bool:
    return hasattr(os, "fork") and cpu_count() >= 2 and threading.active_count() == 1


class Forked:
    """``fn()`` in a forked process, started now (when :func:`can_fork`)."""

    def __init__(self, fn: Callable[[], Any], when: bool = True) -> None:
        """``when`` False: no process (the caller does the work itself)."""
        self.pid, self.conn = 0, None
        if not when or not can_fork():
            return
        from ..pipeline.signals import die_with_parent  # imported before the fork: the child imports no more of ours

        mine, theirs = Pipe(duplex=False)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: runs fn, sends its result, never returns
            code = 1
            try:
                mine.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (result or abandon)
                gc.disable()  # the parent's heap stays shared (copy-on-write)
                die_with_parent(parent)
                theirs.send_bytes(pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL))
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self.conn = pid, mine

    def result(self) -> Any:
        """The child's result, or None (no child, or it failed); the child is reaped either way."""
        got = None
        if self.conn is not None:
            try:
                got = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError, pickle.UnpicklingError):
                got = None
        self.abandon()
        return got

    def abandon(self) -> None:
        """Stop and reap the process, if any (also when the rest of the report failed)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0
