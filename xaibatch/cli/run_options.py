"""run's options, in groups that reach the command as typed objects (in the order --help lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..defaults import DECODE_CHOICES, DEFAULT_MAX_MAP_SIDE, FAITH_BASELINES, FAITH_STEPS
from ..engines import ENGINES
from .. import targets
from ..targets import MODES as TARGET_MODES
from ..defaults import LIME_DEFAULTS, LIME_HIDE_MODES
from ..errors import UsageError
from ..method_specs import check_lime_options
from .boundary import checked
from .options import (
    Number,
    wait_option,
    wait_timeout_option,
    NonEmptyPath,
    batch_size_option,
    device_option,
    grouped,
    method_options,
    methods_option,
    non_empty,
    quiet_option,
    workers_option,
)


@dataclass(frozen=True)
class ExplainArgs:
    """-m and --method-option."""

    methods: tuple[str, ...]
    method_option: dict[str, dict[str, Any]]


explain_options = grouped(
    "explain",
    ExplainArgs,
    methods_option(
        "Explanation method; repeat or separate with commas for several (e.g. -m gradcam,lime -m cam:scorecam). "
        "All of them: xaibatch methods.",
        default=("gradcam",),
        is_eager=True,
    ),
    click.option(
        "--method-option",
        "method_option",
        multiple=True,
        metavar="METHOD.OPTION=VALUE",
        callback=lambda ctx, p, v: checked(lambda: method_options(v, ctx.params.get("methods") or ())),
        help="An option of one method, repeatable (e.g. --method-option cam:scorecam.batch_size=32).",
    ),
)


def _target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--target as explain()'s target= reads it (targets.spelled): ``PRED``, ``'pred, label'`` are accepted."""
    mode = targets.spelled(value)
    if mode not in TARGET_MODES:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(map(repr, TARGET_MODES))}.")
    return mode


target_option = click.option(
    "--target",
    metavar=f"[{'|'.join(TARGET_MODES)}]",
    callback=_target,
    default=TARGET_MODES[0],
    show_default=True,
    help="Class each map explains: the prediction, the folder's label, or both for misclassified images "
    "(e.g. --target pred,label).",
)


@dataclass(frozen=True)
class ComputeArgs:
    """Where and in what portions the work runs."""

    batch_size: int | None
    device: str
    workers: int | None
    writers: int | None
    decode: str

    def fields(self) -> dict[str, Any]:
        """As RunOptions' fields."""
        return dict(
            batch_size=self.batch_size,
            device=self.device,
            workers=self.workers,
            writers=self.writers,
            decode=self.decode,
        )


compute_options = grouped(
    "compute",
    ComputeArgs,
    batch_size_option(
        "Images per batch on the device (e.g. --batch-size 128).",
        show_default="32 on the CPU; on a GPU 512/256/128 by input size",
    ),
    device_option("auto, cpu, cuda or cuda:N (e.g. --device cuda:1); auto picks CUDA when present."),
    workers_option(
        "DataLoader processes that decode images (e.g. --workers 8; 0 decodes in the main process; at most 4 "
        "per CPU; no more start than the run has batches).",
        show_default="CPU: CPUs - 1, at most 4; GPU: half the CPUs, at most 16",
    ),
    click.option(
        "--writers",
        type=click.IntRange(0),
        show_default="CPU: 0; GPU: the CPUs the workers leave, 1 to 8",
        help="Processes that encode and write the pictures (e.g. --writers 4; 0: one writer thread in the main process).",
    ),
    click.option(
        "--decode",
        type=click.Choice(DECODE_CHOICES),
        default="auto",
        show_default=True,
        help="Where JPEGs are decoded and resized: device (nvJPEG on a GPU; the workers only read files), "
        "cpu (PIL in the workers), auto (cpu: on an H200 the device measured slower). Other formats, and "
        "LIME's batches, always use PIL (e.g. --decode device).",
    ),
)


