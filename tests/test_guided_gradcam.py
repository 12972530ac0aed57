"""Guided Grad-CAM: equal to captum's on a ReLU net, batched, and leaves the model exactly as it was."""

from __future__ import annotations

import warnings

import pytest
import timm.layers.activations as timm_act
import timm.layers.activations_me as timm_act_me
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, GuidedGradCam, LayerGradCam
from torch import nn

from _methods_helpers import make_batch, make_ctx, model_state, random_images, tiny_model
from xaibatch.errors import ModelError
from xaibatch.methods import METHODS, create_method
from xaibatch.methods.guided_backprop import guided_activations, guided_backprop, guided_modules
from xaibatch.methods.guided_gradcam import GuidedGradCAM, guided_gradcam_product, reduce_guided

SIZE = 64


@pytest.fixture(scope="module")
def resnet():
    """timm's test_resnet: ReLU(inplace=True) everywhere; at 64 px the CAM layer is layer3 (4x4)."""
    model = tiny_model("test_resnet")
    return model, make_ctx(model, SIZE)


def captum_expected(model, layer, x, targets):
    """Captum's Guided Grad-CAM, rescaled as our per-image min-max Grad-CAM factor is.

    Ours is gb * n2(up(n1(cam))) with n = min-max per image; bilinear upsampling
    commutes with affine maps, so that is gb * (alpha * up(cam) + beta) =
    alpha * captum_ggc + beta * captum_gb, with alpha, beta from captum's raw map.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ggc = GuidedGradCam(model, layer).attribute(
            x.clone().requires_grad_(), target=targets, interpolate_mode="bilinear"
        )
        gb = GuidedBackprop(model).attribute(x.clone().requires_grad_(), target=targets)
        raw = LayerGradCam(model, layer).attribute(x.clone().requires_grad_(), target=targets, relu_attributions=True)
    raw = raw.detach()[:, 0]
    lo1 = raw.flatten(1).min(1).values
    a1 = 1 / ((raw.flatten(1) - lo1[:, None]).max(1).values + 1e-7)
    b1 = -lo1 * a1
    up = F.interpolate(raw[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    u = a1[:, None, None] * up + b1[:, None, None]
    lo2 = u.flatten(1).min(1).values
    a2 = 1 / ((u.flatten(1) - lo2[:, None]).max(1).values + 1e-7)
    alpha, beta = a1 * a2, b1 * a2 - lo2 * a2
    return alpha.view(-1, 1, 1, 1) * ggc.detach() + beta.view(-1, 1, 1, 1) * gb.detach(), gb.detach()


def test_product_equals_captum_guided_gradcam(resnet):
    model, ctx = resnet
    batch = make_batch(ctx, random_images(4, SIZE, seed=1))
    product, patched = guided_gradcam_product(batch, model, SIZE)
    expected, captum_gb = captum_expected(model, ctx.layer.module, batch.x, batch.targets)
    ours_gb, _ = guided_backprop(model, batch.x, batch.targets)
    gb_err = ((ours_gb - captum_gb).abs().max() / captum_gb.abs().max()).item()
    product_err = ((product - expected).abs().max() / expected.abs().max()).item()
    map_err = (reduce_guided(product) - reduce_guided(expected)).abs().max().item()
    print(f"guided backprop rel err {gb_err:.2e}, product rel err {product_err:.2e}, map max abs err {map_err:.2e}")
    assert patched == 12  # every ReLU of test_resnet
    assert gb_err < 1e-5
    assert product_err < 1e-3
    assert map_err < 1e-3


def test_the_map_is_each_pixels_largest_magnitude_over_the_channels():
    """reduce_guided: abs, max over channels, then min-max per image. A pixel whose evidence is strongly negative in
    one channel (the input gradient's sign follows the first layer's weights) is as salient as a positive one."""
    product = torch.zeros(1, 3, 2, 2)
    product[0, :, 0, 0] = torch.tensor([1e-4, -4e-4, 0.0])  # strongest: negative
    product[0, :, 0, 1] = torch.tensor([2e-4, 1e-4, 0.0])
    product[0, :, 1, 0] = torch.tensor([0.0, 0.0, -1e-4])
    got = reduce_guided(product * 1e-2)  # tiny values, as guided gradients are
    want = torch.tensor([[[1.0, 0.5], [0.25, 0.0]]])
    assert torch.allclose(got, want, atol=1e-3), got


def test_explain_is_batched_like_per_image(resnet):
    model, ctx = resnet
    method = create_method("guided-gradcam", ctx)
    imgs = random_images(4, SIZE, seed=2)
    together = method.explain(make_batch(ctx, imgs)).maps
    assert together.shape == (4, SIZE, SIZE) and together.dtype == torch.float32
    assert (
        together.min() >= 0 and together.max() <= 1 and together.flatten(1).max(1).values.min() > 0.9999
    )  # tiny gradients still reach 1
    for i in range(4):
        alone = method.explain(make_batch(ctx, imgs[i : i + 1])).maps[0]
        torch.testing.assert_close(alone, together[i], rtol=0, atol=1e-5)


def test_registered():
    assert METHODS["guided-gradcam"] is GuidedGradCAM
    assert GuidedGradCAM.title == "Guided Grad-CAM" and GuidedGradCAM.needs_activations and not GuidedGradCAM.signed


@pytest.mark.parametrize(
    "act",
    [
        nn.ReLU(inplace=True),
        nn.ReLU6(inplace=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.ELU(),
        nn.SELU(inplace=True),
        nn.CELU(),
        nn.GELU(),
        nn.SiLU(inplace=True),
        nn.Mish(),
        nn.Hardswish(inplace=True),
        timm_act.GELUTanh(),
        timm_act.QuickGELU(),
        timm_act.Swish(inplace=True),
        timm_act_me.HardSwishMe(),
        timm_act_me.MishMe(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_rule_on_each_activation(act):
    """grad_in = f'(x) [x > 0] max(grad_out, 0); forward values unchanged, in-place ones still in place."""
    torch.manual_seed(0)
    x0 = torch.randn(64) * 3
    g = torch.randn(64)
    xr = x0.clone().requires_grad_()
    plain = type(act)(**({"inplace": False} if hasattr(act, "inplace") else {}))
    if isinstance(act, nn.LeakyReLU):
        plain = nn.LeakyReLU(0.1)
    (fprime_g,) = torch.autograd.grad(plain(xr), xr, g.clamp(min=0))
    model = nn.Sequential(nn.Identity(), act)
    xin = x0.clone().requires_grad_()
    with guided_activations(model) as n:
        h = xin * 1  # a non-leaf, as activations see inside a network
        y = model(h)
        if getattr(act, "inplace", False):
            assert y.data_ptr() == h.data_ptr()
        (grad,) = torch.autograd.grad(y, xin, g)
    assert n == 1
    torch.testing.assert_close(y.detach(), plain(x0))
    torch.testing.assert_close(grad, fprime_g * (x0 > 0))


