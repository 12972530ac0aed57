"""What a run says about its classes before its plan: one line each on stderr (none with ``-q``), each also a
``notice`` event (``--log-json``: ``kind``, ``text`` and the kind's own fields).

* ``empty-class``: a class folder without images (``folder``, ``kept``: still a class of the model; ``link_to``:
  a symbolic link to a folder scanned under that other name, which holds its images).
* ``classes-by-case``: class folders matched to the model's classes only by case (``folders``: folder -> class).
* ``class-order``: a model that names no classes, run without ``--classes``: its outputs are read as the sorted
  class folders (``classes``), an order nothing checks; a one-logit model's line says which class's probability
  its sigmoid is read as.
* ``input-size``: a model that declares no input size (a ``--model`` factory without timm's ``pretrained_cfg``,
  a torchvision model), run without ``--image-size``: its images are resized to 224 px (``input_size``), which
  a model trained on 32 px CIFAKE images was not (said when the run loads the model).
* ``ema-weights``: a timm train.py checkpoint that also holds EMA weights (``state_dict_ema``): its ``state_dict``
  is explained, as timm's validate.py does without ``--use-ema`` (said when the run loads the model).
* ``random-weights``: ``--model timm:NAME`` or ``torchvision:NAME`` without ``--checkpoint`` (``model``): the maps
  explain an untrained model (``random_weights``; serve says it too, as a line).

* ``restarted``: the machine restarted since a command last wrote the folder and files its last seconds left
  damaged were deleted, to be written again (``checked``, ``damaged``: counts; pipeline/restart.say; also said
  by ``report`` and ``sanity``, as a line).

* ``batch-handover``: the DataLoader workers send their batches through pipes, not shared memory, because
  /dev/shm is too small for the batches in flight or there is no writable temporary folder (``reason``;
  pipeline/loader.handover; said by the run that computes).

Both setups give the class notices, the cached one (no model loaded) from what the run it reuses recorded; the
input size is said by a run that loads the model. Imports no torch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from ..runconfig import RANDOM_INIT
from ..scan import named_class
from .setup import Setup

Notice = tuple[str, str, dict[str, Any]]  # kind, text (without "xaibatch: "), the event's other fields


def say_notices(
    setup: Setup, log: Callable[[str], None], emit: Callable[[dict[str, Any]], None], lines: bool = True
) -> None:
    """Each of the run's notices as a line for ``log`` and a ``notice`` event for ``emit``."""
    say(class_notices(setup), log, emit, lines)
    say(input_size_notices(setup), log, emit, lines)


def say(
    notices: Iterable[Notice], log: Callable[[str], None], emit: Callable[[dict[str, Any]], None], lines: bool = True
) -> None:
    """Each notice as a ``notice`` event for ``emit`` and, unless ``lines`` is False (--log-json: events only, so a
    scheduler's error log does not grow by a line each run), a line for ``log``."""
    for kind, text, fields in notices:
        if lines:
            log(f"xaibatch: {text}")
        emit({"event": "notice", "kind": kind, "text": text, **fields})


def random_weights(model: str | None, checkpoint: str | None) -> Iterator[Notice]:
    """A model built without weights (``--model timm:NAME`` without ``--checkpoint``: a run's, serve's)."""
    if checkpoint == RANDOM_INIT:
        text = (
            f"warning: --model {model} has random weights (no --checkpoint): its maps explain an untrained model; "
            "give the trained weights with --checkpoint"
        )
        yield "random-weights", text, {"model": model}


def warn_random_weights(
    model: str | None,
    checkpoint: str | None,
    log: Callable[[str], None],
    emit: Callable[[dict[str, Any]], None] = lambda event: None,
    lines: bool = True,
) -> None:
    """``--model timm:NAME`` or ``torchvision:NAME`` without ``--checkpoint`` (a run's, serve's): maps of an
    untrained model; a line and a ``random-weights`` notice event."""
    say(random_weights(model, checkpoint), log, emit, lines)


