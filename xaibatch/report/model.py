"""What the report shows, as plain data: its sizes and limits, and one dataclass per thing on a page."""

from __future__ import annotations

import functools

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote


from .. import __version__, layout


PAGE_SIZE = 200  # cards per gallery page: a first build's; later ones keep pages between PAGE_SIZE // 4 and 2 * PAGE_SIZE (paging.py)


DETAIL_MIN_SIDE = 256  # the detail page shows images at least this large (pixelated when upscaled)


# ... and no thinner than 1:DETAIL_MAX_ASPECT: a 10000x20 web banner (display copy 512x1) or a 1 px line is drawn
# stretched to it, not 0 or 1 px across
DETAIL_MAX_ASPECT = 8


CARD_THUMB_PX = 88  # thumbnails on cards are drawn this large (the files are <= 128 px)


MAX_PROBS_SHOWN = 10  # class probabilities on a detail page (the most likely ones)


CONFUSION_MAX_CLASSES = 30  # above this the summary lists the most frequent confusions instead, only the classes
# that occur in its tables, and folds the class names away (ImageNet's 1000 made the summary 37,000 px tall)
CONFUSION_PRINT_COMPACT = 10  # a printed matrix over more classes keeps only its counts, its names upright (report.css)


FINGERPRINT_VERSION = 5  # bump when what a detail page shows changes without a template change


CALIBRATION_BINS = 10


HISTOGRAM_BINS = 20


TEMPLATE_NAMES = (
    "base.html",
    "_macros.html",
    "_runs_table.html",
    "_failures_table.html",
    layout.INDEX,
    "gallery.html",
    "detail.html",
    layout.HISTORY,
    layout.SKIPPED,
)


ASSET_NAMES = ("report.css", "report.js", "detail.js", "icon.svg")  # under assets/ in a template folder


# each method's maximum on the ground-truth figure (bright on photos, none of them the region's green)
MARKER_COLOURS = ("#00e5ff", "#ff2bd6", "#ffe600", "#ff7a00", "#ffffff", "#ff3b3b")


TRUTH_MAX_SIDE = 128  # the ground-truth region is drawn on a grid at most this large


MAX_ARRAY_BYTES = 256 << 20  # a map or mask file larger than this is not read for the detail page


WEAK_SIGNED_SCALE = 0.01  # a signed (LIME) map whose strongest superpixel moves the probability less is flagged


# What a map's per-image facts (MapRow.info) mean, for the detail page.
INFO_WORDS = {
    "segments": "superpixels (SLIC regions) that LIME switched on and off in its perturbed samples; "
    "each pixel's value is its superpixel's coefficient",
    "score": "R² of LIME's weighted linear fit on those samples: how well the coefficients reproduce the "
    "model's probabilities (near 1: faithful; near 0: read this map with care)",
    "intercept": "the fit's probability of the explained class with every superpixel hidden",
    "samples": "perturbed images (model forwards) LIME used for this map; with --lime-samples auto, where the "
    "map became stable",
    "noise": "how unsettled the coefficients still are: their root-mean-square standard error over their spread "
    "across the superpixels (--lime-samples auto stops at or below its tolerance, 0.1 by default; "
    "0.3 or more: the ranking of the superpixels is still uncertain)",
}


OWNED_DIRS = ("gallery", "detail")  # every *.html in these is the report's; stale ones are removed


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*")


def url(rel_path: str) -> str:
    """Percent-encode a relative file path for an href/src (keeps '/')."""
    if _URL_SAFE.fullmatch(rel_path):  # the common case, several per image: skip quote()
        return rel_path
    return quote(rel_path, safe="/")


def up(rel_page: str) -> str:
    """The relative prefix from a page (``detail/a/b.html``) back to the report root (``../../``)."""
    return "../" * rel_page.count("/")


@dataclass(slots=True)
class MethodInfo:
    name: str
    title: str
    signed: bool
    settings: list[tuple[str, str]]
    legend: str  # what the colours mean, in words
    gradient: str  # a CSS linear-gradient of the colour map
    scale_words: str = ""  # what the numbers under the colour bar are
    bar: str = ""  # report-root-relative url of the method's colour bar (one SVG per method, not per image)
    superpixels: bool = True  # signed maps: LIME's (a superpixel's effect on the probability; WEAK_SIGNED_SCALE
    # applies), else per-pixel attributions in the model's logit units (captum), never flagged weak
    scale_note: str = ""  # signed maps: the gallery's line on the scale each card prints
    caption: tuple[
        str, ...
    ] = ()  # the gallery card's caption under the map, cut where it may break (text.card_captions)


