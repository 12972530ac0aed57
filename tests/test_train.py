"""``xaibatch train`` on the folders users bring: the test split, unreadable images, sizes a model cannot run at.

Tiny timm models (``test_resnet``) on generated noise images at 32 px, one epoch; the accuracies are recomputed
here from the checkpoint with timm and PIL alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import invoke
from xaibatch.tools import synth


def _args(data: Path, out: Path, *extra) -> list:
    return ["train", data, "--arch", "test_resnet", "--image-size", "32", "--epochs", "1", "--out", out, *extra]


def _accuracy(ckpt: Path, folder: Path) -> tuple[int, int]:
    """Right and total over ``folder``'s class folders, from the checkpoint alone (folders named by case; files
    named ``bad*`` left out)."""
    import timm

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    names = ck["class_names"]
    model = timm.create_model(ck["arch"], pretrained=False, num_classes=len(names))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    mean, std = torch.tensor(ck["mean"])[:, None, None], torch.tensor(ck["std"])[:, None, None]
    right = total = 0
    for d in sorted(folder.iterdir()):
        label = [n.casefold() for n in names].index(d.name.casefold())
        for f in sorted(d.iterdir()):
            if f.name.startswith("bad"):
                continue
            x = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
            with torch.no_grad():
                right += int(model(((x - mean) / std)[None]).argmax(1)) == label
            total += 1
    return right, total


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    synth.write_classes(root / "train", 12, seed=1)
    synth.write_classes(root / "test", 4, seed=5)
    return root


@pytest.mark.parametrize(
    "damage, says",
    [
        ("empty", "holds no images"),
        ("loose", "outside any class folder; move them into class folders (or move it aside"),
        ("other class", "folder classes ['FAKE', 'OTHER'] do not match the training classes ['FAKE', 'REAL']"),
    ],
)
def test_a_test_split_that_cannot_be_scored_is_refused_before_training(data, tmp_path, monkeypatch, damage, says):
    """It was scanned after the last epoch: an empty test/ or one with loose images ended a finished training with
    'Error: input folder .../test holds no images', exit 2 and no checkpoint (every epoch lost); a test/ whose
    classes differ from train/'s was passed over without a word."""
    from xaibatch.tools import train as train_module

    test = data / "test"
    if damage == "empty":
        for f in test.rglob("*.png"):
            f.unlink()
    elif damage == "loose":
        synth.write_images(test, 2, seed=9)
    else:
        (test / "REAL").rename(test / "OTHER")
    monkeypatch.setattr(train_module, "create", lambda *a, **k: pytest.fail("trained before checking test/"))
    r = invoke(*_args(data, tmp_path / "m.pt"))
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"Error: cannot score the test split {test}: ") and says in r.output
    assert len(r.output.strip().splitlines()) == 1 and "--unlabeled" not in r.output
    assert not (tmp_path / "m.pt").exists()


def test_a_test_split_in_another_case_and_with_one_class_is_scored(data, tmp_path):
    """CIFAKE mirrors spell folders in any case: test/real beside train/REAL (and no FAKE) is the class REAL, as a
    run matches it. Before, the test accuracy was left out without a word."""
    test = data / "test"
    for f in (test / "FAKE").iterdir():
        f.unlink()
    (test / "FAKE").rmdir()
    (test / "REAL").rename(test / "real")
    out = tmp_path / "m.pt"
    r = invoke(*_args(data, out))
    assert r.exit_code == 0, r.output
    right, total = _accuracy(out, test)
    assert f"test accuracy on {test}: {100 * right / total:.2f}% ({total} images)" in r.output
    assert torch.load(out, weights_only=True)["meta"]["test_accuracy"] == right / total


def test_a_training_folder_with_loose_images_is_not_told_to_pass_unlabeled(data, tmp_path):
    """train has no --unlabeled: the scan's advice for run sent the user to an option train refuses."""
    r = invoke("train", data / "train" / "REAL", "--out", tmp_path / "m.pt")
    assert r.exit_code == 2 and "outside any class folder; move them into class folders" in r.output
    assert "--unlabeled" not in r.output


