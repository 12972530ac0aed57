"""A writer process's share of a batch as it crosses the pipe: each kind of picture as one stacked array.

Pickling each WriteItem with its three to five small arrays costs about as much as writing its files at 32 px
once the PNGs are cheap (measured on the 2-core box: 12.6 us to pickle an image's item, 9.8 us to unpickle
it, 61 us to encode and write its files), and the pickling is the writer thread's: the part of the work
that does not spread over the processes. :func:`pack` stacks a share's display copies, maps and overlays
(one array per kind, when the share's pictures of that kind have one shape and dtype: a folder of one image
size) and keeps only what :func:`~xaibatch.pipeline.writer.write_item` needs to name and encode the files;
:func:`unpack` gives back WriteItems whose arrays are rows of those stacks. A share of mixed sizes crosses as
its items. The rows are not in a share: the writer thread builds them from its own items
(writer.pictures_written), so a share carries no manifest data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .writer import MapPictures, WriteItem

FIELDS = ("display", "display_thumb")
MAP_FIELDS = ("array", "overlay", "thumb")


def pack(items: list[WriteItem]) -> Any:
    """``items`` as ("stacked", names, stacks) when every kind of picture stacks, else the items themselves."""
    if not items or any(len(it.maps) != len(items[0].maps) for it in items):
        return items
    stacks: dict[str, Any] = {}
    for f in FIELDS:
        if (stack := _stack([getattr(it, f) for it in items])) is False:
            return items
        stacks[f] = stack
    for k in range(len(items[0].maps)):
        for f in MAP_FIELDS:
            if (stack := _stack([getattr(it.maps[k], f) for it in items])) is False:
                return items
            stacks[f"{k}.{f}"] = stack
    names = [(it.rel, it.stem, it.width, it.height, [mp.method for mp in it.maps]) for it in items]
    return ("stacked", names, stacks)


def unpack(packed: Any) -> list[WriteItem]:
    """The WriteItems of :func:`pack` (map rows' data left out: config_hash "", no view)."""
    if not (isinstance(packed, tuple) and packed and packed[0] == "stacked"):
        return packed
    _, names, stacks = packed

    def row(key: str, i: int) -> np.ndarray | None:
        stack = stacks[key]
        return None if stack is None else stack[i]

    return [
        WriteItem(
            rel,
            stem,
            width,
            height,
            row("display", i),
            row("display_thumb", i),
            [
                MapPictures(method, "", row(f"{k}.array", i), row(f"{k}.overlay", i), row(f"{k}.thumb", i))
                for k, method in enumerate(methods)
            ],
        )
        for i, (rel, stem, width, height, methods) in enumerate(names)
    ]


def _stack(arrays: list[np.ndarray | None]) -> np.ndarray | None | bool:
    """One array for all (None when all are None); False when they do not stack (shapes, dtypes, some None)."""
    first = arrays[0]
    if first is None:
        return None if all(a is None for a in arrays) else False
    shape, dtype = first.shape, first.dtype
    if any(a is None or a.shape != shape or a.dtype != dtype for a in arrays):
        return False
    return np.stack(arrays)
