"""Bad options, bad models, bad output folders, a full disk: one clear line and the documented exit code.

Never a traceback. Exit codes (xaibatch/errors.py): 2 usage (option, folder, model, checkpoint),
3 runtime (e.g. a full disk).
"""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import helpers
from helpers import make_checkpoint, manifest_rows, write_images
from xaibatch import errors


def invoke(*args: str | Path):
    return helpers.invoke("run", *args)


def error_lines(result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln.startswith("Error")]


def assert_one_line(result, code: int, *needles: str) -> str:
    print("\n  ->", f"[{result.exit_code}]", " | ".join(error_lines(result))[:300])
    """Exit ``code``, exactly one 'Error: ...' line holding every needle, no traceback."""
    out = result.output
    assert "Traceback" not in out, out
    assert result.exit_code == code, (result.exit_code, out)
    lines = error_lines(result)
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "in"
    write_images(d, 3)
    return d


def run_args(images: Path, out: Path, *extra: str | Path):
    return (images, "--out", out, "--workers", "0", "-q", *extra)


# --- input folder ---------------------------------------------------------------------------------


def test_missing_input_folder(tmp_path, tiny_ckpt):
    r = invoke(*run_args(tmp_path / "nope", tmp_path / "out", "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "does not exist")
    assert not (tmp_path / "out").exists()


def test_empty_input_folder(tmp_path, tiny_ckpt):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    r = invoke(*run_args(tmp_path / "empty", tmp_path / "out", "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "holds no images")
    assert not (tmp_path / "out").exists()


def test_input_is_a_file(tmp_path, tiny_ckpt):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    r = invoke(*run_args(f, tmp_path / "out", "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "is a file")


def test_an_empty_input_dir_is_refused_not_taken_as_the_current_folder(tmp_path, tiny_ckpt, monkeypatch):
    """``xaibatch run "$DIR"`` with $DIR unset in a cron line: "" was ".", so the run explained the job's working
    folder and wrote outputs/ into it."""
    write_images(tmp_path / "REAL", 2)
    write_images(tmp_path / "FAKE", 2, seed=1)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert_one_line(invoke("", "--checkpoint", tiny_ckpt, "--workers", "0"), errors.EXIT_USAGE, "INPUT_DIR is empty")
    r = invoke("REAL", "--out", "", "--checkpoint", tiny_ckpt, "--workers", "0")
    assert_one_line(r, errors.EXIT_USAGE, "--out is empty")
    assert sorted(tmp_path.rglob("*")) == before


EMPTY_PATHS = [
    (["run", "in", "--checkpoint", ""], "--checkpoint is empty; give a file"),
    (["run", "in", "--template-dir", ""], "--template-dir is empty"),
    (["report", ""], "OUT_DIR is empty"),
    (["sanity", ""], "OUT_DIR is empty"),
    (["sanity", "in", "--checkpoint", ""], "--checkpoint is empty"),
    (["train", ""], "DATA_DIR is empty"),
    (["train", "in", "--out", ""], "--out is empty; give a file"),
    (["demo-data", ""], "OUT_DIR is empty"),
    (["serve", "--out", ""], "--out is empty"),
    (["bench", "--keep", ""], "--keep is empty"),
]


@pytest.mark.parametrize(
    "args, needle", EMPTY_PATHS, ids=[" ".join(a or "''" for a in args) for args, _ in EMPTY_PATHS]
)
def test_every_empty_path_is_a_usage_error(tmp_path, monkeypatch, args, needle):
    """Every command's path: "" is a usage error naming the option, never the current folder."""
    monkeypatch.chdir(tmp_path)
    assert_one_line(helpers.invoke(*args), errors.EXIT_USAGE, needle)
    assert list(tmp_path.iterdir()) == []


# --- model and checkpoint -------------------------------------------------------------------------


def test_unknown_arch_suggests_close_names(tmp_path, images):
    model = timm.create_model("test_resnet", num_classes=2)
    sd = tmp_path / "sd.pt"
    torch.save(model.state_dict(), sd)
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", sd, "--arch", "test_resnt"))
    line = assert_one_line(r, errors.EXIT_USAGE, "unknown --arch 'test_resnt'", "did you mean")
    assert "test_resnet" in line


def test_unknown_arch_with_an_xaibatch_checkpoint(tmp_path, images, tiny_ckpt):
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", tiny_ckpt, "--arch", "resnet1"))
    assert_one_line(r, errors.EXIT_USAGE, "unknown --arch 'resnet1'", "resnet18")


def test_checkpoint_of_another_arch_names_the_mismatch(tmp_path, images):
    sd = tmp_path / "effnet.pt"
    torch.save(timm.create_model("test_efficientnet", num_classes=2).state_dict(), sd)
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", sd, "--arch", "test_resnet"))
    line = assert_one_line(r, errors.EXIT_USAGE, "does not fit --arch test_resnet")
    assert "missing key" in line and "unexpected key" in line
    assert "conv1.weight" in line or "conv_stem.weight" in line  # names real keys


def test_checkpoint_with_different_shapes_names_them(tmp_path, images):
    sd = tmp_path / "wide.pt"
    torch.save(timm.create_model("test_resnet", num_classes=2, in_chans=1).state_dict(), sd)  # grey input
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", sd, "--arch", "test_resnet"))
    assert_one_line(
        r,
        errors.EXIT_USAGE,
        "1 shape mismatch",
        "conv1.0.weight is (16, 1, 3, 3) in the file but (16, 3, 3, 3) in the model",
    )


def test_xaibatch_checkpoint_trained_as_another_arch(tmp_path, images, tiny_ckpt):
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", tiny_ckpt, "--arch", "test_vit"))
    assert_one_line(r, errors.EXIT_USAGE, "trained as test_resnet", "--arch test_vit")


def test_checkpoint_classes_differ_from_folders(tmp_path):
    data = tmp_path / "data"
    for c in ("cat", "dog", "eel"):
        write_images(data / c, 2)
    ck = make_checkpoint(tmp_path / "two.pt", classes=["FAKE", "REAL"])
    r = invoke(*run_args(data, tmp_path / "out", "--checkpoint", ck))
    assert_one_line(r, errors.EXIT_USAGE, "['cat', 'dog', 'eel']", "['FAKE', 'REAL']")


def test_plain_state_dict_with_other_class_count(tmp_path):
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        write_images(data / c, 2)
    sd = tmp_path / "five.pt"
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), sd)
    r = invoke(*run_args(data, tmp_path / "out", "--checkpoint", sd, "--arch", "test_resnet"))
    assert_one_line(r, errors.EXIT_USAGE, "2 classes", "5 outputs")


def _good_checkpoint_bytes(tmp_path: Path) -> bytes:
    return make_checkpoint(tmp_path / "ref.pt").read_bytes()


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("random", "not a PyTorch checkpoint"),
        ("text", "not a PyTorch checkpoint"),
        ("empty", "empty or truncated"),
        ("truncated_zip", "corrupted or truncated zip"),
        ("other_zip", "corrupted or truncated zip"),
        ("json", "not a PyTorch checkpoint"),
    ],
)
def test_corrupted_or_non_checkpoint_files(tmp_path, images, kind, needle):
    ck = tmp_path / f"{kind}.pt"
    if kind == "random":
        ck.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "text":
        ck.write_text("these are not the weights you are looking for\n")
    elif kind == "empty":
        ck.write_bytes(b"")
    elif kind == "truncated_zip":
        good = _good_checkpoint_bytes(tmp_path)
        ck.write_bytes(good[: len(good) // 2])
    elif kind == "other_zip":
        with zipfile.ZipFile(ck, "w") as z:
            z.writestr("hello.txt", "hi")
    elif kind == "json":
        ck.write_text('{"arch": "test_resnet"}')
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", ck))
    assert_one_line(r, errors.EXIT_USAGE, str(ck), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("no_arch", "'arch'"),
        ("no_classes", "'class_names'"),
        ("bad_size", "'input_size'"),
        ("bad_std", "'std'"),
        ("unknown_arch", "names the architecture 'resnet_from_the_future', which timm"),
    ],
)
def test_damaged_xaibatch_checkpoint_fields(tmp_path, images, damage, needle):
    obj = torch.load(make_checkpoint(tmp_path / "ok.pt"), weights_only=True)
    if damage == "no_arch":
        del obj["arch"]
    elif damage == "no_classes":
        obj["class_names"] = []
    elif damage == "bad_size":
        obj["input_size"] = "big"
    elif damage == "bad_std":
        obj["std"] = [0.2, 0.0, 0.2]
    elif damage == "unknown_arch":
        obj["arch"] = "resnet_from_the_future"
    ck = tmp_path / "damaged.pt"
    torch.save(obj, ck)
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", ck))
    assert_one_line(r, errors.EXIT_USAGE, needle)


def test_checkpoint_that_is_a_folder_or_missing(tmp_path, images):
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", tmp_path / "missing.pt"))
    assert_one_line(r, errors.EXIT_USAGE, "no such file")
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", tmp_path))  # not a timm Hub folder
    assert_one_line(r, errors.EXIT_USAGE, "a folder, not a checkpoint: give a weights file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --device cuda is valid here")
def test_device_cuda_without_gpu(tmp_path, images, tiny_ckpt):
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", tiny_ckpt, "--device", "cuda"))
    assert_one_line(r, errors.EXIT_USAGE, "no CUDA GPU")
    r = invoke(*run_args(images, tmp_path / "out", "--checkpoint", tiny_ckpt, "--device", "tpu"))
    assert_one_line(r, errors.EXIT_USAGE, "--device 'tpu'")


# --- output folder --------------------------------------------------------------------------------


def test_out_is_an_existing_file(tmp_path, images, tiny_ckpt):
    f = tmp_path / "out.txt"
    f.write_text("keep me")
    r = invoke(*run_args(images, f, "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "is a file")
    assert f.read_text() == "keep me"


def test_out_under_a_file(tmp_path, images, tiny_ckpt):
    f = tmp_path / "afile"
    f.write_text("keep me")
    r = invoke(*run_args(images, f / "sub", "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "cannot write to --out", "Not a directory")
    assert f.read_text() == "keep me"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: a read-only (chmod 555) folder is still writable; "
    "test_out_under_a_file covers an unwritable --out",
)
def test_out_read_only_folder(tmp_path, images, tiny_ckpt):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = invoke(*run_args(images, ro / "out", "--checkpoint", tiny_ckpt))
        assert_one_line(r, errors.EXIT_USAGE, "cannot write to --out", "Permission denied")
    finally:
        ro.chmod(0o755)


def test_out_on_a_read_only_file_system(tmp_path, images, tiny_ckpt):
    """/proc is a real unwritable place even for root."""
    r = invoke(*run_args(images, Path("/proc/xaibatch-test-out"), "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "cannot write to --out")


def test_out_same_as_input_is_refused(tmp_path, images, tiny_ckpt):
    r = invoke(*run_args(images, images, "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "--out", "INPUT_DIR")
    # Refused before anything, even the lock file, is written into the input folder.
    assert sorted(p.name for p in images.iterdir()) == ["img_000.png", "img_001.png", "img_002.png"]


def test_out_inside_input_is_not_read_back(tmp_path, images, tiny_ckpt):
    out = images / "report"
    assert invoke(*run_args(images, out, "--checkpoint", tiny_ckpt)).exit_code == 0
    r = invoke(*run_args(images, out, "--checkpoint", tiny_ckpt))
    assert r.exit_code == 0, r.output
    rels = sorted(x for (x,) in manifest_rows(out, "SELECT rel FROM images"))
    assert rels == ["img_000.png", "img_001.png", "img_002.png"]


# --- a full disk during a run ---------------------------------------------------------------------


def test_disk_full_mid_run_stops_cleanly(tmp_path, tiny_ckpt, monkeypatch):
    """ENOSPC after N files: one line, exit 3, no truncated .npy, the manifest only lists files that exist."""
    import xaibatch.files as files

    data = tmp_path / "in"
    write_images(data, 12)
    out = tmp_path / "out"
    real = files.OutputDir.write
    written = {"n": 0}

    def filling_disk(self, rel, data):
        if written["n"] >= 14:  # part-way through the second batch: 4 images x 3 files, then 2 more
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written["n"] += 1
        real(self, rel, data)

    monkeypatch.setattr(files.OutputDir, "write", filling_disk)  # the writer's one write path: npy and PNGs
    r = invoke(data, "--out", out, "--workers", "0", "-q", "--batch-size", "4", "--checkpoint", tiny_ckpt)
    assert_one_line(r, errors.EXIT_RUNTIME, "no space left on device")

    npys = list(out.rglob("*.npy"))
    assert npys, "the first batch was written before the disk filled"
    for p in npys:  # every map on disk is complete
        assert np.load(p, allow_pickle=False).shape == (32, 32)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    rows = manifest_rows(out, "SELECT npy, png, thumb FROM maps")
    assert rows, "the first batch was committed"
    for row in rows:
        for rel in row:
            assert (out / rel).is_file(), rel
    images = [x for (x,) in manifest_rows(out, "SELECT rel FROM images")]
    assert len(images) == len(rows) < 12


def test_atomic_write_leaves_nothing_on_enospc(tmp_path, monkeypatch):
    """A real partial write: the target keeps its old content and no temporary file stays."""
    import builtins

    import xaibatch.files as files

    target = tmp_path / "maps" / "m.npy"
    files.save_npy(target, np.zeros((4, 4), np.float32))
    before = target.read_bytes()

    class HalfThenFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "open", lambda p, mode: HalfThenFull(builtins.open(p, mode)), raising=False)
    with pytest.raises(OSError) as e:
        files.save_npy(target, np.ones((64, 64), np.float32))
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.npy"]


def test_temporary_names_end_with_the_writer_pid(tmp_path, monkeypatch):
    """'.<name>.<pid>.tmp': the form a sweep of stale temporary files parses (pid last), kept short."""
    import re

    import xaibatch.files as files

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spy)
    files.atomic_write_bytes(tmp_path / ("x" * 240 + ".png"), b"data")
    (name,) = seen
    m = re.match(r"^\..+\.(\d+)\.tmp$", name)
    assert m and int(m.group(1)) == os.getpid(), name
    assert len(name.encode()) < 80


@pytest.mark.parametrize("unnamed", [False, True])
def test_output_dir_writes_new_and_existing_files_atomically(tmp_path, unnamed):
    """OutputDir.write, with files written unnamed and linked (writer processes) or named and renamed: the same
    bytes and mode, an existing file replaced, no temporary file left."""
    import stat

    import xaibatch.files as files

    with files.OutputDir(tmp_path, unnamed=unnamed) as d:
        d.write("maps/m/a.png", b"first")
        d.write("maps/m/a.png", b"second")  # exists: replaced (unnamed: linking fails, renamed as before)
        d.write("b.npy", b"x" * 100_000)
    assert (tmp_path / "maps/m/a.png").read_bytes() == b"second"
    assert (tmp_path / "b.npy").read_bytes() == b"x" * 100_000
    assert stat.S_IMODE((tmp_path / "b.npy").stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.npy", "m", "maps"]


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_every_file_of_a_run_has_the_umasks_permissions(tmp_path, tiny_ckpt, umask):
    """A group sharing a folder (umask 002, a cluster's project folder): the maps, pictures, the manifest and the
    lock were 0644 whatever the umask (created with 0644, SQLite's default), so that no one else of the group could
    run into it ("cannot write to --out OUT: Permission denied"). Every file is now 0666 less the umask, as
    cp and every other tool make them, whoever writes it: the writer thread, the writer processes, the report."""
    import stat
    import subprocess
    import sys

    write_images(tmp_path / "in" / "FAKE", 3)
    write_images(tmp_path / "in" / "REAL", 3, seed=1)
    out = tmp_path / "out"
    argv = ["run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", out, "--workers", "1", "--writers", "2"]
    r = subprocess.run(
        [sys.executable, "-c", "from xaibatch.cli import main; main()", *map(str, argv)],
        cwd=helpers.REPO,
        env=helpers.ENV,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    assert r.returncode == 0, r.stderr
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if not p.is_symlink()}
    assert {"xaibatch.sqlite", ".xaibatch.lock", "index.html", "predictions.csv"} <= set(modes)
    assert any(name.startswith("maps/") and name.endswith(".png") for name in modes)
    wrong = {n: oct(m) for n, m in modes.items() if m != (0o777 if (out / n).is_dir() else 0o666) & ~umask}
    assert wrong == {}


@pytest.mark.parametrize("unnamed", [False, True])
def test_output_dir_frees_an_empty_folder_where_a_file_goes(tmp_path, unnamed):
    """An empty folder where a picture goes (what an input folder x.png/ left) is removed and the file written; a
    folder with files in it stays as it is and the write fails with one line naming it (it failed "Is a directory"
    on every run after)."""
    import xaibatch.files as files

    (tmp_path / "images/x.png").mkdir(parents=True)
    (tmp_path / "images/y.png").mkdir()
    (tmp_path / "images/y.png/keep.txt").write_text("mine")
    with files.OutputDir(tmp_path, unnamed=unnamed) as d:
        d.write("images/x.png", b"picture")
        with pytest.raises(IsADirectoryError, match="a folder that is not empty stands where this file goes") as e:
            d.write("images/y.png", b"picture")
    assert (tmp_path / "images/x.png").read_bytes() == b"picture"
    assert e.value.filename == str(tmp_path / "images/y.png")
    assert (tmp_path / "images/y.png/keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "images").rglob("*")) == ["keep.txt", "x.png", "y.png"]


def test_output_dir_without_o_tmpfile_writes_named_files(tmp_path, monkeypatch):
    """A file system that refuses O_TMPFILE: the unnamed path turns itself off and the files are written as before."""
    import types

    import xaibatch.files as files

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return os.open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(files, "os", types.SimpleNamespace(**{**vars(os), "open": open_}))
    with files.OutputDir(tmp_path, unnamed=True) as d:
        d.write("x/a.png", b"abc")
        assert not d.unnamed
        d.write("x/b.png", b"def")
    assert [(p.name, p.read_bytes()) for p in sorted((tmp_path / "x").iterdir())] == [
        ("a.png", b"abc"),
        ("b.png", b"def"),
    ]


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_a_manifest_from_a_newer_xaibatch_is_refused_and_left_alone(tmp_path, images, tiny_ckpt):
    """An --out a newer xaibatch wrote (a higher schema_version) was silently written over by this one: rows
    without the columns the newer one needs, its schema_version kept. Now: one line, exit 2, not a byte changed."""
    import sqlite3

    out = tmp_path / "out"
    assert invoke(*run_args(images, out, "--checkpoint", tiny_ckpt)).exit_code == 0
    db = sqlite3.connect(out / "xaibatch.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    os.utime(images / "img_000.png", (1, 1))  # a changed image: the run would compute
    r = invoke(*run_args(images, out, "--checkpoint", tiny_ckpt))
    assert_one_line(r, errors.EXIT_USAGE, "written by a newer xaibatch (its schema 99", "nothing was changed")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("flag", [["--ray-workers", "4"], ["--ray-address", "head:6379"], ["--cpus-per-worker", "2"]])
def test_ray_options_without_engine_ray_are_refused(tmp_path, images, tiny_ckpt, flag):
    """--ray-address HEAD without --engine ray ran the whole folder on this machine, saying nothing."""
    out = tmp_path / "out"
    r = invoke(*run_args(images, out, "--checkpoint", tiny_ckpt, *flag))
    assert_one_line(r, errors.EXIT_USAGE, f"{flag[0]}: only with --engine ray")
    assert not out.exists()
    r = invoke(*run_args(images, out, "--checkpoint", tiny_ckpt, "--log-json", *flag))
    assert r.exit_code == errors.EXIT_USAGE and '"event": "end"' in r.output  # the scheduler's JSON line too


@pytest.mark.parametrize("flag", [["--workers", "4"], ["--writers", "2"], ["--workers", "0", "--writers", "0"]])
def test_local_engine_options_with_engine_ray_are_refused(tmp_path, images, tiny_ckpt, flag, monkeypatch):
    """--workers and --writers set the local engine's DataLoader and writer processes; a Ray worker decodes and
    writes with --cpus-per-worker threads. With --engine ray they were dropped without a word (the run started Ray
    and computed as if they were not there)."""
    out = tmp_path / "out"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # had they passed, no Ray starts: nobody answers there
    r = invoke(images, "--out", out, "-q", "--checkpoint", tiny_ckpt, "--engine", "ray", *flag)
    names = ", ".join(f for f in flag if f.startswith("--"))
    assert_one_line(r, errors.EXIT_USAGE, f"{names}: not with --engine ray", "--cpus-per-worker")
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "in", "--batch-size", "0"],
        ["run", "in", "--bogus"],
        ["run"],
        ["rn", "in"],
        ["--bogus"],
        ["bench", "--memory", "--memory-images", "x"],
        ["sanity"],
    ],
    ids=" ".join,
)
def test_usage_errors_are_one_line(args):
    """A bad option was four lines (click's usage line, its 'Try --help' hint, a blank, the error); a scheduler's
    log gets one, which names the command's --help."""
    r = helpers.invoke(*args)
    assert r.exit_code == errors.EXIT_USAGE, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--help')" in lines[0], r.output


def test_an_error_that_already_says_where_to_look_names_one_place():
    r = helpers.invoke("run", "in", "-m", "nope")
    assert r.exit_code == errors.EXIT_USAGE, r.output
    assert r.output.count("see ") == 1 and "`xaibatch methods`" in r.output, r.output


def test_a_bare_xaibatch_still_shows_its_help():
    r = helpers.invoke()
    assert "Commands:" in r.output and "Error" not in r.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "in", "--threshold", "nan"], "'nan' is not a number"),
        (["run", "in", "--wait-timeout", "nan"], "'nan' is not a number"),
        (["run", "in", "--engine", "ray", "--cpus-per-worker", "nan"], "'nan' is not a number"),
        (["run", "in", "--engine", "ray", "--cpus-per-worker", "inf"], "'inf' is not a finite number"),
        (["run", "in", "--engine", "ray", "--gpus-per-worker", "inf"], "'inf' is not a finite number"),
        (["run", "in", "--engine", "ray", "--ray-address", ""], "--ray-address is empty"),
        (["run", "in", "--engine", "ray", "--ray-address", " "], "--ray-address is empty"),
        (["serve", "--threshold", "nan"], "'nan' is not a number"),
        (["train", ".", "--out", "m.pt", "--lr", "nan"], "'nan' is not a number"),
        (["train", ".", "--out", "m.pt", "--lr", "-1"], "--lr"),
        (["train", ".", "--out", "m.pt", "--val-fraction", "1.5"], "--val-fraction"),
    ],
)
def test_nan_and_out_of_range_numbers_are_usage_errors(args, needle):
    """click's FloatRange lets NaN through; --lr -1 (or NaN) trained nothing and exited 3 with 'internal error:
    ValueError: Invalid learning rate' after the imports. Each is now one line, exit 2, before any import. An inf
    CPU or GPU count was refused only after a Ray had started; an empty --ray-address started a private Ray."""
    r = helpers.invoke(*args)
    assert_one_line(r, errors.EXIT_USAGE, needle)


def test_train_refuses_an_out_it_cannot_write_before_training(tmp_path, labeled_dir, monkeypatch):
    """An --out below a file trained for the whole run, then failed to save: 'File exists', exit 3."""
    from xaibatch.tools import train as train_module

    monkeypatch.setattr(train_module, "create", lambda *a, **k: pytest.fail("trained before checking --out"))
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    r = helpers.invoke("train", labeled_dir, "--out", blocker / "m.pt", "--epochs", "1", "--device", "cpu")
    assert_one_line(r, errors.EXIT_USAGE, f"cannot write --out {blocker / 'm.pt'}: Not a directory")
    assert blocker.read_text() == "keep me"


def test_duplicate_class_names_are_refused_before_the_model_loads(tmp_path, images, tiny_ckpt):
    out = tmp_path / "out"
    r = invoke(*run_args(images, out, "--checkpoint", tiny_ckpt, "--classes", "REAL,FAKE,REAL"))
    assert_one_line(r, errors.EXIT_USAGE, "--classes: REAL given twice; one name per output")
    assert not out.exists()


def test_an_option_missing_its_value_names_the_commands_help():
    """click raises "Option '-m' requires an argument." without its context: the line named no help."""
    r = helpers.invoke("run", ".", "-m", catch_exceptions=True)
    assert r.exit_code == 2
    assert r.output == "Error: Option '-m' requires an argument. (see 'cli run --help')\n"  # CliRunner's name: cli


def test_the_top_level_help_gives_each_commands_first_sentence_whole():
    """click cut them at about 45 characters: "Explain every image under INPUT_DIR and write maps plus an..."."""
    commands = " ".join(helpers.invoke("--help").output.split("Commands:", 1)[1].split())
    assert "..." not in commands
    assert "run Explain every image under INPUT_DIR and write maps plus an HTML report. sanity" in commands
