"""The writer's fast path equals the reference pictures: overlays on the device, PNG encoding, folder writes."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from xaibatch import layout
from xaibatch.errors import UsageError
from xaibatch.files import OutputDir, npy_bytes
from xaibatch.overlay import draw, encode_png, overlay_batch, resize_maps, thumbnail, thumbnail_batch


@pytest.mark.parametrize("signed", [False, True])
def test_one_map_is_drawn_as_a_run_draws_it(signed):
    """draw() (serve's and explain()'s pictures, one map on the CPU) gives the pixels of a run's batch path
    (pipeline/pictures.batch_pictures), also where the map shrinks on one side and grows on the other. The old
    overlay() resized with PIL (BOX, then BILINEAR or NEAREST): a signed map's segment edges fell a pixel elsewhere, an
    unsigned map's shrunk values differed by up to 0.02."""
    from xaibatch.overlay import display_map
    from xaibatch.pipeline.pictures import batch_pictures

    rng = np.random.default_rng(1)
    maps = rng.random((6, 32, 32), dtype=np.float32)
    if signed:
        maps -= 0.5
    maps[1] = 0  # a blank map (signed: all transparent; unsigned: no stretch)
    maps[2] *= 1e-7  # below the stretch threshold
    maps[3, :4] = 1.0  # a few saturated pixels
    maps[4] = np.kron(rng.random((4, 4), dtype=np.float32) - 0.5 * signed, np.ones((8, 8), np.float32))  # segments
    for h, w in [(50, 20), (12, 12), (24, 40), (32, 32), (9, 300), (300, 9)]:
        display = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(6)]
        run = batch_pictures(display, torch.from_numpy(maps), signed, [(h, w)] * 6)
        for i in range(6):
            assert np.array_equal(draw(display[i], maps[i], signed)[0], run[i][1]), ((h, w), i)
            full = resize_maps(torch.from_numpy(maps[i])[None], (h, w), signed)[0].numpy()
            assert np.array_equal(display_map(maps[i], (w, h), signed), full)


@pytest.mark.parametrize("name", ["inferno", "RdBu_r"])
def test_the_written_out_colour_maps_are_matplotlibs(name):
    """colourmaps.py holds matplotlib's colours, so that runs need not import it: every colour and the one for NaN
    equal matplotlib's (as 8-bit values, as colorize always drew them), and colorize gives matplotlib's colour
    for any value."""
    from matplotlib import colormaps

    from xaibatch import colourmaps
    from xaibatch.overlay import colorize

    cmap = colormaps[name]
    want = np.vstack([cmap(np.arange(cmap.N)), np.asarray(cmap.get_bad())[None]])[:, :3]
    got = colourmaps.packed(name).view(np.uint8).reshape(-1, 4)
    assert got.shape == (257, 4) and not got[:, 3].any()
    assert np.array_equal(got[:, :3], (want * 255).astype(np.uint8))
    x = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    x[0, :3] = (0.0, 1.0, 0.5)
    signed = name == "RdBu_r"
    drawn = colorize(2 * x - 1 if signed else x, signed)
    if signed:  # scaled symmetrically by the map's display scale, as colorize does
        from xaibatch.overlay import display_scale

        x = 0.5 + 0.5 * np.clip((2 * x - 1) / display_scale(2 * x - 1, signed=True), -1, 1)
    assert np.array_equal(drawn, (cmap(x)[..., :3] * 255).astype(np.uint8))


def test_resize_maps_is_what_the_npy_always_held():
    """Bilinear (align_corners=False) for unsigned maps, nearest for signed ones, as before the batch path."""
    m = torch.rand(2, 8, 8)
    up = resize_maps(m, (32, 24), signed=False)
    ref = torch.nn.functional.interpolate(m[:, None], size=(32, 24), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(up, ref)
    nearest = resize_maps(m - 0.5, (16, 16), signed=True)
    assert set(np.unique(nearest.numpy())) <= set(np.unique((m - 0.5).numpy()))
    assert resize_maps(m, (8, 8), signed=False) is not None and torch.equal(resize_maps(m, (8, 8), False), m)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("size", [(400, 1), (1, 400), (3, 3), (80, 120), (20, 10000)])
def test_a_map_shrunk_to_a_small_image_averages_every_pixel_not_a_sample(signed, size):
    """A 224 px map resized to a smaller image kept one input pixel in 75 (a 3x3 icon) or the middle column alone
    (a 1x400 line): a Guided Grad-CAM of a 1x400 image was zero everywhere, a signed pixel map at 120x80 kept 0.3
    of its correlation. A side that shrinks is now the mean of the pixels it covers (the total attribution kept);
    one that grows is interpolated as before. display_map, one map in numpy, is this function."""
    from xaibatch.overlay import display_map

    rng = np.random.default_rng(0)
    m = np.zeros((224, 224), np.float32)
    m[:, 1::2] = 1.0  # evidence in every other column only, as guided gradients come
    if signed:
        m = (rng.standard_normal((224, 224)) * m).astype(np.float32)
    h, w = size
    got = resize_maps(torch.from_numpy(m)[None], size, signed)[0].numpy()
    assert got.shape == size
    small = (min(h, 224), min(w, 224))
    means = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(m)[None, None], small)[0, 0].numpy()
    if small == size:
        np.testing.assert_allclose(got, means, atol=1e-6)
    assert got.mean() == pytest.approx(float(m.mean()), abs=2e-3 if signed else 1e-2)
    assert np.array_equal(display_map(m, (w, h), signed), got)


