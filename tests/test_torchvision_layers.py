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
    extra = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=2, **extra).eval()


@pytest.mark.parametrize(
    "name,size,layer,grid",
    [
        ("resnet18", 32, "layer2", (4, 4)),  # was layer2.1.conv2: inside the block, before the skip connection
        ("resnet18", 64, "layer3", (4, 4)),
        ("resnet50", 32, "layer2", (4, 4)),
        ("efficientnet_b0", 32, "features.3", (4, 4)),
        ("convnext_tiny", 32, "features.3", (4, 4)),
        ("mobilenet_v3_small", 64, "features.8", (4, 4)),
        # these were a conv inside a block: before RegNet's skip connection, one branch of GoogLeNet's inception
        ("regnet_y_400mf", 64, "trunk_output.block3", (4, 4)),
        ("googlenet", 64, "inception4e", (4, 4)),
        ("shufflenet_v2_x0_5", 64, "stage3", (4, 4)),
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


def test_torchvision_maxvit_gets_a_stage_not_a_layer_inside_its_grid_attention():
    """MaxViT has no ``features``: every conv-ish module was a candidate, and the deepest one "at least 4x4" was an
    MLP inside the last grid attention, whose (1, 1, 49, 512) output became a "49x512 grid"."""
    torch.manual_seed(0)
    model = torchvision.models.MaxVit(
        input_size=(64, 64), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[1, 1],
        head_dim=4, stochastic_depth_prob=0.0, num_classes=2,
    ).eval()  # fmt: skip
    got = find_target_layer(model, 64)
    assert (got.name, got.grid) == ("blocks.1", (8, 8))
    maps = ours(model, got, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.max() > 0
