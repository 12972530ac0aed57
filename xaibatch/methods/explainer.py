"""Explain one batch: one shared forward pass (keeping the CAM layer's activations, and autograd's graph from
that layer on, when a method needs them), then each method on it. The one place a batch is explained: runs,
``xaibatch bench`` and :func:`xaibatch.explain`; :meth:`Explainer.explain_tensors` is the one loop over the
batches of images already in memory. :class:`Fitting` is how all of them split a batch that runs out of memory."""

from __future__ import annotations

import functools

import gc
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

from ..errors import Caller, OneImageTooLarge, memory_message, out_of_memory
from ..model.heads import predict
from ..model.layers import forward_from_layer
from ..targets import target_class
from .base import Batch, Method, ModelContext, StopRequested, pixel_seeds, uses_seeds

FAITHFULNESS_STEP = "faithfulness"  # the scores' step of a batch, timed beside the methods'


@dataclass
class MethodMaps:
    """One method's result for a batch."""

    maps: torch.Tensor  # (B, h, w) float32
    info: list[dict[str, Any]] | None  # per image, what the method reports (LIME: its segments, ...), or None
    faith: list[dict[str, Any]] | None = None  # per image, the faithfulness scores (with a scorer), or None

    def cpu(self) -> MethodMaps:
        return MethodMaps(self.maps.cpu(), self.info, self.faith)


@dataclass
class Explained:
    """A batch explained: the model's probabilities and each method's maps, by method name."""

    probs: torch.Tensor  # (B, K)
    methods: dict[str, MethodMaps]

    def cpu(self) -> Explained:
        return Explained(self.probs.cpu(), {k: v.cpu() for k, v in self.methods.items()})

    @staticmethod
    def cat(parts: list[Explained]) -> Explained:
        """Batches in order as one: per-image lists filled with None where a batch had none."""
        methods = {}
        for name in parts[0].methods:
            got = [p.methods[name] for p in parts]
            info: list[Any] = []
            faith: list[Any] = []
            for g in got:
                info += g.info or [None] * g.maps.shape[0]
                faith += g.faith or [None] * g.maps.shape[0]
            methods[name] = MethodMaps(
                torch.cat([g.maps for g in got]), info, faith if any(g.faith for g in got) else None
            )
        return Explained(torch.cat([p.probs for p in parts]), methods)


