"""Where one LIME batch's time goes, phase by phase, on the CPU or a GPU (docs/benchmarks.md, "LIME's phases").

    python benchmarks/lime_phases.py                                   # the bundled model, 32 px, batch 64
    python benchmarks/lime_phases.py --arch resnet18 --size 64 --batch-size 64 --device cuda
    python benchmarks/lime_phases.py --arch null --size 64              # a model that costs nothing
    python benchmarks/lime_phases.py --unfolded                         # BatchNorm not folded (model/fold.py)

Runs xaibatch's own LIME (``methods/lime.py``) on synthetic images, the phases of ``Lime.explain`` one after the
other with the device synchronized around each: the segmentation (in a run: the DataLoader workers, per image),
the mask draw, the kernel weights, the fill, the perturbed images' assembly, the model's forwards (timed by
hooks on the top-level module, synchronized), the ridge fit and the coefficients' noise. One warm-up batch, then
``--rounds`` timed ones; prints each phase's median seconds a batch, its share of ``explain`` and images per
second. The maps are the method's own (the phases are its methods, called as ``explain`` calls them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from xaibatch.methods.base import Batch, ModelContext
from xaibatch.methods.lime import Lime
from xaibatch.methods.lime_fit import coefficient_noise, cosine_distances_to_ones, kernel_weights, weighted_ridge
from xaibatch.model.fold import folded_count
from xaibatch.model.layers import find_target_layer
from xaibatch.preprocess import Preprocess
from xaibatch.tools import synth
from xaibatch.tools.bench.timing import ModelTimer


class Null(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build(arch: str, size: int, device: torch.device) -> tuple[nn.Module, Preprocess]:
    if arch == "bundled":
        from xaibatch.model.loading import load_model
        from xaibatch.resources import default_checkpoint

        loaded = load_model(default_checkpoint())
        return loaded.module.to(device).eval(), loaded.preprocess
    if arch == "null":
        torch.manual_seed(0)
        return Null().to(device).eval(), Preprocess(size)
    from xaibatch.imports import import_timm

    torch.manual_seed(0)
    model = import_timm().create_model(arch, pretrained=False, num_classes=2)
    return model.to(device).eval(), Preprocess(size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="bundled", help="bundled, null or a timm name (random weights)")
    ap.add_argument("--size", type=int, default=32, help="input size (the bundled model's own is used for it)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (a trial)")
    ap.add_argument("--channels-last", action="store_true", help="model and input channels-last (a trial)")
    ap.add_argument(
        "--unfolded", action="store_true", help="LIME's forwards through the model as it is, BatchNorm kept"
    )
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    model, pre = build(a.arch, a.size, dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = pre.image_size
    ctx = ModelContext(model, find_target_layer(model, size), pre, dev)
    if a.unfolded:
        ctx.forward_model = lambda: model  # type: ignore[method-assign]
    folded = folded_count(model, ctx.forward_model())
    lime = Lime(ctx, samples=a.samples)
    seg = lime.segmenter()
    images = synth.patches(a.batch_size, size, 0)
    x = pre.normalize(torch.from_numpy(images).permute(0, 3, 1, 2)).to(dev)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        targets = model(x).argmax(1)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times: dict[str, list[float]] = defaultdict(list)
    for r in range(a.rounds + 1):
        spent: dict[str, float] = {}

        def timed(name, fn, *args):
            sync()
            t = time.perf_counter()
            out = fn(*args)
            sync()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
            return out

        t0 = time.perf_counter()
        segments = timed("segmentation (workers, per image)", lambda: [seg(im) for im in images])
        batch = Batch(x, targets, None, None, torch.from_numpy(np.stack(segments)).long(), list(range(len(images))))
        t1 = time.perf_counter()
        labels, counts, masks = timed("masks (relabel, draw)", lime.sample, batch)
        counts = counts.to(dev)
        weights = timed("kernel weights", lambda: kernel_weights(cosine_distances_to_ones(masks, counts)))
        fill = timed("fill", lime.fill_for, batch, labels, masks.shape[2])
        with ModelTimer(type(model), sync) as timer:
            probs = timed(
                "forward_masks",
                lime.forward_masks,
                batch,
                labels,
                fill,
                masks,
                list(range(len(images))),
                0,
                masks.shape[1],
            )
        spent["  of it: the model's forwards"] = timer.seconds
        spent["  of it: assembly, softmax, progress"] = spent["forward_masks"] - timer.seconds
        coef, intercept, _ = timed("ridge fit", weighted_ridge, masks, probs, weights)
        timed("coefficient noise", coefficient_noise, masks, probs, weights, coef, intercept, counts)
        timed("maps", lambda: torch.gather(coef, 1, labels).view(len(images), size, size).float())
        sync()
        spent["explain (all but segmentation)"] = time.perf_counter() - t1
        spent["total"] = time.perf_counter() - t0
        if r:  # round 0 warms up (chunk probe, kernels, lazy imports)
            for k, v in spent.items():
                times[k].append(v)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"LIME phases: {a.arch} @ {size} px, batch {a.batch_size}, {a.samples} samples, {dev_name}, "
        f"chunk {lime.chunk_size(x)}, median of {a.rounds} rounds"
        + (", cudnn.benchmark" if a.cudnn_benchmark else "")
        + (", channels-last" if a.channels_last else "")
        + (", BatchNorm unfolded" if a.unfolded else f", {folded} BatchNorm folded")
    )
    explain = statistics.median(times["explain (all but segmentation)"])
    for k, v in times.items():
        m = statistics.median(v)
        share = f"{100 * m / explain:5.1f} %" if k not in ("total", "segmentation (workers, per image)") else ""
        print(f"  {k:40s} {m:8.4f} s  {share:>8s}  {a.batch_size / m:10.1f} img/s")


if __name__ == "__main__":
    main()
