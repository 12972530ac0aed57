"""Stream the planned images through the model in batches and hand each batch to the writer."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch

from .. import targets
from ..dataset import ImageDataset, LoadedBatch
from ..defaults import default_writers, model_threads
from ..engines import ComputeJob
from ..decode import device_decode, finish_batch
from ..scan import Failure, ImageEntry
from ..manifest import ImageRow
from ..model import heads
from ..errors import ModelError, vanished
from ..methods import Method, StopRequested
from ..methods.base import first_segmenter
from ..model.loading import LoadedModel
from ..methods.explainer import Explainer, Fitting, MethodMaps, Split
from .options import RunOptions
from .plan import Hashes, Known, Plan, Tally
from .prepare import Prepared
from .loader import handover, handover_warning, images_loader, until_stopped
from . import notices
from . import labelmaps
from .progress import progress_bar
from .pictures import DisplayStacks, batch_pictures
from .writer import MapPictures, WriteItem, WriteJob, Writer, overwrites


def method_groups(plan: Plan) -> dict[tuple[str, ...], list[ImageEntry]]:
    """Images that need the same methods go through the model together, in plan order."""
    groups: dict[tuple[str, ...], list[ImageEntry]] = defaultdict(list)
    for w in plan.work.values():
        groups[tuple(w.methods)].append(w.entry)
    return groups


def batches(plan: Plan, batch_size: int) -> list[tuple[tuple[str, ...], list[ImageEntry]]]:
    """The run's batches, in order, as the local engine's DataLoader cuts them: ``batch_size`` images of one
    method group at a time. The Ray engine cuts the same ones, so a batch (and every map: the model sees the
    same images together) is the same whichever engine computes it."""
    return [
        (todo, entries[i : i + batch_size])
        for todo, entries in method_groups(plan).items()
        for i in range(0, len(entries), batch_size)
    ]


class BatchWorker:
    """The per-batch work of both engines: a batch's images decoded, explained and turned into a WriteJob.

    The local engine runs one in-process (decoding in DataLoader workers); the Ray engine one per actor
    (:mod:`.ray_worker`). ``plan`` and ``known`` need to hold only the images of the batches it is given.
    """

    def __init__(
        self,
        opts: RunOptions,
        prepared: Prepared,
        hashes: Hashes,
        plan: Plan,
        known: Known,
        run_id: int,
        scorer: Any = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: Callable[[int, int], None] | None = None,
        on_split: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[str | None], None] | None = None,
    ) -> None:
        self.opts, self.prepared, self.hashes, self.plan, self.known = opts, prepared, hashes, plan, known
        self.run_id, self.scorer, self.should_stop, self.on_progress = run_id, scorer, should_stop, on_progress
        self.on_step = on_step  # the step a batch of several methods runs now (Explainer.on_step)
        device = prepared.ctx.device
        # a batch that runs out of memory is explained in the parts that fit (the policy explain() and sanity share);
        # on_split: the batch_split event then (split_event)
        self.fitting = Fitting(device, None if on_split is None else lambda s: on_split(split_event(s, device)))
        self._span = (0, 1, 1)  # the part of the batch being explained: (first image, images, the batch's images)
        self.label_maps = 0  # --target pred,label: the part's images getting true-class maps, while they do
        self._explainers: dict[tuple[str, ...], tuple[list[Method], Explainer]] = {}
        self._on_device: dict[tuple[str, ...], bool] = {}
        self.labels = labelmaps.LabelPass(self)  # --target pred,label: the true class's maps

    def explainer(self, todo: tuple[str, ...]) -> tuple[list[Method], Explainer]:
        if todo not in self._explainers:
            methods = [m for m in self.prepared.methods if m.name in todo]
            self._explainers[todo] = (
                methods,
                Explainer(
                    methods,
                    self.prepared.ctx,
                    self.opts.target,
                    self.scorer,
                    should_stop=self.should_stop,
                    on_progress=None if self.on_progress is None else self.within,
                    decision=self.prepared.model.decision,
                    on_step=self.on_step,
                ),
            )
        return self._explainers[todo]

    def within(self, done: int, total: int) -> None:
        """A method's progress in the part being explained, as progress in the whole batch. While the part's
        true-class maps are made (``label_maps`` images, labelmaps.explain), its own pass counts as its ``n``
        images done and those maps as ``label_maps`` more: the share steps back when they start (work found that
        the prediction pass could not know of) and reaches the end with them, where it stayed at 100 % with "0s
        left" for minutes."""
        assert self.on_progress is not None
        start, n, whole = self._span
        k = self.label_maps
        if k:
            done, total = n * total + k * done, (n + k) * total  # of the part's n + k "images"
        if n == whole:
            self.on_progress(done, total)
        else:
            self.on_progress(start * total + done * n, whole * total)

    def segmenter(self, todo: tuple[str, ...]) -> Callable[[np.ndarray], np.ndarray] | None:
        return first_segmenter(self.explainer(todo)[0] + labelmaps.label_methods(self.prepared.methods, todo))

    def on_device(self, todo: tuple[str, ...]) -> bool:
        """Whether this group's JPEGs are decoded on the device (--decode; see decode.py), decided once."""
        if todo not in self._on_device:
            self._on_device[todo] = device_decode(
                self.opts.decode, self.prepared.ctx.device, segments=self.segmenter(todo) is not None
            )
        return self._on_device[todo]

    def dataset(self, todo: tuple[str, ...], entries: list[ImageEntry]) -> ImageDataset:
        """Decoding (and LIME's segmenting) of these images; new and changed files are hashed from the same open."""
        return ImageDataset(
            entries,
            self.prepared.model.input_size,
            self.segmenter(todo),
            want_hash=[self.plan.work[e.rel].fresh for e in entries],
            jpeg_bytes=self.on_device(todo),
        )

    def job(self, todo: tuple[str, ...], entries: list[ImageEntry], b: LoadedBatch) -> tuple[WriteJob, bool]:
        """The WriteJob of one collated batch ``b`` of ``entries``, and whether a stop abandoned it mid-batch
        (then it carries only the failures: none of its images is committed).

        A batch that runs out of memory (the GPU's, or the host's) is explained in the parts that fit
        (:class:`~xaibatch.methods.explainer.Fitting`: halves, later batches cut to the size that fitted); the parts'
        WriteJobs joined are the one the whole batch gives. A single image that does not fit raises."""
        failed = [Failure(entries[i].rel, reason, "image") for i, reason in b.failed]  # fine before, failing now: gone
        if b.x is None and b.undecoded is None:
            return WriteJob(self.run_id, failed=failed), False
        whole = b if not b.failed else dataclasses.replace(b, failed=[])
        n = len(b.index)

        jobs: list[WriteJob] = []

        def part(p: int, q: int) -> None:
            self._span = (p, q - p, n)
            jobs.append(self._explained(todo, entries, whole if q - p == n else whole.part(p, q)))

        try:
            self.fitting.parts(n, part)
        except Stopped as stop:  # nothing of the batch is committed: only its failures
            self.fitting.say()
            return WriteJob(self.run_id, failed=failed + [f for j in jobs for f in j.failed] + stop.failed), True
        self.fitting.say()
        if len(jobs) == 1:
            job = jobs[0]
            job.failed = failed + job.failed
            return job, False
        job = WriteJob(self.run_id, failed=failed)
        for one in jobs:
            job.items += one.items
            job.image_rows += one.image_rows
            job.drop_maps += one.drop_maps
            job.failed += one.failed
        return job, False

    def _explained(self, todo: tuple[str, ...], entries: list[ImageEntry], b: LoadedBatch) -> WriteJob:
        """The WriteJob of ``b`` (the whole batch, or a part), its failures those of decoding only; a stop raises
        :class:`Stopped` with them."""
        methods, explainer = self.explainer(todo)
        if self.on_device(todo):  # the JPEGs the workers only read: decoded and resized here, as one batch
            b = finish_batch(b, self.prepared.ctx.device, self.prepared.model.input_size)
        failed = [Failure(entries[i].rel, reason, "image") for i, reason in b.failed]
        if b.x is None:
            return WriteJob(self.run_id, failed=failed)
        batch_entries = [entries[i] for i in b.index]
        labels = torch.tensor([e.label if e.label is not None else -1 for e in batch_entries])
        try:
            explained = explainer(b.x, labels, b.segments)
            label_idx, label_maps = labelmaps.explain(self, todo, b, batch_entries, explained.probs, labels)
        except StopRequested:
            raise Stopped(failed) from None
        model = self.prepared.model
        check_probs(explained.probs, batch_entries, model)
        job = build_job(
            batch_entries,
            b,
            explained.probs.cpu().numpy(),
            explained.methods,
            methods,
            self.hashes,
            self.plan,
            self.known,
            self.run_id,
            self.opts.target,
            self.opts.max_map_side,
            model.decision,
        )
        signed = {m.name: m.signed for m in self.prepared.methods}
        labelmaps.add(job, b, label_idx, label_maps, signed, self.hashes.labels, self.opts.max_map_side)
        job.failed = failed
        return job