@pytest.mark.parametrize("shape", [(1, 1, 3), (32, 32, 3), (17, 300, 3), (64, 48, 4)])
def test_encode_png_round_trips(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(a))) as im:
        assert im.format == "PNG"
        assert np.array_equal(np.asarray(im), a)


def test_small_pictures_are_stored_uncompressed_and_larger_ones_compressed():
    """Up to PNG_STORE_MAX_BYTES of rows a PNG's one deflate block is stored (no zlib set-up); above, compressed."""
    import zlib

    from xaibatch.overlay import PNG_STORE_MAX_BYTES

    def idat(png: bytes) -> bytes:
        at = png.index(b"IDAT")
        return png[at + 4 : at + 4 + int.from_bytes(png[at - 4 : at], "big")]

    smooth = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4, 1), np.ones((16, 16, 3), np.uint8))  # 64x64
    for side, stored in ((32, True), (64, False)):
        a = np.ascontiguousarray(smooth[:side, :side])
        assert (side * (3 * side + 1) <= PNG_STORE_MAX_BYTES) == stored
        z = idat(encode_png(a))
        assert (z[2] & 0x06 == 0) == stored  # BTYPE 00: a stored block
        rows = zlib.decompress(z)
        assert len(rows) == side * (3 * side + 1) and (len(z) > len(rows)) == stored
        with Image.open(io.BytesIO(encode_png(a))) as im:
            assert np.array_equal(np.asarray(im), a)


def test_thumbnail_batch_is_pil_within_one_level_and_none_when_small():
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (2, 300, 200, 3), dtype=np.uint8)
    t = thumbnail_batch(torch.from_numpy(big)).numpy()
    for i in range(2):
        ref = np.asarray(thumbnail(Image.fromarray(big[i])))
        assert t[i].shape == ref.shape == (128, 85, 3)
        assert np.abs(t[i].astype(int) - ref).max() <= 1
    assert thumbnail_batch(torch.from_numpy(big[:, :128, :100])) is None  # its own thumbnail


def test_layout_points_small_pictures_at_themselves():
    assert layout.image_thumb("a/b", 32, 32) == layout.image_png("a/b") == "images/a/b.png"
    assert layout.map_thumb("gradcam", "x", 128, 64) == layout.map_png("gradcam", "x")
    assert layout.image_thumb("a", 129, 10) == "thumbs/image/a.png"
    assert layout.map_thumb("lime", "a", 4000, 10) == "thumbs/lime/a.png"  # display 512 wide, then a thumbnail


def test_npy_bytes_equal_np_save():
    for a in (np.ones((3, 5), np.float32), np.arange(12, dtype=np.float32).reshape(4, 3)[:, ::2]):
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        assert npy_bytes(a) == buf.getvalue()


def test_output_dir_writes_atomically_and_reuses_folders(tmp_path):
    with OutputDir(tmp_path, max_open=2) as files:
        for i in range(5):  # more folders than it keeps open
            files.write(f"maps/m{i}/deep/x.npy", npy_bytes(np.full((2, 2), i, np.float32)))
        files.write("maps/m0/deep/x.npy", npy_bytes(np.zeros((3, 3), np.float32)))  # replaced, not appended
        assert len(files._fds) <= 2
    assert np.load(tmp_path / "maps/m0/deep/x.npy").shape == (3, 3)
    assert np.load(tmp_path / "maps/m4/deep/x.npy")[0, 0] == 4
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_output_dir_refuses_paths_and_links_that_leave_the_folder(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "maps")
    with OutputDir(out) as files:
        for rel in ("../x.png", "/etc/x.png", "maps/gradcam/x.npy", "a/../../x.png"):
            with pytest.raises(UsageError):
                files.write(rel, b"data")
    assert list(outside.iterdir()) == []


