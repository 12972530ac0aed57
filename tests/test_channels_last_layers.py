"""Models whose stages give channels-last (B, H, W, C) maps: timm's Swin, SwinV2, MambaOut, Sequencer, VOLO;
torchvision's Swin.

Their stage outputs were read as (B, C, H, W): Swin's layers.3 at 224 px became a "7x768 grid", and every
CAM map came from the wrong axes. VOLO does not declare it (no ``output_fmt``): its ``network.4`` at 224 px was
read as a 14x384 grid, silently.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from timm.models.volo import VOLO
from pytorch_grad_cam import GradCAM as LibGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from _methods_helpers import make_batch, make_ctx, random_images
from xaibatch.errors import ModelError
from xaibatch.methods import create_method
from xaibatch.methods.gradcam import gradcam_maps
from xaibatch.model.layers import capture, find_target_layer

SIZE = 64


@pytest.fixture(scope="module")
def mambaout():
    torch.manual_seed(0)
    return timm.create_model("test_mambaout", pretrained=False, num_classes=2).eval()


def test_the_stage_grid_is_height_by_width(mambaout):
    assert mambaout.output_fmt == "NHWC"
    layer = find_target_layer(mambaout, SIZE)
    assert (layer.name, layer.grid, layer.channels_last) == ("stages.2", (4, 4), True)
    named = find_target_layer(mambaout, SIZE, "stages.1")
    assert (named.grid, named.channels_last) == ((8, 8), True)
    x = torch.randn(2, 3, SIZE, SIZE)
    with capture(layer) as store:
        out = mambaout(x)
    assert store["activations"].shape == (2, 48, 4, 4)
    with torch.no_grad():
        assert torch.equal(out, mambaout(x))  # the forward continued from the grid: the same logits


def test_gradcam_matches_pytorch_grad_cam_with_a_permute(mambaout):
    ctx = make_ctx(mambaout, SIZE)
    batch = make_batch(ctx, random_images(3, SIZE, seed=5))
    ours = gradcam_maps(batch, SIZE)
    assert ours.shape == (3, SIZE, SIZE) and torch.isfinite(ours).all() and ours.amax() > 0

    def permute(t):
        return t.permute(0, 3, 1, 2)

    with LibGradCAM(model=mambaout, target_layers=[ctx.layer.module], reshape_transform=permute) as cam:
        ref = cam(input_tensor=batch.x, targets=[ClassifierOutputTarget(int(t)) for t in batch.targets])
    assert np.abs(ours.numpy() - ref).max() < 1e-4
    lib = create_method("cam:gradcam", ctx).explain(batch).maps
    assert np.abs(lib.numpy() - ref).max() < 1e-5


def test_a_method_that_needs_a_channels_first_layer_says_so(mambaout):
    ctx = make_ctx(mambaout, SIZE)
    with pytest.raises(ModelError, match="captum:GuidedGradCam needs a convolutional .* channels-last"):
        create_method("captum:GuidedGradCam", ctx)
    with pytest.raises(ModelError, match="cam:ablationcam cannot run on a channels-last"):
        create_method("cam:ablationcam", ctx)


@pytest.mark.slow
def test_swin_gets_its_7x7_stage():
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=2).eval()
    layer = find_target_layer(swin, 224)
    assert (layer.name, layer.grid, layer.channels_last) == ("layers.3", (7, 7), True)


def test_torchvision_swin_is_read_channels_last():
    """torchvision's Swin has no ``output_fmt``: its ``features`` stages were read as (B, C, H, W), so swin_t's
    features.7 at 224 px was a "7x768 grid" and Grad-CAM drew 7 "channels" of 7x768 maps."""
    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1], num_heads=[1, 1, 1], window_size=[4, 4], num_classes=2
    ).eval()
    ctx = make_ctx(swin, SIZE)
    assert (ctx.layer.name, ctx.layer.grid, ctx.layer.channels_last) == ("features.5", (4, 4), True)
    named = find_target_layer(swin, SIZE, "features.3")
    assert (named.grid, named.channels_last) == ((8, 8), True)
    for name, grid, last in (("norm", (4, 4), True), ("permute", (4, 4), False)):  # permute was read as a 64x4 grid
        named = find_target_layer(swin, SIZE, name)
        assert (named.grid, named.channels_last) == (grid, last), name
    batch = make_batch(ctx, random_images(3, SIZE, seed=6))
    ours = gradcam_maps(batch, SIZE)
    assert batch.activations.shape == (3, 64, 4, 4) and ours.amax() > 0

    def permute(t):
        return t.permute(0, 3, 1, 2)

    with LibGradCAM(model=swin, target_layers=[ctx.layer.module], reshape_transform=permute) as cam:
        ref = cam(input_tensor=batch.x, targets=[ClassifierOutputTarget(int(t)) for t in batch.targets])
    assert np.abs(ours.numpy() - ref).max() < 1e-4


@pytest.fixture(scope="module")
def volo():
    """volo_d1_224's layout (an outlooker stage, a downsample, transformer stages, class attention), made small."""
    torch.manual_seed(0)
    dims = {"embed_dims": [16, 32, 32, 32], "num_heads": [1, 2, 2, 2], "stem_hidden_dim": 8}
    return VOLO(layers=[1, 1, 1, 1], img_size=SIZE, num_classes=2, **dims).eval()


def _permuted_gradcam(model, module, batch):
    def permute(t):
        return t.permute(0, 3, 1, 2)

    with LibGradCAM(model=model, target_layers=[module], reshape_transform=permute) as cam:
        return cam(input_tensor=batch.x, targets=[ClassifierOutputTarget(int(t)) for t in batch.targets])


def test_volo_stages_are_told_channels_last_from_their_shapes(volo):
    assert getattr(volo, "output_fmt", None) is None
    ctx = make_ctx(volo, SIZE)
    assert (ctx.layer.name, ctx.layer.grid, ctx.layer.channels_last) == ("network.4", (4, 4), True)
    batch = make_batch(ctx, random_images(3, SIZE, seed=8))
    assert batch.activations.shape == (3, 32, 4, 4)
    ours = gradcam_maps(batch, SIZE)
    assert ours.amax() > 0
    assert np.abs(ours.numpy() - _permuted_gradcam(volo, ctx.layer.module, batch)).max() < 1e-4


@pytest.mark.parametrize(
    "name,grid,last",
    [
        ("network.0", (8, 8), True),  # a stage
        ("network.1", (4, 4), True),  # the downsample between stages: not a stage, its channels a stage's
        ("network.4.0.mlp.fc1", None, None),  # 96 channels, no stage's: cannot be told from the shape
        ("patch_embed", (8, 8), False),  # the stem's output, before the model permutes it
        ("network.1.proj", (4, 4), False),  # a convolution
    ],
)
def test_a_named_layer_of_volo_is_read_by_its_shape_or_refused(volo, name, grid, last):
    if grid is None:
        with pytest.raises(ModelError, match=rf"^layer '{name}' gives a 4x4x96 output whose channels .* network\.0"):
            find_target_layer(volo, SIZE, name)
        return
    layer = find_target_layer(volo, SIZE, name)
    assert (layer.grid, layer.channels_last) == (grid, last)
