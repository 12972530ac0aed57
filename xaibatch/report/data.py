"""Build the report's data from the manifest (coverage.py's way: data first, rendering second)."""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


from .. import layout, targets
from ..files import file_sha256
from ..scan import MASK_SUFFIX
from ..manifest import ImageRow, Manifest, MapRow, RunCounts, RunRecord, RunStatus
from ..resources import DEFAULT_MODEL_IMAGE_SIZE as DEMO_SIZE
from ..resources import default_checkpoint
from ..runconfig import BUNDLED, LEGACY_SUPERPIXELS, BadRecord, MethodRecord, RunConfig, read_run
from .cards import group_cards, make_card, masks_beside, paginate
from .paging import Paging
from .metrics import add_metrics, decision_summary, decision_words
from .meanmaps import map_grids, mean_maps
from . import model  # model.PAGE_SIZE read at call time: tests shrink it
from .model import CARD_THUMB_PX, WEAK_SIGNED_SCALE, Card, MethodInfo, ReportData
from .text import card_captions, css_gradient, fmt_seconds, fmt_time, fmt_value


def method_infos(history: History, present: set[str]) -> list[MethodInfo]:
    """The latest run's methods first, then any method still in the manifest from older runs."""
    latest = history.run.methods if history.run is not None else {}
    present = {p for p in present if not targets.is_label_key(p)}  # a method's true-class maps: not a method
    names = list(latest) + sorted(present - set(latest))
    out = []
    for name in names:
        rec = latest.get(name) or history.older_methods.get(name)
        if rec is None:  # maps in the manifest with no run's record of their method
            out.append(_method_info(name, name, False, {}, name in LEGACY_SUPERPIXELS))
        else:
            out.append(_method_info(name, rec.title, rec.signed, rec.config, rec.superpixels))
    for m, caption in zip(out, card_captions([m.title for m in out])):
        m.caption = caption
    return out


def _method_info(name: str, title: str, signed: bool, config: dict[str, Any], superpixels: bool) -> MethodInfo:
    """A method's words: what its colours and numbers mean (LIME's superpixels, or per-pixel attributions)."""
    if not signed:
        legend = "bright = more important, dark = less important (the photo shows through where the map is low)"
        scale = (
            "map value (0 to 1 in the .npy); the colour saturates at the 99th percentile of the map as drawn "
            "(resampled to the picture's size: within a few % of the .npy's own)"
        )
        note = ""
    elif superpixels:
        legend = (
            "red = evidence for the explained class, blue = evidence against it; the stronger the evidence, the more "
            "opaque the colour, and where a superpixel has no effect the overlay is transparent (the photo shows "
            "through)"
        )
        scale = (
            "LIME coefficient, in probability units of the explained class; the scale is symmetric, set by this "
            "image's strongest superpixel"
        )
        note = (
            "each picture is scaled to its own strongest superpixel; the card prints that scale (±x, in probability "
            f"units), and “⚠ weak” marks maps under {WEAK_SIGNED_SCALE:g}, whose full colours overstate tiny effects"
        )
    else:
        legend = (
            "red = pixels that raise the explained class's score, blue = pixels that lower it; the larger the "
            "attribution, the more opaque the colour, and where it is near zero the photo shows through"
        )
        scale = (
            "attribution, in the model's logit units of the explained class; the scale is symmetric, set by this "
            "image's strongest pixel"
        )
        note = "each picture is scaled to its own strongest pixel; the card prints that scale (±x, in logit units)"
    return MethodInfo(
        name=name,
        title=title,
        signed=signed,
        settings=[(str(k), fmt_value(v)) for k, v in config.items()],
        legend=legend,
        gradient=css_gradient(signed),
        scale_words=scale,
        superpixels=superpixels,
        scale_note=note,
    )


def target_words(mode: str) -> str:
    """What a run's maps explain, in words (its --target)."""
    if targets.by_label(mode):
        return "the folder's label"
    if targets.label_maps(mode):
        return "the predicted class, and for a misclassified image also its true class"
    return "the predicted class"


