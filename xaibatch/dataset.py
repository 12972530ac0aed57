"""Stream images, decoded and resized, in batches: the DataLoader's dataset and the batch it hands on.

:class:`ImageDataset` decodes one image per item (in DataLoader workers, with :mod:`xaibatch.data`) into an
:class:`ImageItem` (or an :class:`Unreadable`); :func:`collate` stacks a batch's items into a :class:`LoadedBatch`, the loader's one hand-off to whoever
explains the batch (runs, ``sanity``, faithfulness's chance sample, ``xaibatch bench``, ``tools/train``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from . import data  # by module: tests patch data.load_image for the workers they fork
from .data import JpegInfo, display_copy, model_input
from .errors import VANISHED, DecodeError
from .layout import DISPLAY_MAX_SIDE
from .scan import ImageEntry


@dataclass(frozen=True)
class JpegBytes:
    """A JPEG the workers only read (``--decode device``): :func:`xaibatch.decode.finish_batch` decodes it."""

    position: int  # among the batch's good images
    data: torch.Tensor  # the file's bytes, uint8 on the CPU
    info: JpegInfo


@dataclass
class Undecoded:
    """A batch's JPEG bytes not decoded yet, and the model inputs of its other images (None at the JPEGs')."""

    jpegs: list[JpegBytes]
    inputs: list[torch.Tensor | None]


@dataclass
class LoadedBatch:
    """One batch out of the loader: the good images (stacked model inputs, display copies, ...) and the failures.

    The per-image lists run over the good images, in order; ``index`` gives each one's position in the dataset.
    ``x`` is None when no image of the batch could be read, or while ``undecoded`` holds JPEG bytes
    (``ImageDataset(jpeg_bytes=True)``): then ``display`` is None at the JPEGs' places until
    :func:`xaibatch.decode.finish_batch` decodes them.
    """

    failed: list[tuple[int, str]]  # (position in the dataset, reason)
    index: list[int]
    orig_size: list[tuple[int, int]]  # (h, w) as decoded, EXIF orientation applied
    display: list[np.ndarray | None]  # (h, w, 3) uint8
    sha256: list[str | None]  # of the bytes decoded, where asked (ImageDataset's want_hash)
    x: torch.Tensor | None = None  # (B, 3, S, S) uint8
    segments: torch.Tensor | None = None  # (B, S, S) int64: LIME's superpixels, made in the workers
    undecoded: Undecoded | None = None
    display_on_device: list[torch.Tensor | None] | None = None  # --decode device: the display copies still there

    def part(self, start: int, stop: int) -> LoadedBatch:
        """The good images ``start`` to ``stop - 1`` as a batch of their own, every per-image field cut alike (views
        of the tensors, no copies); no ``failed``: the whole batch's failures stay with it. A batch run out of
        memory is explained in such parts (:class:`xaibatch.pipeline.compute.BatchWorker`), undecoded or not."""
        undecoded = None
        if self.undecoded is not None:
            u = self.undecoded
            jpegs = [JpegBytes(jp.position - start, jp.data, jp.info) for jp in u.jpegs if start <= jp.position < stop]
            undecoded = Undecoded(jpegs, u.inputs[start:stop])
        return LoadedBatch(
            failed=[],
            index=self.index[start:stop],
            orig_size=self.orig_size[start:stop],
            display=self.display[start:stop],
            sha256=self.sha256[start:stop],
            x=None if self.x is None else self.x[start:stop],
            segments=None if self.segments is None else self.segments[start:stop],
            undecoded=undecoded,
            display_on_device=None if self.display_on_device is None else self.display_on_device[start:stop],
        )

    def arrays(self) -> LoadedBatch:
        """This batch with its tensors as numpy arrays (the same memory): what :func:`collate_piped` hands on.
        A worker's tensors cross to the run through /dev/shm and a socket in the temporary folder; arrays are
        pickled through the worker's pipe, which needs neither (pipeline/loader.handover)."""
        return self._converted(lambda t: t.numpy())

    def tensors(self) -> LoadedBatch:
        """This batch with any numpy arrays (:meth:`arrays`) as tensors again (the same memory); idempotent."""
        return self._converted(lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray) else a)

    def _converted(self, f: Callable[[torch.Tensor | np.ndarray], torch.Tensor | np.ndarray]) -> LoadedBatch:
        if self.x is not None:
            self.x = f(self.x)  # type: ignore[assignment]
        if self.segments is not None:
            self.segments = f(self.segments)  # type: ignore[assignment]
        if self.undecoded is not None:
            u = self.undecoded
            u.jpegs = [JpegBytes(jp.position, f(jp.data), jp.info) for jp in u.jpegs]  # type: ignore[arg-type]
            u.inputs = [None if t is None else f(t) for t in u.inputs]  # type: ignore[misc]
        return self

    def pin_memory(self) -> LoadedBatch:
        """Page-locked input tensors (the DataLoader's ``pin_memory=True`` calls this on a custom batch)."""
        self.tensors()  # a batch that crossed a pipe as arrays
        if self.x is not None:
            self.x = self.x.pin_memory()
        if self.segments is not None:
            self.segments = self.segments.pin_memory()
        if self.undecoded is not None:
            u = self.undecoded
            u.jpegs = [JpegBytes(jp.position, jp.data.pin_memory(), jp.info) for jp in u.jpegs]
            u.inputs = [None if t is None else t.pin_memory() for t in u.inputs]
        return self


