"""``xaibatch demo-data OUT_DIR``: a new, empty or earlier demo-data folder is written; any other non-empty
folder is refused (one line, exit 2) unless --force; a user's file is never deleted."""

from __future__ import annotations

from pathlib import Path

from helpers import invoke


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _demo(out: Path, *extra: str, train: int = 2, test: int = 1):
    return invoke("demo-data", out, "--train-per-class", train, "--test-per-class", test, *extra, catch_exceptions=True)


def test_a_foreign_non_empty_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "photos"
    (out / "holiday").mkdir(parents=True)
    (out / "holiday" / "beach.jpg").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    r = _demo(out)
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert "is not empty and not a previous demo-data output (it holds holiday)" in r.output and "--force" in r.output
    assert _tree(out) == before and not (out / "train").exists()


def test_a_foreign_file_inside_train_is_named(tmp_path):
    out = tmp_path / "d"
    assert _demo(out).exit_code == 0
    (out / "train" / "REAL" / "my_photo.png").write_bytes(b"mine")
    r = _demo(out)
    assert r.exit_code == 2 and "(it holds train/REAL/my_photo.png)" in r.output
    assert (out / "train" / "REAL" / "my_photo.png").read_bytes() == b"mine"


def test_force_writes_beside_and_keeps_the_users_files(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = _demo(out, "--force")
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "mine"
    assert len(list((out / "train").rglob("*.png"))) == 4 and len(list((out / "test").rglob("*.png"))) == 2


def test_rerunning_into_its_own_output_replaces_the_set(tmp_path):
    out = tmp_path / "d"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("mine")  # hidden entries neither refuse the folder nor are touched
    assert _demo(out, train=3, test=2).exit_code == 0
    first = _tree(out)
    assert _demo(out, train=3, test=2).exit_code == 0
    assert _tree(out) == first  # same seed, same bytes
    r = _demo(out, train=1, test=1)  # a smaller set: the earlier set's surplus goes
    assert r.exit_code == 0, r.output
    now = _tree(out)
    assert sorted(k for k in now if k.endswith(".png")) == [
        "test/FAKE/fake_00000.png",
        "test/REAL/real_00000.png",
        "train/FAKE/fake_00000.png",
        "train/REAL/real_00000.png",
    ]
    assert now[".git/HEAD"] == b"mine"
    assert now["train/REAL/real_00000.png"] == first["train/REAL/real_00000.png"]


def test_a_folder_that_cannot_be_made_is_one_line_exit_2(tmp_path):
    (tmp_path / "afile").write_text("mine")
    r = _demo(tmp_path / "afile" / "d")
    assert (r.exit_code, r.output) == (2, f"Error: cannot create {tmp_path / 'afile' / 'd'}: Not a directory\n")


def test_a_link_in_an_earlier_output_is_not_written_through(tmp_path):
    out = tmp_path / "d"
    assert _demo(out, train=1, test=1).exit_code == 0
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"mine")
    link = out / "train" / "REAL" / "real_00000.png"
    link.unlink()
    link.symlink_to(victim)
    r = _demo(out, train=1, test=1)
    assert r.exit_code == 2 and "(it holds train/REAL/real_00000.png)" in r.output
    assert victim.read_bytes() == b"mine"


def test_a_sigterm_midway_is_one_line_exit_5_and_the_same_command_again_completes_the_set(tmp_path):
    """SIGTERM used to kill demo-data with the default action (exit 143, no word said) and leave half a set. It now
    stops as Ctrl-C does, with exit 5 and a line saying the folder holds part of the set; the same command run
    again writes the whole set, identical to one written in a single go."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import ENV

    out, whole = tmp_path / "demo", tmp_path / "whole"
    argv = [
        sys.executable,
        "-m",
        "xaibatch",
        "demo-data",
        str(out),
        "--train-per-class",
        "400",
        "--test-per-class",
        "5",
    ]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "train" / "FAKE").is_dir() or len(list((out / "train" / "FAKE").iterdir())) < 6:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert err.strip().splitlines() == [
        f"Error: interrupted by SIGTERM: {out} holds part of the set; the same command again replaces it"
    ], err
    assert subprocess.run(argv, env=ENV, capture_output=True).returncode == 0
    assert subprocess.run([*argv[:4], str(whole), *argv[5:]], env=ENV, capture_output=True).returncode == 0
    assert _tree(out) == _tree(whole)


def test_demo_data_imports_none_of_the_packages_whose_photos_it_uses(tmp_path):
    """In a container with a read-only or missing HOME, importing matplotlib printed two warning lines and made a
    cache folder in the temporary (or working) folder; the photos are found by the packages' paths alone, the same
    photos as before."""
    import subprocess
    import sys

    from helpers import ENV, REPO

    code = (
        "import sys; from xaibatch.tools.demo import source_photos; names = [n for n, _ in source_photos()]; "
        "print(sorted(m for m in ('matplotlib', 'sklearn', 'skimage') if m in sys.modules)); print(names)"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    imported, names = p.stdout.splitlines()
    assert imported == "[]"
    assert "matplotlib/grace_hopper.jpg" in names and "sklearn/china.jpg" in names and "skimage/rocket.jpg" in names
