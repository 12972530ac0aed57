"""What a run costs the host when the model costs nothing: a `xaibatch run` with a model whose forward and backward
are nearly free, timed from the process's start to its exit (docs/benchmarks.md, "The host alone: a model that costs nothing").

    python benchmarks/host_path.py INPUT_DIR --out /dev/shm/xb-host [--batch-size 512 --workers 1 --writers 1]
    python benchmarks/host_path.py INPUT_DIR --out /dev/shm/xb-host --tree /tmp/base   # another checkout's code
    python benchmarks/host_path.py PHOTOS --out /dev/shm/xb-host --image-size 224 --decode device   # 224 px

Prints the wall time, the start-up before the JSON ``start`` event, the run's phase timings (``--log-json``), the
time from the ``end`` event to the process's exit and the CPU time of the run with its processes (loader workers,
writer processes, the report's forks). The rest of the command line goes to ``xaibatch run``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NULL_MODEL = """
import torch
from torch import nn

SIZE = {size}


class Null(nn.Module):
    def __init__(self):
        super().__init__()
        # The CAM layer: 8x8 at 32 px, 7x7 at 224 px (a resnet's last stage)
        self.features = nn.Sequential(nn.AvgPool2d(max(1, SIZE // 7)), nn.Conv2d(3, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build():
    torch.manual_seed(0)
    m = Null()
    m.pretrained_cfg = {{"input_size": (3, SIZE, SIZE), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}}
    return m
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="deleted first")
    ap.add_argument(
        "--tree",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the checkout whose xaibatch runs (default: this one); the run starts there, as `python -m` puts the "
        "current folder first on sys.path",
    )
    ap.add_argument("--image-size", type=int, default=32, help="the null model's input size (default 32)")
    args, rest = ap.parse_known_args()
    shutil.rmtree(args.out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "null_model.py"
        model.write_text(NULL_MODEL.format(size=args.image_size))
        inp, out = args.input_dir.resolve(), args.out.resolve()
        cmd = [sys.executable, "-m", "xaibatch", "run", str(inp), "--model", f"{model}:build"]
        cmd += ["--target-layer", "features", "-m", "gradcam", "--out", str(out), "--log-json", *rest]
        t0 = time.time()
        env = {**os.environ, "PYTHONPATH": str(args.tree)}
        r = subprocess.run(cmd, cwd=args.tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        t1 = time.time()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    start = next(e for e in events if e["event"] == "start")
    end = next(e for e in events if e["event"] == "end")

    def at(e: dict) -> float:
        return datetime.datetime.fromisoformat(e["time"]).timestamp()

    print(
        f"exit {r.returncode}  wall {t1 - t0:.2f} s  launch->start {at(start) - t0:.2f}  run {end['seconds']:.2f}  "
        f"end->exit {t1 - at(end):.2f}  cpu {cpu.ru_utime:.2f} user + {cpu.ru_stime:.2f} sys\n  timings {end['timings']}"
    )


if __name__ == "__main__":
    main()
