"""``xaibatch bench``: xaibatch end to end against the model's limits and the reference libraries, in one process.

On one generated folder of PNG files and one randomly initialised timm model
(the same weights for everyone) it times, in images per second:

* the limits: the model's forward pass alone (at the run's batch size and at
  LIME's model batch), and forward plus backward to the input (no weight
  gradients) at the run's batch size;
* xaibatch end to end: real :func:`xaibatch.pipeline.run` calls over the folder
  (DataLoader workers read and decode, the model computes, the writer thread
  writes ``.npy`` and PNG files and the manifest), timed over the run's compute
  phase (``RunResult.timings["compute"]``), so the fixed start-up (model load,
  folder scan) and the report render are left out;
* xaibatch's methods alone on tensors already in memory (what the end-to-end
  figure loses to files shows as the gap between the two);
* the peers on the same model and tensors: pytorch-grad-cam's ``GradCAM`` per
  image and batched, its guided backprop per image (with ``GradCAM``, as its
  usage does), captum's ``GuidedGradCam`` batched, the ``lime`` package's
  ``explain_instance`` per image and captum's ``Lime`` per image (both with
  xaibatch's superpixels and fill, 1000 samples, the same model batch).

Each job runs once to warm up, then once per round for ``repeats`` rounds; the
rounds interleave the implementations of one method family, and each job keeps
its fastest round, so a burst of load from other processes does not land on one
implementation only. ``--memory`` instead measures peak memory of runs over
generated folders of two sizes (see :func:`memory_check`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

FAMILIES = ("gradcam", "guided-gradcam", "lime")


@dataclass
class BenchOptions:
    arch: str = "resnet18"
    image_size: int = 64
    batch_size: int = 64
    images: int = 1024
    per_image_images: int = 128  # per-image peers explain only this many of them (their rate is per image anyway)
    lime_images: int = 4
    lime_samples: int = 1000
    lime_batch_size: int = 0  # perturbed images per model call; 0: LIME's own choice (batch_size=auto), for all
    lime_segments: int = 50
    classes: int = 2
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0: torch's default
    workers: int | None = None  # DataLoader processes of the end-to-end runs; None: the CLI's default
    repeats: int = 3
    only: tuple[str, ...] = FAMILIES
    peers: bool = True
    work_dir: Path | None = None  # keep the generated files here (default: a temporary folder, deleted)


@dataclass
class Row:
    family: str  # "limits" or a method family
    impl: str
    kind: str  # limit | xaibatch | xaibatch-tensors | peer
    images: int
    seconds: float = float("inf")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Ratio:
    name: str
    value: float
    target: float | None = None  # met when value >= target (or <= for "at most" ratios)
    at_most: bool = False
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.target is None or not np.isfinite(self.value):
            return None
        return self.value <= self.target if self.at_most else self.value >= self.target


@dataclass
class BenchResult:
    header: list[str]
    rows: list[Row]
    ratios: list[Ratio]


# ---------------------------------------------------------------------------------------------------- inputs

def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Write ``n`` smooth random RGB PNGs (low-frequency colour fields plus a little noise, so SLIC finds
    real superpixels rather than collapsing on pure noise)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cells = max(2, size // 8)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        a = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.int16)
        a = np.clip(a + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
        p = folder / f"img_{i:06d}.png"
        Image.fromarray(a).save(p, compress_level=1)
        paths.append(p)
    return paths


def _subset(src: list[Path], folder: Path) -> Path:
    """A folder holding (hard links to) these files."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in src:
        dst = folder / p.name
        if not dst.exists():
            try:
                os.link(p, dst)
            except OSError:
                shutil.copy2(p, dst)
    return folder


def load_tensors(paths: list[Path], input_size: int) -> np.ndarray:
    """Decode the files exactly as the pipeline's DataLoader does: (N, H, W, 3) uint8 model inputs."""
    from ..data import ImageDataset
    from ..scan import scan

    found = scan(paths[0].parent, labeled=False)
    by_name = {e.path.name: e for e in found.images}
    ds = ImageDataset([by_name[p.name] for p in paths], input_size)
    return np.stack([ds[i]["x"].permute(1, 2, 0).numpy() for i in range(len(ds))])


# ---------------------------------------------------------------------------------------------------- timing

