"""A batch's pictures, made on the device where its maps are: maps at the original size, overlays, thumbnails
(what the writer then only encodes and writes)."""

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
        else None; the same pixels as :func:`display_thumbs` (on the CPU: bit for bit)."""
        from ..overlay import thumbnail_batch

        out: list[np.ndarray | None] = [None] * len(self.display)
        for size, idx in self.groups.items():
            rows = [k for k, i in enumerate(idx) if wanted[i]]
            if not rows or max(self.display[idx[0]].shape[:2]) <= layout.THUMB_SIDE:
                continue
            pics = self.stack(size)
            small = thumbnail_batch(pics if len(rows) == len(idx) else pics[rows]).cpu().numpy()
            for r, k in enumerate(rows):
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
    from ..overlay import overlay_batch, resize_maps, thumbnail_batch, views_batch

    if views is not None:
        views[:] = [None] * len(display)
    if stacks is None:
        stacks = DisplayStacks(display, orig_sizes, maps.device, on_device)
    out: list[Any] = [None] * len(display)
    for (h, w), idx in stacks.groups.items():
        sel = maps[idx] if len(idx) < len(display) else maps
        full = resize_maps(sel, map_size(h, w, max_map_side), signed)
        dh, dw = display[idx[0]].shape[:2]
        shown = full if tuple(full.shape[1:]) == (dh, dw) else resize_maps(sel, (dh, dw), signed)
        over = overlay_batch(stacks.stack((h, w)), shown, signed)
        thumbs = thumbnail_batch(over)
        full_np, over_np = full.cpu().numpy(), over.cpu().numpy()
        thumbs_np = None if thumbs is None else thumbs.cpu().numpy()
        group_views = views_batch(shown, full, signed) if views is not None else None
        for j, i in enumerate(idx):
            out[i] = (full_np[j], over_np[j], None if thumbs_np is None else thumbs_np[j])
            if views is not None:
                views[i] = group_views[j]
    return out


def display_thumbs(display: list[np.ndarray]) -> list[np.ndarray | None]:
    """Thumbnails of display copies larger than a thumbnail (None for the others), on the CPU, one at a time
    (a run makes them with :meth:`DisplayStacks.thumbs`)."""
    import torch

    from ..overlay import thumbnail_batch

    return [
        None if max(d.shape[:2]) <= layout.THUMB_SIDE else thumbnail_batch(torch.from_numpy(d.copy())[None])[0].numpy()
        for d in display
    ]
