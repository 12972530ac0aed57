"""LIME: equal to the lime package's regression on the same data, and batched without leaking between images."""

from __future__ import annotations

import functools
import os
import pickle
import time

import numpy as np
import pytest
import sklearn.metrics
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lime.lime_base import LimeBase
from sklearn.linear_model import Ridge
from torch import nn

from _methods_helpers import cpu_ctx, make_batch, make_ctx, random_images
from xaibatch.errors import UsageError
from xaibatch.preprocess import IMAGENET_MEAN as MEAN  # the oracles' own black: (0 - MEAN) / STD
from xaibatch.preprocess import IMAGENET_STD as STD
from xaibatch.model.layers import TargetLayer
from xaibatch.methods import METHODS, create_method
from xaibatch.methods import lime_masks
from xaibatch.methods import chunks
from xaibatch.methods.chunks import CPU_CHUNK
from xaibatch.methods.lime import Lime, _contiguous
from xaibatch.methods.lime_fit import cosine_distances_to_ones, kernel_weights, weighted_ridge
from xaibatch.methods.lime_masks import MASK_DRAW, draw_masks, mask_seed, reference_masks
from xaibatch.methods.segmentation import grid_segments, slic_segments

SIZE = 32


class TinyNet(nn.Module):
    """A fast 10-class CNN: LIME tests need many forwards, not a realistic model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))) * 4  # *4: probabilities that actually move


@pytest.fixture(scope="module")
def ctx():
    return make_ctx(TinyNet().eval(), SIZE)


def lime_batch(ctx, method, images, seeds):
    return make_batch(ctx, images, activations=False, segmenter=method.segmenter(), seeds=seeds)


def lime_kernel(d):
    return np.sqrt(np.exp(-(d**2) / 0.25**2))


def test_registered_with_options_in_config(ctx):
    assert METHODS["lime"] is Lime and Lime.signed and Lime.title == "LIME"
    m = create_method("lime", ctx, samples=64, batch_size=7)
    cfg = m.config()
    assert cfg.pop("segmentation").startswith("slic")  # segmentation settings are part of the hash too
    assert cfg.pop("masks") == MASK_DRAW  # a new mask draw recomputes old maps
    assert cfg == {"samples": 64, "segments": 50, "hide": "mean", "seed": 0}  # batch_size changes nothing
    assert create_method("lime", ctx, batch_size="auto").batch_size is None
    with pytest.raises(UsageError):
        create_method("lime", ctx, smaples=64)
    with pytest.raises(UsageError):
        create_method("lime", ctx, hide="grey")


def test_coefficients_equal_lime_base(ctx):
    """Same masks, probabilities and distances: our batched closed form = lime's Ridge fit, per feature id."""
    m = Lime(ctx, samples=200)
    b = lime_batch(ctx, m, random_images(3, SIZE, seed=1), seeds=[5, 6, 7])
    labels, counts, masks = m.sample(b)
    probs = m.class_probabilities(b, labels, masks)
    explanation = m.explain(b)
    worst_coef = worst_dist = 0.0
    for i in range(3):
        n = int(counts[i])
        data = masks[i, :, :n].numpy().astype(np.float64)
        assert data[0].all()
        ref_d = sklearn.metrics.pairwise_distances(data, data[0:1], metric="cosine").ravel()
        ours_d = cosine_distances_to_ones(masks[i : i + 1], counts[i : i + 1])[0].numpy()
        worst_dist = max(worst_dist, np.abs(ours_d - ref_d).max())
        neighborhood_labels = np.zeros((len(data), 10))
        neighborhood_labels[:, int(b.targets[i])] = probs[i].numpy()
        intercept, exp, score, _ = LimeBase(lime_kernel, verbose=False).explain_instance_with_data(
            data, neighborhood_labels, ref_d, int(b.targets[i]), num_features=n, model_regressor=None
        )
        ref = np.zeros(n)
        for feature, weight in exp:
            ref[feature] = weight
        flat = explanation.maps[i].flatten().double()
        ours = np.array([flat[labels[i] == f][0].item() for f in range(n)])
        assert np.abs(ref).max() > 1e-3  # a test on non-trivial coefficients
        worst_coef = max(worst_coef, np.abs(ours - ref).max() / np.abs(ref).max())
        assert explanation.info[i]["segments"] == n
        assert explanation.info[i]["score"] == pytest.approx(score, abs=1e-6)
        assert explanation.info[i]["intercept"] == pytest.approx(intercept, abs=1e-6)
    print(f"max relative coefficient error {worst_coef:.2e}, max distance error {worst_dist:.2e}")
    assert worst_coef < 1e-4
    assert worst_dist < 1e-12