class Stopped(Exception):
    """A stop abandoned the batch (a method raised StopRequested): the failures its decoding found so far."""

    def __init__(self, failed: list[Failure]) -> None:
        super().__init__("stopped")
        self.failed = failed


def split_event(split: Split, device: torch.device) -> dict[str, Any]:
    """The ``batch_split`` event: a batch of ``split.batch`` images did not fit in memory ("device": the GPU's;
    "host": the host's), so the run explains ``split.size`` at a time from now on; ``text`` is its warning line."""
    text = split.text(device, f"next time give --batch-size {split.size}")
    return {"event": "batch_split", "batch_size": split.batch, "size": split.size, "memory": split.memory, "text": text}


def account(tally: Tally, emit: Callable[[dict[str, Any]], None], failed: list[Failure], computed: int) -> None:
    """Count a batch in the run's tally and report its failures (both engines); an image moved or deleted since the
    scan is no failure: a ``vanished`` event, left to the next run (errors.VANISHED)."""
    if tally.first_batch is None:
        tally.first_batch = time.monotonic()
    gone = [f for f in failed if vanished(f.reason)]
    failed = [f for f in failed if not vanished(f.reason)]
    tally.failed.extend(failed)
    tally.vanished.extend(gone)
    tally.done += len(failed) + len(gone) + computed
    tally.computed += computed
    for f in failed:
        emit({"event": "failure", "path": f.rel, "reason": f.reason})
    for f in gone:
        emit({"event": "vanished", "path": f.rel, "reason": f.reason})


