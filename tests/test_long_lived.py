"""A process that lives for days (a scheduler's worker, a notebook kernel, a service) calls xaibatch again and
again, from several threads: nothing of the process's global state is left changed by those calls."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import torch

from tests.helpers import write_images
from xaibatch import data
from xaibatch.model.loading import random_init
from xaibatch.pipeline import loader
from xaibatch.pipeline.signals import Stop


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


def test_threads_decoding_images_decode_at_once_and_leave_the_filters_as_they_were(tmp_path: Path, monkeypatch):
    """A Ray actor decodes each batch in several threads (ray_worker.Worker: one per CPU it was given); one lock for
    every warnings block let one of them decode at a time, a node's cores idle behind it. Decoding blocks now
    overlap each other (they set the same filters); another kind of block still waits for them, and the filters
    are the process's own after."""
    imgs = write_images(tmp_path, 3)
    both = threading.Barrier(3, timeout=10.0)
    real_open = data._open

    def meeting_open(f):  # each decode waits, inside its block, until the other two are inside theirs
        both.wait()
        return real_open(f)

    monkeypatch.setattr(data, "_open", meeting_open)
    before = list(warnings.filters)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(data.load_image, imgs))
    assert [im.size for im in got] == [(32, 32)] * 3
    assert warnings.filters == before
    monkeypatch.setattr(data, "_open", real_open)
    inside, order = threading.Event(), []

    def slow_open(f):
        inside.set()
        time.sleep(0.3)
        order.append("decoded")
        return real_open(f)

    monkeypatch.setattr(data, "_open", slow_open)
    t = threading.Thread(target=data.load_image, args=(imgs[0],))
    t.start()
    inside.wait(10.0)
    with loader.more_workers_than_cpus():  # another kind: waits for the decode's block to end
        order.append("other block")
    t.join(10.0)
    assert order == ["decoded", "other block"] and warnings.filters == before


class _Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return i


def test_workers_forked_while_another_thread_draws_random_weights_start(tmp_path: Path):
    """Runs in a service's threads: one building its model (random weights, torch's default generator locked while
    they are drawn) while another forked its DataLoader's workers. A worker seeds that generator first thing, so
    it waited for the lock for ever, its run for its batch (three runs of the demo data at once: every time), and
    the workers stayed, orphaned."""
    done = threading.Event()

    def build_models():
        while not done.is_set():
            random_init(lambda: torch.nn.Linear(1000, 1000))

    t = threading.Thread(target=build_models)
    t.start()
    try:
        for _ in range(8):
            dl = torch.utils.data.DataLoader(
                _Numbers(),
                batch_size=2,
                num_workers=2,
                timeout=20,  # a worker that never starts: "DataLoader worker ... timed out", not a hang
                worker_init_fn=loader.worker_init,
                multiprocessing_context=loader.worker_context(2),
            )
            assert [b.tolist() for b in loader.until_stopped(dl, Stop())] == [[0, 1], [2, 3]]
    finally:
        done.set()
        t.join(30.0)


def test_a_run_and_sanity_leave_the_callers_random_state_as_it_was(tmp_path: Path, tiny_ckpt: Path):
    """A training script seeds torch, runs xaibatch between its steps, and draws on: a run drew its DataLoader's
    seed from the caller's generator (so the script's numbers after it depended on whether the run computed
    anything), and ``sanity`` left that generator seeded with its own seed (every later draw the same in every
    process)."""
    from tests.helpers import quiet, run_opts
    from xaibatch.evaluation.sanity import run_sanity
    from xaibatch.pipeline import run

    write_images(tmp_path / "in" / "FAKE", 3, seed=1)
    write_images(tmp_path / "in" / "REAL", 3, seed=2)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=quiet)
    assert torch.equal(torch.get_rng_state(), before)
    run_sanity(tmp_path / "out", n=4)
    assert torch.equal(torch.get_rng_state(), before)


