"""The click layer: options in, library calls out, errors to one line and an exit code."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path


import click

from . import __version__
from .defaults import DECODE_CHOICES, DEFAULT_MAX_MAP_SIDE, ENGINES, LIME_DEFAULTS, LIME_HIDE_MODES, default_workers
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_SOME_FAILED, EXIT_USAGE, ExitCode, XaibatchError

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {int(c)}  {c.meaning}" for c in ExitCode)


class Failure(click.ClickException):
    """A one-line error with xaibatch's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def reported(fn):
    """Turn library errors (and OS errors such as a full disk) into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except XaibatchError as e:
            raise Failure(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise Failure("interrupted", EXIT_INTERRUPTED) from None
        except OSError as e:
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise Failure(f"{e.strerror or e}{where}", EXIT_RUNTIME) from None
        except click.ClickException:
            raise
        except Exception as e:
            if os.environ.get("XAIBATCH_DEBUG"):
                raise
            raise Failure(
                f"internal error: {type(e).__name__}: {e} (set XAIBATCH_DEBUG=1 for the traceback)", EXIT_RUNTIME
            ) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xaibatch")
def cli() -> None:
    """Explain an image classifier over whole folders: Grad-CAM, Guided Grad-CAM, LIME, and an HTML report.

    \b
    Quick start:
      xaibatch demo-data data/demo
      xaibatch run data/demo/test --method gradcam
    """


def _checked(parse, param_hint: str | None = None):
    """Run a parameter check of the library; its UsageError becomes click's (one line, exit 2)."""
    try:
        return parse()
    except XaibatchError as e:
        raise click.BadParameter(str(e), param_hint=param_hint) from None


def _heavy_import(load):
    """Import what a command needs (torch and the methods: seconds); a Ctrl-C meanwhile is exit 5 in one line."""
    try:
        return load()
    except KeyboardInterrupt:
        raise Failure("interrupted while starting", EXIT_INTERRUPTED) from None


# The built-in methods, checked without importing the registry (torch, timm: seconds), so that a cron re-run
# with nothing to compute starts in a fraction of a second; tests/test_startup.py holds this to the registry.
BUILTIN_METHODS = ("gradcam", "guided-gradcam", "lime")


def _known_methods(names):
    """Each name resolves to a method (the registry, with its close matches when one does not)."""
    from .method_specs import is_library_method

    if all(m in BUILTIN_METHODS or is_library_method(m) for m in names):
        return list(names)
    method_class = _heavy_import(lambda: __import__("xaibatch.methods", fromlist=["method_class"]).method_class)
    return [m for m in names if method_class(m)]


def _method_options(values, methods):
    if not values:
        return {}
    method_options = _heavy_import(lambda: __import__("xaibatch.methods.options", fromlist=["x"]).method_options)
    return method_options(values, methods)


def _faith_config(steps, baseline, batch_size):
    from .evaluation.faithfulness import FaithConfig  # torch: only when --faithfulness is asked for

    return FaithConfig(steps, baseline, chunk=max(64, 4 * (batch_size or 32)))


def _option(*decls, **attrs):
    """An option that several commands share: its name, type and metavar here; each command gives its help and
    may override the rest (a default of its own)."""

    def factory(help: str, **override):
        return click.option(*decls, **{**attrs, **override}, help=help)

    return factory


def _stacked(*options):
    """Several option decorators as one, in the order given (the order --help lists them)."""

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


device_option = _option("--device", default="auto", show_default=True)
batch_size_option = _option("--batch-size", type=click.IntRange(1))
workers_option = _option("--workers", type=click.IntRange(0))
seed_option = _option("--seed", type=int, default=0, show_default=True)
methods_option = _option(
    "--method",
    "-m",
    "methods",
    multiple=True,
    show_default=True,
    callback=lambda ctx, p, v: _checked(lambda: _known_methods(v)),
)
# The model: run and serve take all of these, sanity --model, --checkpoint and --arch, train and bench --arch and
# --image-size.
arch_option = _option("--arch")
model_option = _option("--model", "model_spec", metavar="SPEC")
checkpoint_option = _option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False))
image_size_option = _option("--image-size", type=click.IntRange(8, 4096))