def _time_interleaved(jobs: list[tuple[Row, Callable[[bool], float | None]]], repeats: int,
                      log: Callable[[str], None]) -> None:
    """Warm each job up once, then run every job of a family once per round; keep each job's fastest round.

    A job returns its own seconds (the compute phase of a pipeline run) or None (then its wall time counts).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's "Setting backward hooks on ReLU activations", lime's, ...
        for family in dict.fromkeys(r.family for r, _ in jobs):  # one family at a time
            group = [(r, fn) for r, fn in jobs if r.family == family]
            log(f"bench: {family}: warm-up")
            for _row, fn in group:
                fn(True)
            for k in range(repeats):
                log(f"bench: {family}: round {k + 1}/{repeats}")
                for row, fn in group:
                    t = time.perf_counter()
                    own = fn(False)
                    row.seconds = min(row.seconds, own if own is not None else time.perf_counter() - t)
                    log(f"bench: {row.family}: {row.impl}: {row.rate:,.1f} images/s")  # a cut-off run still reports


class _ModelTimer:
    """Wall time spent inside forwards of modules of one type (the top-level model), via global module hooks."""

    def __init__(self, model_type: type, sync: Callable[[], None]) -> None:
        self.model_type = model_type
        self.sync = sync
        self.seconds = 0.0
        self._start: float | None = None
        self._handles: list = []

    def __enter__(self) -> "_ModelTimer":
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def pre(m, _inp):
            if type(m) is self.model_type and self._start is None:
                self.sync()
                self._start = time.perf_counter()

        def post(m, _inp, _out):
            if type(m) is self.model_type and self._start is not None:
                self.sync()
                self.seconds += time.perf_counter() - self._start
                self._start = None

        self._handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------- the bench

def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def _load() -> str:
    try:
        return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        return "?"


def run_bench(opts: BenchOptions, log: Callable[[str], None] = lambda s: None) -> BenchResult:
    import timm
    import torch

    from .. import pipeline
    from ..methods.explainer import normalize as normalize_input
    from ..layers import find_target_layer
    from ..defaults import default_workers
    from ..layers import capture
    from ..methods import Batch, ModelContext, create_method
    from ..model import load_model, resolve_device, save_checkpoint
    from ..segmentation import slic_segments

    from ..methods import method_class

    for name in opts.only:  # any method: an unknown name raises UsageError with the close matches
        method_class(name)
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    workers = default_workers() if opts.workers is None else opts.workers
    dev = resolve_device(opts.device)
    size, bs = opts.image_size, opts.batch_size
    n, n_lime = opts.images, min(opts.lime_images, opts.images)
    root = Path(opts.work_dir) if opts.work_dir else Path(tempfile.mkdtemp(prefix="xaibatch-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    load_start = _load()
    try:
        log(f"bench: generating {n} {size}x{size} PNGs in {root}")
        paths = write_images(root / "all", n, size)
        n_warm = min(n, bs)  # warm-ups explain one batch
        folders = {k: _subset(paths[:k], root / f"first-{k}") for k in {n, n_lime, n_warm, 1}}
        torch.manual_seed(0)
        ckpt = root / "model.pt"
        net = timm.create_model(opts.arch, pretrained=False, num_classes=opts.classes)
        cfg = net.pretrained_cfg
        save_checkpoint(ckpt, net, opts.arch, [f"c{i}" for i in range(opts.classes)], size, cfg["mean"], cfg["std"])
        loaded = load_model(ckpt)
        model = loaded.module.to(dev).eval()
        layer = find_target_layer(model, size)
        ctx = ModelContext(model, layer, size, loaded.mean, loaded.std, dev)
        images = load_tensors(paths, size)
        m_t = torch.tensor(loaded.mean, device=dev).view(1, 3, 1, 1)
        s_t = torch.tensor(loaded.std, device=dev).view(1, 3, 1, 1)

        def normalize(u8: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(u8)).to(dev).permute(0, 3, 1, 2).contiguous()
            return normalize_input(t, m_t, s_t)  # (B, 3, H, W) contiguous, as the pipeline's batches

        x = normalize(images)
        # LIME's model batch: the given one, else the one LIME picks (free memory on CUDA); the peers get it too
        lime_chunk = opts.lime_batch_size or create_method("lime", ctx).chunk_size(x[:1])
        lime_bs_option: int | str = opts.lime_batch_size or "auto"
        with torch.no_grad():
            targets = torch.cat([model(x[i : i + bs]).argmax(1) for i in range(0, n, bs)])

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        def chunks(k: int, step: int = bs):
            return [(i, min(k, i + step)) for i in range(0, k, step)]

        header = [
            f"xaibatch bench: {opts.arch} at {size}x{size}, {opts.classes} classes, device {dev}, "
            f"batch {bs}, torch threads {torch.get_num_threads()}, DataLoader workers {workers}",
            f"machine: {machine_description()}, torch {torch.__version__}, "
            f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}; load average at start {load_start}",
            f"images: {n} generated PNGs (LIME: {n_lime}, {opts.lime_samples} samples, model batch "
            f"{lime_chunk}{'' if opts.lime_batch_size else ' (auto)'}, {opts.lime_segments} SLIC segments); best of {opts.repeats} interleaved rounds",
            f"CAM layer {layer.name} {layer.grid}",
        ]
        jobs: list[tuple[Row, Callable[[bool], float | None]]] = []

        # -- limits
        def fwd(batch: int, k: int) -> Callable[[bool], None]:
            xs = x if k <= n else x.repeat((k + n - 1) // n, 1, 1, 1)[:k]

            def fn(warm: bool) -> None:
                with torch.no_grad():
                    for a, b in chunks(min(k, batch) if warm else k, batch):
                        model(xs[a:b])
                sync()

            return fn

        def fwd_bwd(warm: bool) -> None:
            for a, b in chunks(n_warm if warm else n):
                xi = x[a:b].detach().requires_grad_(True)
                with torch.enable_grad():
                    logits = model(xi)
                    torch.autograd.grad(logits.gather(1, targets[a:b, None]).sum(), xi)
            sync()

        jobs.append((Row("limits", f"forward only, batch {bs}", "limit", n), fwd(bs, n)))
        lime_bs_rows = []
        if "lime" in opts.only and lime_chunk != bs:
            k = max(n, 2 * lime_chunk)
            r = Row("limits", f"forward only, batch {lime_chunk}", "limit", k)
            jobs.append((r, fwd(lime_chunk, k)))
            lime_bs_rows.append(r)
        jobs.append((Row("limits", f"forward + backward to the input, batch {bs}", "limit", n), fwd_bwd))

        # -- xaibatch end to end
        def e2e(family: str, k: int, model_timer: bool = False,
                faith: bool = False, no_files: bool = False) -> tuple[Row, Callable[[bool], float]]:
            from ..faithfulness import DEFAULT_STEPS, FaithConfig

            row = (Row(family, f"xaibatch end to end + --faithfulness ({DEFAULT_STEPS} steps)", "xaibatch-faith", k)
                   if faith else
                   Row(family, "xaibatch end to end, the writer's file work removed", "part", k) if no_files else
                   Row(family, "xaibatch end to end (files in, files out)", "xaibatch", k))
            method_options = {"lime": {"samples": opts.lime_samples, "segments": opts.lime_segments,
                                       "batch_size": lime_bs_option}}
            outs = _scratch(root, f"out-{family}{'-faith' if faith else ''}")

            def fn(warm: bool) -> float:
                out = next(outs)
                todo = (1 if family == "lime" else n_warm) if warm else k
                ro = pipeline.RunOptions(
                    input_dir=folders[todo], out_dir=out, methods=[family],
                    checkpoint=ckpt, batch_size=bs, device=opts.device, workers=workers, labeled=False,
                    method_options=method_options, handle_signals=False,
                    faithfulness=FaithConfig(chunk=max(64, 4 * bs)) if faith else None,
                )
                timer = _ModelTimer(type(model), sync) if model_timer else None
                try:
                    with (timer or contextlib.nullcontext()), (_without_file_work() if no_files else
                                                               contextlib.nullcontext()):
                        res = pipeline.run(ro, log=lambda s: None)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                if res.computed != todo:
                    raise RuntimeError(f"bench: the {family} run computed {res.computed} of {todo} images")
                t = res.timings["compute"]
                if not warm:
                    if timer is not None and t < row.seconds:
                        row.extra["model_seconds"] = timer.seconds
                    fixed = row.extra.setdefault("fixed", {"start-up": float("inf"), "report": float("inf")})
                    fixed["start-up"] = min(fixed["start-up"], res.timings["prepare"] + res.timings["plan"])
                    fixed["report"] = min(fixed["report"], res.timings["report"])
                return t

            return row, fn

        # -- xaibatch's methods on preloaded tensors
        def on_tensors(family: str, k: int) -> tuple[Row, Callable[[bool], None]]:
            row = Row(family, "xaibatch methods alone, tensors in memory", "xaibatch-tensors", k)
            opts_m = ({"samples": opts.lime_samples, "segments": opts.lime_segments,
                       "batch_size": lime_bs_option} if family == "lime" else {})
            method = create_method(family, ctx, **opts_m)
            seg_fn = method.segmenter()

            def fn(warm: bool) -> None:
                kk = (1 if family == "lime" else n_warm) if warm else k
                for a, b in chunks(kk):
                    xb = x[a:b]
                    segs = None
                    if seg_fn is not None:  # a DataLoader worker's job in a run
                        segs = torch.from_numpy(np.stack([seg_fn(im) for im in images[a:b]])).to(dev)
                    if method.needs_activations:
                        with torch.enable_grad(), capture(layer) as store:
                            logits = model(xb.detach().requires_grad_(True))
                        acts = store["activations"]
                    else:
                        with torch.no_grad():
                            logits = model(xb)
                        acts = None
                    tb = logits.detach().argmax(1)
                    method.explain(Batch(xb.detach(), tb, logits, acts, segs, list(range(a, b)))).maps.cpu()
                sync()

            return row, fn

        if "gradcam" in opts.only:
            jobs.append(e2e("gradcam", n))
            jobs.append(e2e("gradcam", n, no_files=True))  # what the files cost: compare with the row above
            jobs.append(_loader_alone(folders, n, n_warm, size, bs, workers))
            jpegs = {k: _as_jpegs(paths[:k], root / f"jpeg-{k}") for k in {n, n_warm}}
            jobs.append(_loader_alone(jpegs, n, n_warm, size, bs, workers, what="JPEG, PIL in the workers"))
            jobs.append(_loader_alone(jpegs, n, n_warm, size, bs, workers, on=dev))
            jobs.append(_writer_alone(root, images, n, n_warm, bs, dev, workers))
            jobs.append(_file_floor(root, images, n, n_warm))  # the writer's ceiling on this file system
            jobs.append(e2e("gradcam", n, faith=True))  # the scores' cost: compare with the row above
            jobs.append(on_tensors("gradcam", n))
        if "guided-gradcam" in opts.only:
            jobs.append(e2e("guided-gradcam", n))
            jobs.append(on_tensors("guided-gradcam", n))
        if "lime" in opts.only:
            jobs.append(e2e("lime", n_lime, model_timer=True))
            jobs.append(on_tensors("lime", n_lime))
        for other in (m for m in opts.only if m not in FAMILIES):  # any other method: no peers, no targets
            jobs.append(e2e(other, n))
            jobs.append(on_tensors(other, n))

        # -- peers
        if opts.peers:
            jobs += _peer_jobs(opts, model, layer, x, targets, images, normalize, sync, chunks, n, n_lime, dev,
                               slic_segments, create_method, ctx, min(n, opts.per_image_images), n_warm, lime_chunk)

        order = ["limits", *FAMILIES, *opts.only]
        jobs.sort(key=lambda j: order.index(j[0].family))
        _time_interleaved(jobs, max(1, opts.repeats), log)
        rows = [r for r, _ in jobs]
        header[2] += f"; load average at end {_load()}"
        return BenchResult(header, rows, _ratios(rows, opts, lime_bs_rows))
    finally:
        if opts.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _without_file_work():
    """Runs in this block encode and write no file: the writer only commits its rows (a bench row's baseline)."""
    from .. import layout
    from ..manifest import MapRow
    from ..pipeline import writer

    real = writer.write_item

    def rows_only(files, item, run_id):
        return [MapRow(item.rel, mp.method, mp.config_hash, layout.map_npy(mp.method, item.stem),
                       layout.map_png(mp.method, item.stem), layout.map_thumb(mp.method, item.stem, item.width,
                                                                               item.height), mp.info, run_id)
                for mp in item.maps]

    writer.write_item = rows_only
    try:
        yield
    finally:
        writer.write_item = real


def _loader_alone(folders, n, n_warm, size, bs, workers, what: str = "", on: Any = None
                  ) -> tuple[Row, Callable[[bool], None]]:
    """The DataLoader alone over the folder, no model: decode and resize in the workers, or with ``on`` (a
    device) the workers read the JPEGs and the main process decodes and resizes them there (decode.py)."""
    import torch

    from ..data import ImageDataset, collate
    from ..decode import finish_batch
    from ..scan import scan

    if on is not None:
        what = f"JPEG, decoded on {on}"
    row = Row("gradcam", f"loader alone{', ' + what if what else ''} ({workers} DataLoader workers)", "part", n)
    if on is not None:
        row.extra["decode_on"] = str(on)

    def fn(warm: bool) -> None:
        ds = ImageDataset(scan(folders[n_warm if warm else n]).images, size, jpeg_bytes=on is not None)
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=workers, collate_fn=collate,
                                             prefetch_factor=4 if workers else None,
                                             pin_memory=on is not None and on.type == "cuda")
        for b in loader:
            if on is not None:
                b = finish_batch(b, on, size)
        if on is not None and on.type == "cuda":
            torch.cuda.synchronize(on)

    return row, fn