def test_sanity_and_random_weights_leave_the_gpus_random_state_alone(tmp_path: Path, tiny_ckpt: Path, monkeypatch):
    """Their seeded draws are on the CPU, but ``torch.manual_seed`` seeds every GPU's generator too, and the blocks
    give back only the CPU's state: a training script on a GPU that ran ``sanity`` between its epochs had its
    dropout masks reseeded to sanity's seed (the same after every call). The seeds now reach the CPU's generator
    alone (the numbers drawn are the same)."""
    from tests.helpers import quiet, run_opts
    from xaibatch.evaluation.sanity import run_sanity
    from xaibatch.pipeline import run

    write_images(tmp_path / "in" / "FAKE", 3, seed=1)
    write_images(tmp_path / "in" / "REAL", 3, seed=2)
    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=quiet)
    first = run_sanity(tmp_path / "out", n=4)
    seeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    torch.manual_seed(5)
    assert seeded == [5]  # the spy sees torch.manual_seed's call
    seeded.clear()
    again = run_sanity(tmp_path / "out", n=4)
    net = random_init(lambda: torch.nn.Linear(4, 4))
    assert seeded == []
    assert [(c.rank, c.ssim) for c in again.curves] == [(c.rank, c.ssim) for c in first.curves]
    assert torch.equal(net.weight, random_init(lambda: torch.nn.Linear(4, 4)).weight)


class _Gated(torch.nn.Module):
    """A small CNN whose first forward in the thread named ``first`` waits (at most 2 s) until another thread's
    forward has begun: two calls of explain() with it overlap whenever they can."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
        self.other_began, self.waited = threading.Event(), False

    def forward(self, x):
        if threading.current_thread().name == "first" and not self.waited:
            self.waited = True
            self.other_began.wait(2.0)
        elif threading.current_thread().name == "second":
            self.other_began.set()
        return self.head(self.features(x))


def test_two_threads_explaining_with_one_model_each_get_its_maps_and_hand_it_back():
    """A service's threads explain uploads with its one model: each call's end put the other call's hooks away and
    its own saved training flags back, so the other raised "the model's output does not depend on the target
    layer", or returned the maps and predictions of a model half handed back, and the model stayed in eval mode."""
    from xaibatch import explain

    model = _Gated().train()
    images = torch.rand(2, 3, 3, 16, 16)
    alone = [explain(model, images[i], ["gradcam", "guided-gradcam"]) for i in range(2)]
    model.waited = False
    got: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            got[i] = explain(model, images[i], ["gradcam", "guided-gradcam"])
        except Exception as e:  # noqa: BLE001 - compared below, with its message
            got[i] = e

    threads = [threading.Thread(target=call, args=(i,), name=name) for i, name in enumerate(["first", "second"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60.0)
    for i in range(2):
        assert not isinstance(got[i], Exception), got[i]
        for m in ("gradcam", "guided-gradcam"):
            assert torch.allclose(got[i].maps[m], alone[i].maps[m], atol=1e-6)
        assert torch.equal(got[i].preds, alone[i].preds)
    assert all(m.training for m in model.modules())


def test_reading_the_holder_while_another_thread_takes_the_lock_keeps_it_held(tmp_path: Path, monkeypatch):
    """A thread waiting for a folder (``wait=True``) reads the holder record through a descriptor of the lock file;
    another thread of the process that took the lock meanwhile (the folder's next run) lost it when that descriptor
    closed (a POSIX lock ends at any close of the file by its process), and a run of another process could take
    the folder too."""
    import subprocess
    import sys

    from xaibatch import lock as lock_module

    out = tmp_path / "out"
    out.mkdir()
    (out / lock_module.LOCK_NAME).write_text("")
    taker = lock_module.OutputLock(out)
    real_read, calls = lock_module._read_all, []

    def read_all(fd):  # the waiting thread's read: the other thread takes the lock meanwhile (or tries for 1 s)
        calls.append(fd)
        if len(calls) == 1:
            t = threading.Thread(target=taker.try_acquire)
            t.start()
            t.join(1.0)
        return real_read(fd)

    monkeypatch.setattr(lock_module, "_read_all", read_all)
    lock_module.OutputLock(out).holder()
    for _ in range(100):
        if taker.fd is not None:
            break
        threading.Event().wait(0.05)
    try:
        assert taker.fd is not None
        probe = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\ntry:\n fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(3)"
        r = subprocess.run([sys.executable, "-c", probe, str(out / lock_module.LOCK_NAME)], timeout=60)
        assert r.returncode == 3, "another process could lock the folder this process holds"
    finally:
        taker.release()
