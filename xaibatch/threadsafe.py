"""What concurrent calls in one process (a service's or a scheduler's threads) share of its global state.

The warning filters are one list per process, and ``warnings.catch_warnings`` saves it on entry and puts it back on
exit. Two threads' blocks that overlap (two ``xaibatch.run()`` calls in a service's threads: one decoding an image,
the other starting its DataLoader) put the lists back out of order, and the process kept a filter for good:
``ignore`` for every warning, its own and the user's, for the rest of its life. Every block of xaibatch's that
changes the filters goes through :func:`catch_warnings`, which has the process to itself for the block, so its
blocks never overlap. (A block of the user's own in another thread still may: Python before 3.14 has no per-thread
filters.) The one exception is :func:`decoding`, PIL's decode of an image: its blocks set the same filters in every
thread, so they overlap each other (the first saves the list, the last puts it back) and only wait for the other
kinds: a Ray actor decodes a batch in several threads, which one block at a time made one core's work.

torch's default CPU generator has a mutex, held while a thread draws from it (a model's random weights, a seed), and a
DataLoader's worker seeds that generator first thing. A worker forked while another thread held it (three runs in a
service's threads: one building its model, one forking its workers) waited for that mutex for ever, its run for
its batch, and its orphaned workers stayed. xaibatch's draws and its workers' forks go through :func:`generator`,
one block at a time. (A draw of the user's own in another thread still may meet a fork: keep ``workers=0`` there.)

Both kinds of block are exclusive blocks of one :class:`_Blocks`, so that no two locks are ever taken in opposite
orders (a factory that builds its model, under generator(), and reads a checkpoint with xaibatch's loader, under
catch_warnings()); reentrant: a block inside another in the same thread (a torchvision model built under
random_init inside a factory). It is made anew in a forked child (a DataLoader or writer process, a report fork):
the threads that were in blocks in the parent do not exist there.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator


class _Blocks:
    """Who is in a block: one thread's exclusive blocks (nested), or any threads' shared (decoding) blocks."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.owner: int | None = None  # the thread in exclusive blocks
        self.depth = 0
        self.shared: Counter[int] = Counter()  # thread -> its shared blocks open
        self.waiting = 0  # threads waiting for an exclusive block: new shared blocks wait behind them
        self.saved: Any = None  # the shared blocks' catch_warnings: entered by the first, left by the last

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self.cond:
            if self.owner != me:
                self.waiting += 1
                try:  # (shared blocks of this very thread do not stop it: they set no filter meanwhile)
                    self.cond.wait_for(lambda: self.owner is None and self.shared.total() == self.shared[me])
                finally:
                    self.waiting -= 1
                self.owner = me
            self.depth += 1
        try:
            yield
        finally:
            with self.cond:
                self.depth -= 1
                if self.depth == 0:
                    self.owner = None
                    self.cond.notify_all()

    @contextmanager
    def sharing(self, apply: Any) -> Iterator[None]:
        me = threading.get_ident()
        with self.cond:
            own = self.owner == me  # inside this thread's exclusive block: a block of its own, as catch_warnings
            if not own:
                self.cond.wait_for(lambda: self.owner is None and (self.waiting == 0 or self.shared[me] > 0))
                if not self.shared:
                    self.saved = warnings.catch_warnings()
                    self.saved.__enter__()
                    apply()
                self.shared[me] += 1
        if own:
            with warnings.catch_warnings():
                apply()
                yield
            return
        try:
            yield
        finally:
            with self.cond:
                self.shared[me] -= 1
                if not self.shared[me]:
                    del self.shared[me]
                if not self.shared:
                    self.saved.__exit__(None, None, None)
                    self.saved = None
                    self.cond.notify_all()


_blocks = _Blocks()


def _new_blocks() -> None:
    global _blocks
    _blocks = _Blocks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_blocks)


@contextmanager
def catch_warnings() -> Iterator[None]:
    """``warnings.catch_warnings()``, while no other thread of this process is in a block of this module."""
    with _blocks.exclusive(), warnings.catch_warnings():
        yield


def _decode_filters() -> None:
    warnings.simplefilter("ignore")  # PIL's "corrupt EXIF" and similar chatter
    from PIL import Image

    warnings.simplefilter("error", Image.DecompressionBombWarning)


@contextmanager
def decoding() -> Iterator[None]:
    """PIL's decode of an image (data.decode_pil): its chatter ignored, a decompression bomb's warning raised, in
    blocks that overlap each other's (the same filters) and no other kind."""
    with _blocks.sharing(_decode_filters):
        yield


@contextmanager
def generator() -> Iterator[None]:
    """A block that draws from torch's default generator or forks processes that seed it (a DataLoader's workers),
    while no other thread of this process is in a block of this module."""
    with _blocks.exclusive():
        yield
