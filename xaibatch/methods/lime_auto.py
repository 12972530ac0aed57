"""LIME's adaptive sample count: ``samples="auto"`` (``--lime-samples auto``).

After S-LIME, Zhou, Hooker, Wang, KDD 2021, and BayLIME, Zhao et al., UAI 2021, which
both stop or weigh LIME by how settled its surrogate is: the masks of ``samples_max`` samples are drawn as
in lime.py, but only the first ``samples_min`` go through the model, then rounds of ``samples_round`` for the
images still running. After each round the batched ridge is refitted (closed form) and an image stops when
its map is stable: the root-mean-square of its coefficients' heteroscedasticity-robust (HC1 sandwich)
standard errors is at most ``tolerance`` times the coefficients' standard deviation across its superpixels
(:func:`coefficient_noise`), or at ``samples_max``. The images still running share the model chunks; an
image's stop depends only on its own samples, so it stops at the same count, with the same map as a fixed
run of that many samples, whatever the batch. Each map's info records ``samples`` and ``noise`` (the figure
at its last refit; fixed runs record it too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Batch
from .lime_fit import coefficient_noise, weighted_ridge

if TYPE_CHECKING:
    from .lime import Lime

AUTO_OPTIONS = ("samples_min", "samples_max", "samples_round", "tolerance")  # only read with samples=auto


def checkpoints(samples_min: int, samples_max: int, samples_round: int) -> list[int]:
    """The sample counts at which ``auto`` refits and may stop: the floor, every round after it, the ceiling."""
    steps = list(range(samples_min, samples_max, samples_round))
    return steps + [samples_max]


def fit_until_stable(
    lime: Lime, batch: Batch, labels: torch.Tensor, counts: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """``samples=auto``: forward rounds of samples for the images still running, refit, stop the stable ones.

    Every image runs through the same checkpoints (:func:`checkpoints`) and its stop depends only on its own
    masks and probabilities, so its map does not depend on the rest of the batch. The images still running
    share each round's chunks; on CUDA (``read_ahead``), when they are too few to fill a chunk, later rounds
    are forwarded in the same pass (samples past an image's stop are never used in its map).
    """
    x = batch.x
    b = x.shape[0]
    fill = lime.fill_for(batch, labels, masks.shape[2])
    probs = torch.zeros(masks.shape[:2], dtype=torch.float64, device=x.device)
    coef = torch.zeros(b, masks.shape[2], dtype=torch.float64, device=x.device)
    intercept = torch.zeros(b, dtype=torch.float64, device=x.device)
    r2, noise = torch.zeros_like(intercept), torch.zeros_like(intercept)
    used = [0] * b
    checks = checkpoints(lime.samples_min, lime.samples_max, lime.samples_round)
    read_ahead = x.device.type == "cuda" if lime.read_ahead is None else lime.read_ahead
    chunk = lime.chunk_size(x)
    running = list(range(b))
    have, ci, spent = 0, 0, 0
    while running:
        ahead = max(1, chunk // (len(running) * lime.samples_round)) if read_ahead else 1
        upto = checks[min(len(checks) - 1, ci + ahead - 1)]
        total = spent + len(running) * (lime.samples_max - have)  # at most this many in all
        probs[running, have:upto] = lime.forward_masks(batch, labels, fill, masks, running, have, upto, spent, total)
        spent += len(running) * (upto - have)
        have = upto
        while running and ci < len(checks) and checks[ci] <= have:
            s, idx = checks[ci], torch.tensor(running, device=x.device)
            z, y, w, n = masks[idx, :s], probs[idx, :s], weights[idx, :s], counts[idx]
            c, ic, sc = weighted_ridge(z, y, w)
            nz = coefficient_noise(z, y, w, c, ic, n)
            done = (nz <= lime.tolerance) | (s >= lime.samples_max)
            for k in done.nonzero()[:, 0].tolist():
                i = running[k]
                coef[i], intercept[i], r2[i], noise[i], used[i] = c[k], ic[k], sc[k], nz[k], s
            running = [i for i, d in zip(running, done.tolist()) if not d]
            ci += 1
    return coef, intercept, r2, noise, used