def model_options(help: dict[str, str]):
    """run's and serve's model options, with each command's help (keyed by the option's parameter name)."""
    return _stacked(
        arch_option(help["arch"]),
        model_option(help["model_spec"]),
        checkpoint_option(help["checkpoint"]),
        click.option("--classes", metavar="A,B,...", help=help["classes"]),
        click.option("--positive-class", metavar="NAME", help=help["positive_class"]),
        click.option("--threshold", type=click.FloatRange(0, 1), metavar="T", help=help["threshold"]),
        image_size_option(help["image_size"]),
        click.option("--target-layer", help=help["target_layer"]),
    )


RUN_MODEL_HELP = {
    "arch": "timm model name of a plain state_dict checkpoint (e.g. --arch resnet18).",
    "model_spec": "Your own model: FILE.py:FACTORY or module.path:FACTORY (runs that code: trusted code only), "
    "torchvision:NAME or timm:NAME (e.g. --model examples/cifake_cnn.py:build).",
    "checkpoint": "Weights: xaibatch's format or a plain state_dict (e.g. --checkpoint models/cifake.pt). "
    "Default: the bundled demo model.",
    "classes": "Class names in the model's output order (e.g. --classes FAKE,REAL). Default: the "
    "checkpoint's, else the folder's.",
    "positive_class": "Two classes: the one a one-logit head's sigmoid and --threshold are about "
    "(e.g. --positive-class FAKE). Default: the second in sorted order.",
    "threshold": "Two classes: predict the positive class when its probability is >= T (e.g. --threshold 0.7). "
    "Default: 0.5.",
    "image_size": "Model input size in pixels (e.g. --image-size 64). Default: the checkpoint's, else timm's.",
    "target_layer": "Layer for Grad-CAM (e.g. --target-layer layer3). Default: the deepest stage still at least 4x4.",
}
SERVE_MODEL_HELP = {
    "arch": "timm model name of a plain state_dict checkpoint, as for run.",
    "model_spec": "Your own model, as for run (trusted code only).",
    "checkpoint": "Weights, as for run. Default: the bundled demo model.",
    "classes": "Class names in the model's output order, as for run.",
    "positive_class": "Two classes: the one --threshold is about, as for run.",
    "threshold": "Two classes: as for run. Default: 0.5.",
    "image_size": "Model input size, as for run.",
    "target_layer": "Layer for Grad-CAM, as for run.",
}


def _model_fields(checkpoint, arch, model_spec, classes, positive_class, threshold, image_size, target_layer) -> dict:
    """The model options as RunOptions' and ServeOptions' fields."""
    return dict(
        checkpoint=checkpoint,
        arch=arch,
        model=model_spec,
        classes=_class_list(classes),
        positive_class=positive_class,
        threshold=threshold,
        image_size=image_size,
        target_layer=target_layer,
    )


class _RunCommand(click.Command):
    """With --log-json, an option error still ends with a JSON line (exit code 2)."""

    def parse_args(self, ctx, args):
        wants_json = "--log-json" in args  # before parsing: click consumes the list
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if wants_json:
                from .runlog import JsonLog

                JsonLog(sys.stdout).end(e.exit_code, error=e.format_message())
            raise


