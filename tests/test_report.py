"""The HTML report without a browser: data, pagination, order, escaping, incremental writes, overrides."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import types
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import HOSTILE_NAMES, invoke, make_checkpoint, quiet, run_opts, small_run, write_images
from xaibatch import layout, report
from xaibatch.manifest import FILENAME, ImageRow, Manifest, MapRow, RunCounts
from xaibatch.pipeline import RunOptions, run
from xaibatch.tools import synth as pictures  # this file's own synth() builds a manifest

CLASSES = ["FAKE", "REAL"]
METHODS = {
    "gradcam": {"title": "Grad-CAM", "signed": False, "config": {}, "hash": "g"},
    "lime": {"title": "LIME", "signed": True, "config": {"samples": 1000, "segments": 50, "hide": "mean"}, "hash": "l"},
}
HOSTILE = HOSTILE_NAMES


# -- helpers ------------------------------------------------------------------------------------------


def synth(
    out: Path,
    rows: list[tuple[str, int | None, float]],
    methods=("gradcam",),
    files: bool = True,
    failures=(),
    classes=CLASSES,
    sha: str = "ab" * 32,
    side: int = 8,
    input_dir="/data/set",
    info: dict | None = None,
    source: dict | None = None,
    threshold: float | None = None,
) -> Path:
    """A manifest as a pipeline run would leave it: rows are (rel, label or None, probability of class 0).

    ``side`` is the images' recorded size (the files written are 8x8); ``info`` the maps' per-image facts;
    ``source`` the run's recorded model options (RunConfig.source: its ``target``, ...); ``threshold``: the run
    decided class 1 when its probability is at least this (--threshold), else the most probable class.
    """
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model": {
            "arch": "resnet18",
            "checkpoint": "m.pt",
            "checkpoint_sha256": sha,
            "input_size": 32,
            "target": "pred",
        },
        "layer": "layer3",
        "layer_grid": [4, 4],
        "methods": {k: METHODS[k] for k in methods},
        "class_names": list(classes),
        "batch_size": 8,
        "workers": 0,
        "seed": 0,
        **({"source": source} if source else {}),
        **({"decision": {"positive": classes[1], "threshold": threshold, "one_logit": False}} if threshold else {}),
    }
    tiny = Image.fromarray(np.full((8, 8, 3), 120, np.uint8))
    m = Manifest(out / FILENAME)
    run_id = m.start_run(str(input_dir), cfg, "p")
    with m.transaction():
        for rel, label, p0 in rows:
            stem = rel.rsplit(".", 1)[0]
            probs = [p0, 1 - p0]
            pred = int(np.argmax(probs)) if threshold is None else int(probs[1] >= threshold)
            m.put_image(
                ImageRow(rel, stem, 100, 0, "0" * 64, side, side, label, pred, pred, probs[pred], probs, "p", run_id)
            )
            for name in methods:
                m.put_map(
                    MapRow(
                        rel,
                        name,
                        "h",
                        f"maps/{name}/{stem}.npy",
                        f"maps/{name}/{stem}.png",
                        f"thumbs/{name}/{stem}.png",
                        info,
                        run_id,
                    )
                )
            if files:
                subs = ("images", "thumbs/image", *(f"thumbs/{k}" for k in methods), *(f"maps/{k}" for k in methods))
                for sub in subs:
                    p = out / sub / f"{stem}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    tiny.save(p)
                for k in methods:
                    np.save(out / "maps" / k / f"{stem}.npy", np.zeros((8, 8), np.float32))
        for rel, reason in failures:
            m.put_failure(rel, reason, run_id)
    m.finish_run(
        run_id,
        "some-failed" if failures else "ok",
        1.5,
        RunCounts(seen=len(rows), added=len(rows), computed=len(rows), failed=len(failures)),
    )
    m.close()
    (out / "predictions.csv").write_text("path\n")
    return out


def labeled_rows(n: int, seed: int = 0) -> list[tuple[str, int, float]]:
    rng = np.random.default_rng(seed)
    return [(f"{CLASSES[i % 2]}/im_{i:04d}.png", i % 2, float(rng.uniform(0.02, 0.98))) for i in range(n)]


def mixed_rows() -> list[tuple[str, int, float]]:
    """Both classes misclassified and correct: in gallery order 4 wrong FAKE, 3 wrong REAL, 3 right FAKE (FAKE/r0
    the least confident), 3 right REAL; at 3 cards a page every group crosses a page boundary."""
    rows = [(f"FAKE/w{i}.png", 0, 0.4 - i / 20) for i in range(4)]  # labelled FAKE, predicted REAL
    rows += [(f"REAL/w{i}.png", 1, 0.9 - i / 20) for i in range(3)]
    rows += [(f"FAKE/r{i}.png", 0, 0.6 + i / 20) for i in range(3)]
    rows += [(f"REAL/r{i}.png", 1, 0.4 - i / 20) for i in range(3)]
    return rows


def another_model(
    out: Path,
    rels: list[str],
    status: str = "interrupted",
    sha: str = "cd" * 32,
    checkpoint: str = "n.pt",
    input_dir: str = "/data/set",
) -> int:
    """A later run of a synth() folder with another model (predict hash "q", or "p" for synth's own ``sha``) that
    re-predicted ``rels`` (each now right, at 90%) and ended ``status``: with "interrupted", before the others;
    "running", killed there."""
    cfg = {
        "model": {"arch": "resnet18", "checkpoint": checkpoint, "checkpoint_sha256": sha, "input_size": 32},
        "methods": {"gradcam": METHODS["gradcam"]},
        "class_names": CLASSES,
        "seed": 0,
    }
    m = Manifest(out / FILENAME)
    predict_hash = "p" if sha == "ab" * 32 else "q"
    run_id = m.start_run(str(input_dir), cfg, predict_hash)
    images = m.images()
    with m.transaction():
        for rel in rels:
            r = images[rel]
            probs = [0.9, 0.1] if r.label == 0 else [0.1, 0.9]
            m.put_image(
                dataclasses.replace(
                    r,
                    pred=r.label,
                    target=r.label,
                    confidence=0.9,
                    probs=probs,
                    predict_hash=predict_hash,
                    run_id=run_id,
                )
            )
    if status != "running":  # "running": killed, its row left as it was
        m.finish_run(run_id, status, 1.0, RunCounts(seen=len(images), computed=len(rels)))
    m.close()
    return run_id


class Links(HTMLParser):
    """Every src/href, and the text of cards' names, from one page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.imgs: list[dict[str, str | None]] = []
        self.cards: list[dict[str, str | None]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for k in ("href", "src"):
            if a.get(k) is not None:
                self.urls.append((tag, a[k]))
        if tag == "img":
            self.imgs.append(a)
        if tag == "li" and "card" in (a.get("class") or "").split():
            self.cards.append(a)


def pages_js(out: Path) -> dict:
    """gallery/pages.js's data: the pages (id, first, last place), the groups and the total (report.js draws from it)."""
    text = (out / layout.GALLERY_PAGES).read_text("ascii")
    head = "window.XAIBATCH_PAGES = "
    assert text.startswith(head) and text.endswith(";\n")
    return json.loads(text[len(head) : -2])


def parse(path: Path) -> Links:
    p = Links()
    p.feed(path.read_text("utf-8"))
    return p


def resolve(page: Path, href: str) -> Path:
    parts = urlsplit(href)
    assert not parts.scheme and not parts.netloc, f"{page}: external or absolute URL {href!r}"
    assert not parts.path.startswith("/"), f"{page}: absolute path {href!r}"
    return (page.parent / unquote(parts.path)).resolve() if parts.path else page


def html_pages(out: Path) -> list[Path]:
    return sorted([*out.glob("*.html"), *(out / "gallery").glob("*.html"), *(out / "detail").rglob("*.html")])


def page_files(out: Path) -> list[Path]:
    """Every page, and the detail view's data files (one per gallery page)."""
    return html_pages(out) + sorted((out / "detail").glob("*.js"))


def check_links(out: Path) -> int:
    """Every link and image of every page points at an existing file inside the report; returns the count."""
    n = 0
    for page in html_pages(out):
        for _tag, u in parse(page).urls:
            target = resolve(page, u)
            assert target.is_file(), f"{page.relative_to(out)}: {u!r} -> {target} is missing"
            assert target.is_relative_to(out.resolve()), f"{u!r} leaves the report folder"
            n += 1
    return n


def detail_data(out: Path) -> tuple[dict, dict[str, dict]]:
    """The detail view's data (detail/page-<n>.js, drawn by assets/detail.js): the shared site record and
    every image's record by its path. Tests of the detail view read what it shows here (and in a browser:
    test_report_browser.py)."""
    site, records = {}, {}
    for p in sorted((out / "detail").glob("page-*.js")):
        text = p.read_text("ascii")
        prefix = "window.XAIBATCH_DETAIL = "
        assert text.startswith(prefix) and text.endswith(";\n"), p
        d = json.loads(text[len(prefix) : -2])
        site = d["site"]
        for im in d["images"]:
            assert im["rel"] not in records
            records[im["rel"]] = {**im, "data_file": p.name}
    return site, records


def detail_of(out: Path, rel: str) -> dict:
    return detail_data(out)[1][rel]


def map_of(record: dict, method: str) -> dict:
    return next(v for v in record["maps"] if v["m"] == method)


def gallery_order(out: Path) -> list[str]:
    names = []
    n = 1
    while (out / "gallery" / f"page-{n}.html").exists():
        names += [c["data-name"] for c in parse(out / "gallery" / f"page-{n}.html").cards]
        n += 1
    return names


# -- pipeline runs (tiny random model, real files) ------------------------------------------------------


@pytest.fixture(scope="module")
def labeled_run(tmp_path_factory, tiny_ckpt) -> Path:
    return small_run(tmp_path_factory.mktemp("lab"), tiny_ckpt, 6, (1, 2), ("REAL/broken.png", b"not a png"))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """File and class names that are HTML, URL syntax, or unicode."""
    root = tmp_path_factory.mktemp("hostile")
    classes = ['<b onmouseover=alert(3)>FAKE "x"', "REAL #1 %41?"]
    ckpt = make_checkpoint(root / "h.pt", classes=classes)
    rng = np.random.default_rng(0)
    for i, name in enumerate(HOSTILE):
        d = root / "in" / classes[i % 2] / ("sub dir #2" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        pictures.save(pictures.noise(rng, 32), d / name)
    run(
        RunOptions(input_dir=root / "in", out_dir=root / "out", methods=["gradcam"], checkpoint=ckpt),
        log=lambda s: None,
    )
    return root / "out"


def test_pipeline_report_summary(labeled_run):
    out = labeled_run
    html = (out / "index.html").read_text()
    m = Manifest(out / FILENAME)
    images, cfg = m.images(), json.loads(m.runs()[-1].config_json)
    m.close()
    acc = sum(r.label == r.pred for r in images.values()) / len(images)
    assert f"{100 * acc:.1f}%" in html
    assert "Confusion matrix" in html and "Precision" in html and "F1" in html
    assert cfg["model"]["arch"] in html and cfg["model"]["checkpoint_sha256"][:12] in html
    assert cfg["model"]["checkpoint_sha256"] not in html  # the short form only
    assert "×".join(map(str, cfg["layer_grid"])) in html and cfg["layer"] in html
    assert "Run history" in html and "predictions.csv" in html
    # the unreadable file is listed with its reason, on the summary and on skipped.html
    assert "REAL/broken.png" in html
    assert "REAL/broken.png" in (out / "skipped.html").read_text()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    # roc: two classes (issue 13); a mean map per gallery group (tests/test_mean_maps.py)
    assert [f.split("-")[0] for f in figures if not f.startswith("mean-")] == ["confidence", "reliability", "roc"]
    groups = {f"{'right' if r.label == r.pred else 'wrong'}-{r.label}" for r in images.values()}
    assert {f.rsplit("-", 1)[0] for f in figures if f.startswith("mean-")} == {f"mean-0-{g}" for g in groups}
    for f in figures:
        svg = (out / "figures" / f).read_bytes()
        assert b"<svg" in svg and len(svg) < 200_000
    (reliability,) = [f for f in figures if f.startswith("reliability-")]
    assert re.search(r"ECE \d+\.\d%", (out / "figures" / reliability).read_text())


def test_pipeline_report_links_and_pages(labeled_run):
    out = labeled_run
    assert check_links(out) > 50
    m = Manifest(out / FILENAME)
    rels = set(m.images())
    m.close()
    assert sorted(gallery_order(out)) == sorted(rels)
    assert sorted(detail_data(out)[1]) == sorted(rels)  # every image has its detail view
    assert len(list((out / "detail").glob("page-*.html"))) == len(list((out / "gallery").glob("page-*.html")))
    css = list((out / "assets").glob("report.*.css"))
    js = list((out / "assets").glob("report.*.js"))
    assert len(css) == len(js) == 1 and re.fullmatch(r"report\.[0-9a-f]{8}\.css", css[0].name)


def test_detail_page(labeled_run):
    out = labeled_run
    site, records = detail_data(out)
    d = records["FAKE/img_000.png"]
    # the viewer draws these (paths relative to the report root; the viewer page is one folder down)
    assert d["image"] == "images/FAKE/img_000.png" and map_of(d, "gradcam")["png"] == "maps/gradcam/FAKE/img_000.png"
    assert map_of(d, "gradcam")["npy"].endswith("maps/gradcam/FAKE/img_000.npy")
    for src in (d["image"], map_of(d, "gradcam")["png"], map_of(d, "gradcam")["npy"]):
        assert (out / src).is_file()
    assert d["dw"] >= 256 and d["pixelated"]  # 32 px upscaled
    assert d["probs"] and d["rel"] == "FAKE/img_000.png"
    assert d["next"] is not None or d["prev"] is not None
    assert "bright = more important" in site["methods"]["gradcam"]["legend"]
    page = out / "detail" / d["data_file"].replace(".js", ".html")
    assert f'<script src="{d["data_file"]}"></script>' in page.read_text()


def test_hostile_names_are_text_and_links_work(hostile_run):
    out = hostile_run
    assert check_links(out) > 50
    for page in html_pages(out):
        html = page.read_text("utf-8")
        assert "<img src=x" not in html and "<b onmouseover" not in html, page
        assert "onerror=alert(1)>" not in html.replace("&gt;", "")  # never an attribute of a real tag
    order = gallery_order(out)
    assert len(order) == len(HOSTILE)
    assert {n.rsplit("/", 1)[-1] for n in order} == set(HOSTILE)
    g = (out / "gallery" / "page-1.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in g
    assert "&lt;b onmouseover=alert(3)&gt;FAKE &#34;x&#34;" in g


# -- synthetic manifests (no model): scale, order, grouping -----------------------------------------------


def test_counts_of_thousands_are_written_with_separators(tmp_path):
    """A large run's counts read as 2,403 images, not 2403: the summary's totals and metrics, the confusion and
    calibration tables, the figures' alt texts, a gallery page's range and group sizes (each of them raw before
    but the earlier-model and history lines)."""
    import re

    n = 2403  # about 1,200 correct and 1,200 misclassified: the figures' alt texts count them too
    out = synth(tmp_path / "o", labeled_rows(n), files=False)
    report.render(out)
    index = (out / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", index) + " ".join(re.findall(r'alt="([^"]*)"', index))
    assert "Images2,403" in text.replace(" ", "").replace("\n", "")
    assert "2,403 computed" in text and "Macro average" in text and "correctly classified" in text
    plain = re.sub(r"[0-9a-f]{16,}|\d{4}-\d\d-\d\d|[+-]\d{4}(?!\d)", "", text)  # hashes, dates, time zones aside
    assert not re.search(r"(?<![\d,.#-])\d{4,}(?![\d,.])", plain), "a count of 4+ digits"
    # a gallery page's range and group sizes are drawn by report.js from gallery/pages.js (written with separators
    # there: test_report_browser.py::test_pager_and_totals_are_drawn_from_pages_js)
    pages = pages_js(out)
    assert pages["total"] == 2403 and pages["pages"][5] == [6, 1001, 1200]


def test_pagination_counts_and_page_weight(tmp_path):
    n = 2 * report.PAGE_SIZE + 37
    out = synth(tmp_path / "o", labeled_rows(n), methods=("gradcam", "lime"), files=False)
    stats = report.render(out)
    assert stats.gallery_pages == 3
    pages = sorted((out / "gallery").glob("page-*.html"))
    assert len(pages) == 3
    counts = []
    for p in pages:
        links = parse(p)
        counts.append(len(links.cards))
        # cards show small thumbnails only, lazily; the full size is on the detail page (these 32 px display
        # copies are no larger than a thumbnail, so they are their own: layout.image_thumb)
        assert links.imgs and all(
            i["loading"] == "lazy"
            and ("/thumbs/" in i["src"] or ("/images/" in i["src"] and int(i["width"]) <= layout.THUMB_SIDE))
            for i in links.imgs
        )
        assert p.stat().st_size < 200_000  # 200 cards with two methods each
        html = p.read_text()
        k = int(p.stem.split("-")[1])  # without JavaScript: Previous and Next (report.js draws the numbers)
        assert (f'href="page-{k - 1}.html" rel="prev"' in html) == (k > 1)
        assert (f'href="page-{k + 1}.html" rel="next"' in html) == (k < 3)
    assert [p[0] for p in pages_js(out)["pages"]] == [1, 2, 3]  # every page, for report.js's numbered pager
    assert counts == [report.PAGE_SIZE, report.PAGE_SIZE, 37]
    assert sorted(gallery_order(out)) == sorted(r for r, _l, _p in labeled_rows(n))
    assert stats.pages == 3 + 3 + 3  # detail viewers and gallery pages (one each per page), index + history + skipped
    assert stats.biggest_page[1] < 200_000


def test_page_links_window():
    assert [t for t, _u, _c in report.cards.page_links(1, 1)] == ["1"]
    labels = [t for t, _u, _c in report.cards.page_links(50, 500)]
    assert labels == ["1", "…", "48", "49", "50", "51", "52", "…", "500"]
    assert [t for t, _u, c in report.cards.page_links(3, 4) if c] == ["3"]


def test_grouping_and_sorting_order(tmp_path):
    rows = [  # (rel, label, p(class 0)); pred is 0 when p0 > .5
        ("a.png", 0, 0.30),
        ("b.png", 0, 0.10),
        ("c.png", 0, 0.90),
        ("d.png", 0, 0.60),
        ("e.png", 1, 0.80),
        ("f.png", 1, 0.55),
        ("g.png", 1, 0.20),
        ("h.png", 1, 0.45),
    ]
    out = synth(tmp_path / "o", rows, files=False)
    data = report.build(out)
    assert [(g.section, g.title) for g in data.groups] == [
        ("wrong", "true FAKE"),
        ("wrong", "true REAL"),
        ("right", "true FAKE"),
        ("right", "true REAL"),
    ]
    # misclassified: most confident mistake first; correct: least confident first
    assert [[c.rel for c in g.cards] for g in data.groups] == [
        ["b.png", "a.png"],
        ["e.png", "f.png"],
        ["d.png", "c.png"],
        ["h.png", "g.png"],
    ]
    report.render(out)
    assert gallery_order(out) == ["b.png", "a.png", "e.png", "f.png", "d.png", "c.png", "h.png", "g.png"]
    html = (out / "gallery" / "page-1.html").read_text()
    assert html.index('<h2 class="section">Misclassified') < html.index('<h2 class="section">Correct')
    # previous/next on detail pages follow the gallery order; a neighbour in another group names it
    _site, records = detail_data(out)
    d = records["e.png"]
    assert d["group"] == "wrong-1"
    assert d["prev"] == {"id": records["a.png"]["id"], "group": "wrong-0"} and d["next"] == {
        "id": records["f.png"]["id"]
    }
    # where a group starts or ends: the same class's nearest group that way, for a class filter (detail.js)
    assert "cprev" not in d and "cnext" not in d  # no earlier REAL group; e.png does not end its group
    assert records["f.png"]["cnext"] == {"id": records["h.png"]["id"], "group": "right-1"}
    assert records["d.png"]["cprev"] == {"id": records["a.png"]["id"], "group": "wrong-0"}
    assert "cnext" not in records["d.png"] and "cprev" not in records["c.png"] and "cnext" not in records["c.png"]


def test_metrics_match_sklearn(tmp_path):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rows = labeled_rows(300, seed=3)
    data = report.build(synth(tmp_path / "o", rows, files=False))
    y = [lab for _r, lab, _p in rows]
    pred = [0 if p0 > 0.5 else 1 for _r, _l, p0 in rows]
    p, r, f, s = precision_recall_fscore_support(y, pred)
    for i, c in enumerate(data.per_class):
        assert c["precision"] == pytest.approx(p[i]) and c["recall"] == pytest.approx(r[i])
        assert c["f1"] == pytest.approx(f[i]) and c["support"] == s[i]
    assert [[cell["n"] for cell in row] for row in data.confusion] == confusion_matrix(y, pred).tolist()
    conf = np.array([max(p0, 1 - p0) for _r, _l, p0 in rows])
    ok = np.array(y) == np.array(pred)
    bins = np.minimum(((conf - 0.5) / 0.5 * 10).astype(int), 9)
    ece = sum(
        abs(ok[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean() for b in range(10) if (bins == b).any()
    )
    assert data.ece == pytest.approx(ece)
    assert sum(sum(c) for _l, c, _col in data.hist_series) == 300


def test_confidence_bins_hold_a_thresholds_confidences_under_chance(tmp_path):
    """Under --threshold 0.7 a FAKE prediction's confidence, P(FAKE), can be 0.35: the histogram and the reliability
    table started at chance (0.5) and counted it in the "0.50–0.55" bin, whose mean confidence then lay outside its
    own range. They now start at min(t, 1 - t)."""
    rows = [("a.png", 0, 0.35), ("b.png", 1, 0.40), ("c.png", 0, 0.45), ("d.png", 1, 0.2), ("e.png", 0, 0.9)]
    data = report.build(synth(tmp_path / "o", rows, files=False, threshold=0.7))
    assert sorted(c.confidence for c in data.cards) == pytest.approx([0.35, 0.4, 0.45, 0.8, 0.9])
    for b in data.calibration:
        assert b["confidence"] is None or b["lo"] <= b["confidence"] < b["hi"] + 1e-12, b
    assert sum(b["n"] for b in data.calibration) == 5
    assert data.hist_edges[0] <= 0.35 and data.calibration[0]["range"] == "0.30–0.37"
    plain = report.build(synth(tmp_path / "p", rows, files=False))  # no threshold: from chance, as before
    assert plain.calibration[0]["range"] == "0.50–0.55" and plain.hist_edges[0] == 0.5


@pytest.mark.parametrize("k", [2, 3, 5, 40])
def test_reliability_bins_hold_their_mean_confidence_as_printed(k):
    """40 classes: the first bin starts at 1/40 = 0.025 and was printed "0.03–0.12" while it held images of 2.8 %
    confidence, outside its printed range. Each printed range now holds its bin's mean confidence."""
    from types import SimpleNamespace

    from xaibatch.report.metrics import ConfidenceScale, calibration

    scale = ConfidenceScale.of(k)
    confs = [1 / k + 0.003 + i * (1 - 1 / k - 0.004) / 49 for i in range(50)]
    rows, _ece = calibration([SimpleNamespace(confidence=c, correct=True) for c in confs], scale)
    for row in rows:
        lo, hi = (float(x) for x in row["range"].split("–"))
        if row["confidence"] is not None:
            assert lo <= round(row["confidence"], 3) <= hi, (row["range"], row["confidence"])
    assert rows[0]["range"] == {2: "0.50–0.55", 3: "0.333–0.400", 5: "0.20–0.28", 40: "0.025–0.122"}[k]


def test_a_class_without_images_has_no_shares_in_the_confusion_matrix(tmp_path):
    """A labeled folder with images of one class only: the other class's row read "0 (0.0%)" in every column, a
    row of shares adding up to 0 % over no images. Its shares are now "–"; the other row's still add up to 100 %."""
    rows = [("FAKE/a.png", 0, 0.9), ("FAKE/b.png", 0, 0.8), ("FAKE/c.png", 0, 0.3)]
    out = synth(tmp_path / "o", rows, files=False)
    data = report.build(out)
    assert [[(c["n"], c["share"]) for c in row] for row in data.confusion] == [
        [(2, "66.7%"), (1, "33.3%")],
        [(0, "–"), (0, "–")],
    ]
    report.render(out)
    assert "0 <small>(0.0%)</small>" not in (out / "index.html").read_text()


def test_numbers_are_never_rounded_onto_100_or_0_percent(tmp_path):
    """2,999 correct of 3,000 read "Accuracy 100.0% (2,999 correct, 1 misclassified)" and, in the decision block,
    "100.0% of 3,000 labeled images"; a precision of 2,500/2,501 "1.000"; a 0.00004 probability "0.0%". A number
    short of a bound now says so."""
    rows = [(f"FAKE/f{i:04d}.png", 0, 0.9) for i in range(500)] + [(f"REAL/r{i:04d}.png", 1, 0.2) for i in range(2500)]
    rows[0] = ("FAKE/f0000.png", 0, 0.1)  # one FAKE predicted REAL
    out = synth(tmp_path / "o", rows, files=False, threshold=0.5)
    report.render(out)
    html = (out / "index.html").read_text()
    assert "<strong>&gt;99.9%</strong> (2,999 correct, 1 misclassified)" in html
    assert "<dd>&gt;99.9% of 3,000 labeled images</dd>" in html
    assert "&gt;0.999 (2,500 of 2,501 predicted REAL)" in html  # precision 0.9996
    assert "<strong>100.0%</strong>" not in html and "1.000 (2,500 of 2,501" not in html

    from xaibatch.report.text import fmt_pct, fmt_score

    assert [fmt_pct(v) for v in (1.0, 0.99967, 0.9994, 0.0, 0.0004, 0.0006, 0.5)] == [
        "100.0%",
        ">99.9%",
        "99.9%",
        "0.0%",
        "<0.1%",
        "0.1%",
        "50.0%",
    ]
    assert [fmt_score(v) for v in (1.0, 0.99967, 0.0, 0.0004, -0.0004, 0.25)] == [
        "1.000",
        ">0.999",
        "0.000",
        "<0.001",
        "-0.000",
        "0.250",
    ]


def test_a_faithfulness_run_stopped_before_it_scored_any_map_says_so(tmp_path):
    """A folder scored at 10 steps, then a run with --faithfulness-steps 40 stopped before it scored any map: every
    score was left out as made under other settings, and the faithfulness section went from the page without a
    word (its note, which counts the scores left out, was only written beside a table). It now says so."""
    from xaibatch.evaluation.chance import scores_hash, settings_key

    out = synth(tmp_path / "o", labeled_rows(6))
    ten, forty = settings_key(10, "blur"), settings_key(40, "blur")
    m = Manifest(out / FILENAME)
    (map_hash,) = {r.config_hash for r in m.maps().values()}
    m.db.execute("UPDATE maps SET deletion = 0.3, insertion = 0.7, faith_hash = ?", (scores_hash(map_hash, ten),))
    run = m.runs()[-1]
    cfg = json.loads(run.config_json)
    cfg.update(faithfulness=forty, faithfulness_hashes={"gradcam": scores_hash(map_hash, forty)})
    m.db.execute("UPDATE runs SET config_json = ? WHERE id = ?", (json.dumps(cfg), run.id))
    m.db.commit()
    m.close()
    report.render(out)
    html = unescape((out / "index.html").read_text())
    assert "Faithfulness (deletion and insertion)" in html
    assert "40 steps, blur fill (the last run's settings; 6 map scores made under other settings are left out" in html
    assert 'aria-labelledby="h-faith"' not in html  # no table of no rows


def test_page_count_and_skipped_files_read_as_sentences(tmp_path, monkeypatch):
    """An 11-image folder's summary said "1 page of about 200 images" (read: about 200 images), and one unreadable
    file "1 file could not be read and are not in the gallery" / "...; they are not in the gallery"."""
    out = synth(tmp_path / "o", labeled_rows(11), failures=[("x.png", "cannot identify image file")])
    report.render(out)
    html = (out / "index.html").read_text()
    assert re.search(r'<dt>Gallery</dt><dd><a href="[^"]+">1 page</a></dd>', html)
    assert "1 file could not be read and is not in the gallery." in html
    assert "1 file could not be read; it is not in the gallery. Fix or remove it" in (out / "skipped.html").read_text()
    monkeypatch.setattr(report.model, "PAGE_SIZE", 4)
    out = synth(tmp_path / "p", labeled_rows(11), failures=[("x.png", "bad"), ("y.png", "bad")])
    report.render(out)
    html = (out / "index.html").read_text()
    assert re.search(r'<dt>Gallery</dt><dd><a href="[^"]+">3 pages</a>, about 4 images a page</dd>', html)
    assert "2 files could not be read and are not in the gallery." in html
    assert "2 files could not be read; they are not in the gallery." in (out / "skipped.html").read_text()


def test_the_sanity_table_says_its_correlations_are_absolute(tmp_path):
    """The sanity table's note read "Mean rank correlation (each image's by its size)", which reads as weighted by
    image size; the numbers are the mean of each image's |rank correlation|."""
    from xaibatch.evaluation.sanity_file import FILENAME, SanityCurve, SanityResult

    out = synth(tmp_path / "o", labeled_rows(4))
    curve = SanityCurve("gradcam", ["original", "fc"], [1.0, 0.2], [1.0, 0.3], True, "gradcam: passes", checked=1.0)
    (out / FILENAME).write_text(SanityResult([curve], created=2.0, images=4).to_json())
    report.render(out)
    html = (out / "index.html").read_text()
    assert "Mean absolute Spearman rank correlation (|ρ| of each image's map" in html
    assert "by its size" not in html


def test_the_history_says_added_and_changed_are_not_every_image_computed(tmp_path):
    """A re-run after a corrupt file was replaced: "Seen 124, Added 5, Changed 2, Unchanged 115, Failed 1, Computed 8"
    (the replaced file counts in none of added, changed, unchanged): the counts did not add up and the page did not
    say why."""
    out = synth(tmp_path / "o", labeled_rows(3))
    report.render(out)
    html = (out / "history.html").read_text()
    assert (
        "Added and changed say why images were computed, not every image computed: one read again after it failed"
        in html
    )


def test_the_colour_scale_says_which_99th_percentile_it_is():
    """A Guided Grad-CAM map's bar read "≥ 0.207 (this image's 99th percentile)" where the .npy's 99th percentile is
    0.190: the scale is the percentile of the map as drawn (resampled to the picture), not of the saved array."""
    from xaibatch.report.detail import colour_ticks

    ticks, note = colour_ticks(0.207, False, "FAKE")
    assert ticks == ["0", "0.103", "≥ 0.207"]
    assert note == "Full colour: values of 0.207 (the 99th percentile of this map as drawn) and above."


def test_unlabeled_grouped_by_prediction(tmp_path):
    rows = [("x1.png", None, 0.7), ("x2.png", None, 0.9), ("x3.png", None, 0.2), ("x4.png", None, 0.4)]
    out = synth(tmp_path / "o", rows, files=True)
    data = report.build(out)
    assert not data.labeled and data.sections == [("pred", "By predicted class")]
    assert [(g.title, [c.rel for c in g.cards]) for g in data.groups] == [
        ("predicted FAKE", ["x2.png", "x1.png"]),
        ("predicted REAL", ["x3.png", "x4.png"]),
    ]
    report.render(out)
    html = (out / "index.html").read_text()
    assert "Accuracy" not in html and "Images per predicted class" in html
    assert not any(p.name.startswith("reliability") for p in (out / "figures").iterdir())
    check_links(out)


def test_signed_and_unsigned_legends(tmp_path):
    out = synth(tmp_path / "o", labeled_rows(4), methods=("gradcam", "lime"))
    report.render(out)
    html = (out / "gallery" / "page-1.html").read_text()
    site, _records = detail_data(out)
    legends = " ".join(m["legend"] for m in site["methods"].values())  # what every detail view shows
    for text in (html, legends):
        assert "red = evidence for the explained class, blue = evidence against it" in text
        assert "bright = more important" in text
    html = (out / "index.html").read_text()
    assert all(x in html for x in ("samples=1000", "segments=50", "hide=mean"))


def test_incremental_writes(tmp_path):
    out = synth(tmp_path / "o", labeled_rows(30))
    report.render(out)
    pages = page_files(out) + list((out / "assets").iterdir()) + list((out / "figures").iterdir())
    old = 1_000_000_000  # 2001: any rewrite is visible
    for p in pages + [out / layout.GALLERY_NAMES]:
        os.utime(p, (old, old))
    stats = report.render(out)
    assert stats.written == 0 and stats.unchanged == len(pages)
    assert all(p.stat().st_mtime == old for p in pages)

    # one image's confidence changes: its detail page, its neighbours', its gallery page and the summary
    m = Manifest(out / FILENAME)
    m.db.execute("UPDATE images SET confidence = 0.991, probs_json = '[0.991, 0.009]' WHERE rel = 'FAKE/im_0000.png'")
    m.close()
    stats = report.render(out)
    files = page_files(out) + [out / layout.GALLERY_NAMES]
    changed = sorted(str(p.relative_to(out)) for p in files if p.stat().st_mtime != old)
    assert "detail/page-1.js" in changed and "gallery/page-1.html" in changed  # its detail data, its card
    assert "index.html" in changed
    assert layout.GALLERY_NAMES in changed  # the card moved: most confident first
    assert 4 <= len(changed) <= 9, changed
    assert stats.written == len(changed) + 2  # + the redrawn figures


def test_a_class_filters_step_out_of_a_group_is_rewritten_where_it_moved(tmp_path, monkeypatch):
    """The last misclassified FAKE (gallery page 2) leads a class filter's Next to the first correct FAKE, pages
    away: when another image becomes that first one, page 2's data file is rewritten though none of its cards
    and neither neighbour across its edges changed."""
    monkeypatch.setattr(report.model, "PAGE_SIZE", 3)
    out = synth(tmp_path / "o", mixed_rows(), files=False)
    report.render(out)
    assert detail_data(out)[1]["FAKE/w0.png"]["cnext"] == {
        "id": layout.card_id("FAKE/r0.png"),
        "page": 3,
        "group": "right-0",
    }
    m = Manifest(out / FILENAME)
    m.db.execute("UPDATE images SET confidence = 0.95, probs_json = '[0.95, 0.05]' WHERE rel = 'FAKE/r0.png'")
    m.db.commit()
    m.close()
    report.render(out)
    _site, records = detail_data(out)
    assert records["FAKE/w0.png"]["page"] == 2
    assert records["FAKE/w0.png"]["cnext"] == {"id": layout.card_id("FAKE/r1.png"), "page": 3, "group": "right-0"}
    assert records["FAKE/r1.png"]["cprev"] == {"id": layout.card_id("FAKE/w0.png"), "page": 2, "group": "wrong-0"}


def test_rerun_over_unchanged_folder_rewrites_only_summary_and_history(tmp_path, tiny_ckpt):
    write_images(tmp_path / "in" / "FAKE", 3, seed=5)
    write_images(tmp_path / "in" / "REAL", 3, seed=6)
    opts = RunOptions(input_dir=tmp_path / "in", out_dir=tmp_path / "out", methods=["gradcam"], checkpoint=tiny_ckpt)
    run(opts, log=lambda s: None)
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".html", ".css", ".js", ".svg")]
    old = 1_000_000_000
    for p in files:
        os.utime(p, (old, old))
    run(opts, log=lambda s: None)
    changed = sorted(str(p.relative_to(out)) for p in files if p.stat().st_mtime != old)
    assert changed == ["history.html", "index.html"]


def test_removed_images_lose_their_pages(tmp_path):
    out = synth(tmp_path / "o", labeled_rows(6))
    report.render(out)
    assert "FAKE/im_0000.png" in detail_data(out)[1]
    (out / "detail" / "FAKE").mkdir()  # a page of the old layout (one per image): removed as stale
    (out / "detail" / "FAKE" / "im_0002.html").write_text("old")
    m = Manifest(out / FILENAME)
    m.remove_images(["FAKE/im_0000.png"])
    m.close()
    stats = report.render(out)
    assert "FAKE/im_0000.png" not in detail_data(out)[1] and stats.removed >= 1
    assert "FAKE/im_0002.png" in detail_data(out)[1]
    assert not (out / "detail" / "FAKE").exists()


def test_template_dir_override(tmp_path):
    out = synth(tmp_path / "o", labeled_rows(4))
    mine = tmp_path / "mine"
    (mine / "assets").mkdir(parents=True)
    (mine / "index.html").write_text(
        '{% extends "base.html" %}{% block main %}<h1>My summary</h1><p id="n">{{ r.total }} images, '
        "{{ r.accuracy | pct }}</p>{% endblock %}"
    )
    (mine / "assets" / "report.css").write_text("body { background: #fffbe6; }\n")
    report.write_report(out, template_dir=mine)
    html = (out / "index.html").read_text()
    assert "<h1>My summary</h1>" in html and "4 images" in html
    css = list((out / "assets").glob("report.*.css"))
    assert len(css) == 1 and css[0].read_text() == "body { background: #fffbe6; }\n"
    assert f'href="{"assets/" + css[0].name}"' in html
    # the other pages still come from the packaged templates, with the user's stylesheet
    g = (out / "gallery" / "page-1.html").read_text()
    assert 'data-pages="place">Gallery page</h1>' in g and css[0].name in g
    # back to the packaged templates: old asset removed, detail pages re-rendered with the new name
    report.write_report(out)
    assert css[0].name not in (out / "detail" / "page-1.html").read_text()
    assert not css[0].exists()


def test_templates_checked_before_a_build_are_compiled_once(tmp_path, monkeypatch):
    """check_templates (a run's, before its compute; ``xaibatch report``'s) compiles every template, and the build
    renders with those, not compiling them again; a template edited since is compiled anew."""
    import jinja2

    out = synth(tmp_path / "o", labeled_rows(4))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "skipped.html").write_text('{% extends "base.html" %}{% block main %}<p>first</p>{% endblock %}')
    compiled = []
    real = jinja2.Environment.compile

    def counting(self, source, name=None, *args, **kwargs):
        compiled.append(name)
        return real(self, source, name, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    report.check_templates(mine)
    checked = list(compiled)
    assert "gallery.html" in checked and "skipped.html" in checked
    report.write_report(out, template_dir=mine)
    assert compiled == checked  # nothing compiled twice
    (mine / "skipped.html").write_text('{% extends "base.html" %}{% block main %}<p>second</p>{% endblock %}')
    report.write_report(out, template_dir=mine)
    assert "<p>second</p>" in (out / "skipped.html").read_text()


def test_autoescape_of_hostile_names_synthetic(tmp_path):
    rows = [(f"FAKE/{n}", 0, 0.8) for n in HOSTILE]
    out = synth(tmp_path / "o", rows, failures=[("<script>alert(2)</script>.png", "bad <b>header</b>")])
    report.render(out)
    check_links(out)
    for page in html_pages(out):
        html = page.read_text()
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>header" not in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;.png" in (out / "skipped.html").read_text()
    assert "FAKE/<img src=x onerror=alert(1)>.png" in detail_data(out)[1]
    for p in (out / "detail").glob("*.js"):
        assert "<" not in p.read_text("ascii")  # names are JSON strings, "<" escaped


def test_no_images_yet(tmp_path):
    out = synth(tmp_path / "o", [], failures=[("a.png", "cannot identify image file")])
    report.render(out)
    assert "No images yet." in (out / "gallery" / "page-1.html").read_text()
    assert "a.png" in (out / "index.html").read_text()
    check_links(out)


def test_confusion_cells_keep_text_contrast():
    def ratio(a, b):
        hi, lo = sorted((report.text.luminance(a), report.text.luminance(b)), reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    for share in np.linspace(0, 1, 101):
        bg = tuple(round(255 + (t - 255) * share) for t in (8, 48, 107))
        fg = (255, 255, 255) if report.text.text_on(bg) == "#fff" else (0, 0, 0)
        assert ratio(bg, fg) >= 4.5, (share, bg)


def test_url_encoding():
    assert report.url("a b/c#d?e%f.png") == "a%20b/c%23d%3Fe%25f.png"
    assert report.url("javascript:x") == "javascript%3Ax"
    assert report.up("detail/a/b.html") == "../../" and report.up("index.html") == ""


# -- what the pictures mean: column labels, colour bars, legends, borders, the demo model, ground truth ----


def _cards_html(page: Path) -> list[str]:
    return re.findall(r'<li class="card.*?</li>', page.read_text(), re.S)


def _figure(html: str, method: str) -> str:
    return re.search(rf'<figure data-method="{method}">.*?</figure>', html, re.S).group(0)


def _ticks(fig: str) -> list[str]:
    return re.findall(
        r"<span>([^<]*)</span>", re.search(r'<span class="ticks">((?:<span>[^<]*</span>)*)</span>', fig).group(1)
    )


def test_cards_label_each_thumbnail_column_with_its_method(tmp_path):
    out = synth(tmp_path / "o", labeled_rows(3), methods=("gradcam", "lime"))
    report.render(out)
    cards = _cards_html(out / "gallery" / "page-1.html")
    assert len(cards) == 3
    for c in cards:  # each caption sits in the same column as its own thumbnail
        # (a display copy no larger than a thumbnail is its own: images/<stem>.png, see layout.image_thumb)
        pairs = re.findall(
            r'<span class="col"><img src="\.\./(?:thumbs/([^/]+)|images)/[^>]*><span class="cap"[^>]*>'
            r"([^<]*)</span></span>",
            c,
        )
        assert [(name or "image", cap) for name, cap in pairs] == [
            ("image", "Original"),
            ("gradcam", "Grad\u2011CAM"),
            ("lime", "LIME"),
        ]


def test_colour_bars_are_one_file_per_colour_map_with_each_images_numbers(tmp_path):
    rows = labeled_rows(4)
    out = synth(tmp_path / "o", rows, methods=("gradcam", "lime"))
    rng = np.random.default_rng(3)
    want = {}
    for i, (rel, _l, _p) in enumerate(rows):
        stem = rel.rsplit(".", 1)[0]
        g = rng.uniform(0, 1, (8, 8)).astype(np.float32)
        lime = rng.uniform(-0.02, 0.05 * (i + 1), (8, 8)).astype(np.float32)
        np.save(out / "maps" / "gradcam" / f"{stem}.npy", g)
        np.save(out / "maps" / "lime" / f"{stem}.npy", lime)
        top = float(np.sort(g.ravel())[min(63, int(64 * 0.99))])  # the overlay's full colour: 99th percentile
        want[stem] = (float(np.abs(lime).max()), top)
    report.render(out)
    bars = sorted((out / "assets").glob("colourbar.*.svg"))
    assert len(bars) == 2  # one per colour map (unsigned, signed), not one per image
    assert all(b"<linearGradient" in b.read_bytes() for b in bars)
    srcs = {"gradcam": set(), "lime": set()}
    site, records = detail_data(out)
    for stem, (lim, top) in want.items():
        d = records[f"{stem}.png"]
        lime, grad = map_of(d, "lime"), map_of(d, "gradcam")
        assert lime["ticks"] == [f"−{lim:.3g}", "0", f"+{lim:.3g}"]
        assert "probability units" in site["methods"]["lime"]["scale_words"]
        assert grad["ticks"] == ["0", f"{top / 2:.3g}", f"≥ {top:.3g}"]
    for k in ("lime", "gradcam"):  # every detail view draws its method's one bar (detail.js: colourBar)
        srcs[k] |= set(re.findall(r"^(assets/colourbar\.[0-9a-f]{8}\.svg)$", site["methods"][k]["bar"]))
    assert len(srcs["lime"]) == len(srcs["gradcam"]) == 1 and srcs["lime"] != srcs["gradcam"]
    assert {f"assets/{b.name}" for b in bars} == srcs["lime"] | srcs["gradcam"]
    assert len({w[0] for w in want.values()}) == 4  # the numbers are each image's own
    check_links(out)


def test_legends_say_the_overlay_is_transparent_where_lime_sees_no_effect(tmp_path):
    out = synth(tmp_path / "o", labeled_rows(3), methods=("gradcam", "lime"))
    report.render(out)
    for page in html_pages(out):
        assert "white = neutral" not in page.read_text()
    site, _records = detail_data(out)  # the lime figure of every detail view shows its method's legend
    assert "where a superpixel has no effect the overlay is transparent" in site["methods"]["lime"]["legend"]


def test_lime_info_line_is_explained(tmp_path):
    out = synth(
        tmp_path / "o", labeled_rows(2), methods=("lime",), info={"segments": 42, "score": 0.61, "intercept": 0.37}
    )
    report.render(out)
    site, records = detail_data(out)
    # detail.js writes each as <li><code>key=value</code>: words</li>, the words from site.info_words
    items = [(f"{k}={v}", site["info_words"][k]) for k, v in map_of(records["FAKE/im_0000.png"], "lime")["info"]]
    assert [k for k, _w in items] == ["segments=42", "score=0.61", "intercept=0.37"]
    words = dict(items)
    assert "superpixels" in words["segments=42"] and "R²" in words["score=0.61"]
    assert "every superpixel hidden" in words["intercept=0.37"]


def test_only_labeled_cards_get_a_correct_or_wrong_border(tmp_path):
    out = synth(tmp_path / "u", [(f"im_{i}.png", None, p) for i, p in enumerate((0.9, 0.2, 0.6))])
    report.render(out)
    classes = [re.match(r'<li class="([^"]*)"', c).group(1) for c in _cards_html(out / "gallery" / "page-1.html")]
    assert classes == ["card"] * 3
    out = synth(tmp_path / "l", [("FAKE/a.png", 0, 0.9), ("FAKE/b.png", 0, 0.2)])
    report.render(out)
    classes = {
        re.search(r'data-name="([^"]*)"', c).group(1): re.match(r'<li class="([^"]*)"', c).group(1)
        for c in _cards_html(out / "gallery" / "page-1.html")
    }
    assert classes == {"FAKE/a.png": "card right", "FAKE/b.png": "card wrong"}
    css = next((out / "assets").glob("report.*.css")).read_text()
    assert ".card { border: 1px solid var(--line); border-left: 4px solid var(--line);" in css
    assert ".card.right { border-left-color: var(--good); }" in css


def test_summary_warns_when_the_bundled_model_meets_other_data(tmp_path):
    bundled = report.bundled_model_sha256()
    assert bundled and len(bundled) == 64
    rows = labeled_rows(3)
    out = synth(tmp_path / "a", rows, sha=bundled)  # 8x8 images, input folder gone
    report.render(out)
    html = (out / "index.html").read_text()
    assert 'class="warn"' in html and "3 of 3 images are not 32x32" in html and "--checkpoint" in html
    out = synth(tmp_path / "b", rows)  # another model: no warning
    report.render(out)
    assert 'class="warn"' not in (out / "index.html").read_text()
    inp = tmp_path / "in"  # demo-like: 32x32 and a ground-truth mask beside an image
    (inp / "FAKE").mkdir(parents=True)
    mask = inp / "FAKE" / "im_0000.mask.npy"
    np.save(mask, np.ones((32, 32), bool))
    out = synth(tmp_path / "c", rows, sha=bundled, side=32, input_dir=inp)
    report.render(out)
    assert 'class="warn"' not in (out / "index.html").read_text()
    mask.unlink()  # the same folder without any mask
    report.render(out)
    html = (out / "index.html").read_text()
    assert 'class="warn"' in html and "none of the 3 images has a ground-truth mask" in html
    assert "not 32x32" not in html


def test_the_pointing_game_leaves_out_an_earlier_models_maps(tmp_path):
    """A run with another model stopped before it recomputed every image: accuracy, calibration and faithfulness
    were over the last run's model's images, but the pointing game scored the earlier model's maps too (50 images
    where the last model had predicted 48), one hit rate over two models' maps."""
    rows = labeled_rows(20)
    rels = [rel for rel, _label, _p in rows]
    inp = tmp_path / "in"
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    for rel, label, _p in rows:
        if label == 0:
            (inp / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(inp / rel.replace(".png", ".mask.npy"), mask)
    out = synth(tmp_path / "o", rows, input_dir=inp)
    right = [rel for rel, label, p0 in rows if label == 0 and p0 > 0.5]  # FAKE, predicted FAKE: its maps explain it
    report.render(out)
    assert f'<th scope="row">Grad-CAM</th><td>{len(right)}</td>' in (out / "index.html").read_text()
    another_model(out, rels[:5], input_dir=str(inp))  # right on its 5 (3 of them FAKE), stopped before the others
    report.render(out)
    html = unescape((out / "index.html").read_text())
    found = re.search(r"<th scope=\"row\">Grad-CAM</th><td>(\d+)</td>", html)
    assert found and found.group(1) == "3", found
    assert "± is two standard errors (over the 5 of 20 images predicted by the last run's model)." in html


def test_a_report_over_two_models_says_so_and_measures_the_last_runs_model_alone(tmp_path):
    """A run with another model stopped before it recomputed every image (exit 5, or killed): the report showed
    one accuracy, ECE, confusion matrix and gallery over both models' predictions, and named only the last one.
    It now says how many images an earlier model predicted and which, measures the last run's model's images
    alone (the others' accuracy said apart), marks the others' cards and detail views, and drops it all once a
    complete run has recomputed them."""
    rows = labeled_rows(20)
    rels = [rel for rel, _label, _p in rows]
    out = synth(tmp_path / "o", rows)
    report.render(out)
    assert 'id="earlier"' not in (out / "index.html").read_text()

    another_model(out, rels[:5], checkpoint="<b>n</b>.pt")  # right on its 5, stopped before the other 15
    stats = report.render(out)
    raw = (out / "index.html").read_text()
    html = unescape(raw)
    assert 'id="earlier"' in html and "15 of 20 images still hold the predictions and maps of an earlier model" in html
    assert "15 by resnet18, m.pt (sha256 abababababab)" in html and "The last run (interrupted) used" in html
    assert "&lt;b&gt;n&lt;/b&gt;.pt" in raw and "<b>n</b>" not in raw  # the last run's model, escaped
    assert stats.accuracy == 1.0 and "over the 5 of 20 images predicted by the last run's model" in html
    right = sum(1 for _rel, label, p0 in rows[5:] if label == int(p0 < 0.5))
    assert 0 < right < 15 and f"their own accuracy {100 * right / 15:.1f}% ({right} of 15 labeled images" in html
    data = report.build(out)
    assert (data.correct, data.wrong, data.measured, data.total) == (5, 0, 5, 20)
    assert sum(cell["n"] for row in data.confusion for cell in row) == 5
    assert sum(b["n"] for b in data.calibration) == 5 and data.decision is None
    gallery = (out / "gallery" / "page-1.html").read_text()
    assert gallery.count('<p class="earlier" title="predicted by resnet18, m.pt (sha256 abababababab)') == 15
    assert "Cards marked “earlier model”" in gallery
    records = detail_data(out)[1]
    assert sorted(rel for rel, rec in records.items() if "earlier" in rec) == sorted(rels[5:])
    assert records[rels[7]]["earlier"] == "resnet18, m.pt (sha256 abababababab)"
    # predictions.csv says which model predicted each row: its predict hash and whether it is an earlier model's
    csv_rows = predictions(out)
    assert {r["path"]: (r["model_hash"], r["earlier_model"]) for r in csv_rows} == {
        **{rel: ("q", "0") for rel in rels[:5]},
        **{rel: ("p", "1") for rel in rels[5:]},
    }
    columns = list(csv_rows[0])  # then only the map paths, added later: the other columns keep their places
    ends = columns.index("earlier_model") + 1
    assert columns[ends - 2 : ends] == ["model_hash", "earlier_model"]
    assert columns[ends:] and all(c.startswith("npy_") for c in columns[ends:])
    assert list(csv_rows[0])[:5] == ["path", "label", "pred", "confidence", "correct"]

    another_model(out, rels[5:], status="ok", checkpoint="<b>n</b>.pt")  # the next complete run
    report.render(out)
    assert {(r["model_hash"], r["earlier_model"]) for r in predictions(out)} == {("q", "0")}
    assert 'id="earlier"' not in (out / "index.html").read_text() and report.build(out).accuracy == 1.0
    assert 'class="earlier"' not in (out / "gallery" / "page-1.html").read_text()
    assert not any("earlier" in rec for rec in detail_data(out)[1].values())

    # back to the first model, stopped before any image: no image row changed, yet every one is an earlier model's
    another_model(out, [], sha="ab" * 32, checkpoint="m.pt")
    report.render(out)
    html = (out / "index.html").read_text()
    assert (
        "20 of 20 images still hold" in html and "20 by resnet18, &lt;b&gt;n&lt;/b&gt;.pt (sha256 cdcdcdcdcdcd)" in html
    )
    assert 'Measured over</dt><dd class="bad">0 images' in html and report.build(out).accuracy is None
    assert (out / "gallery" / "page-1.html").read_text().count('class="earlier"') == 20
    assert all("earlier" in rec for rec in detail_data(out)[1].values())
    assert {(r["model_hash"], r["earlier_model"]) for r in predictions(out)} == {("q", "1")}


def predictions(out: Path) -> list[dict[str, str]]:
    """predictions.csv's rows, by column name."""
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_killed_run_lists_what_it_planned_and_committed_never_made_up_zeros(tmp_path):
    """A run killed (SIGKILL, out of memory) after it committed images was listed as "killed – 0 0 0 0 0 0 0".
    Closed by the next command under the lock, it now shows its plan's counts and, as computed, the images it
    committed; what it never recorded (its failures; every count of a run an older xaibatch left) is "unknown"."""
    rows = labeled_rows(6)
    out = synth(tmp_path / "o", rows)
    m = Manifest(out / FILENAME)
    legacy = m.start_run("/data/set", {"x": 1}, "p")  # an older xaibatch's row: the columns' zeros, never counted
    m.db.execute(
        "UPDATE runs SET status = 'killed', n_seen = 0, n_added = 0, n_changed = 0, n_removed = 0,"
        " n_unchanged = 0, n_failed = 0, n_computed = 0 WHERE id = ?",
        (legacy,),
    )
    killed = another_model(out, [rel for rel, _l, _p in rows[:4]], status="running")  # then SIGKILL
    m.db.execute(
        "UPDATE runs SET n_seen = 6, n_added = 0, n_changed = 0, n_removed = 0, n_unchanged = 0,"
        " n_failed = NULL, n_computed = NULL WHERE id = ?",
        (killed,),
    )  # what it recorded as it planned
    m.close()
    res = invoke("report", out)  # closes the stale run as a run would
    assert res.exit_code == 0, res.output
    history = (out / "history.html").read_text()
    cells = {
        int(run): [unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tds)]
        for run, tds in re.findall(r'<tr><th scope="row">(\d+)</th>(.*?)</tr>', history)
    }
    assert cells[killed][1:] == ["killed", "–", "6", "0", "0", "0", "0", "–", "unknown", "4"]  # resumed: not told apart
    assert cells[legacy][1:] == ["killed", "–", *["unknown"] * 8]
    assert cells[1][3:] == ["6", "6", "0", "0", "0", "0", "0", "6"]
    assert "killed, took – (4 computed, 0 unchanged)" in (out / "index.html").read_text()  # the last run's line


@pytest.fixture(scope="module")
def truth_run(tmp_path_factory, tiny_ckpt) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A real run over images with demo-style ground-truth masks beside some of them."""
    root = tmp_path_factory.mktemp("truth")
    inp = root / "in"
    fakes = write_images(inp / "FAKE", 3, seed=5)
    write_images(inp / "REAL", 2, seed=6)
    rng = np.random.default_rng(1)
    masks = {}
    for p in fakes:
        mask = np.zeros((32, 32), bool)
        y, x = rng.integers(0, 20, 2)
        mask[y : y + 12, x : x + 10] = True
        np.save(p.with_name(p.stem + ".mask.npy"), mask)
        masks[f"FAKE/{p.name}"] = mask
    run(
        RunOptions(
            input_dir=inp,
            out_dir=root / "out",
            methods=["gradcam", "lime"],
            checkpoint=tiny_ckpt,
            method_options={"lime": {"samples": 64}},
        ),
        log=lambda s: None,
    )
    return inp, root / "out", masks


def test_maps_whose_maxima_share_a_pixel_share_one_ring_that_names_them_all():
    """Two rings on one pixel drew "1" and "3" over each other; now one ring stands there labelled "1,3", inside
    the figure, and each map keeps its own row in the pointing game."""
    from types import SimpleNamespace as NS

    from xaibatch.report.detail import truth_record

    mask = np.zeros((32, 32), bool)
    mask[4:10, 4:10] = True
    peaks = {"A": (5, 6), "B": (20, 31), "C": (5, 6), "D": None, "E": (20, 31), "F": (5, 6)}  # (y, x)
    card = NS(
        rel="FAKE/x.png",
        maps=[NS(method=t, title=t, peak=p, shape=(32, 32), zero=False, nowhere=False) for t, p in peaks.items()],
    )
    t = truth_record(mask, card)
    by = {p["title"]: p for p in t["points"]}
    assert [p["n"] for p in t["points"]] == [1, 2, 3, 4, 5, 6]
    assert by["A"]["label"] == "1,3,6" and by["B"]["label"] == "2,5"
    assert all("label" not in by[k] and "x" not in by[k] for k in "CDEF")  # drawn by A's and B's rings
    assert (by["C"]["px"], by["C"]["hit"]) == ([6, 5], True) and (by["E"]["px"], by["E"]["hit"]) == ([31, 20], False)
    assert by["D"]["note"] == "map unreadable"
    for k in "AB":
        p = by[k]
        assert (p["x"], p["y"]) == (peaks[k][1] + 0.5, peaks[k][0] + 0.5)
        width = 0.6 * t["font"] * len(p["label"])  # the label fits (0.05: font and lx are rounded)
        assert 0 <= p["lx"] and p["lx"] + width <= t["w"] + 0.05
    assert len({p["colour"] for p in t["points"]}) == 6  # six methods, six colours


def test_ring_labels_stand_by_their_own_ring_and_cover_no_other_label_or_ring():
    """Each label stood up and to the right of its ring whatever stood there: with three maxima a few pixels
    apart, "3" covered "2" and "1" stood beside ring 3 (the audit's fake_00012). Now every label sits beside its
    ring, covers no other label or ring, stands nearer its own ring than any other, inside the figure."""
    from types import SimpleNamespace as NS

    from xaibatch.report.detail import label_box, truth_record

    def overlap(a, b):
        return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])

    mask = np.zeros((32, 32), bool)
    crowds = [
        {"A": (12, 14), "B": (10, 18), "C": (14, 18)},  # (y, x): three maxima a few pixels apart
        {"A": (16, 8), "B": (16, 12), "C": (16, 16), "D": (16, 20), "E": (16, 24)},  # a row
        {"A": (0, 0), "B": (0, 3), "C": (3, 0), "D": (31, 31)},  # three in a corner: no room, see below
    ]
    for peaks in crowds:
        maps = [NS(method=t, title=t, peak=p, shape=(32, 32), zero=False, nowhere=False) for t, p in peaks.items()]
        t = truth_record(mask, NS(rel="FAKE/x.png", maps=maps))
        pts, r = t["points"], t["r"]
        boxes = [label_box(p["label"], p["lx"], p["ly"], t["font"]) for p in pts]
        rings = [(p["x"] - r, p["y"] - r, p["x"] + r, p["y"] + r) for p in pts]
        for i, (p, box) in enumerate(zip(pts, boxes)):
            assert -0.01 <= box[0] and box[2] <= t["w"] + 0.05 and -0.01 <= box[1] and box[3] <= t["h"] + 0.05, p
            assert not any(overlap(box, b) for j, b in enumerate(boxes) if j != i), (peaks, p)
            if peaks is crowds[-1] and p["title"] != "D":
                continue  # three labels 3.6 px tall and three rings within 4 px of a corner: labels apart only
            assert not any(overlap(box, b) for b in rings), (peaks, p)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            near = min(range(len(pts)), key=lambda j: (cx - pts[j]["x"]) ** 2 + (cy - pts[j]["y"]) ** 2)
            assert near == i, (peaks, p)


def test_an_earlier_model_that_differs_in_its_factorys_code_is_named_in_words(monkeypatch):
    """Images still holding the predictions of a --model factory whose file was edited since (same weights): the
    summary names what else differed in words, not the record's field name ("with another code_sha256")."""
    from types import SimpleNamespace

    from xaibatch.report import data
    from xaibatch.runconfig import RunConfig

    model = {"arch": "net.py:build", "checkpoint": "w.pt", "checkpoint_sha256": "ab" * 32, "input_size": 32}
    old = RunConfig.from_dict({"model": {**model, "code_sha256": "1" * 64}})
    now = RunConfig.from_dict({"model": {**model, "code_sha256": "2" * 64}})
    monkeypatch.setattr(data, "read_run", lambda row: old)
    words = data.earlier_model_words("p1", object(), SimpleNamespace(predict_hash="p2", run=now))
    assert words == "net.py:build, w.pt (sha256 abababababab) with another factory code", words


def test_a_map_that_points_nowhere_is_not_scored():
    """An all-zero map (LIME when the model is sure whatever is hidden) has its "maximum" at (0, 0): it was scored
    a miss there. Now it is not scored, and neither is a signed map with no evidence for the class."""
    from types import SimpleNamespace as NS

    from xaibatch.report.detail import truth_record

    mask = np.zeros((8, 8), bool)
    mask[:2, :2] = True  # (0, 0) would be a hit
    flat = [NS(method="A", title="A", peak=[0, 0], shape=(8, 8), zero=True, nowhere=True)]
    flat.append(NS(method="B", title="B", peak=[0, 0], shape=(8, 8), zero=False, nowhere=True))
    flat.append(NS(method="C", title="C", peak=[0, 1], shape=(8, 8), zero=False, nowhere=False))
    by = {p["title"]: p for p in truth_record(mask, NS(rel="FAKE/x.png", maps=flat))["points"]}
    assert by["A"]["note"] == "the map is zero everywhere" and "hit" not in by["A"] and "label" not in by["A"]
    assert by["B"]["note"] == "the map shows no evidence for the class" and "hit" not in by["B"]
    assert by["C"]["hit"] is True and by["C"]["label"] == "3"


def _pointing_table(out: Path) -> list[list[str]]:
    """The summary's pointing-game table, as its cells' text."""
    page = (out / "index.html").read_text()
    if 'id="h-pointing"' not in page:
        return []
    body = page[page.index('id="h-pointing"') :]
    body = body[body.index("<tbody>") : body.index("</tbody>")]
    return [
        [unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def test_summary_scores_each_method_by_the_pointing_game_against_both_baselines(tmp_path, tiny_ckpt):
    """The summary's localization table: per method, the hits of the maps' maxima in the ground-truth masks
    over the images whose maps explain their true class, equal to localization.pointing_game (which reads the
    manifest and the masks itself); chance the masks' mean area, the centre point's rate on the same images;
    kept by an unchanged re-run (the saved summary)."""
    from xaibatch.report.localization import pointing_game

    inp = tmp_path / "in"
    fakes = write_images(inp / "FAKE", 12, seed=3)
    write_images(inp / "REAL", 3, seed=4)
    rng = np.random.default_rng(2)
    for i, p in enumerate(fakes[:10]):  # two FAKEs without a mask
        mask = np.zeros((32, 32), bool)
        y, x = rng.integers(0, 22, 2)
        mask[y : y + 10, x : x + 10 + i % 3] = True
        if i % 4 == 0:
            mask[16, 16] = True  # some masks cover the centre point (the centre is pixel (15, 15) of 32)
            mask[15, 15] = True
        np.save(p.with_name(p.stem + ".mask.npy"), mask)
    out = tmp_path / "out"
    opts = run_opts(inp, out, tiny_ckpt, ["gradcam", "lime"], method_options={"lime": {"samples": 32}}, target="label")
    run(opts, log=quiet)
    rows = _pointing_table(out)
    rels = [f"FAKE/{p.name}" for p in fakes[:10]]
    assert [r[0] for r in rows] == ["Grad-CAM", "LIME"]
    for row, method in zip(rows, ("gradcam", "lime"), strict=True):
        g = pointing_game(out, inp, method, rels)
        assert g.images == 10 and row[1] == "10"
        assert row[2].split(" ")[0] == str(g.hits)
        assert row[3].startswith(f"{100 * g.rate:.1f}% ± ")
        assert row[4] == f"{100 * g.chance:.1f}%" and row[5] == f"{100 * g.centre_rate:.1f}%"
        assert g.centre == 3  # the three masks drawn over the centre
    assert "Localization (pointing game)" in (out / "index.html").read_text()
    run(opts, log=quiet)  # unchanged: the summary comes from the saved snapshot
    assert _pointing_table(out) == rows


def test_the_pointing_game_leaves_out_maps_of_another_class_and_counts_maps_pointing_nowhere():
    """tally(): a misclassified image's maps (target != label) and unlabeled images are not scored, a map that
    points nowhere is a miss, an unreadable one is not scored; the verdict compares the rate less two standard
    errors with both baselines."""
    from types import SimpleNamespace as NS

    from xaibatch.report.localization import PointingGame, tally

    def truth(area, centre, *points):
        return [
            "key",
            {"area": area, "centre": centre, "points": [{"m": m, "title": m.upper(), **p} for m, p in points]},
        ]

    cards = [NS(rel=f"r{i}", label="FAKE", target="FAKE") for i in range(4)]
    cards += [NS(rel="wrong", label="FAKE", target="REAL"), NS(rel="nolabel", label=None, target="FAKE")]
    truths = {
        "r0": truth(0.1, True, ("a", {"hit": True}), ("b", {"hit": False})),
        "r1": truth(0.3, False, ("a", {"hit": False}), ("b", {"note": "map unreadable"})),
        "r2": truth(0.2, False, ("a", {"nowhere": True, "note": "the map is zero everywhere"}), ("b", {"hit": True})),
        "r3": ["key", {"skipped": "16x16, the image is 32x32"}],  # a mask of another size
        "wrong": truth(0.5, True, ("a", {"hit": True}), ("b", {"hit": True})),
        "nolabel": truth(0.5, True, ("a", {"hit": True}), ("b", {"hit": True})),
    }
    a, b = tally(cards, truths)
    assert (a.method, a.title, a.images, a.hits, a.nowhere, a.centre) == ("a", "A", 3, 1, 1, 1)
    assert a.chance == pytest.approx(0.2)
    assert (b.images, b.hits, b.nowhere, b.centre) == (2, 1, 0, 1) and b.chance == pytest.approx(0.15)
    sure = PointingGame("m", "M", 400, 300, 0, 0.1, 40)  # 75 % against 10 % and 10 %
    maybe = PointingGame("m", "M", 400, 120, 0, 0.1, 116)  # 30 % against 10 %, but the centre hits 29 %
    no = PointingGame("m", "M", 20, 3, 0, 0.1, 2)  # 15 % of 20: within two standard errors of 10 %
    assert (sure.good, maybe.good, no.good) == (True, None, False)
    assert "clearly more often than chance (10.0%) and the centre point" in sure.verdict
    assert "not clearly more often than a map that always points at the centre (29.0%)" in maybe.verdict
    assert "not clearly more often than chance (10.0%)" in no.verdict


def test_detail_page_shows_ground_truth_and_the_pointing_game(truth_run):
    from xaibatch.report.localization import pointing_game

    inp, out, masks = truth_run
    _site, records = detail_data(out)
    for rel, mask in masks.items():
        t = records[rel]["truth"]
        assert t and t["share"] == f"{100 * mask.mean():.1f}%"
        rows = [(p["title"], *p["px"], p["hit"]) for p in t["points"]]  # the pointing-game table's rows
        assert [r[0] for r in rows] == ["Grad-CAM", "LIME"]
        for (title, x, y, result), method in zip(rows, ("gradcam", "lime"), strict=True):
            m = np.load(out / "maps" / method / rel.replace(".png", ".npy"))
            if method == "lime":
                m = np.where(m > 0, m, 0)
            ys, xs = np.nonzero(m == m.max())  # equal maxima (a superpixel): the one nearest their centroid
            k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            want_y, want_x = ys[k], xs[k]
            assert (int(x), int(y)) == (want_x, want_y)
            hit = pointing_game(out, inp, method, [rel]).hits == 1
            assert bool(mask[want_y, want_x]) == hit
            assert result is hit
        assert re.fullmatch(r"(M\d+ \d+h\d+v1h-\d+z)+", t["path"])
    for rel, d in records.items():
        if rel.startswith("REAL/"):
            assert d["truth"] is None  # no mask, no section
    check_links(out)  # the figure's picture resolves too


def test_recomputed_map_updates_its_colour_bar_numbers(tmp_path):
    out = synth(tmp_path / "o", [("FAKE/a.png", 0, 0.9)], methods=("lime",))
    np.save(out / "maps" / "lime" / "FAKE" / "a.npy", np.full((8, 8), 0.25, np.float32))
    report.render(out)
    assert map_of(detail_of(out, "FAKE/a.png"), "lime")["ticks"] == ["−0.25", "0", "+0.25"]
    np.save(out / "maps" / "lime" / "FAKE" / "a.npy", np.full((8, 8), -0.5, np.float32))  # same paths, new map
    m = Manifest(out / FILENAME)
    with m.transaction():
        m.put_map(
            MapRow(
                "FAKE/a.png",
                "lime",
                "h2",
                "maps/lime/FAKE/a.npy",
                "maps/lime/FAKE/a.png",
                "thumbs/lime/FAKE/a.png",
                None,
                1,
            )
        )
    m.close()
    report.render(out)
    assert map_of(detail_of(out, "FAKE/a.png"), "lime")["ticks"] == ["−0.5", "0", "+0.5"]


def test_detail_data_gives_each_maps_saved_shape(tmp_path, tiny_ckpt):
    """The detail view's "raw map (.npy, float32, H×W)" link named the image's size, but an image over
    --max-map-side (by area) has its map saved smaller: the record carries the saved file's shape."""
    inp = tmp_path / "in"
    inp.mkdir()
    Image.new("RGB", (300, 60), (90, 20, 200)).save(inp / "wide.png")  # 18,000 pixels, over 40 x 40: scaled down
    Image.new("RGB", (30, 40), (20, 90, 200)).save(inp / "small.png")  # 1,200 pixels: its own size
    out = tmp_path / "out"
    run(RunOptions(input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=tiny_ckpt, max_map_side=40), log=quiet)
    _site, records = detail_data(out)
    shapes = {}
    for rel, rec in records.items():
        v = map_of(rec, "gradcam")
        shapes[rel] = v["shape"]
        assert v["shape"] == list(np.load(out / unquote(v["npy"])).shape), rel
        assert [rec["h"], rec["w"]] == list(Image.open(inp / rel).size[::-1])  # the image's size, as before
    assert shapes["small.png"] == [40, 30]
    h, w = shapes["wide.png"]
    assert h * w <= 40 * 40 * 1.01 and (h, w) != (60, 300), shapes


def test_the_saved_shape_of_a_map_read_back_or_unreadable(tmp_path):
    """Rows without a stored view (older folders): the shape comes from the .npy read once; an unreadable map
    has none, so the detail view names no size rather than a wrong one."""
    out = synth(tmp_path / "o", [("FAKE/a.png", 0, 0.9), ("REAL/b.png", 1, 0.2)])
    m = Manifest(out / FILENAME)
    m.db.execute("UPDATE images SET width = 5000, height = 600 WHERE rel = 'FAKE/a.png'")
    m.db.commit()
    m.close()
    np.save(out / "maps" / "gradcam" / "FAKE" / "a.npy", np.zeros((355, 2956), np.float32))  # --max-map-side 1024
    (out / "maps" / "gradcam" / "REAL" / "b.npy").write_bytes(b"not a .npy file")
    report.render(out)
    a, b = detail_of(out, "FAKE/a.png"), detail_of(out, "REAL/b.png")
    assert (a["w"], a["h"]) == (5000, 600) and map_of(a, "gradcam")["shape"] == [355, 2956]
    assert map_of(b, "gradcam")["shape"] is None


def test_a_fifo_named_like_a_mask_is_never_opened(tmp_path):
    inp = tmp_path / "in"
    (inp / "FAKE").mkdir(parents=True)
    os.mkfifo(inp / "FAKE" / "a.mask.npy")  # opening it for reading would block the report for good
    out = synth(tmp_path / "o", [("FAKE/a.png", 0, 0.9)], input_dir=inp)
    report.render(out)
    assert detail_of(out, "FAKE/a.png")["truth"] is None
    assert report.detail.load_array(inp, "FAKE/a.mask.npy") is None  # even when asked directly


# -- issue 20: the report reads no map back (views stored with the maps), one data file per page ----------


def _copied_with_rows(out: Path, copy: Path) -> tuple[Path, dict, dict]:
    """A copy of the output folder ``out`` at ``copy``, and its manifest's map and image rows."""
    shutil.copytree(out, copy)
    m = Manifest(copy / FILENAME)
    try:
        return copy, m.maps(), m.images()
    finally:
        m.close()


def test_views_are_stored_with_the_maps_and_the_report_reads_no_map(truth_run, tmp_path):

    from xaibatch.overlay import view_of

    inp, out, _masks = truth_run
    copy, maps, images = _copied_with_rows(out, tmp_path / "out")
    for (rel, method), row in maps.items():  # computed with the picture (overlay.views_batch) ...
        a = np.load(copy / row.npy)
        want = view_of(a, images[rel].width, images[rel].height, method == "lime")
        assert row.view["peak"] == want["peak"] and row.view["shape"] == want["shape"] == list(a.shape)
        assert row.view["scale"] == pytest.approx(want["scale"], rel=1e-5)  # ... as the report once read it back
    before = detail_data(copy)
    for row in maps.values():
        (copy / row.npy).unlink()  # the report needs none of them
    (copy / layout.REPORT_STATE).unlink()  # and builds everything again
    stats = report.render(copy)
    assert not stats.reused and detail_data(copy) == before


def test_an_older_folder_gets_its_views_once_and_nothing_is_recomputed(truth_run, tmp_path, tiny_ckpt):
    import shutil
    import sqlite3

    inp, out, _masks = truth_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = detail_data(copy)
    m = Manifest(copy / FILENAME)
    views = {k: r.view for k, r in m.maps().items()}
    m.close()
    db = sqlite3.connect(copy / FILENAME)  # a manifest of schema 2: no view column
    db.execute("ALTER TABLE maps DROP COLUMN view_json")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    res = run(
        RunOptions(
            input_dir=inp,
            out_dir=copy,
            methods=["gradcam", "lime"],
            checkpoint=tiny_ckpt,
            method_options={"lime": {"samples": 64}},
        ),
        log=lambda s: None,
    )
    assert res.computed == 0 and res.unchanged == len(images_of(copy))
    m = Manifest(copy / FILENAME)
    after = {k: r.view for k, r in m.maps().items()}
    m.close()
    assert after.keys() == views.keys()
    for k, v in views.items():
        assert after[k]["peak"] == v["peak"] and after[k]["scale"] == pytest.approx(v["scale"], rel=1e-5)
    assert detail_data(copy) == before
    assert report.render(copy).reused  # read once: the next report moves nothing


def test_views_an_older_xaibatch_stored_without_the_flat_flags_are_read_again_once(truth_run, tmp_path, monkeypatch):
    """Views written before the "zero"/"nowhere" flags (xaibatch of 2026-12-04 to 12-06) lack them: the report of
    an upgraded folder coloured a Grad-CAM map that is zero everywhere by a scale ("Full colour: values of 1"),
    called a flat LIME map weak evidence, and scored such maps' peaks in the pointing game, where a fresh run
    says "zero everywhere" and counts them as misses (16 of 900 maps of a folder 7e5dfc3 wrote). Only maps that
    may be flat are read again: a peak at the first pixel (the argmax of no evidence), a signed map's scale at most
    the zero threshold (LIME of +-5e-7, its peak elsewhere), an unsigned map's fallback scale; every other view
    gains its flag from its numbers without its map being read (every view of every older folder lacks it)."""
    import sqlite3

    from xaibatch.overlay import view_of
    from xaibatch.report import detail as detail_mod

    inp, out, _masks = truth_run
    copy, maps, images = _copied_with_rows(out, tmp_path / "out")
    flat = {  # zero; no positive value; values within the zero threshold, the largest off the first pixel
        "FAKE/img_000.png": ("gradcam", {(3, 4): 0.0}),
        "FAKE/img_001.png": ("lime", {(3, 4): -0.25}),
        "FAKE/img_002.png": ("lime", {(0, 29): 2.07e-7, (5, 5): -4.9e-7}),
    }
    db = sqlite3.connect(copy / FILENAME)
    for rel, (method, values) in flat.items():
        row = maps[rel, method]
        a = np.zeros_like(np.load(copy / row.npy))
        for at, value in values.items():
            a[at] = value
        np.save(copy / row.npy, a)
        view = view_of(a, images[rel].width, images[rel].height, signed=method == "lime")
        old = {k: v for k, v in view.items() if k not in ("zero", "nowhere")}  # as an older xaibatch stored it
        db.execute("UPDATE maps SET view_json = ? WHERE rel = ? AND method = ?", (json.dumps(old), rel, method))
    assert json.loads(db.execute("SELECT view_json FROM maps WHERE rel = 'FAKE/img_002.png' AND method = 'lime'")
                      .fetchone()[0])["peak"] == [0, 29]  # fmt: skip
    others = {
        k: r
        for k, r in maps.items()
        if k[0] not in flat and r.view and not r.view.get("nowhere") and r.view.get("peak") != [0, 0]
    }
    for (rel, method), row in others.items():
        old = {k: v for k, v in row.view.items() if k not in ("zero", "nowhere")}
        db.execute("UPDATE maps SET view_json = ? WHERE rel = ? AND method = ?", (json.dumps(old), rel, method))
    db.commit()
    db.close()
    read: list[str] = []
    real_load = detail_mod.load_array
    monkeypatch.setattr(
        detail_mod, "load_array", lambda root, rel, **kw: read.append(rel) or real_load(root, rel, **kw)
    )

    report.render(copy)
    assert len(others) >= 4 and sorted(read) == sorted(maps[rel, method].npy for rel, (method, _v) in flat.items())
    m = Manifest(copy / FILENAME)
    assert all(m.maps()[k].view == {**r.view, "nowhere": False} for k, r in others.items())
    views = {rel: m.maps()[rel, method].view for rel, (method, _v) in flat.items()}
    m.close()
    assert views["FAKE/img_000.png"].get("zero") is True and views["FAKE/img_000.png"].get("nowhere") is True
    assert views["FAKE/img_001.png"].get("nowhere") is True and not views["FAKE/img_001.png"].get("zero")
    assert views["FAKE/img_002.png"].get("zero") is True and views["FAKE/img_002.png"].get("nowhere") is True
    shown = map_of(detail_of(copy, "FAKE/img_000.png"), "gradcam")
    assert shown["weak"].startswith("zero everywhere") and shown["ticks"] == [], shown  # no colour bar to read
    assert report.render(copy).reused  # read once: the next report moves nothing


def images_of(out: Path) -> dict:
    m = Manifest(out / FILENAME)
    try:
        return m.images()
    finally:
        m.close()


def test_a_report_with_its_colour_bars_imports_no_matplotlib(tmp_path):
    import subprocess
    import sys

    out = synth(tmp_path / "o", labeled_rows(30), methods=("gradcam", "lime"))
    report.render(out)
    (out / layout.REPORT_STATE).unlink()  # every page and data file is built again; no figure changes
    code = (
        "import sys; from pathlib import Path; from xaibatch import report; "
        f"s = report.render(Path({str(out)!r})); assert not s.reused; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(report.__file__).parents[2])},
    )
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    m = Manifest(out / FILENAME)  # a change the figures show: they are redrawn, still without matplotlib
    m.db.execute("UPDATE images SET confidence = 0.991, probs_json = '[0.991, 0.009]' WHERE rel = 'FAKE/im_0000.png'")
    m.close()
    before = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(report.__file__).parents[2])},
    )
    assert r.stdout.strip() == "[]", r.stdout + r.stderr  # the figures are SVG written by report/figures.py
    after = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}  # drawn by a forked process or here
    new = set(after) - set(before)
    assert any(n.startswith("confidence-") for n in new) and all(b"<svg" in after[n] for n in new)


def _children_die(monkeypatch, forked_mod) -> list[int]:
    """From now on every process report/forked.py forks exits at once (status 3); returns their pids as they start."""
    real_fork = forked_mod.os.fork
    started: list[int] = []

    def fork_that_dies():
        pid = real_fork()
        if pid == 0:
            forked_mod.os._exit(3)
        started.append(pid)
        return pid

    monkeypatch.setattr(forked_mod.os, "fork", fork_that_dies)
    return started


def test_figures_drawn_by_the_forked_process_are_the_ones_drawn_inline(tmp_path, monkeypatch):
    """report/linked.py:Drawings draws the SVGs in a forked process beside the pages (report/forked.py); the
    bytes are the same as drawn here (one core, another thread running), and a drawing process that dies is
    replaced by drawing here."""
    import importlib

    forked_mod = importlib.import_module("xaibatch.report.forked")
    out = synth(tmp_path / "o", labeled_rows(30), methods=("gradcam", "lime"))

    def drawn() -> dict[str, bytes]:
        for d in ("figures", "assets"):
            shutil.rmtree(out / d, ignore_errors=True)
        (out / layout.REPORT_STATE).unlink(missing_ok=True)
        report.render(out)
        drawings = [p for d in ("figures", "assets") for p in (out / d).glob("*.svg") if p.name[:5] != "icon."]
        return {p.name: p.read_bytes() for p in drawings}  # drawn, not the page icon copied from the templates

    forked = drawn()
    assert len(forked) == 12  # two figures, two colour bars, a mean map per method and gallery group (8)
    monkeypatch.setattr(forked_mod.os, "sched_getaffinity", lambda pid: {0})
    assert drawn() == forked
    monkeypatch.undo()
    monkeypatch.setattr(forked_mod.os, "fork", lambda: (_ for _ in ()).throw(AssertionError("forked beside a thread")))
    monkeypatch.setattr(forked_mod.threading, "active_count", lambda: 2)
    assert drawn() == forked
    monkeypatch.undo()
    started = _children_die(monkeypatch, forked_mod)
    assert drawn() == forked and started


def _rebuilt(out: Path, copy: Path) -> tuple[dict[str, bytes], tuple, dict]:
    """A first build of ``out``'s gallery and detail files in a copy: the files, the counts, the saved state."""
    import shutil

    shutil.copytree(out, copy)
    for top in ("detail", "gallery"):
        shutil.rmtree(copy / top, ignore_errors=True)
    (copy / layout.REPORT_STATE).unlink(missing_ok=True)
    s = report.render(copy)
    files = {str(p.relative_to(copy)): p.read_bytes() for top in ("detail", "gallery") for p in (copy / top).rglob("*")}
    state = json.loads((copy / layout.REPORT_STATE).read_text())
    return files, (s.written, s.unchanged, s.pages, s.biggest_page), {k: state[k] for k in ("pages", "truth")}


def test_detail_files_written_by_a_forked_process_are_the_ones_written_inline(truth_run, tmp_path, monkeypatch):
    """render.py writes the detail data files in a forked process beside the gallery (report/forked.py): the
    same files, counts and cached ground truths as written here (one core), and here again when it dies."""
    import importlib

    forked_mod = importlib.import_module("xaibatch.report.forked")
    _inp, out, _masks = truth_run

    def written(name: str) -> tuple[dict[str, bytes], tuple, dict]:
        return _rebuilt(out, tmp_path / name)

    forked = written("forked")
    assert any(k.startswith("detail/") and k.endswith(".js") for k in forked[0]) and forked[2]["truth"]
    monkeypatch.setattr(forked_mod.os, "sched_getaffinity", lambda pid: {0})
    assert written("inline") == forked
    monkeypatch.undo()
    started = _children_die(monkeypatch, forked_mod)
    # the figures', the CSV's, the pages' (without a saved state the figures are drawn again: PageWriter.trusted)
    assert written("died") == forked and len(started) == 3


def _counted_forks(monkeypatch) -> tuple[types.ModuleType, list[int]]:
    """report/forked.py, whose forks append their children's pids to the list returned."""
    import importlib

    forked_mod = importlib.import_module("xaibatch.report.forked")
    started: list[int] = []
    real_fork = forked_mod.os.fork

    def counting_fork():
        pid = real_fork()
        if pid:
            started.append(pid)
        return pid

    monkeypatch.setattr(forked_mod.os, "fork", counting_fork)
    return forked_mod, started


def test_detail_files_split_over_several_forked_processes_are_the_ones_written_inline(truth_run, tmp_path, monkeypatch):
    """On a host with cores to spare a first build's detail files are written by several forked processes, each
    a contiguous run of gallery pages: the same files, counts and ground truths as one process or none."""
    forked_mod, started = _counted_forks(monkeypatch)
    monkeypatch.setattr(report.model, "PAGE_SIZE", 2)  # 5 images: 3 gallery pages at least
    _inp, out, _masks = truth_run

    def written(name: str, cores: int) -> tuple[dict[str, bytes], tuple, dict]:
        monkeypatch.setattr(forked_mod.os, "sched_getaffinity", lambda pid: set(range(cores)))
        return _rebuilt(out, tmp_path / name)

    inline = written("inline", 1)
    assert not started
    many = written("many", 16)
    pages = sum(1 for k in inline[0] if k.startswith("detail/page-") and k.endswith(".js"))
    # one per run of pages, the CSV's and the figures' (without a saved state they are drawn again)
    assert pages >= 3 and len(started) == min(pages, 6) + 2
    assert many == inline


def test_a_rerun_whose_pages_changed_shares_them_with_forked_processes(truth_run, tmp_path, monkeypatch):
    """A re-run's build whose pages are due (a night's new images move most cards to another page; a new method
    changes them all) shares them with forked processes as a first build does, instead of rendering every page in
    this one: the same files, counts and saved state as inline."""
    forked_mod, started = _counted_forks(monkeypatch)
    monkeypatch.setattr(report.model, "PAGE_SIZE", 2)  # 5 images: 3 gallery pages at least
    _inp, out, _masks = truth_run

    def rerun(name: str, cores: int) -> tuple[dict[str, bytes], tuple, dict]:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        report.render(copy)  # the build a re-run finds: its saved state, at this PAGE_SIZE
        state = json.loads((copy / layout.REPORT_STATE).read_text())
        state["content"] = "an earlier run's"
        state["pages"] = {rel: "earlier/" + key.rpartition("/")[2] for rel, key in state["pages"].items()}
        (copy / layout.REPORT_STATE).write_text(json.dumps(state))
        (copy / "gallery" / "page-2.html").write_text("cut short")  # one page whose bytes change
        monkeypatch.setattr(forked_mod.os, "sched_getaffinity", lambda pid: set(range(cores)))
        started.clear()
        s = report.render(copy)
        files = {str(p.relative_to(copy)): p.read_bytes() for t in ("detail", "gallery") for p in (copy / t).rglob("*")}
        state = json.loads((copy / layout.REPORT_STATE).read_text())
        return files, (s.written, s.unchanged, s.pages, s.biggest_page), {k: state[k] for k in ("pages", "truth")}

    inline = rerun("inline", 1)
    assert not started and inline[1][0] >= 1  # the page cut short was written again
    many = rerun("many", 16)
    pages = sum(1 for k in inline[0] if k.startswith("detail/page-") and k.endswith(".js"))
    assert pages >= 3 and len(started) == min(pages, 6) + 1  # one per run of pages, and the CSV's
    assert many == inline


def test_pages_a_forked_process_took_and_never_sent_are_written_here(truth_run, tmp_path, monkeypatch):
    """A first build's pages are taken from one queue by the forked processes and this one (render._write_pages):
    a child that dies after taking a run of pages sends nothing back, and those pages are written here, the same
    files, counts and ground truths as a build in one process."""
    import importlib

    forked_mod = importlib.import_module("xaibatch.report.forked")
    monkeypatch.setattr(report.model, "PAGE_SIZE", 2)  # 5 images: 3 gallery pages at least
    _inp, out, _masks = truth_run
    monkeypatch.setattr(forked_mod.os, "sched_getaffinity", lambda pid: {0})
    inline = _rebuilt(out, tmp_path / "inline")
    parent, took = os.getpid(), tmp_path / "took"
    took.mkdir()
    real_take = forked_mod.Queue.take

    def take_and_die(self):
        item = real_take(self)
        if os.getpid() != parent and item is not None:  # a child: dies holding the run it took
            (took / str(item)).touch()
            os._exit(3)
        return item

    monkeypatch.setattr(forked_mod.Queue, "take", take_and_die)
    monkeypatch.setattr(forked_mod.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert _rebuilt(out, tmp_path / "lost") == inline
    assert any(took.iterdir())  # some runs were taken by the children, and lost


def test_a_queue_hands_each_item_to_one_process(monkeypatch):
    """report/forked.py:Queue: the forked processes and this one take every item exactly once between them."""
    from xaibatch.report import forked

    monkeypatch.setattr(forked, "can_fork", lambda: True)
    q = forked.Queue(forked.Queue.MAX_ITEMS)
    children = [forked.Forked(lambda: list(iter(q.take, None))) for _ in range(3)]
    mine = list(iter(q.take, None))
    theirs = [child.result() for child in children]
    q.close()
    taken = mine + [i for got in theirs for i in got]
    assert sorted(taken) == list(range(forked.Queue.MAX_ITEMS))
    empty = forked.Queue(0)
    assert q.take() is None and empty.take() is None
    empty.close()
    with pytest.raises(ValueError):
        forked.Queue(forked.Queue.MAX_ITEMS + 1)


def test_predictions_csv_made_beside_the_cards_is_the_one_made_here(tmp_path, monkeypatch):
    """render.py makes predictions.csv's bytes in a forked process while this one makes the cards (which consume
    the manifest's rows): the same bytes as made here on one core, and, when that process dies, made here from
    the rows read again."""
    import importlib

    forked_mod = importlib.import_module("xaibatch.report.forked")
    render_mod = importlib.import_module("xaibatch.report.render")
    out = synth(tmp_path / "o", labeled_rows(9), methods=("gradcam", "lime"), files=False, failures=[("x.png", "bad")])
    made_here = []
    real = render_mod.predictions_csv

    def counted(*args):
        made_here.append(os.getpid())
        return real(*args)

    monkeypatch.setattr(render_mod, "predictions_csv", counted)

    def csv_of(name: str) -> bytes:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        report.render(copy)
        return (copy / "predictions.csv").read_bytes()

    beside = csv_of("beside")
    assert made_here == []  # not here: in the forked process
    monkeypatch.setattr(forked_mod.os, "sched_getaffinity", lambda pid: {0})
    assert csv_of("inline") == beside and made_here == [os.getpid()]
    monkeypatch.undo()
    monkeypatch.setattr(render_mod, "predictions_csv", counted)
    started = _children_die(monkeypatch, forked_mod)
    assert csv_of("died") == beside and started and len(made_here) == 2
    assert beside.count(b"\n") == 10


def test_page_chunks_are_contiguous_balanced_and_never_empty():
    from xaibatch.report.model import GalleryPage
    from xaibatch.report.render import page_chunks

    def pages(*sizes):
        out, first = [], 1
        for n, size in enumerate(sizes, 1):
            out.append(GalleryPage(n, f"p{n}", [], None, None, [], first, first + size - 1))
            first += size
        return out

    ps = pages(200, 200, 200, 200, 200, 200, 200, 13)
    for k in (1, 2, 3, 6, 20):
        chunks = page_chunks(ps, k)
        assert [p for c in chunks for p in c] == ps and all(chunks) and len(chunks) <= k
        assert len(chunks) == min(k, len(ps))
    sizes = [sum(p.last - p.first + 1 for p in c) for c in page_chunks(ps, 3)]
    assert max(sizes) <= 600 and min(sizes) >= 400, sizes


def test_css_gradients_are_the_overlays_colours():
    for signed in (False, True):
        assert report.text.css_gradient(signed) == report.text.css_gradient(signed, computed=True)


def test_lime_magnitude_shows_in_the_gallery_and_the_detail_view(tmp_path):
    rows = [("FAKE/strong.png", 0, 0.9), ("FAKE/tiny.png", 0, 0.99)]
    out = synth(tmp_path / "o", rows, methods=("gradcam", "lime"))
    np.save(out / "maps" / "lime" / "FAKE" / "strong.npy", np.full((8, 8), 0.2, np.float32))
    np.save(out / "maps" / "lime" / "FAKE" / "tiny.npy", np.linspace(-6e-4, 4e-4, 64, dtype=np.float32).reshape(8, 8))
    report.render(out)
    cards = {re.search(r'data-name="([^"]*)"', c).group(1): c for c in _cards_html(out / "gallery" / "page-1.html")}
    assert re.search(r'<p class="mag" data-method="lime">LIME scale ±0\.2</p>', cards["FAKE/strong.png"])
    assert re.search(
        r'<p class="mag weak" data-method="lime" title="weak evidence: [^"]*0\.0006[^"]*">'
        r"LIME scale ±0\.0006 ⚠ weak</p>",
        cards["FAKE/tiny.png"],
    )
    assert 'class="mag' not in cards["FAKE/strong.png"].split("lime")[0] + "gradcam"  # unsigned maps: no scale
    assert "“⚠ weak” marks maps under 0.01" in (out / "gallery" / "page-1.html").read_text()
    _site, records = detail_data(out)
    assert "weak" not in map_of(records["FAKE/strong.png"], "lime")
    weak = map_of(records["FAKE/tiny.png"], "lime")["weak"]
    assert "at most 0.0006" in weak and "overstate" in weak
    assert map_of(records["FAKE/tiny.png"], "lime")["ticks"] == ["−0.0006", "0", "+0.0006"]
    m = Manifest(out / FILENAME)  # an all-zero LIME map: no superpixel had any effect, the weakest of all
    m.db.execute("UPDATE maps SET view_json = NULL WHERE rel = 'FAKE/strong.png'")
    m.close()
    np.save(out / "maps" / "lime" / "FAKE" / "strong.npy", np.zeros((8, 8), np.float32))
    report.render(out)
    flat = map_of(detail_of(out, "FAKE/strong.png"), "lime")
    assert (
        flat["weak"].startswith("zero everywhere: hiding any one superpixel") and flat["ticks"] == []
    )  # not "−0 0 +0"


# -- issue 22: hostile ground-truth masks and links under the output folder ------------------------------


def test_hostile_masks_are_skipped_with_a_reason_never_a_crash(tmp_path, tiny_ckpt):
    from click.testing import CliRunner

    from xaibatch.cli import cli

    inp = tmp_path / "in"
    write_images(inp / "FAKE", 6, seed=3)
    names = sorted(p.stem for p in (inp / "FAKE").glob("*.png"))
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    np.save(inp / "FAKE" / f"{names[0]}.mask.npy", mask)  # a good one
    np.save(inp / "FAKE" / f"{names[1]}.mask.npy", np.zeros((32, 32), dtype=[("a", "<i4"), ("b", "<f4")]))
    os.mkfifo(inp / "FAKE" / f"{names[2]}.mask.npy")
    os.symlink("/dev/zero", inp / "FAKE" / f"{names[3]}.mask.npy")
    np.save(inp / "FAKE" / f"{names[4]}.mask.npy", np.zeros((2000, 5001), bool))  # 10M pixels
    np.save(inp / "FAKE" / f"{names[5]}.mask.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    out = tmp_path / "out"
    for _ in range(2):  # every run, not only the first
        r = CliRunner().invoke(
            cli, ["run", str(inp), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
        )
        assert r.exit_code == 0, r.output
    _site, records = detail_data(out)
    truths = {rel.split("/")[1][: -len(".png")]: d["truth"] for rel, d in records.items()}
    assert truths[names[0]]["share"] == "6.2%" and len(truths[names[0]]["points"]) == 1
    assert truths[names[1]] == {"mask": f"{names[1]}.mask.npy", "skipped": "unsupported dtype |V8"}
    assert truths[names[2]] is None and truths[names[3]] is None  # not regular files: never opened
    assert "over the limit of 10,000,000 pixels" in truths[names[4]]["skipped"]
    assert truths[names[5]]["skipped"] == "unsupported dtype |O"
    check_links(out)


def test_mask_headers_parsed_once_read_as_numpy_reads_them(tmp_path):
    """read_array parses each distinct .npy header once (detail._read_header): arrays equal np.load's, C and Fortran
    order, version 1 and 2, the second file of a shape from the cache; broken headers refused as before."""
    import io

    from xaibatch.report import detail

    rng = np.random.default_rng(0)
    arrays = {
        "a.npy": rng.random((32, 32)) > 0.5,
        "b.npy": rng.random((32, 32)) > 0.5,  # the same header as a.npy
        "c.npy": np.asfortranarray(rng.random((5, 7)).astype(np.float32)),
        "d.npy": rng.integers(0, 9, (3, 4), dtype=np.int16),
    }
    for name, a in arrays.items():
        with open(tmp_path / name, "wb") as f:
            np.lib.format.write_array(f, a, version=(2, 0) if name == "d.npy" else (1, 0))
    for _ in range(2):
        for name, a in arrays.items():
            got = detail.read_array(tmp_path, name)
            assert got.dtype == a.dtype and np.array_equal(got, a), name
    good = (tmp_path / "a.npy").read_bytes()
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arrays["a.npy"], version=(3, 0))
    broken = {
        "magic.npy": b"\x93NUMPX" + good[6:],
        "v3.npy": buf.getvalue(),
        "short.npy": good[:40],
        "long.npy": good[:8] + (60_000).to_bytes(2, "little") + good[10:],
    }
    for name, body in broken.items():
        (tmp_path / name).write_bytes(body)
        with pytest.raises(detail.BadArray, match="not a .npy file"):
            detail.read_array(tmp_path, name)


def test_a_symlink_under_the_output_folder_never_leads_a_report_write_outside(tmp_path, tiny_ckpt):
    """Issue 22 item 4, its repro: a link planted below detail/ (or in place of a report folder or file)."""
    from click.testing import CliRunner

    from xaibatch.cli import cli

    inp = tmp_path / "small"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    out = tmp_path / "o"
    args = ["run", str(inp), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "fake_00000.html").write_text("precious")
    (victim / "page-1.html").write_text("precious")
    (victim / "page-1.js").write_text("precious")

    def untouched() -> bool:
        return sorted(p.name for p in victim.iterdir()) == ["fake_00000.html", "page-1.html", "page-1.js"] and all(
            p.read_text() == "precious" for p in victim.iterdir()
        )

    (out / "detail" / "FAKE").mkdir()
    os.rmdir(out / "detail" / "FAKE")
    os.symlink(victim, out / "detail" / "FAKE")  # the issue's repro
    (out / ".xaibatch-report.json").unlink()  # whatever makes the report rebuild its pages
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert untouched()
    for name in ("page-1.html", "page-1.js"):  # a file link in place of a page: replaced, never written through
        (out / "detail" / name).unlink()
        os.symlink(victim / name, out / "detail" / name)
    (out / ".xaibatch-report.json").unlink()
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert untouched() and not (out / "detail" / "page-1.js").is_symlink()
    for top in ("detail", "gallery", "assets", "figures"):  # a report folder replaced by a link: refused
        moved = tmp_path / f"{top}.bak"
        os.rename(out / top, moved)
        os.symlink(victim, out / top)
        (out / ".xaibatch-report.json").unlink(missing_ok=True)
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and "resolves outside" in r.output and "Traceback" not in r.output, (top, r.output)
        assert untouched(), top
        os.unlink(out / top)
        os.rename(moved, out / top)


def test_cards_rendered_without_jinja_are_the_macros_bytes(tmp_path):
    """report/fastcards.py writes the packaged card macro's output in Python (the gallery's per-image cost)."""
    import importlib

    render = importlib.import_module("xaibatch.report.render")
    rows = (
        [(f"FAKE/{n}", 0, 0.8) for n in HOSTILE]
        + [(f"REAL/{n}", 1, 0.3) for n in HOSTILE]
        + [(f"x/{n}", None, 0.6) for n in HOSTILE[:3]]
        + [("FAKE/sure.png", 0, 0.9997)]  # "&gt;99.9%" (fmt_pct): fastcards wrote a bare ">"
    )
    out = synth(tmp_path / "o", rows, methods=("gradcam", "lime"))
    np.save(out / "maps" / "lime" / "FAKE" / "a&b.npy", np.full((8, 8), 3e-4, np.float32))  # a weak one
    m = Manifest(out / FILENAME)  # faithfulness scores on some maps: data-del-*/data-ins-* attributes
    m.db.execute("UPDATE maps SET deletion = 0.25, insertion = 0.5 WHERE method = 'gradcam' AND rel LIKE 'REAL/%'")
    m.close()
    report.render(out)
    data = report.build(out)
    data.assets = {"css": "a.css", "js": "a.js", "detail": "d.js"}
    gallery = report.environment().get_template("gallery.html")
    assert data.pages and any("weak" in v.weak for c in data.cards for v in c.maps)
    for c in data.cards[::3]:  # an earlier model's prediction (data.assemble), named by its recorded checkpoint
        c.earlier = f"resnet18, {c.rel} (sha256 abababababab)"
    for p in data.pages:
        fast = render._render_gallery(gallery, data, p, True)
        assert fast == render._render_gallery(gallery, data, p, False)
        assert "data-del-gradcam" in fast and "⚠ weak" in fast and "&lt;img src=x" in fast
        assert 'class="earlier" title="predicted by resnet18, FAKE/' in fast
    assert any("<strong>&gt;99.9%</strong>" in render._render_gallery(gallery, data, p, True) for p in data.pages)


def test_a_mask_is_read_once_not_on_every_page_write(truth_run, tmp_path, monkeypatch):
    import importlib
    import shutil

    _inp, out, masks = truth_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    report.render(copy)
    before = detail_data(copy)[1]
    m = Manifest(copy / FILENAME)  # another image on the same page changes: the page's data file is rebuilt
    m.db.execute("UPDATE images SET confidence = confidence * 0.999 WHERE rel LIKE 'REAL/%'")
    m.close()
    detail = importlib.import_module("xaibatch.report.detail")

    def no_reads(*_a, **_k):
        raise AssertionError("a mask was read again")

    monkeypatch.setattr(detail, "read_array", no_reads)
    stats = report.render(copy)
    assert not stats.reused and "detail/page-1.js" in {str(p.relative_to(copy)) for p in page_files(copy)}
    after = detail_data(copy)[1]
    assert {rel: after[rel]["truth"] for rel in masks} == {rel: before[rel]["truth"] for rel in masks}


def _region_path_reference(mask: np.ndarray) -> str:
    """The region path as first written: one 2-d diff per row, starts and ends by argwhere."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    starts, ends = np.argwhere(d == 1), np.argwhere(d == -1)
    return "".join(f"M{x0} {y}h{x1 - x0}v1h-{x1 - x0}z" for (y, x0), (_y, x1) in zip(starts.tolist(), ends.tolist()))


def test_region_paths_and_shares_are_those_of_the_row_by_row_code():
    """detail.region_path works on the flattened rows (#20: the detail process's ground-truth work); its path is the
    row-by-row one's, character for character, and the share is mask.mean()'s, for odd shapes and runs that
    touch both edges."""
    from xaibatch.report import detail

    rng = np.random.default_rng(7)
    masks = [np.ones((1, 1), bool), np.zeros((3, 4), bool), np.ones((5, 2), bool), np.eye(6, dtype=bool)]
    masks += [
        rng.random((h, w)) < p for h, w in [(1, 9), (9, 1), (32, 32), (7, 129), (300, 200)] for p in (0.1, 0.5, 0.9)
    ]
    for m in masks:
        assert detail.region_path(m) == _region_path_reference(m), m.shape
        assert np.count_nonzero(m) / m.size == float(m.mean()), m.shape  # truth_record's share


def test_masks_are_read_without_resolving_each_path(truth_run, tmp_path, monkeypatch):
    """#20: resolving the input folder and each mask's path again (files.safe_join: an lstat per part) was most of
    reading a mask; the report resolves the input folder once and opens each mask from its folder's descriptor."""
    import shutil

    from xaibatch.report import forked
    from xaibatch.layout import REPORT_STATE

    inp, out, masks = truth_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / REPORT_STATE).unlink()  # no cached ground truths: every mask is read
    monkeypatch.setattr(forked, "can_fork", lambda: False)  # the detail files in this process, where we count
    real = os.path.realpath
    resolved = []

    def counting(path, *a, **k):
        if str(path).startswith(str(inp)):
            resolved.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os.path, "realpath", counting)
    report.render(copy)
    monkeypatch.undo()
    assert resolved == [str(inp)], resolved  # the folder, once; no mask path
    assert {rel: detail_of(copy, rel)["truth"] for rel in masks} == {rel: detail_of(out, rel)["truth"] for rel in masks}
    assert all(detail_of(copy, rel)["truth"]["points"] for rel in masks)


def test_the_summary_says_once_what_a_pred_label_runs_maps_explain(tmp_path):
    """--target pred,label: the summary said "the predicted class, and for a misclassified image also its true
    class" in the settings and, a few lines below, "Maps explain the predicted class." """
    out = synth(tmp_path / "o", labeled_rows(4), source={"kind": "checkpoint", "target": "pred,label"})
    report.render(out)
    text = re.sub(r"<[^>]+>", " ", (out / "index.html").read_text())
    said = re.findall(r"Maps explain\s+(.*?)(?:\.|\s\s)", text)  # up to the sentence's or the cell's end
    assert said == ["the predicted class, and for a misclassified image also its true class"], said


def test_a_signed_captum_map_is_not_described_as_lime(tmp_path, monkeypatch):
    """IntegratedGradients' signed maps are per-pixel attributions in logit units: no superpixels, no probability
    units, and LIME's 0.01 'weak' threshold (a probability) does not apply to them."""
    ig = "captum:IntegratedGradients"
    monkeypatch.setitem(
        METHODS, ig, {"title": "IntegratedGradients (captum)", "signed": True, "config": {"reduce": "sum"}, "hash": "i"}
    )
    out = synth(tmp_path / "o", [("FAKE/a.png", 0, 0.9)], methods=("lime", ig))
    np.save(out / "maps" / ig / "FAKE" / "a.npy", np.linspace(-6e-4, 4e-4, 64, dtype=np.float32).reshape(8, 8))
    np.save(out / "maps" / "lime" / "FAKE" / "a.npy", np.linspace(-6e-4, 4e-4, 64, dtype=np.float32).reshape(8, 8))
    report.render(out)
    site, records = detail_data(out)
    lime, grads = site["methods"]["lime"], site["methods"][ig]
    assert "superpixel" in lime["legend"] and "probability" in lime["scale_words"]
    for words in (grads["legend"], grads["scale_words"]):
        assert "superpixel" not in words and "LIME" not in words and "probability" not in words, words
    assert "logit" in grads["scale_words"]
    ig_map, lime_map = map_of(records["FAKE/a.png"], ig), map_of(records["FAKE/a.png"], "lime")
    assert "weak" in lime_map and "weak" not in ig_map
    assert "superpixel" not in ig_map["note"] and "probability" not in ig_map["note"] and "logit" in ig_map["note"]
    gallery = (out / "gallery" / "page-1.html").read_text()
    assert "IntegratedGradients (captum) scale ±0.0006</p>" in gallery  # printed, not flagged
    legends = re.search(r'<ul class="legends">(.*?)</ul>', gallery, re.S).group(1)
    ig_scale = next(li for li in legends.split("<li>") if li.startswith("<strong>IntegratedGradients (captum) scale"))
    assert "superpixel" not in ig_scale and "weak" not in ig_scale and "logit" in ig_scale


def test_an_unlabeled_summary_promises_no_calibration(tmp_path):
    """Without labels there is a confidence histogram but no reliability diagram: the heading says so."""
    out = synth(tmp_path / "o", [(f"x{i}.png", None, p) for i, p in enumerate((0.7, 0.9, 0.2))])
    report.render(out)
    assert re.search(r'<h2 id="h-conf">Confidence</h2>', (out / "index.html").read_text())
    out = synth(tmp_path / "l", labeled_rows(4))
    report.render(out)
    assert re.search(r'<h2 id="h-conf">Confidence and calibration</h2>', (out / "index.html").read_text())


def test_durations_keep_each_number_with_its_unit():
    """A narrow column may break "1 min 54 s" between the groups, never between a number and its unit."""
    from xaibatch.report.text import fmt_seconds

    assert fmt_seconds(114) == "1\u00a0min 54\u00a0s"
    assert fmt_seconds(3.25) == "3.2\u00a0s"
    assert fmt_seconds(7300) == "2\u00a0h 1\u00a0min"


def test_card_captions_name_library_methods_shortly_and_break_them_between_words():
    from xaibatch.report.text import card_captions

    titles = ["Grad-CAM", "Grad-CAM (pytorch-grad-cam)", "IntegratedGradients (captum)", "InputXGradient (captum)"]
    titles += ["captum:NoiseTunnel.Saliency", "LIME", "Guided Grad-CAM", "a-long-hyphenated-name (captum)"]
    titles += ["Grad-CAM++ (pytorch-grad-cam)", "Eigen-CAM (pytorch-grad-cam)"]
    assert card_captions(titles) == [
        ("Grad\u2011CAM",),  # a short hyphenated word: non-breaking hyphens (a card read "Guided Grad-" / "CAM")
        ("Grad\u2011CAM (pytorch-grad-cam)",),  # "Grad-CAM" alone would read as the method beside it
        ("Integrated", "Gradients"),
        ("Input", "X", "Gradient"),
        ("captum:", "Noise", "Tunnel.", "Saliency"),  # a method without a recorded title: its name
        ("LIME",),
        ("Guided Grad\u2011CAM",),
        ("a-long-hyphenated-name",),  # too long for a column: it may break at its hyphens
        ("Grad-CAM++",),  # a phone's column broke it as "Grad-CAM+" over "+": it may break after its hyphen
        ("Eigen\u2011CAM",),
    ]


def test_card_captions_carry_break_points_and_stay_escaped(tmp_path, monkeypatch):
    """The 88 px card broke "IntegratedGrad|ients" inside the word: its caption now offers <wbr> between the
    words of a camel-case name (the full title on hover), escaped as everything else, and fastcards agrees."""
    import importlib

    extra = {
        "captum:IntegratedGradients": {"title": "IntegratedGradients (captum)", "signed": True, "config": {}},
        "cam:evil": {"title": "<b onmouseover=x()>EvilCam (pytorch-grad-cam)", "signed": False, "config": {}},
    }
    for k, v in extra.items():
        monkeypatch.setitem(METHODS, k, {**v, "hash": k})
    out = synth(tmp_path / "o", labeled_rows(2), methods=("gradcam", "captum:IntegratedGradients", "cam:evil"))
    report.render(out)
    html = (out / "gallery" / "page-1.html").read_text()
    assert '<span class="cap" aria-hidden="true" title="IntegratedGradients (captum)">Integrated<wbr>Gradients<' in html
    assert 'title="&lt;b onmouseover=x()&gt;EvilCam (pytorch-grad-cam)">&lt;b onmouseover=x()&gt;Evil<wbr>Cam<' in html
    assert "<b " not in html
    render = importlib.import_module("xaibatch.report.render")
    data = report.build(out)
    data.assets = {"css": "a.css", "js": "a.js", "detail": "d.js"}
    gallery = report.environment().get_template("gallery.html")
    for p in data.pages:
        assert render._render_gallery(gallery, data, p, True) == render._render_gallery(gallery, data, p, False)


def names_file(out: Path) -> list[list]:
    """gallery/names.js as data: [[page, [[card id, name], ...]], ...]."""
    text = (out / layout.GALLERY_NAMES).read_text("ascii")
    assert text.startswith("xaibatchNames(") and text.endswith(");\n")
    return json.loads(text[len("xaibatchNames(") : -3])


def test_the_names_file_lists_every_image_where_the_gallery_links_it(tmp_path, monkeypatch):
    """The gallery's "find an image" reads gallery/names.js: every image once, with the gallery page that
    shows it and the card id of its detail view, as the gallery pages' own links say; names stay data
    (ASCII JSON, "<" escaped); the file follows the images and is rewritten when it is missing."""
    monkeypatch.setattr(report.model, "PAGE_SIZE", 4)
    rows = labeled_rows(9) + [(f"FAKE/{n}", 0, 0.8) for n in HOSTILE]
    out = synth(tmp_path / "o", rows)
    report.render(out)
    listed = {name: (page, cid) for page, entries in names_file(out) for cid, name in entries}
    assert sorted(listed) == sorted(r[0] for r in rows)  # every image, once
    linked = {}
    for page in sorted((out / "gallery").glob("page-*.html")):
        for name, href in re.findall(
            r'<li class="card[^"]*" id="[^"]*" data-conf="[^"]*" data-name="([^"]*)"[^>]*>\n<a class="thumbs" href="([^"]*)"',
            page.read_text(),
        ):
            n, cid = re.fullmatch(r"\.\./detail/page-(\d+)\.html#(c[0-9a-f]{12})", unescape(href)).groups()
            assert n == page.stem.removeprefix("page-")  # a card's detail view is its own page's
            linked[unescape(name)] = (int(n), cid)
    assert linked == listed
    text = (out / layout.GALLERY_NAMES).read_text("ascii")
    assert "<" not in text and "FAKE/<img src=x onerror=alert(1)>.png" in listed
    # a new image is listed; an unchanged report leaves the file; a deleted file is written again
    m = Manifest(out / FILENAME)
    m.db.execute(
        "INSERT INTO images SELECT 'REAL/new.png', 'REAL/new', size, mtime_ns, 'n', width, height, label, pred, "
        "target, confidence, probs_json, predict_hash, run_id, ctime_ns FROM images WHERE rel = 'REAL/im_0001.png'"
    )
    m.db.commit()
    m.close()
    report.render(out)
    assert "REAL/new.png" in {name for _page, entries in names_file(out) for _cid, name in entries}
    before = (out / layout.GALLERY_NAMES).stat().st_mtime_ns
    assert report.render(out).reused and (out / layout.GALLERY_NAMES).stat().st_mtime_ns == before
    (out / layout.GALLERY_NAMES).unlink()
    assert not report.render(out).reused and names_file(out)
    (out / layout.GALLERY_PAGES).unlink()  # every page's pager: written again too
    assert not report.render(out).reused and pages_js(out)["total"] == sum(len(e) for _p, e in names_file(out))


def _copy_runs(out: Path, n: int, status: str = "ok", run_id: int | None = None) -> None:
    """``n`` more run rows like run ``run_id`` (default: the last), as a cron job's unchanged re-runs leave them."""
    m = Manifest(out / FILENAME)
    cols = [r[1] for r in m.db.execute("PRAGMA table_info(runs)")][1:]
    where = f"WHERE id = {int(run_id)}" if run_id is not None else "ORDER BY id DESC LIMIT 1"
    row = dict(zip(cols, m.db.execute(f"SELECT {', '.join(cols)} FROM runs {where}").fetchone()))
    rows = [{**row, "status": status, "started_at": row["started_at"] + k + 1} for k in range(n)]
    m.db.executemany(
        f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        [[r[c] for c in cols] for r in rows],
    )
    m.db.commit()
    m.close()


def test_the_history_lists_the_latest_runs_and_counts_every_run(tmp_path, tiny_ckpt, monkeypatch):
    """A cron job every 15 minutes leaves 35,000 runs a year: every unchanged re-run listed (and read) them all
    (3 s and 270 MB a re-run, a 6.5 MB history page). The page lists the latest HISTORY_ROWS, newest first, and
    counts every run by status, and the latest older runs that did not end ok."""
    from xaibatch.report import data as report_data

    monkeypatch.setattr(report_data, "HISTORY_ROWS", 5)
    write_images(tmp_path / "in" / "FAKE", 2, seed=5)
    write_images(tmp_path / "in" / "REAL", 2, seed=6)
    opts = RunOptions(input_dir=tmp_path / "in", out_dir=tmp_path / "out", methods=["gradcam"], checkpoint=tiny_ckpt)
    run(opts, log=lambda s: None)
    out = tmp_path / "out"
    _copy_runs(out, 2, "error")
    _copy_runs(out, 9)
    run(opts, log=lambda s: None)  # run 13
    page = (out / "history.html").read_text()
    listed, older = page.split('id="h-older"')
    ids = [int(x) for x in re.findall(r'<tr><th scope="row">(\d+)</th>', listed)]
    assert ids == [13, 12, 11, 10, 9]
    older_ids = [int(x) for x in re.findall(r'<tr><th scope="row">(\d+)</th>', older)]
    assert older_ids == [3, 2]  # the older runs that did not end ok are still shown
    assert '13 runs: <span class="status-ok">11 ok</span>, <span class="status-error">2 error</span>.' in page
    assert "The latest 5 are listed" in page
    summary = (out / "index.html").read_text()
    assert '<a href="history.html">Run history: 13 runs</a>' in summary


def test_a_method_only_older_runs_recorded_keeps_its_words_and_only_what_is_needed_is_read(
    tmp_path, tiny_ckpt, monkeypatch
):
    """LIME's maps from a run long before the latest runs (gradcam only, as a cron job adds them) keep LIME's
    title and signed colours; a report whose last run recorded every method reads no older record."""
    from xaibatch.report import data as report_data

    monkeypatch.setattr(report_data, "HISTORY_ROWS", 3)
    write_images(tmp_path / "in" / "FAKE", 2, seed=5)
    write_images(tmp_path / "in" / "REAL", 2, seed=6)
    base = dict(input_dir=tmp_path / "in", out_dir=tmp_path / "out", checkpoint=tiny_ckpt)
    run(RunOptions(**base, methods=["lime"], method_options={"lime": {"samples": 12}}), log=lambda s: None)
    run(RunOptions(**base, methods=["gradcam"]), log=lambda s: None)
    out = tmp_path / "out"
    _copy_runs(out, 6)
    reads = []
    real = report_data.read_run
    monkeypatch.setattr(report_data, "read_run", lambda r: reads.append(r.id) or real(r))
    report.render(out)
    assert reads[0] == 8 and reads[-1] == 1  # the last run, then back to the run that recorded LIME
    assert "LIME" in (out / "gallery" / "page-1.html").read_text()
    m = Manifest(out / FILENAME)
    history = report_data.History.read(m)
    m.close()
    infos = {i.name: i for i in report_data.method_infos(history, {"lime", "gradcam"})}
    assert infos["lime"].title == "LIME" and infos["lime"].signed and not infos["gradcam"].signed
    assert infos["lime"].superpixels and not infos["gradcam"].superpixels  # Method.superpixels, as recorded

    run(RunOptions(**base, methods=["gradcam", "lime"], method_options={"lime": {"samples": 12}}), log=lambda s: None)
    reads.clear()
    report.render(out)
    assert reads == [9]  # the last run records both: nothing older is read


@pytest.mark.parametrize("seed", range(4))
def test_per_class_and_macro_scores_match_sklearn_when_classes_are_never_predicted(seed):
    """A model that never predicts some classes (and a class with no images that is predicted): per-class F1 and
    the macro averages are scikit-learn's with zero_division=0. Undefined scores used to be left out of the
    macro average, so a model that predicts one class for everything scored that class's F1."""
    from sklearn.metrics import precision_recall_fscore_support

    from xaibatch.report.metrics import macro_average, per_class_scores

    rng = np.random.default_rng(seed)
    k = 6
    y = rng.integers(0, 4, 200)  # classes 4 and 5 have no images
    pred = np.where(rng.random(200) < 0.5, y, rng.choice([0, 2, 5], 200))  # 5: predicted, no images
    pred[pred == 1] = 0  # 1: images, never predicted; 4: neither
    conf = [[int(np.sum((y == i) & (pred == j))) for j in range(k)] for i in range(k)]
    per = per_class_scores([str(i) for i in range(k)], conf)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    p, r, f, _s = precision_recall_fscore_support(y, pred, labels=present, zero_division=0)
    for i, cls in enumerate(present):
        c = per[cls]
        assert (c["precision"] or 0.0) == pytest.approx(p[i]) and (c["recall"] or 0.0) == pytest.approx(r[i])
        assert c["f1"] == pytest.approx(f[i])
    assert per[1]["precision"] is None and per[1]["f1"] == 0.0  # never predicted: no precision, F1 0
    assert per[4]["f1"] is None  # no images, never predicted: no score, not in the average
    macro = macro_average(per, len(y))
    mp, mr, mf, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert (macro["precision"], macro["recall"], macro["f1"]) == pytest.approx((mp, mr, mf))

    always = [[0] * 3 for _ in range(3)]
    for i in range(3):
        always[i][2] = 10  # one class predicted for everything
    m = macro_average(per_class_scores(["a", "b", "c"], always), 30)
    assert m["f1"] == pytest.approx(0.5 / 3) and m["precision"] == pytest.approx(1 / 9)


def test_a_method_dropped_from_the_command_is_marked_with_its_coverage(tmp_path, tiny_ckpt):
    """A cron job whose command dropped a method keeps that method's older maps: the summary listed it as if it
    covered every image, and the images added since silently had no map of it. It now says how many images it
    covers and that the last run did not ask for it."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)

    def methods_row() -> str:
        html = (out / "index.html").read_text()
        return unescape(re.sub(r"<[^>]+>", "", re.search(r"<dt>Methods</dt><dd>(.*?)</dd>", html).group(1)))

    run(RunOptions(input_dir=inp, out_dir=out, methods=["gradcam", "captum:Saliency"], checkpoint=tiny_ckpt), log=quiet)
    assert methods_row() == "Grad-CAM, Saliency (captum)"  # in the order of -m
    write_images(inp / "REAL" / "more", 1, seed=9)
    run(RunOptions(input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=tiny_ckpt), log=quiet)
    assert methods_row() == "Grad-CAM, Saliency (captum) (6 of 7 images; not asked by the last run)"
    assert "6 of 7 images; not asked by the last run</small>" in (out / "index.html").read_text()  # the table too
    run(RunOptions(input_dir=inp, out_dir=out, methods=["captum:Saliency"], checkpoint=tiny_ckpt), log=quiet)
    assert methods_row() == "Saliency (captum), Grad-CAM (not asked by the last run)"


def _settings(out: Path) -> tuple[str, dict[str, str]]:
    """The summary's settings table: its caption and its rows."""
    html = (out / "index.html").read_text()
    table = re.search(r'<h2 id="h-config">.*?</table>', html, re.S).group(0)
    caption = unescape(re.search(r"<caption>(.*?)</caption>", table).group(1))
    return caption, {k: unescape(v) for k, v in re.findall(r'<tr><th scope="row">(.*?)</th><td>(.*?)</td></tr>', table)}


def test_an_unchanged_rerun_shows_the_settings_of_the_run_that_computed_the_maps(tmp_path, tiny_ckpt):
    """A re-run with nothing to compute loads no model; the report then showed its settings: "Device: auto (model
    not loaded: nothing to compute)" and its own batch size and workers, none of which made a map. It now shows
    those of the latest run with the same options that loaded the model, and says the last run computed nothing."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    rows = ("Device", "Batch size", "Decode workers", "Target layer", "Versions")

    def shown(batch: int, **kw) -> tuple[str, tuple[str, ...]]:
        run(run_opts(inp, out, tiny_ckpt, batch_size=batch, device="auto", **kw), log=quiet)
        caption, settings = _settings(out)
        return caption, tuple(settings[k] for k in rows)

    caption, first = shown(4)
    assert caption == "The last run's settings" and first[:2] == ("cpu", "4")
    nothing = (
        "The settings of run {}, the latest run with the same options that loaded the model; the last run, run {}, "
        "found nothing to compute and loaded no model"
    )
    assert shown(2) == (nothing.format(1, 2), first)  # batch size and device change no map: nothing to compute
    caption, second = shown(3, methods=["gradcam", "guided-gradcam"])  # a method added: computed
    assert caption == "The last run's settings" and second[:2] == ("cpu", "3")
    assert shown(5, methods=["gradcam", "guided-gradcam"]) == (nothing.format(3, 4), second)
    assert shown(6) == (nothing.format(1, 5), first)  # the first run's options again
    assert shown(7) == (nothing.format(1, 6), first)  # a run that loaded none before it: the settings it names


def test_the_summary_is_written_after_every_figure_it_links(tmp_path, monkeypatch):
    """index.html was replaced while its figures were still being drawn in a forked process: a run killed (or out of
    disk) in between left a summary linking figures/*.svg that did not exist. It is written last now."""
    import importlib

    render_module = importlib.import_module("xaibatch.report.render")  # the package's render() hides the module
    out = synth(tmp_path / "o", labeled_rows(6), methods=("gradcam",))
    missing: list[list[str]] = []
    real = render_module._write_summary

    def checked(w, env, data):
        missing.append([f["src"] for f in data.figures.values() if not (out / unquote(f["src"])).is_file()])
        return real(w, env, data)

    monkeypatch.setattr(render_module, "_write_summary", checked)
    report.render(out)
    assert missing == [[]]
    assert any(f.suffix == ".svg" for f in (out / "figures").iterdir())


def test_superpixel_maps_are_the_methods_record_and_older_records_mean_lime():
    """Whether a method's signed maps are superpixels (LIME's probability changes, not per-pixel logit
    attributions) is Method.superpixels, recorded with the run; a record from before it says so for LIME only."""
    from xaibatch.methods.base import Method
    from xaibatch.methods.lime import Lime
    from xaibatch.runconfig import RunConfig

    assert Lime.superpixels and not Method.superpixels
    old = {"lime": {"title": "LIME", "signed": True}, "captum:Saliency": {"title": "S", "signed": True}}
    methods = RunConfig.from_dict({"methods": old}).methods
    assert methods["lime"].superpixels and not methods["captum:Saliency"].superpixels
    again = RunConfig.from_dict(json.loads(RunConfig.from_dict({"methods": old}).to_json())).methods
    assert again == methods


def test_the_scale_benchmarks_report_links_only_pictures_it_made(tmp_path):
    """benchmarks/report_scale.py synthesized thumbnails under thumbs/ only, while a report of 32 px images shows
    images/<stem>.png and the overlays (a small picture is its own thumbnail): every gallery page of its report
    asked the browser for 200 missing originals, so its page-load times measured failed requests."""
    import importlib.util

    from outcheck import check_report_links

    spec = importlib.util.spec_from_file_location(
        "report_scale", Path(__file__).parents[1] / "benchmarks" / "report_scale.py"
    )
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    out = tmp_path / "scale"
    scale.synthesize(out, 12)
    report.render(out)
    links = check_report_links(out)
    assert any(p.startswith("images/") for p in links) and any(p.startswith("maps/lime/") for p in links), links


@pytest.mark.parametrize("seed", range(3))
def test_the_decision_summary_roc_curve_and_auc_match_sklearn(seed):
    """The two-class summary's ROC curve of the positive class (its probability as the score) and its area are
    scikit-learn's roc_curve and roc_auc_score, ties included; the operating point is the threshold rule's."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from xaibatch.report.metrics import decision_summary

    rng = np.random.default_rng(seed)
    n, pos, t = 60, 0, 0.4  # the positive class first: its probability is probs[0]
    label = rng.integers(0, 2, n)
    p = np.round(np.clip(np.where(label == pos, 0.6, 0.4) + rng.normal(0, 0.25, n), 0, 1), 2)  # ties
    rows = {
        f"{i}.png": ImageRow(
            f"{i}.png", str(i), 1, 1, "", 8, 8, int(label[i]), pos if p[i] >= t else 1 - pos, 0, 0.0,
            [float(p[i]), float(1 - p[i])], "h", 1,
        )
        for i in range(n)
    }  # fmt: skip
    d = decision_summary({"positive": "A", "threshold": t}, ["A", "B"], rows)
    truth = label == pos
    fpr, tpr, _ = roc_curve(truth, p, drop_intermediate=False)
    assert d["auc"] == pytest.approx(roc_auc_score(truth, p))
    assert np.allclose(d["roc_fpr"], fpr, atol=1e-6) and np.allclose(d["roc_tpr"], tpr, atol=1e-6)
    said = p >= t
    assert d["point"] == pytest.approx(((said & ~truth).sum() / (~truth).sum(), (said & truth).sum() / truth.sum()))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1, width=32), st.booleans()), min_size=1, max_size=40),
    st.floats(0, 1),
    st.sampled_from([0, 1]),
)
@example([(0.0, False)], 0.8428123221221218, 0)  # lo + span came to 0.99999999: a confidence of 1 past the top
def test_every_confidence_falls_in_its_bin_under_any_threshold(rows, t, pos):
    """Under a two-class threshold rule the predicted class's confidence goes below 1/2 (``--threshold 0.3``:
    the positive class from P = 0.3 on): the histogram and the reliability table start at min(t, 1 - t), each
    image's confidence counted in the bin whose range holds it (before: in the first bin, 0.50-0.55, whose mean
    confidence then read 0.35)."""
    import torch

    from xaibatch.model.heads import Decision, predict
    from xaibatch.report.metrics import add_metrics

    p = np.array([v for v, _ in rows], dtype=np.float32)
    probs = np.stack([p, 1 - p] if pos == 0 else [1 - p, p], axis=1)
    preds = predict(torch.from_numpy(probs), Decision(pos, t, "P", False)).tolist()
    cards = [
        types.SimpleNamespace(confidence=float(probs[i, k]), correct=(k == pos) == yes, pred_index=k, label_index=k)
        for i, (k, (_, yes)) in enumerate(zip(preds, rows, strict=True))
    ]
    data = types.SimpleNamespace(cards=cards, class_names=["A", "B"], labeled=True, decision={"threshold": t})
    add_metrics(data)
    for b in data.calibration:
        if b["n"]:
            assert b["lo"] - 1e-6 <= b["confidence"] <= b["hi"] + 1e-6, b
    edges = data.hist_edges
    for c in cards:
        assert edges[0] - 1e-6 <= c.confidence <= edges[-1]
    assert sum(b["n"] for b in data.calibration) == sum(sum(n) for _l, n, _c in data.hist_series) == len(cards)


def test_the_report_shows_the_methods_in_the_order_given(tmp_path, tiny_ckpt):
    """Nine methods compared at once (-m gradcam -m guided-gradcam -m lime -m cam:gradcam++ ...) came back in
    the report sorted by name: the detail view's row, the legends and the mean maps put Eigen-CAM first and the
    native Grad-CAM seventh, far from the cam:gradcam++ it was given beside (the run's record sorts its keys).
    The order of -m is the report's, on a re-run too (nothing computed: the record of the run before)."""
    write_images(tmp_path / "in" / "FAKE", 2, seed=1)
    write_images(tmp_path / "in" / "REAL", 2, seed=2)
    given = ["gradcam", "captum:Saliency", "cam:gradcam++"]
    for _ in range(2):
        run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt, given), log=quiet)
        page = (tmp_path / "out" / "gallery" / "page-1.html").read_text()
        shown = re.findall(r'<option value="([^"]+)">', page.split('id="f-method"')[1].split("</select>")[0])
        assert shown == [*given, "-"]  # then "none (originals only)"
        index = (tmp_path / "out" / "index.html").read_text()
        assert [index.index(f"<code>{m}</code>") for m in given] == sorted(
            index.index(f"<code>{m}</code>") for m in given
        )