def _as_jpegs(src: list[Path], folder: Path, quality: int = 90) -> Path:
    """A folder of JPEG copies (quality 90, 4:2:0, as most cameras and sites save them) of these images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for p in src:
        dst = folder / (p.stem + ".jpg")
        if not dst.exists():
            with Image.open(p) as im:
                im.convert("RGB").save(dst, quality=quality)
    return folder


def _writer_alone(root, images, n, n_warm, bs, dev, workers) -> tuple[Row, Callable[[bool], None]]:
    """The writer alone: a run's files and rows for maps already in memory (pictures made on the device)."""
    import torch

    from ..defaults import default_writers
    from ..pipeline.writer import MapPictures, WriteItem, WriteJob, Writer, batch_pictures, display_thumbs

    size = images.shape[1]
    display = [images[i % len(images)] for i in range(bs)]
    maps = torch.rand(bs, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    pictures = batch_pictures(display, maps, False, [(size, size)] * bs)
    thumbs = display_thumbs(display)
    writers = default_writers(dev.type, workers)  # as a run's default --writers
    how = f"{writers} writer process{'es' * (writers > 1)}" if writers else "the writer thread"
    row = Row("gradcam", f"writer alone, maps in memory ({how})", "part", n)
    outs = _scratch(root, "writer")

    def fn(warm: bool) -> None:
        out = next(outs)
        out.mkdir()
        w = Writer(out, writers=writers)
        w.start()
        try:
            k = n_warm if warm else n
            for a in range(0, k, bs):
                items = [WriteItem(f"img_{i:06d}.png", f"img_{i:06d}", size, size, display[i - a], thumbs[i - a],
                                   [MapPictures("gradcam", "bench", *pictures[i - a])])
                         for i in range(a, min(k, a + bs))]
                w.put(WriteJob(1, items))
        finally:
            w.finish()
            shutil.rmtree(out, ignore_errors=True)

    return row, fn


def _peer_jobs(opts, model, layer, x, targets, images, normalize, sync, chunks, n, n_lime, dev, slic_segments,
               create_method, ctx, n_each, n_warm, lime_chunk):
    import copy
    import functools

    import torch

    jobs: list[tuple[Row, Callable[[bool], None]]] = []
    tlist = [int(t) for t in targets]
    reshape = layer.to_grid if layer.is_tokens else None

    if "gradcam" in opts.only:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc_each(warm: bool) -> None:
            with GradCAM(model=model, target_layers=[layer.module], reshape_transform=reshape) as cam:
                for i in range(2 if warm else n_each):
                    cam(input_tensor=x[i : i + 1], targets=[ClassifierOutputTarget(tlist[i])])

        def pgc_batched(warm: bool) -> None:
            with GradCAM(model=model, target_layers=[layer.module], reshape_transform=reshape) as cam:
                for a, b in chunks(n_warm if warm else n):
                    cam(input_tensor=x[a:b], targets=[ClassifierOutputTarget(t) for t in tlist[a:b]])

        jobs.append((Row("gradcam", "pytorch-grad-cam GradCAM, per image", "peer", n_each), pgc_each))
        jobs.append((Row("gradcam", f"pytorch-grad-cam GradCAM, batches of {opts.batch_size}", "peer", n),
                     pgc_batched))

    if "guided-gradcam" in opts.only:
        from captum.attr import GuidedGradCam
        from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        lib_model = copy.deepcopy(model)  # GuidedBackpropReLUModel swaps the ReLU modules for its own
        lib_layer = lib_model.get_submodule(layer.name)

        def pgc_guided(warm: bool) -> None:
            with GradCAM(model=lib_model, target_layers=[lib_layer], reshape_transform=reshape) as cam:
                gb_model = GuidedBackpropReLUModel(model=lib_model, device=dev)
                for i in range(2 if warm else n_each):  # the library's usage: one image at a time
                    xi = x[i : i + 1]
                    grayscale = cam(input_tensor=xi, targets=[ClassifierOutputTarget(tlist[i])])[0]
                    gb = gb_model(xi.clone(), target_category=tlist[i])
                    _ = grayscale[..., None] * gb

        def captum_guided(warm: bool) -> None:
            ggc = GuidedGradCam(model, layer.module)
            for a, b in chunks(n_warm if warm else n):
                ggc.attribute(x[a:b].clone().requires_grad_(True), target=targets[a:b],
                              interpolate_mode="bilinear").detach().cpu()
            sync()

        jobs.append((Row("guided-gradcam", "pytorch-grad-cam GradCAM + guided backprop, per image", "peer", n_each),
                     pgc_guided))
        jobs.append((Row("guided-gradcam", f"captum GuidedGradCam, batches of {opts.batch_size}", "peer", n),
                     captum_guided))

    if "lime" in opts.only:
        import contextlib
        import io

        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import Lime
        from captum.attr._core.lime import get_exp_kernel_similarity_function
        from lime.lime_image import LimeImageExplainer

        seg_fn = functools.partial(slic_segments, n_segments=opts.lime_segments)
        fill_method = create_method("lime", ctx, segments=opts.lime_segments)

        def classifier_fn(batch_u8: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(model(normalize(batch_u8)), dim=1).cpu().numpy()

        def lime_pkg(warm: bool) -> None:
            explainer = LimeImageExplainer(random_state=0)
            for i in range(1 if warm else n_lime):
                with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                    explainer.explain_instance(
                        images[i], classifier_fn, labels=(tlist[i],), top_labels=None, hide_color=None,
                        num_samples=opts.lime_samples, batch_size=lime_chunk, segmentation_fn=seg_fn,
                    )

        def probs(inp):
            return torch.softmax(model(inp), dim=1)

        def captum_lime(warm: bool) -> None:
            lime = Lime(probs, interpretable_model=SkLearnRidge(alpha=1.0),
                        similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.25))
            for i in range(1 if warm else n_lime):
                seg = torch.from_numpy(seg_fn(images[i])).to(dev)
                fill = fill_method.fill(x[i : i + 1], seg.view(1, -1), int(seg.max()) + 1)  # the same mean colour
                lime.attribute(x[i : i + 1], baselines=fill, target=tlist[i], feature_mask=seg[None, None],
                               n_samples=opts.lime_samples, perturbations_per_eval=lime_chunk)
            sync()

        jobs.append((Row("lime", "lime package explain_instance, per image", "peer", n_lime), lime_pkg))
        jobs.append((Row("lime", "captum Lime, per image", "peer", n_lime), captum_lime))
    return jobs


def _scratch(root: Path, name: str) -> Iterator[Path]:
    """A new folder name under ``root`` for each round of a row (``name-1``, ``name-2``, ...)."""
    return (root / f"{name}-{i}" for i in itertools.count(1))


def _file_floor(root, images, n, n_warm) -> tuple[Row, Callable[[bool], None]]:
    """Atomic file writes alone (temporary name, write, rename; one thread), as many per image as the writer
    makes at this size, with no encoding: what the kernel lets any crash-safe writer reach here."""
    from .. import layout

    size = images.shape[1]
    per_image = 3 + 2 * (size > layout.THUMB_SIDE)  # display copy, npy, overlay (+ their thumbnails)
    body = bytes(3 * size * size // 2)
    row = Row("gradcam", f"file system floor: {per_image} atomic files per image, no encoding", "limit", n)
    outs = _scratch(root, "floor")

    def fn(warm: bool) -> None:
        out = next(outs)
        out.mkdir()
        d = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range((n_warm if warm else n) * per_image):
                fd = os.open(f".{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=d)
                os.write(fd, body)
                os.close(fd)
                os.rename(f".{i}.tmp", f"{i}", src_dir_fd=d, dst_dir_fd=d)
        finally:
            os.close(d)
            shutil.rmtree(out, ignore_errors=True)

    return row, fn


def _ratios(rows: list[Row], opts: BenchOptions, lime_bs_rows: list[Row]) -> list[Ratio]:
    def find(family: str, kind: str, startswith: str = "") -> Row | None:
        for r in rows:
            if r.family == family and r.kind == kind and r.impl.startswith(startswith):
                return r
        return None

    out: list[Ratio] = []
    fb = find("limits", "limit", "forward + backward")
    fwd_rows = [r for r in rows if r.family == "limits" and r.impl.startswith("forward only")]
    for fam in FAMILIES:
        ours = find(fam, "xaibatch")
        if ours is None:
            continue
        tensors = find(fam, "xaibatch-tensors")
        peers = [r for r in rows if r.family == fam and r.kind == "peer"]
        best = max(peers, key=lambda r: r.rate) if peers else None
        if fam == "gradcam":
            if fb:
                out.append(Ratio("gradcam end to end / forward+backward limit", ours.rate / fb.rate))
            writer, floor = find(fam, "part", "writer alone"), find(fam, "limit", "file system floor")
            if writer and floor:
                out.append(Ratio("writer alone / file system floor (atomic writes, no encoding)",
                                 writer.rate / floor.rate, 0.8))
            pil_jpeg = find(fam, "part", "loader alone, JPEG, PIL")
            dev_jpeg = find(fam, "part", "loader alone, JPEG, decoded on")
            if pil_jpeg and dev_jpeg:
                out.append(Ratio(f"JPEG loader alone at {opts.image_size} px: decoded on {dev_jpeg.extra['decode_on']} "
                                 "/ PIL in the workers", dev_jpeg.rate / pil_jpeg.rate, 2.0))  # --decode auto: PIL below
            batched = find(fam, "peer", "pytorch-grad-cam GradCAM, batches")
            if batched:
                out.append(Ratio("gradcam end to end / pytorch-grad-cam batched (tensors in memory)",
                                 ours.rate / batched.rate, 0.8))
        elif fam == "guided-gradcam":
            if fb:  # Grad-CAM's forward+backward, then guided backprop's own forward+backward
                out.append(Ratio("guided-gradcam end to end / (forward+backward limit / 2)",
                                 ours.rate / (fb.rate / 2)))
            each = find(fam, "peer", "pytorch-grad-cam")
            if each:
                out.append(Ratio("guided-gradcam end to end / pytorch-grad-cam guided per image",
                                 ours.rate / each.rate, 5.0))
        else:
            if fwd_rows:
                lim = max(r.rate for r in fwd_rows) / opts.lime_samples
                out.append(Ratio(f"lime end to end / (best forward-only rate / {opts.lime_samples} samples)",
                                 ours.rate / lim, 0.8))
            pkg = find(fam, "peer", "lime package")
            if pkg:
                out.append(Ratio("lime end to end / lime package", ours.rate / pkg.rate, 1.0))
            ms = ours.extra.get("model_seconds")
            if ms is not None:
                out.append(Ratio("lime: share of the compute phase outside the model's forward",
                                 100 * max(0.0, 1 - ms / ours.seconds), 10.0, at_most=True, unit="%"))
        if best is not None:
            out.append(Ratio(f"{fam} end to end / best peer ({best.impl})", ours.rate / best.rate))
        if tensors is not None:
            out.append(Ratio(f"{fam} end to end / xaibatch methods alone on tensors", ours.rate / tensors.rate))
    return out


# ---------------------------------------------------------------------------------------------------- output

def format_result(res: BenchResult, markdown: bool = False) -> str:
    lines: list[str] = []
    ref: dict[str, Row] = {}
    for r in res.rows:
        if r.kind == "xaibatch":
            ref[r.family] = r

    def vs(r: Row) -> str:
        ours = ref.get(r.family)
        if ours is None or r is ours or r.kind == "limit":
            return ""
        return f"{ours.rate / r.rate:.2f}x"

    cols = ("method", "implementation", "images", "seconds", "images/s", "xaibatch e2e vs this")
    table = [(r.family, r.impl, str(r.images), f"{r.seconds:.3g}", f"{r.rate:.1f}", vs(r)) for r in res.rows]
    rcols = ("ratio", "value", "target", "met")
    rtable = []
    for q in res.ratios:
        val = f"{q.value:.1f}%" if q.unit == "%" else f"{q.value:.2f}x"
        tgt = "" if q.target is None else (
            f"{'<=' if q.at_most else '>='} {q.target:g}{'%' if q.unit == '%' else 'x'}")
        met = "" if q.met is None else ("yes" if q.met else "NO")
        rtable.append((q.name, val, tgt, met))
    fixed = [f"{r.family} {r.extra['fixed']['start-up']:.2f}s + {r.extra['fixed']['report']:.2f}s"
             for r in res.rows if r.kind == "xaibatch" and "fixed" in r.extra]
    note = ("End to end = the runs' compute phase (read, decode, explain, write, manifest). Not counted: "
            "start-up (model load, scan, plan) + report, per run: " + ", ".join(fixed) + ".") if fixed else ""
    if markdown:
        lines += [f"{h}  " for h in res.header] + [""]
        lines += _md(cols, table, right=(2, 3, 4, 5)) + [""]
        lines += [note, ""] if note else []
        lines += _md(rcols, rtable, right=(1,))
    else:
        lines += res.header + [""]
        lines += _plain(cols, table, right=(2, 3, 4, 5)) + [""]
        lines += [note, ""] if note else []
        lines += _plain(rcols, rtable, right=(1,))
    return "\n".join(lines)


def _md(cols, table, right=()) -> list[str]:
    out = ["| " + " | ".join(cols) + " |",
           "|" + "|".join("---:" if i in right else "---" for i in range(len(cols))) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in table]
    return out


def _plain(cols, table, right=()) -> list[str]:
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(cols)]

    def fmt(row):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))

    return [fmt(cols), "  ".join("-" * w for w in widths)] + [fmt(row) for row in table]


