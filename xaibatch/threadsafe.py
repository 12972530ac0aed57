"""What concurrent calls in one process (a service's or a scheduler's threads) share of its global state.

The warning filters are one list per process, and ``warnings.catch_warnings`` saves it on entry and puts it back on
exit. Two threads' blocks that overlap (two ``xaibatch.run()`` calls in a service's threads: one decoding an image,
the other starting its DataLoader) put the lists back out of order, and the process kept a filter for good:
``ignore`` for every warning, its own and the user's, for the rest of its life. Every block of xaibatch's that
changes the filters goes through :func:`catch_warnings`, which takes one lock for the block, so its blocks never
overlap. (A block of the user's own in another thread still may: Python before 3.14 has no per-thread filters.)

torch's default CPU generator has a mutex, held while a thread draws from it (a model's random weights, a seed), and a
DataLoader's worker seeds that generator first thing. A worker forked while another thread held it (three runs in a
service's threads: one building its model, one forking its workers) waited for that mutex for ever, its run for
its batch, and its orphaned workers stayed. xaibatch's draws and its workers' forks go through :func:`generator`,
one block at a time. (A draw of the user's own in another thread still may meet a fork: keep ``workers=0`` there.)

Both kinds of block take one lock, made anew in a forked child (a DataLoader or writer process, a report fork): the
thread that held it in the parent does not exist there.
"""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

# One lock for both kinds of block, so that no two locks are ever taken in opposite orders (a factory that builds
# its model, under generator(), and reads a checkpoint with xaibatch's loader, under catch_warnings()). Reentrant:
# a block inside another in the same thread (a torchvision model built under random_init inside a factory).
_lock = threading.RLock()


def _new_lock() -> None:
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


@contextmanager
def catch_warnings() -> Iterator[None]:
    """``warnings.catch_warnings()``, while no other thread of this process is in such a block (or a :func:`generator`
    one)."""
    with _lock, warnings.catch_warnings():
        yield


@contextmanager
def generator() -> Iterator[None]:
    """A block that draws from torch's default generator or forks processes that seed it (a DataLoader's workers),
    while no other thread of this process is in such a block (or in a :func:`catch_warnings` one)."""
    with _lock:
        yield
