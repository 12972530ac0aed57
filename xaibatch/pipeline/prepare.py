"""Load, scan and check everything that can fail before a file is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


from ..scan import Scan, listed, printable, scan
from .. import layout, targets
from ..model import heads
from ..defaults import default_batch_size, default_workers
from ..errors import InputError, UsageError
from ..model.layers import TargetLayer
from ..methods import Method, ModelContext, method_class
from ..methods.base import build_methods
from ..model.loading import LoadedModel, load_model, resolve_device, use_device
from ..model.user import inner_name
from .options import RunOptions, checkpoint_path


def class_names_for(model: LoadedModel, found: Scan) -> list[str]:
    """The model's class names, checked against the folder's classes when both exist.

    A folder class the model knows under another index, or under a name that differs only by case (or a model
    class whose folder is empty) is fine: ``found``'s labels are renumbered to the model's order
    (``Scan.numbered_by``, which matches folders to classes).
    """
    k = model.num_classes
    if model.class_names is not None:
        names = model.class_names
        if found.classes is not None and found.classes != names:
            _relabel(found, names)
        return names
    if found.classes is not None:
        if len(found.classes) != k and len(found.classes) + len(found.empty_classes) == k:
            _relabel(found, sorted(found.classes + found.empty_classes))  # empty class folders stay classes
        if len(found.classes) != k:
            empty = f" (and empty folder(s) {found.empty_classes})" if found.empty_classes else ""
            # a class folder that was not scanned (a link out of the input) is why, more often than the model
            not_scanned = [
                f"{printable(f.rel)}: {f.reason}"
                for f in found.skipped
                if f.kind == "folder" and "/" not in f.rel and f.rel != "."
            ]
            empty += f" (not scanned: {'; '.join(not_scanned)})" if not_scanned else ""
            head = " (one sigmoid logit: two classes)" if isinstance(model.module, heads.OneLogitHead) else ""
            # more outputs than folders: a subset of the model's classes (3 of ImageNet's 1000) is named by --classes
            subset = f"; name its {k} classes in output order with --classes" if k > len(found.classes) else ""
            raise InputError(
                f"the folder has {len(found.classes)} classes {listed(found.classes)}{empty} but the model has {k} "
                f"outputs{head}{subset}; check --checkpoint or pass --unlabeled"
            )
        return found.classes
    return [f"class_{i}" for i in range(k)]


def _relabel(found: Scan, names: list[str]) -> None:
    """Number ``found``'s labels by ``names`` (each class folder one of them: ``Scan.numbered_by``), in place."""
    numbered = found.numbered_by(names)
    found.images, found.classes, found.by_case = numbered.images, numbered.classes, numbered.by_case


def load_and_name(opts: RunOptions, found: Scan) -> tuple[LoadedModel, list[str]]:
    """Build the model (timm checkpoint or ``--model``), read one-logit heads as two classes, name the classes."""
    n_hint = len(opts.classes or found.classes or []) or None
    if opts.model is not None:
        if opts.arch is not None:
            raise UsageError("give --model or --arch, not both (--model timm:NAME is --arch NAME)")
        from ..model.user import load_user_model

        model = load_user_model(opts.model, opts.checkpoint, opts.image_size, n_hint)
    else:
        model = load_model(checkpoint_path(opts), opts.arch, opts.image_size, n_hint)
    if opts.mean is not None or opts.std is not None:  # the user's, over the checkpoint's and the model's own
        model.preprocess = model.preprocess.normalized_by(opts.mean, opts.std)
        # one alone leaves the other ImageNet's on a model that names none: still said (notices.py)
        model.norm_declared = model.norm_declared or (opts.mean is not None and opts.std is not None)
    one_logit = heads.adapt(model)
    if opts.classes is not None:
        if len(opts.classes) != model.num_classes or len(set(opts.classes)) != len(opts.classes):
            outputs = "one logit, read as two classes" if one_logit else f"{model.num_classes} outputs"
            raise UsageError(
                f"--classes {listed(opts.classes)}: {len(opts.classes)} names, but the model has {outputs}; give "
                "that many different names, in output order"
            )
        if model.class_names is not None and model.class_names != opts.classes:
            raise UsageError(
                f"--classes {listed(opts.classes)} differ from the checkpoint's {listed(model.class_names)}"
            )
        model.class_names = list(opts.classes)
    names = class_names_for(model, found)
    model.decision = heads.decision_for(names, opts.positive_class, opts.threshold, one_logit, model.probability)
    if one_logit and model.class_names is not None and model.decision.positive != 1:
        # the classes in output order say sigmoid(z) is P(second); --positive-class would read it as P(first)
        # and invert every prediction, label check and ROC curve without a word
        given = "--classes" if opts.classes is not None else "the checkpoint's classes"
        first, second = model.class_names
        raise InvertedLogit(
            f"--positive-class {first}: this one-logit model's sigmoid(z) is P({second}), the second of {given} "
            f"{first},{second}; if it is P({first}), give --classes {second},{first} (and no --positive-class)",
            (first, second),
        )
    heads.with_positive(model.module, model.decision)
    return model, names


