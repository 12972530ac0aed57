"""``xaibatch run`` as a library call: plan, stream, explain, write, report.

The work is planned against the manifest first (which images are new, changed,
gone; which of their maps are missing or stale), then only that work streams
through the model: DataLoader workers decode, the device computes one shared
forward per batch plus what each method needs, and a writer thread saves maps
and commits the manifest one batch per transaction while the next batch runs.

Safe to run from a scheduler:

* One run per output folder (:mod:`xaibatch.lock`); ``--wait`` queues behind the holder.
* Incremental: an image is skipped when its size and mtime match the manifest
  (no hashing), or when they moved but its sha256 did not; a map is recomputed
  when its configuration hash (checkpoint sha256, arch, input size, normalization,
  classes, target, MAP_FORMAT_VERSION, method and its options, target layer,
  seed) changed. New and changed images get every requested method; an image
  whose content or model changed loses the maps of methods not requested this
  time (they described the old picture). Images gone from the input, or no longer
  readable, leave the manifest, and then their files are deleted.
* Crash-safe: files are written to a temporary name and renamed; a batch's rows
  are committed only after all its files are in place; rows of removed images
  are deleted before their files. A killed run leaves the last committed state;
  the next run marks its run row ``killed``, deletes stale temporary files, and
  (when the previous run never released the lock) files no row points at.
* SIGINT/SIGTERM: the current batch finishes, queued batches are written, the run
  row says ``interrupted``, the report shows what is done, and
  :class:`~xaibatch.errors.Interrupted` is raised (exit code 5). A second signal
  stops at once (still consistent, just without the report).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import MAP_FORMAT_VERSION, __version__
from .data import ImageDataset, ImageEntry, Scan, collate, scan
from .errors import InputError, Interrupted, UsageError
from .files import atomic_write_bytes, file_sha256, safe_join, save_npy
from . import heads
from .layers import capture, find_target_layer
from .lock import OutputLock, describe, pid_alive
from .manifest import FILENAME as MANIFEST_NAME
from .manifest import ImageRow, Manifest, MapRow
from .methods import METHODS, Batch, Method, ModelContext, create_method
from .model import LoadedModel, load_model, resolve_device
from .overlay import overlay, png_bytes, thumbnail
from .resources import default_checkpoint


@dataclass
class RunOptions:
    input_dir: Path
    out_dir: Path
    methods: list[str]
    checkpoint: Path | None = None  # None: the bundled default model
    arch: str | None = None
    model: str | None = None  # FILE.py:FACTORY, module.path:FACTORY, torchvision:NAME or timm:NAME (usermodel)
    classes: list[str] | None = None  # class names in output order (else the checkpoint's or the folder's)
    positive_class: str | None = None  # two classes: the one the threshold is about (default: second sorted)
    threshold: float | None = None  # two classes: predict positive when its probability is >= this (0.5)
    image_size: int | None = None
    target_layer: str | None = None
    target: str = "pred"  # pred | label
    batch_size: int = 32
    device: str = "auto"
    workers: int = 0
    labeled: bool | None = None  # None: decide from the folder layout
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0  # for every method that takes one (LIME); part of only those methods' hashes
    template_dir: Path | None = None
    progress: bool = False
    wait: bool = False  # another run holds out_dir: wait for it instead of raising LockHeld
    wait_timeout: float | None = None  # with wait: give up after this many seconds
    on_event: Callable[[dict[str, Any]], None] | None = None  # plan and failure events (see runlog)
    handle_signals: bool = True  # SIGINT/SIGTERM stop after the current batch (main thread only)


@dataclass
class RunResult:
    out_dir: Path
    seen: int
    computed: int
    unchanged: int
    added: int
    changed: int
    removed: int
    failed: list[tuple[str, str]]
    seconds: float
    report: Path | None
    layer: str | None
    accuracy: float | None
    status: str = "ok"  # ok | some-failed | interrupted (the run row's status)
    run_id: int | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: prepare, plan, compute, report

    def summary_line(self) -> str:
        stopped = " (interrupted)" if self.status == "interrupted" else ""
        return (
            f"xaibatch: {self.seen} images seen, {self.computed} computed, {self.unchanged} skipped (unchanged), "
            f"{len(self.failed)} failed, {self.removed} removed, {self.seconds:.1f}s{stopped} -> {self.report}"
        )


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_seed(rel: str) -> int:
    """A seed per image that depends only on its path, never on batching; methods mix in their own --seed."""
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "little")


def map_stems(rels: list[str]) -> dict[str, str]:
    """``a/b.png`` -> ``a/b``; when two images share a stem (``b.png``, ``b.jpg``) both keep their extension.

    Stems are unique, and no ``<stem>.png``/``<stem>.npy`` is also a folder another image's files go in
    (``photo.jpg`` next to a folder ``photo.png/``): until that holds, the clashing ones keep their
    extension, and as a last resort get a short hash of their path.
    """
    stems = {r: r.rsplit(".", 1)[0] for r in rels}
    folders = {"/".join(r.split("/")[:i]) for r in rels for i in range(1, r.count("/") + 1)}
    while True:
        counts: dict[str, int] = defaultdict(int)
        for s in stems.values():
            counts[s] += 1
        clash = [r for r, s in stems.items() if counts[s] > 1 or f"{s}.png" in folders or f"{s}.npy" in folders]
        keep_ext = [r for r in clash if stems[r] != r and not stems[r].startswith(f"{r}~")]
        if keep_ext:  # first: the clashing ones keep their extension
            stems.update({r: r for r in keep_ext})
            continue
        hashed = [r for r in clash if stems[r] == r]
        if not hashed:  # nothing clashes (or nothing more can be done)
            return stems
        stems.update({r: f"{r}~{hashlib.sha256(r.encode()).hexdigest()[:8]}" for r in hashed})


def class_names_for(model: LoadedModel, found: Scan) -> list[str]:
    """The model's class names, checked against the folder's classes when both exist."""
    k = model.num_classes
    if model.class_names is not None:
        names = model.class_names
        if found.classes is not None and found.classes != names:
            raise InputError(
                f"folder classes {found.classes} do not match the model's classes {names}; "
                "rename the folders or pass --unlabeled"
            )
        return names
    if found.classes is not None:
        if len(found.classes) != k:
            raise InputError(
                f"the folder has {len(found.classes)} classes {found.classes} but the model has {k} outputs; "
                "check --checkpoint or pass --unlabeled"
            )
        return found.classes
    return [f"class_{i}" for i in range(k)]


# Below about this many display pixels per image, encoding is mostly Python work under the GIL and more
# writer threads only slow each other down (measured: 64 px slower with 2 threads, 96 px already faster).
PARALLEL_WRITE_MIN_PIXELS = 96 * 96


def writer_threads(device: torch.device, workers: int) -> int:
    """Threads that encode and write a batch's pictures: one on the CPU, whose cores the model already uses;
    on a GPU the host's idle cores (up to 8), which the writer needs to keep up with the device."""
    if device.type == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 1) - max(1, workers)))


