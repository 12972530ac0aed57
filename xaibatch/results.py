"""``xaibatch.open_results(OUT)``: what a run saved in an output folder, read back in a notebook.

::

    res = xaibatch.open_results("outputs/demo-test")
    res.classes, res.methods, res.model, res.last_run   # the folder's classes, methods (as recorded), model, last run
    wrong = res.where(correct=False, label="FAKE")      # ImageRecords: rel, label, pred, probs, maps, ...
    r = wrong[0]
    r.map("gradcam")                                    # the .npy as saved: float32, at the image's size
    r.overlay("gradcam")                                # the report's overlay, a PIL image
    r.heatmap("gradcam")                                # the map alone in the report's colours (Explanations')
    r.mask()                                            # the ground-truth mask beside the image (bool), or None
    r.maps["gradcam@label"].npy                         # --target pred,label: the true class's map, its path
    r.faithfulness["gradcam"].deletion                  # --faithfulness: the map's scores
    res.mean_map("gradcam", wrong)                      # those maps averaged (16 x 16), as the report's summary does
    res.to_pandas()                                     # one row an image (needs pandas)

Read only, and without a trace: the manifest is read once, as one committed state (:func:`manifest.read_snapshot`:
also while a run writes into the folder, also from a read-only copy), and nothing is ever written into the
folder. The files are read when asked for: a run since (a cron job's) may have deleted a map or written it again
at its path for a changed image; a file written after the read is checked against the manifest as it is now
(:class:`_Since`), and one that no longer belongs to its record is refused in one line, never read as its. Every path comes from the manifest (the stems and layout of the run that wrote it, ``layout.py``) and is
kept inside the folder (:func:`files.safe_join`); maps are read with ``allow_pickle=False``. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import layout, targets
from .bundle import Frozen
from .errors import ChangedSince, MissingOutput, UnknownName, UsageError, XaibatchError, did_you_mean
from .files import plain_relative, safe_join
from .manifest import ImageRow, Manifest, MapRow, RunRecord, commit_stamp, read_snapshot
from .report.data import History, class_names
from .report.text import class_name
from .runconfig import MethodRecord, ModelRecord, RunConfig
from .scan import LISTED_NAMES, listed, mask_rel

__all__ = ["Faithfulness", "ImageRecord", "MapPaths", "Results", "open_results"]


@dataclass(frozen=True)
class MapPaths:
    """One map's files: the array (``.npy``, float32 at the image's size) and the report's overlay, as absolute
    paths (``npy``, ``overlay``), made as they are asked for (a folder of 50,000 images holds 100,000 per method);
    ``npy_rel`` and ``overlay_rel``: relative to the folder, as the manifest and predictions.csv name them."""

    out: Path = field(repr=False)
    npy_rel: str
    overlay_rel: str
    made: tuple[int, str] | None = field(default=None, repr=False, compare=False)  # the row's (run_id, config_hash)

    @property
    def npy(self) -> Path:
        return self.out / self.npy_rel

    @property
    def overlay(self) -> Path:
        return self.out / self.overlay_rel


class Faithfulness(NamedTuple):
    """A map's faithfulness scores (``--faithfulness``): the areas under its deletion and insertion curves, as
    predictions.csv's ``deletion_<method>`` and ``insertion_<method>`` (a faithful map: low deletion, high
    insertion; docs/methods.md)."""

    deletion: float
    insertion: float


@dataclass(frozen=True)
class ImageRecord:
    """One image of an output folder, as its last prediction left it (predictions.csv's row, with its maps)."""

    rel: str  # its path relative to the input folder, as predictions.csv's ``path``
    label: str | None  # the true class (its class folder); None: an unlabeled folder
    pred: str  # the predicted class
    target: str  # the class the maps explain (``--target``: the prediction, or the label)
    probs: Mapping[str, float] = field(repr=False)  # class name -> probability (in the repr: see __repr__)
    confidence: float
    correct: bool | None  # None: no label
    earlier: bool  # predicted by an earlier model than the last run's (predictions.csv's ``earlier_model``)
    size: tuple[int, int]  # (width, height)
    sha256: str
    maps: Mapping[str, MapPaths]  # map key -> its files: each method, and ``<method>@label`` (--target pred,label)
    model_hash: str  # the model that predicted it (predictions.csv's ``model_hash``, the runs table's)
    faithfulness: Mapping[str, Faithfulness]  # map key -> its scores, for the maps scored (``--faithfulness``)
    out: Path = field(repr=False, compare=False)  # the folder: every file read is checked to resolve inside it
    input_dir: Path | None = field(repr=False, compare=False, default=None)
    signed: Mapping[str, bool] = field(repr=False, compare=False, default_factory=Frozen)  # method -> signed maps
    since: _Since | None = field(repr=False, compare=False, default=None)  # is a file read still this record's?

    def __repr__(self) -> str:
        """The dataclass's repr, with ``probs`` in full up to scan.LISTED_NAMES classes, else the likeliest few: a
        1000-class model's record was 24 KB of probabilities in a notebook cell."""
        probs = repr(self.probs)
        if len(self.probs) > LISTED_NAMES:
            top = sorted(self.probs.items(), key=lambda kv: -kv[1])[:3]
            probs = f"<{len(self.probs)} classes, likeliest {', '.join(f'{k!r}: {v:g}' for k, v in top)}>"
        shown = [
            f"{f.name}={probs if f.name == 'probs' else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.repr or f.name == "probs"
        ]
        return f"ImageRecord({', '.join(shown)})"

    @property
    def source(self) -> Path | None:
        """Where the image was read: the input folder's absolute path joined with rel (it may be gone since)."""
        return self.input_dir / self.rel if self.input_dir is not None else None

    def map(self, method: str) -> np.ndarray:
        """The map as saved: a float32 array at the image's size (up to --max-map-side)."""
        files = self.files(method)
        with self._open(method, files, files.npy_rel) as f:
            return np.load(f, allow_pickle=False)

    def overlay(self, method: str) -> Any:
        """The report's overlay of the map (at most 512 px a side), a PIL image."""
        from PIL import Image

        files = self.files(method)
        with self._open(method, files, files.overlay_rel) as f, Image.open(f, formats=["PNG"]) as im:
            im.load()
            return im

    def _open(self, method: str, files: MapPaths, rel: str) -> Any:
        """One of the map's files, open: refused when it is gone, or when a run wrote it again since the folder
        was read (checked on the very file opened, so a run replacing it meanwhile changes nothing read)."""
        path = self._inside(rel)
        since = self.since
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if since is not None and (n := since.changed(self.rel, method, files.made)) is not None:
                raise MissingOutput(since.gone(path, self.rel, method, n)) from None
            raise _missing(path, self.rel, method) from None
        try:
            if since is not None and os.fstat(f.fileno()).st_mtime > since.after:
                if (n := since.changed(self.rel, method, files.made)) is not None:
                    raise ChangedSince(since.rewritten(path, self.rel, method, n))
        except BaseException:
            f.close()
            raise
        return f

    def heatmap(self, method: str) -> Any:
        """The map alone in the report's colours, a PIL image at the map's size: as ``Explanations.heatmap``
        draws it (signed maps symmetric around 0; unsigned ones stretched to their 99th percentile)."""
        from PIL import Image

        from .overlay import colorize, stretch

        m = self.map(method)
        signed = self.signed.get(targets.method_of(method))
        if signed is None:  # a method the folder's records lost: signed when it holds a negative value
            signed = bool(m.size and m.min() < 0)
        return Image.fromarray(colorize(m if signed else stretch(m), signed))

    def mask(self) -> np.ndarray | None:
        """The image's ground-truth mask, as the report's localization reads it: ``<name>.mask.npy`` beside the
        image in the input folder (``demo-data`` writes one beside each FAKE image), True where marked; None when
        the image has none. Read as user data (never unpickled, no FIFO, inside the input folder)."""
        from .report.detail import BadArray, read_array

        if self.input_dir is None or not self.input_dir.is_dir():
            raise UsageError(
                f"the input folder {self.input_dir or '(not recorded)'} is not there (moved, renamed, or the output "
                f"folder copied from another machine): the mask of {self.rel!r} cannot be read"
            )
        rel = mask_rel(self.rel)
        try:
            return read_array(self.input_dir, rel) != 0
        except BadArray as e:
            if str(e) == "missing":
                return None
            raise UsageError(f"{self.input_dir / rel} is not read as a ground-truth mask: {e}") from None

    def _inside(self, rel: str) -> Path:
        """``OUT/rel``, refused when a link under the folder leads it outside (files.safe_join's rule, as read)."""
        try:
            return safe_join(self.out, rel)
        except UsageError:
            raise UsageError(f"refusing to read {self.out / rel}: a link leads it outside {self.out}") from None

    def files(self, method: str) -> MapPaths:
        """The map's files; an image without that map is one line naming the ones it has."""
        try:
            return self.maps[method]
        except KeyError:
            pass
        have = ", ".join(self.maps) or "none"
        why = (
            "; true-class maps are made only for misclassified images (--target pred,label)"
            if targets.is_label_key(method)
            else ""
        )
        raise UnknownName(f"{self.rel!r} has no {method!r} map (its maps: {have}){why}")


class Results:
    """An output folder's images, maps and run record, as :func:`open_results` read them (one committed state).

    ``len(res)`` images, ``for r in res`` each :class:`ImageRecord` (sorted by path), ``res[rel]`` one (``res[i]``:
    the i-th in that order), ``rel in res``, :meth:`where` a selection; ``res.failures``: rel -> why each file that
    could not be read was skipped."""

    def __init__(
        self,
        out: Path,
        images: dict[str, ImageRow],
        maps: dict[tuple[str, str], MapRow],
        failures: list[tuple[str, str]],
        history: History,
        input_dir: str | None,
        since: _Since | None = None,
    ) -> None:
        self.out = out
        self._since = since
        run = history.run
        self.config: RunConfig | None = run  # the last run's record (None: no run, or a damaged record)
        self.last_run: RunRecord | None = history.last  # the last run that ended: status, counts, seconds, input
        newest = history.runs[-1] if history.runs else None
        # a run not ended when the folder was read: writing into it (its images so far are here), or killed
        self.running: RunRecord | None = newest if newest is not None and not newest.ended else None
        self.model: ModelRecord | None = run.model if run is not None else None
        self.input_dir: Path | None = Path(input_dir) if input_dir else None
        self.classes: tuple[str, ...] = tuple(class_names(run, images))
        self.target: str = run.target_mode() if run is not None else "pred"
        keys = {key for _rel, key in maps}
        latest = run.methods if run is not None else {}
        names = [n for n in latest if n in keys or targets.label_key(n) in keys]
        names += sorted({targets.method_of(k) for k in keys} - set(names))
        found = {n: latest.get(n) or history.older_methods.get(n) for n in names}
        self.methods: Mapping[str, MethodRecord] = Frozen({n: r for n, r in found.items() if r is not None})
        self._signed = Frozen({n: r.signed for n, r in self.methods.items()})
        self.map_keys: tuple[str, ...] = tuple(k for n in names for k in (n, targets.label_key(n)) if k in keys)
        self.failures: Mapping[str, str] = Frozen(dict(failures))
        per_image: dict[str, dict[str, MapPaths]] = {}
        scores: dict[str, dict[str, Faithfulness]] = {}
        self._grids: dict[tuple[str, str], str] = {}  # (rel, key) -> the map's summary grid (overlay.grids_batch)
        for (rel, key), row in maps.items():
            if isinstance(row.view, dict) and isinstance(row.view.get("grid"), str):
                self._grids[rel, key] = row.view["grid"]
            per_image.setdefault(rel, {})[key] = MapPaths(
                self.out, _plain(self.out, row.npy), _plain(self.out, row.png), (row.run_id, row.config_hash)
            )
            if row.deletion is not None and row.insertion is not None:
                scores.setdefault(rel, {})[key] = Faithfulness(row.deletion, row.insertion)
        # the scored map keys, in predictions.csv's order of its deletion_/insertion_ columns
        self.scored: tuple[str, ...] = tuple(sorted({k for per in scores.values() for k in per}))
        order = {k: i for i, k in enumerate(self.map_keys)}
        self._order: list[ImageRecord] | None = None  # the records in path order, for res[i]
        self._records = {
            rel: self._record(
                row,
                history,
                {k: v for k, v in sorted(per_image.get(rel, {}).items(), key=lambda kv: order[kv[0]])},
                scores.get(rel, {}),
            )
            for rel, row in sorted(images.items())
        }

    def _record(
        self, row: ImageRow, history: History, maps: dict[str, MapPaths], scores: dict[str, Faithfulness]
    ) -> ImageRecord:
        names = list(self.classes)
        label = class_name(names, row.label)
        pred = class_name(names, row.pred) or ""
        return ImageRecord(
            rel=row.rel,
            label=label,
            pred=pred,
            target=class_name(names, row.target) or "",
            probs=Frozen(zip(names, row.probs)),
            confidence=row.confidence,
            correct=None if row.label is None else row.label == row.pred,
            earlier=history.earlier(row.predict_hash),
            size=(row.width, row.height),
            sha256=row.sha256,
            maps=Frozen(maps),
            model_hash=row.predict_hash,
            faithfulness=Frozen(scores),
            out=self.out,
            input_dir=self.input_dir,
            signed=self._signed,
            since=self._since,
        )

    # -- reading -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self._records.values())

    def __contains__(self, rel: object) -> bool:
        return (Path(rel).as_posix() if isinstance(rel, os.PathLike) else rel) in self._records

    def __getitem__(self, rel: str | int) -> ImageRecord:
        """An image by its path under the input folder (``res["FAKE/a.png"]``, a ``Path`` too) or by its position
        in path order (``res[0]``, ``res[-1]``: as ``Explanations`` numbers its images)."""
        if isinstance(rel, os.PathLike):
            rel = Path(rel).as_posix()
        if not isinstance(rel, str):
            return self._at(rel)
        try:
            return self._records[rel]
        except KeyError:
            pass
        if rel in self.failures:
            raise UnknownName(f"{rel!r} could not be read by the run ({self.failures[rel]}): it has no prediction")
        raise UnknownName(f"no image {rel!r} in {self.out}{did_you_mean(rel, self._records)}")

    def _at(self, i: Any) -> ImageRecord:
        try:
            k = operator.index(i)  # ints, numpy's
        except TypeError:
            k = None
        if k is None or isinstance(i, bool):
            raise UsageError(f"an image is its path (a str) or its position (an int), not {type(i).__name__}")
        n = len(self)
        if not -n <= k < n:
            raise UsageError(f"image index {k} out of range: {n} images" + (f" (0..{n - 1})" if n else ""))
        if self._order is None:
            self._order = list(self._records.values())
        return self._order[k]

    def __repr__(self) -> str:
        running = self.running
        busy = f"; run {running.id} had not ended (writing, or killed): open again for more" if running else ""
        return (
            f"Results({str(self.out)!r}: {len(self)} images, {len(self.failures)} failed, "
            f"classes={listed(list(self.classes))}, maps={list(self.map_keys)}{busy})"
        )

    def where(self, **equal: Any) -> list[ImageRecord]:
        """The images whose fields equal the values given, in path order: ``where(correct=False, label="FAKE")``;
        anything else is a list comprehension over ``res``. A class name or field that does not exist is refused."""
        fields = [name for name, f in ImageRecord.__dataclass_fields__.items() if f.repr]
        for name, value in equal.items():
            if name not in fields:
                raise UnknownName(f"ImageRecord has no field {name!r}{did_you_mean(name, fields)}")
            if name in ("label", "pred", "target") and value is not None and value not in self.classes:
                raise UnknownName(f"no class {value!r} in {self.out}{did_you_mean(str(value), self.classes)}")
        return [r for r in self if all(getattr(r, k) == v for k, v in equal.items())]

    def map(self, image: str | int | ImageRecord, method: str) -> np.ndarray:
        """``res[rel].map(method)``: the map as saved (float32, the image's size); ``method@label``: the true class's."""
        return self._image(image, method).map(method)

    def overlay(self, image: str | int | ImageRecord, method: str) -> Any:
        """``res[rel].overlay(method)``: the report's overlay, a PIL image."""
        return self._image(image, method).overlay(method)

    def heatmap(self, image: str | int | ImageRecord, method: str) -> Any:
        """``res[rel].heatmap(method)``: the map alone in the report's colours, a PIL image."""
        return self._image(image, method).heatmap(method)

    def mean_map(self, method: str, images: Iterable[str | int | ImageRecord] | None = None) -> np.ndarray:
        """The ``method`` maps of ``images`` (records, paths or positions; default: every image) averaged as the
        report's summary averages a gallery group's: each map as its overlay shows it (divided by its display scale,
        clipped to [0, 1], signed maps to [-1, 1]) over a 16 x 16 grid of its image, from the grid stored with it
        (no ``.npy`` is read). A (16, 16) float64 array; maps stored before the grids existed are left out."""
        from .overlay import read_grids

        self._check_method(method)
        chosen = self if images is None else [self._image(i, method) for i in images]
        grids = [g for r in chosen if (g := self._grids.get((r.rel, method))) is not None]
        if not grids:
            raise XaibatchError(
                f"no {method!r} map of these images has a summary grid in {self.out} (maps stored by an xaibatch "
                "before the report's mean maps have none; a run that recomputes them adds it)"
            )
        return read_grids(grids).mean(axis=0, dtype=np.float64)

    def _image(self, image: str | int | ImageRecord, method: str) -> ImageRecord:
        self._check_method(method)
        return image if isinstance(image, ImageRecord) else self[image]

    def _check_method(self, method: str) -> None:
        if method not in self.map_keys:
            have = ", ".join(self.map_keys) or "none"
            raise UnknownName(f"no {method!r} maps in {self.out} (it has: {have})")

    def to_pandas(self) -> Any:
        """One row an image: predictions.csv's columns (``path`` the index; the same names, in its order) and each
        map's ``.npy`` and overlay path, absolute, as strings. Needs pandas (not a dependency of xaibatch)."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("to_pandas() needs pandas: pip install pandas") from None
        rows = []
        for r in self:
            row: dict[str, Any] = {"path": r.rel, "label": r.label, "pred": r.pred, "confidence": r.confidence}
            row["correct"] = r.correct
            row.update({f"p_{c}": p for c, p in r.probs.items()})
            for k in self.scored:
                f = r.faithfulness.get(k)
                row[f"deletion_{k}"] = f.deletion if f else None
                row[f"insertion_{k}"] = f.insertion if f else None
            row["model_hash"] = r.model_hash
            row["earlier_model"] = r.earlier
            for k in self.map_keys:
                files = r.maps.get(k)
                row[f"npy_{k}"] = str(files.npy) if files else None
                row[f"overlay_{k}"] = str(files.overlay) if files else None
            rows.append(row)
        return pd.DataFrame(rows).set_index("path") if rows else pd.DataFrame(rows)


def open_results(out: str | Path) -> Results:
    """Read the output folder ``out`` of ``xaibatch run`` (its manifest, once): see :class:`Results`."""
    out = Path(out)
    path = out / layout.MANIFEST
    if not path.is_file():
        what = "no such folder" if not out.exists() else f"no {layout.MANIFEST} there"
        raise UsageError(f"{out} is not an xaibatch output folder ({what}): give the --out of xaibatch run")

    def read(m: Manifest) -> tuple[Any, ...]:
        history = History.read(m)
        return m.images(), m.maps(), m.failures(), history, m.get_meta("input_dir")

    read_at = time.time()
    images, maps, failures, history, input_dir = read_snapshot(path, read)
    if not input_dir:  # older folders: what the last run recorded
        input_dir = history.recorded_input() or None
    newest = history.runs[-1] if history.runs else None
    # a file older than this was there when the rows were read: a run writing then wrote its files before their rows
    after = min(read_at, newest.started_at if newest is not None and not newest.ended else read_at) - _CLOCK_SLACK
    absolute = Path(os.path.abspath(out))
    return Results(absolute, images, maps, failures, history, input_dir, _Since(absolute, path, after))


_CLOCK_SLACK = 2.0  # seconds: mtimes of a coarse file system (FAT: 2 s), or a file server's clock a little behind


class _Since:
    """Whether a map's file still belongs to the record ``open_results`` made of it: the manifest read again, now,
    for that one row (a run since may have computed the map again at the same path, or removed it). Asked only of
    a file written after the folder was read (``after``) or gone: files as they were cost nothing more."""

    def __init__(self, out: Path, manifest: Path, after: float) -> None:
        self.out, self.manifest, self.after = out, manifest, after
        self._stamp: tuple[Any, ...] | None = None
        self._rows: dict[tuple[str, str], tuple[int, str] | None] = {}  # the rows read at _stamp

    def changed(self, rel: str, key: str, made: tuple[int, str] | None) -> int | None:
        """The run that changed the map since the read (0: one that removed it, its number unknown), None: it did
        not (or the manifest cannot be read now: the record stands as it was)."""
        now = self._row(rel, key)
        if now is False or made is None or now == made:
            return None
        return 0 if now is None else now[0]

    def _row(self, rel: str, key: str) -> tuple[int, str] | None | bool:
        try:
            stamp = commit_stamp(self.manifest)
            if stamp != self._stamp:
                self._stamp, self._rows = stamp, {}
            if (rel, key) not in self._rows:
                self._rows[rel, key] = read_snapshot(self.manifest, lambda m: m.map_made(rel, key))
            return self._rows[rel, key]
        except (XaibatchError, OSError):
            return False

    def gone(self, path: Path, rel: str, method: str, run: int) -> str:
        by = f"run {run}" if run else "a run"
        return (
            f"{path} is missing ({method!r} map of {rel!r}): {by} removed it after open_results read {self.out} "
            "(the image left the input folder, changed, or is being computed again): open_results again for the "
            "folder as it is now"
        )

    def rewritten(self, path: Path, rel: str, method: str, run: int) -> str:
        return (
            f"{path} was written again by run {run} after open_results read {self.out} (the image or the settings "
            f"changed): it is no longer the {method!r} map of this record of {rel!r}; open_results again for the "
            "folder as it is now"
        )


def _plain(out: Path, rel: str) -> str:
    """A path the manifest names, refused unless plain and relative (no ``..``, not absolute); where links under
    the folder lead is checked as a file is read (ImageRecord._inside)."""
    if not plain_relative(rel):
        raise UsageError(f"{out}: the manifest names {rel!r}, outside the folder; refusing to read it")
    return rel


def _missing(path: Path, rel: str, method: str) -> MissingOutput:
    return MissingOutput(
        f"{path} is missing ({method!r} map of {rel!r}): deleted, or not copied with the folder; "
        "xaibatch run makes it again"
    )
