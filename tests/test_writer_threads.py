"""The writer's parallel paths: writer processes (the default) and threads (where there is no fork) write the
same files as the writer thread alone; an error in any of them commits nothing of its batch; the processes
die with a SIGKILLed run and a dead one fails the run instead of hanging it."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import reap, run_opts, wait_until, write_images
from xaibatch.manifest import Manifest
from xaibatch.pipeline import RunOptions, run, writer
from xaibatch.pipeline.writer import PARALLEL_WRITE_MIN_PIXELS, MapPictures, WriteItem, WriteJob, Writer
from xaibatch.pipeline.writer_pool import WriterDied


def _opts(inp, out, ckpt, writers=None):
    return run_opts(inp, out, ckpt, ["gradcam", "lime"], writers=writers, method_options={"lime": {"samples": 20}})


def _pictures(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.suffix in (".png", ".npy")}


def test_writer_processes_write_the_same_files(tmp_path, tiny_ckpt, monkeypatch):
    inp = tmp_path / "in"
    write_images(inp, 10, size=128, seed=5)
    pids = tmp_path / "pids"
    item = writer.write_item

    def recording(files, it, run_id):  # the processes fork after this patch: they run it too
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return item(files, it, run_id)

    monkeypatch.setattr(writer, "write_item", recording)
    files, rows = {}, {}
    for n in (0, 3):
        out = tmp_path / f"out{n}"
        pids.write_text("")
        run(_opts(inp, out, tiny_ckpt, writers=n), log=lambda s: None)
        seen = set(pids.read_text().split())
        assert (seen == {str(os.getpid())}) if n == 0 else (len(seen) == 3 and str(os.getpid()) not in seen)
        files[n] = _pictures(out)
        m = Manifest(out / "xaibatch.sqlite")
        rows[n] = {k: (r.npy, r.png, r.thumb) for k, r in m.maps().items()}
        m.close()
    assert len(files[0]) == 10 + 10 * 2 * 2  # image, and npy + png per method (128 px: their own thumbnails)
    assert files[0] == files[3] and rows[0] == rows[3]


def test_writer_threads_write_the_same_files(tmp_path, tiny_ckpt, monkeypatch):
    """Where there is no fork the writer falls back to threads: the same files."""
    assert 128 * 128 >= PARALLEL_WRITE_MIN_PIXELS  # so these images take the parallel path
    inp = tmp_path / "in"
    write_images(inp, 10, size=128, seed=5)
    names: set[str] = set()
    item = writer.write_item

    def recording(*a, **k):
        names.add(threading.current_thread().name)
        return item(*a, **k)

    monkeypatch.setattr(writer, "write_item", recording)
    monkeypatch.setattr(writer, "can_fork", lambda: False)
    files = {}
    for n in (1, 3):
        out = tmp_path / f"out{n}"
        run(_opts(inp, out, tiny_ckpt, writers=n), log=lambda s: None)
        files[n] = _pictures(out)
    assert any(n.startswith("xaibatch-encode") for n in names) and "xaibatch-writer" in names
    assert files[1] == files[3]


@pytest.mark.parametrize("forks", [True, False])
def test_parallel_writer_error_commits_nothing_of_its_batch(tmp_path, tiny_ckpt, monkeypatch, forks):
    inp = tmp_path / "in"
    write_images(inp, 8, size=128, seed=6)
    main = os.getpid()
    write = writer.OutputDir.write

    def failing(self, rel, data):
        elsewhere = os.getpid() != main or threading.current_thread().name.startswith("xaibatch-encode")
        if elsewhere and rel.startswith("maps/lime/"):
            raise OSError(28, "No space left on device")
        return write(self, rel, data)

    monkeypatch.setattr(writer.OutputDir, "write", failing)
    monkeypatch.setattr(writer, "can_fork", lambda: forks)
    with pytest.raises(OSError, match="(?i)no space left"):
        run(_opts(inp, tmp_path / "out", tiny_ckpt, writers=3), log=lambda s: None)
    m = Manifest(tmp_path / "out" / "xaibatch.sqlite")
    try:
        assert m.images() == {} and m.maps() == {}
        assert m.runs()[-1].status == "error"
    finally:
        m.close()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def _job(n: int, size: int = 32) -> WriteJob:
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return WriteJob(
        1,
        [
            WriteItem(
                f"i{i}.png",
                f"i{i}",
                size,
                size,
                pic,
                None,
                [MapPictures("gradcam", "h", rng.random((size, size), dtype=np.float32), pic, None)],
            )
            for i in range(n)
        ],
    )


def test_a_dead_writer_process_fails_the_run_instead_of_hanging(tmp_path):
    w = Writer(tmp_path, writers=2)
    w.start()
    try:
        os.kill(w.pool.pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WriterDied, match="writer process ended"):
            w.put(_job(8))
            w.finish()
        assert time.monotonic() - t0 < 30
    finally:
        if w.is_alive():
            w.finish()


def test_writer_processes_end_with_the_writer(tmp_path):
    w = Writer(tmp_path, writers=2)
    pids = list(w.pool.pids)
    w.start()
    w.put(_job(6))
    w.finish()
    assert len(list((tmp_path / "maps" / "gradcam").glob("*.npy"))) == 6
    for pid in pids:  # reaped: no zombie, no orphan
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigkill_with_writer_processes_then_rerun_equals_uninterrupted(tmp_path, tiny_ckpt):
    """tests/test_crash.py's kill between a batch's files and its commit, with writer processes: they die with
    the run, and the re-run sweeps what they left and ends as an uninterrupted run does."""
    import torch

    import test_crash as tc
    from test_output_safety import _alive, _children

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the OMP_NUM_THREADS=1 subprocess (see test_crash)
    try:
        inp, out = tc._starting_folder(tmp_path, tiny_ckpt)
        ref = tc._reference(tmp_path, out, inp, tiny_ckpt)
        marks = tmp_path / "marks"
        proc = tc._cli(inp, out, tiny_ckpt, marks=marks, delay=1.0, extra=["--writers", "2"])
        kids: list[int] = []
        try:
            wait_until(proc, lambda: (marks / "precommit-3").exists(), "batch 3's files")
            kids = _children(proc.pid)  # --workers 0: the run's only children are its writer processes
            assert len(kids) == 2
            proc.kill()
            proc.wait(timeout=30)
            t0 = time.monotonic()
            while any(_alive(k) for k in kids) and time.monotonic() - t0 < 3.0:
                time.sleep(0.05)
            assert not [k for k in kids if _alive(k)], "a writer process outlived its SIGKILLed run"
        finally:
            reap(proc, kids)
        r = run(tc._opts(inp, out, tiny_ckpt), log=lambda s: None)
        assert r.status == "ok"
        assert tc._consistent(out) == tc._consistent(ref)
        assert tc._files(out) == tc._files(ref)
    finally:
        torch.set_num_threads(threads)


def test_writers_option_changes_no_map(tmp_path, tiny_ckpt):
    """--writers N on the CLI; the writer count is not part of the request: changing it recomputes nothing."""
    from click.testing import CliRunner

    from xaibatch.cli import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 6)
    args = ["run", str(inp), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0"]
    r = CliRunner().invoke(cli, [*args, "--writers", "2"], catch_exceptions=False)
    assert r.exit_code == 0 and "6 computed" in r.output, r.output
    r = CliRunner().invoke(cli, [*args, "--writers", "0"], catch_exceptions=False)
    assert r.exit_code == 0 and "0 computed" in r.output, r.output
    r = CliRunner().invoke(cli, [*args, "--writers", "-1"])
    assert r.exit_code == 2 and "--writers" in r.output


def test_writer_count_is_not_in_the_request(tmp_path):
    """An unchanged re-run with another --writers still skips loading the model (same request key)."""
    from xaibatch.pipeline.setup import request_key
    from xaibatch.scan import Scan

    found = Scan(tmp_path, ["a", "b"], [], [])
    keys = {
        request_key(RunOptions(tmp_path, tmp_path / "o", ["gradcam"], writers=n), found, "0" * 64) for n in (None, 0, 3)
    }
    assert len(keys) == 1


def test_a_share_crosses_the_pipe_stacked_and_comes_back_the_same():
    """shares.pack stacks a share's pictures per kind (one image size), a kind of mixed sizes picture by picture;
    unpack gives back the arrays and names write_item uses."""
    import pickle

    from xaibatch.pipeline.shares import pack, unpack

    rng = np.random.default_rng(0)

    def item(i: int, side: int, thumb: bool) -> WriteItem:
        pics = rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8)
        mp = [
            MapPictures(m, "h", rng.random((side, side), dtype=np.float32), pics[1], pics[1][:4] if thumb else None)
            for m in ("gradcam", "lime")
        ]
        return WriteItem(f"a/{i}.png", f"a/{i}", side, side, pics[0], pics[0][:8] if thumb else None, mp)

    def same(a: WriteItem, b: WriteItem) -> bool:
        arrays = [(a.display, b.display), (a.display_thumb, b.display_thumb)] + [
            (getattr(x, f), getattr(y, f))
            for x, y in zip(a.maps, b.maps, strict=True)
            for f in ("array", "overlay", "thumb")
        ]
        return (a.rel, a.stem, a.width, a.height, [m.method for m in a.maps]) == (
            b.rel,
            b.stem,
            b.width,
            b.height,
            [m.method for m in b.maps],
        ) and all((x is None and y is None) or (x.dtype == y.dtype and np.array_equal(x, y)) for x, y in arrays)

    uniform = [item(i, 16, thumb=True) for i in range(5)]
    mixed = uniform[:2] + [item(9, 24, thumb=False)]
    packed = pack(uniform)
    assert packed[0] == "stacked" and packed[2]["0.array"].shape == (5, 16, 16)
    ragged = pack(mixed)
    assert ragged[0] == "stacked" and isinstance(ragged[2]["display"], list) and len(ragged[2]["display"]) == 3
    for items in (uniform, mixed):
        back = unpack(pickle.loads(pickle.dumps(pack(items), protocol=pickle.HIGHEST_PROTOCOL)))
        assert len(back) == len(items) and all(same(a, b) for a, b in zip(items, back, strict=True))


def test_a_share_in_shared_memory_comes_back_the_same_and_a_large_one_is_pickled():
    """shares.pack with a buffer: the stacks are copied there and only their places cross (no array is pickled);
    unpack reads them back from the same buffer. A share that does not fit is stacked and pickled as before."""
    import mmap
    import pickle

    from xaibatch.pipeline.shares import pack, unpack

    rng = np.random.default_rng(1)
    items = [
        WriteItem(
            f"a/{i}.png",
            f"a/{i}",
            16,
            16,
            rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            None,
            [
                MapPictures(
                    "gradcam", "h", rng.random((16, 16), dtype=np.float32), np.full((16, 16, 3), i, np.uint8), None
                )
            ],
        )
        for i in range(6)
    ]
    region = mmap.mmap(-1, 1 << 16)
    packed = pack(items, memoryview(region))
    blob = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
    assert packed[0] == "stacked" and not any(isinstance(v, np.ndarray) for v in packed[2].values())
    assert len(blob) < 2000  # names and places only (the pictures are 6 x 1,792 bytes)
    back = unpack(pickle.loads(blob), memoryview(region))
    for a, b in zip(items, back, strict=True):
        assert (a.rel, a.stem, b.display_thumb, b.maps[0].thumb) == (b.rel, b.stem, None, None)
        assert np.array_equal(a.display, b.display) and np.array_equal(a.maps[0].overlay, b.maps[0].overlay)
        assert a.maps[0].array.dtype == b.maps[0].array.dtype and np.array_equal(a.maps[0].array, b.maps[0].array)
    small = memoryview(region)[:4096]  # too small for these stacks: pickled as before
    packed = pack(items, small)
    assert packed[0] == "stacked" and packed[2]["0.array"].shape == (6, 16, 16)


def test_many_batches_through_writer_processes_reuse_their_shared_buffers(tmp_path):
    """More jobs than shared slots (4 per process): every slot is freed when its share is written, and each job's
    files hold its own pictures (a slot reused too early would leave another job's pixels in them)."""
    from PIL import Image

    w = Writer(tmp_path, writers=2)
    w.start()
    try:
        for j in range(12):
            items = [
                WriteItem(
                    f"{j}_{i}.png",
                    f"{j}_{i}",
                    8,
                    8,
                    np.full((8, 8, 3), j, np.uint8),
                    None,
                    [
                        MapPictures(
                            "gradcam", "h", np.full((8, 8), j, np.float32), np.full((8, 8, 3), j, np.uint8), None
                        )
                    ],
                )
                for i in range(6)
            ]
            w.put(WriteJob(1, items))
    finally:
        w.finish()
    for j in range(12):
        for i in range(6):
            assert np.asarray(Image.open(tmp_path / f"images/{j}_{i}.png")).max() == j
            assert np.load(tmp_path / f"maps/gradcam/{j}_{i}.npy").max() == j
    m = Manifest(tmp_path / "xaibatch.sqlite")
    assert len(m.maps()) == 72
    m.close()


def test_a_share_of_nineteen_224_px_images_fits_a_shared_slot():
    """The 16-core H200 host's default at 224 px (batch 128 over 7 writer processes: up to 19 images a share, five pictures
    each) crosses in shared memory, not pickled: pickling cost the writer thread 10x the copy (issue #20)."""
    from xaibatch.pipeline.shares import pack
    from xaibatch.pipeline.writer_pool import SLOT_BYTES

    def item(i: int) -> WriteItem:
        big, small = np.zeros((224, 224, 3), np.uint8), np.zeros((128, 128, 3), np.uint8)
        return WriteItem(
            f"{i}.jpg",
            f"{i}",
            224,
            224,
            big,
            small,
            [MapPictures("gradcam", "h", np.zeros((224, 224), np.float32), big, small)],
        )

    buf = memoryview(bytearray(SLOT_BYTES))
    packed = pack([item(i) for i in range(19)], buf)
    assert packed[0] == "stacked" and all(v is None or isinstance(v, tuple) for v in packed[2].values())


def test_every_process_and_thread_count_follows_the_cpus_this_process_may_use(monkeypatch):
    """On a 64-core host where the job may use 2 CPUs (taskset, Slurm, a container's cpuset) the writer threads,
    the report's forked processes and the plan's hashing threads count 2, not 64."""
    import os

    from xaibatch import defaults
    from xaibatch.pipeline.writer import writer_threads
    from xaibatch.report import forked
    from xaibatch.report.render import detail_processes

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert defaults.cpu_count() == 2
    assert writer_threads("cuda", 1) == 1
    assert detail_processes() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not forked.can_fork()
    assert writer_threads("cuda", 1) == 1