def test_gates_are_not_patched():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.SiLU(), nn.Sigmoid(), nn.Hardsigmoid(), nn.Tanh(), timm_act.HardSigmoid()
    )
    assert [type(m) for m in guided_modules(model)] == [nn.SiLU]


class Boom(nn.Module):
    """Raises in the forward or in the backward when armed: a run that fails midway."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "forward":
            raise RuntimeError("boom in forward")
        if self.mode == "backward" and x.requires_grad:
            x = x * 1
            x.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("boom in backward")))
        return x


def boom_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(inplace=True),
        Boom(),
        nn.Conv2d(4, 4, 3),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


@pytest.mark.parametrize("mode", ["forward", "backward", "bad-target"])
def test_model_unchanged_after_a_failed_run(mode):
    model = boom_net()
    x = torch.randn(2, 3, 12, 12)
    before_state = model_state(model)
    before_out = model(x)
    model[2].mode = mode if mode != "bad-target" else None
    targets = torch.tensor([0, 99]) if mode == "bad-target" else torch.tensor([0, 1])
    with pytest.raises((RuntimeError, IndexError)):
        guided_backprop(model, x, targets)
    model[2].mode = None
    assert model_state(model) == before_state
    assert torch.equal(model(x), before_out)


def test_model_unchanged_after_a_run(resnet):
    model, ctx = resnet
    imgs = random_images(2, SIZE, seed=3)
    x = make_batch(ctx, imgs).x
    before_state = model_state(model)
    with torch.no_grad():
        before_out = model(x)
    create_method("guided-gradcam", ctx).explain(make_batch(ctx, imgs))
    assert model_state(model) == before_state
    with torch.no_grad():
        assert torch.equal(model(x), before_out)
    with guided_activations(model), torch.no_grad():  # patched forward values are the model's own
        assert torch.equal(model(x), before_out)


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


def test_model_without_activation_modules_is_refused():
    model = FunctionalNet().eval()
    with pytest.raises(ModelError, match="no activation module"):
        guided_backprop(model, torch.randn(1, 3, 8, 8), torch.tensor([0]))
    ctx = make_ctx(model, 8)
    with pytest.raises(ModelError):
        create_method("guided-gradcam", ctx)
    with pytest.raises(Exception):
        create_method("guided-gradcam", make_ctx(tiny_model("test_resnet"), SIZE), colour="red")
