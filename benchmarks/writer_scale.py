"""How the writer scales with its processes: the writer alone (maps already in memory, pictures made as a run
makes them) with 1, 2, ... writer processes, the writer thread alone (``--writers 0``), and the file-system
floor (the same number of atomic files per image, no encoding, one thread).

    python benchmarks/writer_scale.py                         # 4,096 images at 32 px and 64 px, writers 0,1,2
    python benchmarks/writer_scale.py --size 224 --images 512 --writers 1,2,4,8

Rounds interleave the configurations and each keeps its fastest, so a burst of load from other processes
does not land on one of them only. Prints img/s per configuration, writers=2 / writers=1, and every
configuration against the floor; also the CPU seconds (user/system, the writer processes included), which
show where the time goes on a loaded machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaibatch.pipeline.pictures import DisplayStacks, batch_pictures  # noqa: E402
from xaibatch.tools.bench.parts import files_per_image, floor_files, write_batches  # noqa: E402
from xaibatch.tools import synth  # noqa: E402


def pictures(size: int, batch: int):
    import torch

    display = [synth.smooth(i, size) for i in range(batch)]  # compresses as photos do (pure noise would not)
    maps = torch.rand(batch, 7, 7, generator=torch.Generator().manual_seed(0))
    sizes = [(size, size)] * batch
    thumbs = DisplayStacks(display, sizes, torch.device("cpu")).thumbs([True] * batch)
    return display, batch_pictures(display, maps, False, sizes), thumbs


def cpu() -> tuple[float, float]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + c.ru_utime, s.ru_stime + c.ru_stime


def measure(size: int, n: int, batch: int, writers: list[int], rounds: int, root: Path) -> dict:
    pics = pictures(size, batch)
    configs = [("floor", None)] + [(f"writers={k}", k) for k in writers]
    best: dict[str, tuple[float, float, float]] = {}
    for r in range(rounds + 1):  # round 0 warms up (page cache, first fork)
        for name, k in configs:
            out = root / f"{size}-{name}-{r}"
            out.mkdir(parents=True)
            u0, s0 = cpu()
            t0 = time.perf_counter()
            if k is None:
                floor_files(out, n if r else min(n, batch), size)
            else:
                write_batches(out, n if r else min(n, batch), size, batch, pics, k)
            dt = time.perf_counter() - t0
            u1, s1 = cpu()
            shutil.rmtree(out, ignore_errors=True)
            if r and (name not in best or dt < best[name][0]):
                best[name] = (dt, u1 - u0, s1 - s0)
    return {name: (n / dt, u, s) for name, (dt, u, s) in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="32,64", help="picture sides in px, comma-separated")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--writers", default="0,1,2", help="writer process counts, comma-separated (0: the thread)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="scratch folder (default: a temporary one, deleted)")
    a = ap.parse_args()
    writers = [int(k) for k in a.writers.split(",")]
    root = a.out or Path(tempfile.mkdtemp(prefix="xaibatch-writer-"))
    print(
        f"writer alone: {a.images} images, batch {a.batch}, best of {a.rounds} interleaved rounds; "
        f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    try:
        for size in (int(s) for s in a.size.split(",")):
            res = measure(size, a.images, a.batch, writers, a.rounds, root / "runs")
            floor = res["floor"][0]
            per = files_per_image(size)
            print(f"\n{size} px ({per} atomic files per image)")
            print(f"  {'configuration':<34}{'img/s':>9}{'/ floor':>9}{'CPU user s':>12}{'CPU sys s':>11}")
            for name, (rate, u, s) in res.items():
                label = f"file-system floor ({per} files/img)" if name == "floor" else f"writer alone, {name}"
                print(f"  {label:<34}{rate:>9.0f}{rate / floor:>8.2f}x{u:>12.2f}{s:>11.2f}")
            if "writers=1" in res and "writers=2" in res:
                print(f"  writers=2 / writers=1: {res['writers=2'][0] / res['writers=1'][0]:.2f}x")
        print(f"\nload at end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if a.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
