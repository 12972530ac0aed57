"""Stream images, decoded and resized, in batches: the DataLoader's dataset and the batch it hands on.

:class:`ImageDataset` decodes one image per item (in DataLoader workers, with :mod:`xaibatch.data`);
:func:`collate` stacks a batch's items into a :class:`LoadedBatch`, the loader's one hand-off to whoever
explains the batch (runs, ``sanity``, faithfulness's chance sample, ``xaibatch bench``, ``tools/train``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from . import data  # by module: tests patch data.load_image for the workers they fork
from .data import JpegInfo, display_copy, model_input
from .errors import DecodeError
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

    def pin_memory(self) -> LoadedBatch:
        """Page-locked input tensors (the DataLoader's ``pin_memory=True`` calls this on a custom batch)."""
        if self.x is not None:
            self.x = self.x.pin_memory()
        if self.segments is not None:
            self.segments = self.segments.pin_memory()
        if self.undecoded is not None:
            u = self.undecoded
            u.jpegs = [JpegBytes(jp.position, jp.data.pin_memory(), jp.info) for jp in u.jpegs]
            u.inputs = [None if t is None else t.pin_memory() for t in u.inputs]
        return self


class ImageDataset(torch.utils.data.Dataset):
    """Yields one dict per image: the model input (uint8, CHW), the display copy and optional segments.

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

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        entry = self.entries[i]
        digest = hashlib.sha256() if self.want_hash and self.want_hash[i] else None
        try:
            if self.jpeg_bytes:
                got = data.read_for_device(entry.path, digest=digest)
                if isinstance(got, tuple):
                    raw, info = got
                    return {
                        "index": i,
                        "jpeg": torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()),
                        "jpeg_info": info,
                        "orig_size": info.shown_size,
                        "display": None,
                        "x": None,
                        "error": None,
                        "sha256": None if digest is None else digest.hexdigest(),
                    }
                im = got
            else:
                im = data.load_image(entry.path) if digest is None else data.load_image(entry.path, digest=digest)
            w, h = im.size
            arr = model_input(im, self.input_size)
            item: dict[str, Any] = {
                "index": i,
                "x": torch.from_numpy(arr.copy()).permute(2, 0, 1),
                "orig_size": (h, w),
                "display": display_copy(im),
                "error": None,
                "sha256": None if digest is None else digest.hexdigest(),
            }
            if self.segmenter is not None:
                item["segments"] = torch.from_numpy(np.ascontiguousarray(self.segmenter(arr), dtype=np.int64))
            return item
        except DecodeError as e:
            return {"index": i, "error": str(e)}
        except Exception as e:  # a worker must never die on one file
            return {"index": i, "error": f"{type(e).__name__}: {e}"}


def collate(items: list[dict[str, Any]]) -> LoadedBatch:
    """Stack the good images; pass the failures through as (index, reason).

    When some images came as undecoded JPEG bytes (``ImageDataset(jpeg_bytes=True)``) the batch's ``x`` waits
    in ``undecoded`` for :func:`xaibatch.decode.finish_batch`.
    """
    good = [it for it in items if it["error"] is None]
    jpegs = [JpegBytes(j, it["jpeg"], it["jpeg_info"]) for j, it in enumerate(good) if "jpeg" in it]
    batch = LoadedBatch(
        failed=[(it["index"], it["error"]) for it in items if it["error"] is not None],
        index=[it["index"] for it in good],
        orig_size=[it["orig_size"] for it in good],
        display=[it["display"] for it in good],
        sha256=[it.get("sha256") for it in good],
        segments=torch.stack([it["segments"] for it in good]) if good and "segments" in good[0] else None,
    )
    if jpegs:
        batch.undecoded = Undecoded(jpegs, [it["x"] for it in good])
    elif good:
        batch.x = torch.stack([it["x"] for it in good])
    return batch
