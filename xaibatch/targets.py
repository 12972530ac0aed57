"""What a run's maps explain (``--target``), and the manifest keys of the true class's maps.

``pred`` explains the predicted class, ``label`` the folder's label, and ``pred,label`` the prediction and, for
each misclassified image, the true class too ("why this" beside "why not the truth"). Those extra maps are map
rows of their own, keyed ``<method>@label`` (their files in ``layout.method_dir`` of that key), so every rule
of incremental runs and crash safety holds for them as for any map. Imports nothing heavy.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

MODES = ("pred", "label", "pred,label")
BOTH = "pred,label"
LABEL_SUFFIX = "@label"


def spelled(text: str) -> str:
    """The mode a user's spelling means: ``"PRED"`` is ``pred`` and ``"pred, label"`` is ``pred,label`` (case and
    spaces around the words do not matter; the order does: ``label,pred`` stays unknown). An unknown spelling
    comes back as it was, for :func:`problem` to name. ``--target``, ``RunOptions`` and explain() read it alike."""
    if not isinstance(text, str):
        return text
    mode = ",".join(word.strip() for word in text.lower().split(","))
    return mode if mode in MODES else text


def problem(mode: str) -> str | None:
    """The one-line error for an unknown --target, or None."""
    if spelled(mode) in MODES:
        return None
    return f"--target must be pred, label or pred,label, not {mode!r}"


def label_maps(mode: str) -> bool:
    """Whether misclassified images also get maps of their true class."""
    return mode == BOTH


def maps_target(mode: str) -> str:
    """What the first maps of every image explain (and their hashes cover): those of ``pred,label`` are the
    maps of ``pred``, so switching between the two recomputes no prediction map."""
    return "pred" if mode == BOTH else mode


def by_label(mode: str) -> bool:
    """Whether the first maps explain the image's given label (``--target label``) rather than the prediction
    (``pred`` and ``pred,label``: the true class's maps of ``pred,label`` are ``pipeline/labelmaps.py``'s)."""
    return maps_target(mode) == "label"


def target_class(mode: str, pred: T, label: T) -> T:
    """The class the first maps of an image explain under ``mode``: ``label`` under ``--target label``, else
    ``pred``. Ints or tensors of classes alike."""
    return label if by_label(mode) else pred


def label_key(method: str) -> str:
    """The manifest key of a method's map of the true class (``gradcam`` -> ``gradcam@label``)."""
    return method + LABEL_SUFFIX


def is_label_key(key: str) -> bool:
    return key.endswith(LABEL_SUFFIX)


def method_of(key: str) -> str:
    """The method a map key belongs to (``gradcam@label`` -> ``gradcam``)."""
    return key[: -len(LABEL_SUFFIX)] if is_label_key(key) else key


def misclassified(label: int | None, pred: int) -> bool:
    """Whether an image has a true class that is not its prediction (then ``pred,label`` explains both)."""
    return label is not None and label >= 0 and label != pred
