"""A process that lives for days (a scheduler's worker, a notebook kernel, a service) calls xaibatch again and
again, from several threads: nothing of the process's global state is left changed by those calls."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

from tests.helpers import write_images
from xaibatch import data
from xaibatch.pipeline import loader


def test_overlapping_blocks_of_two_threads_leave_the_warning_filters_as_they_were(tmp_path: Path, monkeypatch):
    """Two runs in two threads, one decoding an image while the other starts its DataLoader: each block of theirs
    saved and put back the process's one filter list out of order, and ``ignore`` for every warning stayed in the
    process for good (each of two ``xaibatch.run()`` in a ThreadPoolExecutor left it there)."""
    (img,) = write_images(tmp_path, 1)
    inside, other_inside, decoded = threading.Event(), threading.Event(), threading.Event()
    real_open = data._open

    def slow_open(f):  # the decode waits, inside its block, for the other thread's block (at most 2 s)
        inside.set()
        other_inside.wait(2.0)
        return real_open(f)

    monkeypatch.setattr(data, "_open", slow_open)

    def start_loader():  # its block ends after the decode's: the order that left a filter behind
        inside.wait(10.0)
        with loader.more_workers_than_cpus():
            other_inside.set()
            decoded.wait(2.0)

    before = list(warnings.filters)
    t = threading.Thread(target=start_loader)
    t.start()
    data.load_image(img)
    decoded.set()
    t.join(10.0)
    assert not t.is_alive()
    assert warnings.filters == before
