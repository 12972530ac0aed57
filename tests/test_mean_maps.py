"""The summary's mean maps: each gallery group's maps averaged from the grid stored with each map, equal to the
same average computed from the saved ``.npy`` files."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from html import unescape

import numpy as np
import pytest
import torch

from helpers import quiet, run_opts, write_images
from xaibatch import layout
from xaibatch.overlay import GRID, display_scale_batch, grid_of, grids_batch, read_grids
from xaibatch.report.meanmaps import where


def _block_means(v: np.ndarray) -> np.ndarray:
    """GRID x GRID block means of a map whose sides GRID divides (a computation of its own, not the module's)."""
    h, w = v.shape
    return v.reshape(GRID, h // GRID, GRID, w // GRID).mean(axis=(1, 3))


def _shown(m: np.ndarray, signed: bool) -> np.ndarray:
    """A map as its overlay shows it: over max |m| clipped to [-1, 1] (signed), over its 99th percentile clipped
    to [0, 1] (unsigned; unstretched when that is at most 1e-6)."""
    if signed:
        top = float(np.abs(m).max())
        return np.clip(m / (top or 1.0), -1, 1)
    top = float(np.sort(m.ravel())[min(m.size - 1, int(m.size * 0.99))])
    return np.clip(m / top if top > 1e-6 else m, 0, 1)


@pytest.mark.parametrize("signed", [False, True])
def test_a_maps_grid_is_its_overlays_cells_averaged(signed):
    rng = np.random.default_rng(3)
    m = rng.standard_normal((4, 64, 32)).astype(np.float32)
    m = m if signed else np.abs(m)
    m[0, :8, :4] = 50.0  # one map hot in its top-left cell
    t = torch.from_numpy(m)
    grids = read_grids(grids_batch(t, display_scale_batch(t, signed), signed))
    for k in range(4):
        assert np.abs(grids[k] - _block_means(_shown(m[k], signed))).max() <= 0.5 / 127 + 1e-6
    assert grids[0][0, 0] == pytest.approx(1.0) and where(grids[0]) == "top left"
    # the numpy form (older maps' views), at sizes GRID does not divide, and smaller than GRID
    for h, w in ((33, 50), (7, 5), (3, 400), (224, 224)):
        mk = rng.random((2, h, w)).astype(np.float32) - (0.5 if signed else 0.0)
        tk = torch.from_numpy(mk)
        batch = grids_batch(tk, display_scale_batch(tk, signed), signed)
        one = [grid_of(mk[i], float(display_scale_batch(tk[i : i + 1], signed)[0]), signed) for i in range(2)]
        assert np.abs(read_grids(batch) - read_grids(one)).max() <= 1 / 127 + 1e-6


def test_where_the_strongest_cell_lies_in_words():
    a = np.zeros((16, 16))
    assert where(a) == "nowhere"
    a[7, 8] = 0.5
    assert where(a) == "centre"
    a[15, 0] = 0.9
    assert where(a) == "bottom left"
    a[0, 15] = -2.0  # a signed map's strongest evidence against: not where it points
    assert where(a) == "bottom left"


def _summary(out):
    return json.loads((out / layout.REPORT_STATE).read_text())["summary"]


def _groups_from_csv(out):
    """rel -> the gallery group's key and title, from predictions.csv (labeled: correct or not, per true class)."""
    with open(out / layout.CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    names = ["FAKE", "REAL"]
    return {
        r["path"]: (
            f"{'right' if r['correct'] == '1' else 'wrong'}-{names.index(r['label'])}",
            f"{'Correct' if r['correct'] == '1' else 'Misclassified'}, true {r['label']}",
        )
        for r in rows
    }


def test_the_summary_averages_each_groups_maps_as_their_npy_files_say(tmp_path, tiny_ckpt):
    """Per method and gallery group, the mean of the saved maps as their overlays show them, over 16 x 16 cells,
    recomputed here from the .npy files and predictions.csv; the page shows one figure a group, named in words;
    an unchanged re-run keeps them (the saved summary)."""
    from xaibatch.pipeline import run

    inp = tmp_path / "in"
    write_images(inp / "FAKE", 7, seed=3)
    write_images(inp / "REAL", 6, seed=4)
    out = tmp_path / "out"
    opts = run_opts(inp, out, tiny_ckpt, ["gradcam", "lime"], method_options={"lime": {"samples": 32}})
    run(opts, log=quiet)
    groups = _groups_from_csv(out)
    npy = dict(
        ((rel, meth), p)
        for rel, meth, p in sqlite3.connect(out / layout.MANIFEST).execute("SELECT rel, method, npy FROM maps")
    )
    means = _summary(out)["mean_maps"]
    assert [m["method"] for m in means] == ["gradcam", "lime"]
    for mm in means:
        signed = mm["method"] == "lime"
        assert {g["group"] for g in mm["groups"]} == {k for k, _t in groups.values()}
        for g in mm["groups"]:
            rels = [rel for rel, (k, _t) in groups.items() if k == g["group"]]
            want = np.mean([_block_means(_shown(np.load(out / npy[rel, mm["method"]]), signed)) for rel in rels], 0)
            assert g["maps"] == len(rels) and g["without"] == 0
            assert g["title"] == groups[rels[0]][1]
            assert np.abs(np.asarray(g["cells"]) - want).max() <= 0.5 / 127 + 1e-4
        assert mm["top"] == pytest.approx(max(np.abs(np.asarray(g["cells"])).max() for g in mm["groups"]))
    page = (out / "index.html").read_text()
    section = page[page.index('id="h-mean"') : page.index('id="h-gallery"')]
    figures = re.findall(r'<img src="([^"]+)" alt="([^"]+)"', section)
    assert len(figures) == sum(len(m["groups"]) for m in means)
    for src, alt in figures:
        assert (out / src).is_file() and (out / src).read_bytes().startswith(b"<svg")
        assert re.fullmatch(
            r"(Grad-CAM|LIME), (Correct|Misclassified), true (FAKE|REAL): (the mean of \d+ maps|its one map), "
            r"(strongest at the [a-z ]+|no cell above zero)\.",
            unescape(alt),
        )
    run(opts, log=quiet)  # unchanged: the summary page from the saved snapshot
    again = (out / "index.html").read_text()
    assert again[again.index('id="h-mean"') : again.index('id="h-gallery"')] == section


def _drop_grids(out, rels=None):
    """Views as an xaibatch before the mean maps stored them: without a grid (``rels``: those images' only)."""
    db = sqlite3.connect(out / layout.MANIFEST)
    for rel, method, view in db.execute("SELECT rel, method, view_json FROM maps").fetchall():
        if rels is None or rel in rels:
            v = json.loads(view)
            v.pop("grid", None)
            db.execute("UPDATE maps SET view_json = ? WHERE rel = ? AND method = ?", (json.dumps(v), rel, method))
    db.commit()
    db.close()


def test_maps_stored_without_a_grid_are_left_out_until_xaibatch_report_reads_them(tmp_path, tiny_ckpt):
    """Maps an older xaibatch stored have a view without a grid: a run's report leaves them out of the means (it
    never reads maps back), counted under each figure and in the method's line, and says how to add them;
    `xaibatch report` reads each such map once and stores its grid: the same means as a fresh run's."""
    from click.testing import CliRunner

    from xaibatch import report
    from xaibatch.cli import cli
    from xaibatch.pipeline import run

    inp = tmp_path / "in"
    write_images(inp / "FAKE", 4, seed=3)
    write_images(inp / "REAL", 4, seed=4)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    fresh = _summary(out)["mean_maps"]
    rels = sorted(r for (r,) in sqlite3.connect(out / layout.MANIFEST).execute("SELECT rel FROM images"))
    _drop_grids(out, rels[:3])
    report.render(out)  # as a run's report
    (mm,) = _summary(out)["mean_maps"]
    assert sum(g["without"] for g in mm["groups"]) == 3 and sum(g["maps"] for g in mm["groups"]) == 5
    page = unescape(re.sub(r"<[^>]+>", "", (out / "index.html").read_text()))  # the words, without the tags
    assert "3 maps stored by an older xaibatch have no grid and are left out (xaibatch report on this folder" in page
    _drop_grids(out)  # every map: no mean at all, and the page says why
    report.render(out)
    (mm,) = _summary(out)["mean_maps"]
    assert mm["groups"] == [] and mm["without"] == 8
    page = unescape(re.sub(r"<[^>]+>", "", (out / "index.html").read_text()))
    assert "Its 8 maps were stored by an older xaibatch, without the summary grid" in page
    r = CliRunner().invoke(cli, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert "; 8 maps of an older xaibatch read for the mean maps -> " in r.output
    assert _summary(out)["mean_maps"] == fresh
    r = CliRunner().invoke(cli, ["report", str(out)])  # nothing left to read
    assert r.exit_code == 0 and "older xaibatch" not in r.output


def test_an_unlabeled_folder_averages_by_predicted_class(tmp_path, tiny_ckpt):
    from xaibatch.pipeline import run

    write_images(tmp_path / "in", 6, seed=5)
    out = tmp_path / "out"
    run(run_opts(tmp_path / "in", out, tiny_ckpt, labeled=False), log=quiet)
    with open(out / layout.CSV, newline="") as f:
        preds = {r["pred"] for r in csv.DictReader(f)}
    (mm,) = _summary(out)["mean_maps"]
    assert [g["title"] for g in mm["groups"]] == [f"predicted {p}" for p in sorted(preds)]
    assert sum(g["maps"] for g in mm["groups"]) == 6 and mm["explains"] == "the predicted class"


def test_open_results_averages_any_selection_as_the_summary_does(tmp_path, tiny_ckpt):
    """res.mean_map(method, records): the same mean as the summary's for a group's records, from the stored grids."""
    from xaibatch.errors import UnknownName, XaibatchError
    from xaibatch.pipeline import run
    from xaibatch.results import open_results

    write_images(tmp_path / "in" / "FAKE", 5, seed=3)
    write_images(tmp_path / "in" / "REAL", 5, seed=4)
    out = tmp_path / "out"
    run(run_opts(tmp_path / "in", out, tiny_ckpt), log=quiet)
    res = open_results(out)
    (mm,) = _summary(out)["mean_maps"]
    for g in mm["groups"]:
        section, label = g["group"].split("-")
        chosen = res.where(correct=section == "right", label=res.classes[int(label)])
        assert np.abs(res.mean_map("gradcam", chosen) - np.asarray(g["cells"])).max() <= 1e-4
    everything = res.mean_map("gradcam")
    assert everything.shape == (16, 16) and np.array_equal(everything, res.mean_map("gradcam", range(len(res))))
    with pytest.raises(UnknownName, match="no 'lime' maps"):
        res.mean_map("lime")
    db = sqlite3.connect(out / layout.MANIFEST)
    db.execute("UPDATE maps SET view_json = json_remove(view_json, '$.grid')")
    db.commit()
    db.close()
    with pytest.raises(XaibatchError, match="no 'gradcam' map of these images has a summary grid"):
        open_results(out).mean_map("gradcam")


def test_images_a_method_has_not_explained_yet_are_not_maps_without_a_grid(tmp_path, tiny_ckpt):
    """A method added and its run interrupted: the images it has no map for yet are the overview's coverage, not
    maps "stored by an older xaibatch" (the page said so of every one of them) nor "left out" of a group."""
    from click.testing import CliRunner

    from xaibatch.cli import cli
    from xaibatch.pipeline import run

    inp = tmp_path / "in"
    write_images(inp / "FAKE", 4, seed=3)
    write_images(inp / "REAL", 4, seed=4)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt, ["gradcam", "lime"], method_options={"lime": {"samples": 32}}), log=quiet)
    db = sqlite3.connect(out / layout.MANIFEST)  # the rows an interrupted run had not committed yet
    rels = [r for (r,) in db.execute("SELECT rel FROM maps WHERE method = 'lime' ORDER BY rel LIMIT 5")]
    db.executemany("DELETE FROM maps WHERE method = 'lime' AND rel = ?", [(r,) for r in rels])
    db.commit()
    db.close()
    r = CliRunner().invoke(cli, ["report", str(out), "-q"])
    assert r.exit_code == 0, r.output
    lime = next(mm for mm in _summary(out)["mean_maps"] if mm["method"] == "lime")
    assert sum(g["maps"] for g in lime["groups"]) == 3
    assert sum(g["without"] for g in lime["groups"]) == 0 and lime["without"] == 0
    page = unescape((out / "index.html").read_text())
    assert (
        "older xaibatch" not in page
        and "left out" not in page[page.index('id="h-mean"') : page.index('id="h-gallery"')]
    )


def test_a_group_of_one_image_says_map_not_maps(tmp_path, tiny_ckpt):
    """A group of one image (a single misclassified image is common) read "1 maps" under its figure and "the mean
    of 1 maps" in its alt text; one map stored without a grid "1 maps ... have no grid"."""
    from xaibatch.pipeline import run
    from xaibatch.report import write_report

    write_images(tmp_path / "in" / "FAKE", 1, seed=3)
    write_images(tmp_path / "in" / "REAL", 3, seed=4)
    out = tmp_path / "out"
    run(run_opts(tmp_path / "in", out, tiny_ckpt), log=quiet)
    db = sqlite3.connect(out / layout.MANIFEST)
    db.execute(
        "UPDATE maps SET view_json = json_remove(view_json, '$.grid') WHERE rel LIKE 'REAL/%' AND rowid = "
        "(SELECT min(rowid) FROM maps WHERE rel LIKE 'REAL/%')"
    )
    db.commit()
    db.close()
    write_report(out)
    (mm,) = _summary(out)["mean_maps"]
    assert any(g["maps"] == 1 for g in mm["groups"]) and mm["without"] == 1
    page = unescape((out / "index.html").read_text())
    section = page[page.index('id="h-mean"') : page.index('id="h-gallery"')]
    assert " 1 maps" not in section and "of 1 maps" not in section, section
    assert "its one map, " in section and "1 map stored by an older xaibatch has no grid" in section