class Explainer:
    """The model plus the methods, run one batch at a time on the device."""

    def __init__(
        self,
        methods: list[Method],
        ctx: ModelContext,
        target: str = "pred",
        scorer: Any = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        decision: Any = None,
        clock: Callable[[], float] = time.monotonic,
        on_step: Callable[[str | None], None] | None = None,
    ) -> None:
        self.decision = decision  # heads.Decision: two classes at a threshold; None: the argmax
        self.should_stop = should_stop  # polled between methods, and by long methods (LIME) per model sub-batch
        self.on_progress = on_progress  # (done, total) of the batch: see BatchShare
        # the step a batch of several now runs (a method's name, FAITHFULNESS_STEP; None: the batch is done): a first
        # batch has no share to show until each step ran once, and on a CPU nine methods take minutes
        self.on_step = on_step
        self.clock = clock
        self.seconds_per_image: dict[str, float] = {}  # each step's time in the last batch: BatchShare's weights
        self.scorer = scorer  # faithfulness.Scorer: deletion/insertion per map, from the maps in memory
        self.methods = methods
        self.ctx = ctx
        self.target = target
        self.want_activations = any(m.needs_activations for m in methods)
        self.seeded = uses_seeds(methods)  # per-image seeds from the pixels (base.pixel_seeds), when a method draws

    def __call__(self, x_uint8: torch.Tensor, labels: torch.Tensor | None, segments: torch.Tensor | None) -> Explained:
        """Explain one batch of (B, 3, S, S) uint8 images: probabilities (B, K) and each method's maps. Each
        image's random draws (LIME's samples, ...) are seeded from its own pixels: its maps are the same in any
        batch, at any place in it, and whatever the file was called."""
        seeds = pixel_seeds(x_uint8) if self.seeded else None
        dev = self.ctx.device
        x = self.ctx.preprocess.normalize(x_uint8, dev)
        net = self.ctx.model
        activations = None
        if self.want_activations:  # a graph from the target layer on: all Grad-CAM differentiates
            assert self.ctx.layer is not None  # build_methods found one for the methods that read it (needs_layer)
            logits, activations = forward_from_layer(net, x, self.ctx.layer)
        else:
            with torch.no_grad():
                logits = net(x)
        probs = torch.softmax(logits.detach().float(), dim=1)
        # (``pred,label``'s true-class maps: pipeline/labelmaps.py)
        targets = target_class(self.target, predict(probs, self.decision), labels).to(dev)
        steps = [m.name for m in self.methods] + ([FAITHFULNESS_STEP] if self.scorer is not None else [])
        share = BatchShare(
            steps,
            self.seconds_per_image,
            x.shape[0],
            self.on_progress,
            self.clock,
            settle(dev, steps, self.on_progress),
        )
        batch = Batch(
            x=x.detach(),
            targets=targets,
            logits=logits,
            activations=activations,
            segments=None if segments is None else segments.to(dev),
            seeds=seeds,
            should_stop=self.should_stop,
            on_progress=None if self.on_progress is None else share.within,
        )
        out = {}
        say = self.on_step if self.on_step is not None and len(steps) > 1 else lambda step: None
        for i, m in enumerate(self.methods):
            if i:  # between methods too: Score-CAM's or Occlusion's batch took minutes to see a Ctrl-C
                self._check_stop()
            say(m.name)
            e = m.explain(batch)
            # On the input's device, whatever the method returned: pytorch-grad-cam hands back numpy (cam:* maps
            # came back on the CPU), and a CPU map beside a GPU one failed in the pictures and the faithfulness
            # scores (a device mismatch a CPU run never shows).
            out[m.name] = MethodMaps(e.maps.detach().float().to(x.device), e.info)
            share.step_done()
        if self.scorer is not None:
            if self.methods:
                self._check_stop()
            say(FAITHFULNESS_STEP)
            p_image = probs.gather(1, targets[:, None])[:, 0]
            scores = self.scorer.score(batch.x, targets, p_image, {k: v.maps for k, v in out.items()})
            for k, v in out.items():
                v.faith = [{**row, "hash": self.scorer.hashes.get(k)} for row in scores[k].rows()]
            share.step_done()
        say(None)
        return Explained(probs, out)

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise StopRequested

    def explain_tensors(
        self,
        x_uint8: torch.Tensor,
        batch_size: int,
        labels: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        segmenter: Callable[[np.ndarray], np.ndarray] | None = None,
        fitting: Fitting | None = None,
    ) -> Iterator[Explained]:
        """Explain (N, 3, S, S) uint8 images already in memory, ``batch_size`` at a time: each batch's result, on
        the CPU, in order (:meth:`Explained.cat` joins them). ``labels`` and ``segments`` are per image;
        with ``segmenter`` (and no ``segments``) each batch's superpixels are made from its images, as a
        DataLoader worker makes them in a run.

        With ``fitting``, a batch that runs out of memory is explained in the parts it fits in (one result per
        part), and later batches in parts of the size that fitted (:class:`Fitting`); without, it raises (the
        bench times the batch size it was asked for)."""
        n = x_uint8.shape[0]
        for a in range(0, n, batch_size):
            z = min(a + batch_size, n)
            seg = None if segments is None else segments[a:z]
            if seg is None and segmenter is not None:  # per image: the same superpixels in any part
                hwc = x_uint8[a:z].permute(0, 2, 3, 1).cpu().numpy()
                seg = torch.stack([torch.from_numpy(np.ascontiguousarray(segmenter(im), dtype=np.int64)) for im in hwc])

            def part(p: int, q: int, a: int = a, seg: torch.Tensor | None = seg) -> Explained:
                """Images a + p ... a + q - 1, each with its own label and superpixels (and seed: its pixels')."""
                ls = None if labels is None else labels[a + p : a + q]
                return self(x_uint8[a + p : a + q], ls, None if seg is None else seg[p:q]).cpu()

            if fitting is None:
                yield part(0, z - a)
                continue
            done = fitting.parts(z - a, part)
            fitting.say()
            yield from done


class BatchShare:
    """How much of one batch is done, for the progress line (``report(done, total)``), when several steps explain
    it: each method in turn, then the faithfulness scores. Their costs differ a hundredfold (Grad-CAM's backward
    against LIME's 1,000 forwards or Score-CAM's one forward per channel), so the share is of the batch's time:
    the steps done, the current one (from its own share when it reports one, LIME's, else from its time in the
    last batch) and those still to come, each from its time per image in the last batch (``seconds_per_image``,
    updated here). While a step still to come has never run there is no share: nothing is said rather than
    "current batch 100%" while Score-CAM and Occlusion still ran for minutes (LIME's share was the batch's, and
    the first estimate a third of the time the run took). One step: its own share, as it reports it."""

    def __init__(
        self,
        steps: list[str],
        seconds_per_image: dict[str, float],
        images: int,
        report: Callable[[int, int], None] | None,
        clock: Callable[[], float],
        settle: Callable[[], None] | None = None,
    ) -> None:
        self.steps, self.known, self.images, self.report, self.clock = steps, seconds_per_image, images, report, clock
        self.settle = settle  # waits for the device's queued work, so a step's time is its own (see settle())
        self.i, self.spent, self.start = 0, 0.0, clock()  # the current step, the seconds of those done, its start

    def within(self, done: int, total: int) -> None:
        """The current step's own progress (LIME's, per model sub-batch)."""
        if self.report is None:
            return
        if len(self.steps) == 1:
            self.report(done, total)
        else:
            self._say(done / max(1, total))

    def step_done(self) -> None:
        """The current step ended: its time per image is kept for the next batch's shares."""
        if self.settle is not None:
            self.settle()
        now = self.clock()
        took = now - self.start
        self.known[self.steps[self.i]] = took / max(1, self.images)
        self.spent += took
        self.i, self.start = self.i + 1, now
        if self.report is not None and len(self.steps) > 1:
            self._say(None)

    def _say(self, fraction: float | None) -> None:
        """Report the batch's share, given the current step's own (None: not known), when every step's cost is."""
        if self.i >= len(self.steps):
            self.report(1, 1)
            return
        running = self.clock() - self.start
        if fraction:
            left = running / fraction - running
        elif self.steps[self.i] in self.known:
            left = max(0.0, self.known[self.steps[self.i]] * self.images - running)
        else:
            return
        later = self.steps[self.i + 1 :]
        if any(s not in self.known for s in later):
            return
        left += sum(self.known[s] for s in later) * self.images
        done = self.spent + running
        if done + left > 0:
            self.report(round(1000 * done / (done + left)), 1000)


