"""Save an image flagged as wrongly predicted into ``OUT/flagged/<label>/`` (ImageFolder layout).

The file keeps its bytes and gets a content-hash name, so the same image flagged twice under one label is one
file, and two different images never share a name. ``xaibatch run OUT/flagged`` then reports them like any
labeled folder. Imports nothing heavy (no torch, no PIL).
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..files import atomic_write_bytes, safe_join
from ..layout import FLAGGED

MAX_LABEL_CHARS = 64
MAX_KEPT_BYTES = 256 * 1024 * 1024  # explained images kept for a later Flag press (the newest one always)
# PIL's format name -> the extension `xaibatch run` reads (scan.IMAGE_EXTENSIONS)
EXTENSIONS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "MPO": ".jpg",  # a JPEG holding more pictures (phones, cameras): PIL names it MPO
    "WEBP": ".webp",
    "BMP": ".bmp",
    "DIB": ".bmp",
    "TIFF": ".tif",
    "GIF": ".gif",
}
_UNSAFE = re.compile(r"[^\w .+\-]+")  # letters and digits of any script, space, '.', '+', '-', '_'


def clean_label(text: str | None) -> str:
    """A label as a safe folder name: one path part, printable, at most MAX_LABEL_CHARS; else UsageError."""
    name = unicodedata.normalize("NFC", str(text or ""))
    name = _UNSAFE.sub("_", name).strip(" ._")[:MAX_LABEL_CHARS].strip(" ._")
    if not name:
        raise UsageError("give the correct label (letters, digits, spaces, '-', '_', '.', '+')")
    return name


@dataclass(frozen=True)
class Flagged:
    rel: str  # under OUT: flagged/<label>/<sha256>.<ext>
    path: Path
    label: str
    new: bool  # False: this image was already flagged under this label


def save_flag(out: Path, label: str, data: bytes, image_format: str) -> Flagged:
    """Write ``data`` (an image's own bytes, of PIL format ``image_format``) as ``OUT/flagged/<label>/<sha>.ext``.

    Atomic (a temporary name, then a rename), never outside ``out`` (symlinks included: files.safe_join).
    """
    if not data:
        raise UsageError("nothing to flag: explain an image first")
    ext = EXTENSIONS.get(image_format)
    if ext is None:
        raise UsageError(f"cannot flag an image of format {image_format!r}")
    label = clean_label(label)
    rel = f"{FLAGGED}/{label}/{hashlib.sha256(data).hexdigest()[:32]}{ext}"
    path = safe_join(Path(out), rel)
    if path.is_file():
        return Flagged(rel, path, label, new=False)
    atomic_write_bytes(path, data)
    return Flagged(rel, path, label, new=True)


class Explained:
    """The images explained lately, by sha256: what a Flag press saves. The page holds only the sha256 of the image
    its tab shows (Gradio cannot hand a batched event's per-session state back to each session: a gr.State output
    of a batch went to its first request's tab only, holding the batch's last image). Bounded by ``max_bytes``,
    oldest out first, the newest always kept; thread-safe (explaining and flagging run on Gradio's threads)."""

    def __init__(self, max_bytes: int = MAX_KEPT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def keep(self, sha256: str, data: bytes, image_format: str) -> str:
        """Remember an explained image; returns its sha256 (what the page holds)."""
        with self._lock:
            if sha256 in self._images:
                self._images.move_to_end(sha256)
                return sha256
            self._images[sha256] = (data, image_format)
            self._size += len(data)
            while self._size > self.max_bytes and len(self._images) > 1:
                _, (old, _) = self._images.popitem(last=False)
                self._size -= len(old)
        return sha256

    def get(self, sha256: str | None) -> tuple[bytes, str]:
        """The bytes and PIL format of the image explained with this sha256; UsageError when there is none."""
        if not sha256:
            raise UsageError("nothing to flag: explain an image first")
        with self._lock:
            kept = self._images.get(sha256)
        if kept is None:
            raise UsageError("this image is no longer held by the server: explain it again, then flag it")
        return kept
