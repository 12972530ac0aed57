"""Find the images in a folder: ImageFolder (``ROOT/<class>/**/<image>``) or flat, deterministic order.

Layout: ImageFolder (classes = first folder level, sorted) or a flat/unlabeled
folder. Files are sorted, so order is deterministic. What cannot even be
listed or opened is reported as skipped, never a reason to stop. Hidden names
(``.git/``, ``.ipynb_checkpoints/``, macOS's ``._x.png``) and xaibatch output
folders are ignored silently. Imports nothing heavy: an unchanged re-run plans
from a scan without loading torch.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from .errors import FILE_TOO_LARGE, InputError, close_names
from .layout import MANIFEST

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MASK_SUFFIX = ".mask.npy"  # an image's ground-truth mask lies beside it as <name>.mask.npy (as demo-data writes it)


def stamp_ns(ns: int) -> int:
    """A file's ``st_mtime_ns`` or ``st_ctime_ns`` as the manifest's signed 64-bit INTEGER holds it: a time past
    2262 (``touch -d 2300-01-01``, a corrupt camera timestamp; ext4 and XFS keep them) wraps around, so that it still
    equals itself run after run instead of failing the run ("Python int too large to convert to SQLite INTEGER")."""
    return (ns + (1 << 63)) % (1 << 64) - (1 << 63)


def mask_rel(rel: str) -> str:
    """Where an image's ground-truth mask lies, relative to the input folder: ``FAKE/a.png`` -> ``FAKE/a.mask.npy``."""
    return rel.rsplit(".", 1)[0] + MASK_SUFFIX


# An image's files are named by its stem (layout.assign_stems), whose last part is cut and hashed to fit
# NAME_MAX with any suffix, so no file name is too long; a path this long is refused instead of failing
# half-way in the run's writer.
MAX_REL_BYTES = 3072  # leaves about 1 KB of PATH_MAX (4096) for --out and "thumbs/<method>/"
# Larger files are refused from their size alone, never read: every new file is hashed in full before it is
# decoded, and a sparse 16 TB "image" would otherwise keep a run busy for hours. A 64-megapixel image (the pixel
# limit, data.MAX_PIXELS) takes at most 768 MB even as uncompressed 32-bit float RGB.
MAX_FILE_BYTES = 1 << 30


def too_large(size: int) -> str | None:
    """The reason a file of ``size`` bytes is refused unread, or None."""
    if size > MAX_FILE_BYTES:
        return f"{FILE_TOO_LARGE} ({size:,} bytes; at most {MAX_FILE_BYTES:,}): refused without reading it"
    return None


@dataclass(frozen=True)
class ImageEntry:
    rel: str  # POSIX path relative to the input root: the image's identity everywhere
    file: str  # the full path (a string: making a Path per image costs more than the scan's stat)
    label: int | None
    size: int
    mtime_ns: int
    # the inode's change time: any write, truncate or utime moves it, and no tool sets it back, so a rewrite that
    # keeps size and mtime (cp -p, touch -r) still shows (plan.moved_but_same). None: not from a scan
    ctime_ns: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.file)


@dataclass(frozen=True, order=True)
class Failure:
    """An input the run could not read, and why; ``kind``: ``"image"``, a file named like an image (refused by the
    scan, unreadable, undecodable, or failed as before and not read again), or ``"folder"``, a folder not scanned
    (unlistable, a loop, a link out, a name that is not UTF-8, too deep to open, a class folder's link to nothing).

    One type from the scan to the CLI (Scan.skipped, Plan.still_failed, WriteJob, Commit, Tally, RunResult.failed);
    the manifest's failures table, the report, predictions.csv and ``--log-json`` keep the rel and reason only.
    Unpacks and indexes as ``(rel, reason)`` (``for rel, reason in result.failed``, ``dict(result.failed)``,
    ``f[0]``), as the pairs it replaced did; it equals only a Failure."""

    rel: str  # as the scan names it: POSIX, relative to the input root ("." for the root itself)
    reason: str
    kind: Literal["image", "folder"]

    def __iter__(self) -> Iterator[str]:
        return iter((self.rel, self.reason))

    def __getitem__(self, i: int) -> str:
        return (self.rel, self.reason)[i]


