"""``xaibatch serve``: the maps equal explain()'s, flagging writes only under OUT/flagged, broken uploads are one
line; and the page itself in headless Chromium (upload, maps, flag, bad uploads, two clients at once)."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badfiles import bomb_png
from helpers import make_checkpoint
from xaibatch import layout
from xaibatch.errors import DecodeError, UsageError, XaibatchError
from xaibatch.serve.flags import clean_label, save_flag
from xaibatch.tools import chromium, synth

# Gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:'future.no_silent_downcasting'", "ignore:The copy keyword is deprecated"
)

METHODS = ["gradcam", "guided-gradcam", "lime"]
SAMPLES = 40


def png(seed: int, size: int = 32) -> bytes:
    a = synth.noise(np.random.default_rng(seed), size)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def truncated_png() -> bytes:
    return png(5, 64)[:300]


# ------------------------------------------------------------------------------------------- flagging (no torch)


def test_flag_saves_imagefolder_layout_with_content_names(tmp_path):
    out = tmp_path / "out"
    a, b = png(1), png(2)
    f1 = save_flag(out, "REAL", a, "PNG")
    assert f1.new and f1.rel.startswith("flagged/REAL/") and f1.rel.endswith(".png")
    assert f1.path.read_bytes() == a
    again = save_flag(out, "REAL", a, "PNG")
    assert not again.new and again.path == f1.path
    f2 = save_flag(out, "REAL", b, "PNG")
    assert f2.path != f1.path
    save_flag(out, "FAKE", a, "JPEG")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) == 3 and all(f.startswith("flagged/") for f in files)
    assert [p.name for p in (out / "flagged" / "FAKE").iterdir()][0].endswith(".jpg")
    assert not [p for p in out.rglob("*.tmp")]

    from xaibatch.scan import scan

    found = scan(out / "flagged", None, False)
    assert found.classes == ["FAKE", "REAL"] and len(found.images) == 3


@pytest.mark.parametrize(
    "label, expected",
    [
        ("../../etc", "etc"),
        ("a/b\\c", "a_b_c"),
        ("  cat  ", "cat"),
        (".hidden", "hidden"),
        ("ünï 日本", "ünï 日本"),
        ("x" * 300, "x" * 64),
        ("<script>", "script"),
    ],
)
def test_labels_become_one_safe_folder_name(label, expected):
    assert clean_label(label) == expected


@pytest.mark.parametrize("label", ["", "  ", "..", "/", "\0", None])
def test_an_empty_label_is_refused(label):
    with pytest.raises(UsageError):
        clean_label(label)


def test_flag_never_writes_outside_out(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "flagged").symlink_to(elsewhere)
    with pytest.raises(UsageError):
        save_flag(out, "REAL", png(1), "PNG")
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(UsageError):
        save_flag(tmp_path / "o2", "REAL", b"", "PNG")
    with pytest.raises(UsageError):
        save_flag(tmp_path / "o2", "REAL", b"x", "EPS")
    assert not (tmp_path / "o2").exists()


def test_a_camera_jpeg_with_several_pictures_can_be_flagged(tmp_path):
    """Phones and cameras write JPEGs that hold more pictures (MPO: depth maps, previews); PIL names their format
    MPO. They were explained, but flagging them said "cannot flag an image of format 'MPO'"."""
    from xaibatch.scan import scan
    from xaibatch.serve.core import decode_upload

    buf = io.BytesIO()
    first, second = (Image.fromarray(synth.noise(np.random.default_rng(s), 32)) for s in (1, 2))
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    u = decode_upload(buf.getvalue())
    assert u.image_format == "MPO"
    f = save_flag(tmp_path / "out", "REAL", u.data, u.image_format)
    assert f.path.suffix == ".jpg" and f.path.read_bytes() == u.data
    assert [i.rel for i in scan(tmp_path / "out" / "flagged", None, False).images] == [f"REAL/{f.path.name}"]


def test_explained_images_are_kept_for_flagging_within_a_bound():
    """What a Flag press saves is found by the sha256 the tab holds; the oldest go first, the newest always stays."""
    from xaibatch.serve.flags import Explained

    kept = Explained(max_bytes=10)
    assert kept.keep("a", b"12345", "PNG") == "a"
    kept.keep("b", b"678", "JPEG")
    assert kept.get("a") == (b"12345", "PNG") and kept.get("b") == (b"678", "JPEG")
    kept.keep("a", b"12345", "PNG")  # explained again: the newest now
    kept.keep("c", b"xyz", "PNG")  # 11 bytes: "b" goes, not "a"
    assert kept.get("a")[0] == b"12345"
    with pytest.raises(UsageError, match="explain it again"):
        kept.get("b")
    kept.keep("big", b"0" * 100, "PNG")  # over the bound alone: kept, every other one goes
    assert kept.get("big")[0] == b"0" * 100
    with pytest.raises(UsageError, match="explain it again"):
        kept.get("c")
    for nothing in ("", None):
        with pytest.raises(UsageError, match="explain an image first"):
            kept.get(nothing)


def test_flagged_images_are_a_folder_run_reports(tmp_path, tiny_ckpt):
    from xaibatch.pipeline import RunOptions, run

    out = tmp_path / "out"
    for label, seed in (("REAL", 1), ("FAKE", 2), ("REAL", 3)):
        save_flag(out, label, png(seed), "PNG")
    result = run(
        RunOptions(
            input_dir=out / "flagged",
            out_dir=tmp_path / "audit",
            methods=["gradcam"],
            checkpoint=tiny_ckpt,
            handle_signals=False,
        ),
        log=lambda s: None,
    )
    assert (result.seen, result.computed, result.failed) == (3, 3, [])
    assert result.accuracy is not None  # labeled: the folder names are the classes


# ------------------------------------------------------------------------------------------- uploads and maps


def test_broken_uploads_are_one_line(tmp_path):
    from xaibatch.serve.core import decode_upload, read_upload

    cases = {
        "empty": (b"", "empty file"),
        "text": (b"hello, this is not an image\n", "not an image"),
        "truncated": (truncated_png(), "truncated"),
        "bomb": (bomb_png(), "decompression bomb"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(DecodeError) as e:
            decode_upload(data)
        assert reason in str(e.value) and "\n" not in str(e.value), name
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DecodeError) as e:
            read_upload(p)
        assert reason in str(e.value), name
    big = tmp_path / "big.png"
    big.write_bytes(png(1) + b"\0" * 2000)
    with pytest.raises(DecodeError, match="upload limit"):
        read_upload(big, max_bytes=1000)
    (tmp_path / "ok.png").write_bytes(png(3))
    u = read_upload(tmp_path / "ok.png")
    assert u.image.size == (32, 32) and u.image_format == "PNG"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from xaibatch.serve.core import ServeOptions, Service

    root = tmp_path_factory.mktemp("serve")
    ckpt = make_checkpoint(root / "tiny.pt")
    return Service(
        ServeOptions(
            out=root / "out",
            methods=METHODS,
            checkpoint=ckpt,
            method_options={"lime": {"samples": SAMPLES}},
        )
    )


def test_maps_equal_explain_bit_for_bit(service):
    import xaibatch
    from xaibatch.serve.core import decode_upload

    uploads = [decode_upload(png(s)) for s in (11, 12)]
    for u in uploads:
        r = service.explain([u], METHODS, SAMPLES)[0]
        ex = xaibatch.explain(
            service.opts.checkpoint, [u.image], METHODS, method_options={"lime": {"samples": SAMPLES}}
        )
        assert [m.method for m in r.maps] == METHODS
        for m in r.maps:
            assert m.map.dtype == np.float32 and m.map.shape == (32, 32)
            assert np.array_equal(m.map, ex.maps[m.method][0].numpy()), m.method
        assert np.array_equal(np.asarray(r.probs, dtype=np.float32), ex.probs[0].numpy())
        assert r.pred == int(ex.preds[0])
    service.explain(uploads[:1], ["lime"], SAMPLES + 10)  # the slider: another LIME object, made once
    assert service.method("lime", SAMPLES + 10) is service.method("lime", SAMPLES + 10)
    assert service.method("lime", SAMPLES + 10) is not service.method("lime", SAMPLES)


def test_the_lime_slider_starts_at_the_samples_lime_runs_at(service, tmp_path):
    """The slider's start is LIME's sample count, given once (method_options, else LIME's default). ServeOptions
    had a second field for it, lime_samples: given alone (lime_samples=40), the slider started at 40 while LIME at
    that setting ran its default 1000 samples."""
    import dataclasses

    from xaibatch.defaults import LIME_DEFAULTS
    from xaibatch.serve.core import ServeOptions, Service

    assert service.default_lime_samples() == SAMPLES == service.method("lime", SAMPLES).samples
    plain = Service(ServeOptions(out=tmp_path / "out", methods=["lime"], checkpoint=service.opts.checkpoint))
    start = plain.default_lime_samples()
    assert start == LIME_DEFAULTS["samples"] == plain.method("lime", start).samples
    assert [f.name for f in dataclasses.fields(ServeOptions) if "samples" in f.name] == []


def test_a_map_zero_everywhere_has_no_scale_as_in_the_report(service):
    """A map with no colour (LIME's when no superpixel moves the probability, Grad-CAM's for a class the model
    rules out) prints no colour-bar numbers but the report's "zero everywhere" words; serve used to label an
    all-zero LIME map -1, 0, +1 and an all-zero Grad-CAM map 0, 0.5, >= 1. A map with colour keeps the report's
    scale (overlay.display_scale, as the run stores it)."""
    from xaibatch.overlay import display_scale

    display = np.full((32, 32, 3), 128, np.uint8)
    for name, words in [("lime", "hiding any one superpixel"), ("gradcam", "Grad-CAM finds no evidence")]:
        m = service.method(name, SAMPLES if name == "lime" else None)
        pic = service._picture(m, np.zeros((32, 32), np.float32), display, "FAKE", None)
        assert pic.ticks == [] and pic.note.startswith("zero everywhere") and words in pic.note, (name, pic.ticks)
    ramp = np.linspace(-0.25, 0.5, 32 * 32, dtype=np.float32).reshape(32, 32)
    pic = service._picture(service.method("lime", SAMPLES), ramp, display, "FAKE", None)
    assert display_scale(ramp, True) == 0.5 and pic.ticks == ["−0.5", "0", "+0.5"]


def test_serve_and_explain_draw_a_runs_overlay_pixels(service, tmp_path):
    """A map drawn for display is drawn once (overlay.draw_batch): serve's overlay of an image is the PNG a run
    wrote for it, byte for byte (same pixels, same encoder), and explain()'s map drawn over the run's display copy
    too; at every size, also where the map shrinks on one side and grows on the other; and explain()'s own overlay
    at the image's size, drawn over its display copy as a run's is. Serve drew with PIL
    (display_map: BOX then BILINEAR or NEAREST, PNG by PIL): at 20x50 px its LIME overlay differed from the
    report's by up to 140 of 255 (segment edges a pixel off), Grad-CAM's by 16, and no PNG's bytes were equal.
    Batches of one: a batch's float sums may move a map by 1e-7, and a pixel by one step."""
    import xaibatch
    from xaibatch.manifest import Manifest
    from xaibatch.overlay import MAP_PNG_STRATEGY, draw, encode_png
    from xaibatch.pipeline import RunOptions, run
    from xaibatch.serve.core import read_upload
    from xaibatch.tools import synth

    inp = tmp_path / "in" / "FAKE"
    inp.mkdir(parents=True)
    sizes = [(50, 20), (12, 12), (700, 60), (9, 300), (32, 32)]  # (width, height); the model sees 32 px
    paths = []
    for i, (w, h) in enumerate(sizes):
        im = Image.fromarray(synth.smooth(i, 64, seed=4)).resize((w, h), Image.BILINEAR)
        paths.append(inp / f"img{i}.png")
        im.save(paths[-1])
    options = {"lime": {"samples": SAMPLES}}
    out = tmp_path / "out"
    opts = RunOptions(
        input_dir=tmp_path / "in", out_dir=out, methods=METHODS, method_options=options,
        checkpoint=service.opts.checkpoint, batch_size=1, workers=0, handle_signals=False,
    )  # fmt: skip
    run(opts, log=lambda s: None)
    manifest = Manifest(out / layout.MANIFEST)
    try:
        maps, images = manifest.maps(), manifest.images()
    finally:
        manifest.close()
    ex = xaibatch.explain(service.opts.checkpoint, paths, METHODS, method_options=options, batch_size=1)
    for i, p in enumerate(paths):
        rel = f"FAKE/{p.name}"
        served = {m.method: m for m in service.explain([read_upload(p)], METHODS, SAMPLES)[0].maps}
        display = np.asarray(Image.open(out / layout.image_png(images[rel].stem)))
        for method in METHODS:
            written = (out / maps[(rel, method)].png).read_bytes()
            assert served[method].overlay_png == written, (sizes[i], method)
            over, _ = draw(display, ex.maps[method][i].numpy(), served[method].signed)
            assert encode_png(over, MAP_PNG_STRATEGY) == written, (sizes[i], method)
            assert np.array_equal(np.asarray(ex.overlay(i, method, size="given")), over), (sizes[i], method)


def test_requests_that_arrive_together_are_one_batch_per_setting(service, monkeypatch):
    from xaibatch.serve.core import Request, decode_upload, explain_requests

    calls = []
    real = service.explain
    monkeypatch.setattr(
        service, "explain", lambda ups, ms, n, f: calls.append((len(ups), tuple(ms), n, f)) or real(ups, ms, n, f)
    )
    u1, u2, u3 = (decode_upload(png(s)) for s in (21, 22, 23))
    out = explain_requests(
        service,
        [
            Request(u1, ("gradcam",), SAMPLES),
            Request(None, ()),
            Request(u2, ("gradcam",), 99),
            Request(u3, ("gradcam", "lime"), SAMPLES),
            Request(u1, (), SAMPLES),
            Request(u2, ("gradcam",), 99, True),
        ],
    )
    assert calls == [
        (2, ("gradcam",), None, False),
        (1, ("gradcam", "lime"), SAMPLES, False),
        (1, (), None, False),
        (1, ("gradcam",), None, True),
    ]
    assert out[1] == "" and out[4] == "choose at least one method"
    assert [m.method for m in out[3].maps] == ["gradcam", "lime"]
    assert out[0].maps[0].faith is None
    faith = out[5].maps[0].faith  # on request: the run's deletion/insertion scores of that map
    assert 0 <= faith["deletion"] <= 1 and len(faith["insertion_curve"]) == 21
    alone = real([u2], ["gradcam"], None)[0]
    assert np.array_equal(out[5].maps[0].map, alone.maps[0].map)  # the curves never change the map
    assert np.allclose(out[2].maps[0].map, alone.maps[0].map, atol=1e-5)


def test_report_images_are_found_by_content_and_read_from_any_cwd(tmp_path, monkeypatch, tiny_ckpt):
    from xaibatch.pipeline import RunOptions, run
    from xaibatch.serve.core import decode_upload
    from xaibatch.serve.sources import ReportImages

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a b.png").write_bytes(png(1))
    monkeypatch.chdir(tmp_path)
    run(
        RunOptions(
            input_dir=Path("in"), out_dir=Path("out"), methods=["gradcam"], checkpoint=tiny_ckpt, handle_signals=False
        ),
        log=lambda s: None,
    )
    monkeypatch.chdir(tmp_path / "in")  # the app may start anywhere
    report = ReportImages.load(tmp_path / "out")
    u = report.read("a b.png")
    assert u.data == png(1)
    assert report.detail_url(u.sha256) == f"/report/detail/page-1.html#{layout.card_id('a b.png')}"
    assert report.detail_url(decode_upload(png(2)).sha256) is None
    with pytest.raises(XaibatchError, match="not in the report"):
        report.read("../in/a b.png")
    assert ReportImages.load(tmp_path / "nothing").rows == {}


def test_a_read_only_report_is_read_and_left_as_it_was(tmp_path, tiny_ckpt):
    """An output folder opened read-only (chmod -R a-w, a read-only mount, an archive unpacked so): serve read none
    of its report ("permission denied writing OUT/xaibatch.sqlite: make OUT writable and run again"), as SQLite
    wants the manifest's -shm file made; in a writable folder reading it leaves no -wal or -shm file behind."""
    import subprocess

    from helpers import ENV, REPO, quiet, read_only_tree, run_opts, without_file_permission_override, write_images
    from xaibatch.pipeline import run
    from xaibatch.serve.sources import ReportImages

    prefix = without_file_permission_override()
    write_images(tmp_path / "in" / "FAKE", 2, seed=1)
    write_images(tmp_path / "in" / "REAL", 2, seed=2)
    out = tmp_path / "out"
    run(run_opts(tmp_path / "in", out, tiny_ckpt), log=quiet)
    before = sorted(p.name for p in out.iterdir())
    assert len(ReportImages.load(out).rows) == 4 and sorted(p.name for p in out.iterdir()) == before
    probe = "import sys; from xaibatch.serve.sources import ReportImages as R; r = R.load(sys.argv[1]); "
    probe += "print(r.problem, sorted(r.rows))"
    with read_only_tree(out):
        p = subprocess.run(
            [*prefix, sys.executable, "-c", probe, str(out)], cwd=REPO, env=ENV, capture_output=True, text=True
        )
        assert sorted(p.name for p in out.iterdir()) == before
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "None ['FAKE/img_000.png', 'FAKE/img_001.png', 'REAL/img_000.png', 'REAL/img_001.png']"


def test_reading_a_report_makes_no_file_in_it_even_for_a_moment(tmp_path, tiny_ckpt):
    """serve opened the manifest as a run does, with writes refused: SQLite made its -wal and -shm files in OUT and
    removed them on close, which moved the folder's mtime (a backup or sync tool saw a change) and raced a run
    starting there. It reads one committed state now, as open_results does (manifest.read_snapshot)."""
    from helpers import quiet, run_opts, write_images
    from xaibatch.pipeline import run
    from xaibatch.serve.sources import ReportImages

    write_images(tmp_path / "in" / "FAKE", 2, seed=1)
    out = tmp_path / "out"
    run(run_opts(tmp_path / "in", out, tiny_ckpt), log=quiet)
    st = out.stat()
    before = (sorted(p.name for p in out.iterdir()), st.st_mtime_ns, st.st_ctime_ns)
    assert sorted(ReportImages.load(out).rows) == ["FAKE/img_000.png", "FAKE/img_001.png"]
    st = out.stat()
    assert (sorted(p.name for p in out.iterdir()), st.st_mtime_ns, st.st_ctime_ns) == before


def test_a_report_without_its_input_folder_offers_none_of_its_images(tmp_path, tiny_ckpt):
    """The output folder copied to another machine (or its input folder moved): the page listed every report image
    to pick, and picking one said "cannot read: No such file or directory"."""
    from helpers import quiet, run_opts, write_images
    from xaibatch.pipeline import run
    from xaibatch.serve.sources import ReportImages

    write_images(tmp_path / "in" / "FAKE", 2, seed=1)
    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=quiet)
    assert ReportImages.load(tmp_path / "out").pickable() == ["FAKE/img_000.png", "FAKE/img_001.png"]
    (tmp_path / "in").rename(tmp_path / "moved")
    report = ReportImages.load(tmp_path / "out")
    assert report.pickable() == [] and len(report.rows) == 2  # an upload of one still finds its detail page
    with pytest.raises(XaibatchError, match=r"input folder .*/in is not there any more .*: upload 'FAKE/img_000.png'"):
        report.read("FAKE/img_000.png")


