"""``xaibatch sanity``: the model-randomization check of a finished run's methods."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ExitCode
from .helptext import Command
from .boundary import echo, exit_codes_help, notes, reported
from .options import (
    NonEmptyPath,
    arch_option,
    batch_size_option,
    checkpoint_option,
    device_option,
    model_option,
    quiet_option,
    seed_option,
    wait_option,
    wait_timeout_option,
)


# the verdicts decide the exit code only with --strict (a report refresh is not a run: no images to skip)
SANITY_EXIT_CODES = {
    ExitCode.OK: "checked (every method passed, or some failed without --strict)",
    ExitCode.SOME_FAILED: "with --strict: at least one method failed the check",
    ExitCode.USAGE: "usage error (no run in OUT_DIR, the run's model or images not found)",
    ExitCode.RUNTIME: "runtime error",
    ExitCode.LOCKED: "a run holds the output folder's lock (without --wait, or past --wait-timeout)",
    ExitCode.INTERRUPTED: "interrupted (SIGINT/SIGTERM/SIGHUP)",
}


@click.command(cls=Command, epilog=exit_codes_help(SANITY_EXIT_CODES))
@click.argument("out_dir", type=NonEmptyPath(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--images",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Size of the fixed, seeded sample of the run's images (e.g. --images 32).",
)
@seed_option("Seed of the sample and the re-initialisation.")
@device_option("auto, cpu, cuda or cuda:N.")
@batch_size_option(
    "Images per batch; one that does not fit in memory is explained in halves (one warning line).",
    default=32,
    show_default=True,
)
@model_option(
    "The run's model, when it cannot be rebuilt from what the run recorded (a moved factory file): "
    "FILE.py:FACTORY, module.path:FACTORY, torchvision:NAME or timm:NAME."
)
@checkpoint_option("The run's weights, when they moved since the run (checked against the recorded sha256).")
@arch_option("The timm model of a plain state_dict given with --checkpoint.")
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when a method fails the check, for a CI job or a scheduler (e.g. --strict).",
)
@quiet_option(
    "No progress lines, no verdicts: only Error: lines (the verdicts are in OUT_DIR/sanity.json and the report; "
    "with --strict the exit code says whether every method passed)."
)
@wait_option("If a run (or a report) holds OUT_DIR, wait for it to finish instead of exiting with code 4.")
@wait_timeout_option(
    "With --wait: give up with exit code 4 after this long (e.g. --wait-timeout 3600). Implies --wait."
)
@reported(caller="sanity")
def sanity(
    out_dir,
    images,
    seed,
    device,
    batch_size,
    model_spec,
    checkpoint,
    arch,
    strict,
    quiet,
    wait=False,
    wait_timeout=None,
):
    """Model-randomization sanity check of every method of the run in OUT_DIR (Adebayo et al., 2018).

    The run's model, layer and methods are rebuilt from what the run recorded (absolute paths, each
    method's options); --model/--checkpoint/--arch replace the model when its files moved. The
    verdicts of an earlier check on the same model, sample size and seed are kept for the folder's
    other methods (a run that only added a method), and count for --strict.

    \b
    Example:
      xaibatch run data/demo/test -m gradcam -m guided-gradcam --out reports/demo
      xaibatch sanity reports/demo
      xaibatch sanity reports/demo --strict -q      # a cron job: only the exit code and Error: lines
    """
    from ..evaluation.rebuild import ModelOverride
    from ..pipeline.recovery import held_output
    from ..pipeline.signals import stops_interrupt

    log = notes(quiet)
    # SIGTERM, a closed terminal: as Ctrl-C (nothing written, exit 5); nohup: carries on. The lock before torch's
    # seconds of importing: a run holding OUT_DIR is refused at once.
    with stops_interrupt(), held_output(out_dir, log, "sanity", wait, wait_timeout) as lock:
        from ..evaluation.sanity import run_sanity

        result = run_sanity(
            out_dir,
            n=images,
            seed=seed,
            device=device,
            batch_size=batch_size,
            log=log,
            override=ModelOverride(model_spec, checkpoint, arch),
            lock=lock,
        )
    for c in result.curves:  # this check's, then the ones kept from the folder's previous check
        if not quiet:
            echo(c.verdict + ("" if c.checked == result.created else " (kept from the previous check)"))
    if strict and not all(c.passed for c in result.curves):
        raise SystemExit(int(ExitCode.SOME_FAILED))
