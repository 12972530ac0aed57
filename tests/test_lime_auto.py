"""LIME with ``samples=auto``: rounds of samples until the map is stable, per image, batch-independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from helpers import manifest_rows, run_argv
from _methods_helpers import cpu_ctx, make_batch, make_ctx, random_images
from xaibatch.errors import UsageError
from xaibatch.preprocess import IMAGENET_MEAN as MEAN  # the oracles' own black: (0 - MEAN) / STD
from xaibatch.preprocess import IMAGENET_STD as STD
from xaibatch.methods import create_method
from xaibatch.methods.base import Batch, ModelContext
from xaibatch.methods.lime_auto import AUTO_OPTIONS
from xaibatch.methods.lime_fit import coefficient_noise, weighted_ridge

SIZE, CELL = 32, 8  # a 4x4 grid of 8x8 superpixels
GRID = torch.arange(16).view(4, 4).repeat_interleave(CELL, 0).repeat_interleave(CELL, 1)  # (32, 32) labels
TRUE = torch.linspace(-0.02, 0.025, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(0))]


class LinearInCells(nn.Module):
    """Two classes; P(class 1) = 0.5 + sum_j TRUE[j] * visible_j (+ a deterministic pseudo-noise term).

    A cell is visible when its pixels are not the zero fill (``hide="zero"``: black), so LIME's regression of
    P on the masks has the exact answer TRUE (up to the ridge's shrinkage) when ``noise`` is 0.
    """

    def __init__(self, noise: float = 0.0) -> None:
        super().__init__()
        self.noise = noise
        self.black = ((0.0 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1)
        self.mix = torch.linspace(1.0, 3.0, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shown = ((x - self.black).abs().sum(dim=1, keepdim=True) > 1e-3).float()
        v = nn.functional.avg_pool2d(shown, CELL).flatten(1)  # (B, 16) in {0, 1}
        p = 0.5 + v @ TRUE + self.noise * torch.sin(997.0 * (v @ self.mix))
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def cell_batch(ctx, n: int, seeds: list[int]) -> Batch:
    images = np.full((n, SIZE, SIZE, 3), 200, dtype=np.uint8)
    b = make_batch(ctx, images, activations=False, seeds=seeds, targets=[1] * n)
    b.segments = GRID.expand(n, SIZE, SIZE).clone()
    return b


def cell_coefficients(maps: torch.Tensor) -> torch.Tensor:
    return maps[:, ::CELL, ::CELL].reshape(maps.shape[0], 16).double()


def model_ctx(model: nn.Module) -> ModelContext:
    return cpu_ctx(model.eval(), None, SIZE)  # LIME reads no layer


@pytest.fixture(scope="module")
def linear_ctx():
    return model_ctx(LinearInCells())


@pytest.fixture(scope="module")
def noisy_ctx():
    return model_ctx(LinearInCells(noise=0.02))


def auto(ctx, **kw):
    return create_method("lime", ctx, samples="auto", hide="zero", **kw)


def test_exact_linear_model_stops_at_the_floor_and_converges_to_the_answer(linear_ctx):
    e = auto(linear_ctx, samples_min=200).explain(cell_batch(linear_ctx, 3, seeds=[0, 1, 2]))
    assert [i["samples"] for i in e.info] == [200, 200, 200]  # stable at once, but never before the floor
    assert all(i["noise"] < 0.03 for i in e.info)  # only the ridge's shrinkage (alpha=1) leaves residuals
    spread = TRUE.double().std(unbiased=False)
    coef = cell_coefficients(e.maps)
    for c in coef:
        assert torch.corrcoef(torch.stack([c, TRUE.double()]))[0, 1] > 0.999
        assert torch.equal(c.argsort(), TRUE.argsort())
    err_floor = float(((coef - TRUE.double()).abs() / spread).max())
    assert err_floor < 0.15
    tight = auto(linear_ctx, tolerance=0.002, samples_max=5000).explain(cell_batch(linear_ctx, 3, seeds=[0, 1, 2]))
    assert all(200 < i["samples"] < 5000 for i in tight.info)
    err_tight = float(((cell_coefficients(tight.maps) - TRUE.double()).abs() / spread).max())
    assert err_tight < 0.03 and err_tight < err_floor / 3, (err_floor, err_tight)


def test_noisy_linear_model_converges_to_the_answer(noisy_ctx):
    """With noise, the map's error against the exact answer follows the tolerance; tighter costs more samples."""
    errors, used = [], []
    for tol in (0.3, 0.1, 0.05):
        e = auto(noisy_ctx, tolerance=tol, samples_max=20000).explain(cell_batch(noisy_ctx, 4, seeds=[0, 1, 2, 3]))
        coef = cell_coefficients(e.maps)
        rel = ((coef - TRUE.double()) ** 2).mean(dim=1).sqrt() / TRUE.double().std(unbiased=False)
        assert all(i["noise"] <= tol for i in e.info)
        assert (rel <= 2.5 * tol).all(), (tol, rel)  # the figure is a standard error: 2.5 of it bounds the error
        errors.append(float(rel.mean()))
        used.append(np.mean([i["samples"] for i in e.info]))
    assert errors[0] > errors[2] and used[0] < used[1] < used[2], (errors, used)  # more samples, nearer


@pytest.mark.parametrize("floor,step,ceiling", [(200, 100, 2000), (10, 7, 40), (50, 1000, 60), (30, 5, 30)])
def test_never_stops_before_the_floor_nor_after_the_ceiling(ctx_tiny, floor, step, ceiling):
    seen = []
    for tol in (1e9, 1e-12):  # stops as early, then as late, as it may
        m = create_method(
            "lime", ctx_tiny, samples="auto", samples_min=floor, samples_round=step, samples_max=ceiling, tolerance=tol
        )
        checks = m.checkpoints()
        assert checks[0] == floor and checks[-1] == ceiling and all(a < b for a, b in zip(checks, checks[1:]))
        e = m.explain(
            make_batch(ctx_tiny, random_images(2, SIZE), activations=False, segmenter=m.segmenter(), seeds=[1, 2])
        )
        seen.append([i["samples"] for i in e.info])
    assert seen == [[floor, floor], [ceiling, ceiling]]


@pytest.fixture(scope="module")
def ctx_tiny():
    from test_lime import TinyNet

    return make_ctx(TinyNet().eval(), SIZE)


def test_same_seed_same_map_whatever_the_batch(ctx_tiny):
    """An image's samples and map are the same alone, among others, in any chunking, read ahead or not."""
    imgs = random_images(4, SIZE, seed=5)

    def run(idx, **kw):
        m = create_method("lime", ctx_tiny, samples="auto", samples_max=800, tolerance=0.05, **kw)
        read_ahead = kw.pop("batch_size", None) == 1000
        m.read_ahead = read_ahead
        return m.explain(
            make_batch(ctx_tiny, imgs[idx], activations=False, segmenter=m.segmenter(), seeds=[10 + i for i in idx])
        )

    alone = [run([i]) for i in range(4)]
    used = [a.info[0]["samples"] for a in alone]
    assert len(set(used)) > 1, used  # the images stop at different counts: the test means something
    for kw in ({}, {"batch_size": 37}, {"batch_size": 1000}):
        together = run([3, 1, 0, 2], **kw)
        for k, i in enumerate([3, 1, 0, 2]):
            assert together.info[k]["samples"] == used[i]
            torch.testing.assert_close(together.maps[k], alone[i].maps[0], rtol=1e-4, atol=1e-6)


def test_an_auto_map_is_the_fixed_map_at_its_sample_count(ctx_tiny):
    """Rounds draw the same masks as a fixed run: stopping at S gives the S-sample map."""
    imgs = random_images(2, SIZE, seed=9)
    m = create_method("lime", ctx_tiny, samples="auto", samples_max=600, tolerance=0.06)
    a = m.explain(make_batch(ctx_tiny, imgs, activations=False, segmenter=m.segmenter(), seeds=[3, 4]))
    for k in range(2):
        s = a.info[k]["samples"]
        f = create_method("lime", ctx_tiny, samples=s)
        fixed = f.explain(
            make_batch(ctx_tiny, imgs[k : k + 1], activations=False, segmenter=f.segmenter(), seeds=[3 + k])
        )
        torch.testing.assert_close(a.maps[k], fixed.maps[0], rtol=1e-4, atol=1e-6)
        assert fixed.info[0]["noise"] == pytest.approx(a.info[k]["noise"], abs=1e-4)


def test_stopped_images_leave_the_device_to_the_others(ctx_tiny):
    """Forwards spent = the samples the maps used (no read-ahead on the CPU): a stopped image costs nothing more."""
    imgs = random_images(4, SIZE, seed=5)
    m = create_method("lime", ctx_tiny, samples="auto", samples_max=700, tolerance=0.06)
    b = make_batch(ctx_tiny, imgs, activations=False, segmenter=m.segmenter(), seeds=[10, 11, 12, 13])
    n = [0]
    hook = ctx_tiny.model.register_forward_pre_hook(lambda mod, args: n.__setitem__(0, n[0] + args[0].shape[0]))
    try:
        e = m.explain(b)
    finally:
        hook.remove()
    used = [i["samples"] for i in e.info]
    assert len(set(used)) > 1, used
    assert n[0] == sum(used)


def test_noise_is_the_standard_error_over_the_spread():
    """Against a plain numpy sandwich on one unpadded image, and padding columns change nothing."""
    rng = np.random.default_rng(0)
    s, f = 300, 6
    z = (rng.random((s, f)) < 0.5).astype(float)
    y = z @ rng.normal(size=f) * 0.1 + rng.normal(size=s) * 0.05
    w = rng.random(s) + 0.5
    zt, yt, wt = torch.tensor(z)[None], torch.tensor(y)[None], torch.tensor(w)[None]
    coef, ic, _ = weighted_ridge(zt, yt, wt)
    got = coefficient_noise(zt, yt, wt, coef, ic, torch.tensor([f]))
    zc = z - (w[:, None] * z).sum(0) / w.sum()
    r = y - ic.item() - z @ coef[0].numpy()
    a_inv = np.linalg.inv(zc.T @ (w[:, None] * zc) + np.eye(f))
    g = zc * (w * r)[:, None]
    se = np.sqrt(np.diag(a_inv @ g.T @ g @ a_inv) * s / (s - f - 1))
    want = np.sqrt((se**2).mean()) / coef[0].numpy().std()
    assert got.item() == pytest.approx(want, rel=1e-9)
    zp = torch.cat([zt, torch.zeros(1, s, 3, dtype=zt.dtype)], dim=2)
    cp, icp, _ = weighted_ridge(zp, yt, wt)
    assert coefficient_noise(zp, yt, wt, cp, icp, torch.tensor([f])).item() == pytest.approx(want, rel=1e-9)


def test_options_config_and_estimate(ctx_tiny):
    fixed = create_method("lime", ctx_tiny, samples=1000, samples_max=5000)
    assert not any(k in fixed.config() for k in AUTO_OPTIONS)  # fixed maps keep their hashes
    a = create_method("lime", ctx_tiny, samples="auto")
    cfg = a.config()
    assert cfg["samples"] == "auto"
    assert {k: cfg[k] for k in AUTO_OPTIONS} == {
        "samples_min": 200,
        "samples_max": 2000,
        "samples_round": 100,
        "tolerance": 0.1,
    }
    assert create_method("lime", ctx_tiny, samples="AUTO", samples_max=3000).config()["samples_max"] == 3000
    assert "4 image(s) x 200-2000 samples" in a.estimate(4) and "800 to 8,000 model forwards" in a.estimate(4)
    assert a.estimate(4).endswith("(in chunks of 256)")  # the CPU's chunk (chunks.CPU_CHUNK), not "as many as ..."
    assert create_method("lime", ctx_tiny, batch_size=64).estimate(1).endswith("(in chunks of 64)")
    for bad in (
        {"samples_min": 500, "samples_max": 400},
        {"samples_min": 1},
        {"tolerance": 0},
        {"tolerance": "nan"},
        {"samples_round": 0},
        {"samples_max": "lots"},
    ):
        with pytest.raises(UsageError):
            create_method("lime", ctx_tiny, samples="auto", **bad)
    with pytest.raises(UsageError):
        create_method("lime", ctx_tiny, samples="most")


@pytest.mark.slow
def test_auto_matches_1000_samples_on_stable_demo_images(tmp_path):
    """Bundled model, demo images: where 1000 samples are stable (2000 give the same top 5 and ranks), auto's
    top 5 superpixels and ranking agree with the 1000-sample map (measured: 5 stable images of 12, auto
    stopped at 600-1600)."""
    from xaibatch.model.loading import load_model
    from xaibatch.resources import default_checkpoint
    from xaibatch.tools.demo import write_demo_data
    from PIL import Image

    write_demo_data(tmp_path, train_per_class=1, test_per_class=6, seed=0)
    lm = load_model(default_checkpoint())
    ctx = ModelContext(lm.module.eval(), None, lm.preprocess, torch.device("cpu"))
    files = sorted((tmp_path / "test").rglob("*.png"))
    imgs = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    x = lm.preprocess.normalize(torch.from_numpy(imgs).permute(0, 3, 1, 2))  # as the pipeline normalizes
    with torch.no_grad():
        logits = ctx.model(x)
    m = create_method("lime", ctx, samples="auto")
    segments = torch.from_numpy(np.stack([m.segmenter()(im) for im in imgs])).long()

    def coefficients(**kw):
        e = create_method("lime", ctx, **kw).explain(
            Batch(x, logits.argmax(1), logits, None, segments, list(range(len(files))))
        )
        flat = e.maps.flatten(1)
        return [
            flat[k][[int((segments[k].flatten() == j).nonzero()[0]) for j in range(int(segments[k].max()) + 1)]].numpy()
            for k in range(len(files))
        ], e.info

    def top5(c):
        return set(np.argsort(-c)[:5].tolist())

    ref, _ = coefficients(samples=1000)
    more, _ = coefficients(samples=2000)
    got, info = coefficients(samples="auto")
    stable = [k for k in range(len(files)) if top5(ref[k]) == top5(more[k]) and spearmanr(ref[k], more[k])[0] >= 0.95]
    assert len(stable) >= 3, len(stable)
    for k in stable:
        assert top5(got[k]) == top5(ref[k]), (k, info[k])
        assert spearmanr(got[k], ref[k])[0] >= 0.9, (k, info[k])
    assert sum(info[k]["samples"] < 1000 for k in stable) >= 2  # maps that stopped early agree too


def test_cli_auto_records_samples_and_recomputes_only_when_its_options_change(tmp_path, tiny_ckpt):
    import json

    from click.testing import CliRunner

    from helpers import write_images
    from xaibatch.cli import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3)

    def run(*extra):
        r = CliRunner().invoke(
            cli,
            [
                *run_argv(inp, out, tiny_ckpt),
                "--workers",
                "0",
                "-m",
                "lime",
                "--lime-segments",
                "8",
                *extra,
            ],
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.output
        rows = [json.loads(i) for (i,) in manifest_rows(out, "SELECT info_json FROM maps ORDER BY rel")]
        return r.output, rows

    text, rows = run("--lime-samples", "auto", "--lime-samples-max", "300")
    assert "3 image(s) x 200-300 samples" in text
    assert all(i["samples"] in (200, 300) and i["noise"] is not None for i in rows)
    n = sorted(i["samples"] for i in rows)
    index = (out / "index.html").read_text()
    assert (
        f"per image, over 3 map(s): mean {round(sum(n) / 3)}, median {n[1]}, min {n[0]}, max {n[2]}; median noise"
    ) in index
    detail = next((out / "detail").rglob("*.js")).read_text()  # the detail view's data file
    assert "samples" in detail and "noise" in detail and "standard error" in detail
    assert "0 computed" in run("--lime-samples", "auto", "--lime-samples-max", "300")[0]
    assert "3 computed" in run("--lime-samples", "auto", "--lime-samples-max", "400")[0]
    assert "3 computed" in run("--lime-samples", "50", "--lime-samples-max", "400")[0]
    assert "0 computed" in run("--lime-samples", "50", "--lime-samples-max", "900")[0]  # the ceiling is auto's only
    for bad in ("5", "lots", "-3"):
        r = CliRunner().invoke(cli, ["run", str(inp), "--out", str(out), "-m", "lime", "--lime-samples", bad])
        assert r.exit_code == 2 and "--lime-samples" in r.output and "Traceback" not in r.output


def test_summary_distribution_of_samples():
    from xaibatch.manifest import MapRow
    from xaibatch.report.data import lime_samples

    def row(method, info):
        return MapRow("a.png", method, "h", "a.npy", "a.png", None, info, 1)

    assert lime_samples({("a", "gradcam"): row("gradcam", None)}) is None
    maps = {
        (str(k), "lime"): row("lime", {"samples": s, "noise": nz})
        for k, (s, nz) in enumerate([(200, 0.05), (300, 0.09), (1000, None), (200, 0.1)])
    }
    maps[("x", "lime")] = row("lime", {"segments": 40})  # a map from before samples were recorded
    assert lime_samples(maps) == {"maps": 4, "mean": 425, "min": 200, "max": 1000, "median": 250, "noise": "0.090"}