@settings(max_examples=25, deadline=None)
@given(
    n_features=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_ridge_equals_sklearn_with_padding(n_features, seed):
    """Padded always-off columns change neither the real coefficients nor the distances."""
    rng = np.random.default_rng(seed)
    s, f_max = 40, max(n_features)
    z = torch.zeros(len(n_features), s, f_max, dtype=torch.bool)
    for i, n in enumerate(n_features):
        z[i, :, :n] = torch.from_numpy(rng.integers(0, 2, (s, n)).astype(bool))
        z[i, 0, :n] = True
    y = torch.from_numpy(rng.random((len(n_features), s)))
    d = cosine_distances_to_ones(z, torch.tensor(n_features))
    coef, intercept, _ = weighted_ridge(z, y, kernel_weights(d))
    for i, n in enumerate(n_features):
        data = z[i, :, :n].numpy().astype(np.float64)
        ref_d = sklearn.metrics.pairwise_distances(data, data[0:1], metric="cosine").ravel()
        np.testing.assert_allclose(d[i].numpy(), ref_d, atol=1e-12)
        ref = Ridge(alpha=1, fit_intercept=True).fit(data, y[i].numpy(), sample_weight=lime_kernel(ref_d))
        np.testing.assert_allclose(coef[i, :n].numpy(), ref.coef_, atol=1e-10)
        assert float(intercept[i]) == pytest.approx(ref.intercept_, abs=1e-10)
        assert torch.all(coef[i, n:] == 0)


def test_padding_and_batch_composition_do_not_change_a_map(ctx):
    m = Lime(ctx, samples=64)
    imgs = random_images(2, SIZE, seed=3)
    imgs[1] = np.kron(imgs[1][::8, ::8], np.ones((8, 8, 1), np.uint8))  # 4x4 flat blocks: other segment count
    both = m.explain(lime_batch(ctx, m, imgs, seeds=[1, 2]))
    alone = m.explain(lime_batch(ctx, m, imgs[:1], seeds=[1]))
    swapped = m.explain(lime_batch(ctx, m, imgs[::-1].copy(), seeds=[2, 1]))
    assert both.info[0]["segments"] != both.info[1]["segments"]
    torch.testing.assert_close(both.maps[0], alone.maps[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both.maps[0], swapped.maps[1], rtol=0, atol=1e-6)
    assert both.info[0]["segments"] == alone.info[0]["segments"]


def test_batch_size_does_not_change_maps(ctx):
    """Chunks that split an image's samples, span several images, or hold them all: the same maps."""
    imgs = random_images(3, SIZE, seed=4)
    maps = {}
    for bs in (7, 48, 100, 500, "auto"):
        m = Lime(ctx, samples=48, batch_size=bs)
        maps[bs] = m.explain(lime_batch(ctx, m, imgs, seeds=[1, 2, 3])).maps
    assert Lime(ctx).chunk_size(torch.zeros(1, 3, SIZE, SIZE)) == CPU_CHUNK
    for bs in (48, 100, 500, "auto"):  # model sums may round differently per chunk size
        torch.testing.assert_close(maps[7], maps[bs], rtol=0, atol=1e-6)


def _devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", _devices())
def test_mask_draw_equals_the_plain_reference_bit_for_bit(device):
    """The vectorised int64 draw = the same hash one bit at a time in Python integers, on every device."""
    n_features, samples = [5, 17, 1, 12], 37
    keys = [mask_seed(0, 3), mask_seed(7, 2**40 + 1), 0, 2**63 - 1]
    z = draw_masks(torch.tensor(keys, device=device), torch.tensor(n_features, device=device), samples)
    assert z.device.type == device and z.shape == (4, samples, 17)
    for i, (key, n) in enumerate(zip(keys, n_features)):
        np.testing.assert_array_equal(z[i, :, :n].cpu().numpy(), reference_masks(n, samples, key))
        assert not z[i, :, n:].any()  # padding is always off


def test_masks_are_independent_of_batch_composition_and_uniform(monkeypatch):
    key = mask_seed(0, 42)
    alone = draw_masks(torch.tensor([key]), torch.tensor([30]), 500)[0]
    monkeypatch.setattr(lime_masks, "_DRAW_BLOCK", 100)  # hashed in blocks of 3 rows: the same bits
    assert torch.equal(draw_masks(torch.tensor([key]), torch.tensor([30]), 500)[0], alone)
    mixed = draw_masks(torch.tensor([mask_seed(0, 1), key, mask_seed(1, 42)]), torch.tensor([60, 30, 5]), 500)
    assert torch.equal(mixed[1, :, :30], alone) and not mixed[1, :, 30:].any()
    assert not torch.equal(mixed[0, :, :30], alone) and not torch.equal(mixed[2, :, :5], alone[:, :5])
    assert alone[0].all()  # the image itself first
    rest = alone[1:].double()
    assert abs(rest.mean().item() - 0.5) < 0.01  # 14,970 fair coins: 5 sigma is 0.02
    assert (rest.mean(dim=0) - 0.5).abs().max() < 0.1  # every feature: 499 coins, 4.5 sigma
    corr = torch.corrcoef(rest.T)
    assert (corr - torch.eye(30, dtype=corr.dtype)).abs().max() < 0.25  # features drawn independently
    rows = {tuple(r) for r in alone.tolist()}
    assert len(rows) > 495  # 2**30 possible rows: repeats are rare


def test_contiguous_relabels_like_unique():
    rng = np.random.default_rng(0)
    segs = torch.from_numpy(rng.choice([3, 7, 8, 20, 21], size=(3, 6, 6)))
    segs[1] = torch.from_numpy(rng.integers(-5, 5, size=(6, 6)))
    segs[2, 0, 0] = 10**9  # labels spread wider than the pixels: the per-image fallback
    for batch in (segs[:2], segs):
        labels, counts = _contiguous(batch)
        for i in range(batch.shape[0]):
            uniq, inv = torch.unique(batch[i].flatten(), return_inverse=True)
            assert torch.equal(labels[i], inv) and int(counts[i]) == uniq.numel()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 40), st.integers(-(2**40), 2**40), st.integers(1, 200), st.integers(0, 2**32 - 1)
)
def test_contiguous_relabels_any_labels_like_unique(b, pixels, low, spread, seed):
    """Any label range (negative, far from 0, wider or narrower than the image's pixels, over one row or all of
    the batch): each image's labels become np.unique's inverse, its count the number of distinct labels."""
    segs = np.random.default_rng(seed).integers(low, low + spread, size=(b, pixels))
    labels, counts = _contiguous(torch.from_numpy(segs))
    for i in range(b):
        uniq, inv = np.unique(segs[i], return_inverse=True)
        assert int(counts[i]) == len(uniq) and np.array_equal(labels[i].numpy(), inv)


