"""``xaibatch run`` as a library call: plan, stream, explain, write, report.

The work is planned against the manifest first (which images are new, changed,
gone; which of their maps are missing or stale), then only that work streams
through the model: DataLoader workers decode, the device computes one shared
forward per batch plus what each method needs, and a writer thread saves maps
and commits the manifest one batch per transaction while the next batch runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import MAP_FORMAT_VERSION, __version__
from .data import ImageDataset, ImageEntry, Scan, collate, scan
from .errors import InputError, UsageError, XaibatchError
from .files import safe_join, save_npy, save_png
from .layers import TargetLayer, capture, find_target_layer
from .manifest import FILENAME as MANIFEST_NAME
from .manifest import ImageRow, Manifest, MapRow
from .methods import METHODS, Batch, Method, ModelContext, create_method
from .model import LoadedModel, load_model, resolve_device
from .overlay import overlay, thumbnail
from .resources import default_checkpoint


@dataclass
class RunOptions:
    input_dir: Path
    out_dir: Path
    methods: list[str]
    checkpoint: Path | None = None  # None: the bundled default model
    arch: str | None = None
    image_size: int | None = None
    target_layer: str | None = None
    target: str = "pred"  # pred | label
    batch_size: int = 32
    device: str = "auto"
    workers: int = 0
    labeled: bool | None = None  # None: decide from the folder layout
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    template_dir: Path | None = None
    progress: bool = False


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
    report: Path
    layer: str | None
    accuracy: float | None

    def summary_line(self) -> str:
        return (
            f"xaibatch: {self.seen} images seen, {self.computed} computed, {self.unchanged} unchanged, "
            f"{len(self.failed)} failed, {self.removed} removed, {self.seconds:.1f}s -> {self.report}"
        )


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_seed(seed: int, rel: str) -> int:
    """A seed per image that depends only on --seed and the image's path, not on batching."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{rel}".encode()).digest()[:4], "little")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


class _Writer(threading.Thread):
    """Writes maps and commits manifest rows, one batch per transaction, off the compute thread."""

    def __init__(self, out_dir: Path, on_done: Callable[[int], None]) -> None:
        super().__init__(name="xaibatch-writer", daemon=True)
        self.out_dir = out_dir
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.on_done = on_done

    def run(self) -> None:
        manifest = Manifest(self.out_dir / MANIFEST_NAME)
        try:
            while (job := self.q.get()) is not None:
                if self.error is None:
                    try:
                        self._write(manifest, job)
                    except BaseException as e:  # surfaced by the main thread
                        self.error = e
        finally:
            manifest.close()

    def _write(self, manifest: Manifest, job: dict[str, Any]) -> None:
        maps_rows: list[MapRow] = []
        for item in job["items"]:
            stem = item["stem"]
            display = item["display"]
            if item["write_image"]:
                save_png(safe_join(self.out_dir, f"images/{stem}.png"), _pil(display))
                save_png(safe_join(self.out_dir, f"thumbs/image/{stem}.png"), thumbnail(_pil(display)))
            h, w = item["orig_size"]
            for name, (m, signed, info) in item["maps"].items():
                full = _resize(m, (h, w), signed)
                npy = f"maps/{name}/{stem}.npy"
                png = f"maps/{name}/{stem}.png"
                thumb = f"thumbs/{name}/{stem}.png"
                save_npy(safe_join(self.out_dir, npy), full)
                pic = overlay(display, m, signed)
                save_png(safe_join(self.out_dir, png), pic)
                save_png(safe_join(self.out_dir, thumb), thumbnail(pic))
                maps_rows.append(MapRow(item["rel"], name, item["hashes"][name], npy, png, thumb, info, job["run_id"]))
        with manifest.transaction():
            for row in job["image_rows"]:
                manifest.put_image(row)
            for row in maps_rows:
                manifest.put_map(row)
            for rel, reason in job["failed"]:
                manifest.put_failure(rel, reason, job["run_id"])
        self.on_done(len(job["items"]) + len(job["failed"]))


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
        targets = probs.argmax(1) if self.target == "pred" else labels.to(dev)
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
    if Path(opts.out_dir).resolve() == Path(opts.input_dir).resolve():  # bad-input: maps must not become inputs
        raise UsageError(f"--out {opts.out_dir} is INPUT_DIR itself: the next run would read its maps as images; "
                         f"choose another folder, e.g. --out {Path(opts.input_dir) / 'xaibatch'}")
    found = scan(opts.input_dir, opts.labeled)
    if opts.target == "label" and found.classes is None:
        raise UsageError("--target label needs a labeled folder (ImageFolder layout); use --target pred")
    model = load_model(_checkpoint_path(opts), opts.arch, opts.image_size, len(found.classes or []) or None)
    names = class_names_for(model, found)
    model.module.to(device).eval()
    methods_wanted = list(dict.fromkeys(opts.methods))
    needs_layer = any(METHODS[m].needs_activations for m in methods_wanted) or opts.target_layer is not None
    layer = find_target_layer(model.module, model.input_size, opts.target_layer) if needs_layer else None
    ctx = ModelContext(
        model=model.module, layer=layer, input_size=model.input_size, mean=model.mean, std=model.std, device=device
    )
    methods = [create_method(m, ctx, **opts.method_options.get(m, {})) for m in methods_wanted]
    return device, found, model, names, layer, ctx, methods


