"""Peak memory and time per batch of the gradient CAM methods, per checkout: what the shared forward costs.

    python benchmarks/cam_memory.py --tree before=/path/to/main --tree after=.

Each configuration (a timm model with random weights, ``pretrained=False``; a method set) runs in a fresh
process per tree, with that tree first on ``PYTHONPATH``: the Explainer (methods/explainer.py, the one place
a batch is explained) on ``--batches`` batches of ``--batch-size`` random uint8 images at ``--size`` px. On the
CPU the peak is the process's peak RSS (``resource.getrusage``, so it includes the model, torch and the
input); "before" is the RSS just before the first batch, so the difference is what explaining adds. On CUDA
(``--device cuda``) the peak is ``torch.cuda.max_memory_allocated``. Time per batch: the median over the
batches after the first, with the process's user and system CPU seconds (the system time is mostly page
faults: glibc gives large freed blocks back to the system and the next batch faults them in again). With
``--rounds`` above 1 the trees take turns, round after round, and each row shows its tree's lowest peak and
times (on a shared machine the times are the noisy part: compare them only within one table). The maps of
each configuration are compared across the trees (max |difference|).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = [
    (arch, methods)
    for arch in ("resnet50", "efficientnet_b0")
    for methods in ("gradcam", "guided-gradcam", "gradcam,cam:gradcam++")
]


def child(args: argparse.Namespace) -> None:
    import resource
    import statistics
    import time

    import numpy as np
    import timm
    import torch

    import xaibatch
    from xaibatch.methods import ModelContext, create_method
    from xaibatch.methods.explainer import Explainer
    from xaibatch.model.layers import find_target_layer
    from xaibatch.preprocess import Preprocess

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False).eval().to(dev)
    layer = find_target_layer(model, args.size)
    ctx = ModelContext(model, layer, Preprocess(args.size), dev)
    methods = [create_method(n, ctx) for n in args.methods.split(",")]
    ex = Explainer(methods, ctx)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8, generator=g)

    def rss_now() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() / 2**30
    else:
        start = rss_now()
    times, user, system = [], [], []
    for _ in range(args.batches):
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = ex(x, None, None)
        if cuda:
            torch.cuda.synchronize()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        times.append(time.perf_counter() - t)
        user.append(r1.ru_utime - r0.ru_utime)
        system.append(r1.ru_stime - r0.ru_stime)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    np.savez(args.save, **{k: v.maps.cpu().numpy() for k, v in out.methods.items()})
    skip = 1 if args.batches > 1 else 0
    print(
        json.dumps(
            {
                "xaibatch": str(Path(xaibatch.__file__).parent.parent),
                "device": torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads",
                "layer": layer.name,
                "start_gb": start,
                "peak_gb": peak,
                "s_per_batch": statistics.median(times[skip:]),
                "user_s": statistics.median(user[skip:]),
                "sys_s": statistics.median(system[skip:]),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", help="NAME=PATH of a checkout (repeatable; default: this one)")
    ap.add_argument("--config", action="append", help="ARCH:METHOD[,METHOD] (repeatable; default: six)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=2, help="the first one is not timed unless it is the only one")
    ap.add_argument("--rounds", type=int, default=1, help="runs per tree and configuration, taking turns")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=2, metavar=("ARCH", "METHODS"), help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.arch, args.methods = args.child
        child(args)
        return
    import numpy as np

    here = Path(__file__).resolve().parent.parent
    trees = dict(t.split("=", 1) for t in (args.tree or [f"this={here}"]))
    configs = [tuple(c.split(":", 1)) for c in args.config] if args.config else CONFIGS
    print(f"{args.batch_size} images of {args.size} px per batch, device {args.device}\n")
    print(
        "| model | methods | tree | layer | before GB | peak GB | added GB | s/batch | user s | sys s | max map diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch, methods in configs:
            got: dict[str, dict] = {}
            for _ in range(args.rounds):
                for name, path in trees.items():
                    save = Path(tmp) / f"{arch}-{methods}-{name}.npz"
                    env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
                    argv = [sys.executable, __file__, "--child", arch, methods, "--save", str(save)]
                    argv += ["--size", str(args.size), "--batch-size", str(args.batch_size)]
                    argv += ["--batches", str(args.batches), "--device", args.device]
                    r = subprocess.run(argv, env=env, capture_output=True, text=True)
                    if r.returncode != 0:
                        got[name] = {"failed": r.stderr.strip().splitlines()[-1:]}
                        continue
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                    best = got.get(name, res)
                    for k in ("start_gb", "peak_gb", "s_per_batch", "user_s", "sys_s"):
                        res[k] = min(res[k], best[k])
                    got[name] = res
            first = None
            for name, res in got.items():
                if "failed" in res:
                    print(f"| {arch} | {methods} | {name} | failed: {res['failed']} |")
                    continue
                save = Path(tmp) / f"{arch}-{methods}-{name}.npz"
                diff = "-"
                if first is None:
                    first = save
                else:
                    a, b = np.load(first), np.load(save)
                    diff = f"{max(float(np.abs(a[k] - b[k]).max()) for k in a.files):.1e}"
                print(
                    f"| {arch} | {methods} | {name} | {res['layer']} | {res['start_gb']:.2f} | {res['peak_gb']:.2f} "
                    f"| {res['peak_gb'] - res['start_gb']:.2f} | {res['s_per_batch']:.2f} | {res['user_s']:.2f} "
                    f"| {res['sys_s']:.2f} | {diff} |",
                    flush=True,
                )
    print(f"\n{res.get('device', 'no configuration ran')}; torch from {sys.executable}")


if __name__ == "__main__":
    main()