def test_unreadable_images_are_named_and_left_out_of_the_counts(data, tmp_path):
    """A corrupt image was left out without a word: "test accuracy ...: 49.00% (101 images)" over 100 images, the
    validation accuracy over 19 of the "20 held out", and the checkpoint's record counted it as trained on."""
    (data / "train" / "REAL" / "bad_0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "test" / "FAKE" / "bad_1.png").write_bytes(b"not an image")
    out = tmp_path / "m.pt"
    r = invoke(*_args(data, out, "--val-fraction", "0.5"))
    assert r.exit_code == 0, r.output
    assert f"1 image(s) in {data / 'train'} could not be read and are left out:\n  REAL/bad_0.png: " in r.output
    assert f"1 image(s) in {data / 'test'} could not be read and are left out:\n  FAKE/bad_1.png: " in r.output
    right, total = _accuracy(out, data / "test")
    assert total == 8 and f"test accuracy on {data / 'test'}: {100 * right / total:.2f}% (8 images)" in r.output
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["train_images"] + meta["val_images"] == 24 and meta["unreadable_images"] == 1


def test_no_readable_held_out_or_test_image_is_not_called_0_percent(data, tmp_path):
    """Every held-out and every test image corrupt: train printed "val accuracy 0.0%" and "test accuracy 0.00%
    (0 images)" and recorded 0.0 in the checkpoint, as if the model were always wrong."""
    from xaibatch.scan import scan
    from xaibatch.tools.train import hold_out

    _, val = hold_out(scan(data / "train", labeled=True).images, 0.2, 0)  # train's defaults: --val-fraction, --seed
    for e in val:
        (data / "train" / e.rel).write_bytes(b"not an image")
    for f in (data / "test").rglob("*.png"):
        f.write_bytes(b"not an image")
    out = tmp_path / "m.pt"
    r = invoke(*_args(data, out))
    assert r.exit_code == 0, r.output
    assert "epoch 1/1: loss " in r.output and "val accuracy not measured (none of its images could be read)" in r.output
    assert f"test accuracy on {data / 'test'}: not measured (none of its images could be read) (0 images)" in r.output
    assert "0.0%" not in r.output and "0.00%" not in r.output
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["val_accuracy"] is None and meta["test_accuracy"] is None and meta["val_images"] == 0


@pytest.mark.parametrize(
    "arch, size, says",
    [
        ("test_vit", "40", "--arch test_vit cuts its inputs into 16x16 patches: at --image-size 40 the last 8 pixel"),
        ("test_convnext", "8", "--arch test_convnext does not run at --image-size 8: RuntimeError: Calculated padded"),
    ],
)
def test_an_image_size_the_architecture_cannot_run_at_is_refused_before_any_image(data, tmp_path, arch, size, says):
    """A ViT at a size its patches cut trained to the end, and run then refused its checkpoint (exit 2); a size too
    small for the layers ended the first epoch with 'internal error: RuntimeError: ... Kernel size can't be greater
    than actual input size', exit 3. Both are the user's option: one line, exit 2, before the loader starts."""
    from xaibatch.tools import train as train_module

    out = tmp_path / "m.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "_loader", lambda *a, **k: pytest.fail("read images before checking the size"))
        r = invoke("train", data, "--arch", arch, "--image-size", size, "--epochs", "1", "--out", out)
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"Error: {says}") and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_batch_size_one_with_batch_norm_is_refused_before_training(data, tmp_path):
    """Every step of a batch of one is passed over for a batch norm model: the training ran no step, printed
    "loss 0.0000" and saved the untrained model with exit 0."""
    r = invoke(*_args(data, tmp_path / "m.pt", "--batch-size", "1"))
    assert r.exit_code == 2 and r.output.startswith("Error: --batch-size 1: --arch test_resnet has batch norm")
    assert not (tmp_path / "m.pt").exists()


def test_an_epoch_without_a_training_step_saves_nothing(tmp_path):
    """Two images, one held out: the one left is a batch of one, which a batch norm model passes over. The model
    was saved as trained ("loss 0.0000", exit 0)."""
    synth.write_classes(tmp_path / "two", 1, seed=3)
    r = invoke(*_args(tmp_path / "two", tmp_path / "m.pt"))
    assert r.exit_code == 2, r.output
    assert "Error: no training step ran in epoch 1: 1 training image(s), and a model with batch norm" in r.output
    assert not (tmp_path / "m.pt").exists()


def test_an_out_that_ends_with_a_slash_is_refused(data, tmp_path):
    """pathlib drops the slash: --out models/ wrote a checkpoint named "models" where a folder was meant."""
    r = invoke(*_args(data, f"{tmp_path / 'models'}/"))
    assert r.exit_code == 2 and f"--out {tmp_path / 'models'}/ ends with /, a folder; give a file (e.g. " in r.output
    assert not (tmp_path / "models").exists()