def run(opts: RunOptions, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> RunResult:
    t0 = time.time()
    device, found, model, names, layer, ctx, methods = prepare(opts)
    out = Path(opts.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".xaibatch-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None

    predict_cfg = {
        "arch": model.arch, "checkpoint_sha256": model.checkpoint_sha256, "input_size": model.input_size,
        "mean": model.mean, "std": model.std, "classes": names, "target": opts.target,
        "map_format": MAP_FORMAT_VERSION,
    }
    predict_hash = _hash(predict_cfg)
    method_hashes = {
        m.name: _hash({"predict": predict_hash, "method": m.name, "config": m.config(),
                       "layer": layer.name if (layer and m.needs_activations) else None, "seed": opts.seed})
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
    }

    manifest = Manifest(out / MANIFEST_NAME)
    try:
        known = manifest.images()
        known_maps = manifest.maps()
        run_id = manifest.start_run(str(opts.input_dir), config, predict_hash)
        plan = _plan(found, known, known_maps, predict_hash, method_hashes)
        with manifest.transaction():
            _remove(out, manifest, plan["removed"], known_maps)
            for rel, reason in found.skipped:
                manifest.put_failure(rel, reason, run_id)
            for e in plan["touched"]:
                manifest.touch_image(e.rel, e.size, e.mtime_ns)
        failed = list(found.skipped)
        computed = _compute(opts, out, found, plan, names, methods, method_hashes, ctx, model, predict_hash,
                            run_id, failed, log)
        seconds = time.time() - t0
        counts = {
            "seen": len(found.images), "added": len(plan["added"]), "changed": len(plan["changed"]),
            "removed": len(plan["removed"]), "unchanged": len(found.images) - len(plan["work"]),
            "failed": len(failed), "computed": computed,
        }
        manifest.finish_run(run_id, "some-failed" if failed else "ok", seconds, counts)
    finally:
        manifest.close()

    from .report import write_report

    report = write_report(out, template_dir=opts.template_dir)
    _write_csv(out, names)
    acc = None
    return RunResult(out, counts["seen"], computed, counts["unchanged"], counts["added"], counts["changed"],
                     counts["removed"], failed, time.time() - t0, report, layer.name if layer else None, acc)


def _plan(found: Scan, known: dict[str, ImageRow], known_maps: dict[tuple[str, str], MapRow],
          predict_hash: str, method_hashes: dict[str, str]) -> dict[str, Any]:
    """Decide per image what must be (re)computed: size+mtime first, content hash only when those moved."""
    added, changed, touched = [], [], []
    work: dict[str, tuple[ImageEntry, list[str], bool]] = {}
    for e in found.images:
        row = known.get(e.rel)
        content_same = False
        if row is not None:
            if row.size == e.size and row.mtime_ns == e.mtime_ns:
                content_same = True
            else:
                try:
                    content_same = file_sha256(e.path) == row.sha256
                except OSError:
                    content_same = False
                if content_same:
                    touched.append(e)
        if row is None:
            added.append(e)
        elif not content_same:
            changed.append(e)
        fresh_prediction = row is None or not content_same or row.predict_hash != predict_hash
        todo = [
            m for m, h in method_hashes.items()
            if fresh_prediction or (known_maps.get((e.rel, m)) is None) or known_maps[(e.rel, m)].config_hash != h
        ]
        if todo or fresh_prediction:
            work[e.rel] = (e, todo, fresh_prediction)
    present = {e.rel for e in found.images}
    removed = [r for r in known if r not in present]
    return {"added": added, "changed": changed, "touched": touched, "work": work, "removed": removed}


def _remove(out: Path, manifest: Manifest, rels: list[str], known_maps: dict[tuple[str, str], MapRow]) -> None:
    """Images gone from the input leave the report: their rows and files are deleted."""
    gone = set(rels)
    for (rel, _m), row in known_maps.items():
        if rel in gone:
            for p in (row.npy, row.png, row.thumb):
                if p:
                    safe_join(out, p).unlink(missing_ok=True)
    stems = map_stems(rels)
    for rel in rels:
        for p in (f"images/{stems[rel]}.png", f"thumbs/image/{stems[rel]}.png"):
            safe_join(out, p).unlink(missing_ok=True)
    manifest.remove_images(rels)


def _compute(opts, out, found, plan, names, methods, method_hashes, ctx, model, predict_hash, run_id, failed,
             log) -> int:
    work = plan["work"]
    if not work:
        return 0
    stems = map_stems([e.rel for e in found.images])
    # Images that need the same methods go through the model together.
    groups: dict[tuple[str, ...], list[ImageEntry]] = defaultdict(list)
    for e, todo, _fresh in work.values():
        groups[tuple(todo)].append(e)

    progress = None
    if opts.progress:
        from tqdm import tqdm

        progress = tqdm(total=len(work), unit="img", desc="xaibatch", dynamic_ncols=True)
    writer = _Writer(out, on_done=(progress.update if progress else (lambda n: None)))
    writer.start()
    computed = 0
    try:
        for todo, entries in groups.items():
            group_methods = [m for m in methods if m.name in todo]
            explainer = Explainer(model, group_methods, ctx, opts.target)
            segmenters = [m.segmenter() for m in group_methods if m.segmenter() is not None]
            ds = ImageDataset(entries, model.input_size, segmenters[0] if segmenters else None)
            loader = torch.utils.data.DataLoader(
                ds, batch_size=opts.batch_size, shuffle=False, num_workers=opts.workers, collate_fn=collate,
                pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                prefetch_factor=4 if opts.workers > 0 else None,
            )
            for b in loader:
                if writer.error is not None:
                    raise writer.error
                job_failed = [(entries[i].rel, reason) for i, reason in b["failed"]]
                failed.extend(job_failed)
                if b["x"] is None:
                    writer.q.put({"items": [], "image_rows": [], "failed": job_failed, "run_id": run_id})
                    continue
                batch_entries = [entries[i] for i in b["index"]]
                labels = torch.tensor([e.label if e.label is not None else -1 for e in batch_entries])
                seeds = [image_seed(opts.seed, e.rel) for e in batch_entries]
                probs, maps = explainer(b["x"], labels, b["segments"], seeds)
                probs_np = probs.cpu().numpy()
                maps_np = {k: (v.cpu().numpy(), info) for k, (v, info) in maps.items()}
                job = _job(batch_entries, b, probs_np, maps_np, group_methods, method_hashes, stems, work,
                           predict_hash, run_id, opts.target, job_failed)
                writer.q.put(job)
                computed += len(batch_entries)
    finally:
        writer.q.put(None)
        writer.join()
        if progress is not None:
            progress.close()
    if writer.error is not None:
        raise writer.error
    return computed


def _job(entries, b, probs, maps, methods, method_hashes, stems, work, predict_hash, run_id, target, failed):
    items, rows = [], []
    signed = {m.name: m.signed for m in methods}
    for j, e in enumerate(entries):
        p = probs[j]
        pred = int(p.argmax())
        h, w = b["orig_size"][j]
        fresh = work[e.rel][2]
        if fresh:
            rows.append(ImageRow(
                rel=e.rel, stem=stems[e.rel], size=e.size, mtime_ns=e.mtime_ns, sha256=file_sha256(e.path), width=w, height=h,
                label=e.label, pred=pred, target=pred if target == "pred" else int(e.label), confidence=float(p[pred]),
                probs=[round(float(v), 6) for v in p], predict_hash=predict_hash, run_id=run_id,
            ))
        per_method = {}
        for name, (arr, info) in maps.items():
            per_method[name] = (arr[j], signed[name], info[j] if info else None)
        items.append({
            "rel": e.rel, "stem": stems[e.rel], "display": b["display"][j], "orig_size": (h, w),
            "maps": per_method, "hashes": method_hashes, "write_image": fresh,
        })
    return {"items": items, "image_rows": rows, "failed": failed, "run_id": run_id}


def _write_csv(out: Path, names: list[str]) -> None:
    import csv
    import io

    from .files import atomic_write_bytes

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
        label = names[r.label] if r.label is not None else ""
        correct = "" if r.label is None else int(r.label == r.pred)
        w.writerow([rel, label, names[r.pred], f"{r.confidence:.6f}", correct, *[f"{v:.6f}" for v in r.probs]])
    atomic_write_bytes(out / "predictions.csv", buf.getvalue().encode())
