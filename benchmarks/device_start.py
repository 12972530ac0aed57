"""Does starting the GPU beside the imports (pipeline/warmup.py) bring the first batch sooner? (docs/benchmarks.md)

    python benchmarks/device_start.py INPUT_DIR [--rounds 3] [-- more xaibatch run options]

Runs ``xaibatch run INPUT_DIR -m gradcam --log-json`` into a fresh folder, each round twice in fresh processes,
taking turns: as shipped, and with the device thread switched off (``warmup.start_device`` returning None, so
the model's first use creates the CUDA context and loads cuDNN, as before). Prints the ``end`` event's
``first_batch``, ``import``, ``model`` and the wall time of each, and the medians. On a machine without a GPU both
are the same path.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OFF = "import xaibatch.pipeline.warmup as w; w.start_device = lambda spec: None; "
RUN = "import sys; from xaibatch.cli import main; sys.argv = ['xaibatch'] + sys.argv[1:]; main()"


def one(code: str, args: list[str]) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="xb-devstart-"))
    shutil.rmtree(out)
    t = time.perf_counter()
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            code + RUN,
            "run",
            *args[:1],
            "-m",
            "gradcam",
            "--out",
            str(out),
            "--log-json",
            *args[1:],
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    end = [json.loads(line) for line in p.stdout.splitlines() if '"event": "end"' in line]
    if p.returncode or not end:
        raise SystemExit(f"run failed ({p.returncode}): {p.stderr[-2000:]}")
    t = end[0]["timings"]
    return {"wall": wall, "first_batch": t.get("first_batch", float("nan")), "import": t["import"], "model": t["model"]}


def main() -> None:
    args = sys.argv[1:]
    rounds = 3
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i : i + 2]
    if args and args[0] == "--":
        args = args[1:]
    if "--" in args:
        args.remove("--")
    got: dict[str, list[dict[str, float]]] = {"as shipped": [], "device thread off": []}
    for r in range(rounds):
        for name, code in (("as shipped", ""), ("device thread off", OFF)):
            row = one(code, args)
            got[name].append(row)
            print(f"round {r + 1} {name:18s} " + "  ".join(f"{k} {v:6.2f}" for k, v in row.items()), flush=True)
    for name, rows in got.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"median {name:18s} " + "  ".join(f"{k} {v:6.2f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
