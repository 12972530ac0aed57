"""Class folders against the model's class names, through real runs: folders named in another case (``Real/`` for
REAL), symbolic links as class folders, and the order a model that names no classes is read in.

Runs go through the CLI in-process (``invoke``); stdout and stderr are read apart, the notices from both: the line
on stderr and the ``notice`` event of ``--log-json``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from helpers import invoke, make_checkpoint, manifest_rows, manifest_value, run_argv, write_images
from xaibatch.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, InputError


def _events(stdout: str, kind: str | None = None) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e["event"] == "notice" and (kind is None or e["kind"] == kind)]


def _csv(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _grouping(out: Path) -> tuple[str, str]:
    """The summary page's count of correct and misclassified images."""
    m = re.search(r"(\d+) correct, (\d+) misclassified", (out / "index.html").read_text())
    assert m, "the summary names no correct/misclassified counts"
    return m.group(1), m.group(2)


def _plain_state_dict(path: Path) -> Path:
    """A plain state_dict of the tests' tiny model: no class names inside (the run needs --arch)."""
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=2).state_dict(), path)
    return path


# -- folder names in another case ---------------------------------------------------------------------------------


def test_class_folders_named_in_another_case_are_matched_and_labelled_by_the_models_class(tmp_path):
    """`Real/` and `Fake/` against the bundled model's REAL and FAKE were refused ("folder classes ['Fake', 'Real']
    do not match the model's classes"). Now each is its one class regardless of case, said once per run, and the
    labels, the report's grouping and predictions.csv are those of the same images in REAL/ and FAKE/."""
    from xaibatch.tools.demo import write_demo_data

    write_demo_data(tmp_path / "demo", train_per_class=1, test_per_class=8, seed=0)
    exact = tmp_path / "demo" / "test"
    cased = tmp_path / "cased"
    for name, folder in (("REAL", "Real"), ("FAKE", "Fake")):
        shutil.copytree(exact / name, cased / folder, ignore=shutil.ignore_patterns("*.npy"))
    r = invoke("run", exact, "--out", tmp_path / "o-exact", "--workers", "0")
    assert r.exit_code == EXIT_OK, r.output
    assert "by case" not in r.stderr

    out = tmp_path / "o-cased"
    args = ["run", cased, "--out", out, "--workers", "0", "--log-json"]
    r = invoke(*args)
    assert r.exit_code == EXIT_OK, r.output
    line = "xaibatch: class folders matched to the model's classes by case: Fake -> FAKE, Real -> REAL"
    assert "by case" not in r.stderr  # --log-json: the event alone (a scheduler's error log does not grow)
    (event,) = _events(r.stdout, "classes-by-case")
    assert event["folders"] == {"Fake": "FAKE", "Real": "REAL"} and f"xaibatch: {event['text']}" == line

    def by_image(rows, key):
        return {row["path"].split("/", 1)[1]: tuple(row[k] for k in key) for row in rows}

    cols = ("label", "pred", "correct", "p_FAKE", "p_REAL")
    assert by_image(_csv(out), cols) == by_image(_csv(tmp_path / "o-exact"), cols)
    assert {row["label"] for row in _csv(out) if row["path"].startswith("Real/")} == {"REAL"}
    labels = dict(manifest_rows(out, "SELECT rel, label FROM images"))
    assert {rel.split("/")[0]: labels[rel] for rel in labels} == {"Fake": 0, "Real": 1}  # the model's FAKE, REAL
    assert _grouping(out) == _grouping(tmp_path / "o-exact")
    assert int(_grouping(out)[0]) > int(_grouping(out)[1])  # the bundled model is right about most of them

    # An unchanged re-run reuses the setup without loading the model, and says it again (as a line: no --log-json).
    r = invoke(*args[:-1])
    assert r.exit_code == EXIT_OK, r.output
    assert r.stderr.splitlines().count(line) == 1, r.stderr
    config = manifest_value(out, "SELECT config_json FROM runs WHERE id = 2")
    assert json.loads(config)["settings_of"] == 1  # the settings of the run that loaded the model


