"""``xaibatch sanity``: the model-randomization check of a finished run's methods."""

from __future__ import annotations

from pathlib import Path

import click

from .boundary import reported
from .options import arch_option, batch_size_option, checkpoint_option, device_option, model_option, seed_option


@click.command()
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
    from ..evaluation.rebuild import ModelOverride
    from ..evaluation.sanity import run_sanity

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
