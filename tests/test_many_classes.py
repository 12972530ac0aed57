"""A model with many classes (ImageNet's 1000, a 100-class one) over a folder of a few of them: the refusals, the
summary, the gallery's filter, the detail view and serve's answer stay the size of what the folder holds."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from helpers import make_checkpoint, quiet, run_opts, write_images
from xaibatch.errors import InputError
from xaibatch.scan import match_classes

K = 40  # over report.model.CONFUSION_MAX_CLASSES (30): "many classes"
FOLDERS = ["daisy", "goldfish", "tabby"]
NAMES = [f"class {i:02d}" for i in range(K - 3)] + ["tabby", "goldfish", "daisy"]


def test_folders_not_among_1000_classes_are_named_with_a_close_class_in_a_short_line():
    """A folder 'tabby_cat' of a 1000-class model printed all 1000 names (10 KB on one line) and never said which
    folder was wrong."""
    names = [f"imagenet class {i}" for i in range(997)] + ["tabby", "goldfish", "daisy"]
    with pytest.raises(InputError) as e:
        match_classes(["Daisy", "goldfish", "tabby_cat"], names)
    line = str(e.value)
    assert len(line) < 600, line
    assert "the model's classes (1000: 'imagenet class 0', " in line and "'goldfish', 'daisy')" in line
    assert "'tabby_cat' is none of them (did you mean 'tabby'?)" in line
    assert "'Daisy' is" not in line  # matched by case, as a run matches it
    with pytest.raises(InputError, match="no folder is one of them"):
        match_classes(["airplane", "ship"], names)


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory):
    """Three class folders named among a 40-class model's classes, explained with Grad-CAM."""
    from xaibatch.pipeline import run

    root = tmp_path_factory.mktemp("many")
    ckpt = make_checkpoint(root / "m.pt", classes=NAMES)
    for k, name in enumerate(FOLDERS):
        write_images(root / "in" / name, 3, seed=10 + k)
    run(run_opts(root / "in", root / "out", ckpt), log=quiet)
    return root / "out"


def _occurring(out: Path) -> list[str]:
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    seen = {r["label"] for r in rows} | {r["pred"] for r in rows}
    return [n for n in NAMES if n in seen]


def test_the_summary_lists_only_the_classes_that_occur(subset_run):
    """The summary of 24 images of a 1000-class model was 37,000 px tall: every class name in the overview and the
    configuration, and one per-class row for each of the 1000 classes, all but a few zeros."""
    html = (subset_run / "index.html").read_text()
    occurring = _occurring(subset_run)
    per_class = html[html.index('id="h-classes"') : html.index('id="h-confusion"')]
    assert re.findall(r"<tr><th scope=\"row\">([^<]+)</th>", per_class) == [*occurring, "Macro average"]
    assert f"The model's {K - len(occurring)} other classes have no images and no predictions" in per_class
    # the confusion matrix over those classes (few enough for one), not a list of the most frequent confusions
    matrix = html[html.index('id="h-confusion"') : html.index('id="h-conf"')]
    assert re.findall(r'<th scope="col">([^<]+)</th>', matrix)[1:] == occurring
    assert "Most frequent confusions" not in matrix
    overview = html[: html.index('id="h-classes"')]
    assert f"<details><summary>{K} classes</summary>" in overview
    assert "class 20" not in html.replace(overview, "")  # nowhere else on the page: not a class that occurs
    assert "<td>40 (their names: Overview, Classes)</td>" in html


def test_the_gallery_filter_offers_the_classes_it_has_groups_of(subset_run):
    page = (subset_run / "gallery" / "page-1.html").read_text()
    select = page[page.index('<select id="f-class">') : page.index("</select>")]
    assert (
        re.findall(r'<option value="\d+">([^<]+)</option>', select) == NAMES[-3:]
    )  # its groups' classes, in the model's order


def test_the_detail_view_gives_the_true_class_its_probability_and_rank(subset_run):
    """A misclassified image showed its true class without its probability, and the 10 likeliest of many classes
    seldom hold it."""
    text = (subset_run / "detail" / "page-1.js").read_text()
    images = json.loads(text[text.index("{") : text.rindex("}") + 1])["images"]
    by_rel = {r["path"]: r for r in csv.DictReader((subset_run / "predictions.csv").open())}
    wrong = [im for im in images if not im["correct"]]
    assert wrong
    for im in wrong:
        probs = [float(by_rel[im["rel"]][f"p_{n}"]) for n in NAMES]
        p = probs[NAMES.index(im["label"])]
        rank = 1 + sum(q > p for q in probs)
        assert re.fullmatch(rf"[0-9.<>%]+, {rank}(st|nd|rd|th) of {K}", im["label_conf"]), im["label_conf"]
    assert all(im["label_conf"] == "" for im in images if im["correct"])


