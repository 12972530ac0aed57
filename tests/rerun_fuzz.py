"""A seeded random state machine over a cron job's input folder: the re-run promise checked against a fresh run.

Each step changes the input folder (add, remove, rewrite, restore old bytes, rename, move to the other class,
touch, corrupt, fix), sometimes the options (methods, ``--target``, ``--max-map-side``: the maps are due again;
batch size, workers, writers: nothing is), or runs ``xaibatch run`` into one output folder: mostly in this process,
sometimes as a real process SIGKILLed at a random moment and then run again. After every run that finishes, the
folder is checked against an oracle, a run of the same input and options into a fresh folder:

- the same images with the same label, prediction, target and probabilities (atol 1e-5), the same map rows with
  the same configuration hashes and arrays (atol 1e-4: CPU kernels may round the last bit apart with the batch's
  composition, see test_crash.py), the same failures (rel and reason), the same cards and CSV rows;
- the re-run computed exactly what changed: a map whose image (by its bytes, at the same path or moved) and
  configuration hash and label are the previous finished run's is that run's (its run id and bytes), and every
  other map is new;
- the folder is consistent (outcheck.check_output_folder).

    python tests/rerun_fuzz.py --seeds 0-19 --steps 25       # PYTHONPATH=. from the checkout's root
    python tests/rerun_fuzz.py --seeds 7 --steps 40 -v       # one seed, each step printed

A failure names the seed and the step; the same seed replays the same steps (the kill's moment aside).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import ENV, REPO, manifest_rows  # noqa: E402
from outcheck import check_output_folder  # noqa: E402

CLASSES = ("FAKE", "REAL")
METHOD_SETS = (("gradcam",), ("gradcam", "guided-gradcam"), ("guided-gradcam",), ("gradcam", "lime"))
TARGETS = ("pred", "label", "pred,label")
LIME = {"lime": {"samples": 24, "segments": 8}}


def png_bytes(rng: random.Random, ext: str = "png") -> bytes:
    """A noise image of 8 to 16 px a side (not square), encoded as ``ext``."""
    from PIL import Image

    g = np.random.default_rng(rng.randrange(2**32))
    w, h = rng.randint(8, 16), rng.randint(8, 16)
    buf = io.BytesIO()
    Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG" if ext == "png" else "BMP")
    return buf.getvalue()


@dataclass
class Options:
    methods: tuple[str, ...] = ("gradcam",)
    target: str = "pred"
    max_map_side: int = 0  # 0: the default
    batch_size: int = 3
    workers: int = 0
    writers: int = 0
    threshold: float | None = None

    def argv(self) -> list[str]:
        a = [f"-m{m}" for m in self.methods] + ["--target", self.target]
        a += ["--batch-size", str(self.batch_size), "--workers", str(self.workers), "--writers", str(self.writers)]
        if self.max_map_side:
            a += ["--max-map-side", str(self.max_map_side)]
        if self.threshold is not None:
            a += ["--threshold", str(self.threshold)]
        if "lime" in self.methods:
            a += ["--lime-samples", "24", "--lime-segments", "8"]
        return a

    def run_options(self, inp: Path, out: Path, ckpt: Path):
        from xaibatch.defaults import DEFAULT_MAX_MAP_SIDE
        from xaibatch.pipeline import RunOptions

        return RunOptions(
            input_dir=inp,
            out_dir=out,
            methods=list(self.methods),
            checkpoint=ckpt,
            target=self.target,
            batch_size=self.batch_size,
            workers=self.workers,
            writers=self.writers,
            max_map_side=self.max_map_side or DEFAULT_MAX_MAP_SIDE,
            method_options=LIME if "lime" in self.methods else {},
            threshold=self.threshold,
            handle_signals=False,
        )


@dataclass
class Snapshot:
    """What an output folder holds, read from its manifest and report."""

    images: dict[str, tuple]  # rel -> (label, pred, target, probs, sha256, width, height)
    maps: dict[tuple[str, str], tuple]  # (rel, method) -> (config_hash, run_id, npy array, npy bytes)
    failures: dict[str, str]  # rel -> reason
    csv: dict[str, tuple]  # path -> (label, pred, correct, model_hash, earlier_model, npy columns filled)
    run_ids: set[int] = field(default_factory=set)

    @classmethod
    def read(cls, out: Path) -> Snapshot:
        images = {
            r[0]: (r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], r[7])
            for r in manifest_rows(
                out, "SELECT rel, label, pred, target, probs_json, sha256, width, height FROM images"
            )
        }
        maps = {}
        for rel, m, h, run_id, npy in manifest_rows(out, "SELECT rel, method, config_hash, run_id, npy FROM maps"):
            data = (out / npy).read_bytes()
            maps[(rel, m)] = (h, run_id, np.load(io.BytesIO(data)), data)
        failures = dict(manifest_rows(out, "SELECT rel, reason FROM failures"))
        with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
            rows = {
                r["path"]: (
                    *(r[k] for k in ("label", "pred", "correct", "model_hash", "earlier_model")),
                    tuple(sorted(k for k, v in r.items() if k.startswith("npy_") and v)),
                )
                for r in csv.DictReader(f)
            }
        ids = {i for (i,) in manifest_rows(out, "SELECT id FROM runs")}
        return cls(images, maps, failures, rows, ids)


class Mismatch(AssertionError):
    pass


def asked(key: str, methods) -> bool:
    """Whether a map key (a method, or its ``@label`` map) is of a method the run asked for."""
    return key.split("@")[0] in methods


def kept_maps(got: Snapshot, before: Snapshot | None, methods, unchecked: bool = False) -> tuple[Snapshot, list[str]]:
    """``got`` without the maps of methods the run did not ask for, and what is wrong with those. A method dropped
    from -m keeps its maps (README: "marked not asked by the last run"): each must be one the previous finished run
    held, with its bytes, over the same image bytes (at that path or moved there); ``unchecked``: or one a run since
    then made, which no check saw (killed, or its input changed under it)."""
    bad = []
    extra = {k: v for k, v in got.maps.items() if not asked(k[1], methods)}
    for (rel, m), (_h, run_id, _a, data) in extra.items():
        sha = got.images[rel][4]
        old = [
            v
            for (r, mm), v in (before.maps.items() if before else ())
            if mm == m and before.images[r][4] == sha and (r == rel or r not in got.images)
        ]
        if unchecked and before is not None and run_id not in before.run_ids:
            continue  # made by a killed run, or one whose input changed under it, since the last check
        if not any(v[1] == run_id and v[3] == data for v in old):
            bad.append(f"map {(rel, m)} of a method not asked (run {run_id}) is no earlier finished run's")
    maps = {k: v for k, v in got.maps.items() if k not in extra}
    csv_ = {p: (*r[:5], tuple(c for c in r[5] if asked(c[4:], methods))) for p, r in got.csv.items()}
    return Snapshot(got.images, maps, got.failures, csv_, got.run_ids), bad


def compare(got: Snapshot, want: Snapshot) -> list[str]:
    """How the re-run's folder differs from the fresh run's."""
    bad = []
    if got.images.keys() != want.images.keys():
        bad.append(
            f"images differ: only re-run {sorted(got.images.keys() - want.images.keys())[:4]}, "
            f"only fresh {sorted(want.images.keys() - got.images.keys())[:4]}"
        )
    for rel in got.images.keys() & want.images.keys():
        a, b = got.images[rel], want.images[rel]
        if a[:3] != b[:3] or a[4:] != b[4:]:
            bad.append(f"image {rel}: re-run {a[:3]}{a[4:]} fresh {b[:3]}{b[4:]}")
        elif not np.allclose(a[3], b[3], atol=1e-5):
            bad.append(f"image {rel}: probabilities {a[3]} vs {b[3]}")
    if got.maps.keys() != want.maps.keys():
        bad.append(
            f"maps differ: only re-run {sorted(got.maps.keys() - want.maps.keys())[:4]}, "
            f"only fresh {sorted(want.maps.keys() - got.maps.keys())[:4]}"
        )
    for k in got.maps.keys() & want.maps.keys():
        (ha, _, a, _), (hb, _, b, _) = got.maps[k], want.maps[k]
        if ha != hb:
            bad.append(f"map {k}: config hash {ha} vs {hb}")
        elif a.shape != b.shape or not np.allclose(a, b, atol=1e-4):
            diff = np.abs(a - b).max() if a.shape == b.shape else f"shapes {a.shape} {b.shape}"
            bad.append(f"map {k}: arrays differ ({diff})")
    if got.failures != want.failures:
        keys = got.failures.keys() ^ want.failures.keys() or {
            r for r in got.failures if got.failures[r] != want.failures[r]
        }
        bad.append(
            "failures differ: " + "; ".join(f"{r}: {got.failures.get(r)!r} vs {want.failures.get(r)!r}" for r in keys)
        )
    if got.csv != want.csv:
        bad.append(f"predictions.csv differs: {sorted(set(got.csv.items()) ^ set(want.csv.items()))[:4]}")
    return bad


def label_bound(target: str, method: str) -> bool:
    """Whether a map of ``method`` explains the image's label (so a new label asks for it anew)."""
    return target == "label" or method.endswith("@label")