@pytest.mark.parametrize(
    "folders, classes, message",
    [
        (("REAL", "Real", "FAKE"), ("FAKE", "REAL"), "class folders 'REAL' and 'Real' differ only by case"),
        (("Real", "real", "FAKE"), ("FAKE", "REAL"), "class folders 'Real' and 'real' differ only by case"),
        (("Real",), ("REAL", "real"), "class folder 'Real' matches the model's classes 'REAL' and 'real' only by case"),
    ],
    ids=["exact-and-cased-folder", "two-cased-folders", "two-classes-by-case"],
)
def test_a_match_by_case_that_is_not_the_only_one_is_refused_in_one_line(tmp_path, folders, classes, message):
    ckpt = make_checkpoint(tmp_path / "ck.pt", classes=classes)
    for k, name in enumerate(folders):
        write_images(tmp_path / "in" / name, 1, seed=k)
    r = invoke(*run_argv(tmp_path / "in", tmp_path / "out", ckpt, "--workers", "0"))
    assert r.exit_code == EXIT_USAGE, r.output
    (err,) = r.stderr.splitlines()
    assert err.startswith("Error: ") and message in err, err
    assert not (tmp_path / "out" / "xaibatch.sqlite").exists()


def test_an_empty_folder_beside_its_class_in_another_case_is_ignored(tmp_path, tiny_ckpt):
    """An empty REAL/ left beside Real/ (a rename half done) is no second REAL: the run goes on, and says so."""
    write_images(tmp_path / "in" / "Real", 1, seed=1)
    write_images(tmp_path / "in" / "FAKE", 1)
    (tmp_path / "in" / "REAL").mkdir()
    r = invoke(*run_argv(tmp_path / "in", tmp_path / "out", tiny_ckpt, "--workers", "0"))
    assert r.exit_code == EXIT_OK, r.output
    assert "xaibatch: warning: class folder 'REAL' holds no images; ignored" in r.stderr.splitlines(), r.stderr
    assert "Real -> REAL" in r.stderr
    assert {row["path"]: row["label"] for row in _csv(tmp_path / "out")} == {
        "FAKE/img_000.png": "FAKE",
        "Real/img_000.png": "REAL",
    }


def test_exact_names_win_over_a_match_by_case():
    from xaibatch.scan import match_classes

    assert match_classes(["FAKE", "REAL"], ["REAL", "FAKE"]) == {"FAKE": "FAKE", "REAL": "REAL"}
    assert match_classes(["Real", "fake"], ["FAKE", "REAL"]) == {"Real": "REAL", "fake": "FAKE"}
    assert match_classes(["Real"], ["REAL", "Real"]) == {"Real": "Real"}  # the model has both: the exact one
    with pytest.raises(InputError, match=r"folder classes \['Cat'\] do not match"):
        match_classes(["Cat"], ["FAKE", "REAL"])


# -- symbolic links as class folders -------------------------------------------------------------------------------


def test_a_class_folder_linked_to_a_folder_scanned_under_its_own_name_is_not_called_empty(tmp_path, tiny_ckpt):
    """IN/REAL -> FAKE/sub: the folder is scanned once, under its real name (the scan's rule), and the warning said
    REAL "holds no images" as if it were empty."""
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "FAKE" / "sub", 2, seed=1)
    os.symlink("FAKE/sub", root / "REAL")
    line = (
        "xaibatch: warning: class folder 'REAL' is a symbolic link to 'FAKE/sub', whose images are listed under that "
        "name (a folder is scanned once); 'REAL' is kept as a class with no images"
    )
    r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0", "--log-json"))
    assert r.exit_code == EXIT_OK, r.output
    assert "holds no images" not in r.stderr and "symbolic link" not in r.stderr  # --log-json: the event alone
    (event,) = _events(r.stdout, "empty-class")
    assert (event["folder"], event["link_to"], event["kept"]) == ("REAL", "FAKE/sub", True)
    assert f"xaibatch: {event['text']}" == line
    r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0"))  # as a person reads it
    assert r.exit_code == EXIT_OK, r.output
    assert line in r.stderr.splitlines() and "holds no images" not in r.stderr


