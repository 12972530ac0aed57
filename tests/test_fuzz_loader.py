"""Fuzz ``load_image``: whatever the bytes, a valid RGB image or a DecodeError, quickly.

Seeds are small valid files of every format the loader accepts (several modes each); hypothesis
mutates them (bit flips, byte overwrites, truncation, insertion, deletion, splices of header fields)
or feeds plain random bytes. ``XAIBATCH_FUZZ_EXAMPLES`` raises the number of examples for a longer
hunt (the default keeps the suite fast).
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from xaibatch.data import load_image
from xaibatch.errors import DecodeError

EXAMPLES = int(os.environ.get("XAIBATCH_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    deadline=2000,
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("XAIBATCH_FUZZ_RANDOM") is None,
    database=None,
)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "RGBA")
    grey = rgb.convert("L")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    i16 = Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16))
    frames = [Image.new("RGB", (6, 5), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    return {
        "png": [
            _encode(rgb, "PNG"),
            _encode(rgba, "PNG"),
            _encode(pal, "PNG", transparency=0),
            _encode(i16, "PNG"),
            _encode(grey, "PNG", optimize=True),
        ],
        "jpg": [
            _encode(rgb, "JPEG", quality=80),
            _encode(rgb, "JPEG", progressive=True, exif=exif.tobytes()),
            _encode(rgb.convert("CMYK"), "JPEG"),
            _encode(grey, "JPEG"),
        ],
        "gif": [_encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0), _encode(pal, "GIF")],
        "bmp": [_encode(rgb, "BMP"), _encode(pal, "BMP"), _encode(grey, "BMP")],
        "tif": [
            _encode(rgb, "TIFF"),
            _encode(rgb, "TIFF", compression="tiff_lzw"),
            _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
            _encode(i16, "TIFF"),
            _encode(rgba, "TIFF", compression="tiff_adobe_deflate"),
        ],
        "webp": [
            _encode(rgb, "WEBP", quality=70),
            _encode(rgba, "WEBP", lossless=True),
            _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        ],
    }


SEEDS = _seeds()
ALL_SEEDS = [(ext, data) for ext, items in SEEDS.items() for data in items]

_TMP = Path(tempfile.mkdtemp(prefix="xaibatch-fuzz-"))  # one file rewritten per example
atexit.register(shutil.rmtree, _TMP, True)


def _check(data: bytes, ext: str) -> None:
    path = _TMP / f"case.{ext}"
    path.write_bytes(data)
    try:
        im = load_image(path)
    except DecodeError as e:
        assert str(e).strip(), "a DecodeError must say why"
        assert "\n" not in str(e), "one line"
        return
    # anything else (another exception type) fails the test by propagating
    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    assert im.width >= 1 and im.height >= 1
    np.asarray(im)  # the pixels are really there


@st.composite
def mutated(draw):
    ext, data = draw(st.sampled_from(ALL_SEEDS))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "byte", "int", "truncate", "insert", "delete", "dup"]))
        n = len(buf)
        if n == 0:
            break
        # Headers hold the fields that matter (sizes, offsets, counts): bias positions towards them.
        pos = draw(st.one_of(st.integers(0, min(n - 1, 64)), st.integers(0, n - 1)))
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            buf[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01, draw(st.integers(0, 255))]))
        elif op == "int":  # an interesting 16- or 32-bit value (sizes, offsets, counts)
            v = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000, 100000]))
            fmt = draw(st.sampled_from([">I", "<I", ">H", "<H"]))
            b = struct.pack(fmt, v & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
            buf[pos : pos + len(b)] = b
        elif op == "truncate":
            del buf[draw(st.integers(0, n - 1)) :]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 16))]
        elif op == "dup":  # repeat a run of bytes (chunks, markers, IFD entries)
            k = draw(st.integers(1, 32))
            buf[pos:pos] = buf[pos : pos + k] * draw(st.integers(1, 8))
    return ext, bytes(buf)


def test_seeds_decode():
    """Every unmutated seed is a valid image the loader accepts."""
    for ext, data in ALL_SEEDS:
        path = _TMP / f"seed.{ext}"
        path.write_bytes(data)
        im = load_image(path)
        assert im.mode == "RGB" and im.width >= 1 and im.height >= 1


@FUZZ
@given(mutated())
def test_mutated_images(case):
    ext, data = case
    _check(data, ext)


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(sorted(SEEDS)))
def test_random_bytes(data, ext):
    _check(data, ext)


@FUZZ
@given(st.sampled_from(ALL_SEEDS), st.binary(min_size=0, max_size=512))
def test_valid_header_random_body(seed, tail):
    """A real header (first 16-64 bytes) with garbage after it gets past identification into the decoder."""
    ext, data = seed
    for cut in (16, 64):
        _check(data[:cut] + tail, ext)


@pytest.mark.parametrize("ext, data", ALL_SEEDS, ids=[f"{e}{i}" for i, (e, _) in enumerate(ALL_SEEDS)])
def test_every_truncation_of_a_seed(ext, data):
    """Each seed cut at many lengths: deterministic, covers the 'truncated file' family densely."""
    step = max(1, len(data) // 40)
    for n in range(0, len(data), step):
        _check(data[:n], ext)
