"""Device decoding of JPEGs (decode.py) against the PIL path, run on the CPU: same code, another device.

Real photos (skimage's) encoded to JPEG in several ways go through both loaders; the device path must give
the PIL path's model inputs to within one grey level, the same predictions, sizes, hashes and failure
records, and leave every JPEG it should not decode (CMYK, progressive, truncated, ...) to PIL.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skd

import badfiles
from xaibatch import decode
from xaibatch.data import full_size, jpeg_info, load_image, read_for_device
from xaibatch.dataset import ImageDataset, LoadedBatch, collate
from xaibatch.decode import device_decode, finish_batch, orient
from xaibatch.preprocess import Preprocess
from xaibatch.errors import DecodeError, UsageError
from xaibatch.scan import scan

CPU = torch.device("cpu")


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def bad_huffman(data: bytes) -> bytes:
    """A JPEG whose header reads fine but whose first Huffman table is bogus: no decoder takes it."""
    d = bytearray(data)
    i = d.find(b"\xff\xc4")
    d[i + 5 : i + 21] = b"\xff" * 16
    return bytes(d)


# name -> (bytes, how the device path must take it: "device" decodes it, "pil" leaves it to PIL, "fail")
def photo_files() -> dict[str, tuple[bytes, str]]:
    astronaut, coffee, chelsea = (Image.fromarray(f()) for f in (skd.astronaut, skd.coffee, skd.chelsea))
    rocket = Image.fromarray(skd.rocket())
    png = io.BytesIO()
    Image.fromarray(skd.hubble_deep_field()).resize((300, 260)).save(png, "PNG")
    return {
        "astronaut_512.jpg": (jpeg(astronaut, quality=90), "device"),
        "coffee_300x200.jpg": (jpeg(coffee.resize((300, 200)), quality=85), "device"),
        "chelsea_444.jpg": (jpeg(chelsea, quality=95, subsampling=0), "device"),
        "chelsea_422.jpg": (jpeg(chelsea, quality=75, subsampling=1), "device"),
        "rocket_1200.jpg": (jpeg(rocket.resize((1200, 855), Image.BICUBIC), quality=90), "device"),  # display shrinks
        "coffee_tiny_7x5.jpg": (jpeg(coffee.resize((7, 5))), "device"),  # the model input is upsampled
        "camera_grey.jpg": (jpeg(Image.fromarray(skd.camera()), quality=90), "device"),
        "chelsea_exif6.jpg": (jpeg(chelsea, quality=90, exif=exif(6)), "device"),
        "coffee_cmyk.jpg": (jpeg(coffee.convert("CMYK"), quality=90), "pil"),
        "astronaut_progressive.jpg": (jpeg(astronaut, quality=90, progressive=True), "pil"),
        "hubble.png": (png.getvalue(), "pil"),
        "png_named.jpg": (png.getvalue(), "pil"),
        "jpeg_named.png": (jpeg(chelsea, quality=80), "device"),
        "truncated.jpg": (jpeg(coffee, quality=90)[:20000], "fail"),
        "bad_huffman.jpg": (bad_huffman(jpeg(coffee, quality=85)), "fail"),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("photos") / "in"
    root.mkdir()
    files = photo_files()
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    return root, {name: how for name, (_, how) in files.items()}


def load(root: Path, size: int, on_device: bool, workers: int = 0, batch_size: int = 5) -> dict[str, dict]:
    """Every image of ``root`` through the loader, per path: x, display, orig_size, sha256 or the failure."""
    entries = scan(root, labeled=False).images
    ds = ImageDataset(entries, size, want_hash=[True] * len(entries), jpeg_bytes=on_device)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    out: dict[str, dict] = {}
    for b in loader:
        if on_device:
            b = finish_batch(b, CPU, size)
        assert isinstance(b, LoadedBatch)
        assert b.undecoded is None  # finished: no JPEG bytes left
        for i, reason in b.failed:
            out[entries[i].rel] = {"failed": reason}
        for j, i in enumerate(b.index):
            assert b.x.dtype == torch.uint8 and b.x.shape[1:] == (3, size, size)
            assert b.display[j].dtype == np.uint8 and b.display[j].ndim == 3
            out[entries[i].rel] = {
                "x": b.x[j],
                "display": b.display[j],
                "orig_size": tuple(b.orig_size[j]),
                "sha256": b.sha256[j],
            }
    return out


def test_header_check_routes_each_file(photos):
    root, how = photos
    for name, want in how.items():
        try:
            got = read_for_device(root / name)
        except DecodeError:
            got = "fail"
        taken = "device" if isinstance(got, tuple) else "fail" if got == "fail" else "pil"
        # bad_huffman passes the header check: the device refuses it, then PIL does
        assert taken == ("device" if name == "bad_huffman.jpg" else want), name


@pytest.mark.parametrize("size", [224, 64])
def test_device_path_matches_the_pil_path(photos, size):
    root, how = photos
    pil, dev = load(root, size, on_device=False), load(root, size, on_device=True)
    assert set(pil) == set(dev) == set(how)
    for name, want in how.items():
        a, b = pil[name], dev[name]
        if want == "fail":
            assert "failed" in a and b == a, name  # the same failure record, word for word
            continue
        assert a["orig_size"] == b["orig_size"], name
        assert a["sha256"] == b["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
        assert a["display"].shape == b["display"].shape, name
        dx = (a["x"].int() - b["x"].int()).abs()
        dd = np.abs(a["display"].astype(int) - b["display"])
        if want == "pil":  # decoded by PIL either way
            assert dx.max() == 0 and dd.max() == 0, name
        else:  # same libjpeg-turbo decode; torch's antialiased bilinear vs PIL's fixed-point BILINEAR
            assert dx.max() <= 1 and dx.float().mean() < 0.25, (name, dx.max(), dx.float().mean())
            assert dd.max() <= 1 and dd.mean() < 0.25, (name, dd.max(), dd.mean())
    assert pil["chelsea_exif6.jpg"]["orig_size"] == (451, 300)  # rotated: taller than wide


def test_overlays_use_the_display_copies_left_on_the_device(photos):
    """finish_batch keeps each device-decoded display copy on the device (display_on_device): batch_pictures
    overlays those instead of copying the host copies back up, with the same pictures."""
    from xaibatch.pipeline.pictures import batch_pictures

    root, how = photos
    entries = scan(root, labeled=False).images
    ds = ImageDataset(entries, 64, jpeg_bytes=True)
    b = finish_batch(collate([ds[i] for i in range(len(ds))]), CPU, 64)
    shown = b.display_on_device
    assert len(shown) == len(b.display) == len(b.index)
    on_device = [how[entries[i].rel] == "device" for i in b.index]
    assert any(on_device) and not all(on_device)
    for j, t in enumerate(shown):
        assert (t is not None) == on_device[j]
        if t is not None:
            assert t.shape == b.display[j].shape and np.array_equal(t.numpy(), b.display[j])
    maps = torch.rand(len(shown), 8, 8, generator=torch.Generator().manual_seed(0))
    sizes = [tuple(s) for s in b.orig_size]
    for signed in (False, True):
        got = batch_pictures(b.display, maps, signed, sizes, 0, None, shown)
        want = batch_pictures(b.display, maps, signed, sizes)
        for g, w in zip(got, want, strict=True):
            for x, y in zip(g, w, strict=True):
                assert (x is None and y is None) or np.array_equal(x, y)


def test_predictions_agree(photos):
    root, _ = photos
    size = 224
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    pre = Preprocess.for_model(model, size)
    pil, dev = load(root, size, on_device=False), load(root, size, on_device=True)
    names = sorted(n for n in pil if "x" in pil[n])

    def probs(got):
        with torch.no_grad():
            return torch.softmax(model(pre.normalize(torch.stack([got[n]["x"] for n in names]))), 1)

    p, q = probs(pil), probs(dev)
    assert torch.equal(p.argmax(1), q.argmax(1))
    assert (p - q).abs().max() < 0.01


def test_workers_give_the_same_batches(photos):
    root, _ = photos
    a, b = load(root, 64, on_device=True, workers=0), load(root, 64, on_device=True, workers=2, batch_size=3)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        if "x" in a[name]:
            assert torch.equal(a[name]["x"], b[name]["x"]) and a[name]["sha256"] == b[name]["sha256"]


def test_the_loader_pins_a_loaded_batch(photos, monkeypatch):
    """pin_memory=True (a CUDA run's DataLoader) reaches the batch's tensors, JPEG bytes included, as it did the
    dict's: torch pins a custom batch only through its pin_memory method."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[tuple] = []

    def fake_pin(t, *a, **k):  # no CUDA here: record what would be pinned
        pinned.append(tuple(t.shape))
        return t

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    root, _ = photos
    entries = scan(root, labeled=False).images
    for jpeg_bytes in (False, True):
        pinned.clear()
        b = collate([ImageDataset(entries, 32, jpeg_bytes=jpeg_bytes)[i] for i in range(len(entries))])
        assert pin_memory(b) is b
        if jpeg_bytes:
            u = b.undecoded
            assert len(pinned) == len(u.jpegs) + sum(t is not None for t in u.inputs) > len(u.jpegs) > 0
        else:
            assert pinned == [tuple(b.x.shape)]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil(tmp_path, orientation):
    im = Image.fromarray(skd.chelsea()).resize((64, 40))  # not square, not symmetric
    p = tmp_path / "o.jpg"
    p.write_bytes(jpeg(im, quality=95, exif=exif(orientation)))
    data, info = read_for_device(p)
    assert info.orientation == orientation
    img = orient(decode.decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], CPU)[0], info.orientation)
    want = np.asarray(load_image(p))
    assert info.shown_size == want.shape[:2]
    assert np.array_equal(img.permute(1, 2, 0).numpy(), want)


