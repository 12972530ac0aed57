"""Faithfulness scores of maps that stay: scored from their saved ``.npy``, no method run (``Plan.scored``).

Turning ``--faithfulness`` on for a folder (or changing its steps or baseline) leaves every map's own hash
current: only the scores are due. The planner files such an image under ``Plan.scored`` when each due map is the
method's own map as saved (the image at the model's input size: the ``.npy`` was not resized, see
:func:`.plan._Planner.scored_only`); here its maps are read back and scored as the batch that computed them would
have scored them (:class:`~xaibatch.evaluation.faithfulness.Scorer`: the same forwards of the perturbed images, the
explained class from the image's row, its probability from the model's forward of the image). The method's
explanation (LIME's thousand forwards an image) is not run again.

Runs on the driver after the engine's compute, whichever engine (as the chance line does), in the run's batches;
each batch's scores are committed in one transaction, so a stopped or killed run leaves the rest to the next run,
which plans them again. Its progress is a bar of its own ("scoring"): its images cost a fraction of a computed
one's, and one rate over both would have misjudged the time left.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ..dataset import ImageDataset
from ..decode import device_decode, finish_batch
from ..engines import ComputeJob
from ..methods.base import first_segmenter
from .loader import handover, images_loader, until_stopped
from .plan import Scored
from .progress import progress_bar
from .writer import faith_fields

SCORING = "scoring"  # the phase the progress events and bar of this pass name


def score_saved(job: ComputeJob) -> None:
    """Score every map of ``job.plan.scored`` from its saved array and commit the scores, batch by batch."""
    from ..evaluation.faithfulness import scorer_for
    from ..manifest import Manifest
    from .. import layout
    from .compute import loader_workers

    plan, prepared, opts = job.plan, job.prepared, job.opts
    if not plan.scored or opts.faithfulness is None:
        return
    device = prepared.ctx.device
    scorer = scorer_for(opts.faithfulness, prepared.ctx, job.hashes.methods)
    assert scorer is not None
    n_maps = sum(len(s.methods) for s in plan.scored.values())
    text = (
        f"scoring the saved maps of {len(plan.scored)} image(s) ({n_maps} map(s)): their faithfulness scores only, "
        "no map computed again"
    )
    job.emit({"event": "estimate", "method": "faithfulness", "images": len(plan.scored), "label_maps": 0, "text": text})
    if not opts.events_only:
        job.log(f"xaibatch: {text}")
    progress = progress_bar(opts, len(plan.scored), job.log, job.emit, batch_size=prepared.batch_size, phase=SCORING)
    manifest = Manifest(job.out / layout.MANIFEST)
    try:
        groups: dict[tuple[str, ...], list[Scored]] = defaultdict(list)
        for s in plan.scored.values():
            groups[s.methods].append(s)
        for methods, items in groups.items():
            # decoded as the batches that computed these maps decoded them (on the device or not: the same pixels)
            named = [m for m in prepared.methods if m.name in methods]
            on_device = device_decode(opts.decode, device, segments=first_segmenter(named) is not None)
            entries = [s.entry for s in items]
            dataset = ImageDataset(entries, prepared.model.input_size, None, jpeg_bytes=on_device)
            workers = loader_workers(prepared.workers, len(entries), prepared.batch_size)
            piped = handover(workers, prepared.batch_size * dataset.tensor_bytes()) is not None  # as compute's
            loader = images_loader(dataset, prepared.batch_size, workers, device.type, piped)
            for b in until_stopped(loader, job.stop):
                b = b.tensors()
                if on_device:
                    b = finish_batch(b, device, prepared.model.input_size)
                rows = _score_batch(job, scorer, methods, [entries[i] for i in b.index], b)
                with manifest.transaction():
                    job.check()
                    manifest.set_faith(rows, job.run_id)
                n = len(b.index) + len(b.failed)  # an unreadable image too: done, left to the next run
                job.tally.scored += n
                progress.update(n)
                if job.stop.requested:
                    break
            if job.stop.requested:
                break
    finally:
        manifest.close()
        progress.close()


def _score_batch(job: ComputeJob, scorer: Any, methods: tuple[str, ...], entries: list, b: Any) -> list[tuple]:
    """(rel, method, MapRow faith fields) of one loaded batch. An image unreadable now, or a map file gone since the
    plan, is left as it is (the next run plans it again)."""
    if b.x is None:
        return []
    prepared, known = job.prepared, job.known
    dev = prepared.ctx.device
    keep, maps = [], {m: [] for m in methods}
    for j, e in enumerate(entries):
        try:
            arrays = {m: np.load(job.out / known.maps[e.rel][m].npy, allow_pickle=False) for m in methods}
        except (OSError, ValueError, KeyError):
            continue
        keep.append(j)
        for m in methods:
            maps[m].append(torch.from_numpy(np.ascontiguousarray(arrays[m], dtype=np.float32)))
    if not keep:
        return []
    x = prepared.ctx.preprocess.normalize(b.x[keep] if len(keep) < len(entries) else b.x, dev)
    targets = torch.tensor([known.images[entries[j].rel].target for j in keep], device=dev)
    with torch.no_grad():  # the explained class's probability on the image, from the model the Explainer runs
        probs = torch.softmax(prepared.ctx.model(x).float(), dim=1)
    p_image = probs.gather(1, targets[:, None])[:, 0]
    scores = scorer.score(x, targets, p_image, {m: torch.stack(v).to(dev) for m, v in maps.items()})
    out = []
    for m in methods:
        for j, row in zip(keep, scores[m].rows()):
            out.append((entries[j].rel, m, faith_fields({**row, "hash": scorer.hashes.get(m)})))
    return out
