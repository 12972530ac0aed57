"""Guided Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391), batched.

Guided backpropagation (see :mod:`.guided_backprop`) multiplied pixel by pixel
with the bilinearly upsampled Grad-CAM map, composed as captum's
``GuidedGradCam`` does. Grad-CAM comes from :func:`.gradcam.gradcam_maps`, so
it is shared with the ``gradcam`` method when both run; guided backprop costs
one extra forward and one backward per batch.

The Grad-CAM factor is the per-image min-max scaled map the ``gradcam`` method
shows (pytorch-grad-cam's convention) rather than captum's raw ReLU'd map; the
two differ by a per-image scale and, when a map's minimum at the layer's
resolution is above zero, an offset.

Reduction to one map per image: absolute value of the (B, 3, H, W) product,
maximum over the colour channels, min-max scaled to [0, 1] per image. The sign
is dropped because guided gradients of either sign mark the pixels the class
is sensitive to; max rather than sum keeps a strong edge in one channel
visible.
"""

from __future__ import annotations

import torch

from ..errors import ModelError, UsageError
from .base import Batch, Explanation, Method, ModelContext, normalize_per_image, register_method
from .gradcam import gradcam_maps, layer_name
from .guided_backprop import guided_backprop, guided_modules


def guided_gradcam_product(
    batch: Batch, model: torch.nn.Module, size: int, layer: str = ""
) -> tuple[torch.Tensor, int]:
    """Return guided backprop x Grad-CAM as (B, C, H, W), before any reduction, and the patched-module count
    (``layer``: the target layer's name, for gradcam_maps' message)."""
    cam = gradcam_maps(batch, size, layer)  # first: it uses the shared forward's graph
    grads, count = guided_backprop(model, batch.x, batch.targets)
    return grads * cam[:, None].to(grads.dtype), count


def reduce_guided(product: torch.Tensor) -> torch.Tensor:
    """Reduce (B, C, H, W) attributions to (B, H, W) float32 maps in [0, 1]: abs, max over channels, min-max.

    Each map is divided by its own maximum first: guided gradients are often
    1e-4 or smaller, where the min-max epsilon would otherwise shrink the map.
    """
    maps = product.abs().amax(dim=1).float()
    top = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return normalize_per_image(maps / top[:, None, None])


@register_method
class GuidedGradCAM(Method):
    name = "guided-gradcam"
    title = "Guided Grad-CAM"
    needs_activations = True
    summary = "Grad-CAM sharpened to pixel-level edges and texture inside the region"

    def __init__(self, ctx: ModelContext, **options: object) -> None:
        if options:
            raise UsageError(f"guided-gradcam takes no options (got {', '.join(sorted(options))})")
        super().__init__(ctx)
        self.patched = len(guided_modules(ctx.model))
        if self.patched == 0:  # fail before the run starts, not on the first batch
            raise ModelError(
                "guided-gradcam: this model has no activation module the guided-backprop rule can reach "
                "(it calls its activations as functions); use gradcam instead"
            )

    def explain(self, batch: Batch) -> Explanation:
        product, self.patched = guided_gradcam_product(batch, self.ctx.model, self.ctx.input_size, layer_name(self.ctx))
        return Explanation(reduce_guided(product))
