"""Bad images are reported, not fatal.

One folder (tests/badfiles.py) mixes good images with every kind of bad input. A run over it must
finish, process every good image, list every bad one in the manifest's failures and the report's
Skipped section with its reason, ignore non-images silently, and exit 1 ("some images failed");
with decoding in the main process and in two DataLoader workers alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import badfiles
from badfiles import FAIL, IGNORED, OK
from helpers import make_checkpoint, manifest_rows
from xaibatch import errors
from xaibatch.cli import cli
from xaibatch.data import load_image
from xaibatch.dataset import ImageDataset, collate
from xaibatch.scan import Failure, scan
from xaibatch.errors import DecodeError

ROOT = Path(__file__).resolve().parents[1]


class Run:
    def __init__(self, folder: badfiles.BadFolder, out: Path, result, seconds: float) -> None:
        self.folder, self.out, self.result, self.seconds = folder, out, result, seconds
        self.images = {r[0]: (r[1], r[2]) for r in manifest_rows(out, "SELECT rel, width, height FROM images")}
        self.failures = dict(manifest_rows(out, "SELECT rel, reason FROM failures"))
        self.maps = {(r[0], r[1]): r[2:] for r in manifest_rows(out, "SELECT rel, method, npy, png, thumb FROM maps")}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """The bad folder, run once with workers=0 and once with workers=2 (batches of 8)."""
    base = tmp_path_factory.mktemp("bad")
    ckpt = make_checkpoint(base / "tiny.pt")
    folder = badfiles.build(base / "in")
    runs = {}
    for workers in (0, 2):
        out = base / f"out-w{workers}"
        t0 = time.time()
        result = CliRunner().invoke(
            cli,
            [
                "run",
                str(folder.root),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--workers",
                str(workers),
                "--batch-size",
                "8",
            ],
            catch_exceptions=False,
        )
        runs[workers] = Run(folder, out, result, time.time() - t0)
    yield runs
    badfiles.remove_tree(base)  # 1100-deep folders: too deep for shutil.rmtree


@pytest.fixture(scope="module", params=[0, 2], ids=["workers0", "workers2"])
def bad_run(request, bad_runs) -> Run:
    return bad_runs[request.param]


def test_run_finishes_with_exit_1_and_no_traceback(bad_run):
    r = bad_run.result
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == errors.EXIT_SOME_FAILED, r.output
    ok, fail = len(bad_run.folder.by(OK)), len(bad_run.folder.by(FAIL))
    assert f"{ok} computed" in r.output and f"{fail} failed" in r.output, r.output


def test_every_good_image_is_processed_with_its_maps(bad_run):
    out = bad_run.out
    for case in bad_run.folder.by(OK):
        assert case.rel in bad_run.images, f"{case.rel!r} was not processed"
        w, h = bad_run.images[case.rel]
        if case.size:
            assert (w, h) == case.size, case.rel
        npy, png, thumb = bad_run.maps[(case.rel, "gradcam")]
        for rel in (npy, png, thumb):
            p = out / rel
            assert p.is_file(), (case.rel, rel)
            assert p.resolve().is_relative_to(out.resolve())
        m = np.load(out / npy, allow_pickle=False)
        assert m.shape == (h, w) and np.isfinite(m).all(), case.rel


def test_every_bad_file_is_listed_with_its_reason(bad_run):
    for case in bad_run.folder.by(FAIL):
        assert case.rel in bad_run.failures, f"{case.rel!r} missing from failures"
        reason = bad_run.failures[case.rel]
        assert case.reason in reason, (case.rel, reason)
        assert "\n" not in reason and len(reason) < 300


def test_every_lasting_reason_starts_a_reason_a_bad_file_gets(bad_runs, tmp_path, monkeypatch):
    """errors.LASTING_REASONS (failures the bytes decide: not read again while size and mtime stay) are matched
    by their first words, so each must start a reason a bad file really gets: a message reworded apart from them
    would make that failure read again on every run, silently. The reasons: the bad folder's run, a TIFF PIL
    cannot decode, a sparse file over the size limit; and, through the same code with a stand-in, the two no
    file here reaches (a decode to no usable pixels, PIL recursing too deep)."""
    from tinytiff import tiff

    from xaibatch import data
    from xaibatch.scan import MAX_FILE_BYTES

    def reason(path: Path) -> str:
        with pytest.raises(DecodeError) as e:
            load_image(path)
        return str(e.value)

    reasons = list(bad_runs[0].failures.values())
    (tmp_path / "float.tif").write_bytes(tiff(3, 32, 3))
    with (tmp_path / "big.png").open("wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    reasons += [why for _, why in scan(tmp_path).skipped]
    reasons.append(reason(tmp_path / "float.tif"))
    good = tmp_path / "good.png"
    good.write_bytes(badfiles.png_bytes(Image.new("RGB", (4, 4))))
    with monkeypatch.context() as m:
        m.setattr(data, "to_rgb", lambda im: Image.new("L", im.size))
        reasons.append(reason(good))
    with monkeypatch.context() as m:
        m.setattr(data.Image, "open", lambda *a, **kw: (_ for _ in ()).throw(RecursionError()))
        reasons.append(reason(good))
    assert all(errors.lasting(r) for r in reasons[-4:]), reasons[-4:]
    for prefix in errors.LASTING_REASONS:
        assert any(r.startswith(prefix) for r in reasons), (prefix, reasons)


def test_non_images_are_ignored_and_nothing_else_appears(bad_run):
    listed = set(bad_run.images) | set(bad_run.failures)
    for case in bad_run.folder.by(IGNORED):
        assert case.rel not in listed, case.rel
    expected = {c.rel for c in bad_run.folder.cases if c.outcome != IGNORED}
    assert listed == expected, (listed - expected, expected - listed)
    assert not set(bad_run.images) & set(bad_run.failures)


def test_nothing_lost_counts(bad_runs, capsys):
    """processed + skipped == every image-named entry; both worker settings agree."""
    a, b = bad_runs[0], bad_runs[2]
    assert a.images == b.images and a.failures == b.failures
    folder = a.folder
    tried = len(folder.cases)
    with capsys.disabled():
        print(
            f"\n[bad-input] cases tried {tried}: processed {len(a.images)}, skipped {len(a.failures)}, "
            f"ignored {len(folder.by(IGNORED))}, lost 0; run {a.seconds:.1f}s (workers 0), "
            f"{b.seconds:.1f}s (workers 2); notes: {folder.notes}"
        )
    assert len(a.images) + len(a.failures) + len(folder.by(IGNORED)) == tried


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(path: Path) -> str:
    p = _Text()
    p.feed(path.read_text(encoding="utf-8"))
    return "".join(p.parts)


def test_report_lists_skipped_files_with_reasons(bad_run):
    pages = {p: html_text(p) for p in bad_run.out.rglob("*.html")}
    assert any("Skipped" in t for t in pages.values()), "no Skipped section"
    for case in bad_run.folder.by(FAIL):
        reason = bad_run.failures[case.rel]
        base = case.rel.rsplit("/", 1)[-1]
        assert any(base in t and reason in t for t in pages.values()), (case.rel, reason)


# --- the decoder on each unusual mode -------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    f = badfiles.build(tmp_path_factory.mktemp("modes") / "in", deep=False, hostile_names=False)
    yield f
    badfiles.remove_tree(f.root)


def test_unusual_modes_decode_to_the_right_rgb(folder):
    checked = 0
    for case in folder.by(OK):
        im = load_image(folder.root / case.rel)
        assert im.mode == "RGB"
        if case.size:
            assert im.size == case.size, case.rel
        if case.pixel:
            (x, y), want = case.pixel
            got = im.getpixel((x, y))
            assert all(abs(g - w) <= 12 for g, w in zip(got, want)), (case.rel, got, want)
            checked += 1
    assert checked >= 12


def test_exif_orientation_6_puts_the_left_half_on_top(tmp_path):
    """Stored 40x20 with the left half red; orientation 6 means 'rotate 90 clockwise to display'."""
    p = tmp_path / "rot6.jpg"
    p.write_bytes(badfiles.exif_jpeg(6))
    stored = np.asarray(Image.open(p).convert("RGB"))
    assert stored.shape == (20, 40, 3) and stored[10, 5, 0] > 200  # as stored: red on the left
    a = np.asarray(load_image(p))
    assert a.shape == (40, 20, 3)  # portrait after rotation
    top, bottom = a[:20].reshape(-1, 3).mean(0), a[20:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue below


def test_a_jpeg_over_the_pixel_limit_is_decoded_scaled_and_keeps_its_size(tmp_path):
    """A 67.5-megapixel phone JPEG (EXIF orientation 6) was refused as a decompression bomb: now decoded at half
    size, upright; the manifest keeps its own size, and a bomb PNG is refused as before."""
    from helpers import quiet, run_opts
    from xaibatch.pipeline.run import run

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    stored = Image.new("L", (9000, 7500), 90)  # over MAX_PIXELS (64,000,000); grey: a small file, quick to write
    stored.paste(250, (0, 0, 4500, 7500))  # the left half light: on top once rotated
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(inp / "phone.jpg", quality=70, exif=exif.tobytes())
    (inp / "bomb.png").write_bytes(badfiles.bomb_png(9000, 9000))
    del stored
    a = np.asarray(load_image(inp / "phone.jpg"))
    assert a.shape == (4500, 3750, 3)  # stored 9000 wide, 7500 high; upright 7500 x 9000; decoded at 1/2
    assert a[:2000].mean() > 200 and a[2500:].mean() < 120  # upright: the light half on top
    r = run(run_opts(inp, out, make_checkpoint(tmp_path / "m.pt")), log=quiet)
    failed = dict(r.failed)
    assert r.computed == 1 and list(failed) == ["bomb.png"], failed
    assert failed["bomb.png"].startswith("refused: the image has 81,000,000 pixels"), failed
    assert manifest_rows(out, "SELECT rel, width, height FROM images") == [("phone.jpg", 7500, 9000)]


def test_decompression_bomb_is_refused_fast_without_reading_it(tmp_path):
    """Measured in a fresh process: under 0.5 s and under 20 MB more peak memory than a tiny image."""
    (tmp_path / "bomb.png").write_bytes(badfiles.bomb_png(100_000, 100_000))
    (tmp_path / "bomb2.png").write_bytes(badfiles.bomb_png(9000, 9000))
    (tmp_path / "small.png").write_bytes(badfiles.png_bytes(Image.new("RGB", (8, 8))))
    code = textwrap.dedent(f"""
        import json, resource, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from xaibatch.data import load_image
        from xaibatch.errors import DecodeError
        load_image({str(tmp_path / "small.png")!r})
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = []
        for name in ("bomb.png", "bomb2.png"):
            t = time.perf_counter()
            try:
                load_image({str(tmp_path)!r} + "/" + name)
                out.append([name, "decoded", 0])
            except DecodeError as e:
                out.append([name, str(e), time.perf_counter() - t])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"results": out, "extra_kb": peak - base}}))
    """)
    res = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
        .stdout.strip()
        .splitlines()[-1]
    )
    for name, reason, seconds in res["results"]:
        assert "decompression bomb" in reason, (name, reason)
        assert seconds < 0.5, (name, seconds)
    assert res["extra_kb"] < 20 * 1024, res


def test_first_frame_of_animations(folder):
    assert load_image(folder.root / "animated.gif").getpixel((1, 1)) == (255, 0, 0)
    assert load_image(folder.root / "multipage.tif").getpixel((1, 1)) == (0, 255, 0)
    assert load_image(folder.root / "animated.webp").getpixel((1, 1)) == (0, 0, 255)


def test_unreadable_file_chmod_000(tmp_path):
    ok, why = badfiles.can_make_unreadable()
    if not ok:
        pytest.skip(why + " (the EACCES case is covered through a write-only /proc file)")
    p = tmp_path / "locked.png"
    p.write_bytes(badfiles.png_bytes(Image.new("RGB", (4, 4))))
    p.chmod(0)
    try:
        with pytest.raises(DecodeError, match="Permission denied"):
            load_image(p)
    finally:
        p.chmod(0o644)


def test_permission_denied_is_a_decode_error():
    if not badfiles.proc_unreadable_available():
        pytest.skip(f"{badfiles.WRITE_ONLY_PROC_FILE} missing or readable here")
    with pytest.raises(DecodeError, match="cannot read: Permission denied"):
        load_image(badfiles.WRITE_ONLY_PROC_FILE)


def test_fifo_never_blocks_the_decoder(tmp_path):
    """A FIFO swapped in after the scan: refused at once, not read (which would block forever)."""
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    t = time.perf_counter()
    with pytest.raises(DecodeError, match="not a regular file"):
        load_image(fifo)
    assert time.perf_counter() - t < 1


def test_file_gone_after_scan(tmp_path):
    with pytest.raises(DecodeError, match="cannot read: No such file"):
        load_image(tmp_path / "gone.png")


def test_device_files_are_not_opened(tmp_path):
    (tmp_path / "a.png").write_bytes(badfiles.png_bytes(Image.new("RGB", (4, 4))))
    os.symlink("/dev/zero", tmp_path / "zero.png")
    found = scan(tmp_path)
    assert [e.rel for e in found.images] == ["a.png"]
    assert found.skipped == [Failure("zero.png", "not a regular file (a character device)", "image")]


def test_scan_order_is_depth_first_sorted(tmp_path):
    for rel in ("b.png", "b/x.png", "a/z.png", "c.png"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(badfiles.png_bytes(Image.new("RGB", (2, 2))))
    os.symlink("a", tmp_path / "0link")  # a symlinked alias that sorts first: "a" keeps its real name
    assert [e.rel for e in scan(tmp_path).images] == ["a/z.png", "b/x.png", "b.png", "c.png"]


# --- DataLoader workers ---------------------------------------------------------------------------


def _loader(folder: badfiles.BadFolder, workers: int):
    found = scan(folder.root)
    ds = ImageDataset(found.images, 16)
    return found, torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate)


def test_decode_errors_in_two_workers_keep_the_pool_alive(folder):
    found, loader = _loader(folder, 2)
    good, bad = set(), {}
    for b in loader:
        good.update(found.images[i].rel for i in b.index)
        bad.update({found.images[i].rel: why for i, why in b.failed})
        if b.x is not None:
            assert b.x.dtype == torch.uint8 and b.x.shape[1:] == (3, 16, 16)
    assert len(good) + len(bad) == len(found.images)
    assert good == {c.rel for c in folder.by(OK)}
    assert "empty file" in bad["empty.png"] and "decompression bomb" in bad["bomb.png"]


def test_unexpected_exception_in_a_worker_is_one_failure(folder, monkeypatch):
    """Not only DecodeError: any exception inside a worker becomes that image's failure."""
    import xaibatch.data as data

    real = data.load_image

    def flaky(path, *a, **k):
        if str(path).endswith("good_003.png"):
            raise RuntimeError("simulated bug")
        return real(path, *a, **k)

    monkeypatch.setattr(data, "load_image", flaky)  # inherited by the forked workers
    found, loader = _loader(folder, 2)
    failed = {found.images[i].rel: why for b in loader for i, why in b.failed}
    assert failed["good_003.png"] == "RuntimeError: simulated bug"


def _ico() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="ICO")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "said"),
    [
        ("iphone.jpg", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(200), "HEIC"),
        ("phone.jpg", b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf" + bytes(200), "AVIF"),
        ("favicon.png", _ico(), "ICO"),
        ("logo.jpg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>\n', "SVG"),
        ("photo.jpg", b"\xef\xbb\xbf\n  <!DOCTYPE html>\n<html><head><title>404 Not Found</title>", "HTML page"),
    ],
)
def test_a_scraped_file_in_a_format_xaibatch_does_not_read_is_named(tmp_path, name, data, said):
    """A HEIC or AVIF photo, an ICO icon, an SVG drawing or a web server's HTML error page saved under an image's
    name all failed "not an image: the content is not PNG, JPEG, ...", which left the user to find out what each
    file was (a HEIC is an image). The reason now names what the file is; it still starts with "not an image",
    a failure the same bytes always give (errors.LASTING_REASONS)."""
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(DecodeError) as e:
        load_image(p)
    reason = str(e.value)
    assert said in reason and errors.lasting(reason) and "\n" not in reason, reason
