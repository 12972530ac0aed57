"""``xaibatch train`` and ``xaibatch demo-data``: the developer tools that make a model and a data set to try."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from .helptext import Command
from ..errors import ExitCode
from .boundary import echo, exit_codes_help, reported
from .options import (
    NonEmptyPath,
    Number,
    arch_option,
    batch_size_option,
    device_option,
    image_size_option,
    seed_option,
    workers_option,
)

TRAIN_EXIT_CODES = {
    ExitCode.OK: "the checkpoint is written",
    ExitCode.USAGE: "usage error (bad option, DATA_DIR without two class folders, --out not writable)",
    ExitCode.RUNTIME: "runtime error",
    ExitCode.INTERRUPTED: "interrupted (SIGINT/SIGTERM/SIGHUP): --out holds the last finished epoch's model, if any",
}


@click.command(cls=Command, epilog=exit_codes_help(TRAIN_EXIT_CODES))
@click.argument("data_dir", type=NonEmptyPath(path_type=Path, file_okay=False, exists=True))
@arch_option("Any timm model name (e.g. --arch efficientnet_b0).", default="resnet18", show_default=True)
@image_size_option("Input size the model is trained at (e.g. --image-size 32).", default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True, help="Passes over the data.")
@batch_size_option("Images per step.", default=64, show_default=True)
@click.option(
    "--lr", type=Number(0, min_open=True), default=2e-3, show_default=True, help="Peak learning rate (one-cycle AdamW)."
)
@click.option(
    "--val-fraction",
    type=Number(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Share held out for validation.",
)
@seed_option("Seed for the split, init and shuffling.")
@device_option("auto, cpu, cuda or cuda:N.")
@workers_option("DataLoader processes.", default=0, show_default=True)
@click.option(
    "--out",
    type=NonEmptyPath(path_type=Path, dir_okay=False),
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
@reported(caller="train")
def train(data_dir, arch, image_size, epochs, batch_size, lr, val_fraction, seed, device, workers, out, save_format):
    """Train a timm model from scratch on DATA_DIR (ImageFolder, or a folder with train/ and test/).

    \b
    Example:
      xaibatch train data/demo --arch resnet18 --image-size 64 --epochs 10 --out models/demo.pt
    """
    from ..pipeline.signals import REPEATED_SIGNAL_S, catch_signals
    from ..tools.train import accuracy_text, train as train_model

    # Ctrl-C, SIGTERM, a closed terminal: the batch under way ends, the last finished epoch is saved; nohup: goes on
    with catch_signals(True, REPEATED_SIGNAL_S) as stop:
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
            log=echo,
            save_format=save_format,
            stop=stop,
        )
    test = f", test accuracy {accuracy_text(r.test_accuracy, 2)}" if r.test_accuracy is not None else ""
    echo(
        f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB) in {r.seconds:.0f}s: "
        f"val accuracy {accuracy_text(r.val_accuracy)}{test}"
    )
    # a plain state_dict carries neither its input size (without --image-size a run would feed it 224 px
    # images) nor its class names (a run of a flat folder would call them class_0, class_1); quoted for a shell
    path = shlex.quote(str(r.path))
    if save_format == "state-dict":
        classes = shlex.quote(",".join(r.classes))
        how = f"--model timm:{arch} --checkpoint {path} --image-size {image_size} --classes {classes}"
    else:
        how = f"--checkpoint {path}"
    echo(f"explain with: xaibatch run IMAGES {how}")


@click.command("demo-data", cls=Command)
@click.argument("out_dir", type=NonEmptyPath(path_type=Path, file_okay=False))
@click.option(
    "--train-per-class",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Training images per class (e.g. 200).",
)
@click.option("--test-per-class", type=click.IntRange(1), default=250, show_default=True, help="Test images per class.")
@seed_option("Same seed, same files.")
@click.option(
    "--force",
    is_flag=True,
    help="Write into a folder that holds other files too: train/ and test/ beside them (same names replaced).",
)
@reported(caller="other")
def demo_data(out_dir, train_per_class, test_per_class, seed, force):
    """Write a CIFAKE-style 32x32 demo set with ground-truth masks of the fake regions.

    OUT_DIR must be new, empty, or an earlier demo-data output (the new set then replaces the earlier
    one); another non-empty folder is refused unless --force. No file of yours is ever deleted.

    \b
    Example:
      xaibatch demo-data data/demo && xaibatch run data/demo/test
    """
    from ..errors import Interrupted, interrupted_by
    from ..pipeline.signals import stops_interrupt
    from ..tools.demo import write_demo_data

    try:
        with stops_interrupt():  # SIGTERM, a closed terminal: as Ctrl-C; nohup: goes on
            n = write_demo_data(out_dir, train_per_class, test_per_class, seed, force=force)
    except KeyboardInterrupt as e:  # one thread, no loader: a stop raised where it stands leaves nothing held
        raise Interrupted(
            f"{interrupted_by(e)}: {out_dir} holds part of the set; the same command again replaces it"
        ) from None
    echo(f"wrote {n.train} train and {n.test} test images to {out_dir}")