@cli.command(cls=_RunCommand, epilog=EXIT_CODES_HELP)
@click.argument("input_dir", type=click.Path(path_type=Path, file_okay=False))
@methods_option(
    "Explanation method; repeat for several (e.g. -m gradcam -m lime -m cam:scorecam). All of them: xaibatch methods.",
    default=("gradcam",),
    is_eager=True,
)
@click.option(
    "--method-option",
    "method_option",
    multiple=True,
    metavar="METHOD.OPTION=VALUE",
    callback=lambda ctx, p, v: _checked(lambda: _method_options(v, ctx.params.get("methods") or ())),
    help="An option of one method, repeatable (e.g. --method-option cam:scorecam.batch_size=32).",
)
@model_options(RUN_MODEL_HELP)
@click.option(
    "--target",
    type=click.Choice(["pred", "label"]),
    default="pred",
    show_default=True,
    help="Class each map explains: the prediction or the folder's label (e.g. --target label).",
)
@batch_size_option(
    "Images per batch on the device (e.g. --batch-size 128).",
    show_default="32 on the CPU; on a GPU 512/256/128 by input size",
)
@device_option("auto, cpu, cuda or cuda:N (e.g. --device cuda:1); auto picks CUDA when present.")
@workers_option(
    "DataLoader processes that decode images (e.g. --workers 8; 0 decodes in the main process).",
    show_default="CPU: CPUs - 1, at most 4; GPU: half the CPUs, at most 16",
)
@click.option(
    "--writers",
    type=click.IntRange(0),
    show_default="CPU: 0; GPU: the CPUs the workers leave, 1 to 8",
    help="Processes that encode and write the pictures (e.g. --writers 4; 0 writes in the main process).",
)
@click.option(
    "--decode",
    type=click.Choice(DECODE_CHOICES),
    default="auto",
    show_default=True,
    help="Where JPEGs are decoded and resized: device (nvJPEG on a GPU; the workers only read files), "
    "cpu (PIL in the workers), auto (cpu: on an H200 the device measured slower). Other formats, and "
    "LIME's batches, always use PIL (e.g. --decode device).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder (e.g. --out reports/cifake). Default: outputs/<parent>-<name> of INPUT_DIR "
    "(data/demo/test -> outputs/demo-test).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Write into --out even if it holds another input folder's report (which is replaced) or "
    "is a non-empty folder that is not an xaibatch output (its index.html, images/, assets/ and the "
    "report's other pages and folders are replaced). Never needed for re-runs.",
)
@click.option("--unlabeled", is_flag=True, help="Treat the folder as unlabeled even if it has class folders.")
@click.option(
    "--follow-links",
    is_flag=True,
    help="Follow symlinks to folders and files outside INPUT_DIR (skipped with a reason by default).",
)
@click.option(
    "--lime-samples",
    default=str(LIME_DEFAULTS["samples"]),
    show_default=True,
    metavar="N|auto",
    callback=lambda ctx, p, v: _lime_samples(v),
    help="LIME: perturbed images per image, or auto: rounds of 100 from 200 until the image's map is "
    "stable, at most --lime-samples-max (e.g. --lime-samples 500, --lime-samples auto).",
)
@click.option(
    "--lime-samples-max",
    type=click.IntRange(10),
    default=LIME_DEFAULTS["samples_max"],
    show_default=True,
    help="LIME with --lime-samples auto: at most this many per image (e.g. --lime-samples-max 4000).",
)
@click.option(
    "--lime-segments",
    type=click.IntRange(2),
    default=LIME_DEFAULTS["segments"],
    show_default=True,
    help="LIME: target number of SLIC superpixels (e.g. --lime-segments 30).",
)
@click.option(
    "--lime-hide",
    type=click.Choice(LIME_HIDE_MODES),
    default=LIME_DEFAULTS["hide"],
    show_default=True,
    help="LIME: how a switched-off superpixel is hidden (e.g. --lime-hide blur).",
)
@click.option(
    "--max-map-side",
    type=click.IntRange(0),
    default=DEFAULT_MAX_MAP_SIDE,
    show_default=True,
    help="Save .npy maps of images over N x N pixels scaled down to about N x N pixels (aspect kept; "
    "e.g. --max-map-side 0 for the image's own size).",
)
@seed_option("Seed for LIME's sampling (e.g. --seed 7).")
@click.option(
    "--template-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Your own Jinja templates, tried before the packaged ones (e.g. --template-dir my_templates).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary line, no list of failed images.")
