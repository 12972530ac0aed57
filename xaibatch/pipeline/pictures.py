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


def batch_pictures(
    display: list[np.ndarray],
    maps,
    signed: bool,
    orig_sizes: list[tuple[int, int]],
    max_map_side: int = 0,
    views: list | None = None,
    on_device: list | None = None,
):
    """Per image of a batch: (full-size map, overlay, overlay thumbnail or None), computed on ``maps``' device.

    ``maps`` is a (B, h, w) tensor at the model's input size. Images of the same original size (a
    CIFAKE folder: all of them) go through in one call each. ``views``: a list filled with each image's
    MapRow.view (overlay.views_batch), so the report never reads the maps back. ``on_device``: the display
    copies already on the device ((h, w, 3) tensors, None where not; decode.finish_batch), used instead of
    copying ``display`` up again.
    """
    import torch

    from ..overlay import overlay_batch, resize_maps, thumbnail_batch, views_batch

    if views is not None:
        views[:] = [None] * len(display)

    dev = maps.device
    out: list[Any] = [None] * len(display)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, size in enumerate(orig_sizes):
        groups[tuple(size)].append(i)
    for (h, w), idx in groups.items():
        sel = maps[idx] if len(idx) < len(display) else maps
        full = resize_maps(sel, map_size(h, w, max_map_side), signed)
        dh, dw = display[idx[0]].shape[:2]
        shown = full if tuple(full.shape[1:]) == (dh, dw) else resize_maps(sel, (dh, dw), signed)
        up = [on_device[i] for i in idx] if on_device else []
        if up and all(u is not None for u in up):
            pics = torch.stack(up).to(dev, non_blocking=True)
        else:
            pics = torch.from_numpy(np.stack([display[i] for i in idx])).to(dev, non_blocking=True)
        over = overlay_batch(pics, shown, signed)
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
    """Thumbnails of display copies larger than a thumbnail (None for the others), on the CPU."""
    import torch

    from ..overlay import thumbnail_batch

    return [
        None if max(d.shape[:2]) <= layout.THUMB_SIDE else thumbnail_batch(torch.from_numpy(d.copy())[None])[0].numpy()
        for d in display
    ]
