"""Refuse an INPUT_DIR/--out pair that would overwrite or mix up the user's files, before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

from .. import layout, targets
from ..defaults import IMAGE_SIDES, device_spec_problem, image_side_ok, model_spec_problem, workers_problem
from ..errors import UsageError
from ..files import blocked_by_file, safe_join
from ..manifest import Manifest
from ..preprocess import channel_values
from ..scan import is_output_folder, shown
from .options import ModelOptions, RunOptions


def default_out(input_dir: Path) -> Path:
    """``outputs/<parent>-<name>``: ``data/demo/test`` and ``data/CIFAKE/test`` get different folders."""
    p = Path(input_dir).resolve()
    name = p.name or "root"
    return Path("outputs") / (f"{p.parent.name}-{name}" if p.parent.name else name)


SQLITE_MAX_PATH = 512  # SQLite's unix VFS: a database's path and its companions' (-journal, -wal) must be shorter


def suggest_out(input_dir: Path, refused: Path) -> Path:
    """An --out to suggest instead of ``refused``: the default one, numbered when that is the refused or a used one."""
    base = candidate = default_out(input_dir)
    n = 2
    while candidate.resolve() == Path(refused).resolve() or candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def check_folders(opts: RunOptions) -> None:
    """Refuse an INPUT_DIR/--out pair that would overwrite the user's files, before anything is written."""
    inp, out = Path(opts.input_dir).resolve(), Path(opts.out_dir).resolve()
    longest = len(os.fsencode(out / layout.MANIFEST)) + len("-journal")  # its longest companion file
    if longest >= SQLITE_MAX_PATH:
        raise UsageError(
            f"--out {shown(str(opts.out_dir))} is too long a path: the manifest's files there would take "
            f"{longest} bytes, and SQLite opens at most {SQLITE_MAX_PATH - 1}; choose a shorter --out"
        )
    if out == inp:
        raise UsageError(
            f"--out {opts.out_dir} is INPUT_DIR itself: the next run would read its maps as images; "
            f"choose another folder, e.g. --out {suggest_out(inp, out)}"
        )
    if is_output_folder(inp):
        raise UsageError(
            f"INPUT_DIR {opts.input_dir} is an xaibatch output folder (it holds {layout.MANIFEST}), not a folder "
            "of images; give the folder its report was made from"
        )
    for folder in (inp, *inp.parents):
        top = inp.relative_to(folder).parts[:1]
        if top and top[0] in layout.OUTPUT_DIRS and (folder / layout.MANIFEST).is_file():
            raise UsageError(
                f"INPUT_DIR {opts.input_dir} is inside {top[0]}/ of the xaibatch output folder {folder}, "
                "whose files every run rewrites; give the folder of the original images instead"
            )
    if out.exists() and not out.is_dir():  # a device or FIFO (click refuses a plain file), or one given to run()
        raise UsageError(f"cannot write to --out {opts.out_dir}: it exists and is not a folder")
    if (above := blocked_by_file(out)) is not None:
        raise UsageError(f"cannot write to --out {opts.out_dir}: Not a directory ({above})")
    if inp.is_relative_to(out) and inp.relative_to(out).parts[0] in layout.OUTPUT_DIRS:
        raise UsageError(
            f"--out {opts.out_dir} would write its {inp.relative_to(out).parts[0]}/ over INPUT_DIR "
            f"{opts.input_dir}; choose another folder, e.g. --out {suggest_out(inp, out)}"
        )
    if not out.is_dir():
        return
    for top in layout.OUTPUT_DIRS:  # a symlink planted there would redirect every write
        safe_join(out, top)
    ours = (out / layout.MANIFEST).exists() or (out / layout.LOCK).exists()
    if not ours and out.is_relative_to(inp) and _holds_files(out):
        # even with --replace: a folder with a manifest is skipped by every scan, so its images would leave INPUT_DIR
        raise UsageError(
            f"--out {opts.out_dir} is a folder inside INPUT_DIR {opts.input_dir} that holds files of its own: "
            "with the report there, every run of INPUT_DIR would skip that folder and its images; choose a new "
            f"or empty folder, e.g. --out {suggest_out(inp, out)}"
        )
    if opts.replace or ours:
        return  # ours (a run that died before writing its manifest still left its lock file)
    if _holds_files(out):
        raise UsageError(
            f"--out {opts.out_dir} is a non-empty folder that is not an xaibatch output (no "
            f"{layout.MANIFEST}); choose a new or empty folder, or pass --replace to write the report "
            "there (its pages and folders such as assets/ and images/ are replaced)"
        )


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything (False when it cannot be read: taking the lock reports that)."""
    try:
        return bool(os.listdir(folder))
    except OSError:
        return False


def check_same_input(opts: RunOptions, out: Path) -> None:
    """Refuse to replace the report of another input folder unless ``--replace``; call holding the lock."""
    path = out / layout.MANIFEST
    if opts.replace or not path.is_file():
        return
    manifest = Manifest(path)
    try:
        recorded = manifest.get_meta("input_dir")
        named = manifest.get_meta("input_path")
        holds = manifest.holds_results()
    finally:
        manifest.close()
    inp = Path(opts.input_dir).resolve()
    # a folder whose runs all stopped before any image (a Ray cluster that could not be reached, a GPU out of
    # memory at the first batch) holds no report of anything: it was refused for every other input. The same
    # path as named (a symbolic link a sync flips to a new folder: ln -sfn new current) is the same input.
    same = recorded == shown(str(inp)) or named == input_path(opts.input_dir)  # as text: non-UTF-8 escaped
    if holds and recorded is not None and not same:
        if not os.path.lexists(recorded):  # moved or renamed (or deleted): --replace keeps what is the same
            raise UsageError(
                f"--out {opts.out_dir} holds the report of {recorded}, which is not there any more; if INPUT_DIR "
                f"{inp} is that folder moved or renamed, pass --replace (an image with the same bytes keeps its "
                f"results: nothing is computed again for it), else choose another --out (e.g. --out "
                f"{suggest_out(inp, out)})"
            )
        raise UsageError(
            f"--out {opts.out_dir} holds the report of {recorded}, not of INPUT_DIR {inp}; choose "
            f"another --out (e.g. --out {suggest_out(inp, out)}) or pass --replace to replace that report"
        )


def input_path(input_dir: Path | str) -> str:
    """INPUT_DIR as the user names it, absolute, its symbolic links kept (``meta.input_path``; ``meta.input_dir`` is
    the folder it resolves to): a link flipped to a new folder still names the same input."""
    return shown(os.path.abspath(input_dir))


def check_request(opts: RunOptions) -> None:
    """The option and path checks that need no torch, so that a typo answers at once, before the imports.

    prepare() (with the model loaded) checks the rest; these say the same thing in the same words, earlier.
    """
    if not opts.methods:
        raise UsageError("give at least one --method")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if opts.workers is not None and (problem := workers_problem(opts.workers)):
        raise UsageError(problem)
    if problem := targets.problem(opts.target):
        raise UsageError(problem)
    if problem := device_spec_problem(opts.device):
        raise UsageError(problem)
    check_model_request(opts)


def check_model_request(opts: ModelOptions) -> None:
    """check_request's model checks (no torch), for run and serve: --model's form and file, --arch with
    --checkpoint, the checkpoint's file, --image-size, --mean and --std, --threshold."""
    from .options import checkpoint_path

    if opts.model is not None and opts.arch is not None:
        raise UsageError("give --model or --arch, not both (--model timm:NAME is --arch NAME)")
    if opts.model is not None and (problem := model_spec_problem(opts.model)):
        raise UsageError(problem)
    if opts.image_size is not None and not image_side_ok(opts.image_size):
        # the CLI's range; from Python, 0 was taken as not given and -3 failed deep in torch
        lo, hi = IMAGE_SIDES
        raise UsageError(f"--image-size must be a whole number from {lo} to {hi}, not {opts.image_size!r}")
    for flag, values in (("--mean", opts.mean), ("--std", opts.std)):
        if values is not None:
            try:
                channel_values(flag, values)
            except ValueError as e:
                raise UsageError(str(e)) from None
    if opts.threshold is not None and not 0.0 <= opts.threshold <= 1.0:  # NaN too (click's range lets it by)
        raise UsageError(f"--threshold {opts.threshold} must be between 0 and 1")
    if opts.model is None:
        checkpoint_path(opts)  # --arch without --checkpoint
    elif (where := opts.model.rpartition(":")[0]).endswith(".py") and not Path(where).is_file():
        raise UsageError(f"--model {opts.model}: no such file {Path(where)}")
    if opts.checkpoint is not None:
        path = Path(opts.checkpoint)
        if not path.exists():
            raise UsageError(f"--checkpoint {path}: no such file")
        if path.is_dir():
            from ..model.formats import folder_for_factory, hub_folder

            if opts.model is not None and not opts.model.startswith("timm:"):
                raise folder_for_factory(path, opts.model)
            hub_folder(path)  # a timm Hub folder, else what it is (a transformers model, no weights), at once
        elif not path.is_file():
            raise UsageError(f"--checkpoint {path}: not a regular file")
