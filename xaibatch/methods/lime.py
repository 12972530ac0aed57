"""LIME (Ribeiro et al., 2016, https://arxiv.org/abs/1602.04938), batched across images.

For each image: split it into superpixels (features), draw ``samples`` random
on/off masks over them (the first all on, i.e. the image itself), replace the
"off" superpixels by a neutral fill, ask the model for the probability of the
explained class, and fit a weighted linear model of that probability on the
masks. Each pixel's map value is its superpixel's coefficient. Follows the
``lime`` package's ``LimeImageExplainer`` defaults: masks uniform in {0, 1},
distances = cosine distance of each mask to the all-ones mask, kernel
``sqrt(exp(-d**2 / 0.25**2))``, ``Ridge(alpha=1, fit_intercept=True)`` on all
features (lime's 'auto' selection keeps all of them at its default
``num_features=100000``).

Batched: the masks of all images of the batch are drawn on the device by a
counter-based hash (:func:`draw_masks`: lowbias32 of the image's key, the sample
and the feature index, in int64 torch ops), so the bits are the same on every
device and do not depend on which other images share the batch. The masked
images are built on the device and go through the model in chunks of
``batch_size`` (``auto``: as many as half the free CUDA memory holds, measured
by one probe forward; ``chunks.CPU_CHUNK`` on the CPU); the B weighted ridge
regressions are solved together in float64 closed form. Images with fewer
superpixels are padded with always-off columns, which after weighted centring
are exactly zero and so change neither the real coefficients nor (computed over
real features only) the distances. The image's key comes from the method's
``seed`` and the pipeline's per-image seed, so a map depends neither on its
batch, nor on ``batch_size``, nor on the device. Superpixels come from the
DataLoader workers (:meth:`Lime.segmenter`), which segment the next batches
while the model works on this one. The mask draw is lime_masks.py's, the fit
lime_fit.py's, and ``samples="auto"`` (rounds until each map is stable) lime_auto.py's.

Maps are signed raw coefficients in probability units: a positive value means
the superpixel is evidence *for* the explained class (hiding it lowers the
class probability by about that much), a negative value evidence against it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..defaults import LIME_DEFAULTS, LIME_HIDE_MODES
from ..method_specs import check_lime_options
from .segmentation import SEGMENTATION_CONFIG, slic_segments
from .base import Batch, Explanation, Method, ModelContext, register_method
from ..errors import out_of_memory
from .chunks import CPU_CHUNK, auto_chunk, layout
from .explainer import free_memory
from .lime_auto import AUTO_OPTIONS, checkpoints, fit_until_stable
from .lime_fit import coefficient_noise, cosine_distances_to_ones, kernel_weights, weighted_ridge
from .lime_masks import MASK_DRAW, draw_masks, mask_seed

HIDE_MODES = LIME_HIDE_MODES
DEFAULTS: dict[str, Any] = LIME_DEFAULTS


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) with a separable Gaussian, reflect-padded so edges keep their colour."""
    h, w = x.shape[2], x.shape[3]
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _labels_from_input(x: torch.Tensor, ctx: ModelContext, n_segments: int) -> torch.Tensor:
    """Recover the uint8 images from the normalized input and segment them (when the pipeline gave no segments)."""
    u8 = ctx.preprocess.to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
    segs = np.stack([slic_segments(im, n_segments) for im in u8])
    return torch.from_numpy(segs).to(x.device)