def test_a_class_folder_linked_out_of_the_input_is_named_as_skipped_never_as_empty(tmp_path, tiny_ckpt):
    """IN/REAL -> /elsewhere/real: links out are not followed unless --follow-links (docs/robustness.md). The run
    lists the link with that reason; a model that names no classes counted one class folder and its refusal did not
    say why ("the folder has 1 classes ['FAKE'] but the model has 2 outputs")."""
    write_images(tmp_path / "elsewhere" / "real", 2, seed=1)
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    os.symlink(tmp_path / "elsewhere" / "real", root / "REAL")
    skipped = "REAL: symlink to a folder outside the input folder; not followed (pass --follow-links to follow it)"

    r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0"))
    assert r.exit_code == EXIT_SOME_FAILED, r.output  # a folder not scanned is listed as a bad file is: exit 1
    assert "holds no images" not in r.stderr and f"  {skipped}" in r.stderr.splitlines()
    assert "xaibatch: 1 folder(s) not scanned:" in r.stderr.splitlines(), r.stderr  # was "1 image(s) could not be read"

    plain, extra = _refused_without_classes(root, tmp_path, skipped)

    r = invoke(*run_argv(root, tmp_path / "out3", plain, *extra, "--follow-links"))
    assert r.exit_code == EXIT_OK, r.output
    assert {row["label"] for row in _csv(tmp_path / "out3")} == {"FAKE", "REAL"}


def test_a_class_folder_that_is_a_broken_link_is_named_as_skipped(tmp_path, tiny_ckpt):
    """IN/REAL -> a folder that is gone was dropped without a word: the run went on with FAKE alone, and a model that
    names no classes was refused with "the folder has 1 classes ['FAKE'] but the model has 2 outputs" and no reason.
    Now it is listed as a folder not scanned (a failure, exit 1, as every skipped entry), and the refusal says why."""
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    os.symlink(tmp_path / "gone", root / "REAL")
    skipped = "REAL: broken symlink: what it points to does not exist"

    r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0"))
    assert r.exit_code == EXIT_SOME_FAILED, r.output
    assert r.stderr.splitlines() == ["xaibatch: 1 folder(s) not scanned:", f"  {skipped}"], r.stderr
    assert manifest_rows(tmp_path / "out", "SELECT rel, reason FROM failures") == [tuple(skipped.split(": ", 1))]

    os.symlink(tmp_path / "gone.png", root / "stray.png")  # an unreadable image beside them is no class folder
    plain, extra = _refused_without_classes(root, tmp_path, skipped)
    (root / "stray.png").unlink()

    os.symlink("REAL2", root / "REAL2")  # a link to itself: a loop
    (root / "REAL").unlink()
    r = invoke(*run_argv(root, tmp_path / "out3", tiny_ckpt, "--workers", "0"))
    assert r.exit_code == EXIT_SOME_FAILED and "  REAL2: symlink loop" in r.stderr.splitlines(), r.stderr


def test_a_broken_link_that_is_no_class_folder_is_still_ignored(tmp_path):
    """Beside images at the top of a flat folder, or below a class folder, a link to nothing is not known to be a
    folder: ignored, as a file not named like an image is (a broken notes.txt link must not fail every run)."""
    from xaibatch.scan import scan

    write_images(tmp_path / "flat", 2)
    os.symlink(tmp_path / "gone", tmp_path / "flat" / "notes")
    write_images(tmp_path / "classes" / "FAKE", 2)
    os.symlink(tmp_path / "gone", tmp_path / "classes" / "FAKE" / "notes")
    for root in (tmp_path / "flat", tmp_path / "classes"):
        found = scan(root)
        assert len(found.images) == 2 and found.skipped == [], found.skipped


def test_a_class_folder_linked_below_another_top_level_folder_is_refused_with_the_reason(tmp_path, tiny_ckpt):
    """IN/REAL -> IN/data/real: the folder is scanned once, under its real name (docs/robustness.md), so its images
    are data/real/... and their class is `data`. The refusal named only `data` ("folder classes ['FAKE', 'data'] do
    not match"); it now says that REAL is a link whose images are listed under `data`, and what to do."""
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "data" / "real", 2, seed=1)
    os.symlink("data/real", root / "REAL")
    r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0"))
    assert r.exit_code == EXIT_USAGE, r.output
    (err,) = r.stderr.splitlines()
    assert "folder classes ['FAKE', 'data'] do not match the model's classes ['FAKE', 'REAL']" in err, err
    assert (
        "(class folder 'REAL' is a symbolic link to 'data/real', whose images are listed under 'data': a folder is "
        "scanned once, under its real name; put the folder itself in the link's place, or the links in a folder of "
        "their own and pass --follow-links)"
    ) in err, err
    assert not (tmp_path / "out" / "xaibatch.sqlite").exists()

    links = tmp_path / "links"  # what the line advises: links out of their folder, followed when asked
    links.mkdir()
    os.symlink(root / "FAKE", links / "FAKE")
    os.symlink(root / "data" / "real", links / "REAL")
    r = invoke(*run_argv(links, tmp_path / "out2", tiny_ckpt, "--workers", "0", "--follow-links"))
    assert r.exit_code == EXIT_OK, r.output
    assert {row["path"].split("/")[0]: row["label"] for row in _csv(tmp_path / "out2")} == {
        "FAKE": "FAKE",
        "REAL": "REAL",
    }