@click.option(
    "--wait", is_flag=True, help="If another run holds --out, wait for it to finish instead of exiting with code 4."
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="With --wait: give up with exit code 4 after this long (e.g. --wait-timeout 3600). Implies --wait.",
)
@click.option(
    "--log-json",
    is_flag=True,
    help="Print JSON lines to stdout (start, plan, each failure, end with counts and exit code) "
    "instead of the summary line; for schedulers and log collectors.",
)
@click.option(
    "--faithfulness",
    is_flag=True,
    help="Score every map by deletion and insertion (RISE; about 2 x --faithfulness-steps forwards per "
    "image and method). Enabling it on an existing folder recomputes the maps that lack scores.",
)
@click.option(
    "--faithfulness-steps",
    type=click.IntRange(2, 1000),
    default=20,
    show_default=True,
    help="With --faithfulness: steps of each curve (e.g. --faithfulness-steps 10).",
)
@click.option(
    "--faithfulness-baseline",
    type=click.Choice(["blur", "zero", "mean"]),
    default="blur",
    show_default=True,
    help="With --faithfulness: what removed pixels become, and where insertion "
    "starts: the blurred image, black, or the image's mean colour.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=ENGINES[0],
    show_default=True,
    help="Where batches are computed: this process, or Ray Data actors on a Ray cluster (needs "
    'pip install "xaibatch[ray]"; INPUT_DIR and --out must be on a mount every node shares; '
    "e.g. --engine ray).",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    help="With --engine ray: the cluster to join (auto, HOST:PORT or ray://HOST:PORT). Default: "
    "$RAY_ADDRESS, else a Ray started on this machine for the run (e.g. --ray-address auto).",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(1),
    metavar="N",
    help="With --engine ray: actors in all, each loading the model once. Default: as many as the "
    "cluster's GPUs (or CPUs) allow (e.g. --ray-workers 8).",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(0),
    metavar="G",
    help="With --engine ray: GPUs per actor (e.g. 0.5 puts two on a GPU). Default: 1 when the cluster "
    "has GPUs, else 0.",
)
@click.option(
    "--cpus-per-worker",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="C",
    help="With --engine ray: CPUs per actor, also its image-decoding and torch threads (e.g. --cpus-per-worker 4).",
)
@reported
def run(
    input_dir,
    methods,
    method_option,
    target,
    batch_size,
    device,
    workers,
    writers,
    decode,
    out,
    replace,
    unlabeled,
    follow_links,
    lime_samples,
    lime_samples_max,
    lime_segments,
    lime_hide,
    max_map_side,
    seed,
    template_dir,
    quiet,
    wait,
    wait_timeout,
    log_json,
    faithfulness,
    faithfulness_steps,
    faithfulness_baseline,
    engine,
    ray_address,
    ray_workers,
    gpus_per_worker,
    cpus_per_worker,
    **model,  # model_options: --arch, --model, --checkpoint, ... (see _model_fields)
):
    """Explain every image under INPUT_DIR and write maps plus an HTML report.

    \b
    Examples:
      xaibatch run data/CIFAKE/test --method gradcam
      xaibatch run data/CIFAKE/test -m gradcam -m guided-gradcam -m lime --out reports/cifake
      xaibatch run photos/ --arch resnet18 --checkpoint my.pt --image-size 224 --device cuda
      xaibatch run data/CIFAKE/test --model examples/cifake_cnn.py:build --checkpoint cnn.pt --threshold 0.7

    \b
    Re-runs are incremental: unchanged images (same size and mtime, or same
    sha256) with unchanged settings are skipped; new and changed images are
    computed; images gone from INPUT_DIR leave the report and their files are
    deleted. One run per --out at a time (see --wait). Not on a terminal there is
    no progress bar: once the first batches are done a line estimates the time
    left, then a progress line follows about every minute (JSON "progress"
    events with --log-json; none with -q), and one summary line at the end.
    """
    from .pipeline import RayOptions, RunOptions, default_out
    from .pipeline import run as run_pipeline
    from .errors import exit_code_for
    from .runlog import JsonLog

    out = out or default_out(input_dir)
    jlog = JsonLog(sys.stdout) if log_json else None
    human = not quiet and not log_json
    if jlog:
        jlog.start(
            pid=os.getpid(), input_dir=str(input_dir), out_dir=str(out), methods=list(methods), version=__version__
        )
    opts = RunOptions(
        input_dir=input_dir,
        out_dir=out,
        methods=list(methods),
        **_model_fields(**model),
        target=target,
        batch_size=batch_size,
        device=device,
        workers=workers,
        writers=writers,
        decode=decode,
        labeled=False if unlabeled else None,
        follow_links=follow_links,
        max_map_side=max_map_side,
        method_options={
            **method_option,
            "lime": {
                "samples": lime_samples,
                "segments": lime_segments,
                "hide": lime_hide,
                "samples_max": lime_samples_max,
                **method_option.get("lime", {}),
            },
        },
        seed=seed,
        template_dir=template_dir,
        progress=human and sys.stdout.isatty() and sys.stderr.isatty(),
        heartbeat=0.0 if quiet else PROGRESS_EVERY_S,
        wait=wait,
        wait_timeout=wait_timeout,
        on_event=jlog,
        replace=replace,
        faithfulness=_faith_config(faithfulness_steps, faithfulness_baseline, batch_size) if faithfulness else None,
        engine=engine,
        ray=RayOptions(ray_address, ray_workers, gpus_per_worker, cpus_per_worker),
    )
    try:
        result = run_pipeline(opts, log=(lambda s: None) if quiet else (lambda s: click.echo(s, err=True)))
    except BaseException as e:  # the summary of an interrupted run, the JSON end line of any failure
        partial = getattr(e, "result", None)
        if partial is not None and human:
            _list_failures(partial.failed)
            click.echo(partial.summary_line())
        if jlog:
            jlog.end(exit_code_for(e), partial, error=str(e) or type(e).__name__)
        raise
    code = EXIT_SOME_FAILED if result.failed else EXIT_OK
    if human:
        _list_failures(result.failed)
        click.echo(result.summary_line())
    if jlog:
        jlog.end(code, result)
    sys.exit(code)