def test_a_report_image_is_read_only_with_the_bytes_its_run_read(tmp_path, tiny_ckpt):
    """The manifest names the folder the report's images are read from: in a shared --out another user's cron
    job writes it, and could point it at a folder of the server's user (any image that user can read, shown in the
    page). A file whose bytes are not the run's is refused; so is an image changed since the run."""
    from xaibatch.manifest import Manifest
    from xaibatch.pipeline import RunOptions, run
    from xaibatch.serve.sources import ReportImages

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png(1))
    run(
        RunOptions(input_dir=tmp_path / "in", out_dir=tmp_path / "out", methods=["gradcam"], checkpoint=tiny_ckpt),
        log=lambda s: None,
    )
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "a.png").write_bytes(png(2))  # the server's user's own image
    m = Manifest(tmp_path / "out" / layout.MANIFEST)
    m.set_meta("input_dir", str(tmp_path / "private"))
    m.close()
    with pytest.raises(XaibatchError, match="changed since the report's run"):
        ReportImages.load(tmp_path / "out").read("a.png")
    (tmp_path / "private" / "a.png").write_bytes(png(1))  # the run's bytes: read as before
    assert ReportImages.load(tmp_path / "out").read("a.png").data == png(1)


def test_without_gradio_serve_says_how_to_install(monkeypatch):
    from click.testing import CliRunner

    from xaibatch.cli import cli

    monkeypatch.setitem(sys.modules, "gradio", None)
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        'Error: xaibatch serve needs Gradio: pip install "xaibatch[serve]" (from a checkout: pip install -e ".[serve]")'
    )