def reuse_errors(
    before: Snapshot,
    after: Snapshot,
    present: set[str],
    target: str,
    lost: set[tuple[str, str]],
    strict: bool = True,
) -> list[str]:
    """Each map of ``after`` whose image bytes, label, target class and configuration hash ``before`` held (at the
    same path, or at a path gone from the input, ``present``, whose bytes are now at a path new to the manifest: a
    move) must be ``before``'s map; every other one new. Duplicates pair one to one: of the new paths holding one
    vanished image's bytes, at most as many as vanished paths keep a map (exactly one for one)."""
    bad = []
    vanished: dict[str, list[str]] = defaultdict(list)
    for rel, im in before.images.items():
        if rel not in present:
            vanished[im[4]].append(rel)
    moved: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)  # (sha, method) -> (new rel, kept)
    for (rel, m), (h, run_id, _arr, data) in after.maps.items():
        im = after.images[rel]
        sources = []
        if rel in before.images and before.images[rel][4] == im[4]:
            sources = [rel]
        elif not strict:  # a killed run, then changes: it may have moved these bytes here from a path refilled since
            sources = [s for s, b in before.images.items() if b[4] == im[4] and s != rel]
        elif rel not in before.images:
            sources = vanished.get(im[4], [])
        reusable = [
            s
            for s in sources
            if (s, m) in before.maps
            and before.maps[(s, m)][0] == h
            and (not label_bound(target, m) or before.images[s][0] == im[0])
            and before.images[s][2] == im[2]  # the class it explains (a new threshold may flip it)
            and (s, m) not in lost
        ]
        kept = any(run_id == before.maps[(s, m)][1] and data == before.maps[(s, m)][3] for s in reusable)
        if rel not in before.images and sources:
            moved[(im[4], m)].append((rel, kept))
            if not kept and run_id in before.run_ids:
                bad.append(f"map {(rel, m)} of run {run_id} at a new path is none of {sources}'s")
        elif reusable and strict and not kept:
            old = before.maps[(rel, m)]
            bad.append(f"map {(rel, m)} computed again (run {run_id}, was run {old[1]}): nothing it depends on changed")
        elif not reusable and run_id in before.run_ids:
            bad.append(f"map {(rel, m)} kept from run {run_id} though its image, label or configuration changed")
    for (sha, m), news in moved.items():
        n_kept, srcs = sum(k for _r, k in news), vanished[sha]
        reusable_srcs = [s for s in srcs if (s, m) in before.maps and (s, m) not in lost]
        if strict and n_kept > len(srcs):
            bad.append(f"{m}: {n_kept} new paths {news} kept the maps of {len(srcs)} vanished {srcs}")
        if strict and len(news) == 1 and len(srcs) == 1 and reusable_srcs and not n_kept:
            r = news[0][0]
            s0 = srcs[0]
            same = (
                before.maps[(s0, m)][0] == after.maps[(r, m)][0]
                and (not label_bound(target, m) or before.images[s0][0] == after.images[r][0])
                and before.images[s0][2] == after.images[r][2]
            )
            if same:
                bad.append(f"map {(r, m)} computed again after a move from {s0}")
    return bad


