"""Find images in a folder and stream them, decoded and resized, in batches.

Layout: ImageFolder (``ROOT/<class>/**/<image>``, classes = first folder level,
sorted) or a flat/unlabeled folder. Files are sorted, so order is deterministic.
Decoding runs in DataLoader workers; a file that cannot be read becomes a
record with an error, never an exception that stops the run.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from .errors import DecodeError, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
DISPLAY_MAX_SIDE = 512  # the overlay PNGs are written at most this large

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class ImageEntry:
    rel: str  # POSIX path relative to the input root: the image's identity everywhere
    path: Path
    label: int | None
    size: int
    mtime_ns: int


@dataclass
class Scan:
    root: Path
    classes: list[str] | None  # None for an unlabeled folder
    images: list[ImageEntry]
    skipped: list[tuple[str, str]]  # (rel, reason): entries that are not even readable as files


def _walk(root: Path, skipped: list[tuple[str, str]]) -> list[tuple[str, Path, os.stat_result]]:
    """Every image-named regular file under ``root``, sorted, symlinks followed once, loops refused."""
    found: list[tuple[str, Path, os.stat_result]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def visit(d: Path, rel: str) -> None:
        try:
            st = d.stat()
        except OSError as e:
            skipped.append((rel or ".", f"cannot open folder: {e.strerror or e}"))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            skipped.append((rel, "symlink loop: folder already visited"))
            return
        seen_dirs.add(key)
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            skipped.append((rel or ".", f"cannot list folder: {e.strerror or e}"))
            return
        for name in names:
            p = d / name
            r = f"{rel}/{name}" if rel else name
            try:
                st = p.stat()
            except OSError as e:
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    reason = "broken symlink" if p.is_symlink() else (e.strerror or str(e))
                    skipped.append((r, reason))
                continue
            if stat.S_ISDIR(st.st_mode):
                visit(p, r)
            elif stat.S_ISREG(st.st_mode) and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((r, p, st))

    visit(root, "")
    return found


def scan(root: Path, labeled: bool | None = None) -> Scan:
    """List the images under ``root``; ``labeled=None`` decides from the layout."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"input folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"input {root} is not a folder")
    skipped: list[tuple[str, str]] = []
    files = _walk(root, skipped)
    if not files and not skipped:
        raise InputError(f"input folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    top_level = [f for f in files if "/" not in f[0]]
    if labeled is None:
        labeled = bool(files) and not top_level
    classes: list[str] | None = None
    if labeled:
        if top_level:
            raise InputError(
                f"{len(top_level)} image(s) sit directly in {root} (e.g. {top_level[0][0]}), outside any class "
                "folder; move them into class folders or pass --unlabeled"
            )
        classes = sorted({f[0].split("/", 1)[0] for f in files})
    index = {c: i for i, c in enumerate(classes or [])}
    images = [
        ImageEntry(rel, path, index[rel.split("/", 1)[0]] if classes else None, st.st_size, st.st_mtime_ns)
        for rel, path, st in files
    ]
    return Scan(root, classes, images, skipped)


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode one image to RGB: first frame, EXIF orientation applied, size-checked before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DecodeError(f"{w}x{h} pixels is over the limit of {max_pixels} (decompression bomb?)")
                if w < 1 or h < 1:
                    raise DecodeError(f"empty image ({w}x{h})")
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_rgb(im)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"refused: {e}") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image PIL can identify") from None
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DecodeError(f"{type(e).__name__}: {msg}" if msg else type(e).__name__) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        a = np.clip(a / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def display_size(w: int, h: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


class ImageDataset(torch.utils.data.Dataset):
    """Yields one dict per image: the model input (uint8, CHW), the display copy and optional segments."""

    def __init__(
        self,
        entries: list[ImageEntry],
        input_size: int,
        segmenter: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.entries = entries
        self.input_size = input_size
        self.segmenter = segmenter

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        entry = self.entries[i]
        try:
            im = load_image(entry.path)
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
    }
    return out
