"""Explain one batch: one shared forward pass (keeping the CAM layer's activations, and autograd's graph from
that layer on, when a method needs them), then each method on it. The one place a batch is explained: runs,
``xaibatch bench`` and :func:`xaibatch.explain`; :meth:`Explainer.explain_tensors` is the one loop over the
batches of images already in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..model.heads import predict
from ..model.layers import forward_from_layer
from .base import Batch, Method, ModelContext


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
    ) -> None:
        self.decision = decision  # heads.Decision: two classes at a threshold; None: the argmax
        self.should_stop = should_stop  # polled by long methods (LIME) per model sub-batch
        self.on_progress = on_progress
        self.scorer = scorer  # faithfulness.Scorer: deletion/insertion per map, from the maps in memory
        self.methods = methods
        self.ctx = ctx
        self.target = target
        self.want_activations = any(m.needs_activations for m in methods)

    def __call__(
        self, x_uint8: torch.Tensor, labels: torch.Tensor | None, segments: torch.Tensor | None, seeds: list[int]
    ) -> Explained:
        """Explain one batch of (B, 3, S, S) uint8 images: probabilities (B, K) and each method's maps."""
        dev = self.ctx.device
        x = self.ctx.preprocess.normalize(x_uint8, dev)
        net = self.ctx.model
        activations = None
        if self.want_activations:  # a graph from the target layer on: all Grad-CAM differentiates
            logits, activations = forward_from_layer(net, x, self.ctx.layer)
        else:
            with torch.no_grad():
                logits = net(x)
        probs = torch.softmax(logits.detach().float(), dim=1)
        # "label": the given classes; else the prediction (``pred,label``'s true-class maps: pipeline/labelmaps.py)
        targets = labels.to(dev) if self.target == "label" else predict(probs, self.decision)
        batch = Batch(
            x=x.detach(),
            targets=targets,
            logits=logits,
            activations=activations,
            segments=None if segments is None else segments.to(dev),
            seeds=seeds,
            should_stop=self.should_stop,
            on_progress=self.on_progress,
        )
        out = {}
        for m in self.methods:
            e = m.explain(batch)
            # On the input's device, whatever the method returned: pytorch-grad-cam hands back numpy (cam:* maps
            # came back on the CPU), and a CPU map beside a GPU one failed in the pictures and the faithfulness
            # scores (a device mismatch a CPU run never shows).
            out[m.name] = MethodMaps(e.maps.detach().float().to(x.device), e.info)
        if self.scorer is not None:
            p_image = probs.gather(1, targets[:, None])[:, 0]
            scores = self.scorer.score(batch.x, targets, p_image, {k: v.maps for k, v in out.items()})
            for k, v in out.items():
                v.faith = [{**scores[k].row(j), "hash": self.scorer.hashes.get(k)} for j in range(batch.x.shape[0])]
        return Explained(probs, out)

    def explain_tensors(
        self,
        x_uint8: torch.Tensor,
        batch_size: int,
        seeds: list[int],
        labels: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        segmenter: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Iterator[Explained]:
        """Explain (N, 3, S, S) uint8 images already in memory, ``batch_size`` at a time: each batch's result, on
        the CPU, in order (:meth:`Explained.cat` joins them). ``seeds``, ``labels`` and ``segments`` are per image;
        with ``segmenter`` (and no ``segments``) each batch's superpixels are made from its images, as a
        DataLoader worker makes them in a run."""
        for a in range(0, x_uint8.shape[0], batch_size):
            xb = x_uint8[a : a + batch_size]
            seg = None if segments is None else segments[a : a + batch_size]
            if seg is None and segmenter is not None:
                hwc = xb.permute(0, 2, 3, 1).cpu().numpy()
                seg = torch.stack([torch.from_numpy(np.ascontiguousarray(segmenter(im), dtype=np.int64)) for im in hwc])
            yield self(
                xb, None if labels is None else labels[a : a + batch_size], seg, seeds[a : a + xb.shape[0]]
            ).cpu()
