"""What :func:`xaibatch.explain` returns: the maps with the context to read them, to look at and to keep.

:class:`Explanations` is frozen: the maps, the predictions, the classes, the method settings, the layer, the
preprocessing and the library versions of one call. ``overlay(i, method)`` and ``heatmap(i, method)`` draw a map
with the report's colours and overlay (:mod:`xaibatch.overlay`); in Jupyter it shows itself as a grid of
overlays (``_repr_html_``); ``save(folder)`` writes one bundle per image and a ``manifest.json``, atomically.
Imports no torch (the tensors it holds come from :func:`xaibatch.explain`).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import json
import operator
import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import layout, targets
from .errors import StorageError, UsageError
from .files import atomic_write_bytes, make_dirs, safe_join, save_npy
from .overlay import MAP_PNG_STRATEGY, colorize, draw, encode_png, png_bytes, resize_maps, stretch, thumbnail
from .preprocess import Preprocess
from .report.text import class_name

SCHEMA = "xaibatch.explanations"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REPR_MAX_IMAGES = 8  # rows the notebook grid shows (the rest: a line saying how many more)
# Libraries recorded when they are imported (an explanation does not import what its methods do not need).
LIBRARIES = {"timm": "timm", "captum": "captum", "lime": "lime", "pytorch_grad_cam": "grad-cam"}


class Frozen(Mapping):
    """A read-only dict (picklable, unlike ``types.MappingProxyType``)."""

    def __init__(self, d: Mapping | None = None) -> None:
        self._d = dict(d or {})

    def __getitem__(self, k):
        return self._d[k]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Frozen({self._d!r})"


@dataclass(frozen=True)
class MethodSetting:
    """How one method was set: its title, whether its maps are signed, and every option that shapes them."""

    title: str
    signed: bool
    settings: Mapping[str, Any]


def versions() -> dict[str, str]:
    """Python, xaibatch, torch, numpy and the explanation libraries already imported, by distribution name
    (the module's own ``__version__`` where it has one)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"python": sys.version.split()[0], "xaibatch": __version__}
    wanted = {"torch": "torch", "numpy": "numpy", **LIBRARIES}
    for module, dist in wanted.items():
        if module not in sys.modules:
            continue
        own = getattr(sys.modules[module], "__version__", None)  # torch's names its build (2.4.1+cu121)
        try:
            out[dist] = str(own) if own else version(dist)
        except PackageNotFoundError:
            out[dist] = "?"
    return out


@dataclass(frozen=True, eq=False)
class Explanations:
    """What :func:`xaibatch.explain` returns; every tensor is on the CPU, indexed like the images given."""

    maps: Mapping[str, Any]  # method -> (N, H, W) float32 tensor at the model's input size; see label maps below
    probs: Any  # (N, classes) float32
    preds: Any  # (N,) int64: the predicted class
    targets: Any  # (N,) int64: the class each map explains
    # method -> per image, what it reports (LIME: its segments, ...), or None
    info: Mapping[str, list[dict[str, Any] | None]] = field(default_factory=Frozen)
    layer: str | None = None  # the CAM layer used
    images: Any = None  # (N, 3, S, S) uint8: each image as the model saw it (what size="input" draws on)
    classes: tuple[str, ...] | None = None  # class names, when known
    labels: Any = None  # (N,) int64 true classes when given, else None
    target: str = "pred"  # "pred", "label" or "pred,label" (targets.py): what the maps explain
    methods: Mapping[str, MethodSetting] = field(default_factory=Frozen)  # method -> its settings
    preprocess: Preprocess | None = None  # input size, mean, std
    given_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) of each image as given, before resizing
    seed: int = 0
    device: str = "cpu"
    model: str = ""  # the model's class name, or the checkpoint's path
    versions: Mapping[str, str] = field(default_factory=Frozen)
    # Per image its display copy, (h, w, 3) uint8: the image at its own size, at most 512 px a side, made as a run
    # makes it (data.display_copy): what size="given" pictures and overlays, the grid and save() draw on, the
    # report's picture. None (a bundle or a pickle of an older xaibatch): the model's input stretched back instead.
    displays: tuple[np.ndarray, ...] | None = None

    @staticmethod
    def load(folder: str | Path) -> Explanations:
        """Read back what :meth:`save` wrote (imports torch): the same maps, predictions and context."""
        from .bundle_read import read_bundle

        return read_bundle(Path(folder))

    # -- reading -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.preds.shape[0])

    def __repr__(self) -> str:
        return (
            f"Explanations({len(self)} images, methods={list(self.maps)}, layer={self.layer!r}, "
            f"target={self.target!r}, input_size={self.preprocess.image_size if self.preprocess else None})"
        )

    def class_name(self, k: int | None) -> str | None:
        """Class ``k``'s name, or ``class k`` when the names are not known."""
        return class_name(list(self.classes or ()), None if k is None else int(k))

    @functools.cached_property
    def misclassified(self) -> list[bool]:
        """Per image, whether it has a true class that is not its prediction (all False without labels)."""
        if self.labels is None:
            return [False] * len(self)
        return [targets.misclassified(int(y), int(p)) for y, p in zip(self.labels, self.preds, strict=True)]

    def signed(self, method: str) -> bool:
        return self.methods[targets.method_of(method)].signed

    def map(self, i: int, method: str, size: str = "input") -> np.ndarray:
        """Image ``i``'s map of ``method`` as an (H, W) float32 array: at the model's input size (S, S), or with
        ``size="given"`` at the image's own size as given (``given_sizes[i]``), resized as a run saves it."""
        i = self._index(i)
        if method not in self.maps:
            raise UsageError(f"no {method!r} maps; these were computed: {', '.join(self.maps)}")
        m = self.maps[method][i]
        if targets.is_label_key(method) and bool(m.isnan().all()):
            raise UsageError(f"image {i} has no {method} map: only misclassified images get one")
        given = self._given_size(i, size)
        if given is None or given[::-1] == tuple(m.shape):
            return m.numpy()
        return resize_maps(m[None], given[::-1], self.signed(method))[0].numpy()

    def picture(self, i: int, size: str = "input") -> np.ndarray:
        """Image ``i``: as the model saw it, (S, S, 3) uint8; ``size="given"``: as the report shows it, its display
        copy (the image itself at its own size, made at most 512 px a side as a run makes it; explanations of an
        older xaibatch, which kept no display copy: the model's input stretched back to the image's size)."""
        i = self._index(i)
        given = self._given_size(i, size)
        if given is not None and self.displays is not None:
            return self.displays[i]
        if self.images is None:
            raise UsageError("these explanations hold no images to draw on (made without explain())")
        from PIL import Image

        pic = np.ascontiguousarray(self.images[i].permute(1, 2, 0).numpy())
        if given is None or given[::-1] == pic.shape[:2]:
            return pic
        return np.asarray(_image(pic).resize(given, Image.BILINEAR))

    def overlay(self, i: int, method: str = "", size: str = "input") -> Any:
        """Image ``i`` with its map of ``method`` (default: the first) over it, drawn as a run draws it
        (:func:`overlay.draw`): a PIL image over the model's input, or with ``size="given"`` over the image's display
        copy (:meth:`picture`): the report's overlay of that map, pixel for pixel, at the image's own size up to
        512 px a side."""
        method = method or next(iter(self.maps))
        m = self.map(i, method)  # at the model's input size: a run resizes that map to its display copy
        return _image(draw(self.picture(i, size), m, self.signed(method))[0])

    def heatmap(self, i: int, method: str = "", size: str = "input") -> Any:
        """Image ``i``'s map of ``method`` (default: the first) in the report's colours alone: a PIL image."""
        from PIL import Image

        method = method or next(iter(self.maps))
        m, signed = self.map(i, method, size), self.signed(method)
        return Image.fromarray(colorize(m if signed else stretch(m), signed))

    def _given_size(self, i: int, size: str) -> tuple[int, int] | None:
        """Image ``i``'s (width, height) as given for ``size="given"``; None for "input" (the model's size)."""
        if size == "input":
            return None
        if size != "given":
            raise UsageError(
                f"size must be 'input' (the model's input size) or 'given' (the image's own), not {size!r}"
            )
        if len(self.given_sizes) != len(self):
            raise UsageError("these explanations do not know the images' own sizes (given_sizes is empty)")
        w, h = self.given_sizes[i]
        return int(w), int(h)

    def _index(self, i: Any) -> int:
        n = len(self)
        try:
            k = operator.index(i)  # ints, numpy's and one-element integer tensors
        except TypeError:
            k = None
        if k is None or isinstance(i, bool):
            raise UsageError(f"an image index is an integer, not {type(i).__name__}")
        if not -n <= k < n:
            raise UsageError(f"image index {k} out of range: {n} images (0..{n - 1})")
        return k % n

    @property
    def _shown(self) -> str:
        """The size the grid and save() draw at: the report's pictures, where each image's display copy is kept;
        else (explanations of an older xaibatch) the model's input, as that version drew them: ``given`` there
        stretches each picture to the image's own size, a phone photo's 12 megapixels a cell."""
        return "given" if self.displays is not None and len(self.given_sizes) == len(self) else "input"

    def _title(self, key: str) -> str:
        title = self.methods[targets.method_of(key)].title
        return f"{title}, true class" if targets.is_label_key(key) else title

    def _has_map(self, i: int, key: str) -> bool:
        return not (targets.is_label_key(key) and not self.misclassified[i])

    # -- looking -------------------------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """A grid of the first images (rows) by method (columns), each picture inline as a data: URI."""
        from jinja2 import Environment

        shown = range(min(len(self), REPR_MAX_IMAGES))
        rows = []
        for i in shown:
            cells = [_data_uri(self.overlay(i, k, self._shown)) if self._has_map(i, k) else None for k in self.maps]
            y = None if self.labels is None else int(self.labels[i])
            p = int(self.preds[i])
            rows.append(
                {
                    "i": i,
                    "input": _data_uri(_image(self.picture(i, self._shown))),
                    "pred": self.class_name(p),
                    "prob": f"{float(self.probs[i, p]):.1%}",
                    "target": self.class_name(int(self.targets[i])),
                    "label": self.class_name(y),
                    "wrong": self.misclassified[i],
                    "cells": cells,
                }
            )
        env = Environment(autoescape=True)
        return env.from_string(_REPR).render(
            x=self,
            heads=[(k, self._title(k)) for k in self.maps],
            rows=rows,
            more=len(self) - len(shown),
            side=layout.THUMB_SIDE,  # the grid's pictures at most this large, as the report's thumbnails
        )

    # -- keeping -------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, overwrite: bool = False, context: Mapping[str, Any] | None = None) -> Path:
        """Write ``folder``: per image ``images/<i>/`` (``input.png`` and per method ``<method>.npy``,
        ``<method>-overlay.png``, ``<method>-heatmap.png``), then ``manifest.json`` last (``context``: any JSON
        you want kept with it). Atomic: written into a temporary folder beside it, renamed into place only when
        complete (a failure leaves nothing). Refuses a non-empty ``folder`` unless ``overwrite`` and it is an
        earlier ``save()``. Returns the folder."""
        given = Path(folder)
        folder = Path(os.path.abspath(given))  # "." and "a/.." name their folder
        extra = _json_context(context)
        if folder == Path(os.getcwd()):  # renamed over, the process's current folder would be a deleted one
            raise UsageError(f"{given} is the current folder; save() needs a folder of its own (a new name)")
        try:
            replace = _check_target(given, overwrite)
            make_dirs(folder.parent)
            with contextlib.ExitStack() as stack:
                tmp = _fresh_dir(folder, "new")
                stack.callback(shutil.rmtree, tmp, ignore_errors=True)
                self._write(tmp, extra)
                _move_into_place(tmp, folder, replace)
        except StorageError:
            raise
        except OSError as e:  # it named the temporary folder ('/sys/.e.new.4ebf41a3.tmp'), not the user's
            raise _save_failed(given, e) from e
        return given

    def _write(self, root: Path, context: Any) -> None:
        width = max(4, len(str(len(self) - 1)))
        images = []
        for i in range(len(self)):
            rel_dir = f"images/{i:0{width}d}"
            atomic_write_bytes(safe_join(root, f"{rel_dir}/input.png"), png_bytes(_image(self.picture(i))))
            if self.displays is not None:
                atomic_write_bytes(safe_join(root, f"{rel_dir}/display.png"), png_bytes(_image(self.displays[i])))
            files = {}
            for key in self.maps:
                if not self._has_map(i, key):
                    continue
                stem = f"{rel_dir}/{layout.method_dir(key)}"
                names = {"npy": f"{stem}.npy", "overlay": f"{stem}-overlay.png", "heatmap": f"{stem}-heatmap.png"}
                save_npy(safe_join(root, names["npy"]), self.map(i, key))
                over = np.asarray(self.overlay(i, key, self._shown))  # encoded as a run's: the same bytes
                atomic_write_bytes(safe_join(root, names["overlay"]), encode_png(over, MAP_PNG_STRATEGY))
                atomic_write_bytes(safe_join(root, names["heatmap"]), png_bytes(self.heatmap(i, key)))
                info = self.info.get(key)
                files[key] = {**names, "info": info[i] if info else None}
            images.append(self._image_record(i, rel_dir, files))
        atomic_write_bytes(safe_join(root, MANIFEST), _dumps(self._manifest(images, context)))

    def _image_record(self, i: int, rel_dir: str, files: dict[str, Any]) -> dict[str, Any]:
        y = None if self.labels is None else int(self.labels[i])
        return {
            "index": i,
            "folder": rel_dir,
            "input": f"{rel_dir}/input.png",
            "display": f"{rel_dir}/display.png" if self.displays is not None else None,
            "given_size": list(self.given_sizes[i]) if self.given_sizes else None,
            "pred": int(self.preds[i]),
            "pred_class": self.class_name(int(self.preds[i])),
            "target": int(self.targets[i]),
            "target_class": self.class_name(int(self.targets[i])),
            "label": y,
            "label_class": self.class_name(y),
            "probs": [float(p) for p in self.probs[i]],  # each float32 exactly (load() gives it back)
            "maps": files,
        }

    def _manifest(self, images: list[dict[str, Any]], context: Any) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "versions": dict(self.versions),
            "model": self.model,
            "classes": list(self.classes) if self.classes is not None else None,
            "layer": self.layer,
            "target": self.target,
            "seed": self.seed,
            "device": self.device,
            "preprocess": self.preprocess.record() if self.preprocess else None,
            "methods": {
                k: {"title": s.title, "signed": s.signed, "settings": dict(s.settings)} for k, s in self.methods.items()
            },
            "maps": list(self.maps),  # the keys, in order (an image lists only the maps it has)
            "context": context,
            "images": images,
        }