def class_notices(setup: Setup) -> Iterator[Notice]:
    """The run's notes on its classes, in this order: empty class folders, folders matched by case, the order."""
    names, found = setup.names, setup.found
    labels = {e.label for e in found.images} if found.empty_classes else set()
    for name in found.empty_classes:
        kept = _kept(name, names, labels)
        what = "kept as a class with no images" if kept else "ignored"
        target = found.aliases.get(name)
        if target is None:
            yield (
                "empty-class",
                f"warning: class folder {name!r} holds no images; {what}",
                {"folder": name, "kept": kept},
            )
        else:  # each folder is scanned once, under its real name: this name holds none of its images
            text = (
                f"warning: class folder {name!r} is a symbolic link to {target!r}, whose images are listed under "
                f"that name (a folder is scanned once); {name!r} is {what}"
            )
            yield "empty-class", text, {"folder": name, "kept": kept, "link_to": target}
    if found.by_case:
        pairs = ", ".join(f"{folder} -> {name}" for folder, name in sorted(found.by_case.items()))
        yield (
            "classes-by-case",
            f"class folders matched to the model's classes by case: {pairs}",
            {"folders": dict(sorted(found.by_case.items()))},
        )
    if setup.config.classes_from == "folders" and setup.config.model.checkpoint != RANDOM_INIT:
        decision = setup.config.decision or {}
        text = assumed_logit(names, decision["positive"]) if decision.get("one_logit") else assumed_order(names)
        yield "class-order", text, {"classes": list(names)}


def input_size_notices(setup: Setup) -> Iterator[Notice]:
    """What a run that loads its model says of it: an input size from nowhere (LoadedModel.size_declared), the size
    it is run at; a normalization from nowhere (LoadedModel.norm_declared); EMA weights left unused
    (LoadedModel.unused_ema)."""
    prepared = setup.prepared
    if prepared is not None and not prepared.model.size_declared:
        size = prepared.model.input_size
        text = (
            f"warning: the model declares no input size: images are resized to {size}x{size} px; if it was trained "
            "at another size, give that size with --image-size (e.g. --image-size 32 for CIFAKE's images)"
        )
        yield "input-size", text, {"input_size": size}
    if prepared is not None and not prepared.model.norm_declared:
        src = setup.config.source  # --mean or --std alone: the other is ImageNet's
        assumed = " and ".join(n for n in ("mean", "std") if src is None or getattr(src, n) is None)
        text = (
            f"warning: the model names no normalization: its inputs are normalized with ImageNet's {assumed}; if "
            "it was trained otherwise, give its own (--mean 0 --std 1 for pixels scaled to [0, 1] alone, as "
            "ToTensor does; --mean 0.5 --std 0.5 for Normalize(0.5, 0.5))"
        )
        yield (
            "normalization",
            text,
            {"mean": list(prepared.model.preprocess.mean), "std": list(prepared.model.preprocess.std)},
        )
    if prepared is not None and prepared.model.unused_ema:
        text = (
            "note: the checkpoint also holds EMA weights (state_dict_ema); its state_dict is explained, as timm's "
            "validate.py does without --use-ema; to explain the EMA weights, save the checkpoint with its "
            "state_dict_ema as its state_dict (its args kept: the same model, input size, mean and std) and pass "
            "that file"
        )
        yield "ema-weights", text, {}


def _kept(name: str, names: list[str], labels: set) -> bool:
    """Whether an empty class folder stays a class: the class it names (exactly, else only by case) has no images
    from another folder (an empty ``REAL/`` beside ``Real/``'s images is no class of its own: ignored)."""
    near = named_class(name, names)
    return len(near) == 1 and names.index(near[0]) not in labels


def assumed_logit(names: list[str], positive: str) -> str:
    """The warning of a one-logit model that names no classes: which class's probability its sigmoid is read as
    (the second sorted class folder, or --positive-class), and how to say it is the other's."""
    other = names[0] if positive == names[1] else names[1]
    why = (
        f"the second of the class folders {','.join(names)}" if positive == names[1] else f"--positive-class {positive}"
    )
    return (
        f"warning: the model names no classes: its one logit is read as P({positive}) = sigmoid(z) ({why}); "
        f"if it is P({other}), give --classes {positive},{other} instead"
    )


def assumed_order(names: list[str], most: int = 10) -> str:
    """The warning of a model that names no classes: which order its outputs are read in, and how to give another."""
    shown = ",".join(names[:most]) + (f",... ({len(names)} classes)" if len(names) > most else "")
    example = f" (e.g. --classes {','.join(reversed(names))})" if len(names) <= 4 else ""
    return (
        f"warning: the model names no classes: its outputs are read as the class folders in sorted order, "
        f"{shown}; if it was trained in another order, give that order with --classes{example}"
    )
