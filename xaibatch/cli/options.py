"""The options several commands share, each defined once (name, type, metavar; each command gives its help), and
option groups: options that reach a command as one typed object."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import click

from ..defaults import IMAGE_SIDES, device_spec_problem, workers_problem
from ..method_specs import BUILTIN_OPTIONS, check_method_names, check_options_lightly, collect_method_options
from ..preprocess import channel_values
from .boundary import checked

# Method names and options are checked without importing the registry (torch, timm: seconds), from method_specs'
# tables, so that a cron re-run with nothing to compute starts in a fraction of a second and a typo answers at
# once; tests/test_startup.py holds the tables to the registry.
BUILTIN_METHODS = tuple(BUILTIN_OPTIONS)


class Number(click.FloatRange):
    """A number in a range: click's FloatRange lets NaN through (every comparison with it is false), and a NaN
    threshold, learning rate or timeout fails later, after the imports, or never. ``finite``: inf refused too (a
    count of CPUs or GPUs: inf was refused only once a Ray had started, 10 s later)."""

    def __init__(self, *args, finite: bool = False, **kw) -> None:
        super().__init__(*args, **kw)
        self.finite = finite

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        if self.finite and math.isinf(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def non_empty(ctx, param, value):
    """A click callback: "" refused (an unset variable in a cron line, ``--ray-address "$HEAD"``, meant the default
    without a word)."""
    if isinstance(value, str) and not value.strip():
        raise click.UsageError(f"{param.opts[0]} is empty; give a value or leave the option out", ctx)
    return value


def channels(ctx, param, value):
    """A click callback: --mean, --std as three floats (preprocess.channel_values: one number or three)."""
    if value is None:
        return None
    try:
        return channel_values(param.opts[0], value)
    except ValueError as e:
        raise click.UsageError(str(e), ctx) from None


class Workers(click.IntRange):
    """--workers: 0 or more, and not past what this host's CPUs can use (defaults.workers_problem): a slip such as
    --workers 1000 answers at once instead of forking a thousand processes."""

    def __init__(self) -> None:
        super().__init__(min=0)

    def convert(self, value, param, ctx):
        workers = super().convert(value, param, ctx)
        if problem := workers_problem(workers):
            raise click.UsageError(problem, ctx)
        return workers


class NonEmptyPath(click.Path):
    """click's Path, refusing "": pathlib reads it as the current folder, so an unset variable in a cron line
    (``xaibatch run "$DIR"``) would scan, or write into, whatever folder the job starts in. ``what``: what to give
    instead, when not the default's words."""

    def __init__(self, *args, what: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.what = what

    def convert(self, value, param, ctx):
        name = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        if isinstance(value, (str, bytes)) and not value:
            what = self.what or ("a file" if not self.dir_okay else "a folder, or . for the current one")
            raise click.UsageError(f"{name} is empty; give {what}", ctx)
        if not self.dir_okay and isinstance(value, str) and value.endswith("/"):
            # pathlib drops the slash: train --out models/ wrote a checkpoint named "models"
            raise click.UsageError(f"{name} {value} ends with /, a folder; give a file (e.g. {value}model.pt)", ctx)
        return super().convert(value, param, ctx)


def known_methods(values):
    """Each name is a method's (method_specs: no torch), else one line with the close matches; a value may hold
    several, comma-separated (``-m gradcam,lime`` is ``-m gradcam -m lime``: no method name has a comma)."""
    return check_method_names(name.strip() for value in values for name in value.split(",") if name.strip())


def method_options(values, methods):
    """--method-option, parsed and checked against the methods it names (method_specs: no torch)."""
    return collect_method_options(values or (), methods, check_options_lightly)


def _option(*decls, **attrs):
    """An option that several commands share: its name, type and metavar here; each command gives its help and
    may override the rest (a default of its own)."""

    def factory(help: str, **override):
        return click.option(*decls, **{**attrs, **override}, help=help)

    return factory


def stacked(*options):
    """Several option decorators as one, in the order given (the order --help lists them)."""

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def grouped(name: str, cls, *options):
    """``options`` as one decorator whose values reach the command as one ``cls`` object, as its parameter
    ``name`` (``cls`` is a dataclass whose fields are the options' parameter names)."""
    fields = [f.name for f in dataclasses.fields(cls)]

    def decorate(fn):
        @functools.wraps(fn)
        def command(*args, **kwargs):
            kwargs[name] = cls(**{f: kwargs.pop(f) for f in fields})
            return fn(*args, **kwargs)

        return stacked(*options)(command)

    return decorate


def _device_form(ctx, param, value):
    """--device's form (auto, cpu, cuda, cuda:N) as click parses it: one line at once, before torch loads."""
    if value is not None and (problem := device_spec_problem(value)):
        raise click.UsageError(problem, ctx)
    return value


device_option = _option("--device", default="auto", show_default=True, callback=_device_form)
batch_size_option = _option("--batch-size", type=click.IntRange(1))
workers_option = _option("--workers", type=Workers())
seed_option = _option("--seed", type=int, default=0, show_default=True)
quiet_option = _option("--quiet", "-q", is_flag=True)  # only Error: lines (boundary.notes)
# run, report, sanity: queue behind the command that holds the output folder (lock.OutputLock.acquire)
wait_option = _option("--wait", is_flag=True)
wait_timeout_option = _option("--wait-timeout", type=Number(0), metavar="SECONDS")
methods_option = _option(
    "--method",
    "-m",
    "methods",
    multiple=True,
    show_default=True,
    callback=lambda ctx, p, v: checked(lambda: known_methods(v)),
)
# The model: run and serve take all of these, sanity --model, --checkpoint and --arch, train and bench --arch and
# --image-size.
arch_option = _option("--arch")
model_option = _option("--model", "model_spec", metavar="SPEC")
checkpoint_option = _option("--checkpoint", type=NonEmptyPath(path_type=Path, what="a file or a timm Hub folder"))
image_size_option = _option("--image-size", type=click.IntRange(*IMAGE_SIDES))


@dataclass(frozen=True)
class ModelArgs:
    """run's and serve's model options, as given."""

    arch: str | None
    model_spec: str | None
    checkpoint: Path | None
    classes: str | None
    positive_class: str | None
    threshold: float | None
    image_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    target_layer: str | None

    def fields(self) -> dict:
        """The model options as RunOptions' and ServeOptions' fields."""
        return dict(
            checkpoint=self.checkpoint,
            arch=self.arch,
            model=self.model_spec,
            classes=class_list(self.classes),
            positive_class=self.positive_class,
            threshold=self.threshold,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            target_layer=self.target_layer,
        )


def model_options(help: dict[str, str]):
    """run's and serve's model options, with each command's help (keyed by the option's parameter name); they
    reach the command as its ``model`` parameter (a ModelArgs)."""
    return grouped(
        "model",
        ModelArgs,
        arch_option(help["arch"]),
        model_option(help["model_spec"]),
        checkpoint_option(help["checkpoint"]),
        click.option("--classes", metavar="A,B,...", help=help["classes"]),
        click.option("--positive-class", metavar="NAME", help=help["positive_class"]),
        click.option("--threshold", type=Number(0, 1), metavar="T", help=help["threshold"]),
        image_size_option(help["image_size"]),
        click.option("--mean", metavar="R,G,B", callback=channels, help=help["mean"]),
        click.option("--std", metavar="R,G,B", callback=channels, help=help["std"]),
        click.option("--target-layer", callback=non_empty, help=help["target_layer"]),
    )


RUN_MODEL_HELP = {
    "arch": "timm model name of a plain state_dict or .safetensors checkpoint (e.g. --arch resnet18).",
    "model_spec": "Your own model: FILE.py:FACTORY or module.path:FACTORY (runs that code: trusted code only), "
    "torchvision:NAME or timm:NAME (e.g. --model examples/cifake_cnn.py:build).",
    "checkpoint": "Weights: xaibatch's format, timm train.py's model_best.pth.tar, a timm Hub folder (config.json "
    "and model.safetensors), or a plain state_dict or .safetensors file with --arch (e.g. --checkpoint "
    "models/cifake.pt). Default: the bundled demo model.",
    "classes": "Class names in the model's output order (e.g. --classes FAKE,REAL), or @FILE with one name a line "
    "(e.g. --classes @imagenet_classes.txt). Default: the checkpoint's, else the folder's.",
    "positive_class": "Two classes: the one a one-logit head's sigmoid and --threshold are about "
    "(e.g. --positive-class FAKE). Default: one logit: the second of --classes as given (else of the sorted "
    "folder names); two outputs: the second in sorted order.",
    "threshold": "Two classes: predict the positive class when its probability is >= T (e.g. --threshold 0.7). "
    "Default: 0.5.",
    "image_size": "Model input size in pixels (e.g. --image-size 64). Default: the checkpoint's, else the "
    "model's own (the img_size a timm ViT was built at, else timm's pretrained_cfg), else 224.",
    "mean": "The normalization the model was trained with, in units of pixels scaled to [0, 1]: one number or "
    "three (e.g. --mean 0.5 --std 0.5 for Normalize(0.5, 0.5); --mean 0 --std 1 for ToTensor alone). Default: the "
    "checkpoint's, else the model's own (timm's pretrained_cfg), else ImageNet's (0.485,0.456,0.406), which the run "
    "says.",
    "std": "See --mean. Default: the checkpoint's, else the model's own, else ImageNet's (0.229,0.224,0.225).",
    "target_layer": "Layer of the CAM methods (gradcam, guided-gradcam, cam:*; e.g. --target-layer layer3). "
    "Default: the deepest stage still at least 4x4.",
}
SERVE_MODEL_HELP = {
    "arch": "timm model name of a plain state_dict checkpoint, as for run.",
    "model_spec": "Your own model, as for run (trusted code only).",
    "checkpoint": "Weights, as for run. Default: the bundled demo model.",
    "classes": "Class names in the model's output order, as for run.",
    "positive_class": "Two classes: the one --threshold is about, as for run.",
    "threshold": "Two classes: as for run. Default: 0.5.",
    "image_size": "Model input size, as for run.",
    "mean": "The model's normalization mean, as for run.",
    "std": "The model's normalization std, as for run.",
    "target_layer": "Layer of the CAM methods, as for run.",
}


def class_list(text: str | None) -> list[str] | None:
    """--classes: at least two comma-separated names, all different; or ``@FILE``, one name a line (blank lines
    skipped): ImageNet's 1000 names, whose own may hold commas ("tabby, tabby cat"), are a file, not a 10 KB
    argument."""
    if text is None:
        return None
    if text.startswith("@"):
        names = [n.strip() for n in _class_file(Path(text[1:])).splitlines() if n.strip()]
        if len(names) < 2:
            raise click.BadParameter(f"{text[1:]}: at least two names, one a line", param_hint="--classes")
    else:
        names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names):
        raise click.BadParameter(
            "at least two comma-separated names, e.g. FAKE,REAL (or @FILE: one a line)", param_hint="--classes"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # before the model loads: each output needs its own name
        raise click.BadParameter(f"{', '.join(twice)} given twice; one name per output", param_hint="--classes")
    return names


def _class_file(path: Path) -> str:
    """The text of --classes @FILE, or one line saying why not."""
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM (Windows' Notepad) is no part of the first name
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path}: not UTF-8 text", param_hint="--classes") from None
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror or e}", param_hint="--classes") from None


template_dir_option = click.option(  # run, report
    "--template-dir",
    type=NonEmptyPath(path_type=Path, file_okay=False, exists=True),
    help="Your own Jinja templates, tried before the packaged ones (e.g. --template-dir my_templates).",
)