@dataclass
class Scan:
    root: Path
    classes: list[str] | None  # None for an unlabeled folder
    images: list[ImageEntry]
    skipped: list[Failure]  # entries that are not even readable as files, and folders not scanned
    empty_classes: list[str] = field(default_factory=list)  # labeled: top-level folders without any image
    digests: dict[str, str] = field(default_factory=dict)  # rel -> sha256 the planner hashed (once per scan)
    # empty class folders that are symbolic links whose folder is listed under its own name: name -> that name
    aliases: dict[str, str] = field(default_factory=dict)
    by_case: dict[str, str] = field(default_factory=dict)  # numbered_by: folder -> the class it matched by case

    def numbered_by(self, names: list[str]) -> Scan:
        """This scan with its labels numbered by ``names`` (the model's classes in output order; each class folder
        matched to one of them by :func:`match_classes`): a new Scan, which shares the digests hashed over this
        one. Raises InputError when a folder matches no class, or not only one."""
        try:
            matched = match_classes(self.classes or [], names)
        except InputError as e:
            raise InputError(f"{e}{self._linked_note(names)}") from None
        index = {c: names.index(n) for c, n in matched.items()}
        images = [
            dataclasses.replace(e, label=index[self.classes[e.label]]) if self.classes and e.label is not None else e
            for e in self.images
        ]
        by_case = {**self.by_case, **{c: n for c, n in matched.items() if c != n}}
        return dataclasses.replace(self, classes=list(names), images=images, by_case=by_case)

    def _linked_note(self, names: list[str]) -> str:
        """Why a class folder that is a link is not a class of its own, when its images went to a folder that
        matches no class (``REAL -> data/real``: listed under ``data``): to add to the refusal."""
        links = [
            f"class folder {link!r} is a symbolic link to {target!r}, whose images are listed under "
            f"{target.split('/', 1)[0]!r}"
            for link, target in sorted(self.aliases.items())
            if not named_class(target.split("/", 1)[0], names)
        ]
        if not links:
            return ""
        return (
            f" ({'; '.join(links)}: a folder is scanned once, under its real name; put the folder itself in the "
            "link's place, or the links in a folder of their own and pass --follow-links)"
        )


def named_class(name: str, names: list[str]) -> list[str]:
    """The classes among ``names`` that ``name`` names: itself when it is one, else every class whose name differs
    from it only by case (none, one, or several: ambiguous). The rule of :func:`match_classes` and
    ``--positive-class``."""
    if name in names:
        return [name]
    return [n for n in names if n.casefold() == name.casefold()]


def match_classes(folders: list[str], names: list[str]) -> dict[str, str]:
    """Each class folder's class among ``names``: the class of its exact name, else the one class whose name
    differs from it only by case (``Real`` is ``REAL``: CIFAKE mirrors and Kaggle sets spell folders in any case).

    The one place folder names become classes. Refused (InputError, one line): a folder that matches no class, one
    that matches two classes only by case (``real`` and ``REAL``), and two folders that would be the same class
    (``REAL`` and ``Real``: never merged without a word).
    """
    matched: dict[str, str] = {}
    for f in folders:
        near = named_class(f, names)
        if len(near) > 1:
            raise InputError(
                f"class folder {f!r} matches the model's classes {' and '.join(map(repr, near))} only by "
                "case; rename it to the class it holds, or pass --unlabeled"
            )
        if not near:
            raise InputError(
                f"folder classes {listed(folders)} do not match the model's classes {listed(names)}"
                f"{unmatched(folders, names)}; rename the folders or pass --unlabeled"
            )
        matched[f] = near[0]
    taken: dict[str, str] = {}
    for f, n in matched.items():
        if n in taken:
            raise InputError(
                f"class folders {taken[n]!r} and {f!r} differ only by case and would both be the model's class "
                f"{n!r}; merge them into one folder, or pass --unlabeled"
            )
        taken[n] = f
    return matched


