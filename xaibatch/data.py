"""Decode images safely (the folder scan is :mod:`xaibatch.scan`; the batches: :mod:`xaibatch.dataset`).

Decoding runs in DataLoader workers; a file that cannot be read becomes a
:class:`DecodeError` with a short reason, never an exception that stops the run.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import (
    CORRUPT_IMAGE,
    EMPTY_FILE,
    MALFORMED_IMAGE,
    NOT_AN_IMAGE,
    TIFF_VARIANT,
    TOO_MANY_PIXELS,
    UNUSABLE_DECODE,
    VANISHED,
    DecodeError,
)
from .layout import DISPLAY_MAX_SIDE, display_size
from .scan import too_large
from .files import NotRegularFile, hash_open_file, open_regular, read_hashed
from .threadsafe import catch_warnings, decoding

# What PIL may sniff a file's content as. Never the whole plugin list: a file named x.png that holds
# EPS would start Ghostscript, and weak-magic formats (TGA, SPIDER, ...) would "decode" random bytes.
DECODE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF")
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
# A JPEG over MAX_PIXELS (a 108 or 200 megapixel phone photo) is decoded at 1/2 or 1/4 of its size, libjpeg's own
# scaled decoding: at most MAX_PIXELS pixels in memory, as for any other image. Only over 16x MAX_PIXELS is it refused.
JPEG_SCALES = (2, 4)
FULL_SIZE = "xaibatch.full_size"  # an image decoded scaled: its own (w, h) in its PIL info (full_size() reads it)
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS, digest: Any = None) -> Image.Image:
    """Decode one image to RGB: first frame, EXIF orientation applied, size-checked before decoding.

    Returns an RGB image of at least 1x1 pixels or raises :class:`DecodeError` with a short reason;
    nothing else. With ``digest`` (a hashlib object) the file's bytes are read once, fed to it and decoded from
    memory: one safe open per file, and the hash is of what was decoded, even when the file changes meanwhile.
    """
    f, size = open_image_file(path)
    with f, decode_errors(max_pixels):
        if digest is not None:
            return decode_hashed(f, size, digest, max_pixels)
        return decode_pil(f, max_pixels)


IN_MEMORY_MAX = 64 << 20  # a larger file is hashed and decoded from the file, not held in memory twice


def decode_hashed(f: BinaryIO, size: int, digest: Any, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode the open file ``f`` with its bytes fed to ``digest``, the hash of exactly the bytes decoded: read once
    and decoded from memory; a file over IN_MEMORY_MAX (a 300 MB scan TIFF, in each loader worker) is read twice
    from the file instead, and refused as changed (errors.VANISHED: left to the next run) when its size, mtime or
    ctime moved while it was read."""
    if size <= IN_MEMORY_MAX:
        return decode_pil(io.BytesIO(read_hashed(f, size, digest)), max_pixels)
    before = os.fstat(f.fileno())
    hash_open_file(f, size, digest)
    f.seek(0)
    im = decode_pil(f, max_pixels)
    after = os.fstat(f.fileno())
    if (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    ):
        raise DecodeError(f"{VANISHED} (rewritten while the run read it)")
    return im