class _Writer(threading.Thread):
    """Writes maps and commits manifest rows, one batch per transaction, off the compute thread."""

    def __init__(self, out_dir: Path, on_done: Callable[[int], None], threads: int = 1) -> None:
        super().__init__(name="xaibatch-writer", daemon=True)
        self.out_dir = out_dir
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.on_done = on_done
        self.threads = threads  # > 1: a batch's images are encoded and written in parallel (PIL, zlib, I/O drop the GIL)

    def run(self) -> None:
        manifest = Manifest(self.out_dir / MANIFEST_NAME)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="xaibatch-encode") if self.threads > 1 else None
        try:
            while (job := self.q.get()) is not None:
                if self.error is None:
                    try:
                        self._write(manifest, job, pool)
                    except BaseException as e:  # surfaced by the main thread
                        self.error = e
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            manifest.close()

    def _write(self, manifest: Manifest, job: dict[str, Any], pool: ThreadPoolExecutor | None = None) -> None:
        items = job["items"]
        write = functools.partial(self._write_item, run_id=job["run_id"])
        pixels = sum(it["display"].shape[0] * it["display"].shape[1] for it in items)
        if pool is not None and len(items) > 1 and pixels >= PARALLEL_WRITE_MIN_PIXELS * len(items):
            futures = [pool.submit(write, item) for item in items]
            per_item = [f.result() for f in futures]  # all of them, in order; the first error is raised
        else:
            per_item = [write(item) for item in items]
        maps_rows = [row for rows in per_item for row in rows]
        # Every file of the batch is in place (renamed from its temporary name): only now do the rows point at them.
        with manifest.transaction():
            for row in job["image_rows"]:
                manifest.put_image(row)
            for rel, method in job.get("drop_maps", ()):
                manifest.remove_map(rel, method)
            for row in maps_rows:
                manifest.put_map(row)
            for rel, reason in job["failed"]:
                manifest.put_failure(rel, reason, job["run_id"])
        # Files no committed row points at any more (stale maps, images that became unreadable).
        _unlink_all(self.out_dir, job.get("discard", ()))
        self.on_done(len(job["items"]) + len(job["failed"]))

    def _write_item(self, item: dict[str, Any], run_id: int) -> list[MapRow]:
        """Write one image's files (its display copy when new, each map's npy, overlay and thumbnail)."""
        stem = item["stem"]
        display = item["display"]
        if item["write_image"]:
            self._save_with_thumb(_pil(display), f"images/{stem}.png", f"thumbs/image/{stem}.png")
        h, w = item["orig_size"]
        rows = []
        for name, (m, signed, info) in item["maps"].items():
            full = _resize(m, (h, w), signed)
            npy = f"maps/{name}/{stem}.npy"
            png = f"maps/{name}/{stem}.png"
            thumb = f"thumbs/{name}/{stem}.png"
            save_npy(safe_join(self.out_dir, npy), full)
            self._save_with_thumb(overlay(display, m, signed), png, thumb)
            rows.append(MapRow(item["rel"], name, item["hashes"][name], npy, png, thumb, info, run_id))
        return rows

    def _save_with_thumb(self, pic, rel: str, thumb_rel: str) -> None:
        """Write a picture and its thumbnail; a picture small enough to be its own thumbnail is encoded once."""
        data = png_bytes(pic)
        atomic_write_bytes(safe_join(self.out_dir, rel), data)
        small = thumbnail(pic)
        atomic_write_bytes(safe_join(self.out_dir, thumb_rel), data if small is pic else png_bytes(small))