@dataclass(frozen=True)
class FolderArgs:
    """Where the report goes, and how INPUT_DIR is read."""

    out: Path | None
    replace: bool
    unlabeled: bool
    follow_links: bool
    no_ctime: bool


folder_options = grouped(
    "folders",
    FolderArgs,
    click.option(
        "--out",
        type=NonEmptyPath(path_type=Path, file_okay=False),
        help="Output folder (e.g. --out reports/cifake). Default: outputs/<parent>-<name> of INPUT_DIR "
        "(data/demo/test -> outputs/demo-test).",
    ),
    click.option(
        "--replace",
        is_flag=True,
        help="Write into --out even if it holds another input folder's report (which is replaced) or "
        "is a non-empty folder that is not an xaibatch output (its index.html, images/, assets/ and the "
        "report's other pages and folders are replaced). Never needed for re-runs.",
    ),
    click.option("--unlabeled", is_flag=True, help="Treat the folder as unlabeled even if it has class folders."),
    click.option(
        "--follow-links",
        is_flag=True,
        help="Follow symlinks to folders and files outside INPUT_DIR (skipped with a reason by default).",
    ),
    click.option(
        "--no-ctime",
        is_flag=True,
        help="Take an image whose size and mtime match the last run as unchanged whatever its ctime (a volume "
        "re-owned at each start, e.g. Kubernetes fsGroup, moves every ctime: without this flag each run then "
        "reads every image to check it). A rewrite that keeps size and mtime (cp -p) goes unseen.",
    ),
)


def lime_samples(text: str) -> int | str:
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


@dataclass(frozen=True)
class LimeArgs:
    """LIME's own options (--method-option lime.KEY=VALUE overrides them)."""

    lime_samples: int | str
    lime_samples_max: int
    lime_segments: int
    lime_hide: str

    def options(self) -> dict[str, Any]:
        """As LIME's method options."""
        return {
            "samples": self.lime_samples,
            "segments": self.lime_segments,
            "hide": self.lime_hide,
            "samples_max": self.lime_samples_max,
        }