def test_output_dir_leaves_no_temporary_file_when_a_write_fails(tmp_path, monkeypatch):
    with OutputDir(tmp_path) as files:
        files.write("images/a.png", b"old")

        def full(fd, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(OSError):
            files.write("images/a.png", b"new")
    assert (tmp_path / "images/a.png").read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a.png"]


@pytest.mark.parametrize("signed", [False, True])
def test_a_map_zero_everywhere_is_flagged_and_named_on_the_page(signed):
    """Grad-CAM of a class the model rules out is often zero everywhere: a blank overlay that reads as a broken
    picture. The view flags it (as overlay.views_batch and overlay.view_of compute it) and the page says so."""
    from types import SimpleNamespace

    from xaibatch.overlay import view_of, views_batch
    from xaibatch.report.cards import _scale_view
    from xaibatch.report.model import MethodInfo

    full = torch.zeros(2, 8, 8)
    full[1, 3, 4] = 0.5 if not signed else -0.25  # one value: not zero everywhere
    views = views_batch(full, full, signed)
    assert views[0].get("zero") is True and "zero" not in views[1]
    # a signed map whose one value speaks against the class has no evidence for it: its peak points nowhere
    assert views[0].get("nowhere") is True and views[1].get("nowhere") is signed
    for j in range(2):
        again = view_of(full[j].numpy(), 8, 8, signed)
        assert (again.get("zero"), again.get("nowhere")) == (views[j].get("zero"), views[j].get("nowhere"))
        assert again["scale"] == views[j]["scale"] and again["peak"] == views[j]["peak"]
    info = MethodInfo("m", "Grad-CAM", signed, [], "", "")
    flagged = _scale_view(SimpleNamespace(view=views[0]), info)
    said = (
        "zero everywhere: hiding any one superpixel leaves the probability as it is"
        if signed
        else ("zero everywhere: Grad-CAM finds no evidence")
    )
    assert flagged["zero"] and flagged["weak"].startswith(said)
    assert "zero" not in _scale_view(SimpleNamespace(view=views[1]), info)


def test_overlays_are_huffman_coded_and_display_copies_run_length_coded(tmp_path):
    """write_item encodes a map's overlay and its thumbnail with MAP_PNG_STRATEGY (Huffman coding alone: faster, files
    about 1% larger) and the display copy with PNG_STRATEGY; every file still decodes to its exact pixels."""
    import zlib

    from xaibatch.files import OutputDir
    from xaibatch.overlay import MAP_PNG_STRATEGY, PNG_STRATEGY
    from xaibatch.pipeline.writer import MapPictures, WriteItem, write_item

    rng = np.random.default_rng(3)
    photo = np.kron(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 224 px
    over = overlay_batch(torch.from_numpy(photo)[None], torch.rand(1, 224, 224), False)[0].numpy()
    thumb = thumbnail_batch(torch.from_numpy(over)[None])[0].numpy()
    item = WriteItem(
        "a.png",
        "a",
        224,
        224,
        photo,
        None,
        [MapPictures("gradcam", "h", np.zeros((224, 224), np.float32), over, thumb)],
    )
    write_item(OutputDir(tmp_path), item, None)
    assert MAP_PNG_STRATEGY == zlib.Z_HUFFMAN_ONLY and PNG_STRATEGY == zlib.Z_RLE
    for rel, a, strategy in (
        ("images/a.png", photo, PNG_STRATEGY),
        ("maps/gradcam/a.png", over, MAP_PNG_STRATEGY),
        ("thumbs/gradcam/a.png", thumb, MAP_PNG_STRATEGY),
    ):
        data = (tmp_path / rel).read_bytes()
        assert data == encode_png(a, strategy), rel
        with Image.open(io.BytesIO(data)) as im:
            assert np.array_equal(np.asarray(im), a), rel
    assert encode_png(over, MAP_PNG_STRATEGY) != encode_png(over)  # the strategies do differ here


def test_a_peak_shared_by_a_region_is_its_middle_not_its_top_left_edge():
    """A LIME map's strongest superpixel is a region of equal values: its peak (the pointing game's, the detail
    view's marker) is the region's pixel nearest its centroid, in torch and numpy alike; a map with no evidence
    keeps the first pixel (its "nowhere" flag says the peak means nothing)."""
    from xaibatch.overlay import peak_of, peaks_batch

    m = np.zeros((10, 12), np.float32)
    m[2:6, 3:9] = 0.5  # rows 2-5, columns 3-8: centroid (3.5, 5.5), four pixels at 0.5 from it
    m[7, 1] = 0.2
    flat = torch.from_numpy(np.stack([m, np.zeros_like(m)])).reshape(2, -1)
    got = [divmod(int(p), 12) for p in peaks_batch(flat, 10, 12)]
    assert got == [(3, 5), (0, 0)] and peak_of(m) == (3, 5) and peak_of(np.zeros_like(m)) == (0, 0)
    assert np.unravel_index(np.argmax(m), m.shape) == (2, 3)  # what the first maximum was: the region's corner


# --- Properties over random maps: the run's batched torch path and the numpy path of saved maps agree. ---

_VALUES = st.one_of(
    st.floats(-4, 4, width=32), st.sampled_from([0.0, 0.0, 1.0, 1.0, -1.0, 0.5, 1e-7, float("nan")])
)  # plateaus (LIME's superpixels, Grad-CAM's zeros) and NaN drawn often
_MAPS = st.tuples(st.integers(1, 10), st.integers(1, 10)).flatmap(lambda s: hnp.arrays(np.float32, s, elements=_VALUES))


def _grid_levels(grid: str) -> np.ndarray:
    from xaibatch.overlay import read_grids

    return np.round(read_grids([grid])[0] * 127)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MAPS, st.booleans(), st.integers(1, 40), st.integers(1, 40))
def test_a_maps_view_is_the_same_made_by_a_run_or_read_back(m, signed, width, height):
    """views_batch (a run's, on the device) and view_of (a saved map read back for an older folder) give one map
    the same scale, peak and flags, also for plateaus of equal maxima and NaN pixels; the grids within one level
    of 255 (view_of's cell sums are prefix sums: 0.5 can come out as 0.4999...)."""
    from xaibatch.overlay import draw_batch, view_of, views_batch

    full = torch.from_numpy(m)[None]
    dw, dh = layout.display_size(width, height)
    shown, tops, _ = draw_batch(torch.zeros(1, dh, dw, 3, dtype=torch.uint8), full, signed)
    ours = views_batch(shown, full, signed, tops)[0]
    theirs = view_of(m, width, height, signed)
    assert np.abs(_grid_levels(ours.pop("grid")) - _grid_levels(theirs.pop("grid"))).max() <= 1
    assert ours == theirs
    assert math.isfinite(ours["scale"])


@settings(max_examples=300, deadline=None)
@given(_MAPS, st.booleans())
def test_the_batched_display_scale_and_stretch_are_the_numpy_ones(m, signed):
    from xaibatch.overlay import display_scale, display_scale_batch, stretch, stretch_batch

    m = np.nan_to_num(m)
    assert display_scale(m, signed) == float(display_scale_batch(torch.from_numpy(m)[None], signed)[0])
    np.testing.assert_array_equal(stretch(m), stretch_batch(torch.from_numpy(m)[None])[0].numpy())


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 24),
    st.integers(1, 24),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_a_resized_map_stays_within_its_values_and_a_constant_stays_constant(h, w, big_h, big_w, signed, seed):
    """Each output pixel of resize_maps is a mean or interpolation of the map's: no colour the map never had; a
    shrink by whole factors keeps the map's mean (every pixel counts once)."""
    m = torch.from_numpy(np.random.default_rng(seed).normal(size=(2, h, w)).astype(np.float32))
    r = resize_maps(m, (big_h, big_w), signed)
    assert r.shape == (2, big_h, big_w)
    assert float(r.min()) >= float(m.min()) - 1e-5 and float(r.max()) <= float(m.max()) + 1e-5
    flat = resize_maps(torch.full((1, h, w), 0.375), (big_h, big_w), signed)
    assert torch.allclose(flat, torch.full_like(flat, 0.375), rtol=0, atol=1e-6)  # bilinear: within rounding
    if h % big_h == 0 and w % big_w == 0:
        assert float(r.mean()) == pytest.approx(float(m.mean()), abs=1e-5)


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(1, 1024))
def test_display_size_keeps_at_least_a_pixel_and_at_most_the_side(w, h, side):
    """1 x 10000 and 10000 x 1 images too: never a side of 0, never larger than the image, the longest side
    exactly ``side`` when the image is larger."""
    dw, dh = layout.display_size(w, h, side)
    assert 1 <= dw <= w and 1 <= dh <= h
    assert max(dw, dh) == min(side, max(w, h))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 1200), st.integers(1, 1200))
