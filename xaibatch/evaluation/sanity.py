"""The cascading model-parameter randomization test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018, https://arxiv.org/abs/1810.03292).

On a fixed, seeded sample of a run's images, a deep copy of the model has its
top-level stages re-initialised one after another from the output down
(cumulatively), then the parameters the model holds itself (a ViT's position
embeddings and class token), and every method's maps are recomputed after each step. A map
that explains the model must change as the model is destroyed: its Spearman
rank correlation (of absolute values, as the paper's figures) and SSIM to the
original maps should fall towards 0. A method whose maps survive a fully
random network shows the image (edges), not the model.

Each image's correlation counts by its absolute value: a map that turns into its own
negative (Eigen-CAM's principal component has no fixed sign) still shows the
image, so a mean of signed correlations near 0 would pass it. An image whose
original map is constant (empty) has nothing to compare and is left out; a
method whose maps are all empty cannot pass.

Writes ``sanity.json`` into the output folder; the report draws the figure and
the verdicts from it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UsageError
from ..files import atomic_write_bytes
from ..threadsafe import generator
from .sanity_file import FILENAME, VERSION, SanityCurve, SanityResult
from .rebuild import ModelOverride, image_entries, prepare_rebuilt, rebuild_options, rebuilt_model, same_content

if TYPE_CHECKING:
    from ..lock import OutputLock
    from ..methods.explainer import Fitting, Split
    from ..manifest import ImageRow
    from ..pipeline.prepare import Prepared
    from ..runconfig import RunConfig

DEFAULT_SAMPLE = 64
FAIL_RANK = 0.5  # mean rank correlation after the whole network is random above this: the method fails


def stages(model: torch.nn.Module) -> list[str]:
    """The model's top-level children that hold parameters, from the output back to the input."""
    return [n for n, m in model.named_children() if any(True for _ in m.parameters())][::-1]


def own_parameters(model: torch.nn.Module) -> list[str]:
    """The parameters ``model`` holds itself, in no child: a ViT's ``pos_embed`` and ``cls_token`` (torchvision's
    ``class_token``), randomized last, at the input end, after every stage."""
    return sorted(n for n, _ in model.named_parameters(recurse=False))


def reinit_own(model: torch.nn.Module, gen_seed: int) -> None:
    """Draw ``model``'s own parameters afresh, seeded, as :func:`reinit` draws a bare parameter (on the CPU)."""
    with generator(), torch.no_grad():
        torch.default_generator.manual_seed(gen_seed)  # the CPU's alone: the GPUs' stay the caller's
        for _, p in sorted(model.named_parameters(recurse=False)):
            p.copy_(torch.empty(p.shape, dtype=p.dtype).normal_(0.0, 0.02))


def reinit(module: torch.nn.Module, gen_seed: int) -> None:
    """Re-initialise every parameter of ``module`` as a fresh model would (``reset_parameters``), seeded.

    Drawn on the CPU, then put back where it was: torch's CUDA generator gives other numbers for the same seed, so
    on a GPU the check randomized to other weights than on the CPU (other scores for the same run and seed)."""
    first = next(iter(module.parameters()), None)
    where = first.device if first is not None else torch.device("cpu")
    module.cpu()
    try:
        with generator():  # no DataLoader of another thread forks meanwhile
            torch.default_generator.manual_seed(gen_seed)  # the CPU's alone (see reinit_own)
            done: set[int] = set()
            for m in module.modules():
                if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                    m.reset_parameters()
                    _into_norm_parameters(m)
                    done.update(id(p) for p in m.parameters(recurse=False))
            for p in module.parameters():  # layers without reset_parameters (e.g. a bare nn.Parameter)
                if id(p) not in done:
                    with torch.no_grad():
                        p.normal_(0.0, 0.02)
    finally:
        module.to(where)


def _into_norm_parameters(m: torch.nn.Module) -> None:
    """After ``m.reset_parameters()``: carry the fresh weight into the parameters it is computed from when ``m``
    has torch.nn.utils.weight_norm or spectral_norm (the hooks of old): reset_parameters wrote into the derived
    ``weight``, which the next forward recomputes from the untouched ``weight_g``/``weight_v`` (``weight_orig``),
    so such a layer was never randomized."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    with torch.no_grad():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                fresh = getattr(m, hook.name)
                getattr(m, hook.name + "_v").copy_(fresh)
                getattr(m, hook.name + "_g").copy_(torch.norm_except_dim(fresh, 2, hook.dim))
            elif isinstance(hook, SpectralNorm):
                getattr(m, hook.name + "_orig").copy_(getattr(m, hook.name))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two flattened maps' absolute values; 0 when either is constant."""
    from scipy.stats import spearmanr

    x, y = np.abs(a).ravel(), np.abs(b).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y)[0])  # an older SciPy's SpearmanrResult has no .statistic: the first item in all


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps' absolute values, each scaled to [0, 1]."""
    from skimage.metrics import structural_similarity

    def unit(m: np.ndarray) -> np.ndarray:
        m = np.abs(m).astype(np.float64)
        span = np.ptp(m)
        return (m - m.min()) / span if span > 0 else np.zeros_like(m)

    return float(structural_similarity(unit(a), unit(b), data_range=1.0))