def announce(
    prepared: Prepared,
    plan: Plan,
    emit: Callable[[dict[str, Any]], None],
    log: Callable[[str], None],
    known: Known,
    json_events: bool = False,
) -> None:
    """Slow methods say up front what they cost: every map they will compute, the true class's too
    (``--target pred,label``; see labelmaps.expected). ``json_events`` (--log-json): as an event only."""
    for m in prepared.methods:
        n = sum(1 for w in plan.work.values() if m.name in w.methods)
        exact, guessed, bound = labelmaps.expected(plan, known, targets.label_key(m.name))
        extra = exact + guessed
        if n + extra and (line := m.estimate(n + extra)):
            if extra:
                how = ", at most" if bound else (f", {guessed} of them estimated" if guessed else "")
                line += f" (with {extra} true-class map(s) of misclassified images{how})"
            emit({"event": "estimate", "method": m.name, "images": n + extra, "label_maps": extra, "text": line})
            if not json_events:
                log(f"xaibatch: {line}")


def compute(job: ComputeJob) -> None:
    """The local engine: stream the planned images through the model, batch by batch, each batch's files and rows
    to the writer."""
    opts, out, prepared, plan, known, hashes = job.opts, job.out, job.prepared, job.plan, job.known, job.hashes
    run_id, stop, tally, emit, log, check = job.run_id, job.stop, job.tally, job.emit, job.log, job.check
    if not plan.work:
        return
    announce(prepared, plan, emit, log, known, opts.events_only)

    device = prepared.ctx.device
    progress = progress_bar(opts, len(plan.work), log, emit, batch_size=prepared.batch_size)
    on_progress = progress.within  # within one batch (LIME: per model sub-batch)
    writer = Writer(
        out,
        on_done=progress.update,
        check=check,
        writers=default_writers(device.type, prepared.workers) if opts.writers is None else opts.writers,
    )
    writer.start()
    scorer = None
    if opts.faithfulness is not None:
        from ..evaluation.faithfulness import scorer_for

        scorer = scorer_for(opts.faithfulness, prepared.ctx, hashes.methods)
    worker = BatchWorker(
        opts,
        prepared,
        hashes,
        plan,
        known,
        run_id,
        scorer,
        should_stop=lambda: stop.requested,
        on_progress=on_progress,
        on_split=lambda event: say_split(emit, log, event, not opts.events_only),
        on_step=progress.running,
    )
    said: set[str] = set()
    threads = torch.get_num_threads()  # torch's own, given back at the end (explain() and later runs in a notebook)
    # many forwards per image (a method that says its cost up front: LIME; faithfulness): the workers mostly idle
    slow = opts.faithfulness is not None or any(m.estimate(1) for m in prepared.methods)
    try:
        for todo, entries in method_groups(plan).items():
            workers = loader_workers(prepared.workers, len(entries), prepared.batch_size)
            torch.set_num_threads(model_threads(device.type, workers, threads, slow))  # the workers' CPUs left
            dataset = worker.dataset(todo, entries)
            piped = handover(workers, prepared.batch_size * dataset.tensor_bytes())
            if piped is not None and piped not in said:
                said.add(piped)
                text = handover_warning(piped)
                notices.say([("batch-handover", text, {"reason": piped})], log, emit, not opts.events_only)
            loader = images_loader(dataset, prepared.batch_size, workers, device.type, piped is not None)
            for b in until_stopped(loader, stop):  # a signal ends the wait for a batch at once
                job, abandoned = worker.job(todo, entries, b.tensors())
                overwrites(job, known.images, known.maps)  # the rows the writer drops before writing over their files
                account(tally, emit, job.failed, len(job.items))
                writer.put(job)  # an abandoned batch: only its failures, none of its images is committed
                if abandoned or stop.requested:
                    break  # this batch is queued; the writer drains the queue below
            if stop.requested:
                break
    finally:
        torch.set_num_threads(threads)
        try:
            writer.finish()
        finally:
            progress.close()


