"""Load, scan and check everything that can fail before a file is written."""

from __future__ import annotations

from dataclasses import dataclass

import torch


from ..scan import Scan, scan
from ..errors import InputError, UsageError
from ..layers import TargetLayer, find_target_layer
from ..methods import Method, ModelContext, create_method, method_class
from ..model import LoadedModel, load_model, resolve_device
from .options import RunOptions
from .setup import checkpoint_path


def class_names_for(model: LoadedModel, found: Scan) -> list[str]:
    """The model's class names, checked against the folder's classes when both exist."""
    k = model.num_classes
    if model.class_names is not None:
        names = model.class_names
        if found.classes is not None and found.classes != names:
            raise InputError(
                f"folder classes {found.classes} do not match the model's classes {names}; "
                "rename the folders or pass --unlabeled"
            )
        return names
    if found.classes is not None:
        if len(found.classes) != k:
            raise InputError(
                f"the folder has {len(found.classes)} classes {found.classes} but the model has {k} outputs; "
                "check --checkpoint or pass --unlabeled"
            )
        return found.classes
    return [f"class_{i}" for i in range(k)]


@dataclass
class Prepared:
    """Everything a run needs that could fail: checked before the first write."""

    device: torch.device
    found: Scan
    model: LoadedModel
    names: list[str]  # class names
    layer: TargetLayer | None  # the CAM layer, when a method needs one
    ctx: ModelContext
    methods: list[Method]


def prepare(opts: RunOptions, found: Scan | None = None) -> Prepared:
    """Load, scan and check everything that can fail before any file is written."""
    if not opts.methods:
        raise UsageError("give at least one --method")
    classes = {m: method_class(m) for m in opts.methods}  # an unknown name: UsageError with the close matches
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if opts.target not in ("pred", "label"):
        raise UsageError("--target must be pred or label")
    device = resolve_device(opts.device)
    found = found or scan(opts.input_dir, opts.labeled)
    if opts.target == "label" and found.classes is None:
        raise UsageError("--target label needs a labeled folder (ImageFolder layout); use --target pred")
    model = load_model(checkpoint_path(opts), opts.arch, opts.image_size, len(found.classes or []) or None)
    names = class_names_for(model, found)
    model.module.to(device).eval()
    methods_wanted = list(dict.fromkeys(opts.methods))
    needs_layer = any(classes[m].needs_activations or classes[m].needs_layer for m in methods_wanted) or (
        opts.target_layer is not None)
    layer = find_target_layer(model.module, model.input_size, opts.target_layer) if needs_layer else None
    ctx = ModelContext(
        model=model.module, layer=layer, input_size=model.input_size, mean=model.mean, std=model.std, device=device
    )
    methods = [
        create_method(m, ctx, **{**({"seed": opts.seed} if classes[m].takes_seed else {}),
                                 **opts.method_options.get(m, {})})
        for m in methods_wanted
    ]
    return Prepared(device, found, model, names, layer, ctx, methods)