def test_a_class_folder_linked_into_a_report_is_ignored_as_the_report_is(tmp_path, tiny_ckpt):
    """A link into an xaibatch output folder is ignored silently, as the output folder itself (docs/robustness.md);
    as a class folder it was warned about as holding no images."""
    write_images(tmp_path / "first" / "REAL", 2, seed=1)
    write_images(tmp_path / "first" / "FAKE", 2)
    rep = tmp_path / "rep"
    assert invoke(*run_argv(tmp_path / "first", rep, tiny_ckpt, "--workers", "0")).exit_code == EXIT_OK
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "REAL", 2, seed=1)
    os.symlink(rep / "images" / "REAL", root / "COPIES")
    r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0", "--follow-links"))
    assert r.exit_code == EXIT_OK, r.output
    assert "COPIES" not in r.stderr, r.stderr


# -- the order of a model that names no classes --------------------------------------------------------------------


def test_a_model_that_names_no_classes_says_which_order_it_is_read_in(tmp_path, labeled_dir, tiny_ckpt):
    """A plain state_dict without --classes is read in the sorted folders' order: with the model trained as
    REAL,FAKE every label is swapped and the accuracy near 0 %, and nothing said which order was assumed."""
    plain = _plain_state_dict(tmp_path / "plain.pt")
    extra = ("--arch", "test_resnet", "--image-size", "32", "--workers", "0")
    line = (
        "xaibatch: warning: the model names no classes: its outputs are read as the class folders in sorted order, "
        "FAKE,REAL; if it was trained in another order, give that order with --classes (e.g. --classes REAL,FAKE)"
    )
    out = tmp_path / "out"
    for again in (False, True):  # a re-run that loads no model says it too
        r = invoke(*run_argv(labeled_dir, out, plain, *extra, "--log-json"))
        assert r.exit_code == EXIT_OK, r.output
        assert "names no classes" not in r.stderr, r.stderr  # --log-json: the event alone
        (event,) = _events(r.stdout, "class-order")
        assert event["classes"] == ["FAKE", "REAL"] and f"xaibatch: {event['text']}" == line
    r = invoke(*run_argv(labeled_dir, out, plain, *extra))  # as a person reads it: the line, each run
    assert r.exit_code == EXIT_OK and r.stderr.splitlines().count(line) == 1, r.stderr
    assert json.loads(manifest_value(out, "SELECT config_json FROM runs WHERE id = 2"))["settings_of"] == 1

    r = invoke(*run_argv(labeled_dir, tmp_path / "q", plain, *extra, "-q", "--log-json"))
    assert r.exit_code == EXIT_OK and r.stderr == "", r.stderr  # -q: only Error: lines; the event stays
    assert len(_events(r.stdout, "class-order")) == 1

    for other in (
        run_argv(labeled_dir, tmp_path / "given", plain, *extra, "--classes", "REAL,FAKE", "--log-json"),
        run_argv(labeled_dir, tmp_path / "named", tiny_ckpt, "--workers", "0", "--log-json"),
    ):
        r = invoke(*other)
        assert r.exit_code == EXIT_OK, r.output
        assert "names no classes" not in r.stderr and not _events(r.stdout, "class-order")


# -- --positive-class and --classes, named as class folders are ----------------------------------------------------