def plan_errors(before: Snapshot, plan: dict, now: dict[str, str]) -> list[str]:
    """The ``plan`` event's counts against what changed in the input (``now``: rel -> sha256) since ``before``:
    a path gone is removed or moved (moved: its bytes are at a path new to the manifest); a path the manifest
    holds with other bytes is changed; a new path neither failed before nor a move's is added."""
    gone = [r for r in before.images if r not in now]
    new = [r for r in now if r not in before.images]
    shas = {now[r] for r in new}
    movable = sum(1 for r in gone if before.images[r][4] in shas)
    gone_shas = {before.images[r][4] for r in gone}
    added = len([r for r in new if r not in before.failures])
    # a path that failed before and now holds a vanished image's bytes is that image moved: neither added nor failed
    refilled = len([r for r in new if r in before.failures and now[r] in gone_shas])
    want = {
        "removed+moved": (len(gone), len(gone)),
        "changed": (n := sum(1 for r in now if r in before.images and now[r] != before.images[r][4]), n),
        "added+moved": (added, added + refilled),
    }
    got = {
        "removed+moved": plan["removed"] + plan["moved"],
        "changed": plan["changed"],
        "added+moved": plan["added"] + plan["moved"],
    }
    bad = [f"plan event: {k} {got[k]}, expected {lo}..{hi}" for k, (lo, hi) in want.items() if not lo <= got[k] <= hi]
    if plan["moved"] > movable:
        bad.append(f"plan event: moved {plan['moved']}, at most {movable} paths gone have their bytes at a new one")
    return bad