LIME_FLAGS = {
    "samples": "--lime-samples",
    "samples_max": "--lime-samples-max",
    "segments": "--lime-segments",
    "hide": "--lime-hide",
}  # LIME's options that have a flag of their own (the rest: --method-option)


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` (its parameter's name) was given, not left at its default."""
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


def check_lime_given(ctx: click.Context) -> None:
    """LIME's options together, as the run merges them (--method-option lime.* over --lime-*). Each passes its own
    check, but --lime-samples auto with a --lime-samples-max below auto's first round failed seconds later, once
    torch had loaded, in LIME's internal names: refused here, in the words of the options given. A --lime-* flag
    without -m lime, or one that a --method-option lime.* sets again, would be dropped without a word: refused."""
    flags = {k: ctx.params[f"lime_{k}"] for k in LIME_FLAGS if given(ctx, f"lime_{k}")}
    if "lime" not in (ctx.params.get("methods") or ()):
        if flags:
            names = ", ".join(LIME_FLAGS[k] for k in flags)
            raise click.UsageError(f"{names}: only with -m lime (LIME is not among this run's methods)", ctx)
        return
    chosen = (ctx.params.get("method_option") or {}).get("lime", {})
    for k in flags.keys() & chosen.keys():
        raise click.UsageError(
            f"{LIME_FLAGS[k]} {ctx.params[f'lime_{k}']} and --method-option lime.{k}={chosen[k]} both set LIME's "
            f"{k}: give one of them",
            ctx,
        )

    def spelled(key: str, value: Any) -> str:
        if key in chosen or key not in LIME_FLAGS:
            return f"--method-option lime.{key}={value}"
        return f"{LIME_FLAGS[key]} {value}"

    try:
        check_lime_options({**flags, **chosen}, spelled)
    except UsageError as e:
        raise click.UsageError(str(e), ctx) from None


lime_options = grouped(
    "lime",
    LimeArgs,
    click.option(
        "--lime-samples",
        default=str(LIME_DEFAULTS["samples"]),
        show_default=True,
        metavar="N|auto",
        callback=lambda ctx, p, v: lime_samples(v),
        help="LIME: perturbed images per image, or auto: rounds of 100 from 200 until the image's map is "
        "stable, at most --lime-samples-max (e.g. --lime-samples 500, --lime-samples auto).",
    ),
    click.option(
        "--lime-samples-max",
        type=click.IntRange(10),
        default=LIME_DEFAULTS["samples_max"],
        show_default=True,
        help="LIME with --lime-samples auto: at most this many per image (e.g. --lime-samples-max 4000).",
    ),
    click.option(
        "--lime-segments",
        type=click.IntRange(2),
        default=LIME_DEFAULTS["segments"],
        show_default=True,
        help="LIME: target number of SLIC superpixels (e.g. --lime-segments 30).",
    ),
    click.option(
        "--lime-hide",
        type=click.Choice(LIME_HIDE_MODES),
        default=LIME_DEFAULTS["hide"],
        show_default=True,
        help="LIME: how a switched-off superpixel is hidden (e.g. --lime-hide blur).",
    ),
)

max_map_side_option = click.option(
    "--max-map-side",
    type=click.IntRange(0),
    default=DEFAULT_MAX_MAP_SIDE,
    show_default=True,
    help="Save .npy maps of images over N x N pixels scaled down to about N x N pixels (aspect kept; "
    "e.g. --max-map-side 0 for the image's own size).",
)


@dataclass(frozen=True)
class ControlArgs:
    """What the run prints, and whether it queues behind another run of the same --out."""

    quiet: bool
    wait: bool
    wait_timeout: float | None
    log_json: bool


control_options = grouped(
    "control",
    ControlArgs,
    quiet_option("No progress bar, no summary line, no list of failed images: only Error: lines."),
    wait_option("If another run holds --out, wait for it to finish instead of exiting with code 4."),
    wait_timeout_option(
        "With --wait: give up with exit code 4 after this long (e.g. --wait-timeout 3600). Implies --wait."
    ),
    click.option(
        "--log-json",
        is_flag=True,
        help="Print JSON lines to stdout (start, notice, estimate, plan, each failure, vanished, progress, batch_split, "
        "end with counts and exit code) instead of the summary line; what has an event is not also a stderr line (stderr "
        "keeps the few lines without one, such as a crash's clean-up, and the Error: line). For schedulers and log "
        "collectors.",
    ),
)


@dataclass(frozen=True)
class FaithArgs:
    """--faithfulness and its settings."""

    faithfulness: bool
    faithfulness_steps: int
    faithfulness_baseline: str

    def config(self):
        """The library's FaithConfig, or None when not asked for."""
        if not self.faithfulness:
            return None
        from ..evaluation.faithfulness import FaithConfig  # torch: only when --faithfulness is asked for

        return FaithConfig(self.faithfulness_steps, self.faithfulness_baseline)


faith_options = grouped(
    "faith",
    FaithArgs,
    click.option(
        "--faithfulness",
        is_flag=True,
        help="Score every map by deletion and insertion (RISE; about 2 x --faithfulness-steps forwards per "
        "image and method). Enabling it on an existing folder scores the saved maps that lack scores (images at the "
        "model's input size; others' maps are computed again).",
    ),
    click.option(
        "--faithfulness-steps",
        type=click.IntRange(2, 1000),
        default=FAITH_STEPS,
        show_default=True,
        help="With --faithfulness: steps of each curve (e.g. --faithfulness-steps 10).",
    ),
    click.option(
        "--faithfulness-baseline",
        type=click.Choice(FAITH_BASELINES),
        default=FAITH_BASELINES[0],
        show_default=True,
        help="With --faithfulness: what removed pixels become, and where insertion "
        "starts: the blurred image, black, or the image's mean colour.",
    ),
)


@dataclass(frozen=True)
class EngineArgs:
    """--engine and, for Ray, its cluster and actors."""

    engine: str
    ray_address: str | None
    ray_workers: int | None
    gpus_per_worker: float | None
    cpus_per_worker: float

    def fields(self) -> dict[str, Any]:
        """As RunOptions' fields."""
        from ..pipeline import RayOptions

        return dict(
            engine=self.engine,
            ray=RayOptions(self.ray_address, self.ray_workers, self.gpus_per_worker, self.cpus_per_worker),
        )


RAY_ONLY = ("ray_address", "ray_workers", "gpus_per_worker", "cpus_per_worker")
LOCAL_ONLY = ("workers", "writers")  # the local engine's processes: a Ray worker has --cpus-per-worker threads


def check_faithfulness_given(ctx: click.Context) -> None:
    """--faithfulness-steps or --faithfulness-baseline without --faithfulness would do nothing: say so."""
    if ctx.params.get("faithfulness"):
        return
    names = [f"--{n.replace('_', '-')}" for n in ("faithfulness_steps", "faithfulness_baseline") if given(ctx, n)]
    if names:
        raise click.UsageError(
            f"{', '.join(names)}: only with --faithfulness (the maps are not scored without it)", ctx
        )


def check_engine_options(ctx: click.Context) -> None:
    """A Ray option given without --engine ray would do nothing: say so (a forgotten --engine ray would otherwise
    compute a whole folder on this machine). Nor do --workers and --writers with it (a Ray worker's threads)."""
    if ctx.params.get("engine") == "ray":
        local = [n for n in LOCAL_ONLY if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if local:  # a Ray worker decodes with --cpus-per-worker threads and writes its own batch's files
            flags = ", ".join("--" + n for n in local)
            raise click.UsageError(
                f"{flags}: not with --engine ray (a Ray worker decodes and writes with --cpus-per-worker threads; "
                "give --cpus-per-worker)",
                ctx,
            )
        return
    given = [n for n in RAY_ONLY if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise click.UsageError(f"{flags}: only with --engine ray (without it the run computes on this machine)", ctx)


engine_options = grouped(
    "engine",
    EngineArgs,
    click.option(
        "--engine",
        type=click.Choice(list(ENGINES)),
        default=next(iter(ENGINES)),
        show_default=True,
        help="Where batches are computed: this process, or Ray Data actors on a Ray cluster (needs "
        'pip install "xaibatch[ray]"; INPUT_DIR and --out must be on a mount every node shares; '
        "e.g. --engine ray).",
    ),
    click.option(
        "--ray-address",
        metavar="ADDRESS",
        callback=non_empty,
        help="With --engine ray: the cluster to join (auto, HOST:PORT or ray://HOST:PORT). Default: "
        "$RAY_ADDRESS, else a Ray started on this machine for the run (e.g. --ray-address auto).",
    ),
    click.option(
        "--ray-workers",
        type=click.IntRange(1),
        metavar="N",
        help="With --engine ray: actors in all, each loading the model once. Default: as many as the "
        "cluster's GPUs (or CPUs) allow (e.g. --ray-workers 8).",
    ),
    click.option(
        "--gpus-per-worker",
        type=Number(0, finite=True),
        metavar="G",
        help="With --engine ray: GPUs per actor (e.g. 0.5 puts two on a GPU). Default: 1 when the cluster "
        "has GPUs, else 0.",
    ),
    click.option(
        "--cpus-per-worker",
        type=Number(0, min_open=True, finite=True),
        default=1.0,
        show_default=True,
        metavar="C",
        help="With --engine ray: CPUs per actor, also its image-decoding and torch threads (e.g. --cpus-per-worker 4).",
    ),
)
