"""`xaibatch report OUT`: the report rendered again from the manifest alone (no input folder, no model)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, REPO, cli, invoke, quiet, run_opts, write_images
from xaibatch import layout
from xaibatch.lock import OutputLock
from xaibatch.pipeline import run


@pytest.fixture
def out(tmp_path, tiny_ckpt) -> Path:
    inp = tmp_path / "in"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    run(run_opts(inp, tmp_path / "out", tiny_ckpt), log=quiet)
    return tmp_path / "out"


def test_it_brings_back_deleted_pages_without_the_input_folder(out, tmp_path):
    before = {p: p.read_bytes() for p in out.rglob("*.html")}
    for p in before:
        p.unlink()
    shutil.rmtree(tmp_path / "in")  # moved away, or the folder copied to another machine
    res = invoke("report", out)
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith(f"-> {out / 'index.html'}")
    assert {p: p.read_bytes() for p in out.rglob("*.html")} == before  # the same pages, byte for byte


def test_a_copy_elsewhere_keeps_its_ground_truth_and_pointing_game_without_the_input_folder(tmp_path, tiny_ckpt):
    # the folder copied to another machine (or its input deleted or renamed): `report` there used to drop every
    # image's ground truth and the summary's pointing game, which it reads from the masks beside the input images
    import numpy as np

    inp = tmp_path / "in"
    for i, p in enumerate(write_images(inp / "FAKE", 3, seed=1)):
        mask = np.zeros((32, 32), bool)
        mask[4 * i : 4 * i + 12, 8:20] = True
        np.save(p.with_name(p.stem + ".mask.npy"), mask)
    write_images(inp / "REAL", 3, seed=2)
    run(run_opts(inp, tmp_path / "out", tiny_ckpt, target="label"), log=quiet)  # every map scored
    before = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*.*")}
    assert b"h-pointing" in before[Path("index.html")]  # the summary's pointing game
    assert b'"area"' in before[Path("detail/page-1.js")]  # each masked image's ground truth in its detail view
    shutil.copytree(tmp_path / "out", tmp_path / "elsewhere" / "copy")  # cp -r: new mtimes, another path
    inp.rename(tmp_path / "renamed")
    copy = tmp_path / "elsewhere" / "copy"
    for i in range(2):  # the report rebuilt without the input folder, then reused
        res = invoke("report", copy)
        assert res.exit_code == 0, res.output
        after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*.*")}
        for name in ("index.html", "detail/page-1.js", "gallery/page-1.html"):
            assert after[Path(name)] == before[Path(name)], f"{name} changed without the input folder (pass {i})"


def test_the_input_folder_named_relative_is_found_from_any_cwd(tmp_path, tiny_ckpt, monkeypatch):
    """`xaibatch run data/test` then, from another folder, `xaibatch report` (its cache deleted, as report.md says is
    safe): the masks were looked for relative to the report command's folder and the ground truth was dropped."""
    import numpy as np

    for p in write_images(tmp_path / "data" / "test" / "FAKE", 2, seed=1):
        np.save(p.with_name(p.stem + ".mask.npy"), np.eye(32, dtype=bool))
    monkeypatch.chdir(tmp_path)
    run(run_opts(Path("data/test"), Path("out"), tiny_ckpt, target="label"), log=quiet)
    before = (tmp_path / "out" / "index.html").read_bytes()
    assert b"h-pointing" in before
    (tmp_path / "out" / layout.REPORT_STATE).unlink()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert invoke("report", tmp_path / "out").exit_code == 0
    assert (tmp_path / "out" / "index.html").read_bytes() == before


def test_a_read_only_folder_is_refused_in_one_line_naming_it_as_given(out):
    """chmod -R a-w OUT (an archive kept read-only): `report OUT` is refused, exit 2, nothing changed; the line named
    an option it does not have ("cannot write to --out OUT")."""
    from helpers import read_only_tree, without_file_permission_override

    prefix = without_file_permission_override()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with read_only_tree(out):
        argv = [*prefix, sys.executable, "-m", "xaibatch", "report", str(out)]
        p = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"Error: cannot write to {out}: Permission denied\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_template_dir_renders_with_the_users_templates_and_without_it_the_packaged_ones(out, tmp_path):
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "index.html").write_text(
        '{% extends "base.html" %}{% block main %}<p id="mine">{{ r.total }} images</p>{% endblock %}'
    )
    res = invoke("report", out, "--template-dir", tpl)
    assert res.exit_code == 0, res.output
    assert '<p id="mine">6 images</p>' in (out / "index.html").read_text()
    assert invoke("report", out).exit_code == 0
    assert 'id="mine"' not in (out / "index.html").read_text() and "Per class" in (out / "index.html").read_text()


