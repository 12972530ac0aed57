"""Parts of a run timed alone: the DataLoader, the writer, and the file system's floor under both."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .context import Bench
from .options import Row
from .timing import Job, Slice, scratch


def loader_alone(b: Bench, what: str = "", jpeg: bool = False, on: Any = None) -> Job:
    """The DataLoader alone over the folder, no model: decode and resize in the workers, or with ``on`` (a
    device) the workers read the JPEGs and the main process decodes and resizes them there (decode.py)."""
    from ...dataset import ImageDataset, collate
    from ...decode import finish_batch
    from ...pipeline.loader import worker_context
    from ...scan import scan

    if on is not None:
        what, jpeg = f"JPEG, decoded on {on}", True
    row = Row("gradcam", f"loader alone{', ' + what if what else ''} ({b.workers} DataLoader workers)", "part", b.n)
    if on is not None:
        row.extra["decode_on"] = str(on)

    def fn(sl: Slice) -> float:
        k = b.n_warm if sl.warm else b.n
        folder = b.inputs.jpegs(k) if jpeg else b.inputs.first(k)
        ds = ImageDataset(scan(folder).images, b.opts.image_size, jpeg_bytes=on is not None)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=b.bs,
            num_workers=b.workers,
            collate_fn=collate,
            prefetch_factor=4 if b.workers else None,
            pin_memory=on is not None and on.type == "cuda",
            multiprocessing_context=worker_context(b.workers),  # as a run's
        )
        batches = iter(loader)
        for _ in sl.chunks(k, b.bs):  # the batches that fit in the slice (the loader's start-up included)
            batch = next(batches)
            if on is not None:
                batch = finish_batch(batch, on, b.opts.image_size)
        if on is not None and on.type == "cuda":
            torch.cuda.synchronize(on)
        own = time.perf_counter() - sl.start  # not the workers' shut-down when the slice ended the loop early
        del batches
        return own

    return row, fn


def files_per_image(size: int) -> int:
    """Atomic files the writer makes per image and method at this size: display copy, npy, overlay, and their
    thumbnails when the picture is larger than one."""
    from ... import layout

    return 3 + 2 * (size > layout.THUMB_SIDE)


def write_batches(out: Path, n: int, size: int, batch: int, pictures: Any, writers: int) -> None:
    """Write ``n`` images' files and rows with the run's Writer (``writers`` processes; 0: the thread), from
    one batch of pictures made in advance: ``(display copies, per-image map pictures, display thumbnails)``."""
    from ...pipeline.writer import MapPictures, WriteItem, WriteJob, Writer

    display, maps, thumbs = pictures
    w = Writer(out, writers=writers)
    w.start()
    try:
        for a in range(0, n, batch):
            items = [
                WriteItem(
                    f"img_{i:06d}.png",
                    f"img_{i:06d}",
                    size,
                    size,
                    display[i - a],
                    thumbs[i - a],
                    [MapPictures("gradcam", "bench", *maps[i - a])],
                )
                for i in range(a, min(n, a + batch))
            ]
            w.put(WriteJob(1, items))
    finally:
        w.finish()


def floor_files(out: Path, n: int, size: int, first: int = 0) -> None:
    """The writer's atomic writes alone for ``n`` images (temporary name, write, rename; one thread), no encoding;
    ``first``: the images already written there (their files are named on from them)."""
    body = bytes(3 * size * size // 2)
    per = files_per_image(size)
    d = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(first * per, (first + n) * per):
            fd = os.open(f".{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=d)
            os.write(fd, body)
            os.close(fd)
            os.rename(f".{i}.tmp", f"{i}", src_dir_fd=d, dst_dir_fd=d)
    finally:
        os.close(d)


def writer_alone(b: Bench) -> Job:
    """The writer alone: a run's files and rows for maps already in memory (pictures made on the device)."""
    from ...defaults import default_writers
    from ...pipeline.pictures import DisplayStacks, batch_pictures

    size, bs = b.opts.image_size, b.bs
    display = [b.images[i % b.n] for i in range(bs)]
    maps = torch.rand(bs, size, size, generator=torch.Generator().manual_seed(0)).to(b.dev)
    sizes = [(size, size)] * bs
    pictures = (
        display,
        batch_pictures(display, maps, False, sizes),
        DisplayStacks(display, sizes, b.dev).thumbs([True] * bs),
    )
    writers = default_writers(b.dev.type, b.workers)  # as a run's default --writers
    how = f"{writers} writer process{'es' * (writers > 1)}" if writers else "the writer thread"
    row = Row("gradcam", f"writer alone, maps in memory ({how})", "part", b.n)
    outs = scratch(b.inputs.root, "writer")

    def fn(sl: Slice) -> float:  # the writer works behind a queue: its images are planned, not cut off
        out = next(outs)
        out.mkdir()
        try:
            t = time.perf_counter()
            write_batches(out, sl.plan(b.n_warm, b.n, bs), size, bs, pictures, writers)
            return time.perf_counter() - t  # not the clean-up, as the floor's
        finally:
            shutil.rmtree(out, ignore_errors=True)

    return row, fn


def file_floor(b: Bench) -> Job:
    """Atomic file writes alone, as many per image as the writer makes at this size, with no encoding: what the
    kernel lets any crash-safe writer reach here."""
    size = b.opts.image_size
    row = Row(
        "gradcam", f"file system floor: {files_per_image(size)} atomic files per image, no encoding", "limit", b.n
    )
    outs = scratch(b.inputs.root, "floor")

    def fn(sl: Slice) -> float:
        out = next(outs)
        out.mkdir()
        try:
            for a, z in sl.chunks(b.n, b.bs):
                floor_files(out, z - a, size, first=a)
            return time.perf_counter() - sl.start  # not the clean-up
        finally:
            shutil.rmtree(out, ignore_errors=True)

    return row, fn