# ---------------------------------------------------------------------------------------------------- memory

_MEMORY_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import xaibatch.report as report
from xaibatch.pipeline import RunOptions, run

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
before = {}
orig = report.write_report
def wrapped(*a, **k):
    before["peak_mib"] = hwm()
    return orig(*a, **k)
report.write_report = wrapped
inp, out, ckpt, methods, batch, workers = sys.argv[1:7]
t = time.perf_counter()
res = run(RunOptions(input_dir=Path(inp), out_dir=Path(out), methods=methods.split(","), checkpoint=Path(ckpt),
                     batch_size=int(batch), workers=int(workers), labeled=False, handle_signals=False),
          log=lambda s: None)
workers_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(json.dumps({"computed": res.computed, "peak_mib": hwm(), "peak_before_report_mib": before.get("peak_mib"),
                  "workers_peak_mib": workers_mib, "seconds": time.perf_counter() - t, "timings": res.timings}))
"""


def memory_check(counts: tuple[int, ...] = (2000, 20000), size: int = 32, arch: str = "test_resnet",
                 methods: tuple[str, ...] = ("gradcam",), batch_size: int = 64, workers: int | None = None,
                 work_dir: Path | None = None, log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Peak RSS of one ``pipeline.run`` per folder size, each in a fresh process.

    Each child reports its VmHWM (the whole run and up to the report render) and
    the largest RSS of its DataLoader workers.
    """
    import json
    import subprocess
    import sys

    import timm
    import torch

    from ..defaults import default_workers
    from ..model import save_checkpoint

    workers = default_workers() if workers is None else workers
    root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="xaibatch-mem-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        torch.manual_seed(0)
        net = timm.create_model(arch, pretrained=False, num_classes=2)
        cfg = net.pretrained_cfg
        ckpt = root / "model.pt"
        save_checkpoint(ckpt, net, arch, ["FAKE", "REAL"], size, cfg["mean"], cfg["std"])
        log(f"memory: generating {max(counts)} {size}x{size} PNGs")
        paths = write_images(root / "all", max(counts), size)
        results = []
        for k in counts:
            folder = _subset(paths[:k], root / f"first-{k}")
            out = root / f"out-{k}"
            shutil.rmtree(out, ignore_errors=True)
            log(f"memory: run over {k} images")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
            r = subprocess.run(
                [sys.executable, "-c", _MEMORY_CHILD, str(folder), str(out), str(ckpt), ",".join(methods),
                 str(batch_size), str(workers)], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"memory run over {k} images failed: {r.stderr.strip()[-2000:]}")
            results.append({"images": k, **json.loads(r.stdout.strip().splitlines()[-1])})
            shutil.rmtree(out, ignore_errors=True)
        return results
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)


def format_memory(results: list[dict[str, Any]], markdown: bool = False) -> str:
    cols = ("images", "seconds", "compute img/s", "peak RSS to end of compute (MiB)", "peak RSS whole run (MiB)",
            "DataLoader worker peak (MiB)")
    table = [(str(r["images"]), f"{r['seconds']:.1f}", f"{r['images'] / r['timings']['compute']:.0f}",
              str(r["peak_before_report_mib"]), str(r["peak_mib"]), str(r["workers_peak_mib"])) for r in results]
    lines = _md(cols, table, right=range(6)) if markdown else _plain(cols, table, right=range(6))
    if len(results) >= 2:
        a, b = results[0], results[-1]
        lines += ["", f"peak RSS {b['images']} vs {a['images']} images: "
                      f"{b['peak_before_report_mib'] / a['peak_before_report_mib']:.2f}x to the end of compute, "
                      f"{b['peak_mib'] / a['peak_mib']:.2f}x for the whole run (target <= 1.1x)"]
    return "\n".join(lines)