def _pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a)


def _resize(m: np.ndarray, size: tuple[int, int], signed: bool) -> np.ndarray:
    if m.shape == size:
        return m.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    mode = "nearest" if signed else "bilinear"
    kw = {} if signed else {"align_corners": False}
    return F.interpolate(t, size=size, mode=mode, **kw)[0, 0].numpy()


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x.float().div_(255.0) - mean) / std


class Explainer:
    """The model plus the methods, run one batch at a time on the device."""

    def __init__(self, model: LoadedModel, methods: list[Method], ctx: ModelContext, target: str) -> None:
        self.model = model
        self.methods = methods
        self.ctx = ctx
        self.target = target
        self.mean = torch.tensor(ctx.mean, device=ctx.device).view(1, 3, 1, 1)
        self.std = torch.tensor(ctx.std, device=ctx.device).view(1, 3, 1, 1)
        self.want_activations = any(m.needs_activations for m in methods)

    def __call__(
        self, x_uint8: torch.Tensor, labels: torch.Tensor | None, segments: torch.Tensor | None, seeds: list[int]
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, list | None]]]:
        dev = self.ctx.device
        x = _normalize(x_uint8.to(dev, non_blocking=True), self.mean, self.std)
        net = self.ctx.model
        activations = None
        if self.want_activations:
            with torch.enable_grad(), capture(self.ctx.layer) as store:
                logits = net(x.requires_grad_(True))
            activations = store["activations"]
        else:
            with torch.no_grad():
                logits = net(x)
        probs = torch.softmax(logits.detach().float(), dim=1)
        targets = heads.predict(probs, self.model.decision) if self.target == "pred" else labels.to(dev)
        batch = Batch(
            x=x.detach(), targets=targets, logits=logits, activations=activations,
            segments=None if segments is None else segments.to(dev), seeds=seeds,
        )
        out = {}
        for m in self.methods:
            e = m.explain(batch)
            out[m.name] = (e.maps.detach().float(), e.info)
        return probs, out


def _checkpoint_path(opts: RunOptions) -> Path:
    if opts.checkpoint is not None:
        return opts.checkpoint
    if opts.arch is not None:
        raise UsageError(
            f"--arch {opts.arch} needs --checkpoint with its weights (random weights explain nothing); "
            "omit both to use the bundled model"
        )
    return default_checkpoint()


def _load_and_name(opts: RunOptions, found: Scan) -> tuple[LoadedModel, list[str]]:
    """Build the model (timm checkpoint or ``--model``), read one-logit heads as two classes, name the classes."""
    n_hint = len(opts.classes or found.classes or []) or None
    if opts.model is not None:
        if opts.arch is not None:
            raise UsageError("give --model or --arch, not both (--model timm:NAME is --arch NAME)")
        from .usermodel import load_user_model

        model = load_user_model(opts.model, opts.checkpoint, opts.image_size, n_hint)
    else:
        model = load_model(_checkpoint_path(opts), opts.arch, opts.image_size, n_hint)
    one_logit = heads.adapt_one_logit(model)
    if opts.classes is not None:
        if len(opts.classes) != model.num_classes or len(set(opts.classes)) != len(opts.classes):
            outputs = "one logit, read as two classes" if one_logit else f"{model.num_classes} outputs"
            raise UsageError(f"--classes {','.join(opts.classes)}: the model has {outputs}; give that many "
                             "different names, in output order")
        if model.class_names is not None and model.class_names != opts.classes:
            raise UsageError(f"--classes {','.join(opts.classes)} differ from the checkpoint's {model.class_names}")
        model.class_names = list(opts.classes)
    names = class_names_for(model, found)
    model.decision = heads.decision_for(names, opts.positive_class, opts.threshold, one_logit)
    heads.with_positive(model.module, model.decision)
    return model, names


