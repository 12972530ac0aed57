"""``xaibatch.explain``: maps for images already in memory (a notebook), through the same batches as a run.

::

    import timm, xaibatch
    model = timm.create_model("resnet18", num_classes=2).eval()
    out = xaibatch.explain(model, images, methods=["gradcam", "lime"], input_size=64)
    out.maps["gradcam"]    # (N, 64, 64) float32 tensor, one map per image at the model's input size
    out.preds, out.probs   # the predicted class and the class probabilities per image

The model goes through :class:`~xaibatch.methods.explainer.Explainer`, the one place a batch is
explained, so the maps equal a run's (before a run resizes them to each image's own size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .preprocess import Preprocess


@dataclass
class Explanations:
    """What :func:`explain` returns; every tensor is on the CPU, indexed like the images given."""

    maps: dict[str, Any]  # method -> (N, H, W) float32 tensor at the model's input size
    probs: Any  # (N, classes) float32
    preds: Any  # (N,) int64: the predicted class
    targets: Any  # (N,) int64: the class each map explains
    info: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)  # method -> per image (e.g. LIME's)
    layer: str | None = None  # the CAM layer used


def explain(
    model,
    images,
    methods: Sequence[str] = ("gradcam",),
    *,
    target: str | Sequence[int] = "pred",
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    target_layer: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> Explanations:
    """Explain ``images`` with ``model``: one map per image and method.

    ``model``: an ``nn.Module`` (classifier logits out; ``mean``/``std`` default to ImageNet's, or
    timm's ``pretrained_cfg`` when the model has one) or the path of a checkpoint ``xaibatch run`` takes.
    ``images``: a uint8 tensor (N, 3, H, W) or float one in [0, 1], a uint8 array (N, H, W, 3), or a list
    of PIL images or file paths (decoded and resized as a run does). ``target``: ``"pred"``, or one class
    index per image. Methods and their options are those of ``xaibatch run`` (``xaibatch methods``).
    """
    import torch

    from .errors import UsageError
    from .model.heads import OneLogitHead, count_outputs, unwrap
    from .model.layers import find_target_layer
    from .methods import ModelContext, create_method, method_class
    from .methods.explainer import Explained, Explainer
    from .model.loading import load_model, resolve_device

    dev = resolve_device(device)
    if isinstance(model, (str, Path)):
        loaded = load_model(Path(model), image_size=input_size)
        net, pre = loaded.module, loaded.preprocess
        x = _as_uint8_batch(images, pre)
    else:
        net = model
        pre = Preprocess.for_model(net, input_size, mean, std) if input_size else None
        x = _as_uint8_batch(images, pre)
        pre = pre or Preprocess.for_model(net, int(x.shape[-1]), mean, std)  # no size given: the images'
    input_size = pre.image_size
    net = net.to(dev).eval()
    if count_outputs(net, input_size, "the model") == 1:  # a one-logit head: two classes, as a run reads it
        net = OneLogitHead(net).eval()
    names = list(dict.fromkeys(methods))
    classes = {m: method_class(m) for m in names}
    needs_layer = any(c.needs_activations or c.needs_layer for c in classes.values()) or target_layer is not None
    layer = find_target_layer(unwrap(net), input_size, target_layer) if needs_layer else None
    ctx = ModelContext(net, layer, pre, dev)
    options = method_options or {}
    made = [
        create_method(m, ctx, **({"seed": seed} if classes[m].takes_seed else {}), **options.get(m, {})) for m in names
    ]
    if isinstance(target, str):
        if target != "pred":
            raise UsageError(f"target must be 'pred' or one class index per image, not {target!r}")
        labels, mode = None, "pred"
    else:
        labels, mode = torch.as_tensor(list(target), dtype=torch.long), "label"
        if labels.shape[0] != x.shape[0]:
            raise UsageError(f"{labels.shape[0]} targets for {x.shape[0]} images")
    explainer = Explainer(made, ctx, mode)
    segmenters = [m.segmenter() for m in made if m.segmenter() is not None]
    seeds = list(range(x.shape[0]))  # per position, as a run's per-path seeds: batching never matters
    done = Explained.cat(
        list(explainer.explain_tensors(x, batch_size, seeds, labels, segmenter=segmenters[0] if segmenters else None))
    )
    prob = done.probs
    preds = prob.argmax(1)
    return Explanations(
        {m: r.maps for m, r in done.methods.items()},
        prob,
        preds,
        preds if labels is None else labels,
        {m: r.info for m, r in done.methods.items()},
        layer.name if layer else None,
    )


def _as_uint8_batch(images, pre: Preprocess | None):
    """(N, 3, S, S) uint8 CPU tensor from any of the accepted forms (see :func:`explain`), resized as ``pre``
    says (None: tensors and arrays keep their size, PIL images and files are made square at their longer side)."""
    import numpy as np
    import torch

    from .errors import UsageError

    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.dim() == 3:
            t = t[None]
        if t.dim() != 4 or t.shape[1] != 3:
            raise UsageError(f"a tensor of images must be (N, 3, H, W), not {tuple(images.shape)}")
        if t.dtype != torch.uint8:
            t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if pre is not None:
            t = pre.resize_batch(t)
        return t.contiguous()
    if isinstance(images, np.ndarray):
        return _as_uint8_batch(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), pre)
    from .data import load_image

    pics = [load_image(p) if isinstance(p, (str, Path)) else p.convert("RGB") for p in images]
    if not pics:
        raise UsageError("no images to explain")
    pre = pre or Preprocess(max(pics[0].size))
    arr = np.stack([pre.resize_image(p) for p in pics])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
