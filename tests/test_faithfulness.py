"""Deletion/insertion (RISE) against a plain per-image reference, and on the demo model against random maps."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import manifest_rows, quiet, run_opts, write_images
from xaibatch.evaluation.faithfulness import BASELINES, FaithConfig, Scorer, fill_image, random_maps
from xaibatch.manifest import Manifest
from xaibatch.methods.chunks import CPU_CHUNK
from xaibatch.pipeline import RunOptions, run
from xaibatch.methods.base import image_seed
from xaibatch.preprocess import Preprocess


def reference_curves(model, x, fill, saliency, target, steps):
    """Petsiuk et al.'s definition, one image at a time: sort pixels by saliency (ties in pixel order), change
    ceil(HW/N) more per step, record the class probability, area by the trapezoid rule over [0, 1]."""
    _, h, w = x.shape
    order = np.argsort(-saliency.ravel(), kind="stable")
    per = math.ceil(h * w / steps)
    curves = {}
    for kind in ("deletion", "insertion"):
        start, end = (x, fill) if kind == "deletion" else (fill, x)
        ys = []
        for i in range(steps + 1):
            img = start.clone().view(3, -1)
            idx = torch.from_numpy(order[: min(h * w, i * per)])
            img[:, idx] = end.reshape(3, -1)[:, idx]
            with torch.no_grad():
                p = torch.softmax(model(img.view(1, 3, h, w)), dim=1)[0, target]
            ys.append(float(p))
        ys = np.array(ys)
        curves[kind] = ((ys[:-1] + ys[1:]) / 2).sum() / steps
    return curves


@pytest.mark.parametrize("baseline,steps,size", [("blur", 20, 16), ("zero", 7, 15), ("mean", 5, 12)])
def test_batched_scores_match_the_per_image_definition(baseline, steps, size):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * size * size, 3)
    ).eval()
    pre = Preprocess(size, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    x = torch.randn(5, 3, size, size)
    maps = torch.rand(5, size, size)
    maps[0] = 0.5  # all ties: pixel order
    targets = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        p = torch.softmax(model(x), 1).gather(1, targets[:, None])[:, 0]
    scorer = Scorer(model, FaithConfig(steps, baseline, chunk=13), pre)
    got = scorer.score(x, targets, p, {"m": maps})["m"]
    fill = fill_image(x, baseline, pre)
    for j in range(5):
        ref = reference_curves(model, x[j], fill[j], maps[j].numpy(), int(targets[j]), steps)
        assert abs(float(got.deletion[j]) - ref["deletion"]) < 1e-4
        assert abs(float(got.insertion[j]) - ref["insertion"]) < 1e-4
    assert scorer.forwards == 5 * (1 + 2 * (steps - 1))


def _scoring_case(size=12, b=6):
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * size * size, 3)
    ).eval()
    pre = Preprocess(size, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    x, maps, targets = torch.randn(b, 3, size, size), torch.rand(b, size, size), torch.arange(b) % 3
    with torch.no_grad():
        p = torch.softmax(model(x), 1).gather(1, targets[:, None])[:, 0]
    return model, pre, x, {"m": maps}, targets, p


class _Fits(torch.nn.Module):
    """``model``, raising torch's out-of-memory error on more than ``most`` images at once (as a GPU does)."""

    def __init__(self, model, most):
        super().__init__()
        self.model, self.most, self.sizes = model, most, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.most:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(x)


def test_scores_do_not_depend_on_the_chunk():
    """The chunk (images per forward: the device's choice by default, or fixed) changes no score."""
    model, pre, x, maps, targets, p = _scoring_case()
    auto = Scorer(model, FaithConfig(5), pre)
    assert auto.chunk_size(x) == CPU_CHUNK  # on the CPU, LIME's measured chunk
    want = auto.score(x, targets, p, maps)["m"]
    for chunk in (1, 7, 10_000):
        got = Scorer(model, FaithConfig(5, chunk=chunk), pre).score(x, targets, p, maps)["m"]
        torch.testing.assert_close(got.deletion_curve, want.deletion_curve, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.insertion_curve, want.insertion_curve, rtol=0, atol=1e-6)


