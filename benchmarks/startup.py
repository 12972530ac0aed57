"""Start-up of one or more xaibatch trees, interleaved: error answers, and a first Grad-CAM run's timings.

    python benchmarks/startup.py --tree before=/tmp/base --tree after=. --rounds 3

Per round and tree: three mistakes that must answer with one line and exit code 2 (a missing folder, an empty
folder, a missing checkpoint), ``import torch`` alone in its own process, torch and timm as the run's warm-up
imports them (``xaibatch.imports.import_timm``), and a first ``xaibatch run -m gradcam --log-json`` over 64 demo
images into a new folder. Prints a Markdown table of medians (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a checkout (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    work = args.work or Path(tempfile.mkdtemp(prefix="xaibatch-startup-"))
    res: dict[str, dict[str, list[float]]] = {k: {} for k in trees}

    def cmd(tree: str, argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
        env = {**os.environ, "PYTHONPATH": str(Path(trees[tree]).resolve())}
        t = time.perf_counter()
        r = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, cwd=work)
        return time.perf_counter() - t, r

    first = next(iter(trees))
    (work / "empty").mkdir(parents=True, exist_ok=True)
    if not (work / "demo").is_dir():
        _, r = cmd(
            first,
            ["-m", "xaibatch", "demo-data", str(work / "demo"), "--train-per-class", "1", "--test-per-class", "32"],
        )
        assert r.returncode == 0, r.stderr
    mistakes = {
        "missing folder": ["run", str(work / "nope")],
        "empty folder": ["run", str(work / "empty")],
        "missing checkpoint": ["run", str(work / "demo" / "test"), "--checkpoint", str(work / "none.pt")],
    }
    for i in range(args.rounds):
        for tree in trees:
            add = lambda key, v: res[tree].setdefault(key, []).append(v)  # noqa: E731
            for key, argv in mistakes.items():
                s, r = cmd(tree, ["-m", "xaibatch", *argv, "--out", str(work / "o-x")])
                assert r.returncode == 2 and r.stderr.count("\n") == 1, (key, r.stderr)
                add(key, s)
            _, r = cmd(tree, ["-c", "import time; t=time.perf_counter(); import torch; print(time.perf_counter()-t)"])
            add("import torch", float(r.stdout))
            _, r = cmd(
                tree,
                [
                    "-c",
                    "import time; t=time.perf_counter(); import torch; from xaibatch import imports; "
                    "getattr(imports, 'defer_hub', lambda: None)(); imports.import_timm(); "  # as `xaibatch run`
                    "print(time.perf_counter()-t)",
                ],
            )
            add("import torch, timm (the warm-up's)", float(r.stdout))
            shutil.rmtree(work / "o-run", ignore_errors=True)
            s, r = cmd(
                tree,
                [
                    "-m",
                    "xaibatch",
                    "run",
                    str(work / "demo" / "test"),
                    "-m",
                    "gradcam",
                    "--out",
                    str(work / "o-run"),
                    "--log-json",
                ],
            )
            end = json.loads(r.stdout.strip().splitlines()[-1])
            add("run wall", s)
            for k, v in end["timings"].items():
                add(k, v)
            add("prepare - import torch", end["timings"]["prepare"] - res[tree]["import torch"][-1])
        print(f"round {i + 1} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    keys = list(dict.fromkeys(k for t in res.values() for k in t))
    print(f"| measure (median of {args.rounds}, seconds) | " + " | ".join(trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for k in keys:
        cells = [f"{statistics.median(res[t][k]):.2f}" if k in res[t] else "" for t in trees]
        print(f"| {k} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