def test_device_refusal_falls_back_to_pil_from_the_bytes(photos, monkeypatch):
    """A JPEG the device will not decode is decoded by PIL from the bytes read, not by reopening the file;
    a batch the device refuses as a whole is retried image by image."""
    root, _ = photos
    want = load(root, 64, on_device=False)
    real = decode.decode_jpegs
    calls = []

    def picky(data, device):
        calls.append(len(data))
        if len(data) > 1 or bytes(data[0][:64].tolist()) == (root / "camera_grey.jpg").read_bytes()[:64]:
            raise RuntimeError("nvjpeg says no")
        return real(data, device)

    monkeypatch.setattr(decode, "decode_jpegs", picky)
    monkeypatch.setattr("xaibatch.data.open_regular", _refuse_reopen(root))
    got = load(root, 64, on_device=True, batch_size=len(want))
    assert calls[0] > 1 and calls.count(1) >= 2  # halved down to single files
    grey = got["camera_grey.jpg"]
    assert torch.equal(grey["x"], want["camera_grey.jpg"]["x"])  # PIL's own result
    assert np.array_equal(grey["display"], want["camera_grey.jpg"]["display"])
    assert got["bad_huffman.jpg"] == want["bad_huffman.jpg"]


def test_one_bad_jpeg_does_not_decode_its_batch_one_by_one(monkeypatch):
    """A batch the device refuses because of one file is halved, not decoded file by file: the others still
    go through in a few batched calls (about 2 log2(n)), and only the bad one is left to PIL."""
    good = [
        torch.frombuffer(bytearray(jpeg(Image.new("RGB", (8, 8), (i, 0, 0)))), dtype=torch.uint8) for i in range(64)
    ]
    bad = torch.frombuffer(bytearray(b"\xff\xd8 not really a jpeg"), dtype=torch.uint8)
    data = good[:37] + [bad] + good[37:]
    real = decode.decode_jpegs
    calls = []

    def counting(d, device):
        calls.append(len(d))
        return real(d, device)

    monkeypatch.setattr(decode, "decode_jpegs", counting)
    out = decode._decode_each(data, CPU)
    assert [i for i, t in enumerate(out) if t is None] == [37]
    assert all(
        t.shape == (3, 8, 8) and int(t[0, 0, 0]) in range(i - 3, i + 4)
        for i, t in enumerate(o for o in out if o is not None)
    )
    assert len(calls) <= 2 * 7 + 1  # 65 files: log2 levels, two calls each