@pytest.mark.parametrize(
    "host, said",
    [
        ("192.0.2.1", "Error: --host 192.0.2.1: not an address of this machine"),
        ("::1", "Error: --host ::1: Gradio cannot serve on an IPv6 address; use 127.0.0.1 or an IPv4 address"),
    ],
)
def test_a_host_it_cannot_listen_on_is_one_line_before_the_model_loads(monkeypatch, tmp_path, host, said):
    """An address not of this machine loaded the model first (seconds), then printed uvicorn's own error line and
    "cannot listen on ... (in use?); pick another with --port"; an IPv6 address (::1, which the warning treated as
    local) ended in "internal error: InvalidURL" (exit 3) once Gradio's server ran."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from click.testing import CliRunner

    from xaibatch.cli import cli
    from xaibatch.serve import core

    monkeypatch.setattr(core.Service, "__init__", lambda *a, **k: pytest.fail("the model loaded"))
    r = CliRunner().invoke(cli, ["serve", "--host", host, "--port", str(_free_port()), "--out", str(tmp_path)])
    assert (r.exit_code, r.output) == (2, said + "\n")


def test_localhost_resolving_to_ipv6_first_is_still_listened_on(monkeypatch):
    """Where localhost resolves to an IPv6 address first (IPv6 off in a container), the address check bound that
    one and refused --host localhost, which uvicorn serves over IPv4: the check asks for IPv4, as uvicorn binds."""
    import socket

    from xaibatch.serve import address

    def resolve(host, port, family=0, type=0, *rest):
        v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))
        if family == socket.AF_INET:
            return [v4]
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", port, 0, 0)), v4]  # not this machine's

    monkeypatch.setattr(address.socket, "getaddrinfo", resolve)
    address.check_listen("localhost", _free_port())  # raised "--host localhost: not an address of this machine"


def _page_of(tmp_path, methods: list[str]):
    """The page's Blocks for a service offering ``methods`` (a stand-in: no model is loaded)."""
    from types import SimpleNamespace

    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from xaibatch.serve.app import build
    from xaibatch.serve.sources import ReportImages

    model = SimpleNamespace(checkpoint="m.pt", arch="tiny", input_size=32)
    service = SimpleNamespace(
        opts=SimpleNamespace(out=tmp_path, methods=methods),
        prepared=SimpleNamespace(model=model, device="cpu"),
        names=["a", "b"],
        default_lime_samples=lambda: 100,
    )
    return build(service, ReportImages(tmp_path))


