"""Decode images safely and stream them, resized, in batches (the folder scan is :mod:`xaibatch.scan`).

Decoding runs in DataLoader workers; a file that cannot be read becomes a
record with an error, never an exception that stops the run.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from .errors import DecodeError
from .layout import DISPLAY_MAX_SIDE, display_size
from .scan import ImageEntry
from .files import NotRegularFile, hash_open_file, open_regular

# What PIL may sniff a file's content as. Never the whole plugin list: a file named x.png that holds
# EPS would start Ghostscript, and weak-magic formats (TGA, SPIDER, ...) would "decode" random bytes.
DECODE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF")
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS, digest: Any = None) -> Image.Image:
    """Decode one image to RGB: first frame, EXIF orientation applied, size-checked before decoding.

    Returns an RGB image of at least 1x1 pixels or raises :class:`DecodeError` with a short reason;
    nothing else. With ``digest`` (a hashlib object) the file's bytes are fed to it first, from the
    same open file that is then decoded: one safe open per file, and the hash is of what was decoded.
    """
    try:
        # A FIFO or a symlink to /dev/zero swapped in after the scan is refused, never read forever.
        fd, st = open_regular(path)
    except OSError as e:
        if isinstance(e, NotRegularFile):
            raise DecodeError("not a regular file") from None
        raise DecodeError(f"cannot read: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if st.st_size == 0:
                raise DecodeError("empty file (0 bytes)")
            if digest is not None:
                hash_open_file(f, st.st_size, digest)
                f.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's "corrupt EXIF" and similar chatter
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                try:
                    im = Image.open(f, formats=DECODE_FORMATS)
                except Image.UnidentifiedImageError:
                    raise DecodeError(f"not an image{_looks_like(f)}: the content is not {_FORMAT_NAMES}") from None
                with im:
                    _check_size(im.size, max_pixels)
                    im.seek(0)
                    _check_size(im.size, max_pixels)
                    im.load()
                    try:
                        im = ImageOps.exif_transpose(im)
                    except Exception:  # unreadable EXIF: the pixels are fine, keep them as stored
                        pass
                    rgb = _to_rgb(im)
            if rgb.mode != "RGB" or rgb.width < 1 or rgb.height < 1:
                raise DecodeError(f"decoded to an unusable {rgb.mode} {rgb.width}x{rgb.height} image")
            return rgb
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        n = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise DecodeError(f"refused: the image declares {n}, over the limit of {max_pixels:,} "
                          "(decompression bomb?)") from None
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None
    except RecursionError:
        raise DecodeError("malformed image (nesting too deep)") from None
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
    return f"corrupt or truncated image: {msg}" if msg else f"corrupt or truncated image ({type(e).__name__})"


def _looks_like(f) -> str:
    """`` (looks like text)`` when the open file starts with readable text, else nothing."""
    try:
        f.seek(0)
        head = f.read(512)
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut last char is fine
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
    return " (looks like text)" if text and all(c.isprintable() or c in "\r\n\t" for c in text) else ""


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise DecodeError(f"empty image ({w}x{h})")
    if w * h > max_pixels:
        raise DecodeError(f"refused: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,} "
                          "(decompression bomb?)")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited over white."""
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


class ImageDataset(torch.utils.data.Dataset):
    """Yields one dict per image: the model input (uint8, CHW), the display copy and optional segments."""

    def __init__(
        self,
        entries: list[ImageEntry],
        input_size: int,
        segmenter: Callable[[np.ndarray], np.ndarray] | None = None,
        want_hash: list[bool] | None = None,
    ) -> None:
        self.entries = entries
        self.input_size = input_size
        self.segmenter = segmenter
        self.want_hash = want_hash  # per entry: also return the sha256 of the bytes decoded

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        entry = self.entries[i]
        digest = hashlib.sha256() if self.want_hash and self.want_hash[i] else None
        try:
            im = load_image(entry.path) if digest is None else load_image(entry.path, digest=digest)
            w, h = im.size
            x = im.resize((self.input_size, self.input_size), Image.BILINEAR)
            arr = np.asarray(x, dtype=np.uint8)
            disp = im if max(w, h) <= DISPLAY_MAX_SIDE else im.resize(display_size(w, h), Image.BILINEAR)
            item: dict[str, Any] = {
                "index": i,
                "x": torch.from_numpy(arr.copy()).permute(2, 0, 1),
                "orig_size": (h, w),
                "display": np.asarray(disp, dtype=np.uint8),
                "error": None,
                "sha256": None if digest is None else digest.hexdigest(),
            }
            if self.segmenter is not None:
                item["segments"] = torch.from_numpy(np.ascontiguousarray(self.segmenter(arr), dtype=np.int64))
            return item
        except DecodeError as e:
            return {"index": i, "error": str(e)}
        except Exception as e:  # a worker must never die on one file
            return {"index": i, "error": f"{type(e).__name__}: {e}"}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good images; pass the failures through as (index, reason)."""
    good = [it for it in items if it["error"] is None]
    out: dict[str, Any] = {
        "failed": [(it["index"], it["error"]) for it in items if it["error"] is not None],
        "index": [it["index"] for it in good],
        "orig_size": [it["orig_size"] for it in good],
        "display": [it["display"] for it in good],
        "x": torch.stack([it["x"] for it in good]) if good else None,
        "segments": torch.stack([it["segments"] for it in good]) if good and "segments" in good[0] else None,
        "sha256": [it.get("sha256") for it in good],
    }
    return out
