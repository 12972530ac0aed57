"""Save a batch's pictures and maps, then commit its manifest rows: off the compute thread.

The device does the pixel work for a whole batch (:func:`batch_pictures`: maps resized to the original
size, overlays, thumbnails); the writer only encodes PNGs and writes files: in ``writers`` forked
processes (:mod:`.writer_pool`, one share of each batch each), or in its own thread (``writers=0``).
Crash safety: every file is written to a temporary name and renamed (:class:`~xaibatch.files.OutputDir`),
and a batch's rows are committed in one transaction, by the writer thread, only after all of its files
are in place; committed rows whose files a batch writes over are dropped in a commit before (:func:`overwrites`).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .. import layout
from ..defaults import cpu_count
from ..errors import vanished
from ..files import OutputDir, npy_bytes
from ..manifest import ImageRow, Manifest, MapRow
from ..overlay import MAP_PNG_STRATEGY, encode_png
from ..scan import Failure
from .writer_pool import WriterPool, can_fork

# Below about this many display pixels per image, encoding is mostly Python work under the GIL and more
# writer threads only slow each other down (measured: 64 px slower with 2 threads, 96 px already faster).
PARALLEL_WRITE_MIN_PIXELS = 96 * 96

# Jobs out to the writer processes besides the one being committed. More while their pictures travel in the
# processes' shared buffers (writer_pool.SLOTS, memory held anyway), which rides out a loaded machine's scheduling
# (2 processes at 32 px on the 2-core box: 21,300-25,000 img/s with 3 jobs out, 25,900-26,300 with 6, no more
# with 8); pickled shares (large pictures) hold their bytes until sent, so fewer of them.
JOBS_OUT_SHARED = 5
JOBS_OUT_PICKLED = 2


@dataclass
class MapPictures:
    """One method's files for one image."""

    method: str
    config_hash: str
    array: np.ndarray  # float32 at the image's original size: the .npy
    overlay: np.ndarray  # uint8 (H, W, 3) at the display size
    thumb: np.ndarray | None  # None: the overlay is small enough to be its own thumbnail
    info: dict[str, Any] | None = None
    faith: dict[str, Any] | None = None  # deletion/insertion scores and curves (--faithfulness), see faith_fields
    view: dict[str, Any] | None = None  # MapRow.view: colour-bar scale and peak, see overlay.views_batch


@dataclass
class WriteItem:
    """One image's files: its display copy (when new or changed) and its maps."""

    rel: str
    stem: str
    width: int  # original size, which decides whether thumbnails are files of their own
    height: int
    display: np.ndarray | None = None
    display_thumb: np.ndarray | None = None
    maps: list[MapPictures] = field(default_factory=list)


@dataclass
class WriteJob:
    """A batch for the writer: files to write, then rows to commit in one transaction.

    Files the rows no longer point at are not deleted here: the report on disk shows them until the run writes
    its new one (see apply.delete_dropped).
    """

    run_id: int
    items: list[WriteItem] = field(default_factory=list)
    image_rows: list[ImageRow] = field(default_factory=list)
    drop_maps: list[tuple[str, str]] = field(default_factory=list)  # (rel, method) rows to delete
    failed: list[Failure] = field(default_factory=list)  # images that could not be read
    # Committed rows whose files this job writes over (see overwrites): dropped before those files are written
    overwritten_images: list[str] = field(default_factory=list)
    overwritten_maps: list[tuple[str, str]] = field(default_factory=list)  # (rel, method)

    @property
    def count(self) -> int:
        return len(self.items) + len(self.failed)


def overwrites(job: WriteJob, images: Mapping[str, Any], maps: Mapping[str, Mapping[str, Any]]) -> None:
    """Note in ``job`` the committed rows (``images``, ``maps``: the manifest's, as plan.Known holds them) whose files
    its items write over: a map recomputed (new content, model or options) is written to its row's own paths, a
    changed image's display copy to its row's. A kill after those files are written and before the job's rows are
    committed would leave the old rows pointing at new files; an image put back to its old bytes (a backup restored)
    would then keep them, a map of other pixels under the old row. So :func:`unclaim` drops them first, in a commit
    of their own (rows before files, as everywhere): the kill leaves the image to compute again. The image row goes
    only where the job commits a new one (a display copy written again over the same bytes changes nothing)."""
    fresh = {r.rel for r in job.image_rows}
    job.overwritten_images = [
        it.rel for it in job.items if it.display is not None and it.rel in fresh and it.rel in images
    ]
    job.overwritten_maps = [
        (it.rel, mp.method) for it in job.items for mp in it.maps if mp.method in maps.get(it.rel, {})
    ]