def test_a_class_whose_only_image_is_held_out_is_named(tmp_path):
    """A class folder of one image whose image the seeded split holds out: the model never saw the class and
    nothing said so (its validation and test accuracies then fail it without a hint why)."""
    from xaibatch.scan import scan
    from xaibatch.tools.train import hold_out

    root = synth.write_classes(tmp_path / "data", 8, seed=1)
    synth.write_images(root / "ONE", 1, seed=7)
    images = scan(root, labeled=True).images
    seed = next(s for s in range(100) if any(e.rel.startswith("ONE/") for e in hold_out(images, 0.25, s)[1]))
    r = invoke(*_args(root, tmp_path / "m.pt", "--val-fraction", "0.25", "--seed", seed))
    assert r.exit_code == 0, r.output
    assert "warning: class 'ONE' has no image to train on (its 1 image(s) are held out for validation)" in r.output
    assert "class 'FAKE'" not in r.output and "class 'REAL'" not in r.output


@pytest.mark.parametrize("kind", ["fifo", "text", "image"])
def test_an_out_that_is_not_a_checkpoint_is_not_replaced(data, tmp_path, monkeypatch, kind):
    """The checkpoint is renamed over --out at the end: --out /dev/null (to see the accuracies only) replaced the
    device with a 45 MB file when run as root (a FIFO stands in for it here), and a typo replaced a notes file or
    an image of the data set after the whole training. Refused before training; an earlier checkpoint (a PyTorch
    file) is still replaced."""
    import os

    from xaibatch.tools import train as train_module

    out = {"fifo": tmp_path / "fifo", "text": tmp_path / "notes.txt", "image": data / "train" / "REAL" / "img_000.png"}
    out = out[kind]
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "text":
        out.write_text("my notes\n")
    before = None if kind == "fifo" else out.read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "create", lambda *a, **k: pytest.fail("trained before checking --out"))
        r = invoke(*_args(data, out))
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    says = "is a FIFO, not a file a checkpoint may replace" if kind == "fifo" else "exists and is not a PyTorch file"
    assert r.output.startswith(f"Error: --out {out} {says}")
    assert out.is_fifo() if kind == "fifo" else out.read_bytes() == before
    torch.save({"earlier": torch.zeros(1)}, tmp_path / "m.pt")
    assert invoke(*_args(data, tmp_path / "m.pt")).exit_code == 0
    assert "state_dict" in torch.load(tmp_path / "m.pt", weights_only=True)


def test_only_a_file_torch_saved_is_taken_for_a_checkpoint(tmp_path):
    """--out is replaced only when it is a checkpoint: a zip archive (a .docx, .xlsx, .jar) or a pickle passed for
    one by their first bytes (PK, 0x80); now a zip must hold torch's <name>/data.pkl and a pickle start with an
    older torch's magic number."""
    import pickle
    import zipfile

    from xaibatch.tools.train import is_torch_file

    docx = tmp_path / "thesis.docx"
    with zipfile.ZipFile(docx, "w") as z:
        z.writestr("word/document.xml", "<w:document/>")
        z.writestr("[Content_Types].xml", "<Types/>")
    (tmp_path / "data.pkl").write_bytes(pickle.dumps({"not": "torch"}, protocol=2))
    torch.save({"w": torch.zeros(2)}, tmp_path / "new.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    got = {p.name: is_torch_file(p) for p in sorted(tmp_path.iterdir())}
    assert got == {"broken.zip": False, "data.pkl": False, "new.pt": True, "old.pt": True, "thesis.docx": False}


NO_TEMPDIR = """
import sys, tempfile

def none(*args, **kwargs):
    raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/']")

tempfile.gettempdir = tempfile.gettempdirb = tempfile._get_default_tempdir = none
tempfile.tempdir = None
from xaibatch.cli import main
main()
"""


def test_train_needs_no_temporary_folder(tmp_path):
    """docker run --read-only without TMPDIR: torch.optim imports torch._dynamo, which made its cache folder in the
    temporary folder, and train failed with "No usable temporary directory found"."""
    import subprocess
    import sys

    from helpers import ENV, REPO

    data = synth.write_classes(tmp_path / "data", 6, seed=1)
    args = [str(a) for a in _args(data, tmp_path / "m.pt", "--batch-size", "4")]
    env = {k: v for k, v in ENV.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    p = subprocess.run(
        [sys.executable, "-c", NO_TEMPDIR, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "m.pt").is_file()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["data", "m.pt"]  # nothing else beside the checkpoint
