"""A model with many classes (ImageNet's 1000, a 100-class one) over a folder of a few of them: the refusals, the
summary, the gallery's filter, the detail view and serve's answer stay the size of what the folder holds."""

from __future__ import annotations


import pytest

from helpers import make_checkpoint, write_images
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
