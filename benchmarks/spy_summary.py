"""Where a run's CPU time went, per process role and thread, from a py-spy recording of it.

    py-spy record -s -r 200 -f raw -o /tmp/run.spy -- python -m xaibatch run INPUT --out OUT --log-json
    python benchmarks/spy_summary.py /tmp/run.spy --rate 200 [--top 12]

cProfile sees the main thread only; a run's time is also spent in the import thread, the writer thread, the
DataLoader's workers, the writer processes and the report's forks. py-spy samples them all (``-s``: the
processes the run forks too; by default only samples where a thread is running, not idle). Each sample's stack
says which process and thread it came from; this prints, for each role (the run's main process by thread, the
DataLoader workers, the writer processes, the report's forks), its seconds of samples and the functions of
xaibatch (else the innermost frame) that took them: "self" where the sample's innermost xaibatch frame is,
"incl" where any frame of the stack is.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

ROLES = (  # a forked process's role, from a frame in its stacks
    ("loader worker", "_worker_loop"),
    ("writer process", "writer_pool.py"),
    ("report fork", "report/forked.py"),
)
_PROCESS = re.compile(r"^process (\d+):")


def role_of(frames: list[str]) -> str:
    for name, mark in ROLES:
        if any(mark in f for f in frames):
            return name
    return "other process"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, help="py-spy record -f raw output")
    ap.add_argument("--rate", type=float, default=100, help="the -r given to py-spy (samples a second)")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()

    stacks: list[tuple[int, str, list[str], int]] = []  # (pid, thread, frames, samples)
    for line in args.raw.read_text().splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        k = 0  # a forked process's frames come under its parent's: the innermost "process" frame is the sampled one
        while k < len(frames) and _PROCESS.match(frames[k]):
            k += 1
        if not n.isdigit():
            continue
        pid = int(_PROCESS.match(frames[k - 1]).group(1)) if k else 0  # type: ignore[union-attr]  (0: no -s)
        thread = frames[k] if len(frames) > k and frames[k].startswith("thread") else ""
        stacks.append((pid, thread, frames[k + 1 if thread else k :], int(n)))
    if not stacks:
        raise SystemExit(f"{args.raw}: no samples")
    first = _PROCESS.match(args.raw.read_text().split(";", 1)[0])
    root = int(first.group(1)) if first else 0
    roles: dict[int, str] = {}
    for pid, _thread, frames, _n in stacks:
        if pid != root and roles.get(pid, "other process") == "other process":
            roles[pid] = role_of(frames)

    groups: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    pids: dict[str, set[int]] = collections.defaultdict(set)
    for pid, thread, frames, n in stacks:
        if pid == root:
            name = re.sub(r"\s*\(\d+\)", "", thread.removeprefix("thread ")) or "?"
            key = f"main process, thread {name}"
        else:
            key = roles[pid]
        groups[key].append((frames, n))
        pids[key].add(pid)

    total = sum(n for *_, n in stacks)
    print(f"{total / args.rate:.2f} s of samples in {len({p for p, *_ in stacks})} processes ({args.raw})")
    for key, rows in sorted(groups.items(), key=lambda kv: -sum(n for _, n in kv[1])):
        own: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        for frames, n in rows:
            ours = [f for f in frames if "xaibatch" in f]
            own[_short(ours[-1] if ours else frames[-1] if frames else "(no Python frame)")] += n
            for f in {_short(f) for f in ours}:
                incl[f] += n
        s = sum(n for _, n in rows)
        print(f"\n{s / args.rate:7.2f} s  {key}" + (f" ({len(pids[key])} processes)" if len(pids[key]) > 1 else ""))
        for f, n in own.most_common(args.top):
            print(f"    self {n / args.rate:6.2f}  {f}")
        for f, n in incl.most_common(args.top):
            print(f"    incl {n / args.rate:6.2f}  {f}")


def _short(frame: str) -> str:
    """``fn (path/to/xaibatch/x.py:12)`` -> ``fn (xaibatch/x.py:12)``."""
    return re.sub(r"\([^()]*?/(xaibatch/[^()]*)\)", r"(\1)", frame)[:120]


if __name__ == "__main__":
    main()
