"""A finished run's model, layer and methods rebuilt from what it recorded (``xaibatch sanity``), and which of
its images still hold what it explained."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runconfig import RANDOM_INIT, RunConfig


@dataclass(frozen=True)
class ModelOverride:
    """``xaibatch sanity OUT --model … --checkpoint … --arch …``: the model, when the run's cannot be rebuilt."""

    model: str | None = None
    checkpoint: Path | None = None
    arch: str | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.model, self.checkpoint, self.arch))


def rebuild_options(run: RunConfig, root: Path, out: Path, device: str, override: ModelOverride = ModelOverride()):
    """The RunOptions that rebuild the run's model, layer and methods (``override``: the user's model options)."""
    from ..pipeline import RunOptions

    src = run.rebuild_source()
    model, checkpoint, arch = src.model, src.checkpoint, src.arch
    if override.given():  # what is given replaces what was recorded (a moved --checkpoint keeps the --model)
        model = override.model or model
        checkpoint = override.checkpoint or checkpoint
        arch = override.arch or (arch if override.model is None else None)
    return RunOptions(
        input_dir=root,
        out_dir=out,
        methods=list(run.methods),
        model=model,
        checkpoint=Path(checkpoint) if checkpoint else None,
        arch=arch,
        classes=src.classes,
        positive_class=src.positive_class,
        threshold=src.threshold,
        image_size=src.image_size if src.image_size is not None else run.model.input_size,
        mean=src.mean,
        std=src.std,
        target_layer=run.layer,
        target=src.target,
        device=device,
        labeled=src.labeled if src.labeled is not None else run.labeled,
        follow_links=src.follow_links,
        seed=run.seed,
        method_options=run.method_options(),
    )


def prepare_rebuilt(opts, run: RunConfig, out: Path, override: ModelOverride):
    """prepare() the rebuilt options; a model that cannot be rebuilt, or is not the run's, is one line saying how."""
    from ..errors import InputError, XaibatchError
    from ..pipeline.prepare import InvertedLogit, load_and_name, prepare

    how = (
        f"pass the run's model: `xaibatch sanity {out} --model FILE.py:FACTORY|torchvision:NAME|timm:NAME "
        "--checkpoint FILE` or `--checkpoint FILE --arch NAME`"
    )
    what = run.rebuild_source().describe() if not override.given() else "the given model"
    # random weights xaibatch drew (timm:NAME, torchvision:NAME, --arch) come from a fixed seed and their digest
    # is recorded: a rebuild draws the same, checked below; a factory's own random weights, or an older run's,
    # have no digest to check against
    if not override.given() and run.model.checkpoint == RANDOM_INIT and not run.model.checkpoint_sha256:
        raise UsageError(
            f"sanity cannot rebuild the run's model: {what} had random weights (no --checkpoint) whose digest "
            "the run did not record, so a rebuild cannot be checked to be the same model; save the weights and "
            "run with --checkpoint"
        )

    def load(opts, found):
        """prepare()'s model step (build, read the head, name the classes): each of its errors says the model
        cannot be rebuilt from ``what``, and how to pass it, but the input folder's (InputError: class folders
        that no longer match the model's classes), which is no fault of the model; the other steps' errors stay as
        they are."""
        try:
            return load_and_name(opts, found)
        except InputError:
            raise
        except InvertedLogit as e:  # a run from before the refusal: no model to pass fixes it, the run must be redone
            first, second = e.classes
            raise UsageError(
                f"sanity cannot check {out}: its run read this one-logit model's sigmoid(z) as P({first}) "
                f"(--positive-class {first} with the classes {first},{second}), inverted: runs now refuse it; run "
                f"xaibatch run again with --classes {second},{first} and no --positive-class, then sanity"
            ) from None
        except XaibatchError as e:
            raise UsageError(f"sanity cannot rebuild the run's model from {what}: {e}; {how}") from None

    prepared = prepare(opts, load=load)
    want = run.model.checkpoint_sha256
    if want and prepared.model.checkpoint_sha256 != want:
        raise UsageError(
            f"sanity rebuilt a model from {what} whose weights are not the run's (sha256 "
            f"{prepared.model.checkpoint_sha256[:12]}, the run's {want[:12]}); {how}"
        )
    code = run.model.code_sha256  # a --model given to sanity is the user's word for the run's code (weights checked)
    if code and not override.given() and prepared.model.code_sha256 != code:
        raise UsageError(
            f"sanity rebuilt a model from {what} whose code is not the run's: its file changed since the run "
            f"(sha256 {(prepared.model.code_sha256 or 'none')[:12]}, the run's {code[:12]}); run xaibatch run "
            "again with it, then sanity, or give it with --model to check the run's maps with this code"
        )
    return prepared


def rebuilt_model(opts, prepared):
    """The run's model loaded again, as prepare() loaded ``prepared``'s: on its device, in eval mode (a second
    copy, for a model that cannot be deep-copied)."""
    from ..pipeline.prepare import load_and_name

    model, _names = load_and_name(opts, prepared.found)
    return model.module.to(prepared.device).eval()


def same_content(root: Path, rels: list[str], images: dict[str, Any], log: Callable[[str], None]) -> list[str]:
    """The sampled images whose files still hold what the run explained (their sha256 is the manifest's)."""
    from ..files import file_sha256

    keep = []
    for rel in rels:
        try:
            same = file_sha256(root / rel) == images[rel].sha256
        except OSError:
            same = False
        if same:
            keep.append(rel)
    if rels and not keep:
        raise UsageError(
            f"the images under {root} are not the ones the run explained (none of the {len(rels)} "
            "sampled files matches the manifest's sha256); sanity needs the run's images"
        )
    if len(keep) < len(rels):
        log(f"sanity: {len(rels) - len(keep)} sampled image(s) changed or are gone since the run; left out")
    return keep


def image_entries(root: Path, rels: list[str]):
    """The scan entries of ``rels`` under ``root`` (those still there)."""
    from ..scan import ImageEntry, stamp_ns

    out = []
    for rel in rels:
        p = root / rel
        try:
            st = p.stat()
        except OSError:
            continue
        out.append(ImageEntry(rel=rel, file=str(p), label=None, size=st.st_size, mtime_ns=stamp_ns(st.st_mtime_ns)))
    return out
