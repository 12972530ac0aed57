"""pytorch-grad-cam's and captum's methods through xaibatch's batches, manifest, incremental runs and report."""

from __future__ import annotations

import html
import importlib
import re
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import make_checkpoint, quiet, run_opts
from xaibatch.cli import cli
from xaibatch.errors import ModelError, UsageError
from xaibatch.manifest import FILENAME, Manifest
from xaibatch.methods import FAMILIES, METHODS, cam_library, create_method, list_methods, method_class
from xaibatch.method_specs import collect_method_options, parse_method_option, parse_value
from xaibatch.methods.base import check_options
from xaibatch.pipeline import run

from _methods_helpers import make_batch, make_ctx, model_state, random_images, tiny_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: oversubscription makes tiny convolutions slower
    yield
    torch.set_num_threads(threads)


def _maps(out: Path) -> dict:
    m = Manifest(out / FILENAME)
    try:
        return m.maps()
    finally:
        m.close()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ------------------------------------------------------------------------------------------ registry, options


def test_registry_lists_library_methods_without_importing_them():
    code = (
        "import sys, xaibatch.methods as m; names = [r.name for r in m.list_methods()]; "
        "assert 'cam:scorecam' in names and 'captum:IntegratedGradients' in names, names; "
        "bad = [k for k in ('captum', 'pytorch_grad_cam') if k in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_listed_method_resolves_and_has_metadata():
    rows = list_methods()
    for r in rows:
        assert r.library in ("xaibatch", "pytorch-grad-cam", "captum") and r.batching and r.summary, r
    for name in METHODS:
        assert method_class(name).name == name
    nt = method_class("captum:NoiseTunnel.IntegratedGradients")
    assert nt.name == "captum:NoiseTunnel.IntegratedGradients" and {"nt_samples", "n_steps"} <= set(nt.defaults)
    assert len(FAMILIES) == 1 and any(r.name.startswith("captum:NoiseTunnel.<") for r in rows)


def test_unknown_name_lists_close_matches():
    with pytest.raises(UsageError, match=r"did you mean cam:scorecam"):
        method_class("cam:scorcam")
    with pytest.raises(UsageError, match=r"captum:IntegratedGradients"):
        method_class("captum:integratedgradients")
    with pytest.raises(UsageError, match=r"unknown method"):
        method_class("captum:NoiseTunnel.Occlusion")  # not a wrappable method


def method_options(pairs: list[str], methods: list[str]) -> dict:
    """--method-option checked against the registry's classes (the CLI checks the same names without torch)."""
    return collect_method_options(pairs, methods, lambda name, opts: check_options(method_class(name), opts))


def test_option_values_and_syntax():
    assert [parse_value(v) for v in ("32", "0.5", "true", "False", "nearest")] == [32, 0.5, True, False, "nearest"]
    assert parse_method_option("captum:NoiseTunnel.Saliency.nt_samples=8") == (
        "captum:NoiseTunnel.Saliency",
        "nt_samples",
        8,
    )
    assert method_options(["cam:scorecam.batch_size=8", "cam:scorecam.aug_smooth=true"], ["cam:scorecam"]) == {
        "cam:scorecam": {"batch_size": 8, "aug_smooth": True}
    }
    for bad in ("cam:scorecam", "batch_size=3", "cam:scorecam.=3"):
        with pytest.raises(UsageError, match="METHOD.OPTION=VALUE"):
            parse_method_option(bad)
    with pytest.raises(UsageError, match=r"unknown option n_step \(it takes: .*n_steps"):
        method_options(["captum:IntegratedGradients.n_step=3"], ["captum:IntegratedGradients"])
    with pytest.raises(UsageError, match="not among this run's methods"):
        method_options(["cam:scorecam.batch_size=8"], ["gradcam"])


def test_adapters_match_the_libraries_and_leave_the_model_clean():
    """cam:hirescam is pytorch-grad-cam's HiResCAM; captum:IntegratedGradients sums captum's IG over channels."""
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_model("test_resnet", num_classes=3)
    ctx = make_ctx(model, 32)
    before = model_state(model)
    batch = make_batch(ctx, random_images(3, 32, seed=4), activations=False)
    cam = create_method("cam:hirescam", ctx).explain(batch).maps.numpy()
    ig = create_method("captum:IntegratedGradients", ctx, n_steps=8).explain(batch)
    assert model_state(model) == before and all(p.grad is None for p in model.parameters())
    with HiResCAM(model, [ctx.layer.module]) as lib:
        ref = lib(input_tensor=batch.x, targets=[ClassifierOutputTarget(int(t)) for t in batch.targets])
    model.zero_grad(set_to_none=True)
    assert cam.shape == ref.shape == (3, 32, 32) and np.abs(cam - ref).max() < 1e-5
    ref_ig = (
        IntegratedGradients(model).attribute(batch.x.clone(), target=batch.targets, n_steps=8).detach().float().sum(1)
    )
    assert torch.allclose(ig.maps, ref_ig, rtol=1e-4, atol=1e-7)
    assert ig.info[0]["total"] == pytest.approx(float(ref_ig[0].sum()), rel=1e-4, abs=1e-6)


def test_integrated_gradients_goes_through_the_model_in_chunks_by_default(monkeypatch):
    """captum's IntegratedGradients sends n_steps x the batch through the model at once unless told otherwise: at
    224 px a CPU batch of 32 was 1,600 images of resnet50 activations and gradients, and the kernel killed the run at
    22 GB. By default (internal_batch_size=0) the steps go IG_CHUNK_PIXELS at a time, with the same attributions."""
    from captum.attr import IntegratedGradients

    from xaibatch.methods import captum_library

    assert captum_library.internal_batch(32, 224 * 224) == 32  # 32 images of 224 px a chunk
    assert captum_library.internal_batch(32, 32 * 32) == 1568  # a CIFAKE batch's 1,600 images: two chunks
    assert captum_library.internal_batch(128, 512 * 512) == 128  # never below the batch (captum's minimum)
    model = tiny_model("test_resnet", num_classes=3)
    ctx = make_ctx(model, 32)
    batch = make_batch(ctx, random_images(3, 32, seed=4), activations=False)
    monkeypatch.setattr(captum_library, "IG_CHUNK_PIXELS", 6 * 32 * 32)  # 6 images a chunk: 4 chunks of 24 here
    seen = []
    real = IntegratedGradients.attribute

    def spy(self, *a, **kw):
        seen.append(kw.get("internal_batch_size"))
        return real(self, *a, **kw)

    monkeypatch.setattr(IntegratedGradients, "attribute", spy)
    ig = create_method("captum:IntegratedGradients", ctx, n_steps=8).explain(batch)
    assert seen[-1] == 6
    ref = real(IntegratedGradients(model), batch.x.clone(), target=batch.targets, n_steps=8).detach().float().sum(1)
    assert torch.allclose(ig.maps, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["cam:gradcam", "cam:gradcam++", "cam:hirescam", "cam:layercam"])
def test_gradient_cams_run_on_a_model_frozen_for_inference(name):
    """A model whose parameters all have requires_grad=False (a common step before inference) failed every
    gradient CAM: "element 0 of tensors does not require grad". Its maps are now the unfrozen model's."""
    model = tiny_model("test_resnet", num_classes=3)
    ctx = make_ctx(model, 32)
    batch = make_batch(ctx, random_images(3, 32, seed=4), activations=False)
    want = create_method(name, ctx).explain(batch).maps
    for p in model.parameters():
        p.requires_grad_(False)
    got = create_method(name, ctx).explain(batch).maps
    assert torch.allclose(got, want, atol=1e-6) and float(want.abs().max()) > 0
    assert not any(p.requires_grad for p in model.parameters())  # left as it came
    assert not batch.x.requires_grad


def test_random_methods_do_not_depend_on_the_batch():
    model = tiny_model("test_resnet", num_classes=2)
    ctx = make_ctx(model, 32)
    images = random_images(3, 32, seed=5)
    m = create_method("captum:NoiseTunnel.Saliency", ctx, nt_samples=3, seed=1)
    whole = m.explain(make_batch(ctx, images, activations=False, seeds=[7, 8, 9])).maps
    alone = m.explain(make_batch(ctx, images[1:2], activations=False, seeds=[8])).maps
    assert torch.allclose(whole[1], alone[0], atol=1e-6)
    other = create_method("captum:NoiseTunnel.Saliency", ctx, nt_samples=3, seed=2)
    assert not torch.allclose(other.explain(make_batch(ctx, images[1:2], activations=False, seeds=[8])).maps, alone)


def test_method_that_cannot_run_on_the_model_fails_at_construction():
    model = tiny_model("test_vit", num_classes=2, img_size=32)
    ctx = make_ctx(model, 32)
    with pytest.raises(ModelError, match="captum:GuidedGradCam needs a convolutional"):
        create_method("captum:GuidedGradCam", ctx)
    with pytest.raises(ModelError, match="cam:ablationcam cannot run on a token model"):
        create_method("cam:ablationcam", ctx)
    with pytest.raises(UsageError, match="reduce must be one of"):
        create_method("captum:Saliency", make_ctx(tiny_model("test_resnet", num_classes=2), 32), reduce="median")


# ------------------------------------------------------------------------------------------ through the pipeline


def _layer_cam_minima(inp: Path, rels: list[str]) -> dict[str, float]:
    """captum's raw LayerGradCam minimum at the layer's resolution per image, on exactly the pipeline's input."""
    from captum.attr import LayerGradCam

    from xaibatch.dataset import ImageDataset
    from xaibatch.scan import scan
    from xaibatch.model.layers import find_target_layer
    from xaibatch.model.loading import load_model
    from xaibatch.resources import default_checkpoint

    lm = load_model(default_checkpoint())
    model = lm.module.eval()
    layer = find_target_layer(model, lm.input_size)
    entries = {e.rel: e for e in scan(inp, None).images}
    ds = ImageDataset([entries[r] for r in rels], lm.input_size, None)
    x = lm.preprocess.normalize(torch.stack([ds[i].x for i in range(len(rels))]))
    with torch.no_grad():
        targets = model(x).argmax(1)
    raw = LayerGradCam(model, layer.module).attribute(x, target=targets, relu_attributions=True).detach()
    return {r: float(raw[i].min()) for i, r in enumerate(rels)}


@pytest.mark.slow
def test_native_and_library_maps_are_equal_through_the_pipeline(tmp_path):
    """gradcam vs cam:gradcam and guided-gradcam vs captum:GuidedGradCam: a standing cross-check of our code.

    Bundled model, demo images. Grad-CAM: equal on every image. Guided Grad-CAM: the native method multiplies
    guided backprop by the *min-max scaled* Grad-CAM (pytorch-grad-cam's convention), captum by the raw one
    (guided_gradcam.py's docstring); the two are the same map exactly when the layer's Grad-CAM reaches 0 on the
    image, and differ by an offset term otherwise. So: corr >= 0.99 where the minimum is 0 (most images), and
    still >= 0.85 where it is not.
    """
    from xaibatch.tools.demo import write_demo_data

    write_demo_data(tmp_path / "demo", train_per_class=1, test_per_class=5, seed=0)
    inp, out = tmp_path / "demo" / "test", tmp_path / "out"
    methods = ["gradcam", "cam:gradcam", "guided-gradcam", "captum:GuidedGradCam"]
    res = run(
        run_opts(inp, out, None, methods, method_options={"captum:GuidedGradCam": {"interpolate_mode": "bilinear"}}),
        log=quiet,
    )
    assert res.computed == 10 and not res.failed
    rows = _maps(out)
    rels = sorted({rel for rel, _m in rows})
    minima = _layer_cam_minima(inp, rels)
    same_definition = [r for r in rels if minima[r] == 0.0]
    assert len(same_definition) >= len(rels) // 2, minima
    for native, library in (("gradcam", "cam:gradcam"), ("guided-gradcam", "captum:GuidedGradCam")):
        for rel in rels:
            a = np.load(out / rows[(rel, native)].npy)
            b = np.load(out / rows[(rel, library)].npy)
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            floor = 0.99 if native == "gradcam" or rel in same_definition else 0.85
            assert _corr(a, b) >= floor, (native, rel, _corr(a, b), minima[rel])


LIBRARY_SIX = [
    "cam:gradcam++",
    "cam:scorecam",
    "cam:eigencam",
    "captum:IntegratedGradients",
    "captum:Occlusion",
    "captum:NoiseTunnel.Saliency",
]


@pytest.mark.slow
def test_six_library_methods_end_to_end_on_demo_data_with_the_bundled_model(tmp_path):
    from xaibatch.tools.demo import write_demo_data

    write_demo_data(tmp_path / "demo", train_per_class=1, test_per_class=2, seed=0)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(tmp_path / "demo" / "test"),
            "--out",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "4",
            "-q",
            *[a for m in LIBRARY_SIX for a in ("-m", m)],
            "--method-option",
            "captum:IntegratedGradients.n_steps=8",
            "--method-option",
            "captum:NoiseTunnel.Saliency.nt_samples=3",
            "--method-option",
            "cam:scorecam.batch_size=64",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = _maps(out)
    m = Manifest(out / FILENAME)
    try:
        images = m.images()
        config = json.loads(m.runs()[-1].config_json)
    finally:
        m.close()
    assert len(images) == 4
    signed = {name: config["methods"][name]["signed"] for name in LIBRARY_SIX}
    assert signed == {
        "cam:gradcam++": False,
        "cam:scorecam": False,
        "cam:eigencam": False,
        "captum:IntegratedGradients": True,
        "captum:Occlusion": True,
        "captum:NoiseTunnel.Saliency": False,
    }
    assert config["methods"]["captum:IntegratedGradients"]["config"]["n_steps"] == 8
    gallery = "".join(p.read_text() for p in (out / "gallery").glob("*.html"))
    for rel, img in images.items():
        for name in LIBRARY_SIX:
            row = rows[(rel, name)]
            for f in (row.npy, row.png, row.thumb):
                assert (out / f).is_file(), f
            a = np.load(out / row.npy)
            assert a.dtype == np.float32 and a.shape == (img.height, img.width) and np.isfinite(a).all()
            assert a.std() > 0, (rel, name)  # not a flat map
            if not signed[name]:
                assert a.min() >= -1e-6 and a.max() <= 1 + 1e-6
            detail = "".join(p.read_text() for p in (out / "detail").glob("page-*.js"))  # the detail views' data
            assert row.png in detail or row.png.replace(":", "%3A").replace("+", "%2B") in detail
    for name in LIBRARY_SIX:
        thumbs = re.findall(rf'<img [^>]*data-method="{re.escape(name)}"', gallery)  # (signed maps also print a scale)
        assert len(thumbs) == len(images), name
    index = (out / "index.html").read_text()
    for name in LIBRARY_SIX:
        assert html.escape(method_class(name).title) in index


@pytest.mark.slow
def test_rerun_caches_library_methods_and_an_option_change_recomputes_only_that_method(tmp_path, flat_dir, tiny_ckpt):
    out = tmp_path / "out"
    methods = ["cam:eigencam", "captum:Saliency"]
    first = run(run_opts(flat_dir, out, tiny_ckpt, methods), log=quiet)
    assert first.computed == 6
    before = _maps(out)
    again = run(run_opts(flat_dir, out, tiny_ckpt, methods), log=quiet)
    assert again.computed == 0 and again.unchanged == 6
    assert _maps(out) == before
    changed = run(
        run_opts(flat_dir, out, tiny_ckpt, methods, method_options={"captum:Saliency": {"reduce": "sum"}}), log=quiet
    )
    assert changed.computed == 6
    after = _maps(out)
    for (rel, name), row in after.items():
        if name == "cam:eigencam":
            assert row == before[(rel, name)]  # same hash, same run: not recomputed
        else:
            assert row.run_id == changed.run_id and row.config_hash != before[(rel, name)].config_hash


def test_cli_errors_exit_2_before_any_image(tmp_path, flat_dir, tiny_ckpt):
    out = tmp_path / "out"
    base = ["run", str(flat_dir), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0"]
    cases = [
        (["-m", "cam:gradcam+"], "did you mean cam:gradcam"),
        (["-m", "cam:scorecam", "--method-option", "cam:scorecam.batchsize=8"], "unknown option batchsize"),
        (["-m", "gradcam", "--method-option", "cam:scorecam.batch_size=8"], "add -m cam:scorecam"),
        (["-m", "cam:scorecam", "--method-option", "cam:scorecam.batch_size=many"], "batch_size must be an integer"),
    ]
    for args, expected in cases:
        r = CliRunner().invoke(cli, base + args)
        assert r.exit_code == 2, (args, r.output)
        assert expected in r.output and "Traceback" not in r.output
        assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1
        assert not (out / "maps").exists()  # no image was processed


def test_cli_library_method_that_cannot_run_on_the_model_exits_2(tmp_path, flat_dir):
    ckpt = make_checkpoint(tmp_path / "vit.pt", arch="test_vit", size=32, img_size=32)
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(flat_dir),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "0",
            "-m",
            "captum:GuidedGradCam",
        ],
    )
    assert r.exit_code == 2, r.output
    assert "needs a convolutional" in r.output and not (tmp_path / "o" / "maps").exists()