@dataclass(slots=True)
class MapView:
    method: str
    title: str
    m: MethodInfo = field(repr=False)  # the method's legend; part of the site fingerprint, not the card's
    png: str  # urls relative to the report root
    thumb: str
    npy: str
    info: list[tuple[str, str, str]]  # (key, value, what it means)
    config_hash: str = ""  # a recomputed map (same paths, new numbers) changes the card, so its page
    scale: float | None = None  # the value drawn at full colour (MapRow.view; None: unknown)
    scale_text: str = ""  # the same, as the page prints it (3 significant digits)
    peak: list[int] | None = None  # [row, column] of the map's maximum (MapRow.view)
    shape: list[int] | None = None  # the saved map's [height, width]
    mag: str = ""  # signed maps: "±0.0006", the scale the gallery prints under the card
    zero: bool = False  # the map is zero everywhere (MapRow.view): it shows no colour at all
    nowhere: bool = False  # ... or no evidence for the class anywhere (signed, none positive): its peak means nothing
    weak: str = ""  # signed maps whose scale is under WEAK_SIGNED_SCALE, or a map zero everywhere: the warning
    deletion: str | None = None  # faithfulness AUCs, "0.123" (also the gallery's sort keys)
    insertion: str | None = None
    curves: tuple[str, str] | None = None  # SVG polyline points of the deletion and insertion curves


@dataclass(slots=True)
class Card:
    rel: str
    stem: str
    cid: str  # stable element id, not derived from user text
    label: str | None
    label_index: int | None
    pred: str
    pred_index: int
    target: str
    confidence: float
    conf_text: str  # "73.9%"
    conf_attr: str  # "0.739123", for sorting in the browser
    correct: bool | None
    thumb: str
    image: str
    detail: str  # report-root-relative path of the detail page (not encoded)
    detail_url: str
    maps: list[MapView]
    methods_attr: str  # "gradcam lime": the methods this card has maps for
    probs: list[tuple[str, float, str]]  # (class, probability, "12.3%")
    width: int
    height: int
    disp_w: int = 0
    disp_h: int = 0
    pixelated: bool = False
    stretched: bool = False  # thinner than 1:DETAIL_MAX_ASPECT: disp_w x disp_h is not its aspect
    sha256: str = ""
    size: int = 0
    mask_key: str = ""  # "size:mtime" of a ground-truth mask (<name>.mask.npy) beside the input image, or ""
    group_key: str = field(default="", repr=False)
    index: int = field(default=0, repr=False)  # position in gallery order (not shown, so not fingerprinted)
    page: int = 1
    label_maps: list[MapView] = field(default_factory=list)  # --target pred,label, misclassified: "why not" maps
    # the earlier model whose prediction (and maps) the image still holds, in words; "": the last run's model
    earlier: str = ""
    # a misclassified image: its true class's probability and rank ("0.1%, 412th of 1,000"; the detail view's top 10
    # of ImageNet's 1000 classes seldom hold it); "": none
    label_conf: str = ""


@dataclass
class Group:
    section: str  # "wrong" | "right" | "pred" | "nolabel"
    title: str  # e.g. "true FAKE"
    key: str  # stable id, e.g. "wrong-0"
    class_index: int
    order: str  # how the cards are sorted, in words
    cards: list[Card]  # empty in a summary snapshot (see snapshot.py); count says how many
    count: int = 0
    section_title: str = ""
    start_page: int = 1
    start_url: str = ""
    end_page: int = 1  # the gallery page of its last card


@dataclass
class Block:
    """A group's slice on one gallery page."""

    group: Group
    cards: list[Card]
    first: int  # 1-based position of cards[0] within the group
    last: int
    heading_section: str | None  # the section title when this block opens a section on this page
    html: Any = None  # its cards' HTML, when rendered without Jinja (report/fastcards.py)


@dataclass
class GalleryPage:
    number: int
    path: str
    blocks: list[Block]
    prev: str | None
    next: str | None
    links: list[tuple[str, str | None, bool]]  # (label, url or None for a gap, is current)
    first: int  # 1-based global positions shown
    last: int
    id: int = 0  # its files' number (gallery/page-<id>.html), kept while other pages split and merge (paging.py)


@dataclass
class Site:
    """What detail pages may use besides their card: a detail page is only re-rendered when this, its card,
    its neighbours or a template changed."""

    title: str
    assets: dict[str, str]
    gallery_first: str
    version: str
    target_words: str
    n_classes: int
    methods: list[MethodInfo]


