"""Grad-CAM equals pytorch-grad-cam's GradCAM, is batched, and leaves no hooks behind; its shared forward records
autograd's graph only from the target layer on, with the maps of a forward that records all of it."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM as LibGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from _methods_helpers import make_ctx, random_images, tiny_model
from xaibatch.model.layers import capture, find_target_layer, forward_from_layer
from xaibatch.methods import Batch, create_method
from xaibatch.methods.explainer import Explainer
from xaibatch.methods.gradcam import gradcam_maps


def ours(model, layer, x, targets):
    with torch.enable_grad(), capture(layer) as store:
        logits = model(x.clone().requires_grad_(True))
    batch = Batch(x=x, targets=targets, logits=logits, activations=store["activations"])
    return gradcam_maps(batch, x.shape[-1]).numpy()


@pytest.mark.parametrize(
    "arch,size", [("test_resnet", 32), ("resnet18", 64), ("test_efficientnet", 64), ("test_convnext", 64)]
)
def test_equals_pytorch_grad_cam(arch, size):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=3).eval()
    x = torch.randn(4, 3, size, size)
    layer = find_target_layer(model, size)
    with torch.no_grad():
        targets = model(x).argmax(1)
    mine = ours(model, layer, x, targets)
    with LibGradCAM(model=model, target_layers=[layer.module]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    assert mine.shape == ref.shape == (4, size, size)
    assert np.abs(mine - ref).max() < 1e-4
    assert mine.max() > 0.9  # not a flat map


def test_explains_the_requested_class_not_always_the_prediction():
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    layer = find_target_layer(model, 32)
    a = ours(model, layer, x, torch.tensor([0, 0]))
    b = ours(model, layer, x, torch.tensor([2, 2]))
    assert np.abs(a - b).max() > 1e-3


def test_batched_equals_one_by_one():
    torch.manual_seed(2)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    x = torch.randn(5, 3, 32, 32)
    layer = find_target_layer(model, 32)
    t = torch.tensor([0, 1, 0, 1, 1])
    whole = ours(model, layer, x, t)
    single = np.concatenate([ours(model, layer, x[i : i + 1], t[i : i + 1]) for i in range(5)])
    assert np.abs(whole - single).max() < 1e-5


def test_capture_removes_its_hook_even_on_error():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    layer = find_target_layer(model, 32)
    with pytest.raises(RuntimeError):
        with capture(layer):
            model(torch.randn(1, 3, 32, 32))
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    "arch,size,expected", [("resnet18", 32, "layer2"), ("resnet18", 64, "layer3"), ("resnet18", 224, "layer4")]
)
def test_layer_rule_deepest_stage_at_least_4x4(arch, size, expected):
    model = timm.create_model(arch, pretrained=False, num_classes=2).eval()
    layer = find_target_layer(model, size)
    assert layer.name == expected
    assert min(layer.grid) >= 4


SHARED = [("test_resnet", {}), ("test_efficientnet", {}), ("test_vit", {"img_size": 32})]


def uint8_batch(images):
    """(B, S, S, 3) uint8 images as the (B, 3, S, S) uint8 batch a run's loader gives."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def explainer_maps(ctx, images, targets=None):
    """The ``gradcam`` maps of uint8 (B, S, S, 3) images through the Explainer, as a run computes them."""
    ex = Explainer([create_method("gradcam", ctx)], ctx, "label" if targets is not None else "pred")
    return ex(uint8_batch(images), targets, None).methods["gradcam"].maps


def full_graph_maps(ctx, images, targets=None):
    """The same maps from a forward that records the whole graph (the input and the weights need a gradient),
    as the shared forward did before it started the graph at the target layer."""
    x = ctx.preprocess.normalize(uint8_batch(images), ctx.device)
    with torch.enable_grad(), capture(ctx.layer) as store:
        logits = ctx.model(x.clone().requires_grad_(True))
    t = logits.argmax(1) if targets is None else targets
    return gradcam_maps(Batch(x, t, logits, store["activations"]), x.shape[-1])


