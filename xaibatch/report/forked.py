"""A part of the report built by a forked process while this one builds the rest (a second core's share).

The child inherits the report's data (no pickling on the way in), runs one function and sends back its
picklable result; :meth:`Forked.result` gives it, or None when there was no child or it failed (the caller then
does the work itself, so an error is raised where it would be inline). No fork on one core, nor beside other
threads (a server, Ray's driver: locks they hold would stay held in the child); a run has only its main thread
by the time it writes the report.

Work that several processes share (the report's pages) is handed out by a :class:`Queue`: each of them, this
one included, takes the next item when it is done with the last, so a process slowed by its neighbours (or by
this one's own serial work) takes fewer, and none waits while another still has a long run ahead.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import struct
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

    @property
    def started(self) -> bool:
        """Whether a process runs ``fn`` (else the caller does the work itself)."""
        return self.pid != 0

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


class Queue:
    """The items ``0 .. n-1``, each taken once by whichever process asks first: this one and those it forks after.

    A pipe filled before any fork, its write end closed: a read of one item's two bytes takes it whole (the
    kernel serializes the readers of a pipe), and a read at the end finds none. At most MAX_ITEMS items, so the
    whole queue fits in any pipe's buffer (512 bytes: POSIX's least)."""

    MAX_ITEMS = 256
    _ITEM = struct.Struct("<H")

    def __init__(self, n: int) -> None:
        if not 0 <= n <= self.MAX_ITEMS:
            raise ValueError(f"a queue holds at most {self.MAX_ITEMS} items, not {n}")
        self.fd, w = os.pipe()
        try:
            body = b"".join(self._ITEM.pack(i) for i in range(n))
            while body:
                body = body[os.write(w, body) :]
        finally:
            os.close(w)

    def take(self) -> int | None:
        """The next item, or None when every item is taken."""
        got = os.read(self.fd, self._ITEM.size) if self.fd >= 0 else b""
        return self._ITEM.unpack(got)[0] if len(got) == self._ITEM.size else None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