@dataclass
class ReportData:
    title: str
    labeled: bool
    total: int
    class_names: list[str]
    methods: list[MethodInfo]
    failures: list[tuple[str, str]]
    cards: list[Card]
    groups: list[Group]
    pages: list[GalleryPage]
    sections: list[tuple[str, str]]  # (section key, title) in gallery order
    # metrics (labeled)
    correct: int | None = None
    wrong: int | None = None
    accuracy: float | None = None
    confusion: list[list[dict[str, Any]]] | None = None  # over class_names, every class (older templates read it)
    confusion_shown: list[list[dict[str, Any]]] | None = None  # the matrix the summary shows, over confusion_names
    top_confusions: list[tuple[str, str, int]] | None = None
    confusion_names: list[str] = field(default_factory=list)  # the shown matrix's rows and columns, in order
    classes_unlisted: int = 0  # over CONFUSION_MAX_CLASSES classes: those with no image and no prediction, not listed
    per_class: list[dict[str, Any]] = field(default_factory=list)
    macro: dict[str, Any] | None = None
    ece: float | None = None
    calibration: list[dict[str, Any]] = field(default_factory=list)
    hist_edges: list[float] = field(default_factory=list)
    hist_series: list[tuple[str, list[int], str]] = field(default_factory=list)
    pred_counts: list[tuple[str, int, str]] = field(default_factory=list)
    mean_confidence: float | None = None
    figures: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"src", "alt"}
    decision: dict[str, Any] | None = None  # two classes: threshold, its metrics and ROC (see decision_summary)
    assets: dict[str, str] = field(default_factory=dict)  # "css"/"js" -> report-root-relative url
    gallery_first: str = layout.gallery_page(1)
    page_size: int = PAGE_SIZE
    card_width: int = 0
    card_thumb: int = CARD_THUMB_PX
    target_words: str = "the predicted class"
    version: str = __version__
    has_csv: bool = True
    warnings: list[str] = field(default_factory=list)  # shown at the top of the summary
    coverage: dict[str, str] = field(default_factory=dict)  # method -> "40 of 41 images; not asked by the last run"
    input_dir: Path | None = None  # the last run's input folder when it is still there (ground-truth masks)
    trust: Any = None  # trust.Trust: faithfulness summary, chance line, sanity check
    localization: list[Any] = field(default_factory=list)  # localization.PointingGame per method (ground-truth masks)
    lime_samples: dict[str, Any] | None = None  # LIME's samples per map: maps, mean, median, max (lime_samples())
    mean_maps: list[Any] = field(default_factory=list)  # meanmaps.MethodMeans per method: each group's mean map
    # images an earlier model predicted (data.earlier_summary; None: none): the numbers above leave them out
    earlier: dict[str, Any] | None = None
    paging: Any = None  # paging.Paging: the gallery pages' ranges, saved with the report's state (not the summary)

    @property
    def classes_folded(self) -> bool:
        """Too many classes to list their names in the overview unasked (see CONFUSION_MAX_CLASSES)."""
        return len(self.class_names) > CONFUSION_MAX_CLASSES

    @property
    def confusion_compact(self) -> bool:
        """A matrix too wide for paper as it is on screen (see CONFUSION_PRINT_COMPACT)."""
        return len(self.confusion_names) > CONFUSION_PRINT_COMPACT

    @functools.cached_property
    def filter_classes(self) -> list[tuple[int, str]]:
        """The gallery's class filter: (index, name) of each class the gallery has a group of, in class order (a
        1000-class model's other 997 classes found nothing, in a list of 1000)."""
        grouped = {g.class_index for g in self.groups}
        return [(i, n) for i, n in enumerate(self.class_names) if i in grouped]

    # what data.History.apply sets on every run (snapshot.PER_RUN): the run history and the last run's settings
    config: dict[str, Any] = field(default_factory=dict)
    config_rows: list[tuple[str, str]] = field(default_factory=list)
    config_caption: str = "The last run's settings"  # or a run's before it, when the last one loaded no model
    runs: list[dict[str, Any]] = field(default_factory=list)  # newest first, formatted; at most data.HISTORY_ROWS
    runs_total: int = 0
    older_problems: list[dict[str, Any]] = field(default_factory=list)  # older runs that did not end ok, newest first
    run_statuses: list[tuple[str, int]] = field(default_factory=list)  # (status, how many ended so), most first
    last_run: dict[str, Any] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def measured(self) -> int:
        """How many images the metrics are over: those the last run's model predicted (see ``earlier``)."""
        return self.earlier["measured"] if self.earlier else self.total

    def site(self) -> Site:
        return Site(
            self.title,
            dict(self.assets),
            self.gallery_first,
            self.version,
            self.target_words,
            self.n_classes,
            self.methods,
        )
