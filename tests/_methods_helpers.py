"""Small models and a stand-in for the pipeline's per-batch work, for the method tests."""

from __future__ import annotations

import numpy as np
import timm
import torch
from torch import nn

from xaibatch.model.layers import capture, find_target_layer
from xaibatch.methods.base import Batch, ModelContext
from xaibatch.preprocess import Preprocess
from xaibatch.tools import synth


def tiny_model(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """Create a random-init timm model in eval mode, the same weights for the same seed."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    return model.eval()


def cpu_ctx(model: nn.Module, layer, size: int) -> ModelContext:
    """The context a run gives a model of ``size`` px with ImageNet's mean and std, on the CPU."""
    return ModelContext(model, layer, Preprocess(size), torch.device("cpu"))


def make_ctx(model: nn.Module, size: int) -> ModelContext:
    return cpu_ctx(model, find_target_layer(model, size), size)


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Return n smooth-ish (size, size, 3) uint8 images: blocky colour patches plus noise."""
    return synth.patches(n, size, seed)


def normalize(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 images as a run's model input (ImageNet's mean and std)."""
    return Preprocess(images.shape[1]).normalize(torch.from_numpy(images).permute(0, 3, 1, 2))


def make_batch(
    ctx: ModelContext, images: np.ndarray, activations: bool = True, segmenter=None, seeds=None, targets=None
) -> Batch:
    """Do what the pipeline does for one batch: normalize, one forward (capturing the layer), targets, segments."""
    x = normalize(images)
    if activations:
        with torch.enable_grad(), capture(ctx.layer) as store:
            logits = ctx.model(x)
        acts = store["activations"]
    else:
        with torch.no_grad():
            logits = ctx.model(x)
        acts = None
    t = logits.argmax(1) if targets is None else torch.as_tensor(targets)
    segments = None
    if segmenter is not None:
        segments = torch.from_numpy(np.stack([segmenter(im) for im in images])).long()
    return Batch(x, t, logits, acts, segments, seeds)


def model_state(model: nn.Module) -> list:
    """Everything a temporary patch could leave behind, module by module."""
    out = []
    for name, m in model.named_modules():
        out.append(
            (
                name,
                type(m),
                sorted(m.__dict__.keys()),
                "forward" in m.__dict__,
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {})),
                len(getattr(m, "_forward_hooks_with_kwargs", {})),
            )
        )
    return out