def _config_rows(config: RunConfig | None, last: RunRecord | None) -> list[tuple[str, str]]:
    config = config or RunConfig.empty()
    model = config.model
    sha = str(model.checkpoint_sha256 or "")
    grid = config.layer_grid
    rows = [
        ("Model architecture", fmt_value(model.arch)),
        ("Checkpoint", fmt_value(model.checkpoint)),
        ("Checkpoint sha256", sha[:12] if sha else "–"),
        ("Input size", f"{model.input_size} px" if model.input_size else "–"),
        ("Classes", _classes_words(config.class_names)),
        ("Maps explain", target_words(config.target_mode())),
        ("Decision", decision_words(config.decision)),
        ("Target layer", fmt_value(config.layer)),
        ("Layer grid", "×".join(str(g) for g in grid) if grid else "–"),
        ("Input folder", fmt_value(last.input_dir if last else None)),
        ("Device", fmt_value(config.device or None)),
        ("Batch size", fmt_value(config.batch_size)),
        ("Decode workers", fmt_value(config.workers)),
        ("Seed", fmt_value(config.seed)),
        ("Versions", f"xaibatch {config.xaibatch or '–'}, torch {config.torch or '–'}"),
    ]
    return rows


def _classes_words(names: list[str] | None) -> str:
    """The configuration's classes: their names, or as many as ImageNet's only their number (the overview lists them)."""
    if names and len(names) > model.CONFUSION_MAX_CLASSES:
        return f"{len(names):,} (their names: Overview, Classes)"
    return fmt_value(names or None)


def config_caption(config: RunConfig | None, last: RunRecord | None) -> str:
    """What the settings rows are: the last run's, or, when it found nothing to compute and loaded no model, those of
    the run with the same request that did (RunConfig.settings_of), whose settings it recorded."""
    if config is None or config.loaded_model or last is None:
        return "The last run's settings"
    if config.settings_of is None:  # recorded by an older xaibatch: the device and batch size of a run that had none
        return f"The last run's settings (run {last.id} found nothing to compute and loaded no model)"
    return (
        f"The settings of run {config.settings_of}, the latest run with the same options that loaded the model; the last "
        f"run, run {last.id}, found nothing to compute and loaded no model"
    )


COUNTS = tuple(f.name for f in fields(RunCounts))  # the runs table's n_* columns, as the manifest names them


def _run_row(r: RunRecord) -> dict[str, Any]:
    counts = list(r.counts().values())
    if r.status == RunStatus.KILLED and not any(counts):  # closed by an older xaibatch, which counted nothing
        counts = [None] * len(COUNTS)
    row = {
        "id": r.id,
        "started": fmt_time(r.started_at),
        "status": r.status,
        "reason": r.reason,  # why it ended "error" (the line it exited with); shown on hover
        "seconds": fmt_seconds(r.seconds),
        # NULL: not recorded (a killed run's failures, or what a run killed before its plan found)
        **{k: "unknown" if v is None else v for k, v in zip(COUNTS, counts, strict=True)},
    }
    if r.n_resumed is None and row["seen"] != "unknown":  # an older xaibatch's row: counted as unchanged
        row["resumed"] = "–"
    return row


HISTORY_ROWS = 1000  # the run history lists this many of the latest runs (a cron job every 15 minutes: 10 days)
OLDER_PROBLEMS = 100  # ... and this many of the older runs that did not end ok


