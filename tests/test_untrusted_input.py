"""Nobody let in: no code from checkpoints, no file outside --out, no markup from file names, no formulas
from them in predictions.csv."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import badfiles
from helpers import invoke, make_checkpoint, manifest_rows, write_images
from xaibatch import errors
from xaibatch.cli import cli
from xaibatch.data import load_image
from xaibatch.scan import scan
from xaibatch.errors import ModelError, UsageError
from xaibatch.files import InputFolder, make_dirs, open_regular, safe_join
from xaibatch.model.loading import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


# --- checkpoints never run code -------------------------------------------------------------------


class Payload:
    """Unpickling this calls os.system: creates the marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ExecPayload:
    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """{what: (checkpoint, marker its payload would create)}."""
    good = torch.load(make_checkpoint(tmp_path / "good.pt"), weights_only=True)
    files = {}

    def evil(name: str, cls):
        marker = tmp_path / f"PWNED-{name}"
        cls.marker = str(marker)
        return tmp_path / f"{name}.pt", marker, cls()

    path, marker, obj = evil("zip", Payload)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": obj}, path)
    files["torch.save zip"] = (path, marker)
    path, marker, obj = evil("trojan", ExecPayload)
    torch.save({**good, "meta": {"note": obj}}, path)
    files["inside a real xaibatch checkpoint"] = (path, marker)
    path, marker, obj = evil("legacy", ExecPayload)
    torch.save({"x": obj}, path, _use_new_zipfile_serialization=False)
    files["legacy torch.save"] = (path, marker)
    for proto in (2, 4):
        path, marker, obj = evil(f"raw{proto}", Payload)
        path.write_bytes(pickle.dumps({"x": obj}, protocol=proto))
        files[f"raw pickle protocol {proto}"] = (path, marker)
    return files


def test_the_payloads_are_real(tmp_path):
    """Control: loaded without weights_only (in a child process), each file does run its payload."""
    files = _evil_files(tmp_path)
    code = textwrap.dedent("""
        import sys, torch
        for path in sys.argv[1:]:
            try:
                torch.load(path, weights_only=False)
            except Exception:
                pass  # the payload has run by then (or not: the assert below says which)
    """)
    subprocess.run(
        [sys.executable, "-c", code, *[str(p) for p, _ in files.values()]],
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )
    for what, (_, marker) in files.items():
        assert marker.exists(), f"{what}: the control payload did not run, so the real test proves nothing"


def test_malicious_checkpoints_are_refused_and_never_run(tmp_path):
    files = _evil_files(tmp_path)
    images = tmp_path / "in"
    write_images(images, 2)
    for what, (path, marker) in files.items():
        with pytest.raises(ModelError, match="refused to load"):
            read_checkpoint(path)
        r = CliRunner().invoke(
            cli,
            ["run", str(images), "--checkpoint", str(path), "--out", str(tmp_path / "out"), "--workers", "0", "-q"],
            catch_exceptions=False,
        )
        assert "Traceback" not in r.output
        assert r.exit_code == errors.EXIT_USAGE, (what, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "refused to load" in lines[0], (what, r.output)
        assert not marker.exists(), f"{what}: the payload ran"
        assert not (tmp_path / "out").exists()


# --- safe_join ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "../x",
        "/abs",
        "/etc/passwd",
        "a/../../b",
        "a/..",
        "..",
        "",
        ".",
        "./",
        "a/\0b",
        "maps/../../../tmp/x",
        "a//../../b",
    ],
)
def test_safe_join_refuses_escapes(tmp_path, rel):
    with pytest.raises(UsageError, match="refusing to write"):
        safe_join(tmp_path, rel)


@pytest.mark.parametrize(
    "rel",
    [
        "..png",
        "...png",
        ".hidden.png",
        "-rf.png",
        "--out=x.png",
        "a/b/c.npy",
        "<img src=x onerror=alert(1)>.png",
        "a/./b.png",
        "%2e%2e%2fx.png",
        "~/x.png",
    ],
)
def test_safe_join_accepts_odd_but_safe_names(tmp_path, rel):
    p = safe_join(tmp_path, rel)
    assert p.resolve().is_relative_to(tmp_path.resolve())


def test_safe_join_refuses_a_symlink_planted_in_the_output(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "maps")
    with pytest.raises(UsageError, match="resolves outside"):
        safe_join(out, "maps/gradcam/x.npy")


# --- InputFolder: safe_join's guarantee for many reads, the root resolved once --------------------------