LISTED_NAMES = 12  # names an error lists in full; a longer list (a model's 1000 classes) is cut to its ends


def listed(names: list[str]) -> str:
    """``names`` as a refusal prints them: all of them, or with many (ImageNet's 1000 classes, which made the line
    10 KB long) how many, the first and the last few."""
    if len(names) <= LISTED_NAMES:
        return str(names)
    head, tail = names[: LISTED_NAMES - 3], names[-2:]
    return f"({len(names)}: {', '.join(map(repr, head))}, ..., {', '.join(map(repr, tail))})"


def unmatched(folders: list[str], names: list[str]) -> str:
    """``: 'tabby_cat' is none of them; did you mean 'tabby'?``: the folders no class matches (with a close class
    name for the first few), so that among three folders and 1000 classes the one to rename is found at once."""
    missing = [f for f in folders if not named_class(f, names)]
    if len(missing) == len(folders) > 1:
        return ": no folder is one of them (the folders' names must be the model's class names)"
    hints = [f"{f!r} is none of them{_near(f, names)}" for f in missing[:3]]
    more = f"; and {len(missing) - 3} more folders" if len(missing) > 3 else ""
    return ": " + "; ".join(hints) + more


def _near(name: str, names: list[str]) -> str:
    near = close_names(name, names)
    return f" (did you mean {', '.join(map(repr, near))}?)" if near else ""


def shown(name: str) -> str:
    """A name as text even when its bytes are not UTF-8 (``b"\\xff"`` shows as ``\\xff``)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def printable(name: str) -> str:
    """A name for a log line: control characters (newline, ESC of ANSI codes, ...) as escapes, so that a file name
    cannot forge lines or colours in stderr logs (``a\nb.png`` shows as ``a\\nb.png``)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in name)


def _valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes kept by os.listdir
        return False


_KIND = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


Frame = tuple[str, str, Iterator[str], frozenset]  # a folder being listed: path, rel, names left, its ancestors


def _walk(root: Path, skipped: list[Failure], follow_links: bool = False, out: Path | None = None) -> _Walk:
    """Every image-named regular file under ``root``, in sorted depth-first order (the walk's ``found``).

    A symlink, to a folder or a file, that leads outside ``root`` is skipped (a link to / would crawl the
    system; a link to someone's private file would publish it) unless ``follow_links``. An xaibatch output
    folder is not entered, and a symlink that leads into one (or into ``out``, the run's own, whether or not it
    holds a manifest yet) is ignored: its display copies and maps would come back as new images on every run.
    Names starting with "." are hidden: ignored.

    Symlinked folders are followed after the real ones, so a folder reachable both directly and
    through a symlink is scanned once, under its real name (the link's name -> that name: ``aliases``); a
    symlink back to a folder above it is a loop and reported. Iterative, so deep nesting cannot hit
    Python's recursion limit. What cannot be scanned goes to ``skipped`` (a Failure) when it is named
    like an image or is a folder; other files are ignored silently. Output folders not entered, and links
    into one: ``outputs``.
    """
    walk = _Walk(os.path.realpath(root), follow_links, skipped)
    try:
        root_st = root.stat()
    except OSError as e:
        skipped.append(Failure(".", f"cannot open folder: {e.strerror or e}", "folder"))
        return walk
    if out is not None:
        walk.avoid(out)
    stack = [frame] if (frame := walk.enter(str(root), "", root_st, frozenset())) else []
    while stack or walk.deferred:
        if not stack:
            if frame := walk.enter(*walk.deferred.pop(0)):
                stack.append(frame)
            continue
        d, rel, names, ancestors = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
        elif frame := walk.visit(d, rel, name, ancestors):
            stack.append(frame)
    # Depth-first order with sorted names, whatever order symlinked folders were entered in.
    walk.found.sort(key=lambda f: f[0].split("/"))
    skipped.sort(key=lambda s: s.rel.split("/"))
    return walk