class InvertedLogit(UsageError):
    """``--positive-class`` naming the first of a one-logit model's classes (in output order): read so, its sigmoid
    would be inverted. Refused; ``classes`` (first, second) lets a sanity check of an older run say what to do."""

    def __init__(self, message: str, classes: tuple[str, str]) -> None:
        super().__init__(message)
        self.classes = classes


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
    batch_size: int = 32  # RunOptions' value, or the device's default (defaults.py)
    workers: int = 0
    classes_from: str = "model"  # where ``names`` came from (classes_from)


def classes_from(opts: RunOptions, model: LoadedModel, found: Scan) -> str:
    """Where load_and_name took the class names from (RunConfig.classes_from): "option" (--classes), "model" (the
    checkpoint's), "folders" (the sorted class folders: a model that names none, its order assumed) or "numbered"
    (class_0, class_1, ...: neither)."""
    if opts.classes is not None:
        return "option"
    if model.class_names is not None:
        return "model"
    return "folders" if found.classes is not None else "numbered"


def prepare(
    opts: RunOptions,
    found: Scan | None = None,
    load: Callable[[RunOptions, Scan], tuple[LoadedModel, list[str]]] = load_and_name,
) -> Prepared:
    """Load, scan and check everything that can fail before any file is written. ``load``: the model step
    (:func:`load_and_name`, or a caller's wrapper of it that words that step's errors its own way)."""
    if not opts.methods:
        raise UsageError("give at least one --method")
    if opts.template_dir is not None:
        from ..report import check_templates

        check_templates(opts.template_dir)  # before any compute: the report is written last
    classes = {m: method_class(m) for m in opts.methods}  # an unknown name: UsageError with the close matches
    try:
        layout.check_method_dirs(classes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if problem := targets.problem(opts.target):
        raise UsageError(problem)
    device = resolve_device(opts.device)
    found = found or scan(opts.input_dir, opts.labeled, opts.follow_links, opts.out_dir)
    if opts.target != "pred" and found.classes is None:
        raise UsageError(f"--target {opts.target} needs a labeled folder (ImageFolder layout); use --target pred")
    model, names = load(opts, found)
    use_device(device)
    model.module.to(device).eval()
    layer_name = inner_name(opts.target_layer, model.layer_prefix)  # "module.layer2" of a DataParallel: layer2
    ctx, methods = build_methods(
        dict.fromkeys(opts.methods), model.module, model.preprocess, device, layer_name, opts.method_options, opts.seed
    )
    layer = ctx.layer
    batch_size = opts.batch_size or default_batch_size(device.type, model.input_size)
    workers = default_workers(device.type) if opts.workers is None else opts.workers
    named = classes_from(opts, model, found)
    return Prepared(device, found, model, names, layer, ctx, methods, batch_size, workers, named)