@dataclass
class History:
    """The latest runs, how many there are, the configuration of the last one (the summary's run table and
    settings) and what older runs recorded of the methods the folder still holds maps of.

    A year of runs every 15 minutes is 35,000 rows: reading (and listing) each of them made every unchanged re-run
    of such a folder 3 s and 270 MB; the report reads the latest ``HISTORY_ROWS`` and older ones only while a
    method's record is missing."""

    runs: list[RunRecord]  # the latest HISTORY_ROWS, oldest first
    older_problems: list[RunRecord]  # older runs that did not end ok, newest first (at most OLDER_PROBLEMS)
    total: int
    statuses: dict[str, int]  # every run's status: how many
    last: RunRecord | None  # the last run that ended (RunRecord.ended), else the last one
    run: RunConfig | None  # the last run's configuration (None: no run, or a damaged record)
    older_methods: dict[str, MethodRecord]  # the latest record of each method with maps that the last run lacks
    map_methods: set[str]  # the manifest's map keys (methods, and their "@label" maps), read once
    # read_rows: images per predict hash (the model that predicted them), and words for the earlier models
    predicted: Counter[str] = field(default_factory=Counter)
    models: dict[str, str] = field(default_factory=dict)  # an earlier predict hash -> its model, in words

    @classmethod
    def read(cls, manifest: Manifest) -> History:
        runs = manifest.runs(newest=HISTORY_ROWS)
        statuses = manifest.run_statuses()
        last = next((r for r in reversed(runs) if r.ended), runs[-1] if runs else None)
        try:
            run = read_run(last) if last else None
        except BadRecord:
            run = None
        latest = run.methods if run is not None else {}
        map_methods = manifest.map_methods()
        missing = {targets.method_of(k) for k in map_methods} - set(latest)
        older: dict[str, MethodRecord] = {}
        for r in manifest.runs_newest_first() if missing else ():
            try:
                recorded = read_run(r).methods
            except BadRecord:
                continue
            older.update({name: recorded[name] for name in missing & recorded.keys()})
            missing -= recorded.keys()
            if not missing:
                break
        problems = manifest.runs_not_ok(runs[0].id, OLDER_PROBLEMS) if runs else []
        return cls(runs, problems, sum(statuses.values()), statuses, last, run, older, map_methods)

    @property
    def config(self) -> dict[str, Any]:
        """The configuration as recorded (the report's key and ReportData.config)."""
        return self.run.to_dict() if self.run is not None else {}

    @property
    def predict_hash(self) -> str:
        """The last run's predict hash: what its model and decision rule give the images it predicts."""
        return (self.last.predict_hash if self.last else "") or ""

    def earlier(self, predict_hash: str) -> bool:
        """Whether an image predicted under ``predict_hash`` holds an earlier model's prediction, not the last run's
        model's (its card is marked, the numbers leave it out, predictions.csv says so); never without a last run."""
        return bool(self.predict_hash) and predict_hash != self.predict_hash

    def read_models(self, manifest: Manifest, images: dict[str, ImageRow]) -> None:
        """Count the images per predict hash, and name the model of each earlier hash that the images hold (a
        look-up in the runs table for each of the EARLIER_NAMED most common: a few, whatever the images)."""
        self.predicted = Counter(r.predict_hash for r in images.values())
        self.models = {}
        for h, _n in self.predicted.most_common():
            if not self.earlier(h):
                continue
            if len(self.models) == EARLIER_NAMED:
                break
            self.models[h] = earlier_model_words(h, manifest.newest_run_with(h), self)

    @property
    def input_dir(self) -> str:
        return (self.last.input_dir if self.last else "") or ""

    def recorded_input(self) -> str:
        """The last run's input folder as recorded: the absolute path its record holds, else (an older record) its
        row's, as given (relative to where that run started); "" when none."""
        return (self.run.input_dir if self.run is not None else None) or self.input_dir

    def source(self) -> Path | None:
        """The last run's input folder while it is still there (ground-truth masks are read from it)."""
        path = self.recorded_input()
        return Path(path) if path and os.path.isdir(path) else None

    def apply(self, data: ReportData) -> None:
        """Set what changes with every run: the run table, the last run and the settings rows."""
        data.runs = [_run_row(r) for r in reversed(self.runs)]
        data.runs_total = self.total
        data.older_problems = [_run_row(r) for r in self.older_problems]
        data.run_statuses = sorted(self.statuses.items(), key=lambda kv: (-kv[1], kv[0]))
        data.last_run = _run_row(self.last) if self.last else None
        data.config = self.config
        data.config_rows = _config_rows(self.run, self.last)
        data.config_caption = config_caption(self.run, self.last)