def test_seeds(ctx):
    imgs = random_images(2, SIZE, seed=5)
    m = Lime(ctx, samples=48)
    first = m.explain(lime_batch(ctx, m, imgs, seeds=[10, 11])).maps
    again = m.explain(lime_batch(ctx, m, imgs, seeds=[10, 11])).maps
    other_image_seed = m.explain(lime_batch(ctx, m, imgs, seeds=[12, 11])).maps
    m2 = Lime(ctx, samples=48, seed=1)
    other_method_seed = m2.explain(lime_batch(ctx, m2, imgs, seeds=[10, 11])).maps
    assert torch.equal(first, again)
    assert not torch.allclose(first[0], other_image_seed[0])
    assert torch.equal(first[1], other_image_seed[1])
    assert not torch.allclose(first, other_method_seed)


def test_missing_segments_are_computed_from_the_input(ctx):
    """Without batch.segments the method segments the de-normalized input: same labels as the workers'."""
    m = Lime(ctx, samples=32)
    imgs = random_images(2, SIZE, seed=6)
    with_segments = m.explain(lime_batch(ctx, m, imgs, seeds=[1, 2]))
    without = m.explain(make_batch(ctx, imgs, activations=False, seeds=[1, 2]))
    assert torch.equal(with_segments.maps, without.maps)


