"""Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391), batched.

The class score's gradient with respect to the target layer's activations is
averaged over space to weight the channels; the weighted sum, passed through a
ReLU, is the map. One forward (shared with the prediction) and one backward per
batch. Scaled exactly as pytorch-grad-cam's ``GradCAM`` does: min-max at the
layer's resolution, bilinear upsampling to the input size, min-max again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import Batch, Explanation, Method, ModelContext, normalize_per_image, register_method


def gradcam_maps(batch: Batch, size: int, layer: str = "") -> torch.Tensor:
    """Grad-CAM for every image of ``batch`` at ``size`` x ``size``, in [0, 1]; computed once per batch.
    ``layer``: the target layer's name, for the message when the output does not depend on it."""
    cached = batch.cache.get("gradcam")
    if cached is not None:
        return cached
    if batch.activations is None:
        raise RuntimeError("Grad-CAM needs the target layer's activations from the shared forward pass")
    acts = batch.activations
    score = batch.logits.gather(1, batch.targets[:, None]).sum()
    grads = None
    if score.requires_grad and acts.requires_grad:
        (grads,) = torch.autograd.grad(score, acts, allow_unused=True)
    if grads is None:  # the layer is detached from the output, or unused: no gradient reaches it
        raise UsageError(
            f"Grad-CAM: the model's output does not depend on the target layer{f' {layer}' if layer else ''} "
            "(no gradient reaches it: is its output detached or unused in forward?); pass --target-layer "
            "with a layer the output is computed from"
        )
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * acts.detach()).sum(dim=1))
    cam = normalize_per_image(cam.float())
    cam = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    cam = normalize_per_image(cam)
    batch.cache["gradcam"] = cam
    return cam


@register_method
class GradCAM(Method):
    name = "gradcam"
    title = "Grad-CAM"
    needs_activations = True
    summary = "where the class evidence sits, coarse (layer resolution); the fast default"

    def explain(self, batch: Batch) -> Explanation:
        return Explanation(gradcam_maps(batch, self.ctx.input_size, layer_name(self.ctx)))


def layer_name(ctx: ModelContext) -> str:
    """The target layer's name, or "" when the context has none."""
    return ctx.layer.name if ctx.layer is not None else ""
