"""Token models whose CAM layer holds other tokens than timm's ``num_prefix_tokens`` says, or no patch grid.

CaiT and XCiT add their class token only after ``blocks`` (in their class-attention blocks), so the last
block's tokens are all patches although the model counts one prefix token: CaiT's layer was refused
("195 patch tokens do not form a 14x14 grid") and XCiT's patch embedding, which has no ``grid_size``,
ended the run with an internal AttributeError. Hiera's tokens are pooled and reordered: no grid to draw.

Models whose stages are token sequences: LeViT's stages (and EfficientFormer's last) give (B, N, C) and were
passed over (LeViT: "raise --image-size" at 224 px); Twins and MViTv2 name stages they do not have in
``feature_info`` ("model has no layer 'block.0'"), so their final ``norm`` is read. CrossViT, PiT and TNT give
no single patch grid: refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
from pytorch_grad_cam import GradCAM as LibGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from _methods_helpers import cpu_ctx, make_batch, make_ctx, normalize, random_images, tiny_model
from xaibatch.errors import ModelError
from xaibatch.methods.gradcam import gradcam_maps
from xaibatch.model.layers import find_target_layer

SIZE = 64
SMALL = {"img_size": SIZE, "num_classes": 2, "embed_dim": 32, "num_heads": 2}


def _library_gradcam(model, layer, batch, patch_tokens_from: int) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM with the reshape its ViT tutorial gives: drop the first tokens, square the rest."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        side = int((t.shape[1] - patch_tokens_from) ** 0.5)
        return t[:, patch_tokens_from:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    with LibGradCAM(model=model, target_layers=[layer.module], reshape_transform=reshape) as cam:
        return cam(input_tensor=batch.x, targets=[ClassifierOutputTarget(int(t)) for t in batch.targets])


@pytest.mark.parametrize(
    "arch,kwargs,prefix",
    [
        ("cait_xxs24_224", {"depth": 2}, 0),  # the class token joins after blocks
        ("xcit_nano_12_p16_224", {"depth": 2}, 0),  # likewise, and a ConvPatchEmbed without grid_size
        ("vit_tiny_patch16_224", {"depth": 2, "reg_tokens": 4}, 5),  # class + 4 register tokens (DINOv2-reg style)
        ("deit_tiny_distilled_patch16_224", {"depth": 2}, 2),  # class + distillation token
    ],
)
def test_the_tokens_before_the_patch_grid_are_counted_at_the_layer(arch, kwargs, prefix):
    model = tiny_model(arch, **SMALL, **kwargs)
    ctx = make_ctx(model, SIZE)
    assert (ctx.layer.name, ctx.layer.grid, ctx.layer.prefix_tokens) == ("blocks.1.norm1", (4, 4), prefix)
    batch = make_batch(ctx, random_images(3, SIZE, seed=7))
    ours = gradcam_maps(batch, SIZE)
    assert ours.shape == (3, SIZE, SIZE) and ours.amax() > 0
    ref = _library_gradcam(model, ctx.layer, batch, prefix)
    assert np.abs(ours.numpy() - ref).max() < 1e-4


def test_a_token_model_without_a_patch_grid_is_refused_in_one_line():
    model = tiny_model("hiera_tiny_224", img_size=SIZE, num_classes=2, embed_dim=16, num_heads=1, stages=(1, 1, 1, 1))
    with pytest.raises(ModelError, match=r"^layer 'blocks\.3\.norm1' gives 16 tokens, not a patch grid .* use methods"):
        find_target_layer(model, SIZE)


@pytest.mark.parametrize("name", ["blocks.1", "blocks.1.attn", "norm"])
def test_a_named_layer_whose_patch_tokens_the_output_never_reads_is_refused(name):
    """After the last block's attention only the class token goes on to a class-token ViT's head: every map of
    ``--target-layer blocks.<last>`` (or ``norm``) was silently all zero, for every image."""
    model = tiny_model("vit_tiny_patch16_224", **SMALL, depth=2)
    with pytest.raises(ModelError, match=rf"^layer '{name}': the model's output no longer reads the patch tokens"):
        find_target_layer(model, SIZE, name)


@pytest.mark.parametrize(
    "arch,name",
    [
        ("vit_tiny_patch16_224", "blocks.1.norm1"),  # the default, named
        ("vit_tiny_patch16_224", "blocks.0"),
        ("beit_base_patch16_224", "blocks.1"),  # a class token, but the head averages the patch tokens
    ],
)
def test_a_named_layer_the_output_reads_is_kept(arch, name):
    model = tiny_model(arch, **SMALL, depth=2)
    layer = find_target_layer(model, SIZE, name)
    assert (layer.name, layer.grid, layer.prefix_tokens) == (name, (4, 4), 1)
    batch = make_batch(cpu_ctx(model, layer, SIZE), random_images(2, SIZE, seed=3))
    assert gradcam_maps(batch, SIZE).amax() > 0


def _levit(size: int):
    """LeViT's layout made small, its BatchNorms' statistics set from a few images: at its initial statistics
    a random LeViT's logits are the same for every input, and its maps flat noise."""
    model = tiny_model(
        "levit_128",
        img_size=size,
        num_classes=2,
        embed_dim=(16, 24, 32),
        key_dim=8,
        num_heads=(1, 1, 1),
        depth=(1, 1, 1),
    )
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(normalize(random_images(8, size, seed=1)))
    return model.eval()