def test_refusals_are_one_line(out, tmp_path):
    res = invoke("report", tmp_path, catch_exceptions=True)  # no manifest
    assert res.exit_code == 2 and "not an xaibatch output folder" in res.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.html").write_text("{% block main %}{% endblock")
    res = invoke("report", out, "--template-dir", broken, catch_exceptions=True)
    assert res.exit_code == 2 and "template error in" in res.output
    with OutputLock(out):  # a run holds the folder
        res = invoke("report", out, catch_exceptions=True)
    assert res.exit_code == 4, res.output
    assert all(len(line) < 300 for line in res.output.splitlines()) and "Traceback" not in res.output


def test_a_run_killed_before_shows_as_killed_not_running(out):
    """A SIGKILLed run leaves its row 'running'; the next command to hold the lock says it was killed (the next run
    did; `report` renders the history, so it must too) and sweeps what that run left."""
    db = sqlite3.connect(out / layout.MANIFEST)
    with db:
        db.execute("UPDATE runs SET status = 'running' WHERE id = (SELECT max(id) FROM runs)")
    db.close()
    leftover = out / "maps" / "gradcam" / f".left.{2**22 + 1}.tmp"  # a dead writer's temporary file
    leftover.write_bytes(b"x")
    res = invoke("report", out)
    assert res.exit_code == 0, res.output
    assert "did not finish; cleaned 1 leftover file(s)" in res.output and not leftover.exists()
    assert "continuing" not in res.output  # a report continues no run (it said "continuing where it stopped")
    history = (out / "history.html").read_text()
    assert ">killed<" in history and ">running<" not in history


def test_quiet_prints_only_error_lines_as_run_does(out):
    """-q for a cron job, as `run -q`: no summary line, no word of what a recovery cleaned; an error still says so,
    one line on stderr. A real process, as a scheduler runs it (stdout and stderr apart, no terminal)."""
    db = sqlite3.connect(out / layout.MANIFEST)
    with db:
        db.execute("UPDATE runs SET status = 'running' WHERE id = (SELECT max(id) FROM runs)")  # SIGKILLed
    db.close()
    leftover = out / "maps" / "gradcam" / f".left.{2**22 + 1}.tmp"  # a dead writer's temporary file
    leftover.write_bytes(b"x")
    (out / "index.html").unlink()
    res = cli("report", out, "-q")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert ">killed<" in (out / "history.html").read_text() and (out / "index.html").is_file()  # it did it all
    assert not leftover.exists()
    with OutputLock(out):  # a run holds the folder
        res = cli("report", out, "--quiet")
    assert res.returncode == 4 and res.stdout == ""
    assert res.stderr.startswith("Error: ") and len(res.stderr.splitlines()) == 1, res.stderr
    res = cli("report", out)  # without -q: the summary line
    assert res.returncode == 0 and "page(s)" in res.stdout, res
    res = cli("report", out)  # nothing to rewrite: said so, not "0 file(s) written"
    assert res.returncode == 0 and res.stdout.startswith("xaibatch: ") and "page(s), all up to date -> " in res.stdout


def test_it_mends_pages_cut_short_or_overwritten(out):
    """A page overwritten with other bytes stayed: its inputs were unchanged, so it was not rendered again ("0
    file(s) written"). A page not at the size it was written is now rendered again."""
    pages = {
        p: p.read_bytes() for p in [out / "index.html", out / "detail" / "page-1.js", out / "gallery" / "page-1.html"]
    }
    for p in pages:
        p.write_bytes(b"junk\n")
    res = invoke("report", out)
    assert res.exit_code == 0, res.output
    assert {p: p.read_bytes() for p in pages} == pages
    assert "3 file(s) written" in res.output


def test_a_users_template_reads_the_sanity_curves_as_the_last_release_did(out, tmp_path):
    """An index.html copied from the last release (docs/report.md invites it) reads each sanity curve's ``earlier``
    and verdict: the typed sanity result had moved ``earlier`` off the curves, so such a template stopped every
    ``report`` and every run's report of a folder with a sanity.json (StrictUndefined: exit 3)."""
    from xaibatch.evaluation.sanity_file import FILENAME, SanityCurve, SanityResult

    curve = SanityCurve("gradcam", ["original", "fc"], [1.0, 0.2], [1.0, 0.3], True, "gradcam: passed", checked=1.0)
    (out / FILENAME).write_text(SanityResult([curve], created=2.0, images=6).to_json())
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "index.html").write_text(
        '{% extends "base.html" %}{% block main %}{% set s = r.trust.sanity %}'
        "{% for c in s.curves %}<li>{{ c.verdict }}{% if c.earlier %} (from the check of {{ c.earlier }})"
        "{% endif %}</li>{% endfor %}{% endblock %}"
    )
    res = invoke("report", out, "--template-dir", tpl)
    assert res.exit_code == 0, res.output
    page = (out / "index.html").read_text()
    assert "<li>gradcam: passed (from the check of " in page