def test_cuda_decode_waits_for_the_callers_stream_first(monkeypatch):
    # torchvision's nvJPEG writes its outputs from its own stream without waiting for ours (pytorch/vision PR
    # #9606): our stream is drained before each decode. No GPU here: the stream and the decoder are stand-ins.
    import torchvision.io

    order = []

    class Stream:
        def synchronize(self):
            order.append("synchronize")

    def fake_decode(data, mode, device):
        order.append("decode")
        return [torch.zeros(3, 2, 2, dtype=torch.uint8) for _ in data]

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode)
    decode.decode_jpegs([torch.zeros(4, dtype=torch.uint8)], torch.device("cuda", 0))
    assert order == ["synchronize", "decode"]
    order.clear()
    decode.decode_jpegs([torch.zeros(4, dtype=torch.uint8)], CPU)
    assert order == ["decode"]  # the CPU has no stream to wait for


def _refuse_reopen(root: Path):
    """open_regular that fails the second open of any file (the fallback must use the bytes in hand)."""
    from xaibatch import files

    seen: set[str] = set()

    def once(path):
        key = os.fspath(path)
        assert key not in seen, f"{key} opened twice"
        seen.add(key)
        return files.open_regular(path)

    return once


def test_bad_files_fail_the_same_way(tmp_path):
    """tests/badfiles.py's folder (FIFO, bombs, truncated, text, CMYK, EXIF, ...): same records either way."""
    folder = badfiles.build(tmp_path / "in", deep=False, hostile_names=False)
    try:
        pil, dev = load(folder.root, 32, on_device=False), load(folder.root, 32, on_device=True)
        assert pil.keys() == dev.keys()
        failed = {n for n, r in pil.items() if "failed" in r}
        # 9: the link to an unreadable /proc file is refused by the scan now (a link out of the input), not here
        assert failed == {n for n, r in dev.items() if "failed" in r} and len(failed) >= 9
        for name in pil:
            if name in failed:
                assert dev[name] == pil[name], name
            else:
                assert dev[name]["orig_size"] == pil[name]["orig_size"], name
                assert (dev[name]["x"].int() - pil[name]["x"].int()).abs().max() <= 1, name
    finally:
        badfiles.remove_tree(folder.root)


