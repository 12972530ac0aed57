"""``xaibatch bench``: xaibatch's speed against the model's limits and its peers (tools/bench/)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..defaults import LIME_DEFAULTS
from ..errors import EXIT_INTERRUPTED, ExitCode
from .helptext import Command
from .boundary import Failure, checked, echo, exit_codes_help, notes, reported
from .options import (
    BUILTIN_METHODS,
    NonEmptyPath,
    Number,
    arch_option,
    batch_size_option,
    device_option,
    image_size_option,
    known_methods,
    workers_option,
)

# --budget's default: the GPU check runs `timeout 100 xaibatch bench ...` (and 130); this leaves the interpreter's
# start, the slack of rows that overrun their share by up to one batch, the tables and the clean-up 25 s
BENCH_BUDGET_S = 75.0

BENCH_EXIT_CODES = {
    ExitCode.OK: "measured",
    ExitCode.USAGE: "usage error (bad option)",
    ExitCode.RUNTIME: "runtime error",
    ExitCode.INTERRUPTED: "interrupted (SIGINT/SIGTERM/SIGHUP): the tables hold the rows measured before it",
}


MEMORY_OPTIONS = ("memory", "memory_images", "workers", "keep", "markdown", "quiet")  # what --memory reads


def _check_memory_options(ctx: click.Context, memory: bool) -> None:
    """--memory measures a fixed run (timm's test_resnet, Grad-CAM, 32 px): an option of the timing tables given
    with it did nothing without a word (--memory --budget 60 --arch resnet50), as --memory-images without it."""
    given = [
        p
        for p in ctx.command.params
        if p.name and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE
    ]
    if memory:
        ignored = [p.opts[0] for p in given if p.name not in MEMORY_OPTIONS]
        if ignored:
            raise click.UsageError(
                f"{', '.join(ignored)}: not with --memory (it times a fixed Grad-CAM run of timm's test_resnet on "
                "32x32 PNGs; it takes --memory-images, --workers, --keep, --markdown and -q)",
                ctx,
            )
    elif any(p.name == "memory_images" for p in given):
        raise click.UsageError("--memory-images: only with --memory", ctx)


@click.command(cls=Command, epilog=exit_codes_help(BENCH_EXIT_CODES))
@arch_option("timm model, randomly initialised (e.g. --arch resnet50 on a GPU).", default="resnet18", show_default=True)
@image_size_option("Generated images' and model input size (e.g. --image-size 224).", default=64, show_default=True)
@batch_size_option(
    "Images per batch (e.g. --batch-size 64).",
    show_default="a run's: 32 on the CPU; on a GPU 512/256/128 by --image-size",
)
@click.option(
    "--images",
    type=click.IntRange(2),
    default=1024,
    show_default=True,
    help="Generated images for Grad-CAM and Guided Grad-CAM (with --budget: the most a row measures).",
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
    show_default="as run's: CPU: CPUs - 1, at most 4; GPU: half the CPUs, at most 16",
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Interleaved rounds after a warm-up; each figure is its best round (the highest rate).",
)
@click.option(
    "--only",
    default=",".join(BUILTIN_METHODS),
    show_default=True,
    help="Comma-separated methods to time, any of `xaibatch methods` (e.g. --only gradcam,lime or "
    "--only cam:scorecam); peers are timed for gradcam, guided-gradcam and lime.",
)
@click.option(
    "--budget",
    type=Number(0, finite=True),
    default=BENCH_BUDGET_S,
    show_default=True,
    help="Seconds for the whole bench from the command's start; 0: none (every row over all its images). "
    "Each round of a row gets a share of the time left and measures as many images as fit in it, at least one "
    "batch (one image for LIME and per-image peers); the table says how many. Every row is measured once even "
    "when the time is spent; later rounds only while time is left.",
)
@click.option("--no-peers", is_flag=True, help="Leave out pytorch-grad-cam, captum and lime.")
@click.option("--markdown", is_flag=True, help="Print markdown tables (for docs/benchmarks.md).")
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
    type=NonEmptyPath(path_type=Path, file_okay=False),
    help="Generate the files into this folder and keep them: a new or empty folder, or one an earlier bench kept "
    "(default: a temporary folder).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@reported(caller="bench")
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
    budget,
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
      xaibatch bench --budget 0                        # no time limit: every row over all its images
      xaibatch bench --memory --memory-images 2000,20000
    """
    started = time.perf_counter()  # the budget counts from here: torch is imported after
    _check_memory_options(click.get_current_context(), memory)
    log = notes(quiet)
    from ..pipeline.signals import REPEATED_SIGNAL_S, catch_signals, stops_interrupt

    if memory:
        try:
            counts = tuple(int(v) for v in memory_images.split(","))
        except ValueError:
            counts = ()
        if not counts or min(counts) < 1:
            raise click.BadParameter(
                "comma-separated counts of at least 1, e.g. 2000,20000", param_hint="--memory-images"
            )
        from ..tools.bench import format_memory, memory_check

        _check_keep(keep)
        with stops_interrupt():
            echo(format_memory(memory_check(counts, workers=workers, work_dir=keep, log=log), markdown))
        return
    wanted = tuple(m.strip() for m in only.split(",") if m.strip())
    if not wanted:
        raise click.BadParameter(f"name at least one method (got {only!r})", param_hint="--only")
    checked(lambda: known_methods(wanted), param_hint="--only")
    from ..model.loading import check_arch
    from ..tools.bench import BenchOptions, format_result, run_bench  # torch: after the options are checked

    check_arch(arch)  # before the images are generated: "unknown --arch ...", exit 2
    _check_keep(keep)

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
        budget=budget,
        started=started,
    )
    # `timeout 100 xaibatch bench ...`, a closed terminal: the chunk under way ends, the rows measured are printed
    with catch_signals(True, REPEATED_SIGNAL_S) as stop:
        result = run_bench(opts, log=log, show=lambda res: echo(format_result(res, markdown=markdown)), stop=stop)
    if result.cut_off:
        raise Failure("interrupted: the tables hold only the rows measured before the signal", EXIT_INTERRUPTED)


def _check_keep(keep: Path | None) -> None:
    """--keep takes a new or empty folder, or an earlier bench's: never one of the user's (exit 2)."""
    from ..tools.bench.inputs import keep_folder_problem

    problem = None if keep is None else keep_folder_problem(keep)
    if problem:
        raise click.BadParameter(f"{str(keep)!r}: {problem}", param_hint="--keep")