@dataclass
class Curve:
    method: str
    steps: list[str]  # "original", then the cumulatively randomized stages ("fc", "+layer4", ...)
    rank: list[float | None]  # mean |rank correlation| over the scored images, per step; None: none scored
    ssim: list[float | None]
    scored: int = 0  # images whose original map is not constant (the others have nothing to compare)
    images: int = 0
    last: list[float] | None = None  # each scored image's |rank correlation| once the whole network is random

    def spread(self) -> float | None:
        """Two standard errors of the last step's mean rank correlation over the scored images (None: under 2)."""
        if not self.last or len(self.last) < 2:
            return None
        return 2 * float(np.std(self.last, ddof=1)) / len(self.last) ** 0.5

    def _stated(self, r: float) -> str:
        """The parenthesis after the last step's mean: its two standard errors over the images, the threshold, and,
        when the threshold lies within them, that another sample could give the other verdict."""
        se = self.spread()
        if se is None:
            return f"(a method fails above {FAIL_RANK:.2f})"
        near = "; the threshold is within them: check more images (--images)" if abs(r - FAIL_RANK) <= se else ""
        return f"(± {se:.2f}, two standard errors over {len(self.last)} images; a method fails above {FAIL_RANK:.2f}{near})"

    def verdict(self) -> str:
        if not self.scored:
            return (
                f"{self.method}: cannot tell: its maps of the {self.images} sampled image(s) are constant (empty) "
                "before any randomization, so nothing can change; counted as failing"
            )
        r = self.rank[-1]
        left = self.images - self.scored
        out = f" ({left} of the {self.images} images had constant maps and are left out)" if left else ""
        if r > FAIL_RANK:
            return (
                f"{self.method}: FAILS: maps keep {r:.2f} rank correlation after the whole network is "
                f"randomized {self._stated(r)}: they show the image, not the model{out}"
            )
        return (
            f"{self.method}: passes: rank correlation falls to {r:.2f} once the whole network is randomized "
            f"{self._stated(r)}{out}"
        )

    def passed(self) -> bool:
        return bool(self.scored) and self.rank[-1] is not None and self.rank[-1] <= FAIL_RANK

    def record(self, checked: float, hash: str | None) -> SanityCurve:
        """The curve as sanity.json keeps it; ``hash``: its maps' config hash (the report marks the verdict once the
        method's maps have another)."""
        return SanityCurve(
            self.method, self.steps, self.rank, self.ssim, self.passed(), self.verdict(), self.scored, checked, hash
        )


MapsFn = Callable[[torch.nn.Module], dict[str, np.ndarray]]  # model -> method -> (B, H, W) maps


def cascade(
    model: torch.nn.Module,
    maps_of: MapsFn,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
    fresh: Callable[[], torch.nn.Module] | None = None,
) -> list[Curve]:
    """Randomize ``model``'s stages from the top, cumulatively, on a copy (``fresh``: builds the model again, for
    a model that cannot be deep-copied); compare each method's maps."""
    from ..model.heads import unwrap

    t0 = time.monotonic()
    original = maps_of(model)
    took = time.monotonic() - t0
    net = copy_model(model, fresh)
    inner = unwrap(net)  # a one-logit head's wrapper is no stage: the user's model's stages are
    names = stages(inner)
    own = own_parameters(inner)
    # each stage from the output down, then (a ViT's position embeddings, class token) the model's own parameters
    steps = [(n, getattr(inner, n)) for n in names] + ([(",".join(own), None)] if own else [])
    if not steps:
        raise UsageError("the model has no top-level stage with parameters to randomize")
    if took >= ESTIMATE_AFTER_S:  # a ViT with seven methods: minutes a step, and nothing said until the first
        log(
            f"sanity: the original maps took {_duration(took)}; {len(steps)} randomization steps to go, each as "
            f"long: about {_duration(took * len(steps))}"
        )
    varies = {m: [bool(np.ptp(a) > 0) for a in ref] for m, ref in original.items()}  # the images scored
    labels = ["original"]
    rank: dict[str, list[float | None]] = {m: [1.0 if any(v) else None] for m, v in varies.items()}
    sim: dict[str, list[float | None]] = {m: [1.0 if any(v) else None] for m, v in varies.items()}
    last: dict[str, list[float]] = {m: [] for m in original}  # the last step's per-image |rank correlation|
    for i, (name, stage) in enumerate(steps):
        if stage is not None:
            reinit(stage, seed + i)
        else:  # without them a ViT's "fully random" network kept its trained position embeddings and class token
            reinit_own(inner, seed + i)
        labels.append(name if i == 0 else f"+{name}")
        now = maps_of(net)
        for m, ref in original.items():
            pairs = [(a, b) for a, b, v in zip(ref, now[m], varies[m], strict=True) if v]
            last[m] = [abs(spearman(a, b)) for a, b in pairs]
            rank[m].append(float(np.mean(last[m])) if pairs else None)
            sim[m].append(float(np.mean([ssim(a, b) for a, b in pairs])) if pairs else None)
        log(f"sanity: randomized {labels[-1]}: " + ", ".join(f"{m} {_num(rank[m][-1])}" for m in original))
    return [Curve(m, labels, rank[m], sim[m], sum(varies[m]), len(varies[m]), last[m]) for m in original]


