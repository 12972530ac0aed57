"""SIGINT/SIGTERM during a run: finish the current batch, then stop (a second signal stops at once)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager



class Abandoned(BaseException):
    """Raised by the signal handler inside :meth:`Stop.abandon`; a BaseException, so that no ``except Exception``
    in decoding or user code swallows it."""


class Stop:
    """Set by the SIGINT/SIGTERM handler; polled between batches."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._abandoning = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"

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
            raise KeyboardInterrupt
        self.signum = signum
        if self._abandoning:
            self._abandoning = False  # raised once: what handles it runs unabandoned
            raise Abandoned


@contextmanager
def catch_signals(enabled: bool):
    """SIGINT/SIGTERM set a flag for the duration of the run; a second one stops at once. Restores the old handlers."""
    stop = Stop()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop._signalled(signum)

    # A signal ignored when we started stays ignored (e.g. SIGINT of a background job in sh).
    previous = {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) is not signal.SIG_IGN}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