def test_positive_class_is_named_as_a_class_folder_is_regardless_of_case(tmp_path, labeled_dir, tiny_ckpt):
    """`--positive-class fake` with the classes FAKE, REAL was refused ("'fake' is not one of the classes FAKE, REAL")
    while a folder `fake/` was FAKE. Now it is the class it names regardless of case, an exact name first; a name
    that matches two classes only by case is refused. At --threshold 0.9 the positive class decides every prediction
    of the tiny random model (its probabilities stay near 0.5): all the other class."""
    base = ("--workers", "0", "--threshold", "0.9")
    preds = {}
    for given in ("FAKE", "fake"):
        out = tmp_path / f"out-{given}"
        r = invoke(*run_argv(labeled_dir, out, tiny_ckpt, *base, "--positive-class", given))
        assert r.exit_code == EXIT_OK, r.output
        preds[given] = [(row["path"], row["pred"]) for row in _csv(out)]
        assert "FAKE when P(FAKE) ≥ 0.9" in (out / "index.html").read_text()
    assert preds["fake"] == preds["FAKE"] and {p for _, p in preds["fake"]} == {"REAL"}

    ckpt = make_checkpoint(tmp_path / "cased.pt", classes=("REAL", "Real"))
    write_images(tmp_path / "in" / "REAL", 1)
    write_images(tmp_path / "in" / "Real", 1, seed=1)
    r = invoke(*run_argv(tmp_path / "in", tmp_path / "o2", ckpt, "--workers", "0", "--positive-class", "real"))
    assert r.exit_code == EXIT_USAGE, r.output
    (err,) = r.stderr.splitlines()
    assert "--positive-class 'real' matches the classes 'REAL' and 'Real' only by case; give one of them exactly" in err
    r = invoke(*run_argv(tmp_path / "in", tmp_path / "o3", ckpt, *base, "--positive-class", "Real"))  # exact wins
    assert r.exit_code == EXIT_OK, r.output
    assert {row["pred"] for row in _csv(tmp_path / "o3")} == {"REAL"}


def test_the_default_positive_class_of_two_outputs_is_the_second_in_sorted_order(tmp_path, labeled_dir):
    """README: two outputs, no --positive-class: the positive class is the second in sorted order, whatever order the
    model names them in (a checkpoint of REAL, FAKE: REAL). At --threshold 0.9 it decides every prediction of the
    tiny random model (its probabilities stay near 0.5): all the other class."""
    ckpt = make_checkpoint(tmp_path / "unsorted.pt", classes=("REAL", "FAKE"))
    out = tmp_path / "out"
    r = invoke(*run_argv(labeled_dir, out, ckpt, "--workers", "0", "--threshold", "0.9"))
    assert r.exit_code == EXIT_OK, r.output
    assert "REAL when P(REAL) ≥ 0.9" in (out / "index.html").read_text()
    assert {row["pred"] for row in _csv(out)} == {"FAKE"}


def test_classes_given_in_another_case_match_the_folders_by_case(tmp_path, labeled_dir):
    """--classes names the model's outputs; the folders are matched to them as to a checkpoint's (match_classes)."""
    plain = _plain_state_dict(tmp_path / "plain.pt")
    extra = ("--arch", "test_resnet", "--image-size", "32", "--workers", "0", "--classes", "fake,real")
    r = invoke(*run_argv(labeled_dir, tmp_path / "out", plain, *extra, "--positive-class", "REAL"))
    assert r.exit_code == EXIT_OK, r.output
    assert "class folders matched to the model's classes by case: FAKE -> fake, REAL -> real" in r.stderr
    assert {row["path"].split("/")[0]: row["label"] for row in _csv(tmp_path / "out")} == {
        "FAKE": "fake",
        "REAL": "real",
    }
    assert "real when P(real)" in (tmp_path / "out" / "index.html").read_text()


def _refused_without_classes(root: Path, tmp_path: Path, skipped: str) -> tuple[Path, tuple[str, ...]]:
    """A model that names no classes over ``root`` (one class folder scanned): refused in one line that says why
    the other was not scanned. Returns the plain state_dict and its options, for more runs."""
    plain = _plain_state_dict(tmp_path / "plain.pt")
    extra = ("--arch", "test_resnet", "--image-size", "32", "--workers", "0")
    r = invoke(*run_argv(root, tmp_path / "out2", plain, *extra))
    assert r.exit_code == EXIT_USAGE, r.output
    (err,) = r.stderr.splitlines()
    assert "the folder has 1 classes ['FAKE']" in err and f"(not scanned: {skipped})" in err, err
    return plain, extra


def test_a_broken_link_named_like_a_file_beside_class_folders_is_still_ignored(tmp_path, tiny_ckpt):
    """A stray `notes.txt -> /gone` beside FAKE/ and REAL/ was listed as a folder not scanned (exit 1, every run)
    once broken class-folder links were listed: a name with an extension is no class folder, ignored as before."""
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "REAL", 2, seed=1)
    os.symlink(tmp_path / "gone" / "notes.txt", root / "notes.txt")
    r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0"))
    assert r.exit_code == EXIT_OK, r.output
    assert "not scanned" not in r.stderr and "notes.txt" not in r.output
