"""``xaibatch bench --memory``: peak memory of runs over generated folders of two sizes, each in a fresh process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .format import md, plain
from .inputs import work_folder, subset, write_images


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


def memory_check(
    counts: tuple[int, ...] = (2000, 20000),
    size: int = 32,
    arch: str = "test_resnet",
    methods: tuple[str, ...] = ("gradcam",),
    batch_size: int = 64,
    workers: int | None = None,
    work_dir: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """Peak RSS of one ``pipeline.run`` per folder size, each in a fresh process.

    Each child reports its VmHWM (the whole run and up to the report render) and
    the largest RSS of its DataLoader workers.
    """
    from ...defaults import default_workers
    from .. import synth

    workers = default_workers() if workers is None else workers
    root = work_folder(work_dir, "xaibatch-mem-")
    try:
        ckpt = synth.tiny_checkpoint(root / "model.pt", arch, size)
        log(f"memory: generating {max(counts)} {size}x{size} PNGs")
        _, paths = write_images(root / "all", max(counts), size)
        results = []
        for k in counts:
            folder = subset(paths[:k], root / f"first-{k}")
            out = root / f"out-{k}"
            shutil.rmtree(out, ignore_errors=True)
            log(f"memory: run over {k} images")
            args = [str(folder), str(out), str(ckpt), ",".join(methods), str(batch_size), str(workers)]
            results.append({"images": k, **_child_run(args, f"memory run over {k} images")})
            shutil.rmtree(out, ignore_errors=True)
        return results
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)


def _child_run(args: list[str], what: str) -> dict[str, Any]:
    """Run _MEMORY_CHILD in a fresh Python over ``args`` (this xaibatch first on its path); what it printed last."""
    import json
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def format_memory(results: list[dict[str, Any]], markdown: bool = False) -> str:
    cols = (
        "images",
        "seconds",
        "compute img/s",
        "peak RSS to end of compute (MiB)",
        "peak RSS whole run (MiB)",
        "DataLoader worker peak (MiB)",
    )
    table = [
        (
            str(r["images"]),
            f"{r['seconds']:.1f}",
            f"{r['images'] / r['timings']['compute']:.0f}",
            str(r["peak_before_report_mib"]),
            str(r["peak_mib"]),
            str(r["workers_peak_mib"]),
        )
        for r in results
    ]
    lines = md(cols, table, right=range(6)) if markdown else plain(cols, table, right=range(6))
    if len(results) >= 2:
        a, b = results[0], results[-1]
        lines += [
            "",
            f"peak RSS {b['images']} vs {a['images']} images: "
            f"{b['peak_before_report_mib'] / a['peak_before_report_mib']:.2f}x to the end of compute, "
            f"{b['peak_mib'] / a['peak_mib']:.2f}x for the whole run (target <= 1.1x)",
        ]
    return "\n".join(lines)