def test_a_thumbnail_has_the_same_size_from_pil_and_from_the_batch(w, h):
    small = thumbnail(Image.new("RGB", (w, h)))
    assert max(small.size) <= layout.THUMB_SIDE and min(small.size) >= 1
    if max(w, h) > layout.THUMB_SIDE and w * h <= 300_000:
        batch = thumbnail_batch(torch.zeros(1, h, w, 3, dtype=torch.uint8))
        assert tuple(batch.shape[1:3]) == (small.size[1], small.size[0])
    assert layout.has_own_thumbnail(w, h) == (max(layout.display_size(w, h)) > layout.THUMB_SIDE)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda h: st.tuples(
            st.just(h), st.integers(1, 12), st.lists(st.tuples(st.integers(0, h - 1), st.integers(0, 11)), max_size=8)
        )
    )
)
@example((7, 8, [(0, 0), (0, 6), (2, 1), (3, 2), (6, 0)]))  # (2, 1) and (3, 2) equally near the centroid
def test_a_peak_shared_by_scattered_pixels_is_the_same_in_torch_and_numpy(case):
    """Equal maxima anywhere (a LIME map's strongest superpixel, or several): peaks_batch (a run's) picks the pixel
    peak_of (a saved map's) picks, also when two are equally near the centroid (float32 split such ties by its
    rounding: the pointing game scored another pixel than the detail view backfilled)."""
    from xaibatch.overlay import peak_of, peaks_batch

    h, w, tied = case
    m = np.zeros((h, w), np.float32)
    for y, x in tied:
        m[y, x % w] = 1.0
    batch = np.stack([m, m[::-1, ::-1], np.zeros_like(m)])  # a batch: each row its own tie
    got = peaks_batch(torch.from_numpy(batch).reshape(3, -1), h, w).tolist()
    assert [divmod(p, w) for p in got] == [peak_of(a) for a in batch]