@pytest.mark.parametrize("methods, shown", [(["gradcam", "lime"], True), (["gradcam", "captum:Saliency"], False)])
def test_the_lime_slider_shows_only_when_lime_is_offered(tmp_path, methods, shown):
    page = _page_of(tmp_path, methods)
    (slider,) = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "xb-samples"]
    assert slider.visible is shown


# ------------------------------------------------------------------------------------------- the page in Chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_argv(ckpt: Path, out: Path, port: int, *extra: str) -> list[str]:
    """``xaibatch serve`` as a real process's command line."""
    return [
        sys.executable,
        "-m",
        "xaibatch",
        "serve",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--port",
        str(port),
        *extra,
    ]


def _browser():
    return chromium.start(1280, 1000)


needs_chromium = pytest.mark.skipif(not chromium.available(), reason=chromium.MISSING)


gate: list[threading.Event] = []


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app on a free port of 127.0.0.1, over a report of two images (so one upload links to its page)."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from xaibatch.pipeline import RunOptions, run
    from xaibatch.serve.app import launch
    from xaibatch.serve.core import ServeOptions, Service

    root = tmp_path_factory.mktemp("app")
    ckpt = make_checkpoint(root / "tiny.pt")
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"p{i}.png").write_bytes(png(100 + i))
    out = root / "out"
    run(
        RunOptions(input_dir=photos, out_dir=out, methods=["gradcam"], checkpoint=ckpt, handle_signals=False),
        log=lambda s: None,
    )
    service = Service(
        ServeOptions(
            out=out,
            methods=METHODS,
            checkpoint=ckpt,
            method_options={"lime": {"samples": SAMPLES}},
        )
    )
    batches = []
    real = service.explain

    def explain(ups, ms, n, f):
        batches.append(len(ups))
        if gate:  # a test holds the first batch until more requests wait in the queue
            gate.pop().wait(60)
        return real(ups, ms, n, f)

    service.explain = explain
    served = launch(service, port=_free_port(), block=False)
    assert served.url.startswith("http://127.0.0.1:")
    yield served, service, root, batches
    served.close()


@pytest.fixture(scope="module")
def driver(app):
    d = _browser()
    yield d
    d.quit()