@dataclass
class _Walk:
    """One walk's state: what it found and skipped, the folders it entered, the symlinked folders left for last;
    the folders it did not enter on purpose: output folders (``outputs``), second names of a folder (``aliases``)."""

    real_root: str
    follow_links: bool
    skipped: list[Failure]
    found: list[tuple[str, str, os.stat_result]] = field(default_factory=list)
    seen_dirs: dict[tuple[int, int], str] = field(default_factory=dict)  # each folder entered -> its rel
    aliases: dict[str, str] = field(default_factory=dict)  # rel of a symlink to a folder listed already -> that rel
    outputs: set[str] = field(default_factory=set)  # rels of xaibatch output folders and of links into one
    broken_tops: list[Failure] = field(default_factory=list)  # top-level links to nothing (folders, maybe)
    deferred: list[tuple[str, str, os.stat_result, frozenset]] = field(default_factory=list)
    real_out: str | None = None  # the run's --out, when it is not above the input (see avoid)
    out_key: tuple[int, int] | None = None

    def avoid(self, out: Path) -> None:
        """Never scan the run's ``out``: on a first run, or after its manifest was lost, nothing else marks it."""
        real = os.path.realpath(out)
        if _inside(self.real_root, real):
            return  # the input lies in --out (with --replace): guards keep the report's own folders off it
        self.real_out = real
        try:
            st = os.stat(real)
            self.out_key = (st.st_dev, st.st_ino)
        except OSError:
            pass  # not made yet: nothing in it to scan

    def enter(self, d: str, rel: str, st: os.stat_result, ancestors: frozenset) -> Frame | None:
        """List a folder, unless it is a loop, already listed, an xaibatch output folder or unreadable."""
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            self.skipped.append(Failure(rel, "symlink loop: leads back to a folder above it; not followed", "folder"))
            return None
        if key in self.seen_dirs:
            first = self.seen_dirs[key]
            if first in self.outputs:
                self.outputs.add(rel)
            else:
                self.aliases[rel] = first
            return None  # the same folder under a second name: its images are already listed once
        self.seen_dirs[key] = rel
        try:
            if rel and (key == self.out_key or is_output_folder(d)):
                self.outputs.add(rel)
                return None  # an xaibatch output folder (e.g. --out inside the input): its maps are not inputs
            with os.scandir(d) as it:
                names = sorted(e.name for e in it if not _hidden(e.name) and not _other_file(e))
        except OSError as e:  # one unreadable folder is reported; the rest of the input is still scanned
            self.skipped.append(Failure(shown(rel or "."), f"cannot list folder: {e.strerror or e}", "folder"))
            return None
        return (d, rel, iter(names), ancestors | {key})

    def visit(self, d: str, rel: str, name: str, ancestors: frozenset) -> Frame | None:
        """One folder entry: an image is listed, a folder entered (returned) or deferred, the rest skipped or not."""
        p = os.path.join(d, name)
        r = f"{rel}/{name}" if rel else name
        is_image_name = name.lower().endswith(IMAGE_EXTENSIONS)
        is_link = False
        try:
            st = os.lstat(p)  # one call for what is not a link, as os.stat would be
            is_link = stat.S_ISLNK(st.st_mode)
            if is_link:
                st = os.stat(p)
        except OSError as e:
            if (reason := _unopenable(e, p, is_image_name, is_link)) is not None:  # not named like an image: a folder
                self.skipped.append(Failure(shown(r), reason, "image" if is_image_name else "folder"))
            elif is_link and not rel and _folder_like(name, p):  # a class folder, when the input is class
                self.broken_tops.append(Failure(shown(r), _dead_link(e), "folder"))  # folders: scan() decides
            return None
        if stat.S_ISDIR(st.st_mode):
            return self.folder(p, r, name, st, is_link, ancestors)
        if is_image_name:
            outside = is_link and not self.leads_inside(p)
            if is_link and not outside and self.in_output(os.path.realpath(p)):
                return None  # a display copy or overlay of a report: not an input
            if (reason := _refused(name, r, st, outside)) is None:
                self.found.append((r, p, st))
            else:
                self.skipped.append(Failure(shown(r), reason, "image"))
        return None

    def folder(
        self, p: str, r: str, name: str, st: os.stat_result, is_link: bool, ancestors: frozenset
    ) -> Frame | None:
        """A subfolder: entered now (returned), or last when symlinked, or skipped (a bad name, a link leading out)."""
        if not _valid_utf8(name):
            why = "folder name is not valid UTF-8: its images are not scanned; rename it"
            self.skipped.append(Failure(shown(r), why, "folder"))
        elif is_link:
            if not self.leads_inside(p):
                why = "symlink to a folder outside the input folder; not followed (pass --follow-links to follow it)"
                self.skipped.append(Failure(shown(r), why, "folder"))
            elif not self.in_output(os.path.realpath(p)):  # a link into a report is ignored, as the report is
                self.deferred.append((p, r, st, ancestors))
            else:
                self.outputs.add(r)
        else:
            return self.enter(p, r, st, ancestors)
        return None

    def leads_inside(self, link: str) -> bool:
        """Whether a symlink may be followed: it stays inside the input folder, or ``--follow-links``."""
        return self.follow_links or _inside(os.path.realpath(link), self.real_root)

    def in_output(self, real: str) -> bool:
        """Whether a symlink's target ``real`` lies in the run's --out or in an xaibatch output folder.

        The walk never enters an output folder, but a link jumps past that check: its target's folders are looked
        at up to the first one that holds the input folder too (that one and those above are the input's own
        surroundings, which the run's guards judge).
        """
        if self.real_out is not None and _inside(real, self.real_out):
            return True
        folder = real
        while not _inside(self.real_root, folder):  # ends at / at the latest: it holds the input folder too
            if is_output_folder(folder):
                return True
            folder = os.path.dirname(folder)
        return False


