"""Deletion and insertion scores (Petsiuk, Das, Saenko, "RISE", BMVC 2018, https://arxiv.org/abs/1806.07421).

Pixels are ranked by a map's value, most salient first: the map at the model's input size, as the method
returned it (not the ``.npy``, which is resized to the image's own size); a signed map (LIME and the others
``xaibatch methods`` calls signed) by its signed value, so evidence for the class goes first and evidence
against it last; ties (LIME's superpixels are plateaus, Grad-CAM's zeros) in pixel order, row by row
(:func:`ranks`). *Deletion* replaces
them, ``ceil(HW / N)`` more per step, with a fill (by default the blurred image)
and follows the explained class's softmax probability from the image to the
fill; *insertion* starts from the fill and puts the image's pixels back in the
same order. Each score is the area under its curve (trapezoids over N equal
steps, x in [0, 1]): a faithful map makes deletion fall fast (low AUC) and
insertion rise fast (high AUC).

Batched: for a batch of B images and M methods the curves' endpoints come from
the shared forward (the image) and one forward of the fills (shared by every
method), so the cost is ``B * (1 + 2 * (N - 1) * M)`` forwards, run in chunks of
perturbed images built on the device from the maps already in memory: as many images per forward as the
device's memory allows (:mod:`xaibatch.methods.chunks`), a chunk that runs out of memory anyway made again in
halves.

The report's chance line (a random map and a centred blob, scored the same way) is scored once a run's maps are
in, on a sample of its images drawn by content (:mod:`.chance`, :func:`update_chance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..defaults import FAITH_BASELINES, FAITH_STEPS
from ..errors import UsageError, out_of_memory
from ..methods.chunks import auto_chunk
from ..methods.explainer import free_memory
from ..preprocess import Preprocess
from . import chance
from .chance import CHANCE_SAMPLE as CHANCE_SAMPLE  # the sample size, where the bench reads it

VERSION = chance.SCORES_VERSION  # the scores' definition (bumped there): part of the faithfulness hash
BASELINES = FAITH_BASELINES
DEFAULT_STEPS = FAITH_STEPS
BLUR_KERNEL = 11  # as RISE's code: an 11-pixel Gaussian kernel with sigma 5
BLUR_SIGMA = 5.0


@dataclass(frozen=True)
class FaithConfig:
    """How deletion/insertion are computed; everything in it changes the scores."""

    steps: int = DEFAULT_STEPS
    baseline: str = BASELINES[0]
    chunk: int | None = None  # images per forward (memory, not results); None: as the device's memory allows

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise UsageError("--faithfulness-steps must be at least 2")
        if self.baseline not in BASELINES:
            raise UsageError(f"--faithfulness-baseline must be one of {', '.join(BASELINES)}")

    def key(self) -> dict[str, Any]:
        """What goes into the faithfulness hash (not the chunk size: it does not change the numbers)."""
        return chance.settings_key(self.steps, self.baseline)


@dataclass
class Scores:
    """Per image of a batch: AUCs (B,) and curves (B, N + 1), probabilities of the explained class."""

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor

    def rows(self) -> list[dict[str, Any]]:
        """Each image's scores as stored in the manifest, read from the device in one copy per tensor: ``float()``
        of each value, image by image, was a device synchronisation and a copy of its own on a GPU (2 + 2 (steps
        + 1) an image and method: 44 at the default steps, more than the scoring's own work at 64 px). The same
        numbers: ``tolist()`` gives each float32 value as ``float()`` does."""
        dele, ins = self.deletion.tolist(), self.insertion.tolist()
        dc, ic = self.deletion_curve.tolist(), self.insertion_curve.tolist()
        return [
            {
                "deletion": float(dele[j]),
                "insertion": float(ins[j]),
                "deletion_curve": [round(float(v), 5) for v in dc[j]],
                "insertion_curve": [round(float(v), 5) for v in ic[j]],
            }
            for j in range(len(dele))
        ]


def gaussian_kernel(size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """A normalized (size, size) Gaussian."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).float()


def fill_image(x: torch.Tensor, baseline: str, preprocess: Preprocess) -> torch.Tensor:
    """The fill of a (B, 3, H, W) normalized batch: blurred (reflect padding), black, or each image's mean colour."""
    if baseline == "blur":
        size = min(BLUR_KERNEL, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
        k = gaussian_kernel(size).to(x.device, x.dtype)[None, None].repeat(x.shape[1], 1, 1, 1)
        pad = size // 2
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k, groups=x.shape[1])
    if baseline == "zero":
        return preprocess.black(x).expand_as(x).contiguous()
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    raise UsageError(f"unknown faithfulness baseline {baseline!r}")


def ranks(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps -> (B, H*W) long: each pixel's position when sorted most salient first (ties: pixel order)."""
    flat = maps.flatten(1).float()
    order = torch.argsort(-flat, dim=1, stable=True)
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return out


def step_counts(pixels: int, steps: int) -> list[int]:
    """Pixels changed after step i, i = 0..N: ``min(HW, i * ceil(HW / N))``."""
    per = math.ceil(pixels / steps)
    return [min(pixels, i * per) for i in range(steps + 1)]


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under (..., N + 1) curves over x in [0, 1]."""
    n = curve.shape[-1] - 1
    return (curve.sum(-1) - (curve[..., 0] + curve[..., -1]) / 2) / n


@dataclass
class Scorer:
    """Scores a batch's maps with one model."""

    model: torch.nn.Module
    cfg: FaithConfig
    preprocess: Preprocess  # the model's: the black of the "zero" baseline
    hashes: dict[str, str] = field(default_factory=dict)  # method -> faithfulness hash
    forwards: int = 0  # images sent through the model (the bench reads it)
    _chunks: dict[tuple, int] = field(default_factory=dict, repr=False)  # (device, shape, dtype) -> chunk_size

    def chunk_size(self, x: torch.Tensor) -> int:
        """Images per forward for inputs shaped as ``x``: ``cfg.chunk``, else chosen once per device and shape
        (chunks.auto_chunk; the scorer gathers the image and its fill and blends them: three copies an image);
        halved for good by a chunk that ran out of memory."""
        key = (x.device, tuple(x.shape[1:]), x.dtype)
        if key not in self._chunks:
            self._chunks[key] = self.cfg.chunk or auto_chunk(self.model, x, copies=3)
        return self._chunks[key]

    def _forward(
        self, x: torch.Tensor, n: int, inputs: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """The target class's softmax probability of ``n`` images that ``inputs(a, b)`` makes, images ``a ... b - 1``
        and their targets, a chunk at a time. A chunk that runs out of memory is made again in halves (one image
        that does not fit raises, for the batch's own split: explainer.Fitting)."""
        key = (x.device, tuple(x.shape[1:]), x.dtype)
        out: list[torch.Tensor] = []
        a = 0
        with torch.no_grad():
            while a < n:
                size = min(n - a, self.chunk_size(x))
                try:
                    out.append(self._probs(*inputs(a, a + size)))
                    a += size
                    continue
                except Exception as e:
                    if out_of_memory(e) is None or size == 1:
                        raise
                # Out of the except block: the failed chunk's tensors are gone with its frame.
                free_memory(x.device)
                self._chunks[key] = -(-size // 2)
        self.forwards += n
        return torch.cat(out) if out else x.new_zeros(0)

    def _probs(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(images).float(), dim=1).gather(1, targets[:, None])[:, 0]

    def probs(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The targets' softmax probabilities of a batch."""
        return self._forward(x, x.shape[0], lambda a, b: (x[a:b], targets[a:b]))

    def score(
        self, x: torch.Tensor, targets: torch.Tensor, p_image: torch.Tensor, maps: dict[str, torch.Tensor]
    ) -> dict[str, Scores]:
        """Deletion and insertion for every map; ``p_image`` is the targets' probability on ``x`` (already known)."""
        fill = fill_image(x, self.cfg.baseline, self.preprocess)
        p_fill = self.probs(fill, targets)
        return {name: self._curves(x, fill, targets, p_image, p_fill, m) for name, m in maps.items()}

    def _curves(self, x, fill, targets, p_image, p_fill, maps: torch.Tensor) -> Scores:
        b, _, h, w = x.shape
        if tuple(maps.shape) != (b, h, w):
            raise ValueError(f"maps of shape {tuple(maps.shape)} do not match the input {tuple(x.shape)}")
        n = self.cfg.steps
        rank = ranks(maps)
        ks = torch.tensor(step_counts(h * w, n)[1:n], device=x.device)  # interior steps 1..N-1
        # Every (image, curve, step) to evaluate, generated chunk by chunk: j image, s step, ins insertion?
        jj = torch.arange(b, device=x.device).repeat_interleave(2 * (n - 1))
        ss = torch.arange(n - 1, device=x.device).repeat(2 * b)
        ins = torch.arange(2, device=x.device).repeat_interleave(n - 1).repeat(b).bool()

        def blended(p: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
            j, s, a = jj[p:q], ss[p:q], ins[p:q]
            changed = (rank[j] < ks[s][:, None]).view(-1, 1, h, w)  # the first k pixels in map order
            a4 = a.view(-1, 1, 1, 1)
            xi, fi = x[j], fill[j]
            return torch.where(changed, torch.where(a4, xi, fi), torch.where(a4, fi, xi)), targets[j]

        probs = self._forward(x, jj.shape[0], blended)
        inner = probs.view(b, 2, n - 1)
        dele = torch.cat([p_image[:, None], inner[:, 0], p_fill[:, None]], dim=1)
        inse = torch.cat([p_fill[:, None], inner[:, 1], p_image[:, None]], dim=1)
        return Scores(auc(dele), auc(inse), dele, inse)


def random_maps(size: tuple[int, int], seeds: list[int], device: torch.device) -> torch.Tensor:
    """Uniform noise maps, one per seed (the same image gets the same map on every run)."""
    out = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        out.append(torch.rand(size, generator=g))
    return torch.stack(out).to(device)


def blob_maps(size: tuple[int, int], b: int, device: torch.device) -> torch.Tensor:
    """A centred Gaussian blob (sigma a quarter of the side): 'the object is in the middle'."""
    h, w = size
    yy = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) / (h / 4)
    xx = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) / (w / 4)
    m = torch.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / 2)
    return m.expand(b, h, w).to(device)


# -- the run's bookkeeping (hashes, cache, chance sample) ----------------------------------------------------


def hashes(cfg: FaithConfig | None, method_hashes: dict[str, str]) -> dict[str, str] | None:
    """Per method: the hash its scores are stored under (its map's hash plus the settings); None when disabled."""
    if cfg is None:
        return None
    return {m: chance.scores_hash(h, cfg.key()) for m, h in method_hashes.items()}


def scorer_for(cfg: FaithConfig | None, ctx, method_hashes: dict[str, str]) -> Scorer | None:
    """The Scorer of a run's maps (None when disabled)."""
    if cfg is None:
        return None
    return Scorer(ctx.forward_model(), cfg, ctx.preprocess, hashes=hashes(cfg, method_hashes) or {})


def chance_seed(sha256: str) -> int:
    """The random map's seed for an image: from its content, so a renamed or copied image gets the same map."""
    from ..methods.base import image_seed

    return image_seed("chance:" + sha256)


def update_chance(
    out: Path,
    cfg: FaithConfig,
    prepared,
    predict_hash: str,
    images: list[tuple[str, str, int]],
    entries: dict[str, Any],
    check=lambda: None,
    log=lambda line: None,
    should_stop=lambda: False,
    sample_size: int | None = None,
) -> int:
    """Bring the chance sample up to date once a run's maps are committed (both engines, on the driver): draw it
    from ``images`` ((rel, sha256, target) of every image the manifest holds, see :func:`chance.sample`), keep the
    scores already in ``faithfulness-chance.json`` for these settings, score a random map and a centred blob on the
    sampled images that lack them (decoded again from ``entries``, the scan's, each explained for its manifest
    target class), and write the file when it changed. A stop ends it between batches, keeping what is scored.
    Returns how many images were scored."""
    from ..dataset import ImageDataset, collate

    chance_key = chance.key(cfg.key(), predict_hash)
    old = chance.read(out)
    usable = old if old is not None and old.legacy is None and old.key == chance_key else None
    target_of = {rel: target for rel, _sha, target in images}
    drawn = chance.sample([(rel, sha) for rel, sha, _t in images if sha and rel in entries], sample_size)
    keep: dict[str, chance.ChanceScores] = {}
    todo: list[tuple[str, str]] = []
    for rel, sha in drawn:
        s = chance.matching(usable, rel, sha, target_of[rel]) if usable is not None else None
        if s is not None:
            keep[rel] = s
        else:
            todo.append((rel, sha))
    if todo:
        log(f"xaibatch: scoring a random map and a centred blob on {len(todo)} sampled image(s) (the chance line)")
    scorer = Scorer(prepared.ctx.forward_model(), cfg, prepared.ctx.preprocess)
    step = max(1, prepared.batch_size or 32)
    done = 0
    for a in range(0, len(todo), step):
        if should_stop():
            break
        part = todo[a : a + step]
        ds = ImageDataset([entries[rel] for rel, _ in part], prepared.model.input_size, want_hash=[True] * len(part))
        b = collate([ds[i] for i in range(len(ds))])
        if b.x is None:
            continue
        # a file that no longer holds what the manifest says is left to the next run (whose plan sees it)
        ok = [j for j, i in enumerate(b.index) if b.sha256[j] == part[i][1]]
        if not ok:
            continue
        rels, shas = zip(*(part[b.index[j]] for j in ok))
        x = prepared.ctx.preprocess.normalize(b.x[ok], prepared.ctx.device)
        targets = torch.tensor([target_of[rel] for rel in rels], device=x.device)
        maps = {
            "random": random_maps(x.shape[-2:], [chance_seed(sha) for sha in shas], x.device),
            "blob": blob_maps(x.shape[-2:], len(ok), x.device),
        }
        got = scorer.score(x, targets, scorer.probs(x, targets), maps)
        aucs = {name: (v.deletion.tolist(), v.insertion.tolist()) for name, v in got.items()}  # one copy each
        for k, (rel, sha) in enumerate(zip(rels, shas)):
            pairs = {name: (float(d[k]), float(i[k])) for name, (d, i) in aucs.items()}
            keep[rel] = chance.ChanceScores(sha, target_of[rel], pairs)
        done += len(ok)
    drawn_scores = {rel: keep[rel] for rel, _ in drawn if rel in keep}  # in the sample's order
    if usable is None or drawn_scores != usable.images:
        check()
        chance.write(out, chance_key, cfg.steps, cfg.baseline, drawn_scores)
    return done