def prepare(opts: RunOptions):
    """Load, scan and check everything that can fail before any file is written."""
    if not opts.methods:
        raise UsageError("give at least one --method")
    unknown = [m for m in opts.methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown --method {unknown[0]!r}; choose from {', '.join(sorted(METHODS))}")
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if opts.target not in ("pred", "label"):
        raise UsageError("--target must be pred or label")
    device = resolve_device(opts.device)
    found = scan(opts.input_dir, opts.labeled)
    if opts.target == "label" and found.classes is None:
        raise UsageError("--target label needs a labeled folder (ImageFolder layout); use --target pred")
    model, names = _load_and_name(opts, found)
    model.module.to(device).eval()
    methods_wanted = list(dict.fromkeys(opts.methods))
    needs_layer = any(METHODS[m].needs_activations for m in methods_wanted) or opts.target_layer is not None
    layer = (find_target_layer(heads.unwrap(model.module), model.input_size, opts.target_layer)
             if needs_layer else None)
    ctx = ModelContext(
        model=model.module, layer=layer, input_size=model.input_size, mean=model.mean, std=model.std, device=device
    )
    methods = [
        create_method(m, ctx, **{**({"seed": opts.seed} if METHODS[m].takes_seed else {}),
                                 **opts.method_options.get(m, {})})
        for m in methods_wanted
    ]
    return device, found, model, names, layer, ctx, methods


class _Stop:
    """Set by the SIGINT/SIGTERM handler; polled between batches."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"


@contextmanager
def _signals(enabled: bool):
    """SIGINT/SIGTERM set a flag for the duration of the run; a second one stops at once. Restores the old handlers."""
    stop = _Stop()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.signum = signum

    # A signal ignored when we started stays ignored (e.g. SIGINT of a background job in sh).
    previous = {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) is not signal.SIG_IGN}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _worker_init(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which stops them after the current batch.

    (A Ctrl-C reaches the whole process group, and systemd signals the whole
    cgroup; a worker dying on it would make the main process fail instead of
    stopping cleanly.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _check_out_is_not_input(opts: RunOptions) -> None:
    """Refuse --out == INPUT_DIR before anything (even the lock file) is written there."""
    if Path(opts.out_dir).resolve() == Path(opts.input_dir).resolve():
        sibling = Path(opts.input_dir).resolve().parent / f"{Path(opts.input_dir).resolve().name}-xaibatch"
        raise UsageError(f"--out {opts.out_dir} is INPUT_DIR itself: the next run would read its maps as images; "
                         f"choose another folder, e.g. --out {sibling}")


def run(opts: RunOptions, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> RunResult:
    """Run under the output folder's lock; raises LockHeld (another run holds it) or Interrupted (signal)."""
    t0 = time.time()
    _check_out_is_not_input(opts)
    out = Path(opts.out_dir)
    with _signals(opts.handle_signals) as stop:
        lock = OutputLock(out)

        waited = [0.0]

        def acquire() -> float:
            w = lock.acquire(wait=opts.wait or opts.wait_timeout is not None, timeout=opts.wait_timeout,
                             should_stop=lambda: stop.requested, on_wait=log)
            waited[0] += w
            return w

        try:
            if out.is_dir():  # lock first, so a second run exits before loading anything
                acquire()
                prepared = prepare(opts)
            else:  # nothing to protect yet: check everything before creating the folder
                prepared = prepare(opts)
                _make_out(out)
                if acquire() > 0:  # the folder appeared and was busy: look at the input again
                    prepared = prepare(opts)
            return _run_locked(opts, out, lock, prepared, stop, log, t0, waited[0])
        finally:
            lock.release()


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None


def _run_locked(opts: RunOptions, out: Path, lock: OutputLock, prepared, stop: _Stop, log, t0: float,
                waited: float) -> RunResult:
    device, found, model, names, layer, ctx, methods = prepared
    emit = opts.on_event or (lambda event: None)
    timings = {"prepare": time.time() - t0 - waited}
    if waited:
        timings["wait"] = waited

    predict_cfg = {
        "arch": model.arch, "checkpoint_sha256": model.checkpoint_sha256, "input_size": model.input_size,
        "mean": model.mean, "std": model.std, "classes": names, "target": opts.target,
        "map_format": MAP_FORMAT_VERSION,
    }
    decision = model.decision
    if decision is not None and decision.one_logit:  # which class sigmoid(z) is changes every probability
        predict_cfg["one_logit_positive"] = decision.positive_name
    # Maps depend on the model (model_hash) and on each image's target class; the decision rule only moves
    # the prediction, so it sits in predict_hash alone: a new threshold re-decides from the stored
    # probabilities, and only images whose target class flips get new maps (see _plan).
    model_hash = _hash(predict_cfg)
    predict_hash = model_hash if decision is None else f"{model_hash}+{_hash(decision.config())}"
    method_hashes = {
        m.name: _hash({"predict": model_hash, "method": m.name, "config": m.config(),
                       "layer": layer.name if (layer and m.needs_activations) else None})
        for m in methods
    }
    config = {
        "xaibatch": __version__, "torch": torch.__version__, "device": str(device),
        "model": {**predict_cfg, "checkpoint": model.checkpoint},
        "layer": layer.name if layer else None, "layer_grid": list(layer.grid) if layer else None,
        "methods": {m.name: {"title": m.title, "signed": m.signed, "config": m.config(), "hash": method_hashes[m.name]}
                    for m in methods},
        "batch_size": opts.batch_size, "workers": opts.workers, "seed": opts.seed,
        "labeled": found.classes is not None, "class_names": names,
        "decision": decision.config() if decision is not None else None,
    }

    t_plan = time.time()
    manifest = Manifest(out / MANIFEST_NAME)
    run_id: int | None = None
    failed = list(found.skipped)
    tally = {"computed": 0, "done": 0}
    counts: dict[str, int] = {}
    try:
        # A previous run that died (SIGKILL, power) left its run row 'running' or its holder record in the
        # lock file, and maybe temporary files and files no committed row points at.
        killed = manifest.close_stale_runs()
        if killed or lock.previous:
            prev = lock.previous.get("pid") if lock.previous else None
            swept = sweep_temp_files(out, lambda pid: pid == prev or not pid_alive(pid))
            swept += sweep_orphans(out, manifest)
            who = f" ({describe(lock.previous)})" if lock.previous else ""
            log(f"xaibatch: the previous run{who} did not finish; cleaned {swept} leftover file(s), "
                "continuing where it stopped")
        known = manifest.images()
        known_maps = manifest.maps()
        known_failures = {rel for rel, _ in manifest.failures()}
        run_id = manifest.start_run(str(opts.input_dir), config, predict_hash)
        plan = _plan(found, known, known_maps, known_failures, predict_hash, method_hashes,
                     model_hash=model_hash, redecide=_redecider(model.decision, opts.target, predict_hash, run_id))
        counts = {
            "seen": len(found.images) + len(found.skipped), "added": len(plan["added"]),
            "changed": len(plan["changed"]), "removed": len(plan["removed"]),
            "unchanged": len(found.images) - len(plan["work"]), "failed": len(failed), "computed": 0,
        }
        emit({"event": "plan", "run_id": run_id, **{k: counts[k] for k in ("seen", "added", "changed", "removed",
                                                                          "unchanged")},
              "to_compute": len(plan["work"])})
        present = {e.rel for e in found.images} | {rel for rel, _ in found.skipped}
        maps_by_rel = _maps_by_rel(known_maps)
        stale = {rel: maps_by_rel.pop(rel, {}) for rel in plan["retarget"]}  # removed below, not again in _job
        discard = _files_of(plan["removed"], known, maps_by_rel)
        discard += _files_of([rel for rel, _ in found.skipped], known, maps_by_rel)
        discard += [p for rows in stale.values() for row in rows.values() for p in (row.npy, row.png, row.thumb) if p]
        with manifest.transaction():
            for row in plan["redecided"]:  # a new threshold: new predictions from the stored probabilities
                manifest.put_image(row)
            for rel, rows in stale.items():  # ... where the target class flipped, the maps explain the old one
                for m in rows:
                    manifest.remove_map(rel, m)
            manifest.remove_images(plan["removed"])  # rows first: a kill now leaves only unreferenced files
            manifest.remove_failures(r for r in known_failures if r not in present)
            for rel, reason in found.skipped:
                manifest.put_failure(rel, reason, run_id)
            for e in plan["touched"]:
                manifest.touch_image(e.rel, e.size, e.mtime_ns)
        _unlink_all(out, discard)
        for rel, reason in found.skipped:
            emit({"event": "failure", "path": rel, "reason": reason})
        timings["plan"] = time.time() - t_plan

        t_compute = time.time()
        if not stop.requested:
            _compute(opts, out, found, plan, known, maps_by_rel, names, methods, method_hashes, ctx, model,
                     predict_hash, run_id, failed, tally, stop, emit)
        timings["compute"] = time.time() - t_compute
        counts.update(failed=len(failed), computed=tally["computed"])
        stopped = stop.requested and tally["done"] < len(plan["work"])  # a signal in the last batch: all done
        status = "interrupted" if stopped else ("some-failed" if failed else "ok")
        manifest.finish_run(run_id, status, time.time() - t0, counts)
    except BaseException as e:
        sweep_temp_files(out, lambda pid: pid == os.getpid())  # what an error cut short in this process
        if run_id is not None:
            counts.update(failed=len(failed), computed=tally["computed"])
            bad = "interrupted" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "error"
            try:
                manifest.finish_run(run_id, bad, time.time() - t0, counts)
            except Exception:
                pass  # the original error matters more
        raise
    finally:
        manifest.close()

    from .report import write_report

    t_report = time.time()
    accuracy = _write_csv(out, names)  # before the report, which links to it
    report = write_report(out, template_dir=opts.template_dir)
    timings["report"] = time.time() - t_report
    result = RunResult(out, counts["seen"], counts["computed"], counts["unchanged"], counts["added"],
                       counts["changed"], counts["removed"], failed, time.time() - t0, report,
                       layer.name if layer else None, accuracy, status=status, run_id=run_id, timings=timings)
    if status == "interrupted":
        e = Interrupted(f"interrupted by {stop.name} after {counts['computed']} of {len(plan['work'])} image(s); "
                        "finished batches are saved, the next run computes the rest")
        e.result = result  # type: ignore[attr-defined]
        raise e
    return result


_TEMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$|^\.xaibatch-write-test\.(\d+)$")


def sweep_temp_files(out: Path, stale: Callable[[int], bool]) -> int:
    """Delete temporary files (``.<name>.<pid>.tmp``, see files.atomic_write_bytes) whose writer ``stale(pid)``.

    Walks the whole folder, so it runs only after an unclean stop; call it only while holding the lock.
    """
    n = 0
    stack = [out]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for ent in it:
                try:
                    if ent.is_dir(follow_symlinks=False):
                        stack.append(Path(ent.path))
                    elif (m := _TEMP_RE.match(ent.name)) and stale(int(m.group(1) or m.group(2))):
                        os.unlink(ent.path)
                        n += 1
                except OSError:
                    pass
    return n


_OWN_DIRS = ("images", "thumbs", "maps")
_OWN_SUFFIXES = (".png", ".npy")


def sweep_orphans(out: Path, manifest: Manifest) -> int:
    """Delete map/image files under images/, thumbs/, maps/ that no manifest row points at.

    A run killed after writing a batch's files but before committing its rows
    leaves such files; normally the next run rewrites them, but not if the image
    has left the input meanwhile. Only run after an unclean stop (it walks every file).
    """
    referenced = manifest.referenced_files()
    n = 0
    for top in _OWN_DIRS:
        root = out / top
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if not name.endswith(_OWN_SUFFIXES):
                    continue
                full = os.path.join(dirpath, name)
                rel = PurePosixPath(*Path(os.path.relpath(full, out)).parts).as_posix()
                if rel not in referenced:
                    try:
                        os.unlink(full)
                        n += 1
                    except OSError:
                        pass
    return n


def _maps_by_rel(known_maps: dict[tuple[str, str], MapRow]) -> dict[str, dict[str, MapRow]]:
    index: dict[str, dict[str, MapRow]] = defaultdict(dict)
    for (rel, m), row in known_maps.items():
        index[rel][m] = row
    return index


def _files_of(rels, known: dict[str, ImageRow], maps_by_rel: dict[str, dict[str, MapRow]]) -> list[str]:
    """Output files of these images as the manifest records them (their stored stem, not a recomputed one)."""
    paths: list[str] = []
    for rel in rels:
        for row in maps_by_rel.get(rel, {}).values():
            paths += [p for p in (row.npy, row.png, row.thumb) if p]
        row = known.get(rel)
        if row is not None:
            paths += [f"images/{row.stem}.png", f"thumbs/image/{row.stem}.png"]
    return paths


def _unlink_all(out: Path, paths) -> None:
    for p in paths:
        try:
            safe_join(out, p).unlink(missing_ok=True)
        except (OSError, UsageError):
            pass


def _plan(found: Scan, known: dict[str, ImageRow], known_maps: dict[tuple[str, str], MapRow],
          known_failures: set[str], predict_hash: str, method_hashes: dict[str, str], model_hash: str | None = None,
          redecide: Callable[[ImageRow], ImageRow] | None = None) -> dict[str, Any]:
    """Decide per image what must be (re)computed: size+mtime first, content hash only when those moved.

    Failed images are retried every run (they count as neither added nor changed). When only the
    decision rule changed (``predict_hash`` is ``model_hash+decision``), ``redecide`` gives the new row
    from the stored probabilities, with no forward pass; images whose target class it flips are listed
    in ``retarget`` and get every requested map anew (the caller removes their old maps).
    """
    added, changed, touched, redecided, retarget = [], [], [], [], []
    work: dict[str, tuple[ImageEntry, list[str], bool]] = {}
    # Size or mtime moved: hash those files (in parallel; hashlib releases the GIL) to tell a touch from an edit.
    suspects = [e for e in found.images
                if (row := known.get(e.rel)) is not None and (row.size != e.size or row.mtime_ns != e.mtime_ns)]
    same_content: dict[str, bool] = {}
    if suspects:
        def same(e: ImageEntry) -> bool:
            try:
                return file_sha256(e.path) == known[e.rel].sha256
            except OSError:
                return False

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            same_content = dict(zip((e.rel for e in suspects), pool.map(same, suspects)))
    for e in found.images:
        row = known.get(e.rel)
        content_same = False
        if row is not None:
            content_same = same_content.get(e.rel, True)
            if e.rel in same_content and content_same:
                touched.append(e)
        if row is None:
            if e.rel not in known_failures:
                added.append(e)
        elif not content_same:
            changed.append(e)
        fresh_prediction = row is None or not content_same or row.predict_hash != predict_hash
        flipped = False
        if (fresh_prediction and row is not None and content_same and redecide is not None
                and row.predict_hash.split("+")[0] == model_hash):  # same model, new threshold
            new = redecide(row)
            redecided.append(new)
            flipped = new.target != row.target
            if flipped:
                retarget.append(e.rel)
            fresh_prediction = False
        todo = [
            m for m, h in method_hashes.items()
            if fresh_prediction or flipped or (known_maps.get((e.rel, m)) is None)
            or known_maps[(e.rel, m)].config_hash != h
        ]
        if todo or fresh_prediction:
            work[e.rel] = (e, todo, fresh_prediction)
    present = {e.rel for e in found.images}
    removed = [r for r in known if r not in present]
    return {"added": added, "changed": changed, "touched": touched, "work": work, "removed": removed,
            "stems": assign_stems([e.rel for e in found.images], known), "redecided": redecided,
            "retarget": retarget}


def _redecider(decision, target: str, predict_hash: str, run_id: int | None) -> Callable[[ImageRow], ImageRow]:
    """A function giving an image's row under a new decision rule, from the probabilities it already has."""
    def redecide(row: ImageRow) -> ImageRow:
        pred = heads.predict_one(row.probs, decision)
        return replace(row, pred=pred, target=pred if target == "pred" else row.target,
                       confidence=float(row.probs[pred]), predict_hash=predict_hash, run_id=run_id or row.run_id)

    return redecide


def assign_stems(rels: list[str], known: dict[str, ImageRow]) -> dict[str, str]:
    """Output file stem per image: an image already in the manifest keeps its stem for good.

    A new image gets ``map_stems``' choice unless an existing image already uses
    it (``b.png`` known as ``b``, then ``b.jpg`` arrives: the newcomer is ``b.jpg``).
    """
    stems = {r: known[r].stem for r in rels if r in known}
    taken = set(stems.values())
    candidates = map_stems(rels)
    for r in rels:
        if r in stems:
            continue
        stem = candidates[r]
        if stem in taken:
            stem = r
        n = 1
        while stem in taken:
            stem, n = f"{r}~{n}", n + 1
        stems[r] = stem
        taken.add(stem)
    return stems


class _HashingDataset(torch.utils.data.Dataset):
    """Adds the sha256 of new and changed files, computed in the DataLoader worker just before decoding.

    Hashing before decoding (with size and mtime from the earlier scan) keeps the
    manifest self-correcting: if the file changes between hash and decode, its
    mtime no longer matches and the next run looks at it again.
    """

    def __init__(self, inner: ImageDataset, want_hash: list[bool]) -> None:
        self.inner = inner
        self.want_hash = want_hash

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sha = None
        if self.want_hash[i]:
            try:
                sha = file_sha256(self.inner.entries[i].path)
            except OSError as e:
                return {"index": i, "error": f"cannot read: {e.strerror or e}"}
        item = self.inner[i]
        item["sha256"] = sha
        return item


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    b = collate(items)
    b["sha256"] = [it.get("sha256") for it in items if it.get("error") is None]
    return b


def _compute(opts, out, found, plan, known, maps_by_rel, names, methods, method_hashes, ctx, model, predict_hash,
             run_id, failed, tally, stop: _Stop, emit) -> None:
    work = plan["work"]
    if not work:
        return
    stems = plan["stems"]
    # Images that need the same methods go through the model together.
    groups: dict[tuple[str, ...], list[ImageEntry]] = defaultdict(list)
    for e, todo, _fresh in work.values():
        groups[tuple(todo)].append(e)

    progress = None
    if opts.progress:
        from tqdm import tqdm

        progress = tqdm(total=len(work), unit="img", desc="xaibatch", dynamic_ncols=True)
    writer = _Writer(out, on_done=(progress.update if progress else (lambda n: None)),
                     threads=writer_threads(ctx.device, opts.workers))
    writer.start()
    try:
        for todo, entries in groups.items():
            group_methods = [m for m in methods if m.name in todo]
            explainer = Explainer(model, group_methods, ctx, opts.target)
            segmenters = [m.segmenter() for m in group_methods if m.segmenter() is not None]
            ds = _HashingDataset(ImageDataset(entries, model.input_size, segmenters[0] if segmenters else None),
                                 [work[e.rel][2] for e in entries])
            loader = torch.utils.data.DataLoader(
                ds, batch_size=opts.batch_size, shuffle=False, num_workers=opts.workers, collate_fn=_collate,
                pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                prefetch_factor=4 if opts.workers > 0 else None,
                worker_init_fn=_worker_init if opts.workers > 0 else None,
            )
            for b in loader:
                if writer.error is not None:
                    raise writer.error
                job_failed = [(entries[i].rel, reason) for i, reason in b["failed"]]
                failed.extend(job_failed)
                tally["done"] += len(job_failed) + len(b["index"])
                for rel, reason in job_failed:
                    emit({"event": "failure", "path": rel, "reason": reason})
                # Images that were fine before and fail now leave the report with their files.
                gone = _files_of([rel for rel, _ in job_failed], known, maps_by_rel) if job_failed else []
                if b["x"] is None:
                    writer.q.put({"items": [], "image_rows": [], "failed": job_failed, "run_id": run_id,
                                  "discard": gone})
                else:
                    batch_entries = [entries[i] for i in b["index"]]
                    labels = torch.tensor([e.label if e.label is not None else -1 for e in batch_entries])
                    seeds = [image_seed(e.rel) for e in batch_entries]
                    probs, maps = explainer(b["x"], labels, b["segments"], seeds)
                    probs_np = probs.cpu().numpy()
                    maps_np = {k: (v.cpu().numpy(), info) for k, (v, info) in maps.items()}
                    job = _job(batch_entries, b, probs_np, maps_np, group_methods, method_hashes, stems, work,
                               predict_hash, run_id, opts.target, job_failed, maps_by_rel, model.decision)
                    job["discard"] = job["discard"] + gone
                    writer.q.put(job)
                    tally["computed"] += len(batch_entries)
                if stop.requested:
                    break  # this batch is queued; the writer drains the queue below
            if stop.requested:
                break
    finally:
        writer.q.put(None)
        writer.join()
        if progress is not None:
            progress.close()
    if writer.error is not None:
        raise writer.error


def _job(entries, b, probs, maps, methods, method_hashes, stems, work, predict_hash, run_id, target, failed,
         maps_by_rel, decision=None):
    items, rows, drop, discard = [], [], [], []
    signed = {m.name: m.signed for m in methods}
    for j, e in enumerate(entries):
        p = probs[j]
        pred = heads.predict_one(p, decision)
        h, w = b["orig_size"][j]
        fresh = work[e.rel][2]
        if fresh:
            rows.append(ImageRow(
                rel=e.rel, stem=stems[e.rel], size=e.size, mtime_ns=e.mtime_ns, sha256=b["sha256"][j],
                width=w, height=h, label=e.label, pred=pred, target=pred if target == "pred" else int(e.label),
                confidence=float(p[pred]), probs=[round(float(v), 6) for v in p], predict_hash=predict_hash,
                run_id=run_id,
            ))
            # New content or a new model: maps of methods not requested this run describe the old picture.
            for m, row in maps_by_rel.get(e.rel, {}).items():
                if m not in maps:
                    drop.append((e.rel, m))
                    discard += [p for p in (row.npy, row.png, row.thumb) if p]
        per_method = {}
        for name, (arr, info) in maps.items():
            per_method[name] = (arr[j], signed[name], info[j] if info else None)
        items.append({
            "rel": e.rel, "stem": stems[e.rel], "display": b["display"][j], "orig_size": (h, w),
            "maps": per_method, "hashes": method_hashes, "write_image": fresh,
        })
    return {"items": items, "image_rows": rows, "failed": failed, "run_id": run_id, "drop_maps": drop,
            "discard": discard}


def _write_csv(out: Path, names: list[str]) -> float | None:
    """Write predictions.csv; return the accuracy over labeled images (None when there are none)."""
    import csv
    import io

    manifest = Manifest(out / MANIFEST_NAME)
    try:
        rows = manifest.images()
    finally:
        manifest.close()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "pred", "confidence", "correct", *[f"p_{n}" for n in names]])
    for rel in sorted(rows):
        r = rows[rel]
        label = names[r.label] if r.label is not None and r.label < len(names) else ""
        correct = "" if r.label is None else int(r.label == r.pred)
        w.writerow([rel, label, names[r.pred], f"{r.confidence:.6f}", correct, *[f"{v:.6f}" for v in r.probs]])
    atomic_write_bytes(out / "predictions.csv", buf.getvalue().encode())
    labeled = [r for r in rows.values() if r.label is not None]
    return sum(r.label == r.pred for r in labeled) / len(labeled) if labeled else None