def test_ordinals():
    from xaibatch.report.cards import ordinal

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111, 412)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th", "412th",
    ]  # fmt: skip


def test_serve_answers_with_the_likeliest_classes_not_every_one(tmp_path):
    """serve's answer listed all 1000 classes' probabilities above the maps: 1000 rows, the maps 20,000 px down."""
    from xaibatch.serve.core import ServeOptions, Service, decode_upload
    from xaibatch.serve.page import result_html
    from xaibatch.tools.synth import noise, save

    import numpy as np

    ckpt = make_checkpoint(tmp_path / "m.pt", classes=NAMES)
    service = Service(ServeOptions(out=tmp_path / "out", methods=["gradcam"], checkpoint=ckpt))
    image = save(noise(np.random.default_rng(0), 32), tmp_path / "a.png").read_bytes()
    (r,) = service.explain([decode_upload(image)], ["gradcam"], None, False)
    html = result_html(r, service.names, service.rule(), None)
    rows = re.findall(r"<tr><td>([^<]+)</td>", html)
    assert len(rows) == 10 and rows[0] == NAMES[r.pred]
    assert f"The 10 most likely of {K}\nclasses" in html


def test_a_plain_state_dict_of_many_outputs_says_to_name_its_classes(tmp_path):
    """Three class folders and a plain state_dict of 40 outputs: the refusal said "check --checkpoint or pass
    --unlabeled", never --classes, the one way to name 1000 classes; and a --classes of the wrong length or
    order printed all the names given, and the checkpoint's, again."""
    import torch

    from helpers import invoke

    ckpt = make_checkpoint(tmp_path / "m.pt", classes=NAMES)
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(ckpt, weights_only=True)["state_dict"], plain)
    for k, name in enumerate(FOLDERS):
        write_images(tmp_path / "in" / name, 1, seed=k)
    argv = ["run", tmp_path / "in", "--arch", "test_resnet", "--image-size", "32", "--out", tmp_path / "out"]
    r = invoke(*argv, "--checkpoint", plain)
    assert r.exit_code == 2
    assert "but the model has 40 outputs; name its 40 classes in output order with --classes;" in r.stderr
    r = invoke(*argv, "--checkpoint", plain, "--classes", ",".join(NAMES[:-1]))
    assert (
        r.exit_code == 2 and "--classes (39: 'class 00', " in r.stderr and "39 names, but the model has 40" in r.stderr
    )
    assert len(r.stderr) < 400, r.stderr
    r = invoke(*argv, "--checkpoint", ckpt, "--classes", ",".join(reversed(NAMES)))
    assert r.exit_code == 2 and len(r.stderr) < 500 and "differ from the checkpoint's (40: 'class 00'" in r.stderr
    r = invoke(*argv, "--checkpoint", plain, "--classes", ",".join(NAMES))
    assert r.exit_code == 0, r.output


def test_classes_from_a_file_one_a_line(tmp_path):
    """1000 class names were one comma-separated --classes argument (10 KB), and a name with a comma, as timm's
    ImageNet descriptions have ("tabby, tabby cat"), could not be given at all. --classes @FILE: one a line."""
    import torch

    from helpers import invoke
    from xaibatch.cli.options import class_list

    names = [*NAMES[:-3], "tabby, tabby cat", "goldfish", "daisy"]
    listing = tmp_path / "names.txt"
    listing.write_text("\ufeff" + "\n".join(names[:20]) + "\n\n  " + "\n".join(names[20:]) + "\n", encoding="utf-8")
    assert class_list(f"@{listing}") == names
    ckpt = make_checkpoint(tmp_path / "m.pt", classes=NAMES)
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(ckpt, weights_only=True)["state_dict"], plain)
    write_images(tmp_path / "in" / "goldfish", 1, seed=1)
    write_images(tmp_path / "in" / "daisy", 1, seed=2)
    argv = ["run", tmp_path / "in", "--arch", "test_resnet", "--image-size", "32", "--checkpoint", plain]
    r = invoke(*argv, "--out", tmp_path / "out", "--classes", f"@{listing}")
    assert r.exit_code == 0, r.output
    header = next(csv.reader((tmp_path / "out" / "predictions.csv").open()))
    assert [h[2:] for h in header if h.startswith("p_")] == names
    r = invoke(*argv, "--out", tmp_path / "out2", "--classes", f"@{tmp_path / 'none.txt'}")
    assert r.exit_code == 2 and "none.txt: No such file or directory" in r.stderr, r.output
    (tmp_path / "one.txt").write_text("daisy\n")
    r = invoke(*argv, "--out", tmp_path / "out2", "--classes", f"@{tmp_path / 'one.txt'}")
    assert r.exit_code == 2 and "one.txt: at least two names, one a line" in r.stderr, r.output