def build(out_dir: Path) -> ReportData:
    """Read the manifest and compute everything the templates show. O(n) apart from the sorts."""
    m = Manifest(Path(out_dir) / layout.MANIFEST)
    try:
        history = History.read(m)
        rows = read_rows(m, history)
    finally:
        m.close()
    images = rows[0]
    return assemble(out_dir, *rows, history, masks_beside(history.source(), images))


def read_rows(
    m: Manifest, history: History
) -> tuple[dict[str, ImageRow], dict[tuple[str, str], MapRow], list[tuple[str, str]]]:
    """The manifest's image, map and failure rows, and (into ``history``) which models predicted the images."""
    images = m.images()
    history.read_models(m, images)
    return images, m.maps(), m.failures()


EARLIER_NAMED = 3  # the summary names this many of the earlier models whose predictions the images still hold

# what a predict hash covers (runconfig.ModelRecord.hashed), in words: what else an earlier model had
_SETTING_WORDS = {
    "arch": "architecture",
    "input_size": "input size",
    "mean": "normalization",
    "std": "normalization",
    "classes": "class list",
    "target": "--target",
    "map_format": "map format (an older xaibatch)",
    "one_logit_positive": "positive class",
    "one_logit_output": "output reading",
    "output": "output reading",
    "code_sha256": "factory code",
}


def model_words(run: RunConfig) -> str:
    """A run's model in a few words: the bundled demo model, or its architecture and checkpoint, and its sha256."""
    m = run.model
    if run.source is not None and run.source.kind == BUNDLED:
        name = "the bundled demo model"
    else:
        name = ", ".join(str(x) for x in (m.arch, m.checkpoint) if x) or "an unrecorded model"
    sha = m.checkpoint_sha256 or ""
    return f"{name} (sha256 {sha[:12]})" if sha else name


def earlier_model_words(predict_hash: str, row: RunRecord | None, history: History) -> str:
    """The model of an earlier predict hash, in words, from ``row`` (the newest run that recorded the hash)."""
    if predict_hash.split("+")[0] == history.predict_hash.split("+")[0]:  # plan.config_hashes: model+decision
        return "the same model under an earlier decision rule"
    try:
        run = read_run(row) if row is not None else None
    except BadRecord:
        run = None
    if run is None:
        return "an earlier model that no run row records"
    words = model_words(run)
    now = history.run
    sha = run.model.checkpoint_sha256
    if now is not None and sha and sha == now.model.checkpoint_sha256:  # the same weights: what else differed
        a, b = run.model.hashed(), now.model.hashed()
        other = dict.fromkeys(_SETTING_WORDS.get(k, k) for k in {**a, **b} if a.get(k) != b.get(k))
        words += f" with another {', '.join(other)}" if other else " under earlier settings"
    return words


def class_names(run: RunConfig | None, images: dict[str, ImageRow]) -> list[str]:
    """The run's class names, then "class <i>" for any class its images' probabilities have beyond them."""
    names: list[str] = list((run or RunConfig.empty()).class_names)
    k = max(len(names), len(next(iter(images.values())).probs) if images else 0)
    return names + [f"class {i}" for i in range(len(names), k)]