def test_methods_command_lists_everything():
    r = CliRunner().invoke(cli, ["methods"])
    assert r.exit_code == 0, r.output
    for row in list_methods():
        assert row.name in r.output
    assert "cam:scorecam\n    Score-CAM (pytorch-grad-cam); pytorch-grad-cam; per image" in r.output
    assert "batch_size=16" in r.output and "n_steps=50" in r.output


@pytest.mark.slow
def test_bench_takes_a_library_method():
    r = CliRunner().invoke(
        cli,
        [
            "bench",
            "--arch",
            "test_resnet",
            "--image-size",
            "32",
            "--images",
            "4",
            "--batch-size",
            "4",
            "--repeats",
            "1",
            "--workers",
            "0",
            "--quiet",
            "--only",
            "cam:scorecam",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "cam:scorecam  xaibatch end to end" in r.output and "methods alone, tensors in memory" in r.output


def test_gradient_shap_is_reproducible_and_leaves_numpy_alone():
    # captum's GradientShap draws its points on the baseline-input line with np.random, which torch.manual_seed
    # does not seed: with a black baseline (not a pure rescaling of the input) two runs gave different maps.
    model = tiny_model("test_resnet", num_classes=2)
    ctx = make_ctx(model, 32)
    images = random_images(2, 32, seed=5)
    m = create_method("captum:GradientShap", ctx, seed=1, baseline="black")
    first = m.explain(make_batch(ctx, images, activations=False, seeds=[7, 8])).maps
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    again = m.explain(make_batch(ctx, images, activations=False, seeds=[7, 8])).maps
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's numpy generator as it was
    assert torch.equal(first, again)


@pytest.mark.parametrize("name", ["cam:scorecam", "cam:ablationcam"])
def test_score_and_ablation_cam_go_image_by_image(name, monkeypatch):
    """pytorch-grad-cam's Score-CAM masks a whole batch at once, B x C copies of the input before its per-image
    loop: 10 photos at 224 px with timm's resnet18 (512 channels) peaked at 7.7 GB, a batch of 32 needs 9.9 GB
    more, and the batch said nothing of its progress for minutes nor saw a Ctrl-C. Now the library gets one image
    at a time (the maps are the batch's), each reported to the progress line, and a stop ends the batch there."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xaibatch.methods import StopRequested

    model = tiny_model("test_resnet", num_classes=3)
    ctx = make_ctx(model, 32)
    batch = make_batch(ctx, random_images(3, 32, seed=4), activations=False)
    lib = ScoreCAM if name == "cam:scorecam" else AblationCAM
    seen, shares = [], []
    real = lib.forward
    monkeypatch.setattr(
        lib,
        "forward",
        lambda self, input_tensor, *a, **k: (seen.append(len(input_tensor)), real(self, input_tensor, *a, **k))[1],
    )
    batch.on_progress = lambda d, t: shares.append((d, t))
    method = create_method(name, ctx)
    seen.clear()  # the probe at construction
    maps = method.explain(batch).maps.numpy()
    assert seen == [1, 1, 1] and shares == [(1, 3), (2, 3), (3, 3)]
    cam = lib(model, [ctx.layer.module])
    cam.batch_size = 16 if name == "cam:scorecam" else 32
    # the library's own bars silenced as a run silences them: tqdm's monitor thread would outlive this test, and
    # the report tests after it fork only in a process without other threads
    with cam_library._quiet_progress(importlib.import_module(lib.__module__)):
        ref = cam(input_tensor=batch.x, targets=[ClassifierOutputTarget(int(t)) for t in batch.targets])
    cam.activations_and_grads.release()
    assert maps.shape == ref.shape == (3, 32, 32) and np.abs(maps - ref).max() < 1e-5
    batch.should_stop = lambda: True
    seen.clear()
    with pytest.raises(StopRequested):
        method.explain(batch)
    assert seen == [1]


def test_a_method_added_or_changed_says_which_maps_it_computes(tmp_path, flat_dir, tiny_ckpt):
    """A cron user's run of several methods, one added or one's option changed: the summary said "6 computed"
    like the first run's, whether one method's maps or all of them were made. The plan says which, per method in
    the order of -m: a line when only some are due, and the plan event's ``maps``."""
    out = tmp_path / "out"
    lines, events = [], []
    run(run_opts(flat_dir, out, tiny_ckpt, ["gradcam", "cam:eigencam"]), log=lines.append)
    assert not any("maps to compute" in line for line in lines)  # all of them: "6 computed" says it
    events.clear()
    more = ["gradcam", "captum:Saliency", "cam:eigencam"]
    assert run(run_opts(flat_dir, out, tiny_ckpt, more, on_event=events.append), log=lines.append).computed == 6
    assert [e["maps"] for e in events if e["event"] == "plan"] == [{"captum:Saliency": 6}]
    assert not any("maps to compute" in line for line in lines)  # --log-json: the event says it
    run(
        run_opts(flat_dir, out, tiny_ckpt, ["gradcam", "captum:Saliency", "cam:eigencam", "cam:hirescam"]),
        log=lines.append,
    )
    assert "xaibatch: maps to compute: cam:hirescam for 6 image(s); the others are up to date" in lines
    opts = run_opts(flat_dir, out, tiny_ckpt, more, method_options={"captum:Saliency": {"reduce": "sum"}})
    run(opts, log=lines.append)
    assert "xaibatch: maps to compute: captum:Saliency for 6 image(s); the others are up to date" in lines
    events.clear()
    run(run_opts(flat_dir, tmp_path / "out2", tiny_ckpt, more, on_event=events.append), log=quiet)
    assert [e["maps"] for e in events if e["event"] == "plan"] == [
        {"gradcam": 6, "captum:Saliency": 6, "cam:eigencam": 6}
    ]
