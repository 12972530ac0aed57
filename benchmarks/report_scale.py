"""How the report scales: synthesize a manifest with N images (no model), time write_report, weigh the pages,
and time the biggest gallery page's load in headless Chromium.

    python benchmarks/report_scale.py --images 20000 --out /tmp/xaibatch-scale
    python benchmarks/report_scale.py --images 100000 --out /tmp/xaibatch-scale-100k --no-browser

Every picture (original, overlays) is a hard link to one tiny PNG, every map to one tiny .npy (cheap for 100k
images), so the numbers are the report's own: building the data from SQLite, rendering with Jinja,
comparing/writing pages, and a page load fetches every picture it shows as a real report's does. Three writes are timed: the
first (cold), a second with nothing changed (every page compared, none rewritten), and a third after one
image's prediction changed (only the pages that show it, its neighbours' detail pages and the summary).
``--night K`` times a fourth: a cron night that added K images (the files and bytes it rewrote: with the
gallery's pages anchored by content, report/paging.py, the pages the new images land on).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaibatch import layout  # noqa: E402
from xaibatch.layout import MapFiles  # noqa: E402
from xaibatch.manifest import FILENAME, ImageRow, Manifest, MapRow, RunCounts  # noqa: E402
from xaibatch.report import PAGE_SIZE, render  # noqa: E402
from xaibatch.tools import chromium, synth  # noqa: E402

CLASSES = ["FAKE", "REAL"]
METHODS = {
    "gradcam": {"title": "Grad-CAM", "signed": False, "config": {}, "hash": "g"},
    "lime": {
        "title": "LIME",
        "signed": True,
        "config": {"samples": 1000, "segments": 50, "hide": "mean", "seed": 0},
        "hash": "l",
    },
}


def synthesize(out: Path, n: int, seed: int = 0) -> None:
    """A manifest shaped like a labeled pipeline run over n images, plus its pictures: hard links to one tiny PNG."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tiny, tiny_map = out / ".tiny.png", out / ".tiny.npy"
    synth.save(synth.noise(rng, 32), tiny)
    np.save(tiny_map, rng.random((32, 32), dtype=np.float32))
    config = {
        "xaibatch": "bench",
        "torch": "-",
        "device": "cpu",
        "model": {
            "arch": "resnet18",
            "checkpoint": "bench.pt",
            "checkpoint_sha256": "0" * 64,
            "input_size": 32,
            "target": "pred",
            "classes": CLASSES,
        },
        "layer": "layer3",
        "layer_grid": [4, 4],
        "methods": METHODS,
        "batch_size": 32,
        "workers": 0,
        "seed": 0,
        "labeled": True,
        "class_names": CLASSES,
    }
    m = Manifest(out / FILENAME)
    run_id = m.start_run("/data/bench/test", config, "p")
    with m.transaction():
        _put_images(m, out, run_id, range(n), rng, tiny, tiny_map)
    m.finish_run(run_id, "ok", 1.0, RunCounts(seen=n, added=n, computed=n))
    m.close()


def add_images(out: Path, k: int, seed: int = 1) -> None:
    """A later run that added ``k`` images to a synthesize()d folder (a cron night)."""
    m = Manifest(out / FILENAME)
    last = m.db.execute("SELECT config_json FROM runs ORDER BY id LIMIT 1").fetchone()[0]
    start = m.db.execute("SELECT count(*) FROM images").fetchone()[0]
    run_id = m.start_run("/data/bench/test", json.loads(last), "p")
    with m.transaction():
        _put_images(
            m, out, run_id, range(start, start + k), np.random.default_rng(seed), out / ".tiny.png", out / ".tiny.npy"
        )
    m.finish_run(run_id, "ok", 1.0, RunCounts(seen=start + k, added=k, computed=k))
    m.close()


def _put_images(m: Manifest, out: Path, run_id: int, numbers: range, rng, tiny: Path, tiny_map: Path) -> None:
    """Image ``i`` of ``numbers``: its row, its maps' rows and their files (links to ``tiny`` and ``tiny_map``)."""
    for i in numbers:
        label = i % 2
        cls = CLASSES[label]
        stem = f"{cls}/img_{i:06d}"
        rel = f"{stem}.png"
        p_true = float(rng.beta(5, 2))
        probs = [p_true, 1 - p_true] if label == 0 else [1 - p_true, p_true]
        pred = int(np.argmax(probs))
        m.put_image(
            ImageRow(
                rel,
                stem,
                2000,
                0,
                f"{i:064x}",
                32,
                32,
                label,
                pred,
                pred,
                max(probs),
                [round(v, 6) for v in probs],
                "p",
                run_id,
            )
        )
        for name in METHODS:
            # as a run stores it with the picture (overlay.views_batch): the report never reads the .npy
            view = {
                "scale": float(rng.uniform(0.001, 0.05) if METHODS[name]["signed"] else rng.uniform(0.5, 1)),
                "peak": [int(v) for v in rng.integers(0, 32, 2)],
                "shape": [32, 32],
                "nowhere": False,  # on every view a run stores (overlay.flat_view): none is read back
            }
            files = MapFiles.of(name, stem, 32, 32)  # as a run names them: a 32 px overlay is its own thumbnail
            m.put_map(MapRow(rel, name, METHODS[name]["hash"], *files.paths(), None, run_id, view=view))
        # the files the report links: the original's display copy, the overlays (their own thumbnails), the maps
        for picture in (layout.image_thumb(stem, 32, 32), *(layout.map_thumb(k, stem, 32, 32) for k in METHODS)):
            _link(tiny, out / picture)
        for k in METHODS:
            _link(tiny_map, out / layout.map_npy(k, stem))