def assemble(
    out_dir: Path,
    images: dict[str, ImageRow],
    maps: dict[tuple[str, str], MapRow],
    failures: list[tuple[str, str]],
    history: History,
    masks: dict[str, str],
    saved_pages: Paging | None = None,
) -> ReportData:
    """The report's data from the manifest's rows; ``masks``: cards.masks_beside of the input folder;
    ``saved_pages``: the last write's gallery pages (paging.py), which the cards are put into.

    Consumes the rows: each image's rows leave ``images`` and ``maps`` once its card is made, so a big report
    never holds the rows and all the cards at once (the rows take more memory than the cards)."""
    run = history.run or RunConfig.empty()
    names = class_names(run, images)
    methods = method_infos(history, {meth for _rel, meth in maps})
    labeled = any(r.label is not None for r in images.values())
    from .trust import build_trust

    # Images whose predictions an earlier model made (a run with another model stopped before it recomputed them)
    # are shown, and marked; the numbers are over the last run's model's images alone (earlier_summary).
    predicted = history.predicted
    if sum(predicted.values()) != len(images):  # rows not read by read_rows
        predicted = Counter(r.predict_hash for r in images.values())
    earlier = {h: n for h, n in predicted.items() if history.earlier(h)}
    words = {h: history.models.get(h) or "an earlier model" for h in earlier}  # the cards' words
    measured = {rel: r for rel, r in images.items() if r.predict_hash not in earlier} if earlier else images

    # what needs all the rows, before the cards consume them
    trust = build_trust(
        Path(out_dir),
        measured,
        maps,
        methods,
        labeled,
        run.model.checkpoint_sha256,
        run.faithfulness,
        run.faithfulness_hashes,
    )
    decision = decision_summary(run.decision, names, measured)
    del measured  # a copy: it would keep every row alive while the cards consume them
    samples = lime_samples(maps)

    input_dir = history.input_dir
    source = history.source()
    coverage = method_coverage(methods, maps, len(images), history)
    grids = map_grids(maps, methods)
    cards = [_take_card(rel, images, maps, names, methods, masks, words) for rel in sorted(images)]
    groups, sections = group_cards(cards, names, labeled)
    order, pages, anchors = paginate(groups, sections, labeled, saved_pages)
    data = ReportData(
        title=f"xaibatch report: {Path(input_dir).name or input_dir or 'no run yet'}",
        labeled=labeled,
        total=len(order),
        class_names=names,
        methods=methods,
        failures=failures,
        cards=order,
        groups=groups,
        pages=pages,
        sections=sections,
        page_size=model.PAGE_SIZE,
        card_width=(1 + len(methods)) * (CARD_THUMB_PX + 4) + 24,
        target_words=target_words(run.model.target),
        input_dir=source,
        gallery_first=pages[0].path,
        paging=anchors,
    )
    history.apply(data)
    data.earlier = earlier_summary(earlier, history.models, order, history.run)
    data.decision = decision  # before add_metrics: its threshold sets the confidence bins
    add_metrics(data, [c for c in order if not c.earlier] if earlier else order)
    warning = demo_model_warning(run, order, source is not None)
    if warning:
        data.warnings.append(warning)
    data.trust = trust
    data.lime_samples = samples
    data.coverage = coverage
    data.mean_maps = mean_maps(groups, grids, methods, run.target_mode())
    return data


def earlier_summary(
    earlier: dict[str, int], named: dict[str, str], cards: list[Card], run: RunConfig | None
) -> dict[str, Any] | None:
    """What the summary says of the images an earlier model predicted (None: there are none): how many, by which
    models (``named``: History.models), the last run's model, and their own accuracy (the headline numbers leave
    them out)."""
    if not earlier:
        return None
    n, total = sum(earlier.values()), len(cards)
    by: Counter[str] = Counter()
    for h, k in earlier.items():
        by[named.get(h) or "other earlier models"] += k
    scored = [c for c in cards if c.earlier and c.correct is not None]
    correct = sum(1 for c in scored if c.correct)
    return {
        "images": n,
        "of": total,
        "measured": total - n,
        "models": [[w, k] for w, k in sorted(by.items(), key=lambda wk: (-wk[1], wk[0]))],
        "last": model_words(run) if run is not None else "the last run's model",
        "scored": len(scored),
        "correct": correct,
        "accuracy": correct / len(scored) if scored else None,
        "scope": f"over the {total - n:,} of {total:,} images predicted by the last run's model",
    }