def _twins(arch: str, size: int, **kwargs):
    dims = {"embed_dims": (8, 16, 16, 32), "num_heads": (1, 1, 1, 1), "depths": (1, 1, 1, 1)}
    return tiny_model(arch, img_size=size, num_classes=2, **dims, **kwargs)


def _mvitv2(size: int):
    torch.manual_seed(0)
    cfg = MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=8, num_heads=1)
    return MultiScaleVit(cfg, img_size=(size, size), num_classes=2).eval()


STAGE_TOKENS = {  # model -> (size, the layer, its grid, the model's own map there): each made small
    "levit": (lambda: _levit(128), 128, "stages.1", (4, 4), lambda maps: maps[1]),  # 128 px: 8x8, 4x4, 2x2
    "twins_svt": (lambda: _twins("twins_svt_small", 128, wss=(2, 2, 2, 2)), 128, "norm", (4, 4), None),
    "twins_pcpvt": (lambda: _twins("twins_pcpvt_small", 128), 128, "norm", (4, 4), None),
    "mvitv2": (lambda: _mvitv2(128), 128, "norm", (4, 4), None),
    # its last stage is tokens (its attention biases fit 224 px only): was passed over for the 14x14 stages.2
    "efficientformer": (
        lambda: tiny_model(
            "efficientformer_l1", num_classes=2, depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_vit=1
        ),
        224,
        "stages.3",
        (7, 7),
        lambda maps: maps[3],
    ),
}


def _own_grid(model, name, own, x):
    """The layer's output as the model itself lays it out: its ``forward_intermediates`` (B, C, H, W), and for the
    final ``norm`` the last stage's map through that norm."""
    maps = model.forward_intermediates(x, intermediates_only=True)
    if own is not None:
        return own(maps)
    return model.norm(maps[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("arch", list(STAGE_TOKENS))
def test_a_stage_of_tokens_is_read_as_its_patch_grid(arch):
    make, size, name, grid, own = STAGE_TOKENS[arch]
    model = make()
    ctx = make_ctx(model, size)
    assert (ctx.layer.name, ctx.layer.grid, ctx.layer.prefix_tokens) == (name, grid, 0)
    batch = make_batch(ctx, random_images(3, size, seed=9))
    with torch.no_grad():  # the tokens in the model's own row order, not only a square of them
        assert torch.allclose(batch.activations, _own_grid(model, name, own, batch.x), atol=1e-5)
    ours = gradcam_maps(batch, size)
    assert ours.amax() > 0
    ref = _library_gradcam(model, ctx.layer, batch, 0)
    assert np.abs(ours.numpy() - ref).max() < 1e-4


def test_a_named_token_layer_of_a_stage_model_needs_a_stage_grid():
    model = STAGE_TOKENS["levit"][0]()
    layer = find_target_layer(model, 128, "stages.0.blocks.0")  # a block inside the first stage: 8x8
    assert (layer.grid, layer.prefix_tokens) == ((8, 8), 0)
    with pytest.raises(ModelError, match=r"^layer 'stages\.1\.downsample\.attn_downsample\.q' does not output"):
        find_target_layer(model, 128, "stages.1.downsample.attn_downsample.q")  # the queries: key_dim channels


@pytest.mark.parametrize(
    "arch,size,kwargs,message",
    [
        (
            "crossvit_tiny_240",
            240,
            {"embed_dim": (16, 32), "depth": ((1, 1, 0),) * 3, "num_heads": (1, 1)},
            r"^this model has no 'blocks\.2\.norm1', the input of a ViT's last attention, .* \(lime, captum:\*\)$",
        ),
        (
            "pit_ti_224",
            64,
            {"img_size": 64, "depth": (1, 1, 1), "heads": (1, 1, 1), "base_dims": (8, 8, 8)},
            r"^no stage of this model gives a feature map .* \(transformers\.0 \(no single tensor\), .* \(lime, captum",
        ),
        (
            "tnt_s_patch16_224",
            64,
            {"img_size": 64, "embed_dim": 16, "inner_dim": 4, "depth": 1, "num_heads_outer": 1, "num_heads_inner": 1},
            r"^no stage of this model gives a feature map .* \(blocks\.0 \(no single tensor\)\); use methods",
        ),
    ],
)
def test_a_model_without_one_patch_grid_is_refused_in_one_line(arch, size, kwargs, message):
    """CrossViT's two branches each have their own grid; PiT's and TNT's stages give tuples, and only their class
    token reaches the head. The errors were "model has no layer 'blocks.2.norm1'" and "raise --image-size"."""
    model = tiny_model(arch, num_classes=2, **kwargs)
    with pytest.raises(ModelError, match=message):
        find_target_layer(model, size)