def planned_overwrites(work: Mapping[str, Any], known: Any) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`overwrites` for a whole plan (``work``: plan.Plan.work, ``known``: plan.Known), for the Ray engine, whose
    actors write files the driver cannot drop rows before: its committed rows whose files the plan's work writes
    over, dropped before the first batch is sent (the report of a run stopped meanwhile no longer shows them)."""
    images = [rel for rel, w in work.items() if w.fresh and w.display and rel in known.images]
    maps = [(rel, k) for rel, w in work.items() for k in w.methods if k in known.maps.get(rel, {})]
    return images, maps


def unclaim(manifest: Manifest, images: list[str], maps: list[tuple[str, str]], check: Callable[[], None]) -> None:
    """Drop the rows whose files are about to be written over (:func:`overwrites`), in one commit; none: nothing."""
    if not images and not maps:
        return
    with manifest.transaction():
        check()
        manifest.remove_images(images)
        for rel, method in maps:
            manifest.remove_map(rel, method)


def writer_threads(device_type: str, workers: int) -> int:
    """Threads that encode and write: one on the CPU, whose cores the model already uses; on a GPU the host's
    cores that the DataLoader workers leave (up to 8), which the writer needs to keep up with the device."""
    if device_type == "cpu":
        return 1
    return max(1, min(8, cpu_count() - max(1, workers)))


class Writer(threading.Thread):
    """Writes each job's files, then commits its rows (one transaction per job), in order.

    ``writers`` > 0: that many writer processes encode and write (started here, in the calling thread, so
    that they die with it); the next job is sent to them before the previous one's rows are committed.
    0: this thread writes. ``writers`` > 1 where there is no ``fork``: a thread pool of that many.
    """

    def __init__(
        self,
        out_dir: Path,
        on_done: Callable[[int], None] = lambda n: None,
        check: Callable[[], None] = lambda: None,
        writers: int = 0,
    ) -> None:
        self.check = check  # raises when the output folder's lock is no longer ours
        super().__init__(name="xaibatch-writer", daemon=True)
        self.out_dir = Path(out_dir)
        self.q: queue.Queue[WriteJob | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.on_done = on_done
        # Looked up per call: what this module holds then. No run id: the writer thread makes the rows itself
        # (pictures_written), so a process does not build rows only to drop them.
        write = lambda f, it, r: write_item(f, it, None)
        if writers > 0 and can_fork():
            from .shares import pack, split, unpack  # a share's pixels in one buffer (shares.py imports this module)

            self.pool: WriterPool | None = WriterPool(self.out_dir, writers, write, pack, unpack, split)
        else:
            self.pool = None
        self.threads = max(1, writers) if self.pool is None else 1  # > 1: a batch's images on threads

    def put(self, job: WriteJob) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(job)

    def finish(self) -> None:
        """Write what is queued, stop the thread (and the processes), and raise the first error it met."""
        if self.is_alive():
            self.q.put(None)
            self.join()
        elif self.pool is not None:  # never started
            self.pool.close()
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        manifest = Manifest(self.out_dir / layout.MANIFEST)
        try:
            if self.pool is not None:
                self._run_pool(manifest)
                return
            pool = ThreadPoolExecutor(self.threads, thread_name_prefix="xaibatch-encode") if self.threads > 1 else None
            files = OutputDir(self.out_dir)
            try:
                while (job := self.q.get()) is not None:
                    if self.error is None:
                        try:
                            self.write(manifest, files, job, pool)
                        except BaseException as e:  # surfaced by the compute thread
                            self.error = e
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)
                files.close()
        finally:
            if self.pool is not None:
                self.pool.close()
            manifest.close()

    def write(self, manifest: Manifest, files: OutputDir, job: WriteJob, pool: ThreadPoolExecutor | None) -> None:
        unclaim(manifest, job.overwritten_images, job.overwritten_maps, self.check)
        record = write_files(files, job, pool)
        commit(manifest, record, self.check)
        self.on_done(record.count)

    def _run_pool(self, manifest: Manifest) -> None:
        """Jobs to the writer processes; each job's rows committed once its files are acknowledged, in order.
        Several jobs are out at a time (JOBS_OUT_*), so the processes write the next while this thread commits."""
        assert self.pool is not None
        pool, sent = self.pool, deque()

        def settle() -> None:
            job, token = sent.popleft()
            try:
                pool.wait(token)
                if self.error is None:
                    commit(manifest, pictures_written(job), self.check)
                    self.on_done(job.count)
            except BaseException as e:  # surfaced by the compute thread
                if self.error is None:
                    self.error = e

        while True:
            if sent:
                try:
                    job = self.q.get_nowait()
                except queue.Empty:  # nothing new to send: commit what is out
                    settle()
                    continue
            else:
                job = self.q.get()
            if job is None:
                break
            while self.error is None and sent and not pool.room(job.items):  # else some sub-shares pickled
                settle()  # the oldest job's slots come free
            if self.error is not None:
                continue  # after an error: drain the queue, write and commit nothing more
            try:
                unclaim(manifest, job.overwritten_images, job.overwritten_maps, self.check)
                sent.append((job, pool.submit(job.items, job.run_id)))
            except BaseException as e:
                self.error = e
                continue
            while len(sent) > (JOBS_OUT_SHARED if pool.shared(sent[-1][1]) else JOBS_OUT_PICKLED):
                settle()
        while sent:
            settle()


@dataclass
class Commit:
    """A batch whose files are all in place: the rows to commit in one transaction.

    What the local writer thread hands itself and what a Ray worker sends back to the driver
    (picklable, no pixels): committing it is the same step in both engines (:func:`commit`).
    """

    run_id: int
    image_rows: list[ImageRow] = field(default_factory=list)
    map_rows: list[MapRow] = field(default_factory=list)
    drop_maps: list[tuple[str, str]] = field(default_factory=list)  # (rel, method) rows to delete
    failed: list[Failure] = field(default_factory=list)  # images that could not be read
    count: int = 0  # images done: written plus failed
    computed: int = 0  # images that went through the model


def write_files(files: OutputDir, job: WriteJob, pool: ThreadPoolExecutor | None = None) -> Commit:
    """Encode and write every file of ``job`` (in parallel on ``pool`` when the pictures are large enough);
    return what to commit once they are all in place."""
    pixels = sum(it.maps[0].overlay.shape[0] * it.maps[0].overlay.shape[1] for it in job.items if it.maps)
    if pool is not None and len(job.items) > 1 and pixels >= PARALLEL_WRITE_MIN_PIXELS * len(job.items):
        per_item = list(pool.map(lambda it: write_item(files, it, job.run_id), job.items))
    else:
        per_item = [write_item(files, it, job.run_id) for it in job.items]
    return Commit(
        job.run_id,
        list(job.image_rows),
        [r for rows in per_item for r in rows],
        list(job.drop_maps),
        list(job.failed),
        job.count,
        len(job.items),
    )


def pictures_written(job: WriteJob) -> Commit:
    """What to commit for ``job`` once its files were written elsewhere (by writer processes)."""
    return Commit(
        job.run_id,
        list(job.image_rows),
        [r for it in job.items for r in map_rows(it, job.run_id)],
        list(job.drop_maps),
        list(job.failed),
        job.count,
        len(job.items),
    )


def commit(manifest: Manifest, record: Commit, check: Callable[[], None] = lambda: None) -> None:
    """Commit a batch's rows in one transaction (its files are in place). The files of the rows it drops stay until
    the run's report no longer shows them (apply.delete_dropped)."""
    with manifest.transaction():
        check()  # inside the transaction: a run that took the folder cannot sweep between check and commit
        manifest.put_images(record.image_rows)
        for rel, method in record.drop_maps:
            manifest.remove_map(rel, method)
        manifest.put_maps(record.map_rows)
        for f in record.failed:
            if not vanished(f.reason):  # moved or deleted since the scan: its rows are the next run's to settle
                manifest.put_failure(f.rel, f.reason, record.run_id)