def _image(a: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(a)


def _data_uri(image: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(thumbnail(image, layout.THUMB_SIDE))).decode("ascii")


def _dumps(d: dict[str, Any]) -> bytes:
    return (json.dumps(d, indent=1, default=str, allow_nan=False) + "\n").encode()


def _json_context(context: Mapping[str, Any] | None) -> Any:
    if context is None:
        return None
    try:
        return json.loads(json.dumps(dict(context), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise UsageError(f"save(context=...) must be JSON data: {e}") from None


def _save_failed(given: Path, e: OSError) -> StorageError:
    """save()'s OSError as one line naming the folder the user gave; still an OSError with its ``errno``."""
    failed = StorageError(f"save() cannot write {given}: {e.strerror or e}")
    failed.errno = e.errno  # (strerror or filename set would make str() "[Errno 1] ...: path")
    return failed


def _check_target(folder: Path, overwrite: bool) -> bool:
    """Whether ``folder`` holds an earlier save() to replace; UsageError when it must not be written."""
    if folder.is_symlink():
        raise UsageError(f"{folder} is a symbolic link; save() writes only into a real folder")
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    if not any(folder.iterdir()):
        return False
    if not overwrite:
        raise UsageError(f"{folder} is not empty; pass overwrite=True to replace an earlier save()")
    if not _is_bundle(folder / MANIFEST):
        raise UsageError(f"{folder} is not an earlier save() (no xaibatch {MANIFEST}); refusing to replace it")
    return True


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def _move_into_place(tmp: Path, folder: Path, replace: bool) -> None:
    """Rename the complete ``tmp`` to ``folder`` (absent or empty); with ``replace``, the old one goes after."""
    if not replace:
        os.replace(tmp, folder)  # rename(2): onto an empty folder too
        return
    with _aside(folder) as old:
        os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _fresh_dir(folder: Path, kind: str) -> Path:
    """A new empty folder beside ``folder`` with a temporary name (``.<name>.<kind>.<random>.tmp``, the form a
    sweep of temporary files looks for), made with the user's umask (``tempfile.mkdtemp`` makes it private)."""
    for _ in range(100):
        path = folder.parent / f".{folder.name[:32]}.{kind}.{secrets.token_hex(4)}.tmp"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(folder.parent))


@contextlib.contextmanager
def _aside(folder: Path) -> Iterator[Path]:
    """Move ``folder`` to a temporary name beside it; back again when the body raises."""
    old = _fresh_dir(folder, "old")
    os.replace(folder, old)
    try:
        yield old
    except BaseException:
        os.replace(old, folder)
        raise


_REPR = """\
<div class="xaibatch-explanations">
<table style="border-collapse:collapse;text-align:center;font-size:12px">
<tr><th style="text-align:left">image</th><th>input</th>
{%- for k, title in heads %}<th>{{ k }}<br><small>{{ title }}</small></th>{% endfor %}</tr>
{%- for r in rows %}
<tr><td style="text-align:left;vertical-align:top">#{{ r.i }}<br>pred <b>{{ r.pred }}</b> {{ r.prob }}
{%- if r.label is not none %}<br>label {{ r.label }}{% if r.wrong %} &#10007;{% endif %}{% endif %}
{%- if r.target != r.pred %}<br>explains {{ r.target }}{% endif %}</td>
<td><img src="{{ r.input }}" width="{{ side }}" alt="input {{ r.i }}"></td>
{%- for c in r.cells %}<td>{% if c %}<img src="{{ c }}" width="{{ side }}" alt="{{ heads[loop.index0][0] }}">
{%- else %}&mdash;{% endif %}</td>{% endfor %}</tr>
{%- endfor %}
</table>
{%- if more > 0 %}<p>&hellip; and {{ more }} more (<code>.overlay(i, method)</code> shows any)</p>{% endif %}
<p><small>layer {{ x.layer }}; input {{ x.preprocess.image_size if x.preprocess else '' }} px;
target {{ x.target }}</small></p>
</div>
"""