def method_coverage(
    methods: list[MethodInfo], maps: dict[tuple[str, str], MapRow], images: int, history: History
) -> dict[str, str]:
    """What the summary says of each method whose maps do not cover every image, or that the last run did not ask
    for ("40 of 41 images; not asked by the last run"): a method dropped from a cron job's command keeps its
    older maps, and the images added since have none of it."""
    counts = Counter(meth for _rel, meth in maps)
    asked = set(history.run.methods) if history.run is not None else None
    out: dict[str, str] = {}
    for m in methods:
        n = counts.get(m.name, 0)
        words = [f"{n:,} of {images:,} images"] if n < images else []
        if asked is not None and m.name not in asked:
            words.append("not asked by the last run")
        if words:
            out[m.name] = "; ".join(words)
    return out


def _take_card(
    rel: str,
    images: dict[str, ImageRow],
    maps: dict[tuple[str, str], MapRow],
    names: list[str],
    methods: list[MethodInfo],
    masks: dict[str, str],
    earlier: dict[str, str],
) -> Card:
    """The image's card; its image and map rows leave ``images`` and ``maps``. ``earlier``: the words of each
    earlier model's predict hash (see assemble)."""
    row = images.pop(rel)
    card = make_card(row, names, methods, maps, masks, earlier.get(row.predict_hash, ""))
    for m in methods:
        maps.pop((rel, m.name), None)
        maps.pop((rel, targets.label_key(m.name)), None)
    return card


def lime_samples(maps: dict[tuple[str, str], MapRow]) -> dict[str, Any] | None:
    """How many samples LIME's maps used (mean, median, min, max) and their median noise; None without LIME."""
    info = [row.info for (_rel, meth), row in maps.items() if meth == "lime" and row.info and "samples" in row.info]
    if not info:
        return None
    n = sorted(int(i["samples"]) for i in info)
    noise = sorted(float(i["noise"]) for i in info if i.get("noise") is not None)
    mid = len(n) // 2
    return {
        "maps": len(n),
        "mean": round(sum(n) / len(n)),
        "min": n[0],
        "max": n[-1],
        "median": n[mid] if len(n) % 2 else round((n[mid - 1] + n[mid]) / 2),
        "noise": f"{noise[len(noise) // 2]:.3f}" if noise else None,
    }


@functools.lru_cache(maxsize=4)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def bundled_model_sha256() -> str | None:
    """SHA-256 of the bundled demo checkpoint (hashed once per process while the file is unchanged)."""
    try:
        p = default_checkpoint()
        st = p.stat()
        return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def demo_model_warning(config: RunConfig, cards: list[Card], input_readable: bool) -> str | None:
    """A warning when the bundled demo model was applied to a folder that does not look like demo data.

    The test is simple on purpose: every demo image is 32x32, and every demo
    FAKE image has its ground-truth mask (``<name>.mask.npy``) beside it. A
    folder with any other size, or without a single mask, is not the demo set.
    """
    sha = config.model.checkpoint_sha256
    if not cards or not sha or sha != bundled_model_sha256():
        return None
    reasons = []
    other = sum(1 for c in cards if (c.width, c.height) != (DEMO_SIZE, DEMO_SIZE))
    if other:
        reasons.append(f"{other:,} of {len(cards):,} images are not {DEMO_SIZE}x{DEMO_SIZE} (every demo image is)")
    if input_readable and not any(c.mask_key for c in cards):
        reasons.append(
            f"none of the {len(cards):,} images has a ground-truth mask (<name>{MASK_SUFFIX}) beside it "
            "(every demo FAKE image has one)"
        )
    if not reasons:
        return None
    return (
        "These predictions and maps come from the bundled demo model, which was trained only on "
        "xaibatch demo-data (synthetic 32x32 images), but this folder does not look like demo data: "
        + "; ".join(reasons)
        + ". They say nothing reliable about these images: pass your own --checkpoint."
    )