def _hostile_input(tmp_path: Path) -> tuple[Path, Path]:
    """An input folder with links that stay inside and links that lead out, and the secret folder outside."""
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "sub" / "deeper").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.npy").write_bytes(b"secret")
    (root / "a.npy").write_bytes(b"a")
    (root / "sub" / "b.npy").write_bytes(b"b")
    (root / "sub" / "deeper" / "c.npy").write_bytes(b"c")
    os.symlink(root / "a.npy", root / "sub" / "to_a.npy")  # a link that stays inside: followed, as by safe_join
    os.symlink("../a.npy", root / "sub" / "rel_to_a.npy")
    os.symlink(root / "sub", root / "sub_link")  # a folder link that stays inside
    os.symlink(outside / "secret.npy", root / "sub" / "leak.npy")  # links that lead out: refused
    os.symlink("../../outside/secret.npy", root / "rel_leak.npy")
    os.symlink(outside, root / "out_dir")
    os.symlink("/dev/zero", root / "zero.npy")
    os.symlink(root / "nowhere", root / "broken.npy")
    os.mkfifo(root / "fifo.npy")
    return root, outside


INPUT_RELS = [
    "a.npy",
    "sub/b.npy",
    "sub/deeper/c.npy",
    "sub/to_a.npy",
    "sub/rel_to_a.npy",
    "sub_link/b.npy",
    "sub_link/deeper/c.npy",
    "sub/leak.npy",
    "rel_leak.npy",
    "out_dir/secret.npy",
    "sub_link/leak.npy",
    "zero.npy",
    "broken.npy",
    "fifo.npy",
    "sub",
    "missing.npy",
    "nofolder/x.npy",
    "a.npy/x.npy",
    "../outside/secret.npy",
    "sub/../../outside/secret.npy",
    "/etc/passwd",
    "",
    ".",
    "sub/",
    "sub/./b.npy",
    "sub//b.npy",
    "./a.npy",
    "a\0b",
]


def _outcome(open_fn, rel: str) -> tuple[str, bytes | str]:
    try:
        fd, _st = open_fn(rel)
    except Exception as e:  # noqa: BLE001 - the outcome compared is the exception's type
        return ("refused", type(e).__name__)
    with os.fdopen(fd, "rb") as f:
        return ("read", f.read())


def test_input_folder_opens_exactly_what_safe_join_opens(tmp_path):
    """Every path, link and odd name: InputFolder.open reads what open_regular(safe_join(...)) reads and refuses
    what it refuses, with the same exception; whatever leads outside raises UsageError, a second time too (its
    folders are then open)."""
    root, _outside = _hostile_input(tmp_path)
    folder = InputFolder(root)
    try:
        for _ in range(2):
            for rel in INPUT_RELS:
                want = _outcome(lambda r: open_regular(safe_join(root, r)), rel)
                assert _outcome(folder.open, rel) == want, rel
                assert want != ("read", b"secret"), rel
        for rel in ("sub/leak.npy", "rel_leak.npy", "out_dir/secret.npy", "sub_link/leak.npy"):
            with pytest.raises(UsageError, match="resolves outside"):
                folder.open(rel)
        assert _outcome(folder.open, "sub/to_a.npy") == ("read", b"a")  # a link inside is still followed
    finally:
        folder.close()


def test_input_folder_without_nofollow_opens_each_file_through_safe_join(tmp_path, monkeypatch):
    """A system without O_NOFOLLOW (or O_DIRECTORY) cannot walk without following links: every path then takes
    safe_join's road, never a plain open."""
    from xaibatch import files

    root, _outside = _hostile_input(tmp_path)
    monkeypatch.setattr(files, "_WALKS", False)
    calls = []
    monkeypatch.setattr(files, "safe_join", lambda r, rel: calls.append(rel) or safe_join(r, rel))
    folder = InputFolder(root)
    try:
        for rel in INPUT_RELS:
            assert _outcome(folder.open, rel) == _outcome(lambda r: open_regular(safe_join(root, r)), rel), rel
    finally:
        folder.close()
    assert calls == INPUT_RELS


def test_input_folder_refuses_links_planted_after_its_folders_were_opened(tmp_path):
    """A folder's descriptor is kept, not what is in it: a file or folder swapped for a link that leads out once
    the folder is open is refused all the same."""
    root, outside = _hostile_input(tmp_path)
    folder = InputFolder(root)
    try:
        assert _outcome(folder.open, "sub/b.npy") == ("read", b"b")
        assert _outcome(folder.open, "sub/deeper/c.npy") == ("read", b"c")
        (root / "sub" / "b.npy").unlink()
        os.symlink(outside / "secret.npy", root / "sub" / "b.npy")
        shutil.rmtree(root / "sub" / "deeper")
        os.symlink(outside, root / "sub" / "deeper")
        (outside / "c.npy").write_bytes(b"secret")
        for rel in ("sub/b.npy", "sub/deeper/c.npy"):
            with pytest.raises(UsageError, match="resolves outside"):
                folder.open(rel)
    finally:
        folder.close()


