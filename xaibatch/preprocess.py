"""How pixels become the model's input, defined once: the default mean and std, uint8 to input, black there.

A model that carries no normalization of its own (a checkpoint from ``xaibatch train`` carries one; a timm model
its ``pretrained_cfg``) gets ImageNet's, as timm's models do. Imports no torch: the functions take tensors.
"""

from __future__ import annotations

from typing import Any, Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: Any, mean: Any, std: Any) -> Any:
    """A uint8 (N, 3, H, W) batch as the model's input: x / 255, less ``mean``, over ``std`` ((1, 3, 1, 1) tensors)."""
    return (x.float().div_(255.0) - mean) / std


def channel_stats(mean: Sequence[float], std: Sequence[float], like: Any) -> tuple[Any, Any]:
    """``mean`` and ``std`` as (1, C, 1, 1) tensors with ``like``'s dtype and device."""
    import torch

    def t(v: Sequence[float]) -> Any:
        return torch.tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    return t(mean), t(std)


def black(mean: Any, std: Any) -> Any:
    """A black pixel in the model's input space (what :func:`normalize` makes of 0), shaped like ``mean``."""
    return (0.0 - mean) / std
