"""Token models whose CAM layer holds other tokens than timm's ``num_prefix_tokens`` says, or no patch grid.

CaiT and XCiT add their class token only after ``blocks`` (in their class-attention blocks), so the last
block's tokens are all patches although the model counts one prefix token: CaiT's layer was refused
("195 patch tokens do not form a 14x14 grid") and XCiT's patch embedding, which has no ``grid_size``,
ended the run with an internal AttributeError. Hiera's tokens are pooled and reordered: no grid to draw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM as LibGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from _methods_helpers import cpu_ctx, make_batch, make_ctx, random_images, tiny_model
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