def say_split(
    emit: Callable[[dict[str, Any]], None], log: Callable[[str], None], event: dict[str, Any], lines: bool = True
) -> None:
    """A batch did not fit in memory (split_event): the event, and a warning line unless ``lines`` is False
    (--log-json: events only, as the run's notices; none with -q)."""
    emit(event)
    if lines:
        log(f"xaibatch: warning: {event['text']}")


def loader_workers(workers: int, images: int, batch_size: int) -> int:
    """DataLoader processes for ``images`` in batches of ``batch_size``: at most one a batch. A worker loads whole
    batches, so more only start (each a fork of this process) and idle; 1000 over 2 batches made no progress in
    a minute and took most of another to stop."""
    return min(workers, -(-images // batch_size))


def build_job(
    entries: list[ImageEntry],
    b: LoadedBatch,
    probs: np.ndarray,
    maps: dict[str, MethodMaps],
    methods: list[Method],
    hashes: Hashes,
    plan: Plan,
    known: Known,
    run_id: int,
    target: str,
    max_map_side: int = 0,
    decision: Any = None,
) -> WriteJob:
    """The writer's job for one computed batch: its pictures (made on the device), rows to write and to drop."""
    job = WriteJob(run_id)
    signed = {m.name: m.signed for m in methods}
    orig_sizes = [tuple(s) for s in b.orig_size]
    fresh = [plan.work[e.rel].fresh for e in entries]
    views: dict[str, list] = {name: [] for name in maps}
    device = next(iter(maps.values())).maps.device if maps else torch.device("cpu")
    stacks = DisplayStacks(b.display, orig_sizes, device, b.display_on_device)  # up once, for every method
    pictures = {
        name: batch_pictures(b.display, mm.maps, signed[name], orig_sizes, max_map_side, views[name], stacks=stacks)
        for name, mm in maps.items()
    }
    shown = [plan.work[e.rel].display for e in entries]  # display copies to (re)write
    thumbs = stacks.thumbs(shown)
    preds = heads.predict_rows(probs, decision)  # one call per batch: these rows are the compute thread's work
    rows = probs.tolist()  # the float32 values as Python floats, as float() gives them
    kept = heads.stored(torch.from_numpy(probs)).tolist()  # what the decision compared: the manifest's values
    for j, e in enumerate(entries):
        p, pred = rows[j], preds[j]
        h, w = orig_sizes[j]
        stem = plan.stems[e.rel]
        item = WriteItem(rel=e.rel, stem=stem, width=w, height=h)
        if shown[j]:
            item.display, item.display_thumb = b.display[j], thumbs[j]
        if fresh[j]:
            job.image_rows.append(
                ImageRow(
                    rel=e.rel,
                    stem=stem,
                    size=e.size,
                    mtime_ns=e.mtime_ns,
                    ctime_ns=e.ctime_ns,
                    sha256=b.sha256[j],
                    width=w,
                    height=h,
                    label=e.label,
                    pred=pred,
                    target=int(targets.target_class(target, pred, e.label)),
                    confidence=p[pred],
                    probs=kept[j],
                    predict_hash=hashes.predict,
                    run_id=run_id,
                )
            )
            # New content or a new model: maps of methods not requested this run describe the old picture.
            job.drop_maps += [(e.rel, m) for m in known.maps.get(e.rel, {}) if m not in maps]
        for name, mm in maps.items():
            full, over, thumb = pictures[name][j]
            item.maps.append(
                MapPictures(
                    name,
                    hashes.methods[name],
                    full,
                    over,
                    thumb,
                    mm.info[j] if mm.info else None,
                    mm.faith[j] if mm.faith else None,
                    views[name][j],
                )
            )
        job.items.append(item)
    return job


def check_probs(probs: torch.Tensor, entries: list[ImageEntry], model: LoadedModel) -> None:
    """Refuse NaN or infinite outputs (an overflowing model) instead of committing them."""
    finite = torch.isfinite(probs).all(dim=1)
    if not bool(finite.all()):
        rel = entries[int((~finite).nonzero()[0, 0])].rel
        raise ModelError(
            f"the model ({model.checkpoint}) gives NaN or infinite probabilities (first for {rel}); "
            "check the checkpoint"
        )
