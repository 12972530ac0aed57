"""A writer process's share of a batch as it crosses the pipe: each kind of picture as one stacked array.

Pickling each WriteItem with its three to five small arrays costs about as much as writing its files at 32 px
once the PNGs are cheap (measured on the 2-core box: 12.6 us to pickle an image's item, 9.8 us to unpickle
it, 61 us to encode and write its files), and the pickling is the writer thread's: the part of the work
that does not spread over the processes. :func:`pack` stacks a share's display copies, maps and overlays
(one array per kind, when the share's pictures of that kind have one shape and dtype: a folder of one image
size) and keeps only what :func:`~xaibatch.pipeline.writer.write_item` needs to name and encode the files;
:func:`unpack` gives back WriteItems whose arrays are rows of those stacks. With a buffer of shared memory (each
writer process has a few, writer_pool.py) the stacks are copied there and only the names and the stacks' places
cross the pipe: nothing of the pictures is pickled, sent or unpickled (writer thread per image at 32 px: 2.5 ->
1.4 us of CPU). A share of mixed sizes crosses as its items. The rows are not in a share: the writer thread
builds them from its own items (writer.pictures_written), so a share carries no manifest data.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import numpy as np

from .writer import MapPictures, WriteItem

FIELDS = ("display", "display_thumb")
MAP_FIELDS = ("array", "overlay", "thumb")


def pack(items: list[WriteItem], buf: memoryview | None = None) -> Any:
    """``items`` as ("stacked", names, stacks) when every kind of picture stacks, else the items themselves.

    ``buf``: shared memory the receiving process reads too (writer_pool.py): when the stacks fit, they are
    written there and ``stacks`` holds only where ((offset, shape, dtype) per kind), so no picture is pickled.
    """
    if not items or len({len(it.maps) for it in items}) != 1:
        return items
    kinds: dict[str, list[np.ndarray] | None] = {}
    for f in FIELDS:
        if (arrays := _stackable(list(map(attrgetter(f), items)))) is False:
            return items
        kinds[f] = arrays
    for k in range(len(items[0].maps)):
        maps = [it.maps[k] for it in items]
        for f in MAP_FIELDS:
            if (arrays := _stackable(list(map(attrgetter(f), maps)))) is False:
                return items
            kinds[f"{k}.{f}"] = arrays
    names = [(it.rel, it.stem, it.width, it.height, [mp.method for mp in it.maps]) for it in items]
    if buf is not None and (places := _places(kinds, len(buf))) is not None:
        for key, arrays in kinds.items():
            if arrays is not None:
                offset, shape, dtype = places[key]
                np.ndarray(shape, dtype, buffer=buf, offset=offset)[...] = arrays  # one copy, into buf
        return ("stacked", names, places)
    return ("stacked", names, {key: None if a is None else np.array(a) for key, a in kinds.items()})


def split(items: list[WriteItem], size: int) -> list[list[WriteItem]]:
    """``items`` cut into consecutive runs whose stacks (:func:`pack` into a buffer of ``size`` bytes) each fit;
    one run, ``items``, when they fit together or when one item alone does not (then pickled whole, one message).
    :func:`pack` stacks only pictures of one shape and dtype per kind, so every item weighs what the first does:
    a run of n takes n times its bytes plus at most 64 per kind of alignment (_places). A share of mixed shapes
    crosses as its items whatever its runs."""
    if not items:
        return []
    first = items[0]
    arrays = [first.display, first.display_thumb] + [a for mp in first.maps for a in (mp.array, mp.overlay, mp.thumb)]
    weight = sum(a.nbytes for a in arrays if a is not None)
    per_run = (size - 64 * len(arrays)) // max(1, weight)
    if per_run < 1 or per_run >= len(items):
        return [items]
    return [items[i : i + per_run] for i in range(0, len(items), per_run)]


def unpack(packed: Any, buf: memoryview | None = None) -> list[WriteItem]:
    """The WriteItems of :func:`pack` (map rows' data left out: config_hash "", no view); ``buf``: the shared
    memory that :func:`pack` was given (the items' arrays are views of it: read them before it is reused)."""
    if not (isinstance(packed, tuple) and packed and packed[0] == "stacked"):
        return packed
    _, names, stacks = packed

    def row(key: str, i: int) -> np.ndarray | None:
        stack = stacks[key]
        if isinstance(stack, tuple):  # (offset, shape, dtype) in buf
            offset, shape, dtype = stack
            stack = stacks[key] = np.ndarray(shape, dtype, buffer=buf, offset=offset)
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


def _stackable(arrays: list[np.ndarray | None]) -> list[np.ndarray] | None | bool:
    """``arrays`` when they stack into one (None when all are None); False when they do not (shapes, dtypes,
    some None)."""
    first = arrays[0]
    if first is None:
        return None if all(a is None for a in arrays) else False
    shape, dtype = first.shape, first.dtype
    for a in arrays:  # a loop, not any(...): this runs for every picture of a share
        if a is None or a.shape != shape or a.dtype != dtype:
            return False
    return arrays


def _places(kinds: dict[str, list[np.ndarray] | None], size: int) -> dict[str, Any] | None:
    """Where each kind's stack goes in a buffer of ``size`` bytes ((offset, shape, dtype); None for a kind
    with no pictures), or None when they do not all fit."""
    places: dict[str, Any] = {}
    offset = 0
    for key, arrays in kinds.items():
        if arrays is None:
            places[key] = None
            continue
        shape, dtype = (len(arrays), *arrays[0].shape), arrays[0].dtype.str
        places[key] = (offset, shape, dtype)
        offset += -(-len(arrays) * arrays[0].nbytes // 64) * 64  # each stack 64-byte aligned
    return places if offset <= size else None
