"""What does re-running an unchanged folder cost, compared with the first run?

Generates N small PNGs (default 20000, 32x32) and a tiny random timm model,
runs ``xaibatch run`` (Grad-CAM, batch 64) into a fresh --out, then again with
nothing changed, each as a real CLI process (start-up included), and prints
wall-clock seconds, the ratio, and the per-phase timings from ``--log-json``
(prepare = imports excluded: model load + scan; plan = manifest + stat
comparison; compute; report = HTML + CSV).

    python benchmarks/rerun_cost.py                 # 20000 images
    python benchmarks/rerun_cost.py -n 2000 --keep /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xaibatch.tools import synth  # noqa: E402


def run_cli(inp: Path, out: Path, ckpt: Path, batch: int, workers: int) -> tuple[float, dict]:
    cmd = [
        sys.executable,
        "-c",
        "from xaibatch.cli import main; main()",
        "run",
        str(inp),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--batch-size",
        str(batch),
        "--workers",
        str(workers),
        "--log-json",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"run failed ({r.returncode}): {r.stderr}")
    end = json.loads(r.stdout.strip().splitlines()[-1])
    return wall, end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20000, help="images (default 20000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reruns", type=int, default=2, help="unchanged re-runs to time (best is reported)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="xaibatch-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    inp, out, ckpt = root / "images", root / "out", root / "tiny.pt"
    try:
        if not inp.is_dir() or len(list(inp.iterdir())) != args.n:
            shutil.rmtree(inp, ignore_errors=True)
            t = time.perf_counter()
            synth.write_images(inp, args.n, digits=6, compress_level=1)  # 32 px noise
            print(f"generated {args.n} PNGs in {time.perf_counter() - t:.1f}s", flush=True)
        if not ckpt.exists():
            synth.tiny_checkpoint(ckpt)
        shutil.rmtree(out, ignore_errors=True)

        first, e1 = run_cli(inp, out, ckpt, args.batch_size, args.workers)
        print(f"first run:     {first:8.1f}s wall  computed {e1['computed']}  phases {e1['timings']}", flush=True)
        best = None
        for _ in range(args.reruns):
            again, e2 = run_cli(inp, out, ckpt, args.batch_size, args.workers)
            assert e2["computed"] == 0 and e2["skipped"] == args.n, e2
            print(f"unchanged run: {again:8.1f}s wall  skipped {e2['skipped']}  phases {e2['timings']}", flush=True)
            if best is None or again < best[0]:
                best = (again, e2)
        again, e2 = best
        ph = e2["timings"]
        in_run = sum(ph.values())
        startup = again - in_run
        print(
            f"\n{args.n} images: first {first:.1f}s, unchanged re-run {again:.1f}s "
            f"({100 * again / first:.1f}% of the first run, {first / again:.0f}x cheaper)"
        )
        print(
            f"re-run breakdown: process start-up/imports {startup:.1f}s, prepare {ph['prepare']:.2f}s, "
            f"plan {ph['plan']:.2f}s, compute {ph['compute']:.2f}s, report {ph['report']:.2f}s"
        )
        top = max(ph, key=ph.get)
        if top == "report" and ph["report"] > 0.5 * in_run:
            print("note: rendering the report dominates the unchanged re-run")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
