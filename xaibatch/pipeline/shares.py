"""A writer process's share of a batch as it crosses the pipe: each kind of picture as one stacked array.

Pickling each WriteItem with its three to five small arrays costs about as much as writing its files at 32 px
once the PNGs are cheap (measured on the 2-core box: 12.6 us to pickle an image's item, 9.8 us to unpickle
it, 61 us to encode and write its files), and the pickling is the writer thread's: the part of the work
that does not spread over the processes. :func:`pack` stacks a share's display copies, maps and overlays
(one array per kind, when the share's pictures of that kind have one shape and dtype: a folder of one image
size; a kind of mixed sizes is one picture per item) and keeps only what
:func:`~xaibatch.pipeline.writer.write_item` needs to name and encode the files;
:func:`unpack` gives back WriteItems whose arrays are rows of those stacks. With a buffer of shared memory (each
writer process has a few, writer_pool.py) the stacks are copied there and only the names and the stacks' places
cross the pipe: nothing of the pictures is pickled, sent or unpickled (writer thread per image at 32 px: 2.5 ->
1.4 us of CPU); a share of mixed sizes (a photo set) crosses there too, picture by picture. The rows are not in
a share: the writer thread builds them from its own items (writer.pictures_written), so a share carries no
manifest data.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import numpy as np

from .writer import MapPictures, WriteItem

FIELDS = ("display", "display_thumb")
MAP_FIELDS = ("array", "overlay", "thumb")


def pack(items: list[WriteItem], buf: memoryview | None = None) -> Any:
    """``items`` as ("stacked", names, stacks), or the items themselves when their maps differ in number.

    Each kind of picture is one stacked array when the share's pictures of that kind have one shape and dtype (a
    folder of one image size), else a list with one entry per item ("ragged": a photo set of many sizes).
    ``buf``: shared memory the receiving process reads too (writer_pool.py): when the pictures fit, they are
    written there and ``stacks`` holds only where ((offset, shape, dtype) per stack or per ragged picture), so no
    picture is pickled.
    """
    if not items or len({len(it.maps) for it in items}) != 1:
        return items
    kinds: dict[str, Any] = {f: _kind(list(map(attrgetter(f), items))) for f in FIELDS}
    for k in range(len(items[0].maps)):
        maps = [it.maps[k] for it in items]
        for f in MAP_FIELDS:
            kinds[f"{k}.{f}"] = _kind(list(map(attrgetter(f), maps)))
    names = [(it.rel, it.stem, it.width, it.height, [mp.method for mp in it.maps]) for it in items]
    if buf is not None and (places := _places(kinds, len(buf))) is not None:
        for key, arrays in kinds.items():
            if isinstance(arrays, _Ragged):
                for a, place in zip(arrays, places[key]):
                    if a is not None:
                        offset, shape, dtype = place
                        np.ndarray(shape, dtype, buffer=buf, offset=offset)[...] = a
            elif arrays is not None:
                offset, shape, dtype = places[key]
                np.ndarray(shape, dtype, buffer=buf, offset=offset)[...] = arrays  # one copy, into buf
        return ("stacked", names, places)
    return ("stacked", names, {key: _pickled(a) for key, a in kinds.items()})


def split(items: list[WriteItem], size: int) -> list[list[WriteItem]]:
    """``items`` cut into consecutive runs that each :func:`pack` into a buffer of ``size`` bytes; one run,
    ``items``, when they fit together or when one item alone does not (then pickled whole, one message).
    An item weighs its pictures' bytes, each rounded up to 64 (a ragged picture's alignment; a stack needs no
    more), and a run at most 64 more per kind of picture (a stack's alignment): what :func:`_places` lays out."""
    if not items:
        return []
    room = size - 64 * len(_arrays(items[0]))
    weights = [sum(-(-a.nbytes // 64) * 64 for a in _arrays(it) if a is not None) for it in items]
    if max(weights) > room or sum(weights) <= room:
        return [items]
    runs: list[list[WriteItem]] = [[]]
    used = 0
    for it, w in zip(items, weights):
        if runs[-1] and used + w > room:
            runs.append([])
            used = 0
        runs[-1].append(it)
        used += w
    return runs


def _arrays(it: WriteItem) -> list[np.ndarray | None]:
    """The item's pictures, in :func:`pack`'s order of kinds."""
    return [it.display, it.display_thumb] + [a for mp in it.maps for a in (mp.array, mp.overlay, mp.thumb)]


def unpack(packed: Any, buf: memoryview | None = None) -> list[WriteItem]:
    """The WriteItems of :func:`pack` (map rows' data left out: config_hash "", no view); ``buf``: the shared
    memory that :func:`pack` was given (the items' arrays are views of it: read them before it is reused)."""
    if not (isinstance(packed, tuple) and packed and packed[0] == "stacked"):
        return packed
    _, names, stacks = packed

    def row(key: str, i: int) -> np.ndarray | None:
        stack = stacks[key]
        if isinstance(stack, list):  # ragged: one picture (or its place in buf) per item
            got = stack[i]
            return np.ndarray(got[1], got[2], buffer=buf, offset=got[0]) if isinstance(got, tuple) else got
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


class _Ragged(list):
    """A kind of picture whose pictures differ in shape or dtype (or some are None): one entry per item."""


def _kind(arrays: list[np.ndarray | None]) -> list[np.ndarray] | _Ragged | None:
    """``arrays`` as one stack (a list of one shape and dtype), None when all are None, else :class:`_Ragged`."""
    first = arrays[0]
    if first is None:
        return None if all(a is None for a in arrays) else _Ragged(arrays)
    shape, dtype = first.shape, first.dtype
    for a in arrays:  # a loop, not any(...): this runs for every picture of a share
        if a is None or a.shape != shape or a.dtype != dtype:
            return _Ragged(arrays)
    return arrays


def _pickled(arrays: Any) -> Any:
    """A kind as it crosses without shared memory: a ragged kind as a plain list, a stack as one array."""
    if isinstance(arrays, _Ragged):
        return list(arrays)
    return None if arrays is None else np.array(arrays)


def _places(kinds: dict[str, Any], size: int) -> dict[str, Any] | None:
    """Where each kind goes in a buffer of ``size`` bytes: (offset, shape, dtype) of its stack, a list of those
    (or None) per item for a ragged kind, None for a kind with no pictures; None when they do not all fit."""
    places: dict[str, Any] = {}
    offset = 0
    for key, arrays in kinds.items():
        if arrays is None:
            places[key] = None
        elif isinstance(arrays, _Ragged):
            places[key] = []
            for a in arrays:
                places[key].append(None if a is None else (offset, a.shape, a.dtype.str))
                offset += 0 if a is None else -(-a.nbytes // 64) * 64  # each picture 64-byte aligned
        else:
            shape, dtype = (len(arrays), *arrays[0].shape), arrays[0].dtype.str
            places[key] = (offset, shape, dtype)
            offset += -(-len(arrays) * arrays[0].nbytes // 64) * 64  # each stack 64-byte aligned
    return places if offset <= size else None