def test_open_results_reprs_stay_short(subset_run):
    """In a notebook, a 1000-class folder's Results printed every class name (13 KB) and one ImageRecord every
    probability (24 KB)."""
    import xaibatch

    res = xaibatch.open_results(subset_run)
    assert f"classes=({K}: 'class 00', " in repr(res) and len(repr(res)) < 400, repr(res)
    rec = res[0]
    top = max(rec.probs, key=rec.probs.get)
    assert f"probs=<{K} classes, likeliest {top!r}: " in repr(rec) and len(repr(rec)) < 600, repr(rec)
    assert repr(rec).startswith(f"ImageRecord(rel={rec.rel!r}, label={rec.label!r}, pred={rec.pred!r}, ")


def test_an_unlabeled_folder_lists_the_predicted_classes_only(tmp_path):
    """An unlabeled folder of a 1000-class model listed 1000 rows of "Images per predicted class", all but a few 0."""
    from xaibatch.pipeline import run

    ckpt = make_checkpoint(tmp_path / "m.pt", classes=NAMES)
    write_images(tmp_path / "in", 4, seed=3)
    run(run_opts(tmp_path / "in", tmp_path / "out", ckpt), log=quiet)
    html = (tmp_path / "out" / "index.html").read_text()
    table = html[html.index('id="h-pred"') : html.index("</table>", html.index('id="h-pred"'))]
    preds = {r["pred"] for r in csv.DictReader((tmp_path / "out" / "predictions.csv").open())}
    assert re.findall(r'<tr><th scope="row">([^<]+)</th>', table) == [n for n in NAMES if n in preds]
    assert f"(the model's {K - len(preds)} other classes: none)" in table


def test_an_older_template_dir_index_never_labels_the_matrix_with_other_classes(subset_run, tmp_path):
    """A --template-dir index.html written before confusion_names labels the matrix's rows and columns with
    r.class_names: given the matrix over the 3 classes that occur, it named them 'class 00', 'class 01', ... (the
    model's first classes) over 40 headers. Such a page now gets the most frequent confusions, as it did."""
    import shutil

    from xaibatch.report import write_report

    old = tmp_path / "old"
    old.mkdir()
    (old / "index.html").write_text(
        "{% if r.confusion %}<table>{% for row in r.confusion %}<tr><th>{{ r.class_names[loop.index0] }}</th>"
        "{% for cell in row %}<td>{{ cell.n }}</td>{% endfor %}</tr>{% endfor %}</table>"
        "{% elif r.top_confusions %}<ol>{% for t, p, n in r.top_confusions %}<li>{{ t }} as {{ p }}: {{ n }}</li>"
        "{% endfor %}</ol>{% endif %}"
    )
    out = tmp_path / "out"
    shutil.copytree(subset_run, out)
    write_report(out, template_dir=old)
    page = (out / "index.html").read_text()
    occurring = _occurring(subset_run)
    shown = re.findall(r"<th>([^<]*)</th>", page) + [
        n for t, p in re.findall(r"<li>([^<]*) as ([^<:]*):", page) for n in (t, p)
    ]
    assert shown and set(shown) <= set(occurring), shown
    write_report(out)  # the packaged template: the matrix over the classes that occur, as before
    html = (out / "index.html").read_text()
    matrix = html[html.index('id="h-confusion"') : html.index('id="h-conf"')]
    assert re.findall(r'<th scope="row">([^<]*)</th>', matrix) == occurring