def test_input_folder_reads_deep_and_many_folders(tmp_path):
    """Folders nested deeper than Python's recursion limit (opened by a loop, not recursion) and more folders
    than it keeps open (the oldest closed, reopened when needed) read the right bytes."""
    root = tmp_path / "in"
    deep = badfiles.deep_chain(root, 1050)
    for i in range(5):
        (root / f"f{i}").mkdir()
        (root / f"f{i}" / "x.npy").write_bytes(str(i).encode())
    folder = InputFolder(root, max_open=3)
    try:
        assert _outcome(folder.open, deep) == ("read", (root / deep).read_bytes())
        for _ in range(2):
            for i in range(5):
                assert _outcome(folder.open, f"f{i}/x.npy") == ("read", str(i).encode())
        folder.close()
        assert _outcome(folder.open, "f0/x.npy") == ("read", b"0")  # usable again after close (reopens the root)
    finally:
        folder.close()
        badfiles.remove_tree(root)  # too deep for shutil.rmtree (pytest's clean-up)


def test_run_with_a_planted_symlink_writes_nothing_outside(tmp_path, tiny_ckpt):
    images, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    write_images(images, 3)
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "images")
    r = CliRunner().invoke(
        cli,
        ["run", str(images), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"],
        catch_exceptions=False,
    )
    assert "Traceback" not in r.output
    assert r.exit_code == errors.EXIT_USAGE, r.output
    assert "resolves outside" in r.output
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("kind", ["link to a file", "dangling link", "fifo"])
def test_a_planted_lock_file_is_refused_and_nothing_outside_changes(tmp_path, tiny_ckpt, kind):
    """Another user of a shared --out planting .xaibatch.lock as a link: the lock's holder record truncated and
    wrote the file it pointed at (a user's file outside --out), or created one there."""
    images, out, victim = tmp_path / "in", tmp_path / "out", tmp_path / "victim.txt"
    write_images(images, 3)
    args = ["run", str(images), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    (out / ".xaibatch.lock").unlink()
    if kind == "fifo":
        os.mkfifo(out / ".xaibatch.lock")
    else:
        if kind == "link to a file":
            victim.write_text("a user's own file")
        os.symlink(victim, out / ".xaibatch.lock")
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert "Traceback" not in r.output
    assert r.exit_code == errors.EXIT_USAGE, r.output
    assert "the lock file" in r.output and "refusing to open it" in r.output
    if kind == "link to a file":
        assert victim.read_text() == "a user's own file"
    else:
        assert not victim.exists()


@pytest.mark.parametrize("kind", ["empty file", "another manifest"])
def test_a_planted_manifest_link_is_refused_and_its_target_kept(tmp_path, tiny_ckpt, kind):
    """SQLite follows a link: xaibatch.sqlite planted as a link to an empty file outside --out made the run write
    a whole manifest there (and into another output folder's manifest, when it pointed at one)."""
    images, out, other = tmp_path / "in", tmp_path / "out", tmp_path / "other"
    write_images(images, 3)
    args = ["run", str(images), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    other.mkdir()
    victim = other / "xaibatch.sqlite"
    if kind == "empty file":
        victim.write_bytes(b"")
    else:
        shutil.copy(out / "xaibatch.sqlite", victim)
    (out / "xaibatch.sqlite").unlink()
    os.symlink(victim, out / "xaibatch.sqlite")
    before = _snapshot(other)
    r = CliRunner().invoke(cli, [*args[:-1], "--replace", "-q"], catch_exceptions=False)
    assert "Traceback" not in r.output
    assert r.exit_code == errors.EXIT_USAGE, r.output
    assert "is a symbolic link" in r.output
    assert _snapshot(other) == before


# --- no file outside --out, whatever the names ----------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime) of every file and link; folders by existence only (a temporary file made
    and removed again changes a folder's mtime, and leaves nothing behind)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            snap[os.path.join(dirpath, n)] = (-1, 0)
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            snap[p] = (st.st_size, st.st_mtime_ns)
    return snap


def test_hostile_names_write_only_under_out(tmp_path, tiny_ckpt):
    """A real process (cwd and TMPDIR inside tmp_path): afterwards the only new files are under --out."""
    images = tmp_path / "in"
    bf = badfiles.BadFolder(images)
    badfiles.put_names(images, "names", bf)
    badfiles.put_names(images, "-dash", bf)
    for rel in ("..png", "...png", "-.png", "..jpg/..png", "....", ".. .png"):
        p = images / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(badfiles.png_bytes(Image.new("RGB", (5, 5))))
    deep = "deep/" + "x/" * 40 + "..png"
    make_dirs((images / deep).parent)
    (images / deep).write_bytes(badfiles.png_bytes(Image.new("RGB", (5, 5))))
    cwd, tmp, out = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "out"
    cwd.mkdir()
    tmp.mkdir()
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_ckpt, ckpt)
    before = _snapshot(tmp_path)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from xaibatch.cli import main; main()",
            "run",
            str(images),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--workers",
            "2",
            "--batch-size",
            "8",
            "-q",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    after = _snapshot(tmp_path)
    changed = {p for p in after if before.get(p) != after[p]}
    outside = {p for p in changed if not Path(p).is_relative_to(out)}
    assert not outside, sorted(outside)
    assert not [p for p in before if p not in after], "something under the input was deleted"
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []

    # Everything went in, each image's files where the manifest says, inside --out.
    rels = {r for (r,) in manifest_rows(out, "SELECT rel FROM images")}
    expected = {e.rel for e in scan(images).images}
    shown = [n for n in badfiles.HOSTILE_NAMES if not n.startswith(".")]  # "..png", ".hidden.png": hidden, ignored
    assert rels == expected and len(rels) == 2 * (len(shown) + 1) + 1  # "-.png"; the other dot-names are hidden
    for npy, png, thumb in manifest_rows(out, "SELECT npy, png, thumb FROM maps"):
        for rel in (npy, png, thumb):
            p = (out / rel).resolve()
            assert p.is_relative_to(out.resolve()) and p.is_file(), rel
        assert np.load(out / npy, allow_pickle=False).ndim == 2


def test_deep_nesting_past_the_recursion_limit(tmp_path):
    """1050 folders deep: scanned, decoded, and its output folders created, without recursion."""
    rel = badfiles.deep_chain(tmp_path / "in", 1050)
    try:
        found = scan(tmp_path / "in")
        assert [e.rel for e in found.images] == [rel]
        assert load_image(found.images[0].path).size == (4, 4)
        target = safe_join(tmp_path / "out", f"maps/gradcam/{rel[:-4]}.npy")
        from xaibatch.files import save_npy

        save_npy(target, np.zeros((4, 4), np.float32))
        assert np.load(target).shape == (4, 4)
    finally:
        badfiles.remove_tree(tmp_path / "in")
        badfiles.remove_tree(tmp_path / "out")


# --- names are text in the report -----------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._in_script = False
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.text).append(data)


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("xss")
    images = base / "in"
    bf = badfiles.BadFolder(images)
    badfiles.put_names(images, "names", bf)
    (images / "<img src=x onerror=alert(2)>.jpg").write_bytes(b"not an image, so it is listed as skipped")
    out = base / "out"
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(images),
            "--checkpoint",
            str(make_checkpoint(base / "m.pt")),
            "--out",
            str(out),
            "--workers",
            "0",
            "-q",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == errors.EXIT_SOME_FAILED, r.output
    return out, bf


def test_names_are_text_not_markup(hostile_report):
    out, bf = hostile_report
    for page in out.rglob("*.html"):
        p = _Page()
        p.feed(page.read_text(encoding="utf-8"))
        for tag, attrs in p.tags:
            assert not (tag == "img" and attrs.get("src") == "x"), f"{page.name}: a file name became an <img>"
        assert not any("alert('xss')" in s for s in p.scripts), f"{page.name}: a file name became a <script>"
    every_text = "".join("".join(_text_of(pg)) for pg in out.rglob("*.html"))
    assert "<img src=x onerror=alert(1)>.png" in every_text
    assert "<script>alert('xss')</script>.png" in every_text
    assert "<b>bold</b> & 'q' #%?/in folder.png" in every_text
    assert "<img src=x onerror=alert(2)>.jpg" in every_text  # in the Skipped list, as text


def _text_of(page: Path) -> list[str]:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    return p.text


def test_every_local_link_in_the_report_points_into_out(hostile_report):
    """Percent-encoding of '#', '%', '?', quotes, spaces: every src/href opens the right file inside --out."""
    out, _ = hostile_report
    checked = 0
    for page in out.rglob("*.html"):
        p = _Page()
        p.feed(page.read_text(encoding="utf-8"))
        for tag, attrs in p.tags:
            for key in ("src", "href"):
                v = attrs.get(key)
                if not v or v.startswith(("#", "data:", "http:", "https:", "mailto:", "javascript:")):
                    continue
                parts = urlsplit(v)
                assert not parts.scheme and not parts.netloc, v
                target = (page.parent / unquote(parts.path)).resolve()
                assert target.is_relative_to(out.resolve()), v
                assert target.exists(), (page.name, v)
                checked += 1
    assert checked >= 2 * len(badfiles.HOSTILE_NAMES)


def _browser():
    """A headless Chromium through selenium, or None when this machine has none."""
    driver_path = shutil.which("chromedriver")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not driver_path or not chrome:
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    opts.binary_location = chrome
    return webdriver.Chrome(service=Service(driver_path), options=opts)


@pytest.mark.browser
def test_no_script_runs_in_a_browser(hostile_report):
    """Light check (the report's own browser tests go further): no alert, names shown as text."""
    try:
        driver = _browser()
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no usable headless Chromium: {type(e).__name__}")
    if driver is None:
        pytest.skip("no chromium + chromedriver on PATH")
    out, _ = hostile_report
    from selenium.common.exceptions import NoAlertPresentException

    pages = sorted(out.glob("*.html")) + sorted(p for p in out.rglob("*.html") if p.parent != out)[:10]
    shown = set()
    try:
        for page in pages:
            driver.get(page.as_uri())
            with pytest.raises(NoAlertPresentException):
                driver.switch_to.alert.text  # noqa: B018
            assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
            body = driver.find_element("tag name", "body").text
            shown |= {n for n in ("<img src=x onerror=alert(1)>.png", "<img src=x onerror=alert(2)>.jpg") if n in body}
    finally:
        driver.quit()
    assert shown == {"<img src=x onerror=alert(1)>.png", "<img src=x onerror=alert(2)>.jpg"}, shown


# --- names whose output files would collide -------------------------------------------------------


def test_clashing_names_get_distinct_output_files(tmp_path, tiny_ckpt):
    """x.png + x.jpg + x.png.gif shared files (x.png's stem was x.png.gif's); photo.jpg's maps
    (photo.png) were a file where photo.png/'s maps need a folder: the run died with 'File exists'."""
    from xaibatch.layout import map_stems

    images = tmp_path / "in"
    colours = {
        "x.png": (255, 0, 0),
        "x.jpg": (0, 255, 0),
        "x.png.gif": (0, 0, 255),
        "photo.jpg": (9, 9, 9),
        "photo.png/a.png": (200, 200, 0),
        "photo.jpg.png/b.png": (0, 200, 200),
    }
    for rel, c in colours.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), c).save(images / rel)
    stems = map_stems(list(colours))
    assert len(set(stems.values())) == len(stems)
    assert stems["photo.png/a.png"] == "photo.png/a"  # no clash: unchanged
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli,
        ["run", str(images), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    for rel, stem in manifest_rows(out, "SELECT rel, stem FROM images"):
        got = Image.open(out / "images" / f"{stem}.png").convert("RGB").getpixel((4, 4))
        want = colours[rel]  # each image's own picture, none overwritten (JPEG: +-3)
        assert all(abs(g - w) <= 3 for g, w in zip(got, want)), (rel, stem, got)
    assert len(manifest_rows(out, "SELECT DISTINCT npy FROM maps")) == len(colours)


def test_csv_cells_that_look_like_formulas_are_quoted(tmp_path):
    import csv

    from PIL import Image

    from helpers import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "f.pt", classes=["=cmd|' -C calc'!A0", "@SUM(1)"])
    root = tmp_path / "in"
    for rel in [
        "=cmd|' -C calc'!A0/=HYPERLINK(\"http:x\").png",
        "@SUM(1)/+1.png",
        "@SUM(1)/-2.png",
        "@SUM(1)/plain.png",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (5, 6, 7)).save(root / rel)
    out = tmp_path / "out"
    r = invoke("run", root, "--checkpoint", ckpt, "--out", out, "--workers", 0)
    assert r.exit_code == 0, r.output
    rows = list(csv.reader((out / "predictions.csv").open()))
    cells = [c for row in rows for c in row[:3] + row[5:]]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    assert "'=cmd|' -C calc'!A0/=HYPERLINK(\"http:x\").png" in [row[0] for row in rows]
    assert "@SUM(1)/plain.png" not in [row[0] for row in rows] and "'@SUM(1)/plain.png" in [row[0] for row in rows]