def test_swapped_in_fifo_or_dev_zero_is_refused(tmp_path):
    """The workers read with the same safe open as load_image: never blocked or fed forever."""
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    for name in ("fifo.jpg", "zero.jpg"):
        with pytest.raises(DecodeError, match="not a regular file"):
            read_for_device(tmp_path / name)


def test_header_check_refuses_what_it_must():
    good = jpeg(Image.fromarray(skd.coffee()), quality=90)
    assert jpeg_info(good) == decode.JpegInfo(400, 600, 1)
    assert jpeg_info(good, max_pixels=600 * 400 - 1) is None  # over the limit: PIL's reason, from its path
    assert jpeg_info(good[:-2]) is None  # no end-of-image marker: truncated
    assert jpeg_info(good + b"\0\0") is not None  # zero padding after it is fine
    assert jpeg_info(jpeg(Image.fromarray(skd.coffee()), progressive=True)) is None
    assert jpeg_info(b"\xff\xd8\xff\xd9") is None


def test_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(jpeg(Image.new("RGB", (300, 200))))
    with pytest.raises(DecodeError, match="over the limit of 3,000 even decoded at 1/4 of its size"):
        read_for_device(p, max_pixels=3_000)
    im = read_for_device(p, max_pixels=50_000)  # over the limit, under it at half size: decoded so by PIL
    assert im.size == (150, 100) and full_size(im) == (300, 200)


def test_which_groups_decode_on_the_device(monkeypatch):
    assert not device_decode("auto", CPU)
    assert device_decode("device", CPU)
    assert not device_decode("device", CPU, segments=True)  # LIME's superpixels: PIL in the workers
    assert not device_decode("cpu", CPU)
    with pytest.raises(UsageError, match="expected one of auto, cpu, device"):
        device_decode("gpu", CPU)
    monkeypatch.setattr(decode, "_cannot_decode_on", lambda dev: "RuntimeError: no nvjpeg")
    assert not device_decode("auto", torch.device("cuda"))  # falls back to the workers
    with pytest.raises(UsageError, match="cannot decode JPEGs on cuda: RuntimeError: no nvjpeg"):
        device_decode("device", torch.device("cuda"))
    monkeypatch.setattr(decode, "_cannot_decode_on", lambda dev: None)
    assert not device_decode("auto", torch.device("cuda"))  # measured slower than PIL workers (issue #20)
    assert device_decode("device", torch.device("cuda"))
    monkeypatch.setattr(decode, "AUTO_ON_DEVICE", frozenset({"cuda"}))  # once a device type is measured faster
    assert device_decode("auto", torch.device("cuda"))


