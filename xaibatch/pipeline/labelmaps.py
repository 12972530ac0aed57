"""``--target pred,label``: a batch's misclassified images also get each method's map of their true class.

After the batch's own pass (prediction maps for every image), the images that need true-class maps go
through the model once more, alone: a second :class:`~xaibatch.methods.explainer.Explainer` whose target is
the label runs only the methods whose ``<method>@label`` key the plan asked for, so a correct image is never
explained twice. Which images: those the batch finds misclassified when their prediction is new, and the
known misclassified ones the plan asked for (``plan.label_todo``). Their pictures join the batch's WriteJob
as map rows of their own (key ``targets.label_key``), committed with the batch like any map. Faithfulness
scores only the prediction maps. Both engines run this through :class:`.compute.BatchWorker`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import torch

from .. import targets
from ..methods import Method
from ..dataset import LoadedBatch
from ..methods.explainer import Explainer, MethodMaps
from ..model import heads
from ..scan import ImageEntry
from .pictures import batch_pictures
from .writer import MapPictures, WriteJob

if TYPE_CHECKING:
    from .compute import BatchWorker
    from .plan import Known, Plan

Maps = dict[str, MethodMaps]


def expected(plan: Plan, known: Known, key: str) -> tuple[int, int, bool]:
    """How many true-class maps of ``key`` (``lime@label``) the run will compute, for the estimate at its start:
    (exactly known, estimated, whether the estimate is only an upper bound).

    Exact for an image whose prediction stays (``plan.label_todo`` asked for the key only because it is a known
    misclassified image). An image whose prediction the batch decides anew gets the map only if it has a label
    and turns out misclassified, which nobody knows before the model runs: those are estimated at the error
    rate of the labelled images the manifest holds (the last run's predictions, a fair guess for the same
    model on more of the same folder), and where it holds none (a first run) as every labelled new image,
    an upper bound.
    """
    exact = new = 0
    for w in plan.work.values():
        if key not in w.methods:
            continue
        if not w.fresh:
            exact += 1
        elif w.entry.label is not None:
            new += 1
    if not new:
        return exact, 0, False
    labelled = [r for r in known.images.values() if r.label is not None and r.label >= 0]
    if not labelled:
        return exact, new, True
    wrong = sum(targets.misclassified(r.label, r.pred) for r in labelled)
    return exact, round(new * wrong / len(labelled)), False


def label_methods(methods: list[Method], todo: tuple[str, ...]) -> list[Method]:
    """The methods whose true-class maps ``todo`` asks for."""
    return [m for m in methods if targets.label_key(m.name) in todo]


class LabelPass:
    """A BatchWorker's true-class explainers, one per method group that asks for true-class maps."""

    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker
        self._explainers: dict[tuple[str, ...], Explainer | None] = {}

    def explainer(self, todo: tuple[str, ...]) -> Explainer | None:
        """The group's true-class explainer, or None when it asks for no true-class map."""
        if todo not in self._explainers:
            w = self.worker
            methods = label_methods(w.prepared.methods, todo)
            self._explainers[todo] = (
                Explainer(
                    methods,
                    w.prepared.ctx,
                    "label",
                    None,  # faithfulness: prediction maps only
                    should_stop=w.should_stop,
                    on_progress=None if w.on_progress is None else w.within,  # as the part's own pass reports
                    decision=w.prepared.model.decision,
                    on_step=None if w.on_step is None else functools.partial(true_class_step, w.on_step),
                )
                if methods
                else None
            )
        return self._explainers[todo]


def true_class_step(say: Callable[[str | None], None], step: str | None) -> None:
    """A step of the true-class pass, as the progress line names it."""
    say(None if step is None else f"{step} (true class)")


def chosen(worker: BatchWorker, entries: list[ImageEntry], probs: torch.Tensor) -> list[int]:
    """Positions in the batch of the images that get true-class maps."""
    decision = worker.prepared.model.decision
    p = probs.cpu().numpy()
    out = []
    for j, e in enumerate(entries):
        if e.label is None:
            continue
        if worker.plan.work[e.rel].fresh:  # its prediction is decided now, as build_job decides it
            if targets.misclassified(e.label, heads.predict_one(p[j], decision)):
                out.append(j)
        else:  # the plan asked for it: a known misclassified image (plan.label_todo)
            out.append(j)
    return out


def explain(
    worker: BatchWorker,
    todo: tuple[str, ...],
    b: LoadedBatch,
    entries: list[ImageEntry],
    probs: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[list[int], Maps]:
    """The true-class maps of the batch's images that need them: (their positions, maps per key)."""
    ex = worker.labels.explainer(todo)
    if ex is None:
        return [], {}
    idx = chosen(worker, entries, probs)
    if not idx:
        return [], {}
    sel = torch.tensor(idx)
    segments = None if b.segments is None else b.segments[sel]
    worker.label_maps = len(idx)  # the progress of this pass: after the part's own (BatchWorker.within)
    try:
        explained = ex(b.x[sel], labels[sel], segments)
    finally:
        worker.label_maps = 0
    return idx, {targets.label_key(name): v for name, v in explained.methods.items()}


def add(
    job: WriteJob,
    b: LoadedBatch,
    idx: list[int],
    maps: Maps,
    signed: dict[str, bool],
    hashes: dict[str, str],
    max_map_side: int,
) -> None:
    """Put the true-class maps on their images' WriteItems (``job.items`` in batch order, as build_job makes them);
    rows build_job meant to drop for those keys are written anew instead, so they stay."""
    if not idx:
        return
    display = [b.display[i] for i in idx]
    sizes = [tuple(b.orig_size[i]) for i in idx]
    written: set[tuple[str, str]] = set()
    for key, mm in maps.items():
        arr, info = mm.maps, mm.info
        views: list = []
        pictures = batch_pictures(display, arr, signed[targets.method_of(key)], sizes, max_map_side, views)
        for n, j in enumerate(idx):
            item = job.items[j]
            full, over, thumb = pictures[n]
            item.maps.append(
                MapPictures(key, hashes[key], full, over, thumb, info[n] if info else None, None, views[n])
            )
            written.add((item.rel, key))
    job.drop_maps = [d for d in job.drop_maps if d not in written]