class ImageItem(NamedTuple):
    """One image :class:`ImageDataset` read: its model input, display copy and what :func:`collate` stacks.

    A NamedTuple: a worker builds one per image, and it pickles and unpacks as cheaply as a plain tuple.
    """

    index: int  # position in the dataset
    orig_size: tuple[int, int]  # (h, w) as decoded, EXIF orientation applied
    x: torch.Tensor | None  # (3, S, S) uint8; None while the JPEG waits undecoded in ``jpeg``
    display: np.ndarray | None  # (h, w, 3) uint8; None for an undecoded JPEG
    sha256: str | None  # of the bytes decoded, where asked (``want_hash``)
    segments: torch.Tensor | None = None  # (S, S) int64: LIME's superpixels, with a segmenter
    jpeg: torch.Tensor | None = None  # ``jpeg_bytes``: the file's bytes, uint8, for the device to decode
    jpeg_info: JpegInfo | None = None  # with ``jpeg``


class Unreadable(NamedTuple):
    """An image :class:`ImageDataset` could not read, and why (one line)."""

    index: int
    reason: str


class ImageDataset(torch.utils.data.Dataset):
    """Yields one :class:`ImageItem` per image (:class:`Unreadable` for a file it cannot read).

    With ``jpeg_bytes`` a JPEG that the device can decode is yielded undecoded, as ``jpeg`` (its bytes as a
    uint8 tensor) and ``jpeg_info``; :func:`xaibatch.decode.finish_batch` decodes the batch's JPEGs.
    """

    def __init__(
        self,
        entries: list[ImageEntry],
        input_size: int,
        segmenter: Callable[[np.ndarray], np.ndarray] | None = None,
        want_hash: list[bool] | None = None,
        jpeg_bytes: bool = False,
    ) -> None:
        if jpeg_bytes and segmenter is not None:
            raise ValueError("segments are computed on the PIL path only: no jpeg_bytes with a segmenter")
        self.entries = entries
        self.input_size = input_size
        self.segmenter = segmenter
        self.want_hash = want_hash  # per entry: also return the sha256 of the bytes decoded
        self.jpeg_bytes = jpeg_bytes

    def tensor_bytes(self) -> int:
        """Bytes of tensors one image adds to a batch (what crosses from a DataLoader worker): its model input,
        LIME's superpixels, and with ``jpeg_bytes`` its file (the entries' mean size)."""
        side = self.input_size * self.input_size
        n = 3 * side + (8 * side if self.segmenter is not None else 0)
        if self.jpeg_bytes and self.entries:
            n += sum(e.size for e in self.entries) // len(self.entries)
        return n

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> ImageItem | Unreadable:
        entry = self.entries[i]
        digest = hashlib.sha256() if self.want_hash and self.want_hash[i] else None
        try:
            if self.jpeg_bytes:
                got = data.read_for_device(entry.path, digest=digest)
                if isinstance(got, tuple):
                    raw, info = got
                    jpeg = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
                    sha256 = None if digest is None else digest.hexdigest()
                    return ImageItem(i, info.shown_size, None, None, sha256, jpeg=jpeg, jpeg_info=info)
                im = got
            else:
                im = data.load_image(entry.path) if digest is None else data.load_image(entry.path, digest=digest)
            w, h = im.size
            arr = model_input(im, self.input_size)
            # An image already at the input size is its own display copy: the same pixels, not converted twice
            same = (w, h) == (self.input_size, self.input_size) and max(w, h) <= DISPLAY_MAX_SIDE
            w, h = data.full_size(im)  # a large JPEG decoded scaled keeps its own size for its maps and report
            segments = None
            if self.segmenter is not None:
                segments = torch.from_numpy(np.ascontiguousarray(self.segmenter(arr), dtype=np.int64))
            return ImageItem(
                index=i,
                orig_size=(h, w),
                x=torch.from_numpy(arr.copy()).permute(2, 0, 1),
                display=arr if same else display_copy(im),
                sha256=None if digest is None else digest.hexdigest(),
                segments=segments,
            )
        except DecodeError as e:
            if str(e).startswith("cannot read") and not os.path.lexists(entry.file):  # moved or deleted meanwhile
                return Unreadable(i, f"{VANISHED} (moved or deleted while the run read it)")
            return Unreadable(i, str(e))
        except Exception as e:  # a worker must never die on one file
            return Unreadable(i, f"{type(e).__name__}: {e}")


def collate_piped(items: list[ImageItem | Unreadable]) -> LoadedBatch:
    """:func:`collate`, its tensors as numpy arrays (:meth:`LoadedBatch.arrays`): the workers' collate when
    their batches cross through pipes; the run makes them tensors again (:meth:`LoadedBatch.tensors`)."""
    return collate(items).arrays()


def collate(items: list[ImageItem | Unreadable]) -> LoadedBatch:
    """Stack the good images; pass the failures through as (index, reason).

    When some images came as undecoded JPEG bytes (``ImageDataset(jpeg_bytes=True)``) the batch's ``x`` waits
    in ``undecoded`` for :func:`xaibatch.decode.finish_batch`.
    """
    good = [it for it in items if isinstance(it, ImageItem)]
    jpegs = [JpegBytes(j, it.jpeg, it.jpeg_info) for j, it in enumerate(good) if it.jpeg is not None]
    batch = LoadedBatch(
        failed=[(it.index, it.reason) for it in items if isinstance(it, Unreadable)],
        index=[it.index for it in good],
        orig_size=[it.orig_size for it in good],
        display=[it.display for it in good],
        sha256=[it.sha256 for it in good],
        segments=torch.stack([it.segments for it in good]) if good and good[0].segments is not None else None,
    )
    if jpegs:
        batch.undecoded = Undecoded(jpegs, [it.x for it in good])
    elif good:
        batch.x = torch.stack([it.x for it in good])
    return batch
