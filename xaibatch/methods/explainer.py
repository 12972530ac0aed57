"""Explain one batch: one shared forward pass (keeping the CAM layer's activations when a method needs them),
then each method on it. The one place a batch is explained: runs, ``xaibatch bench`` and :func:`xaibatch.explain`."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..model.heads import predict
from ..model.layers import capture
from ..preprocess import normalize
from .base import Batch, Method, ModelContext


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
        self.mean = torch.tensor(ctx.mean, device=ctx.device).view(1, 3, 1, 1)
        self.std = torch.tensor(ctx.std, device=ctx.device).view(1, 3, 1, 1)
        self.want_activations = any(m.needs_activations for m in methods)

    def __call__(
        self, x_uint8: torch.Tensor, labels: torch.Tensor | None, segments: torch.Tensor | None, seeds: list[int]
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, list | None, list | None]]]:
        """Probabilities (B, K) and per method (maps (B, h, w), info per image, faithfulness per image)."""
        dev = self.ctx.device
        x = normalize(x_uint8.to(dev, non_blocking=True), self.mean, self.std)
        net = self.ctx.model
        activations = None
        if self.want_activations:
            with torch.enable_grad(), capture(self.ctx.layer) as store:
                logits = net(x.requires_grad_(True))
            activations = store["activations"]
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
            out[m.name] = (e.maps.detach().float(), e.info, None)
        if self.scorer is not None:
            p_image = probs.gather(1, targets[:, None])[:, 0]
            scores = self.scorer.score(batch.x, targets, p_image, {k: v[0] for k, v in out.items()})
            out = {
                k: (
                    v[0],
                    v[1],
                    [{**scores[k].row(j), "hash": self.scorer.hashes.get(k)} for j in range(batch.x.shape[0])],
                )
                for k, v in out.items()
            }
            self.scorer.add_chance(batch.x, targets, p_image, seeds)
        return probs, out
