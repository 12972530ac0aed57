"""SIGINT/SIGTERM/SIGHUP during a run: finish the current batch, then stop (a second signal stops at once).

SIGHUP is the terminal closing (a window, an ssh session): the run stops as for SIGTERM, and what it would have
written on that terminal goes to /dev/null instead (every write to a hung-up terminal fails)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

from ..console import to_devnull
from ..lock import pid_alive


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # the run stops after its batch; its children ignore them


class Abandoned(BaseException):
    """Raised by the signal handler inside :meth:`Stop.abandon`; a BaseException, so that no ``except Exception``
    in decoding or user code swallows it."""


class Stop:
    """Set by the STOP_SIGNALS handler; polled between batches."""

    def __init__(self, repeat_s: float = 0.0, once: bool = False) -> None:
        self.signum: int | None = None
        self._abandoning = False
        self._repeat_s = repeat_s  # a SIGTERM/SIGHUP this soon after the first signal is the same stop
        self._once = once  # every signal after the first is the same stop
        self._first = 0.0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"

    def interrupt(self) -> KeyboardInterrupt:
        """What a command raises, between its steps, on this stop: a KeyboardInterrupt naming the signal as
        :func:`stops_interrupt`'s do ("by SIGTERM"; Ctrl-C's names none)."""
        return KeyboardInterrupt(*([] if self.signum in (None, signal.SIGINT) else [f"by {self.name}"]))

    @contextmanager
    def abandon(self):
        """Within this block a signal raises :class:`Abandoned` at once: nothing in it is worth finishing (waiting
        for the next batch; loading the model, which may be user code that never returns)."""
        previous, self._abandoning = self._abandoning, True
        try:
            if self.requested:
                raise Abandoned
            yield
        finally:
            self._abandoning = previous

    def _signalled(self, signum: int) -> None:
        if self.requested:
            if self._once or (signum != signal.SIGINT and time.monotonic() - self._first < self._repeat_s):
                return
            raise KeyboardInterrupt
        self.signum, self._first = signum, time.monotonic()
        if self._abandoning:
            self._abandoning = False  # raised once: what handles it runs unabandoned
            raise Abandoned


_caught: list[Stop] = []  # the Stops of the catch_signals blocks open in the main thread, innermost last


@contextmanager
def catch_signals(enabled: bool, repeat_s: float = 0.0, once: bool = False):
    """STOP_SIGNALS set a flag for the duration of the run; a second one stops at once, except a SIGTERM or SIGHUP
    within ``repeat_s`` of the first (see :func:`stops_interrupt`), or any with ``once`` (a command whose stop takes
    milliseconds: serve, where a second Ctrl-C interrupted its close). Restores the old handlers.

    Inside another such block (a run that ``xaibatch bench`` times) the caller's Stop is the one yielded, whatever
    ``enabled``: one signal stops both, each between its own steps."""
    main = threading.current_thread() is threading.main_thread()
    if main and _caught:
        yield _caught[-1]
        return
    stop = Stop(repeat_s, once)
    if not enabled or not main:
        yield stop
        return
    terminal = [fd for fd in (0, 1, 2) if _isatty(fd)]  # asked now: a hung-up terminal no longer answers

    def handler(signum, frame):
        if signum == signal.SIGHUP:  # every write to a hung-up terminal fails (in the writer's thread: the run)
            to_devnull(terminal)
        stop._signalled(signum)

    # A signal ignored when we started stays ignored (SIGINT of a background job in sh, SIGHUP under nohup).
    previous = {s: h for s in STOP_SIGNALS if (h := signal.getsignal(s)) is not signal.SIG_IGN}
    for s in previous:
        signal.signal(s, handler)
    _caught.append(stop)
    try:
        yield stop
    finally:
        _caught.pop()
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


REPEATED_SIGNAL_S = 2.0  # a stop signal this soon after the first one is the same stop


@contextmanager
def stops_interrupt(repeat_s: float = REPEATED_SIGNAL_S):
    """For a command with no batches to finish (train, sanity, bench): SIGTERM and SIGHUP raise KeyboardInterrupt
    in the main thread, as Ctrl-C does, so that each ends as it does on Ctrl-C (what it has, exit 5) instead of
    dying where it stands. A SIGHUP first sends the terminal's streams to /dev/null (every write there fails); a
    signal ignored at the start stays ignored (``nohup``); another stop signal within ``repeat_s`` is the same
    stop (GNU ``timeout`` signals the process, then its group; a closing terminal's shell resends its SIGHUP).
    The KeyboardInterrupt names the signal ("by SIGTERM"). Restores the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    terminal = [fd for fd in (0, 1, 2) if _isatty(fd)]  # asked now: a hung-up terminal no longer answers
    first: list[float] = []

    def interrupt(signum, frame):
        if first and time.monotonic() - first[0] < repeat_s:
            return
        first[:] = [time.monotonic()]
        if signum == signal.SIGHUP:
            to_devnull(terminal)
        raise KeyboardInterrupt(f"by {signal.Signals(signum).name}")

    stops = (signal.SIGTERM, signal.SIGHUP)
    previous = {s: h for s in stops if (h := signal.getsignal(s)) is not signal.SIG_IGN}
    for s in previous:
        signal.signal(s, interrupt)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def ignore_stop_signals() -> None:
    """In a child process (DataLoader worker, writer process): the run stops it after its batch."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


# -- child processes that end with the run ------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Make this process end when ``parent`` does: PR_SET_PDEATHSIG on Linux, else a thread watching its pid. A
    process that ``parent`` did not start itself (a fork server's child: Python 3.14's default start method on
    Linux; a spawned process started through another) watches the pid ``parent``, alive but not its parent."""
    if os.getppid() != parent:
        if not pid_alive(parent):  # the parent died already
            os._exit(1)
        threading.Thread(target=_watch_pid, args=(parent,), name="xaibatch-parent-watch", daemon=True).start()
        return
    if not _set_pdeathsig(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(parent,), name="xaibatch-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the above took effect
        os._exit(1)


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, poll: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(poll)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch_pid(pid: int, poll: float = 0.5) -> None:
    while pid_alive(pid):
        time.sleep(poll)
    os.kill(os.getpid(), signal.SIGKILL)