PROGRESS_EVERY_S = 60.0  # off a terminal, a progress line (or a JSON event) this often


def _lime_samples(text: str) -> int | str:
    """--lime-samples: a count of at least 10, or auto."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < 10:
        raise click.BadParameter(f"{text!r} is not a count of at least 10 nor auto", param_hint="--lime-samples")
    return n


def _class_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names):
        raise click.BadParameter("at least two comma-separated names, e.g. FAKE,REAL", param_hint="--classes")
    return names


def _list_failures(failed: list[tuple[str, str]], limit: int = 20) -> None:
    if not failed:
        return
    click.echo(f"xaibatch: {len(failed)} image(s) could not be read:", err=True)
    from .scan import printable

    for rel, reason in failed[:limit]:  # names quoted: a newline or an ANSI code in one cannot forge log lines
        click.echo(f"  {printable(rel)}: {printable(reason)}", err=True)
    if len(failed) > limit:
        click.echo(f"  ... and {len(failed) - limit} more (all listed in the report)", err=True)


@cli.command()
@click.argument("data_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@arch_option("Any timm model name (e.g. --arch efficientnet_b0).", default="resnet18", show_default=True)
@image_size_option("Input size the model is trained at (e.g. --image-size 32).", default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True, help="Passes over the data.")
@batch_size_option("Images per step.", default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (one-cycle AdamW).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share held out for validation.")
@seed_option("Seed for the split, init and shuffling.")
@device_option("auto, cpu, cuda or cuda:N.")
@workers_option("DataLoader processes.", default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Checkpoint to write (e.g. --out models/cifake-resnet18.pt).",
)
@click.option(
    "--format",
    "save_format",
    type=click.Choice(["xaibatch", "state-dict"]),
    default="xaibatch",
    show_default=True,
    help="xaibatch's checkpoint, or a plain state_dict for run's --model timm:ARCH.",
)
@reported
def train(data_dir, arch, image_size, epochs, batch_size, lr, val_fraction, seed, device, workers, out, save_format):
    """Train a timm model from scratch on DATA_DIR (ImageFolder, or a folder with train/ and test/).

    \b
    Example:
      xaibatch train data/demo --arch resnet18 --image-size 64 --epochs 10 --out models/demo.pt
    """
    from .tools.train import train as train_model

    r = train_model(
        data_dir,
        arch,
        out,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        workers=workers,
        log=click.echo,
        save_format=save_format,
    )
    test = f", test accuracy {100 * r.test_accuracy:.2f}%" if r.test_accuracy is not None else ""
    click.echo(
        f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB) in {r.seconds:.0f}s: "
        f"val accuracy {100 * r.val_accuracy:.1f}%{test}"
    )


@cli.command()
@arch_option("timm model, randomly initialised (e.g. --arch resnet50 on a GPU).", default="resnet18", show_default=True)
@image_size_option("Generated images' and model input size (e.g. --image-size 224).", default=64, show_default=True)
@batch_size_option("Images per batch.", default=64, show_default=True)
@click.option(
    "--images",
    type=click.IntRange(2),
    default=1024,
    show_default=True,
    help="Generated images for Grad-CAM and Guided Grad-CAM.",
)
@click.option(
    "--lime-images",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Of those, how many LIME explains (LIME costs --lime-samples forwards per image).",
)
@click.option(
    "--lime-samples",
    type=click.IntRange(10),
    default=LIME_DEFAULTS["samples"],
    show_default=True,
    help="LIME: perturbed images per image, for xaibatch and the peers alike.",
)
@click.option(
    "--lime-batch-size",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="LIME: perturbed images per model call, for xaibatch and the peers alike; 0: the one "
    "LIME picks (lime.batch_size=auto: from free memory on CUDA, 256 on the CPU).",
)
@click.option("--classes", type=click.IntRange(2), default=2, show_default=True, help="Model outputs.")
@device_option("auto, cpu, cuda or cuda:N.")
@click.option(
    "--threads", type=click.IntRange(0), default=0, show_default=True, help="torch CPU threads (0: torch's default)."
)
@workers_option(
    "DataLoader processes of the end-to-end runs (as run's --workers).",
    default=default_workers,
    show_default="CPUs - 1, at most 4",
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Interleaved rounds after a warm-up; each figure is its fastest round.",
)
@click.option(
    "--only",
    default=",".join(("gradcam", "guided-gradcam", "lime")),
    show_default=True,
    help="Comma-separated methods to time, any of `xaibatch methods` (e.g. --only gradcam,lime or "
    "--only cam:scorecam); peers are timed for gradcam, guided-gradcam and lime.",
)
@click.option("--no-peers", is_flag=True, help="Leave out pytorch-grad-cam, captum and lime.")
@click.option("--markdown", is_flag=True, help="Print markdown tables (for the README).")
@click.option(
    "--memory",
    is_flag=True,
    help="Instead: peak RSS of a run over --memory-images generated 32x32 PNGs each (Grad-CAM, "
    "timm's test_resnet), each in a fresh process.",
)
@click.option(
    "--memory-images", default="2000,20000", show_default=True, help="With --memory: comma-separated folder sizes."
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Generate the files into this folder and keep them (default: a temporary folder).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@reported
def bench(
    arch,
    image_size,
    batch_size,
    images,
    lime_images,
    lime_samples,
    lime_batch_size,
    classes,
    device,
    threads,
    workers,
    repeats,
    only,
    no_peers,
    markdown,
    memory,
    memory_images,
    keep,
    quiet,
):
    """Time xaibatch end to end against the model's limits and pytorch-grad-cam, captum and lime.

    \b
    Examples:
      xaibatch bench                                   # resnet18 at 64x64 on the CPU
      xaibatch bench --arch resnet50 --image-size 224 --device cuda --images 1024 --lime-images 16
      xaibatch bench --only gradcam --markdown
      xaibatch bench --memory --memory-images 2000,20000
    """
    from .tools.bench import BenchOptions, format_memory, format_result, memory_check, run_bench

    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    if memory:
        try:
            counts = tuple(int(v) for v in memory_images.split(","))
        except ValueError:
            raise click.BadParameter("comma-separated integers, e.g. 2000,20000", param_hint="--memory-images")
        click.echo(format_memory(memory_check(counts, workers=workers, work_dir=keep, log=log), markdown))
        return
    wanted = tuple(m.strip() for m in only.split(",") if m.strip())
    if not wanted:
        raise click.BadParameter(f"name at least one method (got {only!r})", param_hint="--only")
    _checked(lambda: _known_methods(wanted), param_hint="--only")
    opts = BenchOptions(
        arch=arch,
        image_size=image_size,
        batch_size=batch_size,
        images=images,
        lime_images=lime_images,
        lime_samples=lime_samples,
        lime_batch_size=lime_batch_size,
        classes=classes,
        device=device,
        threads=threads,
        workers=workers,
        repeats=repeats,
        only=wanted,
        peers=not no_peers,
        work_dir=keep,
    )
    click.echo(format_result(run_bench(opts, log=log), markdown=markdown))


@cli.command("methods")
def methods_cmd():
    """List every explanation method: its library, how it batches, signed or not, its options and defaults.

    \b
    Examples:
      xaibatch methods
      xaibatch run photos/ -m cam:gradcam++ -m captum:IntegratedGradients \\
          --method-option captum:IntegratedGradients.n_steps=32
    """
    from .methods import list_methods

    for r in list_methods():
        opts = ", ".join(f"{k}={v}" for k, v in r.options.items()) or "-"
        click.echo(
            f"{r.name}\n    {r.title}; {r.library}; {r.batching}; {'signed' if r.signed else 'unsigned'}"
            f"\n    options: {opts}\n    use: {r.summary}"
        )


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--images",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Size of the fixed, seeded sample of the run's images (e.g. --images 32).",
)
@seed_option("Seed of the sample and the re-initialisation.")
@device_option("auto, cpu, cuda or cuda:N.")
@batch_size_option("Images per batch.", default=32, show_default=True)
@model_option(
    "The run's model, when it cannot be rebuilt from what the run recorded (a moved factory file): "
    "FILE.py:FACTORY, module.path:FACTORY, torchvision:NAME or timm:NAME."
)
@checkpoint_option("The run's weights, when they moved since the run (checked against the recorded sha256).")
@arch_option("The timm model of a plain state_dict given with --checkpoint.")
@reported
def sanity(out_dir, images, seed, device, batch_size, model_spec, checkpoint, arch):
    """Model-randomization sanity check of every method of the run in OUT_DIR (Adebayo et al., 2018).

    The run's model, layer and methods are rebuilt from what the run recorded (absolute paths, each
    method's options); --model/--checkpoint/--arch replace the model when its files moved.

    \b
    Example:
      xaibatch run data/demo/test -m gradcam -m guided-gradcam --out reports/demo
      xaibatch sanity reports/demo
    """
    from .evaluation.sanity import ModelOverride, run_sanity

    result = run_sanity(
        out_dir,
        n=images,
        seed=seed,
        device=device,
        batch_size=batch_size,
        log=lambda s: click.echo(s, err=True),
        override=ModelOverride(model_spec, checkpoint, arch),
    )
    for c in result["curves"]:
        click.echo(c["verdict"])


@cli.command(epilog=EXIT_CODES_HELP)
@methods_option(
    "A method the page offers; repeat for several (e.g. -m gradcam -m cam:scorecam). All of them: xaibatch methods.",
    default=BUILTIN_METHODS,
)
@model_options(SERVE_MODEL_HELP)
@device_option("auto, cpu, cuda or cuda:N.")
@click.option(
    "--lime-samples",
    type=click.IntRange(10, 5000),
    default=LIME_DEFAULTS["samples"],
    show_default=True,
    help="LIME: the samples slider's start, 10 to 5000 (e.g. --lime-samples 500).",
)
@seed_option("Seed for LIME's sampling, as for run.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("outputs/serve"),
    show_default=True,
    help="Flagged images go to OUT/flagged/<label>/; a report in OUT offers its "
    "images and links to their pages (e.g. --out reports/cifake).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The app has no login: another host (e.g. 0.0.0.0) lets anyone who "
    "reaches it use the model, read the report in OUT and write into OUT/flagged.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=7860,
    show_default=True,
    help="Port to listen on (e.g. --port 8080).",
)
@reported
def serve(methods, device, lime_samples, seed, out, host, port, **model):  # **model: model_options
    """A local web page: upload an image, see its prediction and maps, flag wrong predictions.

    \b
    Examples:
      xaibatch serve
      xaibatch serve --checkpoint models/cifake.pt --out reports/cifake --port 8080

    \b
    Needs the extra: pip install "xaibatch[serve]". Flagged images land in
    OUT/flagged/<label>/; xaibatch run OUT/flagged reports them like any folder.
    """
    try:
        import gradio  # noqa: F401  (the optional extra; seconds to import, and needed right after)
    except ImportError:
        raise Failure('xaibatch serve needs Gradio: pip install "xaibatch[serve]"', EXIT_USAGE) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"xaibatch serve: warning: listening on {host}; the app has no login, anyone who reaches it "
            f"can use the model, read the report in {out} and write into {out}/flagged",
            err=True,
        )
    from .serve.app import launch
    from .serve.core import ServeOptions, Service

    service = Service(
        ServeOptions(
            out=out,
            methods=list(methods),
            **_model_fields(**model),
            device=device,
            seed=seed,
            lime_samples=lime_samples,
            method_options={"lime": {"samples": lime_samples}},
        )
    )
    launch(service, host=host, port=port, log=lambda s: click.echo(s, err=True))


@cli.command("demo-data")
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--train-per-class",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Training images per class (e.g. --train-per-class 200).",
)
@click.option("--test-per-class", type=click.IntRange(1), default=250, show_default=True, help="Test images per class.")
@seed_option("Same seed, same files.")
@reported
def demo_data(out_dir, train_per_class, test_per_class, seed):
    """Write a CIFAKE-style 32x32 demo set with ground-truth masks of the fake regions.

    \b
    Example:
      xaibatch demo-data data/demo && xaibatch run data/demo/test
    """
    from .tools.demo import write_demo_data

    n = write_demo_data(out_dir, train_per_class, test_per_class, seed)
    click.echo(f"wrote {n.train} train and {n.test} test images to {out_dir}")


def main() -> None:
    # Before anything loads torch's OpenMP runtime (GNU libgomp, in the Linux wheels, reads this once): an idle
    # OpenMP thread spins 10k rounds instead of 300k before it sleeps, so the writer thread and the DataLoader
    # workers get the cores the model is not using instead of losing them to spinning threads. On 2 CPUs a
    # Grad-CAM run is 15-25% faster end to end; batched and per-image compute alone do not change
    # (measured with `xaibatch bench`). A value already in the environment wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    try:
        cli(prog_name="xaibatch")
    except KeyboardInterrupt:  # outside a command (click's own parsing): still one line and exit 5
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