ESTIMATE_AFTER_S = 10.0  # original maps slower than this: say how long the steps will take


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def copy_model(model: torch.nn.Module, fresh: Callable[[], torch.nn.Module] | None) -> torch.nn.Module:
    """A copy of ``model`` to randomize: a deep copy, or ``fresh()`` (the model built again) where it cannot be
    copied (torch.nn.utils.weight_norm's derived weights are no graph leaves: "Only Tensors created explicitly by
    the user support the deepcopy protocol")."""
    try:
        return copy.deepcopy(model)
    except RuntimeError:
        if fresh is None:
            raise
        return fresh()


def sample(rels: list[str], n: int, seed: int) -> list[str]:
    """A fixed, seeded sample of at most ``n`` images, in path order."""
    rels = sorted(rels)
    if len(rels) <= n:
        return rels
    idx = np.random.default_rng(seed).choice(len(rels), size=n, replace=False)
    return [rels[i] for i in sorted(idx)]


@dataclass
class EndedRun:
    """The folder's last ended run (any status but running: runstatus.ENDED, not only the FINISHED ones, ok and
    some-failed): its images (manifest rows, whichever runs committed them), its record and the input folder it read.
    An interrupted run's record is its request's as well: the maps sanity recomputes are those it asked for."""

    images: dict[str, ImageRow]
    config: RunConfig
    root: Path
    map_methods: set[str]  # every method the folder holds maps of (earlier runs' too)


@dataclass
class SampleBatch:
    """The readable sampled images in memory: what every method explains before and after each randomization."""

    rels: list[str]
    x: torch.Tensor  # uint8, as the loader gives it
    segments: torch.Tensor | None
    targets: torch.Tensor  # the class the run explained: the same before and after


def run_sanity(
    out: Path,
    n: int = DEFAULT_SAMPLE,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 32,
    log: Callable[[str], None] = lambda s: None,
    override: ModelOverride = ModelOverride(),
    lock: OutputLock | None = None,
) -> SanityResult:
    """Run the cascade for every method of the folder's last run; write sanity.json and the report.

    ``lock``: the folder's lock when the caller holds it already, the folder recovered (pipeline.recovery.held_output:
    the CLI takes it before importing torch, so that a run holding the folder is refused at once); else that here."""
    from ..pipeline.recovery import held_output

    out = Path(out)
    # the cascade seeds torch's generator (sanity's own numbers): the caller's random state is given back after
    with torch.random.fork_rng(devices=[]), nullcontext(lock) if lock is not None else held_output(out, log, "sanity"):
        run = last_ended_run(out)
        opts = rebuild_options(run.config, run.root, out, device, override)
        prepared = prepare_rebuilt(opts, run.config, out, override)
        rels = same_content(run.root, sample(list(run.images), n, seed), run.images, log)
        batch = load_sample(run, rels, prepared)
        fitting = split_batches(prepared.ctx.device, log)  # one size for every step's maps

        def maps_of(net: torch.nn.Module) -> dict[str, np.ndarray]:
            return _maps(net, prepared.ctx, prepared.methods, batch, batch_size, fitting)

        t0 = time.monotonic()
        curves = cascade(prepared.ctx.model, maps_of, seed=seed, log=log, fresh=lambda: rebuilt_model(opts, prepared))
        created = time.time()
        recorded = run.config.methods
        result = SanityResult(
            [c.record(created, recorded[c.method].hash if c.method in recorded else None) for c in curves],
            VERSION,
            created,
            time.monotonic() - t0,
            len(batch.rels),
            seed,
            prepared.model.checkpoint_sha256,
            str(run.root),
        )
        result.curves += earlier_curves(out, result, run.map_methods)
        atomic_write_bytes(out / FILENAME, result.to_json().encode())
        from ..report import write_report

        write_report(out)
    return result


