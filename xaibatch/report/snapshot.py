"""When nothing the report shows per image has changed, a run re-renders only its run history.

The gallery and detail pages, the figures, the skipped-files page and predictions.csv depend on the
manifest's image, map and failure rows (whose every change moves ``meta.content_version``, kept by
triggers: see manifest.py), the last run's settings and predict hash (which images an earlier model
predicted), the ground-truth masks beside the images, the
faithfulness and sanity files, and the templates. :func:`inputs` hashes all of that into one key.
While the key matches the one saved with the report and the report's files are all in place,
render.py re-renders index.html and history.html from the summary saved with the key instead of
rebuilding a card per image: coverage.py's "nothing changed" check, one level above the per-page
fingerprints. A cron re-run over an unchanged 20,000-image folder then renders two pages.

The summary is plain JSON (never pickle: the output folder may be shared), read back into the
dataclasses the summary page shows, without their cards. A ``--template-dir`` may show anything, so
runs with one always build everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .. import __version__, layout
from ..manifest import Manifest
from ..resources import templates_dir
from ..scan import mask_rel
from ..evaluation.sanity_file import SanityCurve, SanityResult
from .trust import FaithRow, Trust, Verdict
from . import model
from .cards import masks_beside
from .data import History, method_infos
from .localization import PointingGame
from .meanmaps import MeanMap, MethodMeans
from .model import FINGERPRINT_VERSION, GalleryPage, Group, MethodInfo, ReportData

SUMMARY_VERSION = 10  # bump when ReportData's summary fields change meaning (2: coverage, 3: earlier, 4: SanityResult,
# 5: faithfulness verdicts name the chance map, give the gains, flag maps failing sanity; chance-images row, fill note;
# 6: the pointing game per method; 7: predictions.csv's npy_<method> columns, which only a full build writes;
# 8: the mean maps; 9: confusion_shown, the matrix over confusion_names; 10: a --threshold run's confidence bins
# start at min(t, 1 - t) and print 3 decimals where 2 are not their edges, a confusion row without images has
# no shares, no share rounds onto 100 % or 0 %,
# the faithfulness gains keep the digits of a standard error under 0.0005, the pointing game leaves out an earlier
# model's maps, the chance rows only where the image's model scored them; only the last run's faithfulness
# settings' scores)
# shown only in the settings rows, rendered every run (settings_of: a run that loaded no model, whose settings)
VOLATILE_CONFIG = ("device", "batch_size", "workers", "settings_of")
PER_RUN = (
    "runs",
    "runs_total",
    "older_problems",
    "run_statuses",
    "last_run",
    "config",
    "config_rows",
    "config_caption",
)  # History.apply sets these every run
NOT_SAVED = ("cards", "paging", *PER_RUN)


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def templates_key(template_dir: Path | None) -> str:
    """A hash of every template file that could be used: any edit re-renders every page."""
    h = hashlib.sha256(f"{FINGERPRINT_VERSION}".encode())
    for base in ([template_dir] if template_dir is not None else []) + [templates_dir()]:
        for p in sorted(Path(base).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(base)).encode("utf-8", "surrogatepass") + b"\0" + p.read_bytes())
    return h.hexdigest()[:20]


@dataclass
class Inputs:
    """What the report is built from, short of the image and map rows, and the key over all of it."""

    history: History
    masks: dict[str, str]  # cards.masks_beside
    key: str


def inputs(
    out: Path, manifest: Manifest, history: History, template_dir: Path | None, kept: dict[str, Any] | None = None
) -> Inputs:
    """``kept``: the ground truths the last write drew (PageWriter.truth_cache); while the input folder is not there
    (deleted, renamed, or the output folder copied to another machine) its masks are taken as they were then."""
    source = history.source()
    masks = masks_beside(source, manifest.image_rels()) if source is not None else kept_masks(kept or {})
    config = {k: v for k, v in history.config.items() if k not in VOLATILE_CONFIG}
    methods = method_infos(history, history.map_methods)
    st = os.stat(out / layout.MANIFEST)
    trust_files = [_signature(out / name) for name in (layout.FAITH_CHANCE, layout.SANITY)]
    key = fingerprint(
        SUMMARY_VERSION,
        __version__,
        model.PAGE_SIZE,
        templates_key(template_dir),
        manifest.content_version(),
        st.st_dev,
        st.st_ino,  # another manifest moved in: not ours
        sorted(config.items()),
        history.predict_hash,  # which of the images' predictions are the last run's model's (data.earlier_summary)
        [dataclasses.astuple(m) for m in methods],
        history.input_dir,
        history.source() is not None,
        sorted(masks.items()),
        trust_files,
    )
    return Inputs(history, masks, key)


def kept_masks(truths: dict[str, Any]) -> dict[str, str]:
    """cards.masks_beside as it was when these ground truths (image -> [key, truth record, mask key], see
    render._truth) were read from the input folder."""
    return {
        mask_rel(rel): entry[2]
        for rel, entry in truths.items()
        if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str) and entry[2]
    }


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def save(data: ReportData) -> dict[str, Any]:
    """The summary page's data as JSON-ready values: everything but the cards and what History.apply sets."""
    out: dict[str, Any] = {f.name: getattr(data, f.name) for f in fields(ReportData) if f.name not in NOT_SAVED}
    out["methods"] = [dataclasses.asdict(m) for m in data.methods]
    out["groups"] = [{f.name: getattr(g, f.name) for f in fields(Group) if f.name != "cards"} for g in data.groups]
    out["pages"] = [{f.name: getattr(p, f.name) for f in fields(GalleryPage) if f.name != "blocks"} for p in data.pages]
    out["trust"] = dataclasses.asdict(data.trust) if data.trust is not None else None
    out["localization"] = [dataclasses.asdict(r) for r in data.localization]
    out["mean_maps"] = [dataclasses.asdict(m) for m in data.mean_maps]
    out["input_dir"] = str(data.input_dir) if data.input_dir is not None else None
    return out


def _sanity(saved: dict[str, Any] | None) -> SanityResult | None:
    return None if saved is None else SanityResult(**{**saved, "curves": [SanityCurve(**c) for c in saved["curves"]]})


def load(saved: dict[str, Any]) -> ReportData | None:
    """A ReportData without cards from :func:`save`'s output; None when it does not fit (another version)."""
    try:
        d = dict(saved)
        d["methods"] = [MethodInfo(**m) for m in d["methods"]]
        d["groups"] = [Group(**g, cards=[]) for g in d["groups"]]
        d["pages"] = [GalleryPage(**p, blocks=[]) for p in d["pages"]]
        if d["trust"] is not None:
            t = d["trust"]
            d["trust"] = Trust(
                **{
                    **t,
                    "faith": [FaithRow(**f) for f in t["faith"]],
                    "verdicts": [Verdict(**v) for v in t.get("verdicts", [])],
                    "sanity": _sanity(t["sanity"]),
                }
            )
        d["localization"] = [PointingGame(**r) for r in d["localization"]]
        d["mean_maps"] = [MethodMeans(**{**m, "groups": [MeanMap(**g) for g in m["groups"]]}) for m in d["mean_maps"]]
        d["input_dir"] = Path(d["input_dir"]) if d["input_dir"] is not None else None
        return ReportData(**d, cards=[])  # History.apply sets the per-run fields
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