def test_segment_counts_are_sensible_at_every_size():
    for size, low in ((32, 15), (64, 20), (224, 20)):
        for img in random_images(2, size, seed=size):
            labels = slic_segments(img, 50)
            n = int(labels.max()) + 1
            assert low <= n <= 70, (size, n)
            assert set(np.unique(labels)) == set(range(n))  # contiguous 0..F-1
    noise = (np.random.default_rng(0).random((192, 192, 3)) * 255).astype(np.uint8)
    assert int(slic_segments(noise, 50).max()) + 1 >= 12  # SLIC alone collapses noise to 1 segment
    grid = grid_segments(30, 20, 50)
    assert grid.min() == 0 and len(np.unique(grid)) == grid.max() + 1 >= 40


def test_segmenter_pickles_and_count_is_recorded(ctx):
    m = Lime(ctx, samples=16, segments=30)
    fn = pickle.loads(pickle.dumps(m.segmenter()))
    img = random_images(1, SIZE, seed=7)[0]
    labels = fn(img)
    assert labels.shape == (SIZE, SIZE) and labels.dtype == np.int64
    info = m.explain(lime_batch(ctx, m, img[None], seeds=[0])).info
    assert info[0]["segments"] == int(labels.max()) + 1 >= 15


def test_hide_fills(ctx):
    imgs = random_images(1, SIZE, seed=8)
    labels = torch.from_numpy(slic_segments(imgs[0], 50)).view(1, -1)
    b = make_batch(ctx, imgs, activations=False)
    mean_fill = Lime(ctx, hide="mean").fill(b.x, labels, int(labels.max()) + 1)
    for f in range(int(labels.max()) + 1):  # lime's hide_color=None: each superpixel's own mean colour
        inside = (labels[0] == f).view(SIZE, SIZE)
        expected = b.x[0][:, inside].mean(dim=1)
        torch.testing.assert_close(mean_fill[0][:, inside], expected[:, None].expand(-1, int(inside.sum())))
    zero_fill = Lime(ctx, hide="zero").fill(b.x, labels, 1)
    pixels = zero_fill * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.abs().max() < 1e-6  # black
    blur = Lime(ctx, hide="blur").fill(b.x, labels, 1)
    assert blur.shape == b.x.shape and blur.std() < b.x.std()
    m = Lime(ctx, hide="blur", samples=16)
    assert torch.isfinite(m.explain(lime_batch(ctx, m, imgs, seeds=[0])).maps).all()