def faith_fields(faith: dict[str, Any] | None) -> dict[str, Any]:
    """A map's faithfulness scores as MapRow fields."""
    if faith is None:
        return {}
    return {
        "deletion": faith["deletion"],
        "insertion": faith["insertion"],
        "faith_hash": faith["hash"],
        "faith": {k: faith[k] for k in ("deletion_curve", "insertion_curve")},
    }


def map_rows(item: WriteItem, run_id: int) -> list[MapRow]:
    """The manifest rows of ``item``'s maps (not yet committed)."""
    rows = []
    stem, w, h = item.stem, item.width, item.height
    for mp in item.maps:  # the paths of layout.MapFiles.of, without building one per row (the writer thread's work)
        npy, png = layout.map_npy(mp.method, stem), layout.map_png(mp.method, stem)
        faith = faith_fields(mp.faith) if mp.faith is not None else {}
        thumb = layout.map_thumb(mp.method, stem, w, h)
        rows.append(
            MapRow(item.rel, mp.method, mp.config_hash, npy, png, thumb, mp.info, run_id, **faith, view=mp.view)
        )
    return rows


def write_item(files: OutputDir, item: WriteItem, run_id: int | None) -> list[MapRow]:
    """Encode and write one image's files; return its map rows (not yet committed; none for ``run_id`` None)."""
    stem, w, h = item.stem, item.width, item.height
    if item.display is not None:
        files.write(layout.image_png(stem), encode_png(item.display))
        if item.display_thumb is not None:
            files.write(layout.image_thumb(stem, w, h), encode_png(item.display_thumb))
    for mp in item.maps:  # layout.MapFiles.of's paths
        files.write(layout.map_npy(mp.method, stem), npy_bytes(mp.array.astype(np.float32, copy=False)))
        files.write(layout.map_png(mp.method, stem), encode_png(mp.overlay, MAP_PNG_STRATEGY))
        if mp.thumb is not None:
            files.write(layout.map_thumb(mp.method, stem, w, h), encode_png(mp.thumb, MAP_PNG_STRATEGY))
    return [] if run_id is None else map_rows(item, run_id)