def test_a_chunk_that_runs_out_of_memory_is_made_again_in_halves():
    """A chunk too large for the device's memory is halved until it fits, and the size that fitted is kept, so
    the scores come out as with a chunk that fits from the start (before: the out-of-memory error went to the
    batch's split, which cannot make a fixed chunk smaller, and ended the run at one image)."""
    model, pre, x, maps, targets, p = _scoring_case()
    want = Scorer(model, FaithConfig(5, chunk=5), pre).score(x, targets, p, maps)["m"]
    tight = _Fits(model, most=5)
    scorer = Scorer(tight, FaithConfig(5, chunk=24), pre)
    got = scorer.score(x, targets, p, maps)["m"]
    torch.testing.assert_close(got.deletion_curve, want.deletion_curve, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.insertion_curve, want.insertion_curve, rtol=0, atol=1e-6)
    assert scorer.chunk_size(x) == 3  # the fills' 6 images failed once, then 3 at a time
    assert tight.sizes == [6] + [3] * (2 + 6 * 2 * 4 // 3)  # the fills, then every curve's images in chunks of 3
    assert scorer.forwards == 6 * (1 + 2 * 4)  # every image scored once: no chunk counted twice
    one = Scorer(_Fits(model, most=0), FaithConfig(5, chunk=2), pre)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one image that does not fit: for the batch's split to say
        one.score(x, targets, p, maps)


@pytest.mark.slow
def test_run_scores_equal_the_reference_on_the_maps_a_run_stores(tmp_path):
    """A run's stored scores of Grad-CAM and LIME maps equal the per-image reference computed from
    the stored ``.npy`` maps, the image files read with PIL, the manifest's target class and a mean fill made here.

    The images are at the bundled model's input size, so each ``.npy`` is the map that was scored: an audit that
    compared with the ``.npy`` of 32 px demo images (maps scored at 64 px, stored at 32 px, nearest for signed maps)
    differed by up to 0.26 on LIME (0.03 on Grad-CAM) though the scores were right (docs/methods.md, "Can I trust
    these maps?"). LIME's maps are plateaus (ties in pixel order) with negative values (ranked by signed value)."""
    from PIL import Image

    from helpers import quiet
    from xaibatch.pipeline.prepare import prepare
    from xaibatch.tools.demo import write_demo_data

    write_demo_data(tmp_path / "demo", train_per_class=1, test_per_class=3, seed=0)
    inp, out = tmp_path / "in", tmp_path / "out"
    methods = ["gradcam", "lime"]
    ctx = prepare(RunOptions(input_dir=tmp_path / "demo" / "test", out_dir=out, methods=methods)).ctx
    size = ctx.preprocess.image_size
    mean, std = (torch.tensor(v)[:, None, None] for v in (ctx.preprocess.mean, ctx.preprocess.std))
    for p in sorted((tmp_path / "demo" / "test").rglob("*.png")):
        (inp / p.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR).save(inp / p.parent.name / p.name)
    steps = 8
    opts = {"lime": {"samples": 64}}
    run(run_opts(inp, out, None, methods, faithfulness=FaithConfig(steps, "mean"), method_options=opts), log=quiet)
    m = Manifest(out / "xaibatch.sqlite")
    images, maps = m.images(), m.maps()
    m.close()
    assert len(images) == 6
    got, want = [], []
    for (rel, method), row in sorted(maps.items()):
        saliency = np.load(out / row.npy)
        assert saliency.shape == (size, size)
        pixels = np.asarray(Image.open(inp / rel).convert("RGB"), dtype=np.float32) / 255
        x = (torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std
        fill = x.mean(dim=(1, 2), keepdim=True).expand_as(x)
        ref = reference_curves(ctx.model, x, fill, saliency, images[rel].target, steps)
        got.append((row.deletion, row.insertion))
        want.append((ref["deletion"], ref["insertion"]))
        if method == "lime":
            assert len(np.unique(saliency)) < saliency.size / 20 and saliency.min() < 0 < saliency.max()
    got_a, want_a = np.array(got), np.array(want)
    assert np.abs(got_a - want_a).max() < 1e-5, np.abs(got_a - want_a).max()
    assert np.ptp(want_a[:, 0]) > 0.1  # the curves move: the tolerance is far below what a wrong map changes


def test_blur_fill_is_a_normalized_gaussian():
    x = torch.ones(1, 3, 20, 20)
    pre = Preprocess(20, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert torch.allclose(fill_image(x, "blur", pre), x, atol=1e-6)
    assert torch.allclose(fill_image(x, "zero", pre), torch.zeros_like(x))


def test_a_new_baseline_scores_every_map_again(tmp_path, tiny_ckpt):
    """The fill (--faithfulness-baseline) moves every score: a re-run under another one scores the maps again (at
    the model's input size, from their saved .npy: no map computed, pipeline/rescore.py), not keep the other fill's
    numbers."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3)
    assert run(run_opts(inp, out, tiny_ckpt, faithfulness=FaithConfig(4, "mean")), log=quiet).computed == 3
    before = manifest_rows(out, "SELECT rel, faith_hash FROM maps")
    assert run(run_opts(inp, out, tiny_ckpt, faithfulness=FaithConfig(4, "blur")), log=quiet).computed == 0
    after = dict(manifest_rows(out, "SELECT rel, faith_hash FROM maps"))
    assert all(after[rel] != h for rel, h in before)


def binomial_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["mean"])
def test_gradcam_beats_random_maps_on_fake_images(demo_dir, tmp_path, baseline):
    """On images the bundled model calls FAKE, Grad-CAM deletes faster and inserts faster than a random map.

    Measured (60 FAKE + 60 REAL demo test images): with the mean-colour fill both hold on >= 90% of the FAKE
    calls; with the default blur they do not (a blurred fake stays FAKE: the synthesized patch's colour survives
    the blur, so both curves stay flat), which the README says.
    """
    out = tmp_path / "out"
    cfg = FaithConfig(20, baseline)
    run(
        RunOptions(
            input_dir=demo_dir / "test", out_dir=out, methods=["gradcam"], batch_size=64, workers=0, faithfulness=cfg
        ),
        log=lambda s: None,
    )
    m = Manifest(out / "xaibatch.sqlite")
    images, maps = m.images(), m.maps()
    m.close()
    fakes = sorted(r for r, row in images.items() if row.pred == 0)
    # The random maps' scores, computed the same way (same fill, same steps) for the same images.
    from xaibatch.dataset import ImageDataset, collate
    from xaibatch.pipeline.prepare import prepare

    p = prepare(RunOptions(input_dir=demo_dir / "test", out_dir=out, methods=["gradcam"]))
    found, model, ctx = p.found, p.model, p.ctx
    by_rel = {e.rel: e for e in found.images}
    b = collate([ImageDataset([by_rel[r] for r in fakes], model.input_size)[i] for i in range(len(fakes))])
    x = ctx.preprocess.normalize(b.x)
    targets = torch.zeros(len(fakes), dtype=torch.long)
    with torch.no_grad():
        p = torch.softmax(ctx.model(x), 1)[:, 0]
    rand = Scorer(ctx.model, cfg, ctx.preprocess).score(
        x, targets, p, {"r": random_maps(tuple(x.shape[-2:]), [image_seed(r) for r in fakes], x.device)}
    )["r"]
    gc_del = np.array([maps[(r, "gradcam")].deletion for r in fakes])
    gc_ins = np.array([maps[(r, "gradcam")].insertion for r in fakes])
    lower = int((gc_del < rand.deletion.numpy()).sum())
    higher = int((gc_ins > rand.insertion.numpy()).sum())
    both = int(((gc_del < rand.deletion.numpy()) & (gc_ins > rand.insertion.numpy())).sum())
    n = len(fakes)
    print(f"{baseline}: {n} FAKE calls; Grad-CAM deletion lower on {lower}, insertion higher on {higher}, both {both}")
    assert n >= 40
    assert lower >= 0.9 * n and higher >= 0.9 * n
    # Under "the map is no better than a random one" each comparison is a coin flip.
    assert binomial_tail(lower, n, 0.5) < 1e-5 and binomial_tail(higher, n, 0.5) < 1e-5


@pytest.mark.slow
def test_scores_in_manifest_csv_and_cache(tmp_path, labeled_dir, tiny_ckpt):
    """Enabling scores scores only unscored maps (from their saved .npy: nothing computed); an unchanged re-run
    scores nothing; disabling keeps them."""
    out = tmp_path / "out"
    base = {"input_dir": labeled_dir, "out_dir": out, "methods": ["gradcam"], "checkpoint": tiny_ckpt, "workers": 0}
    r = run(RunOptions(**base), log=lambda s: None)
    assert r.computed == 10
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert "deletion_gradcam" not in header
    cfg = FaithConfig(5, "blur")
    assert run(RunOptions(**base, faithfulness=cfg), log=lambda s: None).computed == 0  # scored from the maps
    assert all(h for (h,) in manifest_rows(out, "SELECT faith_hash FROM maps"))
    assert run(RunOptions(**base, faithfulness=cfg), log=lambda s: None).computed == 0
    assert run(RunOptions(**base), log=lambda s: None).computed == 0  # scores are kept, maps still valid
    assert run(RunOptions(**base, faithfulness=FaithConfig(6, "blur")), log=lambda s: None).computed == 0
    rows = manifest_rows(out, "SELECT deletion, insertion, faith_json FROM maps")
    assert len(rows) == 10 and all(0 <= d <= 1 and 0 <= i <= 1 and f for d, i, f in rows)
    lines = (out / "predictions.csv").read_text().splitlines()
    header = lines[0].split(",")
    # then the model's two columns and the map's path
    assert header[-5:] == ["deletion_gradcam", "insertion_gradcam", "model_hash", "earlier_model", "npy_gradcam"]
    assert all(line.split(",")[-4] for line in lines[1:])  # every image's insertion score
    assert (out / "faithfulness-chance.json").is_file()
    html = (out / "index.html").read_text()
    verdicts = html.split('class="verdicts"')[1]
    assert html.count('<ul class="verdicts"><li class="') == 1 and "over the random map: deletion" in verdicts


def _around(mean: float, n: int = 64, spread: float = 0.05) -> list[float]:
    """``n`` scores with this mean and about this standard deviation (deterministic)."""
    return [mean + spread * ((k % 5) - 2) / 1.414 for k in range(n)]


@pytest.mark.parametrize(
    ("deletion", "insertion", "good", "words"),
    [
        (0.10, 0.90, True, "better than both chance maps"),
        (0.50, 0.40, False, "not clearly better than a chance map on either score"),
        (0.297, 0.703, False, "not clearly better"),  # 0.003 better on both: within the noise, as on the demo data
        (0.25, 0.40, None, "clearly better than chance on deletion, not on insertion"),
        (0.50, 0.80, None, "clearly better than chance on insertion, not on deletion"),
    ],
)
def test_faithfulness_verdict_against_the_better_chance_map(deletion, insertion, good, words):
    """With an older chance file (lists, no per-image keys) the summary compares unpaired: a method's scores
    against the better chance map on each score (lowest deletion, highest insertion), better only beyond two
    standard errors of the difference."""
    from xaibatch.report.trust import faith_verdict

    chance = {
        "random": {"deletion": _around(0.45), "insertion": _around(0.50)},
        "blob": {"deletion": _around(0.30), "insertion": _around(0.70)},
    }
    v = faith_verdict("Grad-CAM", _around(deletion, 200), _around(insertion, 200), chance)
    assert v.good is good and v.text.startswith("Grad-CAM: ") and words in v.text, v.text


def test_old_manifest_gains_the_columns(tmp_path):
    """A schema-1 manifest (no faithfulness columns) opens, is migrated, and keeps its rows."""
    path = tmp_path / "xaibatch.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE maps (rel TEXT NOT NULL, method TEXT NOT NULL, config_hash TEXT NOT NULL, npy TEXT NOT NULL,
            png TEXT NOT NULL, thumb TEXT, info_json TEXT, run_id INTEGER NOT NULL, PRIMARY KEY (rel, method));
        INSERT INTO maps VALUES ('a.png', 'gradcam', 'h', 'maps/gradcam/a.npy', 'maps/gradcam/a.png', NULL, NULL, 1);
    """)
    db.commit()
    db.close()
    m = Manifest(path)
    row = m.maps()[("a.png", "gradcam")]
    m.close()
    assert row.config_hash == "h" and row.deletion is None and row.faith_hash is None


def _report_trust(out) -> dict:
    """The summary page's trust data (chance rows, verdicts) as the report saved it, numbers unrounded."""
    import json

    from xaibatch.layout import REPORT_STATE

    return json.loads((out / REPORT_STATE).read_text())["summary"]["trust"]


def test_chance_sample_and_verdict_do_not_follow_file_names(tmp_path, tiny_ckpt):
    """The same 80 images as class folders (FAKE/ sorts first) and flat with REAL's first (as the audit's repro
    renamed them): the chance maps are scored on the same images, so the chance rows and the verdict are the same.
    Before, they were scored on each folder's first 64 images in path order: two other sets."""
    import json
    import shutil

    from xaibatch.tools import synth

    a = synth.write_classes(tmp_path / "a", 40, seed=1)
    b = tmp_path / "b"
    b.mkdir()
    for cls, prefix in (("REAL", "a_"), ("FAKE", "b_")):
        for f in sorted((a / cls).iterdir()):
            shutil.copyfile(f, b / f"{prefix}{f.name}")
    outs = tmp_path / "oa", tmp_path / "ob"
    for inp, out in zip((a, b), outs):
        run(run_opts(inp, out, tiny_ckpt, faithfulness=FaithConfig(4, "mean")), log=lambda s: None)
    ta, tb = (_report_trust(o) for o in outs)
    assert [row[:2] for row in ta["chance"]] == [["random map", 64], ["centred blob", 64]]
    assert ta["chance"] == tb["chance"]
    assert ta["verdicts"] and ta["verdicts"] == tb["verdicts"]
    # the sample: the same contents in both folders, from both class folders
    sa, sb = (json.loads((o / "faithfulness-chance.json").read_text())["images"] for o in outs)
    assert sorted(s["sha256"] for s in sa.values()) == sorted(s["sha256"] for s in sb.values())
    assert {rel.split("/")[0] for rel in sa} == {"FAKE", "REAL"}


def test_chance_sample_is_kept_topped_up_and_replaces_an_older_file(tmp_path, tiny_ckpt, monkeypatch):
    """The sample is the images whose sha256 sorts first; a re-run scores only the sampled images it lacks, and a
    chance file of an older xaibatch (lists over the first images, no per-image keys) is scored again once, with
    no map recomputed; until then the report reads it and compares unpaired."""
    import hashlib
    import json
    import shutil

    from xaibatch.evaluation import chance
    from xaibatch.report import write_report
    from xaibatch.tools import synth

    monkeypatch.setattr(chance, "CHANCE_SAMPLE", 6)
    inp, out = tmp_path / "in", tmp_path / "out"
    synth.write_images(inp, 10, 32, 3)
    opts = run_opts(inp, out, tiny_ckpt, faithfulness=FaithConfig(4, "mean"))
    lines: list[str] = []

    def shas():
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in inp.iterdir()}

    def smallest():
        return sorted(sorted(shas().items(), key=lambda kv: (kv[1], kv[0]))[:6])

    def entries():
        return json.loads((out / "faithfulness-chance.json").read_text())["images"]

    run(opts, log=lines.append)
    first = entries()
    assert sorted((rel, s["sha256"]) for rel, s in first.items()) == smallest()
    assert any("on 6 sampled image(s)" in line for line in lines)
    lines.clear()
    assert run(opts, log=lines.append).computed == 0 and entries() == first
    assert not any("sampled image" in line for line in lines)

    more = tmp_path / "more"
    synth.write_images(more, 10, 32, 4)
    for f in more.iterdir():
        shutil.copyfile(f, inp / f"new_{f.name}")
    lines.clear()
    assert run(opts, log=lines.append).computed == 10
    now = entries()
    new = [rel for rel, _ in smallest() if rel.startswith("new_")]
    assert sorted((rel, s["sha256"]) for rel, s in now.items()) == smallest()
    assert all(now[rel] == first[rel] for rel in now if rel in first)  # kept, not scored again
    assert [line for line in lines if "sampled image" in line] == (
        [f"xaibatch: scoring a random map and a centred blob on {len(new)} sampled image(s) (the chance line)"]
        if new
        else []
    )

    legacy = {"key": "older", "steps": 4, "baseline": "mean"}
    legacy |= {m: {"deletion": [0.5, 0.6, 0.7], "insertion": [0.4, 0.5, 0.6]} for m in ("random", "blob")}
    (out / "faithfulness-chance.json").write_text(json.dumps(legacy))
    write_report(out)
    t = _report_trust(out)
    assert t["chance"][0][:2] == ["random map", 3] and "older xaibatch" in t["chance_note"]
    assert len(t["verdicts"]) == 1 and "sampled images" not in t["verdicts"][0]["text"]
    lines.clear()
    again = run(opts, log=lines.append)
    assert again.computed == 0 and "model" in again.timings  # the model loads for the chance line alone
    assert entries() == now and any("on 6 sampled image(s)" in line for line in lines)
    t = _report_trust(out)
    assert t["chance"][0][:2] == ["random map", 6] and "content's hash" in t["chance_note"]
    again = run(opts, log=lines.append)
    assert again.computed == 0 and "model" not in again.timings  # then an unchanged re-run loads nothing


def test_paired_verdict_compares_the_same_images():
    """Hand-made scores: chance maps whose per-image scores spread widely, a method a little better on every
    image. Paired (the same images) that is clearly better; compared as two unpaired means it is not, because
    the spread between images swamps the difference. Images only the method has do not count."""
    from xaibatch.report.trust import faith_verdict, paired_verdict

    rels = [f"img_{k:03d}.png" for k in range(64)]
    base = [0.2 + 0.6 * ((k * 7) % 10) / 9 for k in range(64)]  # per image: 0.2 .. 0.8
    chance = {rel: {"random": (d, 1 - d), "blob": (d - 0.01, 1 - d + 0.01)} for rel, d in zip(rels, base, strict=True)}
    method = {rel: (d - 0.03, 1 - d + 0.03) for rel, d in zip(rels, base, strict=True)}
    v = paired_verdict("Grad-CAM", method, chance)
    assert v.good is True and v.text.startswith("Grad-CAM: better than both chance maps"), v.text
    assert "on the 64 sampled images" in v.text
    d, i = [s[0] for s in method.values()], [s[1] for s in method.values()]
    lists = {
        n: {"deletion": [c[n][0] for c in chance.values()], "insertion": [c[n][1] for c in chance.values()]}
        for n in ("random", "blob")
    }
    assert faith_verdict("Grad-CAM", d, i, lists).good is False  # the unpaired comparison misses it

    # better than the random map on every image, but not than the blob: not better than chance
    mixed = {rel: (d - 0.005, 1 - d + 0.03) for rel, d in zip(rels, base, strict=True)}
    v = paired_verdict("Grad-CAM", mixed, chance)
    assert v.good is None and "clearly better than chance on insertion, not on deletion" in v.text, v.text

    # images outside the sample (much worse here) do not move the verdict; noisy differences are no finding
    outside = {f"other_{k}.png": (0.99, 0.01) for k in range(500)}
    assert paired_verdict("Grad-CAM", {**method, **outside}, chance).good is True
    noisy = {rel: (d + (0.2 if k % 2 else -0.26), 1 - d) for k, (rel, d) in enumerate(zip(rels, base, strict=True))}
    v = paired_verdict("Grad-CAM", noisy, chance)
    assert v.good is False and "not clearly better than a chance map on either score" in v.text, v.text
    assert paired_verdict("Grad-CAM", {}, chance).good is False  # no image in common: no finding


def test_paired_verdict_names_the_chance_map_it_does_not_beat_and_gives_the_gains():
    """Measured on 120 demo images (mean fill): Grad-CAM beat the random map by about four standard errors on both
    scores and matched the centred blob; the page said "not clearly better than a chance map on either score",
    which reads as "no better than random". The verdict names the map it does not beat, the one it beats, and
    each mean gain with its two standard errors."""
    from xaibatch.report.trust import paired_verdict

    rels = [f"img_{k:03d}.png" for k in range(64)]
    base = [0.2 + 0.6 * ((k * 7) % 10) / 9 for k in range(64)]
    chance = {rel: {"random": (d + 0.15, 1 - d - 0.15), "blob": (d, 1 - d)} for rel, d in zip(rels, base, strict=True)}
    wobble = [0.02 * ((k % 3) - 1) for k in range(64)]  # around the blob's scores: no finding
    method = {rel: (d + w, 1 - d - w) for rel, d, w in zip(rels, base, wobble, strict=True)}
    v = paired_verdict("Grad-CAM", method, chance)
    assert v.good is False, v.text
    assert v.text.startswith("Grad-CAM: not clearly better than the centred blob on either score"), v.text
    assert "though better than the random map on deletion and insertion" in v.text, v.text
    assert "over the random map: deletion +0.150 ± 0.004, insertion +0.150 ± 0.004" in v.text, v.text
    assert "over the centred blob: deletion +0.000 ± " in v.text, v.text


def test_small_gains_keep_their_digits():
    """A one-logit CNN whose blur fill barely moved its output: "better than both chance maps on deletion and
    insertion (... over the random map: deletion +0.002 ± 0.000, insertion +0.000 ± 0.000 ...)", numbers that
    show neither the gain nor its spread. Standard errors under 0.0005 get the digits that show them."""
    from xaibatch.report.trust import paired_verdict

    rels = [f"img_{k:03d}.png" for k in range(64)]
    base = [0.5 + 0.01 * ((k * 7) % 10) / 9 for k in range(64)]
    chance = {rel: {"random": (d, 1 - d), "blob": (d, 1 - d)} for rel, d in zip(rels, base, strict=True)}
    tiny = [0.0002 + 0.0001 * (k % 3) for k in range(64)]  # gains 0.0002 .. 0.0004: mean 0.000298
    method = {rel: (d - t, 1 - d + t) for rel, d, t in zip(rels, base, tiny, strict=True)}
    v = paired_verdict("Grad-CAM", method, chance)
    assert v.good is True, v.text
    assert "over the random map: deletion +0.000298 ± 0.000021, insertion +0.000298 ± 0.000021" in v.text, v.text
    assert "± 0.000," not in v.text and "± 0.000)" not in v.text


def test_chance_scores_of_another_model_are_not_compared(tmp_path):
    """A run with another checkpoint stopped before it scored the chance line: faithfulness-chance.json still held
    the previous model's scores, and the report compared the new model's maps with them ("clearly better than chance
    on deletion ... +0.338 ± 0.296" where the new model's curves were flat at 0.51 and the old model's at 0.85). The
    chance rows and verdicts are now over images whose model scored them, else left out."""
    from types import SimpleNamespace

    from xaibatch.evaluation import chance as chance_file
    from xaibatch.report.trust import build_trust

    images, maps, sample = {}, {}, {}
    for k in range(8):
        rel = f"img_{k}.png"
        images[rel] = SimpleNamespace(rel=rel, label=0, pred=0, sha256=f"s{k}", target=0, predict_hash="new")
        maps[(rel, "gradcam")] = SimpleNamespace(rel=rel, deletion=0.5, insertion=0.5, faith={}, config_hash="h")
        sample[rel] = chance_file.ChanceScores(f"s{k}", 0, {"random": (0.85, 0.73), "blob": (0.84, 0.78)})
    methods = [SimpleNamespace(name="gradcam", title="Grad-CAM")]
    chance_file.write(tmp_path, chance_file.key(chance_file.settings_key(10, "blur"), "old"), 10, "blur", sample)
    t = build_trust(tmp_path, images, maps, methods, True, None)
    assert t.chance == [] and t.verdicts == [] and t.chance_note == ""
    chance_file.write(tmp_path, chance_file.key(chance_file.settings_key(10, "blur"), "new"), 10, "blur", sample)
    t = build_trust(tmp_path, images, maps, methods, True, None)
    assert [(words, n) for words, n, _d, _i in t.chance] == [("random map", 8), ("centred blob", 8)]
    assert len(t.verdicts) == 1


def test_scores_of_other_settings_are_left_out_of_the_table(tmp_path):
    """A folder scored at 10 steps, then a run with --faithfulness-steps 40 stopped after 64 of 200 images: the table
    said "10 steps" (the chance file's), averaged the 64 images' 40-step scores with the others' 10-step ones, and
    the verdicts compared 40-step scores with 10-step chance maps. Only the last run's settings' scores count now,
    the chance line only at those settings, and the note says how many scores wait for a run."""
    from types import SimpleNamespace

    from xaibatch.evaluation import chance as chance_file
    from xaibatch.report.trust import build_trust

    images, maps, sample = {}, {}, {}
    for k in range(10):
        rel = f"img_{k}.png"
        images[rel] = SimpleNamespace(rel=rel, label=0, pred=0, sha256=f"s{k}", target=0, predict_hash="p")
        new = k < 4  # rescored at 40 steps before the stop
        maps[(rel, "gradcam")] = SimpleNamespace(
            rel=rel,
            deletion=0.2 if new else 0.9,
            insertion=0.8,
            faith={},
            config_hash="h",
            faith_hash="f40" if new else "f10",
        )
        sample[rel] = chance_file.ChanceScores(f"s{k}", 0, {"random": (0.5, 0.5), "blob": (0.5, 0.5)})
    ten = chance_file.settings_key(10, "blur")
    chance_file.write(tmp_path, chance_file.key(ten, "p"), 10, "blur", sample)
    methods = [SimpleNamespace(name="gradcam", title="Grad-CAM")]
    t = build_trust(
        tmp_path, images, maps, methods, True, None, chance_file.settings_key(40, "blur"), {"gradcam": "f40"}
    )
    assert t.faith[0].cells[0] == ("all", 4, 0.2, 0.8)
    assert t.chance_settings.startswith("40 steps, blur fill (the last run's settings; 6 map scores made under other")
    assert t.chance == [] and t.verdicts == []  # the chance maps were scored at 10 steps
    t = build_trust(tmp_path, images, maps, methods, True, None, ten, {"gradcam": "f10"})  # the 10-step run's view
    assert t.faith[0].cells[0][:2] == ("all", 6) and len(t.chance) == 2 and len(t.verdicts) == 1


def test_a_method_the_last_run_left_out_keeps_its_scores_of_the_same_settings(tmp_path):
    """-m gradcam,lime --faithfulness, then -m gradcam --faithfulness: LIME's maps stay in the gallery with scores
    made under the same steps and fill, but the table left them out ("20 map scores made under other settings are
    left out until a run scores them again": no run would, none asks for LIME). A method the last run did not
    compute keeps the scores its own maps got under the last run's settings."""
    from types import SimpleNamespace

    from xaibatch.evaluation import chance as chance_file
    from xaibatch.report.trust import build_trust

    settings, ten = chance_file.settings_key(20, "blur"), chance_file.settings_key(10, "blur")
    images, maps = {}, {}
    for k in range(10):
        rel = f"img_{k}.png"
        images[rel] = SimpleNamespace(rel=rel, label=0, pred=0, sha256=f"s{k}", target=0, predict_hash="p")
        for name, map_hash, faith in (("gradcam", "g", settings), ("lime", "l", settings if k < 6 else ten)):
            maps[(rel, name)] = SimpleNamespace(
                rel=rel,
                deletion=0.3,
                insertion=0.7,
                faith={},
                config_hash=map_hash,
                faith_hash=chance_file.scores_hash(map_hash, faith),
            )
    methods = [SimpleNamespace(name="gradcam", title="Grad-CAM"), SimpleNamespace(name="lime", title="LIME")]
    last_run = {"gradcam": chance_file.scores_hash("g", settings)}  # RunConfig.faithfulness_hashes: -m gradcam
    t = build_trust(tmp_path, images, maps, methods, False, None, settings, last_run)
    assert [(f.method, f.cells[0][1]) for f in t.faith] == [("gradcam", 10), ("lime", 6)]
    assert t.chance_settings.startswith("20 steps, blur fill (the last run's settings; 4 map scores made under other")


def test_the_table_gives_each_methods_means_on_the_chance_rows_images():
    """The chance rows are over the 64 sampled images, a method's rows over all of them: on 120 demo images
    Grad-CAM's mean deletion AUC was 0.627 against the centred blob's 0.694, which reads as clearly better, yet on
    the blob's own 64 images Grad-CAM's mean was 0.679. Each method gets a row over the chance rows' images."""
    from types import SimpleNamespace

    from xaibatch.evaluation.chance import ChanceFile, ChanceScores, key, settings_key
    from xaibatch.report.trust import FaithRow, Trust, _sampled_chance

    rels = [f"img_{k:02d}.png" for k in range(6)]
    images = {rel: SimpleNamespace(sha256=f"s{k}", target=0, predict_hash="p") for k, rel in enumerate(rels)}
    sampled = rels[:3]
    chance = ChanceFile(
        key(settings_key(20, "mean"), "p"),
        20,
        "mean",
        {rel: ChanceScores(f"s{k}", 0, {"random": (0.8, 0.5), "blob": (0.7, 0.6)}) for k, rel in enumerate(sampled)},
    )
    per_image = {rel: ((0.9, 0.4) if rel in sampled else (0.1, 0.9)) for rel in rels}  # good only off the sample
    t = Trust(faith=[FaithRow("gradcam", "Grad-CAM", [("all", 6, 0.5, 0.65)])])
    _sampled_chance(t, chance, images, {"Grad-CAM": per_image})
    cells = t.faith[0].cells
    assert cells[-1][:2] == ("the chance rows' images", 3), cells
    assert cells[-1][2:] == pytest.approx((0.9, 0.4)), cells
    # a sample of every image adds no row: it would repeat the "all" row
    whole = ChanceFile(
        key(settings_key(20, "mean"), "p"),
        20,
        "mean",
        {rel: ChanceScores(f"s{k}", 0, {"random": (0.8, 0.5), "blob": (0.7, 0.6)}) for k, rel in enumerate(rels)},
    )
    t = Trust(faith=[FaithRow("gradcam", "Grad-CAM", [("all", 6, 0.5, 0.65)])])
    _sampled_chance(t, whole, images, {"Grad-CAM": per_image})
    assert [c[0] for c in t.faith[0].cells] == ["all"]


@pytest.mark.parametrize(("fill_p", "warned"), [(0.97, True), (0.40, False)])
def test_the_page_says_when_the_fill_does_not_move_the_model(tmp_path, fill_p, warned):
    """With the default blur fill the demo model's probability moved by 0.026 on average from the image to the
    fill, so every map's curves were flat and the page said only "Grad-CAM: not clearly better than a chance map",
    which blames the maps for what the fill does. The page now says so when the fill barely moves the output."""
    from types import SimpleNamespace

    from xaibatch.report.trust import build_trust

    images, maps = {}, {}
    for k in range(8):
        rel = f"img_{k}.png"
        images[rel] = SimpleNamespace(rel=rel, label=0, pred=0, sha256=f"s{k}", target=0)
        curve = [0.99, 0.98, fill_p]
        maps[(rel, "gradcam")] = SimpleNamespace(
            rel=rel,
            deletion=0.98,
            insertion=0.98,
            faith={"deletion_curve": curve, "insertion_curve": curve[::-1]},
            config_hash="h",
        )
    t = build_trust(tmp_path, images, maps, [SimpleNamespace(name="gradcam", title="Grad-CAM")], True, None)
    assert ("the explained class's probability moves by 0.020 on average" in t.fill_note) is warned, t.fill_note
    assert bool(t.fill_note) is warned


@pytest.mark.parametrize("sanity_passed", [False, True])
def test_a_good_faithfulness_verdict_of_maps_that_fail_the_sanity_check_says_so(tmp_path, sanity_passed):
    """Guided Backprop beat both chance maps on the demo data, a green line, above a sanity check that found its maps
    keep 0.71 rank correlation on a random network. The verdict now says its maps fail the check and is not green."""
    from types import SimpleNamespace

    from xaibatch.evaluation import chance as chance_file
    from xaibatch.evaluation.sanity_file import FILENAME, SanityCurve, SanityResult
    from xaibatch.report.trust import build_trust

    images, maps, sample = {}, {}, {}
    for k in range(16):
        rel = f"img_{k:02d}.png"
        images[rel] = SimpleNamespace(rel=rel, label=0, pred=0, sha256=f"s{k}", target=0, predict_hash="p")
        curve = [0.99, 0.5, 0.01]
        d = 0.2 + 0.01 * (k % 3)
        maps[(rel, "captum:GuidedBackprop")] = SimpleNamespace(
            rel=rel, deletion=d, insertion=1 - d, faith={"deletion_curve": curve}, config_hash="h"
        )
        sample[rel] = chance_file.ChanceScores(f"s{k}", 0, {"random": (0.8, 0.3), "blob": (0.7, 0.4)})
    chance_file.write(tmp_path, chance_file.key(chance_file.settings_key(20, "mean"), "p"), 20, "mean", sample)
    verdict = "captum:GuidedBackprop: passes" if sanity_passed else "captum:GuidedBackprop: FAILS"
    curve = SanityCurve("captum:GuidedBackprop", ["original", "fc"], [1.0, 0.7], [1.0, 0.7], sanity_passed, verdict)
    (tmp_path / FILENAME).write_text(SanityResult([curve], checkpoint_sha256="c", created=1.0).to_json())
    methods = [SimpleNamespace(name="captum:GuidedBackprop", title="GuidedBackprop (captum)")]
    t = build_trust(tmp_path, images, maps, methods, True, "c")
    (v,) = t.verdicts
    assert v.text.startswith("GuidedBackprop (captum): better than both chance maps"), v.text
    flagged = v.text.endswith(
        "but its maps fail the sanity check below, so these scores do not show that they explain the model"
    )
    assert flagged is not sanity_passed, v.text
    assert v.good is (True if sanity_passed else None)


@pytest.mark.parametrize("fill_p", [0.97, 0.01])
def test_a_good_faithfulness_verdict_under_a_fill_that_does_not_move_the_model_says_so(tmp_path, fill_p):
    """On a random-weights ResNet the blur fill moved the class probability by 0.002 on average; the page said these
    scores cannot tell maps apart, and below it, in green, "IntegratedGradients (captum): better than both chance
    maps" by +0.003 of AUC. A good verdict under such a fill now says so and is not green."""
    from types import SimpleNamespace

    from xaibatch.evaluation import chance as chance_file
    from xaibatch.report.trust import build_trust

    images, maps, sample = {}, {}, {}
    for k in range(16):
        rel = f"img_{k:02d}.png"
        images[rel] = SimpleNamespace(rel=rel, label=0, pred=0, sha256=f"s{k}", target=0, predict_hash="p")
        d = 0.2 + 0.01 * (k % 3)
        maps[(rel, "captum:IntegratedGradients")] = SimpleNamespace(
            rel=rel, deletion=d, insertion=1 - d, faith={"deletion_curve": [0.99, 0.5, fill_p]}, config_hash="h"
        )
        sample[rel] = chance_file.ChanceScores(f"s{k}", 0, {"random": (0.8, 0.3), "blob": (0.7, 0.4)})
    chance_file.write(tmp_path, chance_file.key(chance_file.settings_key(20, "blur"), "p"), 20, "blur", sample)
    methods = [SimpleNamespace(name="captum:IntegratedGradients", title="IntegratedGradients (captum)")]
    t = build_trust(tmp_path, images, maps, methods, True, "c")
    (v,) = t.verdicts
    flat = fill_p > 0.9
    assert bool(t.fill_note) is flat
    assert v.text.startswith("IntegratedGradients (captum): better than both chance maps"), v.text
    assert v.text.endswith("so a gain this small does not show that the maps explain it") is flat, v.text
    assert v.good is (None if flat else True)


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(2, 12),
    st.integers(1, 9),
    st.sampled_from(BASELINES),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_scores_of_odd_shapes_ties_and_steps_match_the_definition(h, w, steps, chunk, baseline, seed, nan):
    """Any shape (1 x 6, 6 x 1, 1 x 1), more steps than pixels, maps of three values (ties everywhere) or with a NaN
    pixel, any chunk: the batched scores are the per-image definition's (reference_curves)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.Linear(2 * h * w, 3)).eval()
    pre = Preprocess(max(h, w), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    x = torch.randn(2, 3, h, w, generator=g)
    maps = torch.randint(-1, 2, (2, h, w), generator=g).float()
    if nan:
        maps[0, 0, -1] = float("nan")
    targets = torch.tensor([0, 2])
    with torch.no_grad():
        p = torch.softmax(model(x), 1).gather(1, targets[:, None])[:, 0]
    got = Scorer(model, FaithConfig(steps, baseline, chunk=chunk), pre).score(x, targets, p, {"m": maps})["m"]
    fill = fill_image(x, baseline, pre)
    for j in range(2):
        ref = reference_curves(model, x[j], fill[j], maps[j].numpy(), int(targets[j]), steps)
        assert float(got.deletion[j]) == pytest.approx(ref["deletion"], abs=1e-5)
        assert float(got.insertion[j]) == pytest.approx(ref["insertion"], abs=1e-5)


def test_a_gain_that_rounds_to_zero_has_no_minus_sign():
    """A mean gain of -0.0002 with a spread of 0.001 printed "-0.000 ± 0.001": a sign the digits do not show."""
    from xaibatch.report.trust import _gain

    diffs = [-0.0002 + 0.004 * ((k % 5) - 2) for k in range(40)]
    assert _gain(diffs) == "+0.000 ± 0.002", _gain(diffs)
    assert _gain([0.1, 0.3]) == "+0.200 ± 0.200" and _gain([-0.1, -0.3]) == "-0.200 ± 0.200"
