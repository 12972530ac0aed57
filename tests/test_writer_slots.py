"""Shares larger than one shared slot: cut into sub-shares that each cross in a slot of the same process (not
pickled), written to the same bytes as the writer thread alone; a slot is freed only when its own sub-share is
answered; an item larger than a slot is still pickled and written."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from helpers import run_opts, write_images
from xaibatch.manifest import Manifest
from xaibatch.pipeline import run, shares, writer, writer_pool
from xaibatch.pipeline.writer import MapPictures, WriteItem, WriteJob, Writer
from xaibatch.pipeline.writer_pool import WriterPool


def _pictures(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.suffix in (".png", ".npy")}


def _item(name: str, value: int, side: int = 16) -> WriteItem:
    """An item whose every picture holds ``value`` (so a picture overwritten by another item's shows)."""
    rng = np.random.default_rng(value)
    return WriteItem(
        f"{name}.png",
        name,
        side,
        side,
        np.full((side, side, 3), value, np.uint8),
        None,
        [
            MapPictures(
                "gradcam",
                "h",
                rng.random((side, side), dtype=np.float32),
                np.full((side, side, 3), value, np.uint8),
                None,
            )
        ],
    )


def _weight(item: WriteItem) -> int:
    return item.display.nbytes + sum(m.array.nbytes + m.overlay.nbytes for m in item.maps)


def _spy_submit(monkeypatch) -> list[tuple[int, bool]]:
    """(messages, shared) of each job the writer submits."""
    seen: list[tuple[int, bool]] = []
    submit = WriterPool.submit

    def spying(self, items, run_id):
        token = submit(self, items, run_id)
        seen.append((self._pending[token], self.shared(token)))
        return token

    monkeypatch.setattr(WriterPool, "submit", spying)
    return seen


def _run_with(inp: Path, out: Path, ckpt: Path, writers: int, slot: int | None, monkeypatch) -> dict:
    """A run of ``inp`` into ``out`` with ``writers`` processes (and slots of ``slot`` bytes); its picture files."""
    if slot is not None:
        monkeypatch.setattr(writer_pool, "SLOT_BYTES", slot)
    run(run_opts(inp, out, ckpt, writers=writers), log=lambda s: None)
    return _pictures(out)


def test_split_runs_each_fit_their_slot_in_order():
    """shares.split's runs are the items in order and each packs into a buffer of the size it was given."""
    items = [_item(f"i{i}", i, side=24) for i in range(19)]
    w = _weight(items[0])
    for size in (w + 5 * 64, 2 * w + 5 * 64 - 1, 3 * w + 400, 19 * w + 5 * 64, 1 << 20):
        runs = shares.split(items, size)
        assert [id(it) for r in runs for it in r] == [id(it) for it in items]
        assert len(runs) == -(-19 // max(1, (size - 5 * 64) // w))
        for r in runs:
            packed = shares.pack(r, memoryview(bytearray(size)))
            assert packed[0] == "stacked" and all(v is None or isinstance(v, tuple) for v in packed[2].values())
    assert [r is items for r in shares.split(items, w // 2)] == [
        True
    ]  # each alone too large: one run, pickled whole as before


def test_split_shares_cross_in_slots_and_write_the_same_files(tmp_path, tiny_ckpt, monkeypatch):
    """A run whose shares are each two slots' worth writes the same files and rows as the writer thread alone and
    as unsplit shares, every share in shared memory (before sub-shares: pickled whole)."""
    inp = tmp_path / "in"
    write_images(inp, 12, size=128, seed=3)
    files, rows = {}, {}
    seen = _spy_submit(monkeypatch)
    item = 128 * 128 * (3 + 4 + 3)  # display copy, float32 map, overlay (128 px: their own thumbnails)
    for name, n, slot in (("thread", 0, None), ("whole", 2, None), ("split", 2, item + 4096)):
        seen.clear()
        files[name] = _run_with(inp, tmp_path / name, tiny_ckpt, n, slot, monkeypatch)
        m = Manifest(tmp_path / name / "xaibatch.sqlite")
        rows[name] = {k: (r.npy, r.png, r.thumb) for k, r in m.maps().items()}
        m.close()
        if name == "whole":  # batches of 4 over 2 processes: one message each
            assert seen == [(2, True)] * 3
        if name == "split":  # two sub-shares a process, each in a slot
            assert seen == [(4, True)] * 3
    assert len(files["thread"]) == 12 * 3
    assert files["thread"] == files["whole"] == files["split"]
    assert rows["thread"] == rows["whole"] == rows["split"]


def test_a_slot_is_freed_only_when_its_own_sub_share_is_answered(tmp_path, monkeypatch):
    """Job A's share in process 0 is three sub-shares; the first is answered while the process is held on the
    second; job B then takes slots in process 0. B must not get the slots of A's unread sub-shares (freeing every
    slot of A at A's first answer would let B's pictures overwrite them: A's files would hold B's values)."""
    monkeypatch.setattr(writer_pool, "SLOT_BYTES", _weight(_item("x", 0)) + 5 * 64)  # one item a slot
    go, a0 = tmp_path / "go", tmp_path / "out" / "images" / "a0.png"

    def write(files, it, run_id):  # forked: runs in the processes
        if it.stem == "a1":  # held until B is packed
            while not go.exists():
                time.sleep(0.01)
        if it.stem == "x1":  # process 1 answers X once A's first sub-share is answered (give it time to arrive)
            while not a0.exists():
                time.sleep(0.01)
            time.sleep(0.3)
        return writer.write_item(files, it, None)

    (tmp_path / "out").mkdir()
    pool = WriterPool(tmp_path / "out", 2, write, shares.pack, shares.unpack, shares.split)
    try:
        x = pool.submit([_item("x0", 1), _item("x1", 2)], 1)
        a = pool.submit([_item(f"a{i}", 10 + i) for i in range(6)], 1)  # 3 sub-shares a process
        pool.wait(x)  # meanwhile a0 is answered; a1 is held, a2 unread
        b = pool.submit([_item(f"b{i}", 100 + i) for i in range(6)], 1)  # process 0: three more slots
        go.touch()
        pool.wait(a)
        pool.wait(b)
        assert pool.shared(a) is False  # forgotten once waited for; it was True: see the test above
    finally:
        pool.close()
    from PIL import Image

    for name, value in [(f"a{i}", 10 + i) for i in range(6)] + [(f"b{i}", 100 + i) for i in range(6)]:
        assert (np.asarray(Image.open(tmp_path / "out" / "images" / f"{name}.png")) == value).all(), name
        want = _item(name, value).maps[0].array
        assert np.array_equal(np.load(tmp_path / "out" / "maps" / "gradcam" / f"{name}.npy"), want), name


def test_an_item_larger_than_a_slot_is_pickled_and_written(tmp_path, monkeypatch):
    """Items each larger than a slot: each process's share crosses pickled in one message (shared() false) and
    is written the same as by the thread."""
    items = [_item(f"p{i}", i, side=96) for i in range(5)]  # 92 KB each: a large message
    out = {}
    seen = _spy_submit(monkeypatch)
    for n in (0, 2):
        if n:
            monkeypatch.setattr(writer_pool, "SLOT_BYTES", _weight(items[0]) // 2)
        (tmp_path / f"w{n}").mkdir()
        w = Writer(tmp_path / f"w{n}", writers=n)
        w.start()
        w.put(WriteJob(1, items))
        w.finish()
        out[n] = _pictures(tmp_path / f"w{n}")
    assert seen == [(2, False)]  # one message a process, pickled
    assert len(out[0]) == 5 * 3 and out[0] == out[2]  # display copy, npy, overlay


def test_an_error_in_a_later_sub_share_is_raised_by_wait(tmp_path, monkeypatch):
    """wait() returns only once every sub-share is answered and raises the error one of them met; the pool's
    slots all come free and the next job is written."""
    monkeypatch.setattr(writer_pool, "SLOT_BYTES", _weight(_item("x", 0)) + 5 * 64)  # one item a slot

    def write(files, it, run_id):
        if it.stem == "a5":  # process 1's last sub-share
            raise OSError(28, "No space left on device")
        return writer.write_item(files, it, None)

    (tmp_path / "out").mkdir()
    pool = WriterPool(tmp_path / "out", 2, write, shares.pack, shares.unpack, shares.split)
    try:
        a = pool.submit([_item(f"a{i}", i) for i in range(6)], 1)
        with pytest.raises(OSError, match="No space left"):
            pool.wait(a)
        assert all(s is None for slots in pool._slots for s in slots) and not any(pool._in_flight)
        b = pool.submit([_item(f"b{i}", i) for i in range(6)], 1)
        pool.wait(b)
    finally:
        pool.close()
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(
        [f"a{i}.png" for i in range(5)] + [f"b{i}.png" for i in range(6)]
    )


def test_a_share_of_mixed_sizes_packs_picture_by_picture_into_shared_memory():
    """A photo set's share (pictures of several shapes, some without a thumbnail) crossed pickled whole; it now
    packs each picture into the buffer and unpacks to the same arrays, and split cuts it by each item's weight."""
    items = [_item("a", 1, side=16), _item("b", 2, side=40), _item("c", 3, side=24)]
    items[1].maps[0] = MapPictures(
        "gradcam", "h", items[1].maps[0].array, items[1].maps[0].overlay, np.zeros((8, 8, 3), np.uint8)
    )
    size = 1 << 16
    buf = memoryview(bytearray(size))
    packed = shares.pack(items, buf)
    assert packed[0] == "stacked"  # names and places only: no picture in the message
    assert all(not isinstance(a, np.ndarray) for v in packed[2].values() for a in (v if isinstance(v, list) else [v]))
    for unpacked in (shares.unpack(packed, buf), shares.unpack(shares.pack(items), None)):  # in buf; pickled
        for got, want in zip(unpacked, items, strict=True):
            for g, w in zip(shares._arrays(got), shares._arrays(want), strict=True):
                assert (g is None and w is None) or np.array_equal(g, w)
    w = [sum(-(-a.nbytes // 64) * 64 for a in shares._arrays(it) if a is not None) for it in items]
    room = w[1] + 5 * 64  # the biggest alone
    assert [len(r) for r in shares.split(items, room)] == [1, 1, 1]
    assert [len(r) for r in shares.split(items, w[0] + w[1] + 5 * 64)] == [2, 1]
    for r in shares.split(items, w[0] + w[1] + 5 * 64):
        assert shares.pack(r, memoryview(bytearray(w[0] + w[1] + 5 * 64)))[0] == "stacked"


def test_a_photo_set_of_mixed_sizes_crosses_in_slots_and_writes_the_same_files(tmp_path, tiny_ckpt, monkeypatch):
    """Images of several sizes: each share crosses in shared memory (before: pickled whole, its shapes did not
    stack), split over slots when large, and writes what the writer thread writes."""
    inp = tmp_path / "in"
    for k, side in enumerate((48, 96, 160)):
        for p in write_images(inp / f"s{side}", 4, size=side, seed=k):
            p.rename(inp / f"{p.stem}_{side}.png")  # sorted: every batch of 4 mixes the sizes
        (inp / f"s{side}").rmdir()
    seen = _spy_submit(monkeypatch)
    files = {}
    item = 160 * 160 * (3 + 4 + 3) + 2 * 128 * 128 * 3  # the largest: display copy, map, overlay, 2 thumbnails
    for name, n, slot in (("thread", 0, None), ("split", 2, item + item // 8)):
        seen.clear()
        files[name] = _run_with(inp, tmp_path / name, tiny_ckpt, n, slot, monkeypatch)
    assert seen and all(shared for _, shared in seen)
    assert any(messages > 2 for messages, _ in seen)  # some share was cut into sub-shares
    assert files["thread"] == files["split"] and len(files["thread"]) >= 12 * 3