def _open(d, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d.get(url)
    WebDriverWait(d, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#xb-upload input[type=file]"))


def _answer(d, where: str = "xb-result") -> int:
    return int(
        d.execute_script(f"const a = document.querySelector('#{where} .xb-answer'); return a ? a.dataset.answer : 0")
    )


def _upload_and_explain(d, path: Path):
    from selenium.webdriver.common.by import By

    old = _answer(d)
    for clear in d.find_elements(By.CSS_SELECTOR, "#xb-upload button[aria-label=Clear]"):  # the file before
        clear.click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#xb-upload input[type=file]"))
    d.find_element(By.CSS_SELECTOR, "#xb-upload input[type=file]").send_keys(str(path))
    _wait(d, lambda d: path.stem in d.find_element(By.ID, "xb-upload").text)  # the page splits name and suffix
    d.find_element(By.ID, "xb-explain").click()
    return _result(d, old)


def _result(d, old: int):
    """The result box once it holds an answer newer than ``old``."""
    from selenium.webdriver.common.by import By

    _wait(d, lambda d: _answer(d) > old)
    return d.find_element(By.ID, "xb-result")


def _wait(d, cond, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, timeout).until(cond)


def _images_loaded(d) -> bool:
    return d.execute_script(
        "return [...document.querySelectorAll('#xb-result img')].every(i => i.complete && i.naturalWidth > 0)"
    )


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_upload_shows_prediction_and_maps_then_flag_saves_it(app, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    served, service, root, _ = app
    _open(driver, served.url)
    driver.find_element(By.ID, "xb-flag").click()  # nothing explained yet
    _wait(driver, lambda d: _answer(d, "xb-flagged") > 0)
    assert "explain an image first" in driver.find_element(By.ID, "xb-flagged").text
    img = root / "upload.png"
    img.write_bytes(png(7))
    res = _upload_and_explain(driver, img)
    box = res.find_element(By.CSS_SELECTOR, ".xb-result")
    assert box.get_attribute("data-pred") in service.names
    methods = [f.get_attribute("data-method") for f in res.find_elements(By.CSS_SELECTOR, "figure.xb-map")]
    assert methods == ["image", *METHODS]
    assert len(res.find_elements(By.CSS_SELECTOR, ".xb-probs tr")) == len(service.names)
    assert len(res.find_elements(By.CSS_SELECTOR, "img.xb-colourbar")) == 3
    assert "%" in res.find_element(By.CSS_SELECTOR, ".xb-pred").text
    _wait(driver, _images_loaded)
    assert not res.find_elements(By.CSS_SELECTOR, "a.xb-detail")  # not in the report

    label = driver.find_element(By.CSS_SELECTOR, "#xb-label input")
    label.send_keys("my label/..")
    label.send_keys(Keys.ENTER)
    driver.find_element(By.ID, "xb-flag").click()
    _wait(driver, lambda d: "saved" in d.find_element(By.ID, "xb-flagged").text)
    saved = list((service.opts.out / "flagged").rglob("*.png"))
    assert len(saved) == 1 and saved[0].read_bytes() == img.read_bytes()
    assert saved[0].parent.name == "my label"
    assert saved[0].resolve().is_relative_to(service.opts.out.resolve())

    driver.find_element(By.CSS_SELECTOR, "#xb-curves input").click()  # the faithfulness curves, on request
    res = _upload_and_explain(driver, img)
    assert len(res.find_elements(By.CSS_SELECTOR, "svg.xb-curves")) == 3
    assert "deletion AUC" in res.text


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_a_picked_report_image_is_explained_and_linked(app, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    served, _, _, _ = app
    _open(driver, served.url)
    pick = driver.find_element(By.CSS_SELECTOR, "#xb-pick input")
    pick.click()
    pick.send_keys("report: p0")
    pick.send_keys(Keys.ENTER)
    _wait(
        driver, lambda d: d.find_element(By.CSS_SELECTOR, "#xb-pick input").get_attribute("value") == "report: p0.png"
    )
    driver.find_element(By.ID, "xb-explain").click()
    _wait(driver, lambda d: _answer(d) > 0)
    res = driver.find_element(By.ID, "xb-result")
    assert res.find_elements(By.CSS_SELECTOR, "figure.xb-map[data-method=lime]"), res.text
    assert (
        res.find_element(By.CSS_SELECTOR, "a.xb-detail")
        .get_attribute("href")
        .endswith(f"/report/detail/page-1.html#{layout.card_id('p0.png')}")
    )


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_the_last_image_chosen_is_the_one_explained(app, driver):
    """An upload and a pick replace each other: picking after an upload explains the pick, not the old file."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    served, _, root, _ = app
    _open(driver, served.url)
    img = root / "not-in-report.png"
    img.write_bytes(png(11))
    res = _upload_and_explain(driver, img)
    assert not res.find_elements(By.CSS_SELECTOR, "a.xb-detail")
    pick = driver.find_element(By.CSS_SELECTOR, "#xb-pick input")
    pick.click()
    pick.send_keys("report: p0")
    pick.send_keys(Keys.ENTER)
    _wait(driver, lambda d: img.stem not in d.find_element(By.ID, "xb-upload").text)  # the upload is let go
    old = _answer(driver)
    driver.find_element(By.ID, "xb-explain").click()
    res = _result(driver, old)
    assert res.find_element(By.CSS_SELECTOR, "a.xb-detail").get_attribute("href").endswith(layout.card_id("p0.png"))
    res = _upload_and_explain(driver, img)  # and an upload after a pick lets the pick go
    assert not res.find_elements(By.CSS_SELECTOR, "a.xb-detail")
    assert driver.find_element(By.CSS_SELECTOR, "#xb-pick input").get_attribute("value") == ""


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_on_a_phone_the_answer_scrolls_into_view(app):
    """In a narrow window the controls stack above the answer: Explain brings the answer into view."""
    served, _, root, _ = app
    d = chromium.start(375, 700)
    try:
        d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {"width": 375, "height": 700, "deviceScaleFactor": 1, "mobile": True}
        )
        _open(d, served.url)
        assert d.execute_script("return innerWidth") == 375
        res = _upload_and_explain(d, root / "photos" / "p0.png")
        _wait(d, lambda d: d.execute_script("return arguments[0].getBoundingClientRect().top", res) < 350, 10)
        assert d.execute_script("return document.documentElement.scrollWidth") <= 375  # nothing wider than the phone
    finally:
        d.quit()


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_a_tall_picture_keeps_its_colour_bars_in_view(app, driver):
    """A 100x800 photo was drawn 200x1600 px: every colour bar and its numbers sat a thousand pixels below the
    window. Its pictures now fit 200x300 px, in their own aspect, so the bars and numbers show with the maps."""
    from selenium.webdriver.common.by import By

    served, _, root, _ = app
    tall = root / "tall.png"
    Image.fromarray(synth.noise(np.random.default_rng(8), 800)[:, :100]).save(tall)
    _open(driver, served.url)
    res = _upload_and_explain(driver, tall)
    _wait(driver, _images_loaded)
    view = driver.execute_script("return innerHeight")
    rect = "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height, r.bottom]"
    figures = res.find_elements(By.CSS_SELECTOR, "figure.xb-map")
    assert len(figures) == 4
    for f in figures:
        w, h, _ = driver.execute_script(rect, f.find_element(By.CSS_SELECTOR, "img"))
        assert h <= 300 and abs(w / h - 100 / 800) < 0.02, (f.get_attribute("data-method"), w, h)
    for part in res.find_elements(By.CSS_SELECTOR, "img.xb-colourbar, .xb-ticks"):
        assert driver.execute_script(rect, part)[2] <= view, part.text


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_the_saved_flag_line_stays_in_its_column(app, driver):
    """The flagged file's long path (a sha256 name) wraps instead of running over the maps."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    served, _, root, _ = app
    _open(driver, served.url)
    _upload_and_explain(driver, root / "photos" / "p1.png")
    label = driver.find_element(By.CSS_SELECTOR, "#xb-label input")
    label.send_keys("wrapped")
    label.send_keys(Keys.ENTER)
    driver.find_element(By.ID, "xb-flag").click()
    _wait(driver, lambda d: "wrapped" in d.find_element(By.ID, "xb-flagged").text)
    note = driver.find_element(By.CSS_SELECTOR, "#xb-flagged .xb-note")
    assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", note), note.text


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_a_refused_flag_reads_as_an_error(app):
    """A flag refused (nothing explained yet in this tab) is red like a refused upload, not plain text."""
    from selenium.webdriver.common.by import By

    served, _, _, _ = app
    d = _browser()  # a fresh tab: nothing explained in it
    try:
        _open(d, served.url)
        d.find_element(By.ID, "xb-flag").click()
        _wait(d, lambda d: _answer(d, "xb-flagged") > 0)
        line = d.find_element(By.CSS_SELECTOR, "#xb-flagged .xb-error")
        assert line.value_of_css_property("color") == "rgba(176, 0, 32, 1)", line.text
    finally:
        d.quit()


def test_class_names_and_error_lines_are_text_not_markup(service):
    """The page's result and its one-line answers are autoescaped: a class name (from a user's checkpoint or
    --classes) or an error naming an uploaded file's name shows as text, never as markup the browser runs."""
    from xaibatch.serve.core import decode_upload
    from xaibatch.serve.page import line_html, result_html

    (r,) = service.explain([decode_upload(png(4))], ["gradcam"])
    names = [f"<img src=x onerror=alert({i})>" for i in range(len(service.names))]
    html = result_html(r, names, service.rule(), None)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(0)&gt;" in html
    line = line_html("cannot read <script>alert(1)</script>.png")
    assert "<script>" not in line and "&lt;script&gt;alert(1)&lt;/script&gt;" in line


def test_the_curves_say_which_is_which(service):
    """The faithfulness curves' colours are named in the visible text, not only in the SVG's aria-label."""
    import re

    from xaibatch.serve.core import decode_upload
    from xaibatch.serve.page import result_html

    (r,) = service.explain([decode_upload(png(4))], ["gradcam"], faithfulness=True)
    text = re.sub(r"<svg.*?</svg>", "", result_html(r, service.names, service.rule(), None), flags=re.S)
    assert re.search(r"deletion AUC\s+[0-9.]+ \(red curve", text) and re.search(
        r"insertion AUC\s+[0-9.]+ \(blue curve", text
    )


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_an_image_of_the_report_links_to_its_detail_page(app, driver):
    from selenium.webdriver.common.by import By

    served, service, root, _ = app
    _open(driver, served.url)
    res = _upload_and_explain(driver, root / "photos" / "p1.png")
    link = res.find_element(By.CSS_SELECTOR, "a.xb-detail")
    href = link.get_attribute("href")
    assert href.startswith(served.url.rstrip("/") + "/report/detail/page-") and href.endswith(
        "#" + layout.card_id("p1.png")
    )
    driver.get(href)
    assert "p1" in driver.page_source


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.png", b"", "empty file"),
        ("notes.png", b"just some text, not an image\n", "not an image"),
        ("cut.png", truncated_png(), "truncated"),
        ("bomb.png", bomb_png(), "decompression bomb"),
        ("huge.png", png(9, 256), "over the upload limit"),
    ],
    ids=["empty", "text", "truncated", "bomb", "huge"],
)
def test_a_broken_upload_is_one_line_and_the_server_keeps_serving(
    app, driver, tmp_path, monkeypatch, name, data, reason
):
    from selenium.webdriver.common.by import By

    from xaibatch.serve import core

    monkeypatch.setattr(core, "MAX_UPLOAD_BYTES", 100_000)  # "huge": a 256x256 noise PNG is about 197 kB
    assert len(png(9, 256)) > 100_000 > len(png(1))
    served, _, root, _ = app
    _open(driver, served.url)
    p = tmp_path / name
    p.write_bytes(data)
    res = _upload_and_explain(driver, p)
    errors = res.find_elements(By.CSS_SELECTOR, ".xb-error")
    assert len(errors) == 1 and reason in errors[0].text and "Traceback" not in driver.page_source
    res = _upload_and_explain(driver, root / "photos" / "p0.png")
    assert res.find_elements(By.CSS_SELECTOR, "figure.xb-map[data-method=gradcam]"), res.text


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_two_clients_at_once(app, driver):
    from selenium.webdriver.common.by import By

    served, service, root, batches = app
    second = _browser()
    try:
        pages = [driver, second]
        for i, d in enumerate(pages):
            _open(d, served.url)
            p = root / f"client{i}.png"
            p.write_bytes(png(200 + i))
            d.find_element(By.CSS_SELECTOR, "#xb-upload input[type=file]").send_keys(str(p))
            _wait(d, lambda d, n=p.stem: n in d.find_element(By.ID, "xb-upload").text)
        before = len(batches)
        for d in pages:
            d.find_element(By.ID, "xb-explain").click()
        preds = []
        for d in pages:
            res = _result(d, 0)
            preds.append(res.find_element(By.CSS_SELECTOR, ".xb-result").get_attribute("data-pred"))
            assert len(res.find_elements(By.CSS_SELECTOR, "figure.xb-map")) == 4
        assert all(p in service.names for p in preds)
        assert sum(batches[before:]) == 2  # both explained, in one batch or two
    finally:
        second.quit()


def _waiting(served) -> int:
    """Requests in the app's queue, not yet taken by a batch."""
    return sum(len(q.queue) for q in served.blocks._queue.event_queue_per_concurrency_id.values())


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_tabs_explained_in_one_batch_each_flag_their_own_image(app, driver):
    """Two tabs whose requests are explained in one batch each flag the image they show. (The flagged image was a
    gr.State output of the batched event, which Gradio hands to the batch's first tab only, holding the batch's
    last image: that tab saved the other tab's image under its label, and the other tab could flag nothing.)"""
    from gradio_client import Client, handle_file
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    served, service, root, batches = app
    second = _browser()
    try:
        pages, files = [driver, second], []
        for i, d in enumerate(pages):
            _open(d, served.url)
            files.append(root / f"batched{i}.png")
            files[-1].write_bytes(png(400 + i))
            d.find_element(By.CSS_SELECTOR, "#xb-upload input[type=file]").send_keys(str(files[-1]))
            _wait(d, lambda d, n=files[-1].stem: n in d.find_element(By.ID, "xb-upload").text)
        before = len(batches)
        release = threading.Event()
        gate.append(release)
        try:  # a third request holds the model while both tabs' requests queue up behind it
            blocker = Client(served.url, verbose=False).submit(
                handle_file(str(root / "photos" / "p0.png")), None, ["gradcam"], SAMPLES, False, api_name="/explain"
            )
            _until(lambda: len(batches) > before)
            for d in pages:
                d.find_element(By.ID, "xb-explain").click()
            _until(lambda: _waiting(served) == 2)
        finally:
            release.set()
            gate.clear()
        blocker.result(timeout=120)
        for d in pages:
            _result(d, 0)
        assert batches[before:] == [1, 2]  # the two tabs: one batch
        for i, d in enumerate(pages):
            label = d.find_element(By.CSS_SELECTOR, "#xb-label input")
            label.send_keys(f"tab{i}")
            label.send_keys(Keys.ENTER)
            d.find_element(By.ID, "xb-flag").click()
            _wait(d, lambda d: _answer(d, "xb-flagged") > 0)
            assert "saved" in d.find_element(By.ID, "xb-flagged").text, i
        for i, f in enumerate(files):
            (saved,) = (service.opts.out / "flagged" / f"tab{i}").iterdir()
            assert saved.read_bytes() == f.read_bytes(), i
    finally:
        second.quit()


@pytest.mark.slow
@pytest.mark.parametrize(
    "host, signame",
    [("127.0.0.1", "SIGINT"), ("127.0.0.2", "SIGTERM"), ("127.0.0.1", "SIGHUP")],  # .2: another address, this machine
)
def test_the_command_serves_until_stopped(tmp_path, host, signame):
    """`xaibatch serve` loads the model, prints its URL, answers on it, and a Ctrl-C, SIGTERM (systemd's stop) or
    SIGHUP (its terminal closed) ends it with exit 0 and one line, nothing on stdout (Gradio's own message went
    there); any host but the loopback is named in a warning that the app has no login."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    import signal
    import subprocess
    import urllib.request

    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen(
        _serve_argv(ckpt, tmp_path / "out", port, "--host", host),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        url = f"http://{host}:{port}/"
        assert any(f":{port}/ (Ctrl-C stops)" in x for x in lines), lines
        assert ("no login" in "".join(lines)) == (host != "127.0.0.1")
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200
        p.send_signal(getattr(signal, signame))
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out == ""
        assert "Traceback" not in err
        said = "stopped" if signame == "SIGINT" else f"stopped by {signame}"
        assert err.strip().splitlines()[-1] == f"xaibatch serve: {said}", err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("signame, gap", [("SIGINT", 0.05), ("SIGTERM", 0.0)])
def test_a_second_stop_signal_is_the_same_stop(tmp_path, signame, gap):
    """A second Ctrl-C, or GNU timeout's signal to the process then to its group, ended the serve with "Error:
    interrupted" and exit 5 instead of "stopped" and exit 0 (the second signal interrupted the close)."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    import signal
    import subprocess

    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen(
        _serve_argv(ckpt, tmp_path / "out", _free_port()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while "Ctrl-C stops" not in p.stderr.readline():
            assert time.time() < deadline and p.poll() is None
        for _ in range(2):
            p.send_signal(getattr(signal, signame))
            time.sleep(gap)
        out, err = p.communicate(timeout=60)
        said = "stopped" if signame == "SIGINT" else f"stopped by {signame}"
        assert (p.returncode, out, err) == (0, "", f"xaibatch serve: {said}\n")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_requests_that_wait_together_are_one_batch_in_the_app(app):
    """While a batch is computed, requests queue up; the next batch takes them all (Gradio's batch=True)."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    served, service, root, batches = app
    release = threading.Event()
    gate.append(release)
    files = []
    for i in range(4):
        files.append(root / f"queued{i}.png")
        files[-1].write_bytes(png(300 + i))
    before = len(batches)
    clients = [Client(served.url, verbose=False) for _ in files]
    try:
        jobs = [clients[0].submit(handle_file(str(files[0])), None, ["gradcam"], SAMPLES, False, api_name="/explain")]
        _until(lambda: len(batches) > before)  # the first request is being computed (held by the gate)
        jobs += [
            c.submit(handle_file(str(f)), None, ["gradcam"], SAMPLES, False, api_name="/explain")
            for c, f in zip(clients[1:], files[1:], strict=True)
        ]
        _until(lambda: all(j.status().code == Status.IN_QUEUE for j in jobs[1:]))
    finally:
        release.set()
        gate.clear()
    answers = [j.result(timeout=120) for j in jobs]
    assert batches[before:] == [1, 3]
    assert all('class="xb-result"' in str(a) for a in answers)


def _until(cond, timeout: float = 60) -> None:
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_uploads_are_removed_when_the_app_stops(service, tmp_path):
    """Gradio copies every upload into its temporary folder; they stayed there, the server running or not (1,572
    files after an afternoon's audit). They are removed when the app stops, and after a day while it serves."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from gradio.utils import get_upload_folder
    from gradio_client import Client, handle_file

    from xaibatch.serve.app import launch

    image = tmp_path / "mine.png"
    image.write_bytes(png(500))
    served = launch(service, port=_free_port(), block=False)
    try:
        html, _ = Client(served.url, verbose=False).predict(
            handle_file(str(image)), None, ["gradcam"], SAMPLES, False, api_name="/explain"
        )
        assert 'class="xb-result"' in html
        copies = [f for f in Path(get_upload_folder()).rglob("*.png") if f.read_bytes() == image.read_bytes()]
        assert copies
    finally:
        served.close()
    assert not [f for f in copies if f.exists()]


def test_an_upload_removed_from_the_server_asks_for_it_again(tmp_path):
    """A tab left open past a day explains an upload Gradio has removed: one line that says what to do."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from xaibatch.serve.app import _source
    from xaibatch.serve.sources import ReportImages

    with pytest.raises(UsageError, match="no longer on the server: upload the image again"):
        _source({}, ReportImages(tmp_path), str(tmp_path / "gone.png"), None)


@pytest.mark.slow
def test_serving_random_weights_warns_as_a_run_does(tmp_path):
    """`xaibatch serve --model timm:NAME` without --checkpoint serves an untrained model: the terminal says so, in
    the run's words (the page's header says "(random init)")."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from xaibatch.serve.app import launch
    from xaibatch.serve.core import ServeOptions, Service

    service = Service(ServeOptions(out=tmp_path / "out", methods=["gradcam"], model="timm:test_resnet", image_size=32))
    lines: list[str] = []
    launch(service, port=_free_port(), block=False, log=lines.append).close()
    assert lines == [
        "xaibatch: warning: --model timm:test_resnet has random weights (no --checkpoint): its maps explain "
        "an untrained model; give the trained weights with --checkpoint"
    ]


@pytest.mark.slow
def test_a_port_in_use_is_one_line(tmp_path):
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    import subprocess

    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            _serve_argv(ckpt, tmp_path / "out", port),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    assert r.returncode == 2
    assert r.stderr == f"Error: cannot listen on 127.0.0.1:{port} (in use?); pick another with --port\n"


def _http(url: str, path: str, method: str = "GET", headers: dict | None = None, body: bytes = b"") -> int:
    """The status of one request, with any Host and Origin headers (urllib would set its own Host)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        c.request(method, path, body=body or None, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def test_the_report_route_serves_the_report_not_the_rest_of_out(app):
    """/report/ served all of OUT: the manifest (the input folder's path, every run's command line), the lock, and
    every image colleagues flagged; now the report's pages and pictures only."""
    served, _, root, _ = app
    out = root / "out"
    flagged = out / layout.FLAGGED / "cat" / "f.png"
    flagged.parent.mkdir(parents=True, exist_ok=True)
    flagged.write_bytes(png(1))
    page = next((out / "gallery").glob("page-*.html")).name
    for rel in (layout.INDEX, layout.CSV, f"gallery/{page}"):
        assert _http(served.url, f"/report/{rel}") == 200, rel
    for rel in (layout.MANIFEST, layout.LOCK, layout.REPORT_STATE, "flagged/cat/f.png", "%2e%2e/out/xaibatch.sqlite"):
        assert (out / rel).exists() or "%2e" in rel
        assert _http(served.url, f"/report/{rel}") == 404, rel


def test_another_host_name_or_another_sites_post_is_refused(app):
    """DNS rebinding (a web page whose name resolves to 127.0.0.1) read the report and flagged images; another
    site's page could upload files (a form post needs no CORS preflight). Both are 403 now; the app's own page,
    a tunnel's localhost:PORT and API clients that send no Origin work as before."""
    served, _, root, _ = app
    port = served.url.rstrip("/").rsplit(":", 1)[1]
    own = f"127.0.0.1:{port}"
    for path in ("/", "/report/index.html", "/gradio_api/info"):
        assert _http(served.url, path, headers={"Host": f"attacker.example:{port}"}) == 403, path
        assert _http(served.url, path, headers={"Host": "localhost:9000"}) == 200, path
        assert _http(served.url, path) == 200, path
    form = {"Content-Type": "multipart/form-data; boundary=b"}
    body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n' + png(2) + b"\r\n--b--\r\n"
    evil = {**form, "Origin": "http://evil.example"}
    assert _http(served.url, "/gradio_api/upload", "POST", evil, body) == 403
    assert _http(served.url, "/gradio_api/upload", "POST", {**form, "Origin": "null"}, body) == 403
    rebound = {**form, "Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"}
    assert _http(served.url, "/gradio_api/upload", "POST", rebound, body) == 403
    assert _http(served.url, "/gradio_api/upload", "POST", {**form, "Origin": f"http://{own}"}, body) == 200
    assert _http(served.url, "/gradio_api/upload", "POST", form, body) == 200


def test_on_another_address_any_host_name_works_but_not_another_sites_post():
    from xaibatch.serve.guard import RequestGuard

    g = RequestGuard(None, "0.0.0.0")  # its names are not known: a Host is not checked
    assert g.refusal("GET", {b"host": b"gpu-box.example:7860"}) is None
    assert g.refusal("POST", {b"host": b"gpu-box:7860", b"origin": b"http://gpu-box:7860"}) is None
    assert g.refusal("POST", {b"host": b"gpu-box:7860", b"origin": b"http://evil.example"}) is not None
    local = RequestGuard(None, "127.0.0.1")
    assert local.refusal("GET", {b"host": b"[::1]:7860"}) is None
    assert local.refusal("GET", {b"host": b"127.0.0.1.evil.example"}) is not None
    assert local.refusal("GET", {}) is not None  # no Host at all (HTTP/1.0): not a browser page of this app
    proxied = RequestGuard(None, "127.0.0.1", ("xai.example.com", "Other.Example:8443"))  # --allow-host
    assert proxied.refusal("GET", {b"host": b"xai.example.com"}) is None
    assert proxied.refusal("GET", {b"host": b"other.example"}) is None
    assert proxied.refusal("POST", {b"host": b"xai.example.com", b"origin": b"https://xai.example.com"}) is None
    assert proxied.refusal("GET", {b"host": b"attacker.example"}) is not None
    assert proxied.refusal("POST", {b"host": b"xai.example.com", b"origin": b"https://xai.example.com:8443"}) is None
    assert proxied.refusal("POST", {b"host": b"xai.example.com", b"origin": b"https://evil.example"}) is not None


def test_class_names_in_the_header_are_text_not_markdown(tmp_path):
    """The header was a gr.Markdown: a class named ``![t](http://host/t.png)`` became a picture fetched from that
    host, ``[x](url)`` a link, and ``<script>...</script>`` vanished. Now escaped HTML, each name in a <bdi>."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from html.parser import HTMLParser

    from xaibatch.serve.app import build
    from xaibatch.serve.core import ServeOptions, Service
    from xaibatch.serve.sources import ReportImages

    names = [
        "</script><script>alert(1)</script>",
        "![t](http://127.0.0.1:1/t.png) [x](javascript:alert(2))",
        "a\u202eb",
    ]
    ckpt = make_checkpoint(tmp_path / "h.pt", classes=names)
    service = Service(ServeOptions(out=tmp_path / "out", methods=["gradcam"], checkpoint=ckpt))
    config = build(service, ReportImages(tmp_path / "out")).config
    (header,) = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "xb-status"]
    assert header["type"] == "html"

    class Page(HTMLParser):
        tags: list[str] = []
        bdi: list[str] = []
        inside = False

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.inside = tag == "bdi"

        def handle_endtag(self, tag):
            self.inside = False

        def handle_data(self, data):
            if self.inside:
                self.bdi.append(data)

    page = Page()
    page.feed(header["props"]["value"])
    assert set(page.tags) <= {"h2", "p", "b", "bdi"}
    assert all(n in page.bdi for n in names)


def test_uploads_go_to_a_folder_of_the_users_own_not_the_shared_tmp_gradio(tmp_path):
    """Gradio's default /tmp/gradio is one folder for every user of a shared machine: each upload a world-readable
    file there, and a folder another user made first could hold links. Without $GRADIO_TEMP_DIR the app now uses
    <tmp>/xaibatch-serve-<uid>, mode 0700."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    code = "import xaibatch.serve.app, gradio.utils as u; print(u.get_upload_folder())"
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / f"xaibatch-serve-{os.getuid()}")
    from xaibatch.serve import uploads

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GRADIO_TEMP_DIR", raising=False)
        mp.setattr(uploads.tempfile, "gettempdir", lambda: str(tmp_path))
        folder = uploads.check_private_uploads()
    assert folder == tmp_path / f"xaibatch-serve-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_no_temporary_folder_for_the_uploads_says_which_variable_to_set(monkeypatch):
    """docker run --read-only without TMPDIR: serve ended with Python's "No usable temporary directory found in
    [...]", which names no way out; now the line names GRADIO_TEMP_DIR and TMPDIR (exit 2)."""
    from xaibatch.errors import ExitCode
    from xaibatch.serve import uploads

    def none():
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setattr(uploads.tempfile, "gettempdir", none)
    with pytest.raises(UsageError, match="set GRADIO_TEMP_DIR or TMPDIR to a writable folder") as e:
        uploads.check_private_uploads()
    assert e.value.exit_code == ExitCode.USAGE
    assert "GRADIO_TEMP_DIR" not in os.environ


def test_a_planted_uploads_folder_is_refused(tmp_path, monkeypatch):
    from xaibatch.serve import uploads

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setattr(uploads.tempfile, "gettempdir", lambda: str(tmp_path))
    ours = tmp_path / f"xaibatch-serve-{os.getuid()}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ours.symlink_to(elsewhere)
    with pytest.raises(UsageError, match="a link or not a folder"):
        uploads.check_private_uploads()
    ours.unlink()
    ours.mkdir(mode=0o777)
    ours.chmod(0o777)
    assert uploads.check_private_uploads() == ours
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700


def test_the_report_is_followed_as_runs_change_it(tmp_path, monkeypatch, tiny_ckpt):
    """serve next to a cron job running into the same OUT read the report once, at start: started before the first
    run it never offered the report's images nor served its pages; a run that moved an image to another gallery
    page left its "in the report" link on the old page, whose viewer then showed that page's first image, another
    one; an image removed since was offered still and said "cannot read: No such file or directory"."""
    pytest.importorskip("gradio", reason='needs the serve extra: pip install "xaibatch[serve]"')
    from helpers import quiet, run_opts, write_images
    from xaibatch.pipeline import run
    from xaibatch.report import model
    from xaibatch.serve.app import launch
    from xaibatch.serve.core import ServeOptions, Service, decode_upload

    monkeypatch.setattr(model, "PAGE_SIZE", 2)  # a gallery page per 2 images: a few new images move the others
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "REAL").mkdir(parents=True)
    (inp / "REAL" / "x.png").write_bytes(png(1))
    service = Service(ServeOptions(out=out, methods=["gradcam"], checkpoint=tiny_ckpt))
    served = launch(service, port=_free_port(), block=False)
    try:
        handlers = served.blocks.fns  # the page's events: the one run at page load gives the pick list
        (load,) = [f for f in handlers.values() if getattr(f, "name", "") == "picks_now"]
        assert _http(served.url, "/report/index.html") == 404
        run(run_opts(inp, out, tiny_ckpt), log=quiet)  # the cron job's first run, the app already up
        assert _http(served.url, "/report/index.html") == 200
        assert "report: REAL/x.png" in load.fn().choices[-1]
        report = load.fn.__self__.report
        sha = decode_upload(png(1)).sha256
        assert report.detail_url(sha) == f"/report/detail/page-1.html#{layout.card_id('REAL/x.png')}"

        write_images(inp / "FAKE", 4, seed=3)  # all called REAL by the tiny model: the gallery shows them first
        (inp / "REAL" / "gone.png").write_bytes(png(2))
        run(run_opts(inp, out, tiny_ckpt), log=quiet)
        cid = layout.card_id("REAL/x.png")
        (now,) = [p.name[5:-3] for p in (out / "detail").glob("page-*.js") if cid in p.read_text()]
        assert now != "1" and report.detail_url(sha) == f"/report/detail/page-{now}.html#{cid}"
        assert "report: REAL/gone.png" in [c[0] for c in load.fn().choices]
        (inp / "REAL" / "gone.png").unlink()
        with pytest.raises(XaibatchError, match=r"'REAL/gone.png' is no longer in the report's input folder .*: pick"):
            report.read("REAL/gone.png")
        run(run_opts(inp, out, tiny_ckpt), log=quiet)
        assert "report: REAL/gone.png" not in [c[0] for c in load.fn().choices]
        with pytest.raises(XaibatchError, match=r"'REAL/gone.png' is not in the report .* reload the page"):
            report.read("REAL/gone.png")
    finally:
        served.close()


def test_a_report_read_again_while_an_image_is_read_from_it_changes_nothing_of_that_read(
    tmp_path, monkeypatch, tiny_ckpt
):
    """The page's load (queue=False: a thread of its own) reads the report again when a run changed it, while a
    request reads one of its images in the queue's thread: that read looked the image up in the rows twice, and a
    run that removed it in between made the second look-up a KeyError, "internal error", for an image the first
    had found. The read is of the rows it began with."""
    from helpers import quiet, run_opts
    from xaibatch.pipeline import run
    from xaibatch.serve import sources

    (tmp_path / "in" / "REAL").mkdir(parents=True)
    (tmp_path / "in" / "REAL" / "x.png").write_bytes(png(1))
    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=quiet)
    report = sources.ReportImages.load(tmp_path / "out")
    real = sources.read_upload

    def meanwhile(path, *a, **k):
        report.rows, report.by_sha = {}, {}  # as refresh() swaps them in, in the page's thread
        return real(path, *a, **k)

    monkeypatch.setattr(sources, "read_upload", meanwhile)
    assert report.read("REAL/x.png").data == png(1)
