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

import itertools
import numbers
import os
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import targets as target_modes
from .bundle import Explanations, Frozen, MethodSetting, versions
from .preprocess import Preprocess, declared_size

__all__ = ["Explanations", "explain"]

INFERENCE_MODE = "explain() cannot run inside torch.inference_mode(): its methods need gradients; call it outside"
INFERENCE_TENSORS = (
    "the model's weights were made inside torch.inference_mode(), which autograd cannot use: "
    "build or load the model outside it"
)


def explain(
    model,
    images,
    methods: str | Sequence[str] = ("gradcam",),
    *,
    target: str | Sequence[int | str] = "pred",
    labels: Sequence[int | str] | None = None,
    classes: Sequence[str] | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    target_layer: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> Explanations:
    """Explain ``images`` with ``model``: one map per image and method, in a frozen :class:`Explanations`.

    ::

        out = xaibatch.explain(model, images, ["gradcam", "lime"], classes=["FAKE", "REAL"])
        out                      # in Jupyter: a grid of overlays (images x methods)
        out.overlay(0, "lime")   # a PIL image; out.heatmap(i, method): the map alone
        out.overlay(0, "lime", size="given")   # the report's overlay: over the image's display copy
        out.maps["gradcam"]      # (N, S, S) float32 CPU tensor; out.preds, out.probs, out.layer
        out.save("explained")    # a folder per image and a manifest.json; Explanations.load() reads it back

    Arguments:

    - ``model``: an ``nn.Module`` returning class logits ((N, classes), or (N, 1) / (N,) for one sigmoid
      logit), or the path of a checkpoint ``xaibatch run`` takes. A ``DataParallel`` or
      ``DistributedDataParallel`` is explained as the module it wraps, on one device (``out.layer`` named as in
      the wrapper: ``module.layer3``).
    - ``images``: a tensor (N, 3, H, W) or array (N, H, W, 3) (the other channel order too, when it is
      not 3 wide); one image ((3, H, W), (H, W, 3), a PIL image or a file path); or a list of any of
      these (files and PIL images read as a run reads a file: EXIF orientation applied). Pixels are uint8
      (0-255) or floats in [0, 1], before normalizing; others are refused, never clamped. Each image is
      stretched to ``input_size`` squared.
    - ``methods``: one name or a list (``xaibatch methods`` lists them: ``"gradcam"``, ``"lime"``,
      ``"cam:gradcam++"``, ``"captum:IntegratedGradients"``, ...).
    - ``target``: ``"pred"`` (the predicted class; any case, ``"pred, label"`` with spaces too, as ``--target``
      reads them), one class per image (index or name), or with
      ``labels`` ``"label"`` (the true class) or ``"pred,label"`` (the prediction, and for each
      misclassified image also its true class: maps ``"<method>@label"``).
    - ``labels``: the true class of each image (index or name).
    - ``classes``: the class names (default: a checkpoint's own, or timm's ``label_names``).
    - ``input_size``: the side S the model sees (default: a checkpoint's own, else the one the model
      declares, as a run takes it (``preprocess.declared_size``: a timm ViT's ``img_size``, else timm's
      ``pretrained_cfg``'s), else the first image's longer side, up to 1024 px: larger
      images need ``input_size``); the maps are (N, S, S)
      (``out.preprocess.image_size``).
    - ``mean``, ``std``: the normalization explain() applies, in units of pixels scaled to [0, 1], one number or
      three (R, G, B) (default: a checkpoint's own, else timm's ``pretrained_cfg``, else ImageNet's).
    - ``target_layer``: the CAM layer's name (``model.named_modules()``; default: found from the model).
    - ``device``: ``"auto"`` runs where the module's parameters are; another device is refused (it is
      never moved: call ``model.to(...)`` first). A checkpoint path is loaded onto it (auto: the GPU
      when there is one).
    - ``batch_size``: images per model batch. A batch that does not fit in memory (the GPU's, or the host's)
      is explained in halves, and the later ones in parts of the size that fitted; the maps are those of that
      smaller batch_size, and a :class:`xaibatch.errors.BatchSplitWarning` says which size to pass.
    - ``seed``: the seed of the methods that draw random numbers (LIME): equal calls give equal maps.
    - ``method_options``: per method, its options by name, as ``xaibatch methods`` lists them:
      ``{"lime": {"samples": 200}, "captum:IntegratedGradients": {"n_steps": 32}}``.

    Returns an :class:`Explanations` (tensors on the CPU, indexed like ``images``). Bad input raises
    :class:`xaibatch.errors.UsageError` with a one-line message naming explain()'s keywords; a model whose
    forward raises, :class:`xaibatch.errors.ModelError` (a UsageError) saying your exception and where it was
    raised first, chained to it.

    Your module is handed back as it came: each submodule's training flag and each parameter's ``.grad``
    are restored and no hook stays, also when a method raises. One image alone that does not fit in memory
    raises :class:`xaibatch.errors.OneImageTooLarge`.
    """
    import torch

    from .errors import BatchSplitWarning, UsageError
    from .methods.explainer import Fitting, Split

    if torch.is_inference_mode_enabled():
        raise UsageError(INFERENCE_MODE)
    _check_numbers(input_size, mean, std, batch_size, seed)
    with _keyword_names():
        net, pre, described, dev, classes, prefix = _model_of(model, device, input_size, classes)
        from .model.borrowed import borrowed

        with borrowed(net), torch.enable_grad():
            if pre is None:  # a given size, else the model's declared one (as a run's), else the images' (below)
                sized = input_size or declared_size(net)
                pre = Preprocess.for_model(net, sized).normalized_by(mean, std) if sized else None
                x, sizes, shown = _as_uint8_batch(images, pre)
                # no size given: the images'
                pre = pre or Preprocess.for_model(net, int(x.shape[-1])).normalized_by(mean, std)
            else:  # a checkpoint's: the given mean and std over its own, as a run's --mean and --std
                pre = pre.normalized_by(mean, std)
                x, sizes, shown = _as_uint8_batch(images, pre)
            if x.shape[0] == 0:
                raise UsageError("no images to explain")
            mode, given = _target_mode(target, labels, x.shape[0], classes)
            names = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
            request = Request(
                names, mode, given, classes, described, batch_size, target_layer, method_options or {}, seed, prefix
            )
            splits: list[Split] = []
            result = _explain(net, x, (sizes, shown), pre, dev, request, Fitting(dev, splits.append, caller="explain"))
    if splits:  # once, after the last batch: the first batch that did not fit, and the size that did
        split = Split(splits[0].batch, splits[-1].size, splits[-1].memory)
        warnings.warn(
            f"explain(): {split.text(dev, f'next time pass batch_size={split.size}', done=True)}",
            BatchSplitWarning,
            stacklevel=2,
        )
    return result


# What the loader and the layer search say in the CLI's words (they serve ``xaibatch run`` too), as explain()'s
# keywords: the exact phrases first, then each flag.
_KEYWORDS = (
    (
        r"say which timm model it is with --arch NAME",
        "explain() loads checkpoints that name their model (xaibatch's, timm train.py's, a timm Hub folder); "
        "build the model, load_state_dict() it and pass the module",
    ),
    (  # a folder with weights but no config.json (formats.hub_folder)
        r"give the weights file and its timm model, e\.g\. --checkpoint (\S+) --arch NAME",
        r"build its timm model, load_state_dict() \1 and pass the module",
    ),
    (  # a transformers folder (formats.hub_folder)
        r"load it in your own factory and pass --model FILE\.py:FACTORY \(README: Your own model\)",
        "load it yourself (transformers) and pass the module",
    ),
    (
        r"raise --image-size or name a layer with --target-layer",
        "pass a larger input_size= or name a layer with target_layer=",
    ),
    (r"leave --image-size out", "leave input_size out"),  # a Hub ViT built at another size (loading._load_described)
    (r"use --device cpu or auto", "use device='cpu' or 'auto'"),
    (r"--device '([^']*)'", r"device='\1'"),
    (r"--device (\S+?):( |$)", r"device='\1':\2"),
    (r"--checkpoint (.+?): ", r"checkpoint \1: "),
    (r"--image-size ?", "input_size="),
    (r"--target-layer", "target_layer="),
)


@contextmanager
def _keyword_names():
    """Re-raise a one-line error that names a CLI flag (``--image-size``) with explain()'s keyword instead: a
    notebook has no flags."""
    import re

    from .errors import UsageError

    try:
        yield
    except UsageError as e:
        text = str(e)
        for pattern, words in _KEYWORDS:
            text = re.sub(pattern, words, text)
        if text == str(e):
            raise
        raise type(e)(text) from e.__cause__  # a forward's own exception stays chained: the user's traceback


def _check_numbers(input_size, mean, std, batch_size, seed) -> None:
    """Refuse explain()'s numeric keywords out of range in one line, as the CLI's ranges do: batch_size=0 raised
    range()'s ValueError deep in the explainer, a negative input_size PIL's, input_size=0 was taken as not given,
    a mean of two numbers raised a broadcasting error, and std=0 gave infinite input and meaningless maps."""
    from .defaults import IMAGE_SIDES, image_side_ok
    from .errors import UsageError
    from .preprocess import channel_values

    def whole(v) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if input_size is not None and not image_side_ok(input_size):
        lo, hi = IMAGE_SIDES
        raise UsageError(f"input_size must be a whole number from {lo} to {hi} (pixels), not {input_size!r}")
    if not (whole(batch_size) and batch_size >= 1):
        raise UsageError(f"batch_size must be a whole number of at least 1, not {batch_size!r}")
    if not whole(seed):
        raise UsageError(f"seed must be a whole number, not {seed!r}")
    for name, values in (("mean", mean), ("std", std)):
        if values is not None:
            try:
                channel_values(name, values)
            except ValueError as e:
                raise UsageError(str(e)) from None


def _model_of(model, device: str, input_size: int | None, classes: Sequence[str] | None):
    """(module, its Preprocess or None, how the result names it, its device, class names or None, the prefix of its
    layer names in ``model``) of explain()'s ``model``: a checkpoint path is loaded onto ``device``; a user's module
    stays where it is; a DataParallel's or DistributedDataParallel's is the module it wraps (``"module."``)."""
    import torch

    from .errors import UsageError

    if isinstance(model, (str, Path)):
        from .model.loading import load_model, resolve_device

        dev = resolve_device(device)
        loaded = load_model(Path(model), image_size=input_size)
        classes = classes if classes is not None else loaded.class_names
        return loaded.module.to(dev), loaded.preprocess, str(model), dev, classes, ""
    if isinstance(model, torch.nn.Module):
        from .model.user import unwrap_parallel

        wrapper = model
        model, prefix = unwrap_parallel(model)
        if any(t.is_inference() for t in itertools.chain(model.parameters(), model.buffers())):
            raise UsageError(INFERENCE_TENSORS)
        dev = _device_of(model, device)
        _check_float32(model)
        if classes is None:
            classes = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
        described = type(model).__name__ + (f" (the .module of a {type(wrapper).__name__})" if prefix else "")
        return model, None, described, dev, classes, prefix
    raise UsageError(f"model must be a torch.nn.Module or a checkpoint path, not {type(model).__name__}")


@dataclass(frozen=True)
class Request:
    """What explain() was asked for, checked: the methods, the target mode and labels, and the settings."""

    methods: list[str]
    mode: str  # targets.MODES
    labels: Any  # (N,) int64 or None
    classes: Sequence[str] | None
    model: str  # how the result names the model
    batch_size: int
    target_layer: str | None
    method_options: dict[str, dict[str, Any]]
    seed: int
    layer_prefix: str = ""  # "module.": the model was a DataParallel's (layers named as in the wrapper)


def _explain(net, x, given, pre: Preprocess, dev, req: Request, fitting) -> Explanations:
    """explain() once the module is borrowed and the images are the model's input; ``given``: each image's
    (width, height) and display copy; ``fitting``: the batch size that fits in memory
    (methods/explainer.Fitting), shared by the prediction's and the true class's batches."""
    from .errors import UsageError
    from .methods.base import first_segmenter
    from .methods.explainer import Explained, Explainer
    from .model.heads import count_outputs, wrap
    from .model.loading import check_patches

    if not req.methods:
        raise UsageError("choose at least one method")
    check_patches(net, "the model", pre.image_size, "input_size=")
    outputs = count_outputs(net, pre.image_size, "the model")
    net = wrap(net, outputs)  # as a run reads it: one logit as two classes, a softmax's log(p) as the logits
    classes = _checked_classes(req, max(outputs.count, 2))
    ctx, made = _make_methods(net, pre, dev, req)
    segmenter = first_segmenter(made)
    first = Explainer(made, ctx, target_modes.maps_target(req.mode))
    done = Explained.cat(list(first.explain_tensors(x, req.batch_size, req.labels, None, segmenter, fitting)))
    preds = done.probs.argmax(1)
    maps = {m: r.maps for m, r in done.methods.items()}
    info = {m: r.info for m, r in done.methods.items()}
    if target_modes.label_maps(req.mode):
        _add_label_maps(made, ctx, x, req.labels, preds, req.batch_size, segmenter, maps, info, fitting)
    return Explanations(
        maps=Frozen(maps),
        probs=done.probs,
        preds=preds,
        targets=target_modes.target_class(req.mode, preds, req.labels),
        info=Frozen(info),
        layer=req.layer_prefix + ctx.layer.name if ctx.layer else None,
        images=x,
        classes=classes,
        labels=req.labels,
        target=req.mode,
        methods=Frozen({m.name: MethodSetting(type(m).title, bool(m.signed), Frozen(m.config())) for m in made}),
        preprocess=pre,
        given_sizes=tuple(given[0]),
        seed=req.seed,
        device=str(dev),
        model=req.model,
        versions=Frozen(versions()),
        displays=tuple(given[1]),
    )


def _checked_classes(req: Request, k: int) -> tuple[str, ...] | None:
    """The class names as strings (None: not given), refused unless they and the labels fit ``k`` classes."""
    from .errors import UsageError

    if isinstance(req.classes, (str, bytes)):  # its letters were taken as the class names
        raise UsageError(f"classes must be a list of class names, not {_a(req.classes)}")
    classes = None if req.classes is None else tuple(str(c) for c in req.classes)
    if classes is not None and len(classes) != k:
        raise UsageError(f"{len(classes)} class names for a model with {k} classes")
    if req.labels is not None and ((req.labels < 0) | (req.labels >= k)).any():
        bad = int(req.labels[(req.labels < 0) | (req.labels >= k)][0])
        raise UsageError(f"class index {bad} out of range: the model has {k} classes (0..{k - 1})")
    return classes


def _make_methods(net, pre: Preprocess, dev, req: Request):
    """(the ModelContext, the methods made in it): the CAM layer is found only when a method needs it."""
    from .errors import UsageError
    from .methods.base import build_methods, method_class
    from .model.user import inner_name

    kinds = {m: method_class(m) for m in req.methods}
    options = _method_options(req.method_options, kinds)
    if req.target_layer is not None and not str(req.target_layer).strip():
        raise UsageError("target_layer is empty; give a layer's name, or None for the one xaibatch finds")
    name = inner_name(req.target_layer, req.layer_prefix)  # named in the wrapper: "module.layer2"
    return build_methods(req.methods, net, pre, dev, name, options, req.seed)


def _method_options(given: Any, kinds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's options, checked as ``--method-option`` is: a mapping of mappings, only for methods asked for,
    only options the method takes (an unknown one was silently ignored, or recorded as a setting; LIME's own
    ``seed`` raised "got multiple values for keyword argument 'seed'")."""
    from .errors import UsageError
    from .methods.base import check_options

    if not isinstance(given, Mapping):
        raise UsageError(f"method_options must be a dict of method -> {{option: value}}, not {_a(given)}")
    for name, opts in given.items():
        if name not in kinds:
            raise UsageError(
                f"method_options names {name!r}, which is not among the methods ({', '.join(kinds)}); "
                f"add it to methods="
            )
        if not isinstance(opts, Mapping):
            raise UsageError(f"method_options[{name!r}] must be a dict of option -> value, not {_a(opts)}")
        check_options(kinds[name], dict(opts))
    return {m: dict(given.get(m, {})) for m in kinds}


def _add_label_maps(made, ctx, x, labels, preds, batch_size, segmenter, maps, info, fitting) -> None:
    """``pred,label``: each method's map of the true class of the misclassified images (NaN for the others),
    under ``<method>@label``, computed as a run's label pass does (pipeline/labelmaps.py)."""
    import torch

    from .methods.explainer import Explained, Explainer

    wrong = [i for i in range(x.shape[0]) if target_modes.misclassified(int(labels[i]), int(preds[i]))]
    for m in made:
        maps[target_modes.label_key(m.name)] = torch.full_like(maps[m.name], float("nan"))
        info[target_modes.label_key(m.name)] = [None] * x.shape[0]
    if not wrong:
        return
    sel = torch.tensor(wrong)
    parts = Explainer(made, ctx, "label").explain_tensors(x[sel], batch_size, labels[sel], None, segmenter, fitting)
    for name, r in Explained.cat(list(parts)).methods.items():
        key = target_modes.label_key(name)
        maps[key][sel] = r.maps
        for n, i in enumerate(wrong):
            info[key][i] = r.info[n] if r.info else None


def _target_mode(target, labels, n: int, classes: Sequence[str] | None):
    """(the targets.MODES mode, the (N,) int64 labels or None) of explain()'s ``target`` and ``labels``."""
    from .errors import UsageError

    given = None if labels is None else _class_indices(labels, classes, "labels")
    if not isinstance(target, str):  # one class per image: explain those
        if given is not None:
            raise UsageError("give either target=[classes] or labels=[...] with target='label' or 'pred,label'")
        given, mode = _class_indices(target, classes, "target"), "label"
        what = "targets"
    elif target_modes.spelled(target) in target_modes.MODES:  # "PRED", "pred, label": as --target reads them
        mode, what = target_modes.spelled(target), "labels"
        if mode != "pred" and given is None:
            raise UsageError(f"target={mode!r} needs labels=[the true class of each image]")
    else:
        raise UsageError(
            f"target must be 'pred', 'label', 'pred,label' or one class (index or name) per image, not {target!r}"
        )
    if given is not None and given.shape[0] != n:
        raise UsageError(f"{given.shape[0]} {what} for {n} images")
    return mode, given


def _class_indices(values, classes: Sequence[str] | None, what: str):
    """(N,) int64 of one class per image, each an integer index or a name of ``classes``: a float label was
    truncated and a name reached torch (``too many dimensions 'str'``), so each is checked here."""
    import torch

    from .errors import UsageError

    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise UsageError(f"{what} must be a list with one class per image, not {_a(values)}")
    names = None if classes is None else [str(c) for c in classes]
    return torch.tensor([_class_index(v, names, f"{what}[{i}]") for i, v in enumerate(values)], dtype=torch.long)


def _class_index(v, names: list[str] | None, what: str) -> int:
    """One class given as an index (any integer, or a whole float) or as one of ``names`` (by case as a run's class
    folders and --positive-class are: an exact name, else the one class that differs from it only by case)."""
    from .errors import UsageError
    from .scan import named_class

    if getattr(v, "ndim", None) == 0:  # a numpy scalar, a 0-d array or tensor
        v = v.item()
    if isinstance(v, str):
        if names is None:
            raise UsageError(
                f"{what} is a class name ({v!r}) but the model's classes are not named: pass classes=[...]"
            )
        near = named_class(v, names)
        if len(near) > 1:
            raise UsageError(f"{what} is {v!r}, which matches the classes {' and '.join(near)} only by case")
        if not near:
            raise UsageError(f"{what} is {v!r}, not one of the classes: {', '.join(names)}")
        return names.index(near[0])
    if isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer()):
        return int(v)
    raise UsageError(f"{what} is {v!r}: a class is an integer index or a class name")


def _device_of(net, spec: str):
    """Where a user's module runs: where its parameters are; another ``device`` is refused (it is never moved)."""
    import torch

    from .errors import UsageError
    from .model.loading import resolve_device

    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    here = first.device if first is not None else torch.device("cpu")
    if here.type == "meta":  # failed at the first copy: "Cannot copy out of meta tensor; no data!"
        raise UsageError(
            "the model's weights are on the meta device (made without data): load them first "
            "(model.to_empty(device='cpu'), then load_state_dict(...))"
        )
    if spec.strip().lower() == "auto":
        return here
    want = resolve_device(spec)
    if want.type != here.type or (want.index is not None and want.index != here.index):
        raise UsageError(
            f"the model is on {here}, not {want}: explain() never moves your model; "
            f"call model.to({str(want)!r}) first, or leave device='auto'"
        )
    return here


def _check_float32(net) -> None:
    """Refuse a module with half, bfloat16 or double parameters in one line: the methods feed it float32 input
    (a float16 model, common on GPUs, failed deep in its first convolution), and explain() never converts it."""
    import torch

    from .errors import UsageError

    other = sorted({str(p.dtype) for p in net.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if other:
        raise UsageError(
            f"the model's parameters are {', '.join(other)}: explain() runs float32 models and never converts "
            "yours; pass model.float()"
        )


def _as_uint8_batch(images, pre: Preprocess | None):
    """(N, 3, S, S) uint8 CPU tensor from any of the accepted forms (see :func:`explain`), stretched to ``pre``'s
    size (None: the first image's longer side, for every form: a non-square batch kept its own H x W, and each
    method's maps came out another size), each image's (width, height) as given, and each image's display copy
    (:func:`data.display_copy`, as a run makes it: the picture its overlays are drawn over; a tensor's or array's
    own pixels as a PIL image)."""
    import numpy as np
    import torch
    from PIL import Image

    from .data import display_copy, full_size
    from .errors import UsageError

    if isinstance(images, (torch.Tensor, np.ndarray)):
        t = _uint8_images(images, "a tensor" if isinstance(images, torch.Tensor) else "an array")
        size = pre.image_size if pre is not None else _side_of_images(max(t.shape[2:], default=0))
        sizes = [(int(t.shape[3]), int(t.shape[2]))] * t.shape[0]
        same = tuple(t.shape[2:]) == (size, size)
        pre_t, inputs, shown = Preprocess(size), [], []
        for a in t:  # each image's own pixels as a PIL image, as a file of them would be decoded
            pic = Image.fromarray(a.permute(1, 2, 0).numpy())
            shown.append(display_copy(pic))  # a copy: the caller's tensor may change after the call
            if not same:
                # resized as a run's loader resizes a decoded file (PIL's BILINEAR), not by torch's antialiased
                # bilinear (--decode device's), which put pixels a grey level off and moved maps by up to 0.013
                inputs.append(pre_t.resize_image(pic))
        if same or t.shape[0] == 0:
            return t.contiguous(), sizes, shown
        return torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).contiguous(), sizes, shown
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    elif isinstance(images, (bytes, bytearray, memoryview)):  # its items are ints: "images[0] is an int"
        raise UsageError(
            f"images is {_a(images)}: pass a file path or a PIL image (PIL.Image.open(io.BytesIO(data))), "
            "not a file's bytes"
        )
    elif isinstance(images, Mapping) or not hasattr(images, "__iter__"):  # a dict's keys are no images
        raise UsageError(
            f"images must be a tensor, an array, a PIL image, a file path or a list of them, not {_a(images)}"
        )
    inputs, sizes, shown = [], [], []
    for i, item in enumerate(images):  # one decoded image at a time: 50 phone photos held 1.8 GB at once
        pic = _picture(item, f"images[{i}]")
        # A JPEG over 64 megapixels is decoded at 1/2 or 1/4 of its size: its own size is the file's, as a run
        # records it
        pre = pre or Preprocess(_side_of_images(max(full_size(pic))))
        inputs.append(pre.resize_image(pic))
        sizes.append(full_size(pic))
        shown.append(display_copy(pic))
        del pic
    if not inputs:
        raise UsageError("no images to explain")
    return torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).contiguous(), sizes, shown


MAX_IMAGES_SIDE = 1024  # without input_size=, the side the images' own size may set (a phone photo: 4032 px)


def _side_of_images(side: int) -> int:
    """The model's input side when no ``input_size`` was given: the images' longer side, up to MAX_IMAGES_SIDE. A
    photograph's side (4032 px: 16 million pixels a map, a forward of minutes and gigabytes) is refused, not run."""
    from .errors import UsageError

    if side > MAX_IMAGES_SIDE:
        raise UsageError(
            f"the images are {side} px on their longer side, and without input_size= the model would run at "
            f"{side} x {side} px: pass the size it was trained at (e.g. input_size=224)"
        )
    return side


def _picture(item, what: str):
    """One list item of ``images`` as an RGB PIL image (a file decoded as a run decodes it)."""
    import numpy as np
    import torch
    from PIL import Image

    from .data import load_image, to_rgb, upright
    from .errors import DecodeError, UsageError

    if isinstance(item, (str, Path)):
        if os.path.isdir(item):  # "not a regular file" said what it is not; never raises (a name too long)
            raise UsageError(
                f"{item} is a folder: explain() takes images; pass its files "
                f"(sorted(Path({str(item)!r}).glob('*.png'))), or explain a whole folder with xaibatch.run()"
            )
        try:
            return load_image(item)
        except DecodeError as e:  # its reason alone ("cannot read: ...") named no file
            raise UsageError(f"{item}: {e}") from None
    if isinstance(item, Image.Image):
        if 0 in item.size:
            raise UsageError(f"{what} is an image of no pixels ({item.width} x {item.height})")
        # as a run reads its file: EXIF orientation applied, 16 bits scaled, transparency over white
        return to_rgb(upright(item))
    if isinstance(item, (torch.Tensor, np.ndarray)):
        kind = "a tensor" if isinstance(item, torch.Tensor) else "an array"
        t = _uint8_images(item, kind)
        if t.shape[0] != 1:
            raise UsageError(
                f"{what} is {kind} of {t.shape[0]} images: give one image per list item, "
                f"or the {kind.split()[1]} itself"
            )
        return Image.fromarray(t[0].permute(1, 2, 0).numpy())
    raise UsageError(
        f"{what} is {_a(item)}: expected a file path, a PIL image, an (H, W, 3) array or a (3, H, W) tensor"
    )


# Float pixels this far outside [0, 1] round to the same uint8 as the nearest value inside: float error, not a
# range of its own (0-255, or normalized with a mean and std).
FLOAT_SLACK = 0.5 / 255


def _uint8_images(a, kind: str):
    """(N, 3, H, W) uint8 CPU tensor of a tensor or array of one image or a batch, channels first or last (a
    tensor's default first, an array's last); any other shape or range is refused, naming what was given."""
    import numpy as np
    import torch

    from .errors import UsageError

    shape = tuple(a.shape)
    try:
        t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a.detach().cpu()
    except TypeError:
        raise UsageError(f"{kind} of dtype {a.dtype} is no image: pass uint8 pixels or floats in [0, 1]") from None
    if t.dim() == 3:
        t = t[None]
    first, last = t.dim() == 4 and t.shape[1] == 3, t.dim() == 4 and t.shape[3] == 3
    if not (first or last):
        layouts = "(N, 3, H, W) or (N, H, W, 3) (one image: (3, H, W) or (H, W, 3))"
        if isinstance(a, np.ndarray):
            layouts = "(N, H, W, 3) or (N, 3, H, W) (one image: (H, W, 3) or (3, H, W))"
        raise UsageError(f"{kind} of images must be {layouts}, not {shape}")
    if last and (not first or isinstance(a, np.ndarray)):
        t = t.permute(0, 3, 1, 2)
    if t.shape[0] and 0 in t.shape[2:]:
        raise UsageError(f"{kind} of images of no pixels ({t.shape[2]} x {t.shape[3]}, height x width): {shape}")
    return _as_uint8(t).contiguous()


def _as_uint8(t):
    """uint8 pixels of integer (0-255) or float ([0, 1]) ones; others refused in one line, never clamped (the
    model would see other images than the caller's)."""
    import torch

    from .errors import UsageError

    instead = "pass uint8 pixels (0-255) or floats in [0, 1]"
    if t.dtype == torch.uint8 or t.numel() == 0:
        return t.to(torch.uint8)
    if t.dtype == torch.bool or t.is_complex():
        raise UsageError(f"images of {t.dtype} are no pictures: {instead}")
    if not t.is_floating_point():
        wide = t.double()  # torch has no min() of uint16/32/64 ("min_all" not implemented for 'UInt16')
        lo, hi = int(wide.min()), int(wide.max())
        if lo < 0 or hi > 255:
            raise UsageError(f"integer images must be in 0..255, these range from {lo} to {hi}: {instead}")
        return t.to(torch.uint8)
    f = t.float()
    if not torch.isfinite(f).all():
        raise UsageError(f"float images hold NaN or infinite values: {instead}")
    lo, hi = float(f.min()), float(f.max())
    if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
        raise UsageError(
            f"float images must be in [0, 1], these range from {lo:.4g} to {hi:.4g}: {instead} (0-255 floats: "
            "divide by 255), not normalized ones: explain() applies the model's mean/std itself"
        )
    return (f.clamp(0, 1) * 255).round().to(torch.uint8)


def _a(value) -> str:
    """``an int``, ``a list``: what a value is, for a message."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