def _contiguous(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relabel each image's superpixels to 0..F_i-1 (order kept); return labels (B, H*W) and counts F_i (B,).

    Vectorised over the batch: a presence table of each image's label range, its running count is the new label.
    Labels spread wider than the image has pixels (a user's segmenter) fall back to one ``unique`` per image.
    """
    flat = segments.reshape(segments.shape[0], -1).long()
    flat = flat - flat.min(dim=1, keepdim=True).values
    span = int(flat.max()) + 1
    if span > flat.shape[1]:
        out = torch.empty_like(flat)
        counts = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for i in range(flat.shape[0]):
            uniq, out[i] = torch.unique(flat[i], return_inverse=True)
            counts[i] = uniq.numel()
        return out, counts
    present = torch.zeros(flat.shape[0], span, dtype=torch.long, device=flat.device).scatter_(1, flat, 1)
    return (present.cumsum(dim=1) - 1).gather(1, flat), present.sum(dim=1)


@register_method
class Lime(Method):
    name = "lime"
    title = "LIME"
    signed = True
    superpixels = True
    takes_seed = True
    defaults = {**DEFAULTS, "batch_size": "auto"}
    summary = "model-agnostic: which superpixels raise or lower the class probability when hidden"

    def __init__(self, ctx: ModelContext, **options: Any) -> None:
        opts, batch_size = check_lime_options(options)
        super().__init__(ctx, **opts)
        self.samples: int | str = opts["samples"]
        self.segments: int = opts["segments"]
        self.hide: str = opts["hide"]
        self.seed: int = opts["seed"]
        self.samples_min: int = opts["samples_min"]
        self.samples_max: int = opts["samples_max"]
        self.samples_round: int = opts["samples_round"]
        self.tolerance: float = opts["tolerance"]
        self.batch_size = batch_size  # None: chunk_size() picks it. Not in config(): it does not change the maps
        self._auto_chunk: dict[tuple, int] = {}
        self.read_ahead: bool | None = None  # auto: forward later rounds early to fill a chunk; None: on CUDA only

    @property
    def auto(self) -> bool:
        return self.samples == "auto"

    def config(self) -> dict[str, Any]:
        cfg = {
            "samples": self.samples,
            "segments": self.segments,
            "hide": self.hide,
            "seed": self.seed,
            "segmentation": SEGMENTATION_CONFIG,
            "masks": MASK_DRAW,
        }
        if self.auto:  # fixed-sample maps keep their hashes: these change only auto maps
            cfg.update({k: getattr(self, k) for k in AUTO_OPTIONS})  # options only: sanity rebuilds from them
        return cfg

    def estimate(self, n_images: int) -> str:
        size = self.batch_size or (CPU_CHUNK if self.ctx.device.type == "cpu" else "as many as memory allows")
        chunks = f"(in chunks of {size})"
        if self.auto:
            return (
                f"LIME: {n_images} image(s) x {self.samples_min}-{self.samples_max} samples (auto: each image stops "
                f"when its map is stable) = {n_images * self.samples_min:,} to {n_images * self.samples_max:,} "
                f"model forwards {chunks}"
            )
        return (
            f"LIME: {n_images} image(s) x {self.samples} samples = {n_images * self.samples:,} model forwards {chunks}"
        )

    def segmenter(self) -> Callable[[np.ndarray], np.ndarray]:
        return functools.partial(slic_segments, n_segments=self.segments)

    def fill(self, x: torch.Tensor, labels: torch.Tensor, n_max: int) -> torch.Tensor:
        """Return what hidden superpixels show, (B, C, H, W) in normalized input space."""
        if self.hide == "zero":  # black in pixel space
            return self.ctx.preprocess.black(x).expand_as(x)
        if self.hide == "blur":
            return _gaussian_blur(x, sigma=max(1.0, x.shape[2] / 16))
        # "mean": every superpixel filled with its own mean colour (lime's hide_color=None).
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        idx = labels[:, None, :].expand(b, c, -1)
        sums = torch.zeros(b, c, n_max, dtype=torch.float64, device=x.device).scatter_add_(2, idx, flat.double())
        counts = torch.zeros(b, 1, n_max, dtype=torch.float64, device=x.device).scatter_add_(
            2, labels[:, None, :], torch.ones_like(labels[:, None, :], dtype=torch.float64)
        )
        means = (sums / counts.clamp_min(1)).to(x.dtype)
        return torch.gather(means, 2, idx).view_as(x)

    def chunk_size(self, x: torch.Tensor) -> int:
        """Perturbed images per model call: ``batch_size`` when given, else chosen once per device and input shape.

        CUDA: half the free memory (the caching allocator's idle blocks included) over the peak memory per
        image of one probe forward, at most ``chunks.MAX_CHUNK``. CPU: ``chunks.CPU_CHUNK``. Map-neutral either way.
        """
        if self.batch_size is not None:
            return self.batch_size
        key = (x.device, tuple(x.shape[1:]), x.dtype)
        if key not in self._auto_chunk:
            self._auto_chunk[key] = auto_chunk(self.ctx.forward_model(), x)
        return self._auto_chunk[key]

    def fill_for(self, batch: Batch, labels: torch.Tensor, n_max: int) -> torch.Tensor:
        x = batch.x
        fill = self.fill(x, labels, n_max)
        if fill.shape != x.shape or fill.stride() != x.stride():
            fill = fill.expand_as(x).contiguous(memory_format=layout(x))
        return fill

    def forward_masks(
        self,
        batch: Batch,
        labels: torch.Tensor,
        fill: torch.Tensor,
        masks: torch.Tensor,
        images: list[int],
        lo: int,
        hi: int,
        done: int = 0,
        total: int | None = None,
    ) -> torch.Tensor:
        """Return P(target | masked image) as (len(images), hi - lo) float64 for samples ``lo:hi`` of ``images``.

        The perturbed images go through the model in chunks that may span images; each chunk is written
        straight into one buffer, image by image (``where(keep, x[i], fill[i])`` broadcasts: no per-sample
        copies of the image, its fill or its labels). ``done``/``total``: the batch's forwards before this call
        and in all, for :meth:`Batch.progress`.
        """
        x = batch.x
        _, c, h, w = x.shape
        s = hi - lo
        n = len(images) * s
        total = done + n if total is None else total
        idx = torch.tensor(images, dtype=torch.long, device=x.device)
        targets = batch.targets.to(x.device)[idx].repeat_interleave(s)
        probs = torch.empty(n, dtype=torch.float64, device=x.device)
        chunk = min(self.chunk_size(x), n)
        fmt = layout(x)
        model = self.ctx.forward_model()  # BatchNorm folded where exact: no gradient, probabilities not stored
        with torch.no_grad():
            start = 0
            while start < n:  # chunks of the model batch, not samples
                end = min(n, start + chunk)
                try:
                    # x's layout: where() alone would lay its output out like ``keep`` (reads as channels-last),
                    # on which the model is 5-15% slower (CPU).
                    perturbed = torch.empty((end - start, c, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
                    for k in range(start // s, (end - 1) // s + 1):  # the images this chunk covers
                        i = images[k]
                        a, b = max(start, k * s), min(end, (k + 1) * s)
                        keep = masks[i, lo + a - k * s : lo + b - k * s].index_select(1, labels[i]).view(-1, 1, h, w)
                        torch.where(keep, x[i], fill[i], out=perturbed[a - start : b - start])
                    logits = model(perturbed).float()
                    probs[start:end] = torch.softmax(logits, dim=1).gather(1, targets[start:end, None])[:, 0]
                except Exception as e:
                    if out_of_memory(e) is None or self.batch_size is not None or end - start == 1:
                        raise  # a given lime.batch_size is the user's: the batch is split (explainer.Fitting)
                else:
                    batch.progress(done + end, total)  # may raise StopRequested: SIGINT within seconds
                    start = end
                    continue
                # Out of the except block (the chunk's tensors are gone with its frame): the auto size, measured
                # when more memory was free, halved for the rest of the run, as faithfulness's chunks are.
                perturbed = logits = None
                free_memory(x.device)
                chunk = self._halve_chunk(x, end - start)
        return probs.view(len(images), s)

    def _halve_chunk(self, x: torch.Tensor, size: int) -> int:
        """After a chunk of ``size`` ran out of memory: half of it, kept as the auto size for ``x``'s shape."""
        key = (x.device, tuple(x.shape[1:]), x.dtype)
        self._auto_chunk[key] = -(-size // 2)
        return self._auto_chunk[key]

    def class_probabilities(self, batch: Batch, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Return P(target | masked image) as (B, S) float64 for masks (B, S, F) over labels (B, H*W)."""
        fill = self.fill_for(batch, labels, masks.shape[2])
        return self.forward_masks(batch, labels, fill, masks, list(range(batch.x.shape[0])), 0, masks.shape[1])

    def sample(self, batch: Batch, samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return contiguous labels (B, H*W), counts (B,) and zero-padded masks (B, S, F_max) on the device."""
        segments = (
            batch.segments if batch.segments is not None else _labels_from_input(batch.x, self.ctx, self.segments)
        )
        labels, counts = _contiguous(segments.to(batch.x.device))
        b = labels.shape[0]
        seeds = batch.seeds if batch.seeds is not None else [0] * b
        if len(seeds) != b:
            raise ValueError(f"lime: {len(seeds)} seeds for {b} images")
        keys = torch.tensor([mask_seed(self.seed, sd) for sd in seeds], dtype=torch.int64, device=batch.x.device)
        n = samples if samples is not None else (self.samples_max if self.auto else self.samples)
        return labels, counts, draw_masks(keys, counts, n)

    def explain(self, batch: Batch) -> Explanation:
        x = batch.x
        labels, counts, masks = self.sample(batch)
        counts = counts.to(x.device)
        weights = kernel_weights(cosine_distances_to_ones(masks, counts))
        if self.auto:
            coef, intercept, r2, noise, used = fit_until_stable(self, batch, labels, counts, masks, weights)
        else:
            probs = self.class_probabilities(batch, labels, masks)
            coef, intercept, r2 = weighted_ridge(masks, probs, weights)
            noise = coefficient_noise(masks, probs, weights, coef, intercept, counts)
            used = [self.samples] * x.shape[0]
        maps = torch.gather(coef, 1, labels).view(x.shape[0], x.shape[2], x.shape[3]).float()
        info = [
            {
                "segments": n,
                "score": sc,
                "intercept": ic,
                "samples": u,
                "noise": round(nz, 4) if math.isfinite(nz) else None,
            }
            for n, sc, ic, u, nz in zip(counts.tolist(), r2.tolist(), intercept.tolist(), used, noise.tolist())
        ]
        return Explanation(maps, info)

    def checkpoints(self) -> list[int]:
        """The sample counts at which ``auto`` refits and may stop (lime_auto.py)."""
        return checkpoints(self.samples_min, self.samples_max, self.samples_round)