def settle(
    device: torch.device, steps: list[str], report: Callable[[int, int], None] | None
) -> Callable[[], None] | None:
    """What BatchShare waits for before it reads the clock at a step's end: on a GPU, the kernels a method queued
    (without it, Grad-CAM's time landed on the next method, which was the first to wait for the device, and the
    shares weighed the wrong steps). Only where the shares are said and weigh several steps: one method alone, or
    nobody listening, keeps the device's queue full."""
    if device.type != "cuda" or len(steps) < 2 or report is None:
        return None
    return functools.partial(torch.cuda.synchronize, device)


T = TypeVar("T")


@dataclass(frozen=True)
class Split:
    """A batch of ``batch`` images that did not fit in ``memory`` ("device": the GPU's; "host": the host's), since
    explained ``size`` at a time."""

    batch: int
    size: int
    memory: str

    def text(self, device: torch.device, hint: str, done: bool = False) -> str:
        """The warning, ``hint`` what to give next time (``--batch-size 32``); ``done``: said after the last batch."""
        where = (
            "the host's memory"
            if self.memory == "host"
            else ("the GPU's memory" if device.type == "cuda" else "the device's memory")
        )
        how = f"explained {self.size} at a time" if done else f"explaining {self.size} at a time from now on"
        return f"a batch of {self.batch} images did not fit in {where}: {how} ({hint})"


class Fitting:
    """The one policy for a batch that runs out of memory (the GPU's, or the host's), of a run's batches
    (pipeline/compute.BatchWorker) and of those over images in memory (:meth:`Explainer.explain_tensors`:
    explain(), sanity): the batch is explained in halves, each half again in halves while it does not fit; the size
    that fitted is kept (``fits``), so later batches are cut into parts of that size up front. A single image that
    does not fit raises :class:`~xaibatch.errors.OneImageTooLarge` (``caller``: whose options its advice names,
    errors.memory_message). Each part's images keep their own seeds and labels: the maps are a smaller batch's."""

    def __init__(self, device: torch.device, on_split: Callable[[Split], None] | None = None, caller: Caller = "run"):
        self.device, self.on_split, self.caller = device, on_split, caller
        self.fits: int | None = None  # after a batch ran out of memory: the most images explained at once
        self._oom: tuple[int, str] | None = None  # the last batch ran out of memory: (its images, "device" or "host")

    def parts(self, n: int, attempt: Callable[[int, int], T]) -> list[T]:
        """``attempt(p, q)`` over images p ... q - 1 of a batch of ``n``, in parts that fit, in order: their results."""
        self._oom = None
        done: list[T] = []
        self._fitted(0, n, n, attempt, done)
        return done

    def _fitted(self, p: int, q: int, whole: int, attempt: Callable[[int, int], T], done: list[T]) -> None:
        n = q - p
        size = self.fits
        if size is not None and n > size:  # (a part that runs out of memory lowers fits for the parts after it)
            for a in range(p, q, size):
                self._fitted(a, min(a + size, q), whole, attempt, done)
            return
        try:
            done.append(attempt(p, q))
            return
        except Exception as e:
            memory = out_of_memory(e)
            if memory is None:
                raise
            if n == 1:  # nothing left to split: a smaller batch cannot help
                raise OneImageTooLarge(memory_message(str(e), memory, alone=True, caller=self.caller)) from None
        # Out of the except block: the exception and its frames (the part's tensors, autograd's graph) are gone.
        free_memory(self.device)
        if self._oom is None:
            self._oom = (whole, memory)
        self.fits = -(-n // 2)
        self._fitted(p, q, whole, attempt, done)

    def say(self) -> None:
        """``on_split``, once after a batch that found the size too large (once in all, unless memory shrinks);
        after a stop too, whose batch was split before it."""
        if self._oom is not None and self.on_split is not None and self.fits is not None:
            self.on_split(Split(self._oom[0], self.fits, self._oom[1]))
        self._oom = None


def free_memory(device: torch.device) -> None:
    """After running out of memory: collect what the failed attempt left (reference cycles) and give the GPU's
    cached blocks back, so that the halves start from as much memory as there is."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