_SOURCES: dict[Path, Path] = {}  # a file that has as many links as the file system allows -> its copy in use


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(_SOURCES.get(src, src), dst)
    except FileExistsError:
        pass
    except OSError:  # too many links (ext4: 65,000), or none at all: a copy, which the next links share
        shutil.copyfile(_SOURCES.get(src, src), dst)
        _SOURCES[src] = dst


def change_one(out: Path) -> None:
    """Flip one image's confidence a little, as a re-run with a changed file would."""
    m = Manifest(out / FILENAME)
    m.db.execute("UPDATE images SET confidence = confidence * 0.999 WHERE rowid = (SELECT min(rowid) FROM images)")
    m.close()


def html_weight(out: Path) -> tuple[int, int]:
    files = (
        [p for top in ("gallery", "detail") for p in (out / top).rglob("*.html")]
        + list(out.glob("*.html"))
        + list((out / "detail").glob("*.js"))
    )  # the detail view's data files
    return len(files), sum(p.stat().st_size for p in files)


def browser_times(out: Path, pages: list[str]) -> dict[str, dict[str, float]]:
    driver = chromium.start(1280, 900)
    res = {}
    try:
        for page in pages:
            best = None
            for _ in range(3):
                driver.get((out / page).resolve().as_uri())
                nav = driver.execute_script(
                    "const e = performance.getEntriesByType('navigation')[0];"
                    "return {dcl: e.domContentLoadedEventEnd, load: e.loadEventEnd,"
                    " nodes: document.getElementsByTagName('*').length,"
                    " imgs: document.images.length};"
                )
                t = time.perf_counter()
                driver.execute_script(
                    "window.scrollTo(0, document.body.scrollHeight);"
                    "return document.body.getBoundingClientRect().height;"
                )
                nav["scroll_ms"] = 1000 * (time.perf_counter() - t)
                if best is None or nav["load"] < best["load"]:
                    best = nav
            res[page] = best
    finally:
        driver.quit()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "xaibatch-report-scale")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium timing")
    ap.add_argument("--keep", action="store_true", help="reuse an existing synthesized folder")
    ap.add_argument("--night", type=int, default=0, metavar="K", help="then time a write after K images were added")
    args = ap.parse_args()

    out: Path = args.out
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    t = time.perf_counter()
    if not (out / FILENAME).exists():
        synthesize(out, args.images)
    t_synth = time.perf_counter() - t

    cpu = []

    def cpu_now() -> float:  # this process and its reaped children (the report's figure process)
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def timed(fn):
        c = cpu_now()
        r = fn()
        cpu.append(round(cpu_now() - c, 2))
        return r

    first = timed(lambda: render(out))
    n_pages, weight = html_weight(out)
    second = timed(lambda: render(out))
    change_one(out)
    third = timed(lambda: render(out))
    result = {
        "images": args.images,
        "page_size": PAGE_SIZE,
        "synthesize_s": round(t_synth, 2),
        "gallery_pages": first.gallery_pages,
        "html_pages": n_pages,
        "html_bytes_total": weight,
        "biggest_page": {"path": first.biggest_page[0], "bytes": first.biggest_page[1]},
        "first_write": {
            "build_s": round(first.seconds_build, 2),
            "render_write_s": round(first.seconds_render, 2),
            "total_s": round(first.seconds_total, 2),
            "cpu_s": cpu[0],
            "written": first.written,
        },
        "unchanged_write": {
            "total_s": round(second.seconds_total, 2),
            "cpu_s": cpu[1],
            "written": second.written,
            "unchanged": second.unchanged,
        },
        "one_changed_write": {"total_s": round(third.seconds_total, 2), "cpu_s": cpu[2], "written": third.written},
        "load_average": os.getloadavg()[0],
    }
    if args.night:
        add_images(out, args.night)
        night = timed(lambda: render(out))
        result["night_write"] = {
            "added": args.night,
            "total_s": round(night.seconds_total, 2),
            "cpu_s": cpu[3],
            "written": night.written,  # files whose bytes changed (pages, data files, summary; not the CSV)
            "written_mb": round(night.bytes_written / 1e6, 1),
            "removed": night.removed,
            "gallery_pages": night.gallery_pages,
        }
    if not args.no_browser:
        if chromium.available():
            pages = ["index.html", "gallery/page-1.html", f"gallery/page-{first.gallery_pages}.html"]
            result["chromium"] = browser_times(out, pages)
        else:
            result["chromium"] = "skipped: /usr/bin/chromedriver is missing"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
