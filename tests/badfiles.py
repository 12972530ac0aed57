"""Build a folder of good images mixed with every kind of bad input xaibatch must survive.

``build(root)`` writes the folder and returns the expected outcome of each case:

* ``ok``: must be processed (decoded to RGB, maps written, listed in the manifest's images);
* ``fail``: must be listed in the manifest's failures (and the report's Skipped section) with a
  reason containing ``Case.reason``;
* ``ignored``: must appear nowhere (not an image, or an xaibatch output folder).

The README's table of bad-input outcomes is this list (``python tests/badfiles.py`` prints it).
Everything is generated; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

if __name__ == "__main__":  # run as a script from a checkout: use that checkout's xaibatch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaibatch.files import make_dirs  # noqa: E402

OK, FAIL, IGNORED = "ok", "fail", "ignored"

# A file only root cannot open for reading either: sysctl write-only entries refuse reads to everyone
# (the kernel checks the mode itself, root's DAC override does not apply). Opened read-only, never written.
WRITE_ONLY_PROC_FILE = Path("/proc/sys/vm/drop_caches")

HOSTILE_NAMES = [
    "with space.png",
    "ünïcødé 日本語 ✓.png",
    'quote\'s "double".png',
    "hash#frag.png",
    "percent%20%2e%2e%2f.png",
    "question?query=1&x=2.png",
    "<img src=x onerror=alert(1)>.png",
    "<script>alert('xss')</script>.png",
    "&amp;&lt;entity.png",
    "back\\slash.png",
    "new\nline.png",
    "..png",
    "...png",
    ".hidden.png",
    "-rf.png",
    "--out=evil.png",
    "~tilde.png",
    "$(touch pwned).png",
    "`touch pwned2`.png",
    "a" * 240 + ".png",  # long but writable: the temporary file name must still fit
]


@dataclass
class Case:
    rel: str
    outcome: str
    reason: str | None = None  # for FAIL: a substring of the manifest's reason
    what: str = ""  # one line for README
    size: tuple[int, int] | None = None  # for OK: expected decoded (width, height)
    pixel: tuple[tuple[int, int], tuple[int, int, int]] | None = None  # ((x, y), rgb) after decoding, +-12


@dataclass
class BadFolder:
    root: Path
    cases: list[Case] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # sub-cases that could not be built here, and why

    def by(self, outcome: str) -> list[Case]:
        return [c for c in self.cases if c.outcome == outcome]

    def case(self, rel: str) -> Case:
        return next(c for c in self.cases if c.rel == rel)


def rgb_array(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header declares ``width x height`` RGB pixels; the data is tiny."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + _chunk(b"IEND", b"")
    )


def halves(w: int, h: int, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: shows where a rotation put things."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 2] = left
    a[:, w // 2 :] = right
    return Image.fromarray(a)


def exif_jpeg(orientation: int, w: int = 40, h: int = 20) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(halves(w, h), quality=95, exif=exif.tobytes())


def can_make_unreadable() -> tuple[bool, str]:
    """Whether chmod 000 really makes a file unreadable for this process (not as root)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return False, "running as root: chmod 000 files stay readable"
    return True, ""


def proc_unreadable_available() -> bool:
    try:
        with open(WRITE_ONLY_PROC_FILE, "rb"):
            return False  # readable after all: useless as a simulation
    except PermissionError:
        return True
    except OSError:
        return False


