"""Grad-CAM equals pytorch-grad-cam's GradCAM, is batched, and leaves no hooks behind."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM as LibGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from xaibatch.model.layers import capture, find_target_layer
from xaibatch.methods import Batch
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
