"""The library methods through `xaibatch run` on the model families the native tests cover alone:
a token model (ViT) and a channels-last one (MambaOut, as Swin). Tiny timm models, random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import invoke, manifest_rows, manifest_value, write_images

METHODS = [
    "cam:gradcam++",
    "cam:scorecam",
    "cam:eigencam",
    "cam:layercam",
    "captum:IntegratedGradients",
    "captum:Saliency",
    "captum:Occlusion",
    "captum:DeepLift",
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer", [("test_vit", "blocks.5.norm1"), ("test_mambaout", "stages.2")])
def test_library_methods_on_a_family(tmp_path, arch, layer):
    write_images(tmp_path / "in" / "FAKE", 2, size=48, seed=1)
    write_images(tmp_path / "in" / "REAL", 1, size=40, seed=2)
    out = tmp_path / "out"
    r = invoke(
        "run", tmp_path / "in", "--model", f"timm:{arch}", "--image-size", "64", "--out", out, "--workers", "0",
        "--device", "cpu", "-q", "--target", "pred,label", "--method-option", "captum:IntegratedGradients.n_steps=4",
        *[a for m in METHODS for a in ("-m", m)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads(manifest_value(out, "SELECT config_json FROM runs"))
    assert (cfg["layer"], cfg["layer_grid"]) == (layer, [4, 4])
    for method in METHODS:
        rows = manifest_rows(out, "SELECT rel, npy FROM maps WHERE method = ?", (method,))
        assert len(rows) == 3, method
        for rel, npy in rows:
            m = np.load(out / npy)
            assert m.shape == ((48, 48) if rel.startswith("FAKE") else (40, 40)), (method, rel)
            assert np.isfinite(m).all(), (method, rel)
        assert any(np.abs(np.load(out / npy)).max() > 0 for _, npy in rows), method


@pytest.mark.parametrize("arch,kwargs", [("test_vit", {"img_size": 64}), ("test_mambaout", {})])
def test_fullgrad_ignores_the_layers_reshape(arch, kwargs):
    """cam:fullgrad reads every conv and batch-norm bias, not the run's layer: the token model's and the channels-last
    model's reshape of that layer was handed to FullGrad, which applied it to the conv outputs, and the method was
    refused at construction ("63 patch tokens do not form a 4x4 grid"; a broadcast error on MambaOut). Its maps are
    now the library's own, called as its documentation says (no reshape_transform)."""
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xaibatch.methods import create_method

    from _methods_helpers import make_batch, make_ctx, random_images, tiny_model

    model = tiny_model(arch, num_classes=3, **kwargs)
    ctx = make_ctx(model, 64)
    assert ctx.layer.reshaped
    batch = make_batch(ctx, random_images(2, 64, seed=3), activations=False)
    got = create_method("cam:fullgrad", ctx).explain(batch).maps.numpy()
    targets = [ClassifierOutputTarget(int(t)) for t in batch.targets]
    ref = FullGrad(model, [])(input_tensor=batch.x.clone().requires_grad_(True), targets=targets)
    model.zero_grad(set_to_none=True)
    assert got.shape == (2, 64, 64) and np.abs(got - ref).max() < 1e-5