class QuadrantModel(nn.Module):
    """Class 1's logit is the mean brightness of the top-left quadrant; class 0's is constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // 2, x.shape[3] // 2
        score = x[:, :, :h, :w].mean(dim=(1, 2, 3)) * 3
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_largest_positive_weight_is_in_the_region_the_model_reads():
    model = QuadrantModel()
    ctx = cpu_ctx(model, TargetLayer("none", model, (1, 1)), SIZE)
    m = Lime(ctx, samples=200, hide="zero")
    imgs = np.clip(random_images(1, SIZE, seed=9).astype(int) + 80, 0, 255).astype(np.uint8)  # bright: black hurts
    e = m.explain(make_batch(ctx, imgs, activations=False, segmenter=m.segmenter(), seeds=[0], targets=[1]))
    maps = e.maps[0]
    r, c = divmod(int(maps.argmax()), SIZE)
    assert r < SIZE // 2 and c < SIZE // 2
    assert maps.max() > 0
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[: SIZE // 2, : SIZE // 2] = True
    assert maps[region].mean() > 10 * maps[~region].abs().mean()


def _recording_segmenter(image: np.ndarray, log: str) -> np.ndarray:
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {time.time()}\n")
    return slic_segments(image, 50)


def test_segmentation_runs_in_the_workers_ahead_of_the_model(tmp_path, tiny_ckpt, monkeypatch):
    """The superpixels of later batches are computed in a DataLoader worker while LIME explains the first."""
    from helpers import write_images
    from xaibatch import RunOptions, run

    write_images(tmp_path / "in", 4)
    seg_log, explained = tmp_path / "segments.log", []
    monkeypatch.setattr(Lime, "segmenter", lambda self: functools.partial(_recording_segmenter, log=str(seg_log)))
    real_explain = Lime.explain

    def timed_explain(self, batch):
        start = time.time()
        out = real_explain(self, batch)
        explained.append((start, time.time()))
        return out

    monkeypatch.setattr(Lime, "explain", timed_explain)
    run(
        RunOptions(
            input_dir=tmp_path / "in",
            out_dir=tmp_path / "out",
            methods=["lime"],
            checkpoint=tiny_ckpt,
            batch_size=2,
            workers=1,
            method_options={"lime": {"samples": 400}},
        ),
        log=lambda s: None,
    )
    records = [line.split() for line in seg_log.read_text().splitlines()]
    assert len(records) == 4 and len(explained) == 2
    assert all(int(pid) != os.getpid() for pid, _ in records)  # in the worker, not the main process
    first_end = explained[0][1]
    assert sorted(float(t) for _, t in records)[2] < first_end  # batch 2's segments were ready before batch 1 ended


def test_cuda_chunk_from_free_memory_and_probe_peak(monkeypatch):
    """The arithmetic of the CUDA chunk, with the device's memory figures faked (runs without a GPU)."""
    mib = 2**20
    state = {"free": 0}
    fake = {
        "synchronize": lambda dev=None: None,
        "reset_peak_memory_stats": lambda dev=None: None,
        "memory_allocated": lambda dev=None: 100 * mib,
        "memory_reserved": lambda dev=None: 300 * mib,
        "max_memory_allocated": lambda dev=None: 100 * mib + 16 * 3 * mib,  # probe of 16: 3 MiB per image
        "mem_get_info": lambda dev=None: (state["free"], 80 * 1024 * mib),
    }
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    x = torch.zeros(2, 3, 64, 64)
    per_image = 3 * mib + 3 * 64 * 64 * 4 + 64 * 64
    state["free"] = 1000 * mib  # + 200 MiB idle in the allocator: 600 MiB for chunks
    expected = int(600 * mib // per_image)
    assert chunks.cuda_chunk(nn.Identity(), x) == expected - expected % 64 == 192
    three = int(600 * mib // (3 * mib + 3 * (3 * 64 * 64 * 4 + 64 * 64)))  # faithfulness: 3 copies an image
    assert chunks.cuda_chunk(nn.Identity(), x, copies=3) == three - three % 64 == 128
    state["free"] = 70 * 1024 * mib
    assert chunks.cuda_chunk(nn.Identity(), x) == chunks.MAX_CHUNK
    state["free"] = 0  # next to nothing: still one image per call
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev=None: 100 * mib)
    assert chunks.cuda_chunk(nn.Identity(), x) == 1