@dataclass
class World:
    seed: int
    root: Path
    ckpt: Path
    verbose: bool = False
    rng: random.Random = field(init=False)
    opts: Options = field(default_factory=Options)
    history: dict[str, list[bytes]] = field(default_factory=dict)  # rel -> bytes it held
    corrupt: set[str] = field(default_factory=set)
    counter: int = 0
    steps: list[str] = field(default_factory=list)
    runs: int = 0
    kills: int = 0
    last: Snapshot | None = None
    killed_ids: set[int] = field(default_factory=set)
    killed: bool = False  # a run was SIGKILLed (or ran in a process of its own) since the last check
    changed_after_kill: bool = False  # ... and the input or options changed after it
    lost: set[tuple[str, str]] = field(default_factory=set)  # maps whose files were deleted since the last check
    forced: str | None = None  # the file the next change picks, where it can (one the run under way is to read)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.inp = self.root / "in"
        self.out = self.root / "out"
        for c in CLASSES:
            (self.inp / c).mkdir(parents=True, exist_ok=True)

    # the input folder -------------------------------------------------------------------------------------------

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.inp).as_posix() for p in self.inp.rglob("*") if p.is_file())

    def write(self, rel: str, data: bytes) -> None:
        p = self.inp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.history.setdefault(rel, []).append(data)

    def new_name(self, cls: str | None = None) -> str:
        """A path no file has: mostly a new name, sometimes an existing one's stem with another extension or case
        (their output stems collide), sometimes in a sub-folder."""
        cls = cls or self.rng.choice(CLASSES)
        ext = self.rng.choice(("png", "png", "png", "bmp"))
        existing = self.files()
        if existing and self.rng.random() < 0.15:
            base = self.rng.choice(existing).split("/", 1)[1].rsplit(".", 1)[0]
            for cand in (f"{base}.{ext}", f"{base.upper()}.png", f"{base}.bmp", f"{base}.PNG"):
                if not (self.inp / cls / cand).exists() and (self.inp / cls / cand).parent.is_dir():
                    return f"{cls}/{cand}"
        self.counter += 1
        sub = "sub/" if self.rng.random() < 0.1 else ""
        return f"{cls}/{sub}im{self.counter:03d}.{ext}"

    def step_add(self) -> str:
        rel = self.new_name()
        self.write(rel, png_bytes(self.rng, rel.rsplit(".", 1)[1]))
        return f"add {rel}"

    def pick(self, ok=lambda rel: True) -> str | None:
        cands = [f for f in self.files() if ok(f)]
        if self.forced in cands:
            return self.forced
        return self.rng.choice(cands) if cands else None

    def step_remove(self) -> str | None:
        rel = self.pick()
        if rel is None or len(self.files()) < 2:  # an input folder without an image is refused (exit 2)
            return None
        (self.inp / rel).unlink()
        self.corrupt.discard(rel)
        return f"remove {rel}"

    def step_rewrite(self) -> str | None:
        rel = self.pick(lambda r: r not in self.corrupt)
        if rel is None:
            return None
        self.write(rel, png_bytes(self.rng, rel.rsplit(".", 1)[1]))
        return f"rewrite {rel}"

    def step_restore(self) -> str | None:
        rel = self.pick(lambda r: len(self.history.get(r, ())) > 1)
        if rel is None:
            return None
        old = [d for d in self.history[rel] if d != (self.inp / rel).read_bytes() and not self.is_corrupt_bytes(d)]
        if not old:
            return None
        self.write(rel, self.rng.choice(old))
        self.corrupt.discard(rel)
        return f"restore {rel}"

    def is_corrupt_bytes(self, data: bytes) -> bool:
        return data.startswith(b"CORRUPT") or len(data) < 40

    def _move(self, rel: str, new: str) -> None:
        (self.inp / new).parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.inp / rel, self.inp / new)
        self.history[new] = self.history.pop(rel, [])[-1:]
        if rel in self.corrupt:
            self.corrupt.discard(rel)
            self.corrupt.add(new)

    def step_rename(self) -> str | None:
        rel = self.pick()
        if rel is None:
            return None
        cls, ext = rel.split("/")[0], rel.rsplit(".", 1)[1]
        new = self.new_name(cls)
        new = new.rsplit(".", 1)[0] + "." + (ext if self.rng.random() < 0.7 else new.rsplit(".", 1)[1])
        self._move(rel, new)
        return f"rename {rel} -> {new}"

    def step_move(self) -> str | None:
        rel = self.pick()
        if rel is None:
            return None
        cls, name = rel.split("/", 1)
        other = CLASSES[1 - CLASSES.index(cls)]
        new = f"{other}/{name}"
        if (self.inp / new).exists():
            new = self.new_name(other)
        self._move(rel, new)
        return f"move {rel} -> {new}"

    def step_copy(self) -> str | None:
        """The same bytes at a second path (a duplicate: moves pair them one to one)."""
        rel = self.pick()
        if rel is None:
            return None
        new = self.new_name()
        new = new.rsplit(".", 1)[0] + "." + rel.rsplit(".", 1)[1]
        if (self.inp / new).exists():
            return None
        self.write(new, (self.inp / rel).read_bytes())
        if rel in self.corrupt:
            self.corrupt.add(new)
        return f"copy {rel} -> {new}"

    def step_swap(self) -> str | None:
        """Two paths exchange their bytes (each a changed image whose bytes the manifest holds at the other)."""
        files = self.files()
        if len(files) < 2:
            return None
        a, b = self.rng.sample(files, 2)
        da, db = (self.inp / a).read_bytes(), (self.inp / b).read_bytes()
        self.write(a, db)
        self.write(b, da)
        ca, cb = a in self.corrupt, b in self.corrupt
        self.corrupt -= {a, b}
        self.corrupt |= {x for x, c in ((a, cb), (b, ca)) if c}
        return f"swap {a} <-> {b}"

    def step_touch(self) -> str | None:
        rel = self.pick()
        if rel is None:
            return None
        p = self.inp / rel
        if self.rng.random() < 0.5:
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + self.rng.randint(1, 10**9)))
            return f"touch {rel}"
        p.write_bytes(p.read_bytes())  # the same bytes written again: ctime and mtime move
        return f"rewrite-same {rel}"

    def step_corrupt(self) -> str | None:
        rel = self.pick(lambda r: r not in self.corrupt) if self.rng.random() < 0.7 else self.new_name()
        if rel is None:
            return None
        kind = self.rng.choice(("truncate", "text", "empty"))
        if kind == "truncate" and (self.inp / rel).exists():
            data = (self.inp / rel).read_bytes()
            data = data[: max(8, len(data) // 2)]
        elif kind == "empty":
            data = b""
        else:
            data = b"CORRUPT not an image " + str(self.rng.random()).encode()
        self.write(rel, data)
        self.corrupt.add(rel)
        return f"corrupt {rel} ({kind})"

    def step_fix(self) -> str | None:
        rel = self.pick(lambda r: r in self.corrupt)
        if rel is None:
            return None
        good = [d for d in self.history.get(rel, []) if not self.is_corrupt_bytes(d)]
        data = self.rng.choice(good) if good and self.rng.random() < 0.5 else png_bytes(self.rng, rel.rsplit(".")[1])
        self.write(rel, data)
        self.corrupt.discard(rel)
        return f"fix {rel}"

    def step_options(self) -> str:
        o = self.opts
        what = self.rng.choice(("methods", "target", "max_map_side", "batch_size", "workers", "writers", "threshold"))
        if what == "methods":
            o.methods = self.rng.choice(METHOD_SETS)
        elif what == "target":
            o.target = self.rng.choice(TARGETS)
        elif what == "max_map_side":
            o.max_map_side = self.rng.choice((0, 0, 8, 12))
        elif what == "batch_size":
            o.batch_size = self.rng.choice((1, 2, 3, 5, 8))
        elif what == "workers":
            o.workers = self.rng.choice((0, 0, 1))
        elif what == "writers":
            o.writers = self.rng.choice((0, 0, 1))
        else:
            o.threshold = self.rng.choice((None, 0.3, 0.5, 0.7))
        return f"options {what}={getattr(o, what)}"

    # runs --------------------------------------------------------------------------------------------------------

    def step_lose(self) -> str | None:
        """Delete one output file (a user cleaning up, a disk repaired): the next run writes it again."""
        rows = manifest_rows(self.out, "SELECT rel, method, npy, png FROM maps") if self.last else []
        if not rows:
            return None
        rel, m, npy, png = self.rng.choice(rows)
        (self.out / self.rng.choice((npy, png))).unlink(missing_ok=True)
        self.lost.add((rel, m))
        return f"lose an output file of {rel}'s {m} map"

    def run_here(self, out: Path):
        from xaibatch.errors import XaibatchError
        from xaibatch.pipeline import run

        events: list[dict] = []
        o = self.opts.run_options(self.inp, out, self.ckpt)
        o.on_event = events.append
        try:
            return run(o, log=lambda s: None), events
        except XaibatchError as e:
            raise Mismatch(f"the run raised {type(e).__name__}: {e}") from e

    def run_killed(self) -> str:
        """A real process SIGKILLed at a random moment of its run (it may finish first): test_crash.py's hooks slow
        each batch's commit and, sometimes, the report, so that the moment falls in the compute or the report."""
        from test_crash import PRELUDE

        marks = Path(tempfile.mkdtemp(dir=self.root, prefix="marks"))
        cmd = [sys.executable, "-c", PRELUDE, "run", str(self.inp), "--checkpoint", str(self.ckpt)]
        cmd += ["--out", str(self.out), "--log-json", *self.opts.argv()]
        env = {**ENV, "PYTHONPATH": str(REPO), "XB_TEST_MARKS": str(marks), "XB_TEST_DELAY": "0.15"}
        env["XB_TEST_REPORT_DELAY"] = self.rng.choice(("0", "0", "0.5"))
        delay = self.rng.uniform(0.0, 1.5)
        before = set(self.run_ids())
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            t0 = time.monotonic()  # its run starts: the manifest holds its row, or the scan found nothing to do
            while proc.poll() is None and set(self.run_ids()) <= before and time.monotonic() - t0 < 60:
                time.sleep(0.02)
            try:
                proc.wait(timeout=delay)
                said = f"ran to the end (rc {proc.returncode}) within {delay:.2f} s of its start"
                if proc.returncode not in (0, 1):
                    err = proc.stderr.read().decode()[-2000:]
                    raise Mismatch(f"the run to be killed failed, rc {proc.returncode}: {err}")
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                seen = sorted(p.name for p in marks.iterdir()) if marks.is_dir() else []
                said = f"SIGKILLed {delay:.2f} s into its run (marks: {' '.join(seen) or 'none'})"
                self.killed_ids |= set(self.run_ids()) - before
                self.kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
            shutil.rmtree(marks, ignore_errors=True)
        return said

    def run_ids(self) -> list[int]:
        if not (self.out / "xaibatch.sqlite").exists():
            return []
        try:
            return [i for (i,) in manifest_rows(self.out, "SELECT id FROM runs")]
        except sqlite3.OperationalError:  # being created
            return []

    def step_run_midway(self) -> str:
        """A run (in this process) during which the input changes once, after its plan: an image deleted, moved or
        rewritten while the run reads. That run's folder must be consistent; the next run's is checked in full (a
        changed input since the last check, as after a kill)."""
        run_module = importlib.import_module("xaibatch.pipeline.run")  # the package's ``run`` is the function

        real, said = run_module.make_plan, []
        change = self.rng.choice(
            (self.step_remove, self.step_rewrite, self.step_rename, self.step_move, self.step_corrupt, self.step_touch)
        )

        def planned(*a, **k):
            plan = real(*a, **k)
            if not said:
                work = sorted(plan.work)
                self.forced = self.rng.choice(work) if work and self.rng.random() < 0.8 else None
                try:
                    said.append(change() or "nothing")
                finally:
                    self.forced = None
            return plan

        run_module.make_plan = planned
        try:
            result, _events = self.run_here(self.out)
        finally:
            run_module.make_plan = real
        self.runs += 1
        if result.status not in ("ok", "some-failed"):
            raise Mismatch(f"the run ended {result.status}")
        if not self.lost:  # else an image whose files were deleted may have vanished before its batch repaired them
            check_output_folder(self.out)
        self.killed = self.changed_after_kill = True
        return f"run {self.runs} with {said[0] if said else 'nothing (no plan made)'} after its plan"

    def step_kill(self) -> str:
        said = self.run_killed()
        self.killed = True
        return said

    def step_run(self) -> str:
        said = ""
        if self.rng.random() < 0.1:
            said = self.step_kill() + "; "
        result, events = self.run_here(self.out)
        self.runs += 1
        plan = next((e for e in events if e["event"] == "plan"), None)
        self.check(result, plan)
        counts = (
            "cached"
            if plan is None
            else ", ".join(f"{k} {plan[k]}" for k in ("added", "changed", "removed", "moved", "to_compute"))
        )
        return f"{said}run {self.runs} ({counts})"

    def sha(self, rel: str) -> str:
        return hashlib.sha256((self.inp / rel).read_bytes()).hexdigest()

    def check(self, result, plan) -> None:
        if result.status not in ("ok", "some-failed"):
            raise Mismatch(f"the run ended {result.status}")
        check_output_folder(self.out, self.inp)
        fresh = Path(tempfile.mkdtemp(dir=self.root, prefix="fresh"))
        try:
            self.run_here(fresh)
            got, want = Snapshot.read(self.out), Snapshot.read(fresh)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        shown, bad = kept_maps(got, self.last, self.opts.methods, self.killed)
        bad += compare(shown, want)
        if self.last is not None:
            strict = not self.changed_after_kill
            bad += reuse_errors(self.last, shown, set(self.files()), self.opts.target, self.lost, strict)
        if plan is not None and self.last is not None and not self.killed and not self.lost:
            bad += plan_errors(self.last, plan, {rel: self.sha(rel) for rel in self.files()})
        if bad:
            raise Mismatch("\n  ".join(bad))
        self.last = got
        self.killed_ids, self.killed, self.changed_after_kill, self.lost = set(), False, False, set()

    def step(self) -> str | None:
        r = self.rng.random()
        table = [
            (0.12, self.step_add),
            (0.05, self.step_remove),
            (0.06, self.step_rewrite),
            (0.05, self.step_restore),
            (0.06, self.step_rename),
            (0.07, self.step_move),
            (0.05, self.step_touch),
            (0.03, self.step_copy),
            (0.03, self.step_swap),
            (0.04, self.step_corrupt),
            (0.04, self.step_fix),
            (0.06, self.step_options),
            (0.03, self.step_kill),
            (0.03, self.step_lose),
            (0.04, self.step_run_midway),
            (1.00, self.step_run),
        ]
        acc = 0.0
        for p, fn in table:
            acc += p
            if r < acc:
                said = fn()
                if said and self.killed and fn not in (self.step_run, self.step_kill):
                    self.changed_after_kill = True
                return said
        return self.step_run()


def play(seed: int, steps: int, ckpt: Path, root: Path, verbose: bool = False) -> World:
    """``steps`` random steps (the first adds a few images), then a last run; raises Mismatch naming the seed."""
    w = World(seed, root, ckpt, verbose)
    for _ in range(w.rng.randint(3, 8)):
        w.steps.append(w.step_add())
    w.steps.append(w.step_run())
    for i in range(steps):
        try:
            said = w.step()
        except AssertionError as e:
            raise Mismatch(
                f"seed {seed}, step {i + 1}: {e}\nsteps:\n  " + "\n  ".join(w.steps + [f"(step {i + 1})"])
            ) from e
        if said:
            w.steps.append(said)
            if verbose:
                print(f"  [{seed}:{i + 1}] {said}", flush=True)
    if not w.steps[-1].startswith(("run", "SIGKILL", "ran")):
        try:
            w.steps.append(w.step_run())
        except AssertionError as e:
            raise Mismatch(f"seed {seed}, last run: {e}\nsteps:\n  " + "\n  ".join(w.steps)) from e
    return w


def seeds_of(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-9", help="seeds to play: 3, 0-19, 1,5,9 (default 0-9)")
    ap.add_argument("--steps", type=int, default=25, help="random steps per seed (default 25)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each step")
    ap.add_argument("--keep", action="store_true", help="keep each failing seed's folders")
    args = ap.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    torch.set_num_threads(1)
    from helpers import make_checkpoint

    failed = []
    with tempfile.TemporaryDirectory(prefix="xb-fuzz-") as tmp:
        ckpt = make_checkpoint(Path(tmp) / "tiny.pt")
        for seed in seeds_of(args.seeds):
            root = Path(tmp) / f"seed{seed}"
            t0 = time.time()
            try:
                w = play(seed, args.steps, ckpt, root, args.verbose)
                print(
                    f"seed {seed}: ok, {len(w.steps)} steps, {w.runs} runs ({w.kills} killed), {time.time() - t0:.0f} s",
                    flush=True,
                )
            except Mismatch as e:
                failed.append(seed)
                print(f"seed {seed}: FAILED\n{e}", flush=True)
                if args.keep:
                    kept = Path(tempfile.mkdtemp(prefix=f"xb-fuzz-seed{seed}-"))
                    shutil.copytree(root, kept, dirs_exist_ok=True)
                    print(f"  kept in {kept}")
            shutil.rmtree(root, ignore_errors=True)
    print(f"{len(seeds_of(args.seeds)) - len(failed)} seed(s) ok, failed: {failed or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