def _hidden(name: str) -> bool:
    """A hidden file or folder (``.git/``, ``.ipynb_checkpoints/``, ``.thumbs/``, macOS's ``._x.png`` metadata):
    never an input, never a class, never a failure; ignored silently, as files not named like images are."""
    return name.startswith(".")


def _other_file(e: os.DirEntry) -> bool:
    """A regular file not named like an image, known from the listing alone (its type is in the folder's entry on
    most file systems): ignored without an ``lstat`` (a demo folder's ground-truth masks: a third of its entries)."""
    if e.name.lower().endswith(IMAGE_EXTENSIONS):
        return False
    try:
        return e.is_file(follow_symlinks=False)  # no system call where the entry has its type; else one lstat
    except OSError:
        return False


def _unopenable(e: OSError, path: str, is_image_name: bool, is_link: bool) -> str | None:
    """Why an entry that cannot be stat'ed is skipped; None: a file not named like an image (ignored)."""
    if e.errno == errno.ENAMETOOLONG and not is_image_name:  # a folder deeper than PATH_MAX: say so
        return (
            f"path too long to open ({len(os.fsencode(path))} bytes; the system's "
            "limit is 4096): its images are not scanned"
        )
    if not is_image_name:
        return None
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if is_link:
        return "broken symlink"
    return f"cannot read: {e.strerror or e}"


