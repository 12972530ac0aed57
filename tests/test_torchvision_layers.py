"""torchvision models get a stage output as their CAM layer, as timm's do (issue 21, item 8)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision

from test_gradcam import ours
from xaibatch.model.layers import find_target_layer


def _tv(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=2).eval()


@pytest.mark.parametrize(
    "name,size,layer,grid",
    [
        ("resnet18", 32, "layer2", (4, 4)),  # was layer2.1.conv2: inside the block, before the skip connection
        ("resnet18", 64, "layer3", (4, 4)),
        ("resnet50", 32, "layer2", (4, 4)),
        ("efficientnet_b0", 32, "features.3", (4, 4)),
        ("convnext_tiny", 32, "features.3", (4, 4)),
        ("mobilenet_v3_small", 64, "features.8", (4, 4)),
    ],
)
def test_torchvision_cnns_get_the_stage_output(name, size, layer, grid):
    model = _tv(name)
    got = find_target_layer(model, size)
    assert (got.name, got.grid) == (layer, grid)
    x = torch.randn(2, 3, size, size)
    maps = ours(model, got, x, torch.tensor([0, 1]))
    assert maps.shape == (2, size, size) and np.isfinite(maps).all() and maps.max() > 0


def test_torchvision_resnet_layer_is_timms():
    tv = find_target_layer(_tv("resnet18"), 32)
    tm = find_target_layer(timm.create_model("resnet18", pretrained=False, num_classes=2).eval(), 32)
    assert tv.name == tm.name == "layer2" and tv.grid == tm.grid


def test_torchvision_vit_gets_the_last_blocks_attention_input():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=2
    ).eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: every gradient 0
    got = find_target_layer(model, 32)
    assert got.is_tokens and got.name == "encoder.layers.encoder_layer_1.ln_1" and got.grid == (4, 4)
    maps = ours(model, got, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.max() > 0