@pytest.mark.parametrize("arch,kwargs", SHARED, ids=[a for a, _ in SHARED])
def test_shared_forward_saves_nothing_from_before_the_target_layer(arch, kwargs):
    """The shared forward ran with the input and every weight needing a gradient, so autograd saved every
    layer's activations (resnet50 at 224 px, 32 images: 3.7 GB on the CPU) for a Grad-CAM that only
    differentiates from the target layer on. Every tensor it saves now is saved after the target layer ran,
    and no parameter is left with a gradient or a changed requires_grad."""
    model = tiny_model(arch, num_classes=3, **kwargs)
    ctx = make_ctx(model, 32)
    state = {"after": False, "before": 0, "after_saved": 0}

    def layer_done(_m, _i, _o):
        state["after"] = True

    def pack(t):
        state["after_saved" if state["after"] else "before"] += 1
        return t

    outputs = []  # per module call: (after the target layer?, its output needs a gradient?)

    def record(_m, _i, out):
        outputs.append((state["after"], bool(getattr(out, "requires_grad", False))))

    hooks = [ctx.layer.module.register_forward_hook(layer_done)]
    hooks += [m.register_forward_hook(record) for m in model.modules() if m is not ctx.layer.module]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            maps = explainer_maps(ctx, random_images(2, 32, seed=3))
    finally:
        for h in hooks:
            h.remove()
    assert float(maps.max()) > 0.9
    assert state["before"] == 0 and state["after_saved"] > 0, state
    before = [grad for after, grad in outputs if not after]
    assert before and not any(before)  # the stem's, the early stages' outputs: in no graph
    assert any(grad for after, grad in outputs if after)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch,kwargs", SHARED, ids=[a for a, _ in SHARED])
def test_shared_forward_maps_equal_the_full_graphs(arch, kwargs):
    model = tiny_model(arch, num_classes=3, **kwargs)
    ctx = make_ctx(model, 32)
    images = random_images(3, 32, seed=4)
    want = full_graph_maps(ctx, images)
    got = explainer_maps(ctx, images)
    assert float(want.max()) > 0.9 and torch.equal(got, want)
    other = torch.tensor([2, 0, 1])  # the label pass's targets: not the prediction
    assert torch.equal(explainer_maps(ctx, images, other), full_graph_maps(ctx, images, other))


def test_shared_forward_on_a_frozen_model_equals_the_unfrozen_one():
    """A model frozen for inference (every parameter requires_grad=False) gets the same maps and stays frozen;
    a partly frozen one gets back exactly the flags it had, also when its forward raises."""
    model = tiny_model("test_resnet", num_classes=3)
    ctx = make_ctx(model, 32)
    images = random_images(3, 32, seed=5)
    want = explainer_maps(ctx, images)
    for p in model.parameters():
        p.requires_grad_(False)
    assert torch.equal(explainer_maps(ctx, images), want)
    assert not any(p.requires_grad for p in model.parameters())

    flags = [i % 3 != 0 for i, _ in enumerate(model.parameters())]
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)
    assert torch.equal(explainer_maps(ctx, images), want)
    assert [p.requires_grad for p in model.parameters()] == flags

    def boom(_m, _i, _o):
        raise RuntimeError("boom")

    handle = model.fc.register_forward_hook(boom)  # after the target layer: the graph has started
    try:
        with pytest.raises(RuntimeError, match="boom"):
            forward_from_layer(model, torch.zeros(1, 3, 32, 32), ctx.layer)
    finally:
        handle.remove()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_shared_forward_when_the_layer_after_the_target_works_in_place():
    """The graph starts at a leaf; a model that changes the target layer's output in place (timm's BasicBlock
    does ``x += shortcut`` right after ``bn2``) continues from a copy of it, so autograd lets it, and the map
    is the full graph's."""
    model = tiny_model("test_resnet", num_classes=3)
    ctx = make_ctx(model, 32)
    ctx.layer = find_target_layer(model, 32, "layer2.0.bn2")
    images = random_images(2, 32, seed=6)
    want = full_graph_maps(ctx, images)
    assert float(want.max()) > 0.9 and torch.equal(explainer_maps(ctx, images), want)