def test_run_with_device_decode(photos, tmp_path, tiny_ckpt):
    """End to end: the same predictions and failures; switching the decode path recomputes nothing."""
    from xaibatch.manifest import Manifest
    from xaibatch.pipeline import RunOptions, run

    root, how = photos
    res = {}
    for mode in ("device", "cpu"):
        out = tmp_path / mode
        r = run(
            RunOptions(
                root, out, ["gradcam"], checkpoint=tiny_ckpt, decode=mode, workers=0, batch_size=4, handle_signals=False
            )
        )
        assert r.computed == len(how) - 2 and sorted(f for f, _ in r.failed) == ["bad_huffman.jpg", "truncated.jpg"]
        m = Manifest(out / "xaibatch.sqlite") if (out / "xaibatch.sqlite").exists() else None
        res[mode] = (r, m)
    (a, ma), (b, mb) = res["device"], res["cpu"]
    assert dict(a.failed) == dict(b.failed)
    ia, ib = ma.images(), mb.images()
    assert {k: (v.pred, v.sha256, v.width, v.height) for k, v in ia.items()} == {
        k: (v.pred, v.sha256, v.width, v.height) for k, v in ib.items()
    }
    ma.close()
    mb.close()
    again = run(
        RunOptions(
            root, tmp_path / "device", ["gradcam"], checkpoint=tiny_ckpt, decode="cpu", workers=0, handle_signals=False
        )
    )
    assert again.computed == 0  # the decode path is not part of the configuration hash (README)


@pytest.mark.parametrize("reader", [load_image, read_for_device])
def test_the_hash_is_of_the_bytes_decoded_though_the_file_changes_while_read(tmp_path, monkeypatch, reader):
    """A labelling tool rewrote an image in place while a run read it: the sha256 the manifest keeps was of the old
    bytes (hashed first) and the map of the new ones (the file read again to decode), so a map was stored under a hash
    that names other bytes. Now the bytes hashed are the bytes decoded."""
    from xaibatch import data

    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    old, new = png(1), png(2)
    assert len(old) > 8192  # past the file's read buffer: decoding reads the disk again
    path = tmp_path / "a.png"
    path.write_bytes(old)
    real_open = data.open_image_file

    def racing_open(p):
        f, size = real_open(p)
        read = f.read

        def read_then_rewrite(*a):  # the first read of its bytes (not a sniff of the header) is followed by a
            got = read(*a)  # rewrite in place (same inode)
            if len(got) < 64:
                return got
            f.read = read
            with open(p, "r+b") as w:
                w.write(new)
            return got

        f.read = read_then_rewrite
        return f, size

    monkeypatch.setattr(data, "open_image_file", racing_open)
    digest = hashlib.sha256()
    im = reader(path, digest=digest)
    hashed = {hashlib.sha256(b).hexdigest(): b for b in (old, new)}
    assert digest.hexdigest() in hashed, "the hash is of no whole version of the file"
    decoded_from = np.asarray(Image.open(io.BytesIO(hashed[digest.hexdigest()])).convert("RGB"))
    assert np.array_equal(np.asarray(im), decoded_from), "the pixels decoded are not those of the bytes hashed"


@pytest.mark.parametrize("reader", [load_image, read_for_device])
def test_a_file_over_the_memory_limit_is_decoded_from_the_file_and_refused_if_rewritten(tmp_path, monkeypatch, reader):
    """Read whole into memory to be hashed and decoded, a 300 MB scan TIFF was held twice in each loader worker; past
    IN_MEMORY_MAX a file is hashed, then decoded from the file, and refused as changed (left to the next run, as a
    file moved away is) when its size, mtime or ctime moved meanwhile."""
    from xaibatch import data
    from xaibatch.errors import vanished

    arr = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    monkeypatch.setattr(data, "IN_MEMORY_MAX", 100)
    monkeypatch.setattr(data, "read_hashed", lambda *a: (_ for _ in ()).throw(AssertionError("held in memory")))
    digest = hashlib.sha256()
    assert np.array_equal(np.asarray(reader(path, digest=digest)), arr)
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()

    real_decode = data.decode_pil

    def rewritten_meanwhile(f, *a):  # another tool writes the file between the hash and the decode
        with open(path, "r+b") as w:
            w.write(path.read_bytes())
        return real_decode(f, *a)

    monkeypatch.setattr(data, "decode_pil", rewritten_meanwhile)
    with pytest.raises(DecodeError) as e:
        reader(path, digest=hashlib.sha256())
    assert vanished(str(e.value)) and "rewritten while the run read it" in str(e.value)