@settings(max_examples=200, deadline=None)
@given(_MAPS, st.booleans(), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_a_heatmap_reads_a_non_finite_pixel_as_a_run_does(m, signed, bad):
    """Results.heatmap and Explanations.heatmap (colorize, stretch): a NaN or infinite pixel is read as the run's
    overlays and views read it (NaN as 0, an infinity as the largest finite value). Before, one NaN pixel made a
    signed map's scale NaN and the whole picture black. A NaN column beside a signed map leaves its colours."""
    from xaibatch.overlay import colorize, stretch

    def heatmap(a):
        return colorize(a if signed else stretch(a), signed)

    worse = np.concatenate([m, np.full((m.shape[0], 1), bad, np.float32)], axis=1)
    assert np.array_equal(heatmap(worse), heatmap(np.nan_to_num(worse)))
    if signed and np.isnan(bad):
        assert np.array_equal(heatmap(worse)[:, :-1], heatmap(np.nan_to_num(m)))


@settings(max_examples=200, deadline=None)
@given(_MAPS, st.booleans(), st.integers(0, 255))
def test_an_overlay_pixel_lies_between_the_picture_and_the_maps_colour(m, signed, grey):
    """Each overlay pixel is a blend of the picture's pixel and the map's colour there (the heatmap's,
    colorize): opacity 0.3 to 0.8 for unsigned maps, 0 to 0.7 for signed ones. An unsigned map left unstretched
    (99th percentile at most STRETCH_MIN: sparse, or all negative) took its opacity from the unclipped value:
    a pixel of -3 was drawn white over any picture, one of 5 washed out."""
    from xaibatch.overlay import colorize, overlay_batch, stretch

    m = np.nan_to_num(m)
    pic = np.full((*m.shape, 3), grey, np.uint8)
    over = overlay_batch(torch.from_numpy(pic)[None], torch.from_numpy(m)[None], signed)[0].numpy().astype(int)
    colour = colorize(m if signed else stretch(m), signed).astype(int)
    lo, hi = np.minimum(pic, colour), np.maximum(pic, colour)
    assert np.all(over >= lo - 1) and np.all(over <= hi + 1)
    if not signed:  # at least 0.3 of the colour: never the picture alone where they differ by 4 or more
        assert np.all(np.abs(over - pic) >= np.floor(0.3 * np.abs(colour - pic)) - 1)