def open_image_file(path: Path | str) -> tuple[BinaryIO, int]:
    """Open an image file safely for reading: (the open file, its size), or :class:`DecodeError`."""
    try:
        # A FIFO or a symlink to /dev/zero swapped in after the scan is refused, never read forever.
        fd, st = open_regular(path)
    except OSError as e:
        if isinstance(e, NotRegularFile):
            raise DecodeError("not a regular file") from None
        raise DecodeError(f"cannot read: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    if st.st_size == 0:
        f.close()
        raise DecodeError(f"{EMPTY_FILE} (0 bytes)")
    if reason := too_large(st.st_size):  # grown since the scan
        f.close()
        raise DecodeError(reason)
    return f, st.st_size


def decode_pil(f: BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an open image file (or the bytes of one in a BytesIO) with PIL: the body of :func:`load_image`."""
    with decode_errors(max_pixels), decoding():  # PIL's chatter ignored, a bomb's warning raised (threadsafe.py)
        try:
            im = _open(f)
        except Image.UnidentifiedImageError:
            if (why := _tiff_problem(f)) is not None:
                raise DecodeError(
                    f"{TIFF_VARIANT} ({why}): PIL cannot decode its samples (such as "
                    "floating-point colour, or more than 4 channels); convert it to 8- or 16-bit RGB"
                ) from None
            raise DecodeError(f"{NOT_AN_IMAGE}{_looks_like(f)}: the content is not {_FORMAT_NAMES}") from None
        with im:
            full = _fit_jpeg(im, max_pixels)
            _check_size(im.size, max_pixels)
            im.seek(0)
            _check_size(im.size, max_pixels)
            im.load()
            decoded = im.size
            rgb = to_rgb(upright(im))
            if full is not None:  # decoded scaled: the image's own size, oriented as its pixels are
                rgb.info[FULL_SIZE] = full if rgb.size == decoded else full[::-1]
        if rgb.mode != "RGB" or rgb.width < 1 or rgb.height < 1:
            raise DecodeError(f"{UNUSABLE_DECODE} {rgb.mode} {rgb.width}x{rgb.height} image")
        return rgb


@contextlib.contextmanager
def decode_errors(max_pixels: int = MAX_PIXELS) -> Iterator[None]:
    """Turn whatever reading or decoding an image raises into a :class:`DecodeError` with a short reason."""
    try:
        yield
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        n = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise DecodeError(_too_many(n, max_pixels)) from None
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None
    except RecursionError:
        raise DecodeError(f"{MALFORMED_IMAGE} (nesting too deep)") from None
    except OSError as e:
        if e.errno is not None:  # a real I/O error, not PIL's "image file is truncated"
            raise DecodeError(f"cannot read: {e.strerror or e}") from None
        raise DecodeError(_describe(e)) from None
    except Exception as e:  # PIL raises many types (SyntaxError, ValueError, struct.error, ...)
        raise DecodeError(_describe(e)) from None


_FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"


def _describe(e: BaseException) -> str:
    """PIL's reason for a failed decode, as one short line."""
    text = str(e).strip()
    msg = text.splitlines()[0][:200] if text else ""
    return f"{CORRUPT_IMAGE}: {msg}" if msg else f"{CORRUPT_IMAGE} ({type(e).__name__})"


_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def _tiff_problem(f) -> str | None:
    """Why PIL refused an open file that is a TIFF (its own reason, which Image.open hides), or None if no TIFF."""
    try:
        f.seek(0)
        if f.read(4) not in _TIFF_MAGIC:
            return None
        f.seek(0)
        from PIL import TiffImagePlugin

        TiffImagePlugin.TiffImageFile(f).close()
    except Exception as e:
        return str(e).splitlines()[0][:100] if str(e).strip() else type(e).__name__
    return "unknown reason"


_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _looks_like(f) -> str:
    """What a file PIL does not decode is, when its first bytes say: the usual strays of a folder of downloads
    (`` xaibatch reads (HEIC/HEIF: ...)``, AVIF, an ICO icon, an SVG drawing, an HTML page), else `` (looks like
    text)`` when it starts with readable text, else nothing."""
    try:
        f.seek(0)
        head = f.read(512)
    except (OSError, ValueError):
        return ""
    if head[4:8] == b"ftyp":  # ISO media: the major brand, then (after the minor version) the compatible ones
        size = int.from_bytes(head[:4], "big")
        brands = {head[i : i + 4] for i in (8, *range(16, min(size, len(head)) - 3, 4))}
        if brands & _AVIF_BRANDS:
            return " xaibatch reads (AVIF; convert it to PNG or JPEG)"
        if brands & _HEIF_BRANDS:
            return " xaibatch reads (HEIC/HEIF, as phones save photos; convert it to JPEG or PNG)"
    if head[:4] in (b"\0\0\1\0", b"\0\0\2\0") and head[4:6] != b"\0\0":  # ICO or CUR, one picture or more
        return " xaibatch reads (a Windows icon, ICO; convert it to PNG)"
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut last char is fine
    except (ValueError, UnicodeDecodeError):
        return ""
    if not text or not all(c.isprintable() or c in "\r\n\t" for c in text.lstrip("\ufeff")):
        return ""
    start = text.lstrip("\ufeff \r\n\t").lower()
    if "<svg" in text.lower():
        return " xaibatch reads (an SVG drawing: shapes, no pixels; render it to PNG)"
    if start.startswith(("<!doctype html", "<html", "<head", "<body")):
        return " (an HTML page, as a failed download saves one)"
    return " (looks like text)"


def _too_many(pixels: str, max_pixels: int, jpeg: bool = False) -> str:
    scaled = f" even decoded at 1/{JPEG_SCALES[-1]} of its size" if jpeg else ""
    return f"{TOO_MANY_PIXELS} {pixels}, over the limit of {max_pixels:,}{scaled} (decompression bomb?)"


def _open(f: BinaryIO) -> Image.Image:
    """``Image.open`` of the formats PIL may sniff; a JPEG over PIL's pixel limit opened all the same (its header
    only): :func:`_fit_jpeg` decides whether a scaled decoding of it fits."""
    try:
        return Image.open(f, formats=DECODE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        f.seek(0)
        if f.read(len(JPEG_MAGIC)) != JPEG_MAGIC:
            raise
        f.seek(0)
        from PIL import JpegImagePlugin

        return JpegImagePlugin.JpegImageFile(f)  # Image.open's own pixel check left out: _fit_jpeg's follows


def _fit_jpeg(im: Image.Image, max_pixels: int) -> tuple[int, int] | None:
    """Have a JPEG over ``max_pixels`` decoded at 1/2 or 1/4 of its size (``draft``: the DCT scaled, never the
    whole image in memory), the first that fits, and return its (w, h) as stored; None for an image decoded
    whole. One that fits at neither scale is refused."""
    w, h = im.size
    if im.format != "JPEG" or w * h <= max_pixels:
        return None
    for scale in JPEG_SCALES:
        if -(-w // scale) * -(-h // scale) <= max_pixels:  # libjpeg rounds a scaled side up
            im.draft(im.mode, (w // scale, h // scale))
            return (w, h)
    raise DecodeError(_too_many(f"{w * h:,} pixels ({w}x{h})", max_pixels, jpeg=True))


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise DecodeError(f"empty image ({w}x{h})")
    if w * h > max_pixels:
        raise DecodeError(_too_many(f"{w * h:,} pixels ({w}x{h})", max_pixels))


_TURNED = range(2, 9)  # EXIF orientations other than 1 (as stored)


def upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation says, as a viewer shows it (runs, ``serve`` and ``explain()``'s PIL
    images: ``Image.open`` leaves a camera JPEG on its side); ``im`` itself when it has no orientation to apply or
    its EXIF is unreadable (the pixels are fine: kept as stored)."""
    try:
        if im.getexif().get(0x0112, 1) in _TURNED:
            return ImageOps.exif_transpose(im)
    except Exception:
        pass
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited over white (runs, ``serve`` and ``explain()``'s
    PIL images: one rule, so one image gives one input however it arrives)."""
    if im.mode.startswith("I;16"):  # 16-bit grey: keep the high byte
        a = np.asarray(im)
        return Image.fromarray((a >> 8).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):  # 32-bit int or float grey: scale what is there into 0..255
        a = np.asarray(im, dtype=np.float32)
        a = np.where(np.isfinite(a), a, 0.0)
        lo, hi = float(a.min()), float(a.max())
        if im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a * (255.0 / 65535.0)
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


# ---------------------------------------------------------------------------------------------------- JPEGs for the device

JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers of sequential Huffman JPEGs (baseline, extended): what every decoder takes. Progressive,
# lossless and arithmetic-coded JPEGs are left to PIL.
SEQUENTIAL_SOF = (0xC0, 0xC1)
_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


@dataclass(frozen=True)
class JpegInfo:
    """What a JPEG's header says, read before decoding: its size as stored and its EXIF orientation (1..8)."""

    height: int
    width: int
    orientation: int = 1

    @property
    def shown_size(self) -> tuple[int, int]:
        """(h, w) after the orientation is applied: the image's ``orig_size``."""
        return (self.width, self.height) if self.orientation in _EXIF_TRANSPOSED else (self.height, self.width)


def read_for_device(
    path: Path | str, max_pixels: int = MAX_PIXELS, digest: Any = None
) -> Image.Image | tuple[bytes, JpegInfo]:
    """Read one image file for device decoding: a plain JPEG comes back as (its bytes, its header), anything
    else decoded by PIL exactly as :func:`load_image` does (the same safe open, the same errors).

    A JPEG is read whole (its bytes hashed with ``digest``) and its header checked with :func:`jpeg_info`;
    one that the device might decode differently from PIL, or not at all, is decoded by PIL from those bytes.
    """
    f, size = open_image_file(path)
    with f, decode_errors(max_pixels):
        if f.read(len(JPEG_MAGIC)) != JPEG_MAGIC:
            f.seek(0)
            if digest is not None:  # decoded from the bytes hashed, as load_image does
                return decode_hashed(f, size, digest, max_pixels)
            return decode_pil(f, max_pixels)
        f.seek(0)
        data = f.read(size)  # never more than the size at open: a growing file ends there, as read_hashed does
        if digest is not None:
            digest.update(data)
        info = jpeg_info(data, max_pixels)
        if info is None:
            return decode_pil(io.BytesIO(data), max_pixels)
        return data, info


def jpeg_info(data: bytes, max_pixels: int = MAX_PIXELS) -> JpegInfo | None:
    """The header of a JPEG that a device decoder reads as PIL does, or None (then PIL decodes it).

    Yes only for a complete (ends with the end-of-image marker), sequential Huffman, 8-bit JPEG with one
    (grey) or three (YCbCr) components within ``max_pixels``, as PIL reads its header: PIL's own errors,
    CMYK, progressive and odd JPEGs thus all go through PIL, and a truncated file fails with PIL's reason.
    """
    if not data.rstrip(b"\0").endswith(b"\xff\xd9") or _sof_marker(data) not in SEQUENTIAL_SOF:
        return None
    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=("JPEG",))  # reads the header only
            with im:
                w, h = im.size
                if (
                    im.format != "JPEG"
                    or im.mode not in ("RGB", "L")
                    or getattr(im, "bits", 8) != 8
                    or im.info.get("progressive")
                    or im.info.get("adobe_transform", 1) != 1
                    or w < 1
                    or h < 1
                    or w * h > max_pixels
                ):
                    return None
                try:  # as ImageOps.exif_transpose reads it; unreadable EXIF: kept as stored, as load_image does
                    orientation = int(im.getexif().get(0x0112, 1))
                except Exception:
                    orientation = 1
    except Exception:
        return None
    return JpegInfo(h, w, orientation if 1 <= orientation <= 8 else 1)


def _sof_marker(data: bytes) -> int | None:
    """The JPEG's start-of-frame marker (0xC0: baseline, 0xC2: progressive, ...), None when not found."""
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            return marker
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


# ---------------------------------------------------------------------------------------------------- resized copies


def full_size(im: Image.Image) -> tuple[int, int]:
    """A decoded image's (w, h) as its file has it: a JPEG decoded scaled (:data:`JPEG_SCALES`) is smaller."""
    return tuple(im.info.get(FULL_SIZE, im.size))


def model_input(im: Image.Image, input_size: int) -> np.ndarray:
    """The model's input for a decoded image: (input_size, input_size, 3) uint8, stretched (no crop), bilinear."""
    same = im.size == (input_size, input_size)  # PIL's resize would only copy it
    return np.asarray(im if same else im.resize((input_size, input_size), Image.BILINEAR), dtype=np.uint8)


def display_copy(im: Image.Image) -> np.ndarray:
    """The display copy of a decoded image: (h, w, 3) uint8, at most DISPLAY_MAX_SIDE on its longer side."""
    w, h = im.size
    return np.asarray(
        im if max(w, h) <= DISPLAY_MAX_SIDE else im.resize(display_size(w, h), Image.BILINEAR), dtype=np.uint8
    )
