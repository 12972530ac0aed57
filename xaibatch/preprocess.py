"""How pixels become the model's input, defined once: :class:`Preprocess` (size, mean, std) and what it does.

An image is stretched to ``image_size`` x ``image_size`` (bilinear, no crop), scaled to [0, 1], less ``mean``,
over ``std``. The model's loader builds one :class:`Preprocess` (``LoadedModel.preprocess``); the methods see it
as ``ModelContext.preprocess``; runs, LIME, the faithfulness scores, ``xaibatch train``, :func:`xaibatch.explain`
and the bench normalize and build their black baselines through it. A model that carries no normalization of its
own (a checkpoint from ``xaibatch train`` carries one; a timm model its ``pretrained_cfg``) gets ImageNet's, as
timm's models do. Imports no torch: the run's record (``runconfig.py``) reads it in a run that loads no model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224  # a model that names no input size (timm's default)


@dataclass(frozen=True)
class Preprocess:
    """The model's input: ``image_size`` square, ``(x / 255 - mean) / std`` per channel (R, G, B)."""

    image_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def for_model(
        cls,
        module: Any,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Preprocess:
        """Each value as given, else the module's own (the size: :func:`declared_size`; mean and std: timm's
        ``pretrained_cfg``), else ImageNet's and 224 px."""
        cfg = getattr(module, "pretrained_cfg", None) or {}
        size = image_size or declared_size(module) or DEFAULT_SIZE
        return cls(size, mean or cfg.get("mean") or IMAGENET_MEAN, std or cfg.get("std") or IMAGENET_STD)

    def normalized_by(self, mean: Any = None, std: Any = None) -> Preprocess:
        """This preprocessing with the given ``mean`` and ``std`` (:func:`channel_values`; None: kept)."""
        return Preprocess(
            self.image_size,
            channel_values("mean", mean) if mean is not None else self.mean,
            channel_values("std", std) if std is not None else self.std,
        )

    # -- the record ---------------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The fields the run's record and the prediction hash hold (``input_size``, ``mean``, ``std``)."""
        return {"input_size": self.image_size, "mean": self.mean, "std": self.std}

    @classmethod
    def from_record(cls, d: Any) -> Preprocess | None:
        """Read :meth:`record` back (a dict, or an object with those attributes); None when it names no size."""
        get = d.get if isinstance(d, dict) else lambda k: getattr(d, k, None)
        if get("input_size") is None:
            return None
        return cls(get("input_size"), get("mean") or IMAGENET_MEAN, get("std") or IMAGENET_STD)

    # -- pixels to input and back (tensors) ---------------------------------------------------------------------
    def stats(self, device: Any = None) -> tuple[Any, Any]:
        """``mean`` and ``std`` as (1, 3, 1, 1) float32 tensors on ``device`` (made once per device; never mutate)."""
        return _stats(self.mean, self.std, str(device or "cpu"))

    def normalize(self, x_uint8: Any, device: Any = None) -> Any:
        """A uint8 (N, 3, H, W) batch as the model's float32 input, on ``device`` (default: where it is)."""
        if device is not None:
            x_uint8 = x_uint8.to(device, non_blocking=True)
        mean, std = self.stats(x_uint8.device)
        return (x_uint8.float().div_(255.0) - mean) / std

    def to_uint8(self, x: Any) -> Any:
        """The uint8 (N, 3, H, W) images a normalized batch was made from (rounded, clamped)."""
        import torch

        mean, std = self.stats(x.device)
        return ((x.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)

    def black(self, like: Any) -> Any:
        """A black pixel in the model's input space (what :meth:`normalize` makes of 0): (1, 3, 1, 1), ``like``'s
        device and dtype; ``expand_as`` it for a black image."""
        mean, std = self.stats(like.device)
        return ((0.0 - mean) / std).to(like.dtype)

    # -- resizing (in memory; the DataLoader's workers resize as this does) ----------------------------------
    def resize_image(self, im: Any) -> Any:
        """A decoded PIL image as the model's (S, S, 3) uint8 array (as the DataLoader's workers make it; also
        explain()'s images, tensors and arrays included, and serve's uploads)."""
        from .data import model_input

        return model_input(im, self.image_size)


def channel_values(name: str, values: Any) -> tuple[float, float, float]:
    """A normalization's ``mean`` or ``std`` as given (``--mean``, ``RunOptions.mean``, ``explain(mean=)``): one number
    for every channel or three (R, G, B; a string: comma-separated), in the units of pixels scaled to [0, 1]
    (torchvision's ``ToTensor``): a mean from 0 to 1, a std above 0 and at most 1. Raises ValueError with the line to
    say (``name``: as the caller names the option)."""
    try:
        items = values.split(",") if isinstance(values, str) else list(values)
    except TypeError:  # one number of any type: np.float32(0.5), a 0-d array or tensor
        items = [values]
    try:
        floats = [float(v) for v in items]
    except (TypeError, ValueError):
        floats = []
    if len(floats) == 1:
        floats *= 3
    if len(floats) != 3 or not all(math.isfinite(f) for f in floats):
        raise ValueError(f"{name} must be one number or three (R, G, B), not {values!r}")
    lo_ok = (lambda f: f >= 0) if name.lstrip("-").startswith("mean") else (lambda f: f > 0)
    if not all(lo_ok(f) and f <= 1 for f in floats):
        scaled = ",".join(f"{f / 255:.4g}" for f in floats)
        hint = f" (0-255 units? divided by 255: {name} {scaled})" if all(f > 1 for f in floats) else ""
        kind = "from 0 to 1" if lo_ok(0.0) else "above 0 and at most 1"
        raise ValueError(f"{name} must be {kind}, in units of pixels scaled to [0, 1]{hint}, not {values!r}")
    return floats[0], floats[1], floats[2]


def declares_normalization(module: Any) -> bool:
    """Whether a model names the mean and std it was trained with (timm's ``pretrained_cfg``); else a run says
    it assumed ImageNet's (``LoadedModel.norm_declared``)."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    return bool(cfg.get("mean")) and bool(cfg.get("std"))


def declared_size(module: Any) -> int | None:
    """The input side a model declares, or None; the one rule of runs (:meth:`Preprocess.for_model`, and whether
    a run says it guessed: ``LoadedModel.size_declared``), ``serve`` and :func:`xaibatch.explain`. First the side a
    timm token model was built for: its square ``patch_embed.img_size``, unless ``dynamic_img_size``
    (``create_model(..., img_size=64)`` keeps the ``pretrained_cfg`` of 224 px, which its forward refuses; a
    non-square build declares no side); else timm's ``pretrained_cfg["input_size"]`` ((3, 224, 224)); else None."""
    fixed = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if fixed is not None and not getattr(module, "dynamic_img_size", False):
        try:
            h, w = (int(v) for v in fixed)
        except (TypeError, ValueError):
            pass
        else:
            return h if h == w else None
    size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size")
    try:
        return int(size[-1]) if size else None
    except (TypeError, ValueError, IndexError, KeyError):
        return None


@functools.lru_cache(maxsize=16)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], device: str) -> tuple[Any, Any]:
    import torch

    def t(v: tuple[float, ...]) -> Any:
        return torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    return t(mean), t(std)
