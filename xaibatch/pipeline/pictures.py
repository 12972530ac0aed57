"""A batch's pictures, made on the device where its maps are: maps at the original size (scaled down past
--max-map-side: map_size), overlays, thumbnails (what the writer then only encodes and writes)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from .. import layout


def map_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(h, w) of a saved map: the image's size, or, when that is over ``max_side`` x ``max_side`` pixels, scaled
    down (aspect kept) to about that many pixels; 0: no limit. By area, so a 4000x10 strip keeps its size."""
    if max_side <= 0 or h * w <= max_side * max_side:
        return h, w
    scale = max_side / math.sqrt(h * w)
    return max(1, min(h, round(h * scale))), max(1, min(w, round(w * scale)))


class DisplayStacks:
    """A batch's display copies on the device, stacked once per original size: every method's overlays and the
    display thumbnails use the same stacks (one host stack and one copy up per batch, not one per method, and
    the thumbnails in one device call per size instead of one CPU call per image; issue #20 at 224 px).

    ``on_device``: the display copies already on the device ((h, w, 3) tensors, None where not;
    decode.finish_batch), used instead of copying ``display`` up again.
    """

    def __init__(self, display: list[np.ndarray], orig_sizes: list[tuple[int, int]], device, on_device=None) -> None:
        self.display, self.device, self.on_device = display, device, on_device
        self.groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, size in enumerate(orig_sizes):
            self.groups[tuple(size)].append(i)
        self._stacks: dict[tuple[int, int], Any] = {}

    def stack(self, size: tuple[int, int]):
        """(n, h, w, 3) uint8 on the device: the display copies of the images of original ``size``, in order."""
        if size not in self._stacks:
            import torch

            idx = self.groups[size]
            up = [self.on_device[i] for i in idx] if self.on_device else []
            if up and all(u is not None for u in up):
                pics = torch.stack(up).to(self.device, non_blocking=True)
            else:
                pics = torch.from_numpy(np.stack([self.display[i] for i in idx])).to(self.device, non_blocking=True)
            self._stacks[size] = pics
        return self._stacks[size]

    def thumbs(self, wanted: list[bool]) -> list[np.ndarray | None]:
        """Per image: the display copy's thumbnail where ``wanted`` and the copy is larger than a thumbnail,
        else None; on the CPU bit for bit those of one image at a time (tests/test_pictures.py)."""
        from ..overlay import thumbnail_batch

        out: list[np.ndarray | None] = [None] * len(self.display)
        for size, idx in self.groups.items():
            rows = [k for k, i in enumerate(idx) if wanted[i]]
            if not rows or max(self.display[idx[0]].shape[:2]) <= layout.THUMB_SIDE:
                continue
            pics = self.stack(size)
            pics = pics if len(rows) == len(idx) else pics[rows]
            for part in chunks(len(rows), pics.shape[1] * pics.shape[2], self.device):
                small = thumbnail_batch(pics[part]).cpu().numpy()
                for r, k in enumerate(rows[part]):
                    out[idx[k]] = small[r]
        return out


def batch_pictures(
    display: list[np.ndarray],
    maps,
    signed: bool,
    orig_sizes: list[tuple[int, int]],
    max_map_side: int = 0,
    views: list | None = None,
    on_device: list | None = None,
    stacks: DisplayStacks | None = None,
):
    """Per image of a batch: (full-size map, overlay, overlay thumbnail or None), computed on ``maps``' device.

    ``maps`` is a (B, h, w) tensor at the model's input size. Images of the same original size (a
    CIFAKE folder: all of them) go through in one call each. ``views``: a list filled with each image's
    MapRow.view (overlay.views_batch), so the report never reads the maps back. ``on_device``: the display
    copies already on the device (see :class:`DisplayStacks`). ``stacks``: the batch's display copies already
    stacked on the device (the same ``display`` and ``orig_sizes``), shared by the batch's methods.
    """
    if views is not None:
        views[:] = [None] * len(display)
    if stacks is None:
        stacks = DisplayStacks(display, orig_sizes, maps.device, on_device)
    out: list[Any] = [None] * len(display)
    for (h, w), idx in stacks.groups.items():
        sel = maps[idx] if len(idx) < len(display) else maps
        pics = stacks.stack((h, w))
        for part in chunks(len(idx), pics.shape[1] * pics.shape[2], maps.device):
            full, over, thumbs, group_views = _pictures(
                sel[part], pics[part], map_size(h, w, max_map_side), signed, views is not None
            )
            for j, i in enumerate(idx[part]):
                out[i] = (full[j], over[j], None if thumbs is None else thumbs[j])
                if views is not None:
                    views[i] = group_views[j]
    return out


# On the CPU, a group's pictures are made this many display pixels at a time (16 images of 224 px): a whole batch's
# float temporaries (77 MB each at 128 x 224 px) are fresh pages every time (page faults: system time), a chunk's stay
# in the allocator and the caches. Measured on the 2-core box at 224 px, batch 128: one torch thread 3.4 -> 1.4 ms an
# image of CPU (wall halved); two threads the same wall, system time 2.5 -> 0.1 ms. The same pixels. On a GPU the
# whole group goes at once up to DEVICE_CHUNK_PIXELS: an overlay takes some 70 bytes of float temporaries a
# display pixel (counted from overlay_batch, unmeasured), so a default GPU batch of 512 photos (display copies of
# 512 px: 134 M pixels) would have wanted about 9 GB at once; 64 such copies are about 1.2 GB. A 224 px batch of
# 128 (6.4 M pixels), or any CIFAKE batch, still goes in one call.
CPU_CHUNK_PIXELS = 16 * 224 * 224
DEVICE_CHUNK_PIXELS = 64 * 512 * 512


def chunks(n: int, pixels: int, device) -> list[slice]:
    """Slices of a group of ``n`` pictures of ``pixels`` pixels each, as made at a time on ``device``."""
    limit = CPU_CHUNK_PIXELS if device.type == "cpu" else DEVICE_CHUNK_PIXELS
    k = max(1, limit // max(1, pixels))
    return [slice(i, min(n, i + k)) for i in range(0, n, k)]


def _pictures(maps, pics, size: tuple[int, int], signed: bool, want_views: bool):
    """Full-size maps, overlays, their thumbnails (None when small) as host arrays and the views (None unless
    ``want_views``) of ``maps`` (n, h, w) over the display copies ``pics`` (n, H, W, 3) on the device."""
    from ..overlay import draw_batch, resize_maps, thumbnail_batch, views_batch

    full = resize_maps(maps, size, signed)
    shown, tops, over = draw_batch(pics, maps, signed, full)  # the one drawing of serve and explain() too
    thumbs = thumbnail_batch(over)
    group_views = views_batch(shown, full, signed, tops) if want_views else None
    return full.cpu().numpy(), over.cpu().numpy(), None if thumbs is None else thumbs.cpu().numpy(), group_views