def build(
    root: Path, *, good: int = 6, special: bool = True, deep: bool = True, hostile_names: bool = True
) -> BadFolder:
    """Write the bad-input folder under ``root`` (created; must not exist or be empty)."""
    root.mkdir(parents=True, exist_ok=True)
    bf = BadFolder(root)
    add = bf.cases.append

    def put(rel: str, data: bytes) -> Path:
        p = root / rel
        make_dirs(p.parent)
        p.write_bytes(data)
        return p

    # Good images, the bulk of a real folder.
    for i in range(good):
        put(f"good_{i:03d}.png", png_bytes(Image.fromarray(rgb_array(32, 32, seed=i))))
        add(Case(f"good_{i:03d}.png", OK, what="ordinary RGB PNG", size=(32, 32)))
    good_jpeg = jpeg_bytes(Image.fromarray(rgb_array(48, 40, seed=100)), quality=90)
    put("good.jpg", good_jpeg)
    add(Case("good.jpg", OK, what="ordinary RGB JPEG", size=(48, 40)))

    # --- broken files: reported, the run goes on ------------------------------------------------
    put("empty.png", b"")
    add(Case("empty.png", FAIL, "empty file", "zero-byte file"))
    full_png = png_bytes(Image.fromarray(rgb_array(64, 64, seed=7)))
    put("truncated.png", full_png[: len(full_png) // 2])
    add(Case("truncated.png", FAIL, "truncated", "PNG cut in half"))
    put("truncated.jpg", good_jpeg[: len(good_jpeg) // 2])
    add(Case("truncated.jpg", FAIL, "truncated", "JPEG cut in half"))
    put("random_bytes.jpg", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    add(Case("random_bytes.jpg", FAIL, "not an image", "random bytes named .jpg"))
    put("random_bytes.tif", np.random.default_rng(2).integers(0, 256, 777, dtype=np.uint8).tobytes())
    add(Case("random_bytes.tif", FAIL, "not an image", "random bytes named .tif"))
    put("text.jpg", b"This is not a picture.\nJust some notes someone saved with the wrong name.\n")
    add(Case("text.jpg", FAIL, "looks like text", "a text file named .jpg"))
    put("eps_named.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    add(Case("eps_named.png", FAIL, "not an image", "PostScript named .png (never handed to Ghostscript)"))
    put("bomb.png", bomb_png())
    add(Case("bomb.png", FAIL, "decompression bomb", "PNG declaring 100000x100000 pixels"))
    put("bomb_just_over.png", bomb_png(9000, 9000))
    add(Case("bomb_just_over.png", FAIL, "decompression bomb", "PNG declaring 9000x9000 (81 MP > 64 MP limit)"))

    # --- not images at all: ignored silently ----------------------------------------------------
    put("notes.txt", b"hello\n")
    add(Case("notes.txt", IGNORED, what="a .txt file"))
    put("labels.csv", b"a,b\n1,2\n")
    add(Case("labels.csv", IGNORED, what="a .csv file"))
    put("README", b"no extension\n")
    add(Case("README", IGNORED, what="a file without extension"))
    # An xaibatch output folder inside the input (e.g. --out input/report): never read as input.
    put(
        "old_report/xaibatch.sqlite", b"SQLite format 3\0" + bytes(84)
    )  # a manifest's header: an empty file is no manifest
    put("old_report/images/good_000.png", png_bytes(Image.fromarray(rgb_array(8, 8, seed=3))))
    add(Case("old_report/images/good_000.png", IGNORED, what="images inside an xaibatch output folder"))
    # Hidden names: a folder of a tool (.git/, .ipynb_checkpoints/), macOS's AppleDouble metadata beside each file.
    put(".ipynb_checkpoints/good_000.png", png_bytes(Image.fromarray(rgb_array(8, 8, seed=4))))
    add(Case(".ipynb_checkpoints/good_000.png", IGNORED, what="an image in a hidden folder"))
    put("._good_000.png", b"\0\5\26\7\0\2\0\0Mac OS X        ")
    add(Case("._good_000.png", IGNORED, what="macOS's AppleDouble file ._x.png"))

    # --- unusual but valid: must decode to the right RGB ------------------------------------------
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))  # 32x16 ramp
    put("mode_L.png", png_bytes(Image.fromarray(grey, "L")))
    add(Case("mode_L.png", OK, what="grayscale (L)", size=(32, 16), pixel=((31, 0), (248, 248, 248))))
    la = Image.merge("LA", (Image.new("L", (10, 10), 0), Image.new("L", (10, 10), 0)))  # black, transparent
    put("mode_LA.png", png_bytes(la))
    add(
        Case(
            "mode_LA.png",
            OK,
            what="grayscale + alpha (LA), fully transparent: white",
            size=(10, 10),
            pixel=((5, 5), (255, 255, 255)),
        )
    )
    pal = Image.new("P", (12, 12), 1)
    pal.putpalette([0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(0, (0, 0, 6, 12))  # left half index 0 (transparent green), right half index 1 (red)
    put("mode_P_transparent.png", png_bytes(pal, transparency=0))
    add(
        Case(
            "mode_P_transparent.png",
            OK,
            what="palette (P) with a transparent index",
            size=(12, 12),
            pixel=((9, 6), (255, 0, 0)),
        )
    )
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 2] = 255
    rgba[..., 3] = 255
    put("mode_RGBA.png", png_bytes(Image.fromarray(rgba, "RGBA")))
    add(Case("mode_RGBA.png", OK, what="RGBA (opaque blue)", size=(10, 10), pixel=((3, 3), (0, 0, 255))))
    i16 = np.full((8, 8), 40000, dtype=np.uint16)
    put("mode_I16.png", png_bytes(Image.fromarray(i16)))
    add(Case("mode_I16.png", OK, what="16-bit grayscale (I;16)", size=(8, 8), pixel=((0, 0), (156, 156, 156))))
    put("cmyk.jpg", jpeg_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95))
    add(Case("cmyk.jpg", OK, what="CMYK JPEG (pure red)", size=(16, 16), pixel=((8, 8), (255, 0, 0))))
    put("one_pixel.png", png_bytes(Image.new("RGB", (1, 1), (10, 200, 30))))
    add(Case("one_pixel.png", OK, what="1x1 image", size=(1, 1), pixel=((0, 0), (10, 200, 30))))
    put("wide_4000x10.png", png_bytes(Image.fromarray(rgb_array(4000, 10, seed=5))))
    add(Case("wide_4000x10.png", OK, what="very wide 4000x10", size=(4000, 10)))
    put("tall_10x3000.jpg", jpeg_bytes(Image.fromarray(rgb_array(10, 3000, seed=6))))
    add(Case("tall_10x3000.jpg", OK, what="very tall 10x3000", size=(10, 3000)))
    # EXIF orientation: stored 40x20, left half red, right half blue.
    # 6 = rotate 90 CW to display: the left edge goes to the top -> 20x40, red on top.
    # 8 = rotate 90 CCW: the left edge goes to the bottom -> red at the bottom.
    # 3 = rotate 180: red on the right.
    put("exif_orientation_6.jpg", exif_jpeg(6))
    add(
        Case(
            "exif_orientation_6.jpg",
            OK,
            what="EXIF orientation 6 (rotated)",
            size=(20, 40),
            pixel=((10, 5), (255, 0, 0)),
        )
    )
    put("exif_orientation_8.jpg", exif_jpeg(8))
    add(
        Case(
            "exif_orientation_8.jpg",
            OK,
            what="EXIF orientation 8 (rotated)",
            size=(20, 40),
            pixel=((10, 35), (255, 0, 0)),
        )
    )
    put("exif_orientation_3.jpg", exif_jpeg(3))
    add(
        Case(
            "exif_orientation_3.jpg",
            OK,
            what="EXIF orientation 3 (upside down)",
            size=(40, 20),
            pixel=((35, 10), (255, 0, 0)),
        )
    )
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    put("animated.gif", buf.getvalue())
    add(Case("animated.gif", OK, what="animated GIF: first frame", size=(16, 12), pixel=((8, 6), (255, 0, 0))))
    buf = io.BytesIO()
    frames[1].save(buf, format="TIFF", save_all=True, append_images=[frames[0], frames[2]])
    put("multipage.tif", buf.getvalue())
    add(Case("multipage.tif", OK, what="multi-page TIFF: first page", size=(16, 12), pixel=((8, 6), (0, 255, 0))))
    buf = io.BytesIO()
    frames[2].save(buf, format="WEBP", save_all=True, append_images=frames[:2], lossless=True)
    put("animated.webp", buf.getvalue())
    add(Case("animated.webp", OK, what="animated WebP: first frame", size=(16, 12), pixel=((8, 6), (0, 0, 255))))
    put("jpeg_named.png", good_jpeg)
    add(Case("jpeg_named.png", OK, what="a JPEG named .png (content decides)", size=(48, 40)))
    put("UPPER.PNG", png_bytes(Image.new("RGB", (5, 5), (1, 2, 3))))
    add(Case("UPPER.PNG", OK, what="upper-case extension", size=(5, 5)))
    # A folder named like an image is a folder: its contents are scanned.
    put("dir.png/inside.png", png_bytes(Image.new("RGB", (6, 6), (9, 9, 9))))
    add(Case("dir.png/inside.png", OK, what="inside a folder named dir.png", size=(6, 6)))

    if hostile_names:
        put_names(root, "names", bf)

    if deep:
        rel = "nested/" + "n/" * 60 + "bottom.png"
        put(rel, png_bytes(Image.new("RGB", (4, 4), (7, 7, 7))))
        add(Case(rel, OK, what="60 folders deep", size=(4, 4)))
        rel = "long/" + ("L" * 250 + "/") * 13 + "bottom.png"  # 3.3 KB path: its maps could not be written
        put(rel, png_bytes(Image.new("RGB", (4, 4), (7, 7, 7))))
        add(Case(rel, FAIL, "path too long", "path over 3 KB (13 folders of 250 characters)"))
        # Names up to NAME_MAX are explained: a 252-byte one keeps its name less ".png" as its stem, a 255-byte one
        # is cut and hashed (layout.assign_stems) so that its maps' and pictures' names fit.
        for n in (252, 255):
            name = "n" * (n - 5) + "X.png"
            put(name, png_bytes(Image.new("RGB", (4, 4))))
            add(Case(name, OK, what=f"a {n}-byte file name", size=(4, 4)))

    if special:
        # Symlinks: broken, a loop onto itself, a folder loop, an alias of a good file.
        os.symlink("does-not-exist.png", root / "broken_link.png")
        add(Case("broken_link.png", FAIL, "broken symlink", "symlink to a missing file"))
        os.symlink("self_loop.png", root / "self_loop.png")
        add(Case("self_loop.png", FAIL, "symlink loop", "symlink pointing at itself"))
        (root / "loopdir").mkdir()
        put("loopdir/ok_inside.png", png_bytes(Image.new("RGB", (6, 6), (1, 1, 1))))
        add(Case("loopdir/ok_inside.png", OK, what="next to a folder loop", size=(6, 6)))
        os.symlink("..", root / "loopdir" / "up")
        add(Case("loopdir/up", FAIL, "symlink loop", "folder symlink to its own parent"))
        os.symlink("dir.png", root / "alias_dir")
        add(Case("alias_dir/inside.png", IGNORED, what="same folder under a second name: scanned once"))
        os.symlink("old_report/images", root / "report_link")
        add(Case("report_link/good_000.png", IGNORED, what="a symlink into an xaibatch output folder's images/"))
        os.symlink("good_000.png", root / "link_to_good.png")
        add(Case("link_to_good.png", OK, what="symlink to a good image", size=(32, 32)))
        os.mkfifo(root / "fifo.png")
        add(Case("fifo.png", FAIL, "not a regular file", "a FIFO named .png (never opened)"))
        try:
            os.mkdir(root / os.fsdecode(b"bad_dir_\xff"))
            put(os.fsdecode(b"bad_name_\xfe.png"), png_bytes(Image.new("RGB", (4, 4))))
            put(os.fsdecode(b"bad_dir_\xff") + "/x.png", png_bytes(Image.new("RGB", (4, 4))))
            add(Case("bad_name_\\xfe.png", FAIL, "not valid UTF-8", "file name that is not UTF-8"))
            add(Case("bad_dir_\\xff", FAIL, "not valid UTF-8", "folder name that is not UTF-8"))
        except (OSError, UnicodeError) as e:  # a file system that insists on UTF-8 names
            bf.notes.append(f"non-UTF-8 names: cannot create here ({e})")
        ok, why = can_make_unreadable()
        if ok:
            p = put("unreadable.png", png_bytes(Image.new("RGB", (4, 4))))
            p.chmod(0)
            add(Case("unreadable.png", FAIL, "Permission denied", "file without read permission (chmod 000)"))
        else:
            bf.notes.append(f"chmod 000 sub-case skipped: {why}")
        if proc_unreadable_available():
            os.symlink(WRITE_ONLY_PROC_FILE, root / "permission_denied.png")
            # This link leaves the input: refused as such now (issue 22 item 8), before open() could say EACCES.
            add(
                Case(
                    "permission_denied.png",
                    FAIL,
                    "symlink to a file outside the input folder; not followed",
                    "a link out of the input, to a file open() refuses with EACCES (a write-only /proc file)",
                )
            )
        else:
            bf.notes.append(f"{WRITE_ONLY_PROC_FILE} is not there or readable: EACCES simulation skipped")
    return bf


def put_names(root: Path, sub: str, bf: BadFolder) -> None:
    """Good images under hostile names, in ``root/sub`` and ``root/sub/<name as a folder>``; hidden ones
    (``..png``, ``.hidden.png``) are ignored."""
    for i, name in enumerate(HOSTILE_NAMES):
        p = root / sub / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes(Image.new("RGB", (8, 6), (i * 10 % 256, 50, 60))))
        if name.startswith("."):
            bf.cases.append(Case(f"{sub}/{name}", IGNORED, what=f"hidden name {name!r}"))
        else:
            bf.cases.append(Case(f"{sub}/{name}", OK, what=f"hostile name {name[:40]!r}", size=(8, 6)))
    folder = "<b>bold</b> & 'q' #%?"
    p = root / sub / folder / "in folder.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png_bytes(Image.new("RGB", (8, 6))))
    bf.cases.append(Case(f"{sub}/{folder}/in folder.png", OK, what="hostile folder name", size=(8, 6)))


def deep_chain(root: Path, levels: int) -> str:
    """``root/d/d/.../d/bottom.png``, ``levels`` folders deep (past Python's recursion limit at 1000+)."""
    rel = "d/" * levels + "bottom.png"
    p = root / rel
    make_dirs(p.parent)
    p.write_bytes(png_bytes(Image.new("RGB", (4, 4), (7, 7, 7))))
    return rel


def remove_tree(path: Path) -> None:
    """Delete a tree that may be deeper than ``shutil.rmtree`` can recurse (``rm -rf`` does not recurse).

    Deep trees are slow to create and delete on overlay file systems (about 3 s per 1000 levels),
    so only one test builds one.
    """
    import subprocess

    subprocess.run(["rm", "-rf", "--", str(path)], check=False)


if __name__ == "__main__":  # print the README table
    import tempfile

    d = tempfile.mkdtemp()
    try:
        bf = build(Path(d) / "bad")
        print("| case | outcome | reason in the manifest |\n|---|---|---|")
        for c in bf.cases:
            if c.what.startswith("hostile name"):
                continue
            print(f"| {c.what} | {c.outcome} | {c.reason or ''} |")
        for n in bf.notes:
            print("note:", n)
    finally:
        remove_tree(Path(d))
