"""The methods on the model families timm offers: CNNs with SiLU/GELU/Hardswish, ConvNeXt, ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM as LibGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from _methods_helpers import make_batch, make_ctx, model_state, random_images, tiny_model
from xaibatch.methods import create_method
from xaibatch.methods.gradcam import gradcam_maps
from xaibatch.methods.guided_backprop import guided_backprop, guided_modules

SIZE = 64
ARCHS = {
    "test_efficientnet": {},  # SiLU, sigmoid squeeze-excite gates
    "test_convnext": {"ls_init_value": 1.0},  # timm GELUTanh; layer scale 1 as trained, 1e-6 hides the MLPs
    "test_vit": {"img_size": SIZE},  # nn.GELU in the MLPs, token CAM layer
    "mobilenetv3_small_050": {},  # Hardswish + ReLU, hard-sigmoid gates
}


@pytest.fixture(
    scope="module",
    params=[  # MobileNetV3's guided backprop takes ~15 s on 2 cores: slow tier
        pytest.param(a, marks=pytest.mark.slow) if a == "mobilenetv3_small_050" else a for a in ARCHS
    ],
)
def arch(request):
    model = tiny_model(request.param, **ARCHS[request.param])
    return request.param, model, make_ctx(model, SIZE)


def test_guided_gradcam_on_architecture(arch):
    name, model, ctx = arch
    imgs = random_images(2, SIZE, seed=11)
    batch = make_batch(ctx, imgs)
    before_state = model_state(model)
    with torch.no_grad():
        before_out = model(batch.x)

    guided, patched = guided_backprop(model, batch.x, batch.targets)
    assert patched == len(guided_modules(model)) > 0
    x = batch.x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(model(x).gather(1, batch.targets[:, None]).sum(), x)
    rel = ((guided - plain).norm() / plain.norm()).item()
    assert rel > 1e-2, f"{name}: guided gradients equal plain ones (rel diff {rel:.1e})"

    maps = create_method("guided-gradcam", ctx).explain(batch).maps
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1

    assert model_state(model) == before_state
    with torch.no_grad():
        assert torch.equal(model(batch.x), before_out)


def test_lime_on_architecture(arch):
    name, model, ctx = arch
    method = create_method("lime", ctx, samples=12)
    imgs = random_images(2, SIZE, seed=12)
    e = method.explain(make_batch(ctx, imgs, activations=False, segmenter=method.segmenter(), seeds=[1, 2]))
    assert e.maps.shape == (2, SIZE, SIZE) and e.maps.dtype == torch.float32 and torch.isfinite(e.maps).all()
    assert all(i["segments"] >= 15 for i in e.info)


def test_gradcam_matches_pytorch_grad_cam_on_vit():
    model = tiny_model("test_vit", img_size=SIZE)
    ctx = make_ctx(model, SIZE)
    assert ctx.layer.is_tokens and ctx.layer.grid == (4, 4)
    batch = make_batch(ctx, random_images(3, SIZE, seed=13))
    ours = gradcam_maps(batch, SIZE)

    def reshape_transform(tokens):
        return ctx.layer.to_grid(tokens)

    with LibGradCAM(model=model, target_layers=[ctx.layer.module], reshape_transform=reshape_transform) as cam:
        ref = cam(input_tensor=batch.x, targets=[ClassifierOutputTarget(int(t)) for t in batch.targets])
    err = np.abs(ours.numpy() - ref).max()
    print(f"ViT Grad-CAM vs pytorch-grad-cam max abs diff {err:.2e}")
    assert err < 1e-4