def earlier_curves(out: Path, result: SanityResult, map_methods: set[str]) -> list[SanityCurve]:
    """The curves of the folder's previous check that this one did not redo, so that a check after a run that only
    added a method keeps the others' verdicts: kept only where that check's model, sample size, seed and input
    folder are this one's (SanityResult.same_check), its stages the same, and the folder still holds the method's
    maps. A curve the previous file holds without what the page reads (a verdict, ...) is not kept."""
    old = SanityResult.read(out, skip_bad_curves=True)
    if old is None or not old.same_check(result):  # none, unreadable, or another check: nothing to keep
        return []
    redone = {c.method for c in result.curves}
    steps = result.curves[0].steps if result.curves else None
    return [
        replace(c, checked=old.created if c.checked is None else c.checked)
        for c in old.curves
        if c.method not in redone and c.method in map_methods and c.steps == steps
    ]


def last_ended_run(out: Path) -> EndedRun:
    """The folder's last ended run (see EndedRun), whose input folder must still exist (sanity recomputes its maps)."""
    import sqlite3

    from ..manifest import FILENAME as MANIFEST
    from ..manifest import Manifest, ManifestError
    from ..runconfig import read_run
    from ..targets import method_of

    try:
        m = Manifest(out / MANIFEST)
        try:
            images = m.images()
            map_methods = {method_of(k) for k in m.map_methods()}
            last = next((r for r in m.runs_newest_first() if r.ended), None)
            resolved_input = m.get_meta("input_dir")
        finally:
            m.close()
    except sqlite3.DatabaseError as e:
        raise ManifestError(f"the manifest {out / MANIFEST} is damaged ({e})") from None
    if last is None or not images:
        raise UsageError(f"{out} has no finished run with images")
    run_cfg = read_run(last)
    root = Path(run_cfg.input_dir or resolved_input or last.input_dir)
    if not root.is_dir():
        raise UsageError(
            f"the run's input folder {root} does not exist any more; sanity recomputes maps of "
            "the run's images and needs them (moved or renamed? xaibatch run NEW_PATH --out "
            f"{out} --replace records where it is now, computing nothing again for the same images)"
        )
    return EndedRun(images, run_cfg, root, map_methods)


def load_sample(run: EndedRun, rels: list[str], prepared: Prepared) -> SampleBatch:
    """Decode the sampled images as a run would (with the superpixels LIME needs); refuses when none is readable."""
    from ..dataset import ImageDataset, collate
    from ..methods.base import first_segmenter

    entries = image_entries(run.root, rels)
    ds = ImageDataset(entries, prepared.model.input_size, first_segmenter(prepared.methods))
    items = [ds[i] for i in range(len(ds))]
    b = collate(items)
    if b.x is None:
        raise UsageError(f"none of the {len(rels)} sampled images can be read from {run.root} any more")
    ok = [entries[i].rel for i in b.index]
    targets = torch.tensor([run.images[r].target for r in ok])  # explain the same class before and after
    return SampleBatch(ok, b.x, b.segments, targets)


def split_batches(device: torch.device, log: Callable[[str], None]) -> Fitting:
    """The check's batches split where they run out of memory, as a run's (methods/explainer.Fitting), said in one
    line (the first time; again only if memory shrinks)."""
    from ..methods.explainer import Fitting

    def say(split: Split) -> None:
        log(f"sanity: warning: {split.text(device, f'next time give --batch-size {split.size}')}")

    return Fitting(device, say, caller="sanity")


def _maps(
    net, ctx, methods, batch: SampleBatch, batch_size: int, fitting: Fitting | None = None
) -> dict[str, np.ndarray]:
    """Every method's maps of the sample under ``net`` (the target layer looked up by name in that copy), in
    batches of ``batch_size``, split where they do not fit with a ``fitting`` (None: a batch that does not fit
    raises)."""
    from ..model.layers import find_target_layer
    from ..methods.explainer import Explained, Explainer

    from ..model.heads import unwrap

    layer = find_target_layer(unwrap(net), ctx.input_size, ctx.layer.name) if ctx.layer is not None else None
    ctx2 = replace(ctx, model=net.to(ctx.device).eval(), layer=layer)
    for m in methods:
        m.ctx = ctx2
    try:
        ex = Explainer(methods, ctx2, "label")
        tensors = ex.explain_tensors(batch.x, batch_size, batch.targets, batch.segments, None, fitting)
        done = Explained.cat(list(tensors))
        return {k: v.maps.numpy() for k, v in done.methods.items()}
    finally:
        for m in methods:
            m.ctx = ctx
