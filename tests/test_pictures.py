"""A batch's pictures (pipeline/pictures.py): the display copies go up to the device once per batch, and the
display thumbnails made there are the ones the CPU made one image at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaibatch.layout import display_size
from xaibatch.layout import THUMB_SIDE
from xaibatch.overlay import thumbnail_batch
from xaibatch.pipeline.pictures import DisplayStacks, batch_pictures

CPU = torch.device("cpu")


def display_thumbs(display: list[np.ndarray]) -> list[np.ndarray | None]:
    """The reference: each display copy's thumbnail on the CPU, one image at a time (None when small)."""
    return [
        None if max(d.shape[:2]) <= THUMB_SIDE else thumbnail_batch(torch.from_numpy(d.copy())[None])[0].numpy()
        for d in display
    ]


def _batch():
    """Display copies of a batch of mixed original sizes (h, w): three sizes that need a thumbnail, one that does not."""
    rng = np.random.default_rng(0)
    sizes = [(224, 224), (224, 224), (200, 300), (100, 80), (224, 224), (400, 600), (200, 300)]
    display = []
    for h, w in sizes:
        dw, dh = display_size(w, h)
        display.append(rng.integers(0, 256, (dh, dw, 3), dtype=np.uint8))
    return display, sizes


def test_thumbnails_of_the_stacks_are_the_cpu_ones_bit_for_bit():
    display, sizes = _batch()
    wanted = [True, False, True, True, True, True, False]
    got = DisplayStacks(display, sizes, CPU).thumbs(wanted)
    want = display_thumbs(display)
    for g, w, keep in zip(got, want, wanted, strict=True):
        if not keep or w is None:
            assert g is None
        else:
            assert g.dtype == np.uint8 and np.array_equal(g, w)
    assert sum(g is not None for g in got) == 4  # the 100x80 copy is its own thumbnail


@pytest.mark.parametrize("signed", [False, True])
def test_pictures_from_shared_stacks_equal_their_own(signed):
    """Every method of a batch draws on the same stacks (one copy up per size), with the same pictures as alone."""
    display, sizes = _batch()
    maps = torch.rand(len(display), 7, 7, generator=torch.Generator().manual_seed(1))
    stacks = DisplayStacks(display, sizes, CPU)
    views_a: list = []
    views_b: list = []
    shared = batch_pictures(display, maps, signed, sizes, 0, views_a, stacks=stacks)
    again = batch_pictures(display, maps * 2, signed, sizes, 0, None, stacks=stacks)
    assert len(stacks._stacks) == 4  # one stack per original size, made once for both calls
    alone = batch_pictures(display, maps, signed, sizes, 0, views_b)
    for s, a in zip(shared, alone, strict=True):
        for x, y in zip(s, a, strict=True):
            assert (x is None and y is None) or np.array_equal(x, y)
    assert views_a == views_b
    assert again[0][1].shape == display[0].shape


@pytest.mark.parametrize("signed", [False, True])
def test_pictures_made_in_chunks_on_the_cpu_equal_one_call_per_size(monkeypatch, signed):
    """On the CPU a size's pictures are made CPU_CHUNK_PIXELS at a time (faster: a chunk's temporaries stay in the
    caches); every map, overlay, thumbnail and view is the one a single call for the whole size gives."""
    from xaibatch.pipeline import pictures

    display, sizes = _batch()
    display, sizes = display * 3, sizes * 3  # 9 of 224 px, 6 of 200x300
    maps = torch.rand(len(display), 7, 7, generator=torch.Generator().manual_seed(2)) - 0.3 * signed
    runs = []
    for chunk in (10**9, 2 * 224 * 224):  # everything at once; two 224 px pictures at a time
        monkeypatch.setattr(pictures, "CPU_CHUNK_PIXELS", chunk)
        views: list = []
        pics = batch_pictures(display, maps, signed, sizes, 0, views)
        thumbs = DisplayStacks(display, sizes, CPU).thumbs([i % 2 == 0 for i in range(len(display))])
        runs.append((pics, views, thumbs))
    assert pictures.chunks(9, 224 * 224, CPU) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 9)]
    assert pictures.chunks(9, 224 * 224, torch.device("cuda")) == [slice(0, 9)]  # a GPU: the whole size at once
    # ... up to DEVICE_CHUNK_PIXELS: a GPU batch of 512 photos' 512 px display copies goes 64 at a time (~1.2 GB
    # of temporaries instead of ~9 GB)
    assert pictures.chunks(512, 512 * 512, torch.device("cuda")) == [slice(i, i + 64) for i in range(0, 512, 64)]
    assert pictures.chunks(128, 224 * 224, torch.device("cuda")) == [slice(0, 128)]
    (pa, va, ta), (pb, vb, tb) = runs
    assert va == vb
    for a, b in zip(pa + ta, pb + tb, strict=True):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
            assert (x is None and y is None) or np.array_equal(x, y)
