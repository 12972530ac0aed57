"""Read a folder :meth:`Explanations.save <xaibatch.bundle.Explanations.save>` wrote back into an Explanations.

Every path comes from the manifest and is checked to stay inside the folder (:func:`files.safe_join`); maps are
read with ``allow_pickle=False``. A folder that is not such a save, or one written by a newer schema, is one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import targets
from .bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, Explanations, Frozen, MethodSetting
from .errors import UsageError
from .files import safe_join
from .preprocess import Preprocess


def read_bundle(folder: Path) -> Explanations:
    import torch

    man = _manifest(folder)
    try:
        images = man["images"]
        keys = list(man["maps"])
        n = len(images)
        first = np.stack([_picture(folder, im["input"]) for im in images]) if n else np.zeros((0, 1, 1, 3), np.uint8)
        maps, info = {}, {}
        for key in keys:
            maps[key], info[key] = _read_maps(folder, images, key, first.shape[1:3])
        labels = [im["label"] for im in images]
        return Explanations(
            maps=Frozen(maps),
            probs=torch.tensor([im["probs"] for im in images], dtype=torch.float32),
            preds=torch.tensor([im["pred"] for im in images], dtype=torch.long),
            targets=torch.tensor([im["target"] for im in images], dtype=torch.long),
            info=Frozen(info),
            layer=man["layer"],
            images=torch.from_numpy(first).permute(0, 3, 1, 2).contiguous(),
            classes=None if man["classes"] is None else tuple(man["classes"]),
            labels=None if labels and labels[0] is None else torch.tensor(labels, dtype=torch.long),
            target=man["target"],
            methods=Frozen(
                {
                    k: MethodSetting(m["title"], bool(m["signed"]), Frozen(m["settings"]))
                    for k, m in man["methods"].items()
                }
            ),
            preprocess=Preprocess.from_record(man["preprocess"] or {}),
            given_sizes=tuple(tuple(im["given_size"]) for im in images if im["given_size"]),
            seed=man["seed"],
            device=man["device"],
            model=man["model"],
            versions=Frozen(man["versions"]),
            displays=_displays(folder, images),
        )
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise UsageError(f"{folder}: a damaged save() ({type(e).__name__}: {e})") from None


def _read_maps(folder: Path, images: list[dict[str, Any]], key: str, side: tuple[int, ...]) -> tuple[Any, list[Any]]:
    """(the (N, H, W) float32 tensor of ``key``'s maps, NaN where a label map was not made; each image's info)."""
    import torch

    n = len(images)
    arr = np.full((n, *side), np.nan, dtype=np.float32)
    per: list[Any] = [None] * n
    for i, im in enumerate(images):
        files = im["maps"].get(key)
        if files is None:
            if not targets.is_label_key(key):
                raise UsageError(f"{folder}: image {i} lists no {key!r} map")
            continue
        arr[i] = np.load(_inside(folder, files["npy"]), allow_pickle=False)
        per[i] = files.get("info")
    return torch.from_numpy(arr), per


def _displays(folder: Path, images: list[dict[str, Any]]) -> tuple[np.ndarray, ...] | None:
    """Each image's display copy (``display.png``); None for a save of an older xaibatch, which kept none (its
    pictures are then drawn over the model's input, as that version drew them)."""
    if not images or any(not im.get("display") for im in images):
        return None
    return tuple(_picture(folder, im["display"]) for im in images)


def _manifest(folder: Path) -> dict[str, Any]:
    try:  # "is not a folder save() wrote" sent the user looking inside a folder that is not there
        os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"{folder}: no such folder") from None
    except OSError:
        pass  # unreadable: said below
    try:
        man = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        man = None
    if not isinstance(man, dict) or man.get("schema") != SCHEMA:
        raise UsageError(f"{folder} is not a folder explain()'s save() wrote (no xaibatch {MANIFEST})")
    version = man.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UsageError(f"{folder} was saved by a newer xaibatch (schema {version}); this one reads {SCHEMA_VERSION}")
    return man


def _picture(folder: Path, rel: str) -> np.ndarray:
    from PIL import Image

    with Image.open(_inside(folder, rel), formats=["PNG"]) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _inside(folder: Path, rel: Any) -> Path:
    """``folder / rel`` for a path the manifest names, refused when it would lead outside ``folder``."""
    try:
        return safe_join(folder, rel)
    except UsageError:
        raise UsageError(f"{folder}: the manifest names {rel!r}, outside the folder; refusing to read it") from None