def _folder_like(name: str, path: str) -> bool:
    """Whether a link to nothing may have been a class folder: a name without an extension (``REAL``), or a target
    written as a folder (``/data/real/``). ``notes.txt -> /gone`` is no class: ignored as any file not named like
    an image."""
    try:
        target = os.readlink(path)
    except OSError:
        target = ""
    return not os.path.splitext(name)[1] or target.endswith("/")


def _dead_link(e: OSError) -> str:
    """Why a top-level symbolic link that leads nowhere (a class folder, when the input is class folders) is
    skipped: as a link named like an image would be (see _unopenable)."""
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.ENOENT:
        return "broken symlink: what it points to does not exist"
    return f"cannot open: {e.strerror or e}"


def file_kind(st: os.stat_result) -> str:
    """What a file that is not a regular one is: "a FIFO", "a character device", ..."""
    return _KIND.get(stat.S_IFMT(st.st_mode), "a special file")


def _refused(name: str, rel: str, st: os.stat_result, outside: bool) -> str | None:
    """Why a file named like an image is not an input (``outside``: a symlink leading out, not followed)."""
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({file_kind(st)})"
    if outside:
        return "symlink to a file outside the input folder; not followed (pass --follow-links to follow it)"
    if not _valid_utf8(name):
        return "file name is not valid UTF-8; rename it"
    if len(rel.encode()) > MAX_REL_BYTES:
        return f"path too long ({len(rel.encode())} bytes under the input folder; at most {MAX_REL_BYTES})"
    return too_large(st.st_size)


_SQLITE_MAGIC = b"SQLite format 3\0"


def is_output_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds an xaibatch manifest: a SQLite file, not just any file of that name (an empty
    ``xaibatch.sqlite`` dropped into a class folder must not hide its images)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return False
    from .files import open_regular

    try:
        fd, _st = open_regular(path)  # never blocks on a FIFO of that name
    except OSError:
        return False
    try:
        return os.read(fd, len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan(
    root: Path, labeled: bool | None = None, follow_links: bool = False, out: Path | None = None, ctime: bool = True
) -> Scan:
    """List the images under ``root``; ``labeled=None`` decides from the layout; ``out``: the run's output folder,
    never scanned (see _walk); ``ctime`` False: the entries carry none (``--no-ctime``: size and mtime alone)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"input folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"input {root} is not a folder")
    skipped: list[Failure] = []
    walk = _walk(root, skipped, follow_links, out)
    files = walk.found
    if not files and not skipped:
        raise InputError(f"input folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    top_level = [f for f in files if "/" not in f[0]]
    if files and not top_level and walk.broken_tops:  # class folders: a link to nothing among them is one too
        skipped.extend(walk.broken_tops)
        skipped.sort(key=lambda s: s.rel.split("/"))
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
        not_classes = {s.rel.split("/", 1)[0] for s in skipped} | {r for r in walk.outputs if "/" not in r}
        empty = _empty_folders(root, set(classes) | not_classes)
    index = {c: i for i, c in enumerate(classes or [])}
    images = [
        ImageEntry(
            rel,
            path,
            index[rel.split("/", 1)[0]] if classes else None,
            st.st_size,
            stamp_ns(st.st_mtime_ns),
            stamp_ns(st.st_ctime_ns) if ctime else None,
        )
        for rel, path, st in files
    ]
    if not labeled:
        return Scan(root, classes, images, skipped)
    aliases = {name: walk.aliases[name] for name in empty if name in walk.aliases}
    return Scan(root, classes, images, skipped, empty, aliases=aliases)


def _empty_folders(root: Path, taken: set[str]) -> list[str]:
    """Top-level folders of ``root`` that hold no image (class folders emptied out); hidden ones are not classes."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    out = []
    for name in names:
        if name in taken or _hidden(name) or not _valid_utf8(name):
            continue
        try:
            if (root / name).is_dir() and not is_output_folder(root / name):
                out.append(name)
        except OSError:
            continue
    return sorted(out)
