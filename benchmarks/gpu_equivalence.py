"""Do the device paths give the CPU's answers? The same images through every device-specific path on cuda and on
the CPU, one table of differences, PASS/FAIL per row against stated tolerances (exit 1 on any FAIL).

    python benchmarks/gpu_equivalence.py [--device cuda] [--keep DIR]

Two sets of images: 12 demo images (32 px PNGs, ``xaibatch demo-data``) under a seeded ``test_resnet``, and 8
photo JPEGs (224 x 224, 320 x 240, 240 x 360: the display copies and thumbnails of three sizes) under a seeded
``resnet18`` (``pretrained=False``: no download). Rows:

* ``probs`` / ``pred``: the model's probabilities; predictions (only where the top two are more than 1e-3 apart).
* one row per method (gradcam, guided-gradcam, lime with --seed 0, cam:gradcam++, captum:IntegratedGradients):
  the maps of the same images explaining the same classes (the CPU's predictions), scaled by the CPU map's
  largest absolute value.
* ``pictures``: the writer's pictures (pipeline/pictures.py) made on each device from the *same* maps: the
  full-size maps, overlays, overlay thumbnails, the views' scale and peak (the value there; and, information only,
  how many views name another pixel: equal maxima are told apart by their centroid, overlay.peaks_batch), and the
  views' grids (the report's mean maps: overlay.grids_batch, adaptive average pooling on the device), in bytes.
* ``display thumbnails``: DisplayStacks.thumbs on each device from the same display copies.
* ``decode``: ``--decode device``'s decode and resize (nvJPEG on cuda) against the same on the CPU
  (libjpeg-turbo through torchvision) and against the PIL path (``--decode cpu``): the model input and display
  copies, mean absolute difference in grey levels (torchvision's own test of nvJPEG allows a mean under 2).
* ``run``: whole ``xaibatch run`` commands over the photos (all five methods, --faithfulness) on cuda with
  ``--decode cpu`` and ``--decode device`` against the CPU's run: predictions, saved .npy maps and the
  faithfulness AUCs (predictions.csv). The cuda ``--decode cpu`` run is made twice (information only): how many
  of its .npy files the second run wrote other bytes into (cuDNN's backward and float atomics, e.g. LIME's mean
  fill's ``scatter_add_``, need not add in the same order twice), by method.
* ``out of memory`` (cuda only): a run over the photos whose model asks the CUDA allocator for more than the GPU
  has on any forward of more than 2 images (a real ``torch.OutOfMemoryError``): it must finish, say once that the
  batch was split, and write the maps of a ``--batch-size 2`` run on the same GPU.
* ``out of memory``, LIME (cuda only): LIME's automatic chunk meets a real out-of-memory on forwards of more than
  32 images (2 images x 64 samples): it must be halved to 32 (two refused forwards) and give the maps of
  ``lime.batch_size=32``; the memory still allocated afterwards is printed (information).
* ``device`` (cuda only): a ``--device cpu`` run on the GPU host initialises no CUDA (the warm-up's device thread
  starts only for a spec that can mean a GPU).

Component rows run with TF32 off (``torch.backends.cudnn.allow_tf32 = False``): float32 on both sides, so any
difference above float noise is a bug. The ``probs (TF32)`` row and the ``run`` rows keep torch's default (cuDNN
convolutions in TF32), as a run does: looser tolerances. Without a GPU the other device is the CPU again
(every difference should be 0: the script checks itself) and the script says the cuda rows were skipped.
cam:* and captum:* need pytorch-grad-cam and captum (on the GPU image: check.sh's /tmp/site on PYTHONPATH, as
gpu_profile.sh has it); where one is missing its rows say SKIP.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ["gradcam", "guided-gradcam", "lime", "cam:gradcam++", "captum:IntegratedGradients"]
LIBRARIES = {"cam:gradcam++": "pytorch_grad_cam", "captum:IntegratedGradients": "captum"}  # optional dependencies
OPTIONS = {"lime": {"samples": 64, "segments": 16, "seed": 0}, "captum:IntegratedGradients": {"n_steps": 8}}
LIME_RUN_OPTIONS = ["--lime-samples", "64", "--lime-segments", "16"]  # only with -m lime (else a usage error)
RUN_OPTIONS = ["--seed", "0", "--method-option", "captum:IntegratedGradients.n_steps=8"]


@dataclass
class Row:
    group: str
    name: str
    value: float  # the measured difference
    tol: float  # PASS when value <= tol; NaN: no tolerance (information only)
    unit: str
    note: str = ""
    skipped: bool = False

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.tol != self.tol:
            return "info"
        return "PASS" if self.value <= self.tol else "FAIL"


ROWS: list[Row] = []


def add(group: str, name: str, value: float, tol: float, unit: str = "", note: str = "") -> None:
    ROWS.append(Row(group, name, float(value), tol, unit, note))


def rel(a, b) -> float:
    """max |a - b| over max |b| (b the CPU's), 0 when both are all zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max() if b.size else 0.0
    d = np.abs(a - b).max() if b.size else 0.0
    return float(d / scale) if scale > 0 else float(d)


def grid_bytes(grid: str) -> np.ndarray:
    """A view's "grid" (base64, overlay.grids_batch) as its uint8 cells."""
    import base64

    return np.frombuffer(base64.b64decode(grid), np.uint8)


def levels(a, b) -> tuple[float, float]:
    """(max, mean) absolute difference of two uint8 arrays, in grey levels."""
    d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return (float(d.max()), float(d.mean())) if d.size else (0.0, 0.0)


# -- inputs ---------------------------------------------------------------------------------------------------------


def make_inputs(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """{set name: (image folder, checkpoint)}: the demo images and the photo JPEGs with their seeded models."""
    from PIL import Image

    from xaibatch.tools import synth
    from xaibatch.tools.demo import source_photos, write_demo_data

    write_demo_data(tmp / "demo", train_per_class=1, test_per_class=6, seed=0)
    photos = tmp / "photos"
    photos.mkdir()
    sizes = [(224, 224)] * 4 + [(320, 240)] * 2 + [(240, 360)] * 2  # (w, h)
    srcs = source_photos()
    for i, (w, h) in enumerate(sizes):
        _, arr = srcs[i % len(srcs)]
        im = Image.fromarray(arr).convert("RGB")
        side = min(im.size)
        im = im.crop((i * 3 % 7, i * 5 % 11, side - i % 5, side - i % 3)).resize((w, h), Image.BILINEAR)
        im.save(photos / f"photo_{i}.jpg", quality=90)
    return {
        "demo 32px": (tmp / "demo" / "test", synth.tiny_checkpoint(tmp / "tiny.pt", "test_resnet", 32, seed=0)),
        "photos 224px": (photos, synth.tiny_checkpoint(tmp / "resnet18.pt", "resnet18", 224, seed=0)),
    }


def load_batch(folder: Path, size: int, segmenter=None, jpeg_bytes: bool = False):
    """The folder as one LoadedBatch, decoded as a run's DataLoader workers decode it (here, in this process)."""
    from xaibatch.dataset import ImageDataset, collate
    from xaibatch.scan import scan

    entries = scan(folder).images
    ds = ImageDataset(entries, size, segmenter, jpeg_bytes=jpeg_bytes)
    return entries, collate([ds[i] for i in range(len(ds))])


# -- the component checks -------------------------------------------------------------------------------------------


def contexts(ckpt: Path, devices):
    """A ModelContext per device with the same weights (the checkpoint loaded once, copied to each device)."""
    from xaibatch.model.layers import find_target_layer
    from xaibatch.model.loading import load_model

    loaded = load_model(ckpt)
    out = {}
    for dev in devices:
        net = copy.deepcopy(loaded.module).to(dev).eval()
        layer = find_target_layer(net, loaded.input_size, None)
        out[dev] = _ctx(net, layer, loaded.preprocess, dev)
    return loaded, out


def _ctx(net, layer, pre, dev):
    from xaibatch.methods import ModelContext

    return ModelContext(net, layer, pre, dev)


def check_methods(set_name: str, folder: Path, ckpt: Path, ref_dev, dev) -> None:
    """Probabilities, predictions and every method's maps of the same images on ``dev`` against ``ref_dev``."""
    import torch

    from xaibatch.methods import create_method
    from xaibatch.methods.explainer import Explainer

    loaded, ctxs = contexts(ckpt, [ref_dev, dev] if dev != ref_dev else [ref_dev])
    methods = {d: [create_method(m, c, **OPTIONS.get(m, {})) for m in METHODS] for d, c in ctxs.items()}
    segmenter = next(m.segmenter() for m in methods[ref_dev] if m.segmenter() is not None)
    entries, b = load_batch(folder, loaded.input_size, segmenter)
    with torch.no_grad():
        ref_probs = torch.softmax(ctxs[ref_dev].model(ctxs[ref_dev].preprocess.normalize(b.x, ref_dev)).float(), 1)
    targets = ref_probs.argmax(1)  # both devices explain the CPU's predictions: a near-tie cannot flip a map
    got = {}
    for d, ctx in ctxs.items():
        got[d] = Explainer(methods[d], ctx, "label")(b.x, targets, b.segments).cpu()
    other = got[dev]
    ref = got[ref_dev]
    add(set_name, "probs", (other.probs - ref.probs).abs().max(), 1e-4, "abs")
    top2 = ref.probs.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    flips = int(((other.probs.argmax(1) != ref.probs.argmax(1)) & clear).sum())
    add(set_name, "pred (clear margins)", flips, 0, "images", f"{int(clear.sum())} of {len(clear)} clear")
    for name in METHODS:
        a, r = other.methods[name].maps.numpy(), ref.methods[name].maps.numpy()
        tol = 1e-3 if name in ("lime", "captum:IntegratedGradients") else 2e-3
        scale = max(float(np.abs(r).max()), 1e-12)
        mean = float(np.abs(a - r).mean()) / scale  # a FAIL with a tiny mean: one pixel of a flat map (min-max)
        add(set_name, f"maps {name}", rel(a, r), tol, "rel", f"mean {mean:.2g}; max |map| {scale:.3g}")
    if dev.type == "cuda":  # the same forward with TF32 convolutions, as a run does by default
        torch.backends.cudnn.allow_tf32 = True
        with torch.no_grad():
            p = torch.softmax(ctxs[dev].model(ctxs[dev].preprocess.normalize(b.x, dev)).float(), 1).cpu()
        torch.backends.cudnn.allow_tf32 = False
        add(set_name, "probs (TF32, a run's default)", (p - ref.probs).abs().max(), 2e-2, "abs")
    check_pictures(set_name, b, {m: ref.methods[m].maps for m in METHODS}, methods[ref_dev], ref_dev, dev)


def check_pictures(set_name: str, b, maps: dict, methods, ref_dev, dev) -> None:
    """The writer's pictures and the display thumbnails made on ``dev`` and ``ref_dev`` from the same inputs."""
    from xaibatch.pipeline.pictures import DisplayStacks, batch_pictures

    sizes = [tuple(s) for s in b.orig_size]
    signed = {m.name: m.signed for m in methods}
    worst = {"full": 0.0, "over": 0.0, "over_mean": 0.0, "thumb": 0.0, "scale": 0.0, "peak": 0.0, "grid": 0.0}
    moved, n_views = 0, 0
    for name, m in maps.items():
        made = {}
        for d in (ref_dev, dev):
            views: list = []
            stacks = DisplayStacks(b.display, sizes, d)
            made[d] = (batch_pictures(b.display, m.to(d), signed[name], sizes, 1024, views, stacks=stacks), views)
        (pr, vr), (po, vo) = made[ref_dev], made[dev]
        for (fr, orr, tr), (fo, oo, to) in zip(pr, po):
            worst["full"] = max(worst["full"], rel(fo, fr))
            mx, mean = levels(oo, orr)
            worst["over"], worst["over_mean"] = max(worst["over"], mx), max(worst["over_mean"], mean)
            if tr is not None:
                worst["thumb"] = max(worst["thumb"], levels(to, tr)[0])
        for j, (a, r) in enumerate(zip(vo, vr)):
            worst["scale"] = max(worst["scale"], abs(a["scale"] - r["scale"]) / max(abs(r["scale"]), 1e-12))
            full = pr[j][0]
            w = full.shape[1]
            at = full[a["peak"][0], a["peak"][1]] if a["peak"][1] < w else np.nan
            top = full.clip(min=0).max() if signed[name] else full.max()
            worst["peak"] = max(worst["peak"], abs(float(at) - float(top)) / max(abs(float(top)), 1e-12))
            moved += a["peak"] != r["peak"]
            n_views += 1
            worst["grid"] = max(worst["grid"], levels(grid_bytes(a["grid"]), grid_bytes(r["grid"]))[0])
    add(set_name, "pictures: full-size maps", worst["full"], 1e-4, "rel")
    add(set_name, "pictures: overlays", worst["over"], 12, "levels max", f"worst mean {worst['over_mean']:.3f}")
    add(set_name, "pictures: overlays (mean)", worst["over_mean"], 0.05, "levels mean")
    add(set_name, "pictures: overlay thumbnails", worst["thumb"], 12, "levels max")
    add(set_name, "pictures: views' scale", worst["scale"], 1e-4, "rel")
    add(set_name, "pictures: views' peak (value there)", worst["peak"], 1e-4, "rel to max")
    add(set_name, "pictures: views' peak (another pixel)", moved, float("nan"), "views", f"of {n_views}")
    add(set_name, "pictures: views' grids", worst["grid"], 1, "bytes max", "round(127 v) + 128 a cell")
    thumbs = {d: DisplayStacks(b.display, sizes, d).thumbs([True] * len(sizes)) for d in (ref_dev, dev)}
    pairs = [(a, r) for a, r in zip(thumbs[dev], thumbs[ref_dev]) if r is not None]
    worst_thumb = max((levels(a, r)[0] for a, r in pairs), default=0.0)
    add(set_name, "display thumbnails", worst_thumb, 1, "levels max", f"{len(pairs)} thumbnails")


def check_decode(set_name: str, folder: Path, size: int, ref_dev, dev) -> None:
    """--decode device on ``dev`` against the same on ``ref_dev`` and against the PIL path."""
    from xaibatch.decode import device_decode, finish_batch
    from xaibatch.errors import UsageError
    from xaibatch.pipeline.pictures import DisplayStacks

    try:
        device_decode("device", dev)
    except UsageError as e:
        add(set_name, "decode: device available", 1, 0, "", str(e)[:60])
        return
    _, pil = load_batch(folder, size)
    got = {}
    for d in (ref_dev, dev):
        _, raw = load_batch(folder, size, jpeg_bytes=True)
        assert raw.undecoded is not None and len(raw.undecoded.jpegs) == len(raw.index), "not every photo on the device"
        got[d] = finish_batch(raw, d, size)
    a, r = got[dev], got[ref_dev]
    for other, tag in ((r, f"{dev.type} vs {ref_dev.type}"), (pil, f"{dev.type} vs PIL")):
        mx, mean = levels(a.x.cpu().numpy(), other.x.cpu().numpy())
        add(set_name, f"decode: model input, {tag}", mean, 2, "levels mean", f"max {mx:.0f}")
        disp = [levels(p, q) for p, q in zip(a.display, other.display)]
        worst_mean, worst_max = max(m for _, m in disp), max(x for x, _ in disp)
        add(set_name, f"decode: display copies, {tag}", worst_mean, 2, "levels mean", f"max {worst_max:.0f}")
    sizes = [tuple(s) for s in a.orig_size]
    on = DisplayStacks(a.display, sizes, dev, a.display_on_device).thumbs([True] * len(sizes))
    host = DisplayStacks(a.display, sizes, dev).thumbs([True] * len(sizes))
    pairs = [(p, q) for p, q in zip(on, host) if q is not None]
    add(
        set_name,
        "decode: thumbnails from the device copies",
        max((levels(p, q)[0] for p, q in pairs), default=0.0),
        0,
        "levels max",
        "vs copies sent up again",
    )


# -- whole runs -----------------------------------------------------------------------------------------------------


def run_cli(folder: Path, ckpt: Path, out: Path, device: str, decode: str, methods: list[str]) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "xaibatch", "run", str(folder), "--checkpoint", str(ckpt), "--out", str(out)]
    cmd += [a for m in methods for a in ("-m", m)] + RUN_OPTIONS + (LIME_RUN_OPTIONS if "lime" in methods else [])
    cmd += ["--device", device, "--decode", decode, "--faithfulness", "--faithfulness-steps", "8", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return p.returncode == 0, (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]


def run_outputs(out: Path) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """(probabilities per image from predictions.csv, every saved .npy map by its path under --out)."""
    probs = {}
    with open(out / "predictions.csv", newline="") as f:
        for r in csv.DictReader(f):
            probs[r["path"]] = [float(v) for k, v in r.items() if k.startswith("p_")]
    maps = {str(p.relative_to(out)): np.load(p) for p in sorted(out.rglob("*.npy"))}
    return probs, maps


def run_aucs(out: Path) -> dict[tuple[str, str], float]:
    """The faithfulness AUCs of a run (predictions.csv's deletion_*/insertion_* columns), by (image, column)."""
    with open(out / "predictions.csv", newline="") as f:
        return {
            (r["path"], k): float(v)
            for r in csv.DictReader(f)
            for k, v in r.items()
            if k.startswith(("deletion_", "insertion_")) and v
        }


def npy_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.npy"))}


def check_runs(folder: Path, ckpt: Path, tmp: Path, others: list[tuple[str, str]]) -> None:
    """Whole runs (TF32 as a run has it) against a CPU run with ``--decode cpu``: each of ``others`` (device,
    decode) must finish and write the same map files; its predictions and maps are compared with the CPU's.

    A ``--decode device`` run leaves LIME out: batches that need superpixels keep the PIL path (decode.py), so
    with LIME nothing would be decoded on the device.
    """
    from xaibatch.layout import method_dir

    base = tmp / "run-ref"
    ok, why = run_cli(folder, ckpt, base, "cpu", "cpu", METHODS)
    add("run", "run cpu, --decode cpu", 0 if ok else 1, 0, "failed", "" if ok else why[:70])
    if not ok:
        return
    ref_probs, ref_maps = run_outputs(base)
    ref_aucs = run_aucs(base)
    for device, decode in others:
        methods = [m for m in METHODS if decode == "cpu" or m != "lime"]
        out = tmp / f"run-{device}-{decode}"
        ok, why = run_cli(folder, ckpt, out, device, decode, methods)
        tag = f"{device}, --decode {decode}"
        add("run", f"run {tag}", 0 if ok else 1, 0, "failed", "" if ok else why[:70])
        if not ok:
            continue
        probs, maps = run_outputs(out)
        diff = max(abs(a - b) for k in ref_probs for a, b in zip(probs.get(k, [np.inf]), ref_probs[k]))
        if decode == "device":  # other pixels (a grey level): no tolerance for what the model makes of them
            add("run", f"{tag}: probs", diff, float("nan"), "abs", "inputs decoded apart")
        else:
            add("run", f"{tag}: probs", diff, 2e-2, "abs", "TF32")
        wanted = {k for k in ref_maps if any(k.startswith(f"maps/{method_dir(m)}/") for m in methods)}
        missing = sorted(wanted ^ set(maps))
        add(
            "run",
            f"{tag}: same map files",
            len(missing),
            0,
            "files",
            missing[0][:60] if missing else f"{len(maps)} .npy",
        )
        for m in methods:
            keys = [k for k in ref_maps if k in maps and k.startswith(f"maps/{method_dir(m)}/")]
            worst = max((rel(maps[k], ref_maps[k]) for k in keys), default=float("nan"))
            add("run", f"{tag}: maps {m}", worst, float("nan"), "rel", f"{len(keys)} maps")
        aucs = run_aucs(out)
        common = [k for k in ref_aucs if k in aucs]
        worst_auc = max((abs(aucs[k] - ref_aucs[k]) for k in common), default=float("nan"))
        add("run", f"{tag}: faithfulness AUCs", worst_auc, float("nan"), "abs", f"{len(common)} of {len(ref_aucs)}")
        if device != "cpu" and decode == "cpu":
            check_rerun(folder, ckpt, out, tmp / f"run-{device}-{decode}-again", device, methods)


def check_rerun(folder: Path, ckpt: Path, first: Path, again: Path, device: str, methods: list[str]) -> None:
    """The same run on the same device once more: how many .npy files hold other bytes, by method (information:
    no tolerance yet; a GPU's backward and float atomics may add in another order)."""
    from xaibatch.layout import method_dir

    ok, why = run_cli(folder, ckpt, again, device, "cpu", methods)
    add("run", f"run {device} again", 0 if ok else 1, 0, "failed", "" if ok else why[:70])
    if not ok:
        return
    a, b = npy_bytes(first), npy_bytes(again)
    differ = [k for k in a if a[k] != b.get(k)]
    by = {m: sum(k.startswith(f"maps/{method_dir(m)}/") for k in differ) for m in methods}
    note = ", ".join(f"{m} {n}" for m, n in by.items() if n) or f"all {len(a)} byte-identical"
    add("run", f"{device} twice: .npy not byte-identical", len(differ), float("nan"), "files", note[:70])


GREEDY = """
import torch
from xaibatch.model.loading import load_model


class Greedy(torch.nn.Module):  # the checkpoint's resnet18; any forward of more than 2 images: a real CUDA OOM
    def __init__(self):
        super().__init__()
        self.net = load_model({ckpt!r}).module

    def forward(self, x):
        if x.shape[0] > 2 and x.is_cuda:
            torch.empty(1 << 46, dtype=torch.uint8, device=x.device)  # 64 TiB: more than any GPU has
        return self.net(x)


def build():
    return Greedy()
"""


def check_out_of_memory(folder: Path, ckpt: Path, tmp: Path, dev) -> None:
    """A run that runs out of the GPU's memory on every batch of more than 2 images finishes with the maps of a
    --batch-size 2 run (pipeline/compute.py, methods/explainer.Fitting)."""
    (tmp / "greedy.py").write_text(GREEDY.format(ckpt=str(ckpt)))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    outs = {}
    for bs in (8, 2):
        out = tmp / f"oom-{bs}"
        cmd = [sys.executable, "-m", "xaibatch", "run", str(folder), "--model", f"{tmp / 'greedy.py'}:build"]
        cmd += ["--classes", "a,b", "--out", str(out), "--device", str(dev), "-m", "gradcam", "-m", "guided-gradcam"]
        cmd += ["--batch-size", str(bs), "--workers", "0"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        add("out of memory", f"run --batch-size {bs}", p.returncode, 0, "exit", (p.stderr.strip()[-70:]))
        if bs == 8:
            said = p.stderr.count("did not fit")
            add("out of memory", "said once", abs(said - 1), 0, "lines", f"{said} 'did not fit' line(s)")
        outs[bs] = out
    if all((o / "predictions.csv").is_file() for o in outs.values()):
        (_, a), (_, b) = run_outputs(outs[8]), run_outputs(outs[2])
        add("out of memory", "same map files", len(set(a) ^ set(b)), 0, "files", f"{len(a)} .npy")
        worst = max((rel(a[k], b[k]) for k in a if k in b), default=float("nan"))
        add("out of memory", "maps: split 8 vs batch 2", worst, 1e-3, "rel", "TF32 as a run has it")


def check_lime_chunk_out_of_memory(folder: Path, ckpt: Path, dev) -> None:
    """LIME's automatic chunk that runs out of the device's memory is halved (methods/lime.forward_masks): the
    checkpoint's model asks the CUDA allocator for more than the GPU has on any forward of more than 32 images (a
    real torch.OutOfMemoryError; elsewhere it raises one), so 2 images x 64 samples go 128 -> 64 -> 32; the maps
    must be those of ``lime.batch_size=32``, and the memory the failed chunks held given back."""
    import torch

    from xaibatch.methods import ModelContext, create_method
    from xaibatch.methods.explainer import Explainer
    from xaibatch.model.loading import load_model

    class Tight(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.refused = net, []

        def forward(self, x):
            if x.shape[0] > 32:
                self.refused.append(x.shape[0])
                if x.is_cuda:
                    torch.empty(1 << 46, dtype=torch.uint8, device=x.device)  # 64 TiB: more than any GPU has
                raise torch.cuda.OutOfMemoryError("stand-in: no GPU")
            return self.net(x)

    loaded = load_model(ckpt)
    _, b = load_batch(folder, loaded.input_size)
    x = b.x[:2]
    got, refused = {}, {}
    for given in ("auto", 32):
        net = Tight(copy.deepcopy(loaded.module).to(dev).eval())
        ctx = ModelContext(net, None, loaded.preprocess, dev)
        lime = create_method("lime", ctx, samples=64, segments=16, seed=0, batch_size=given)
        got[given] = Explainer([lime], ctx)(x, None, None).methods["lime"].maps.cpu().numpy()
        refused[given] = net.refused
    held = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0
    add("out of memory", "LIME chunk: refused forwards", abs(len(refused["auto"]) - 2), 0, "", str(refused["auto"]))
    add("out of memory", "LIME chunk: maps vs batch_size=32", rel(got["auto"], got[32]), 1e-3, "rel")
    add("out of memory", "LIME chunk: memory held after", held, float("nan"), "MiB", "torch.cuda.memory_allocated")


def check_cpu_run_leaves_cuda_alone(folder: Path, ckpt: Path, tmp: Path) -> None:
    """``--device cpu`` on a GPU host: the warm-up starts no device, nothing initialises CUDA."""
    probe = (
        "import sys, torch; from pathlib import Path; from xaibatch.pipeline import RunOptions, run; "
        f"run(RunOptions(input_dir=Path({str(folder)!r}), out_dir=Path({str(tmp / 'cpu-run')!r}), "
        f"checkpoint=Path({str(ckpt)!r}), methods=['gradcam'], device='cpu', workers=0, handle_signals=False), "
        "log=lambda s: None); "
        "print(int(torch.cuda.is_initialized()))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    got = p.stdout.strip().splitlines()[-1:] or ["?"]
    add("device", "--device cpu initialises no CUDA", 0 if got == ["0"] else 1, 0, "", p.stderr.strip()[-70:])


# -- the table ------------------------------------------------------------------------------------------------------


def print_table(skipped_cuda: bool) -> int:
    w = max(len(r.name) for r in ROWS)
    print(f"{'set':<14} {'check':<{w}} {'difference':>11} {'tolerance':>10} {'unit':<12} verdict  note")
    for r in ROWS:
        tol = "-" if r.tol != r.tol else f"{r.tol:.3g}"
        print(f"{r.group:<14} {r.name:<{w}} {r.value:>11.3g} {tol:>10} {r.unit:<12} {r.verdict:<8} {r.note}")
    fails = [r for r in ROWS if r.verdict == "FAIL"]
    if skipped_cuda:
        print("cuda rows skipped: no CUDA device here; every row above compares the CPU with the CPU")
    print(
        f"gpu_equivalence: {len(ROWS)} rows, {len(fails)} FAIL"
        + (": " + ", ".join(r.name for r in fails) if fails else "")
    )
    return 1 if fails else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (default cuda)")
    ap.add_argument("--keep", type=Path, help="keep the images, checkpoints and runs here")
    ap.add_argument("--no-runs", action="store_true", help="skip the whole-run rows")
    args = ap.parse_args(argv)
    import torch

    t0 = time.perf_counter()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = torch.device("cpu")
    skipped = args.device.startswith("cuda") and not torch.cuda.is_available()
    dev = ref if skipped else torch.device(args.device)
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    for method, module in LIBRARIES.items():  # check.sh installs them into /tmp/site; alone they may be missing
        if importlib.util.find_spec(module) is None:
            METHODS.remove(method)
            ROWS.append(Row("all", f"maps {method}", 0, 0, "", f"{module} is not installed", skipped=True))
    tmp = Path(tempfile.mkdtemp(prefix="xb-gpueq-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    stages: list[str] = []

    def stage(group: str, what: str, fn, *a) -> None:
        """One check; an exception is a FAIL row (with its one line), not the end of the table."""
        t = time.perf_counter()
        try:
            fn(*a)
        except Exception as e:  # noqa: BLE001  (the point: every other row still runs)
            traceback.print_exc()
            add(
                group,
                f"{what} raised",
                1,
                0,
                "",
                f"{type(e).__name__}: {str(e).splitlines()[0][:70] if str(e) else ''}",
            )
        stages.append(f"{group} {what} {time.perf_counter() - t:.1f} s")

    try:
        sets = make_inputs(tmp)
        for name, (folder, ckpt) in sets.items():
            stage(name, "methods", check_methods, name, folder, ckpt, ref, dev)
        photos, resnet = sets["photos 224px"]
        stage("photos 224px", "decode", check_decode, "photos 224px", photos, 224, ref, dev)
        if not args.no_runs:
            others = [("cpu", "device")] if dev.type == "cpu" else [(str(dev), "cpu"), (str(dev), "device")]
            stage("run", "runs", check_runs, photos, resnet, tmp, others)
        if dev.type == "cuda":
            stage("out of memory", "split", check_out_of_memory, photos, resnet, tmp, dev)
            stage("device", "cpu run", check_cpu_run_leaves_cuda_alone, photos, resnet, tmp)
            demo, tiny = sets["demo 32px"]
            stage("out of memory", "lime chunk", check_lime_chunk_out_of_memory, demo, tiny, dev)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    code = print_table(skipped)
    desc = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU"
    print(f"device: {desc}; torch {torch.__version__}; {time.perf_counter() - t0:.1f} s ({'; '.join(stages)})")
    return code


if __name__ == "__main__":
    sys.exit(main())
