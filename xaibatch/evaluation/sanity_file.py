"""``sanity.json``, the model-randomization check's result: :class:`SanityResult` and its :class:`SanityCurve`s, no
torch (the report reads it; :mod:`.sanity` computes and writes it).

The file is written as every xaibatch wrote it (the same keys, in the same order, ``json.dumps(..., indent=1)``) and
any older one reads: version 1 curves have no ``scored`` and no ``hash``, a curve kept from an earlier check may lack
``checked``, and a hand-written file may name no ``version`` or ``created``; what is missing is None. A curve's keys
this xaibatch does not know are kept (:attr:`SanityCurve.extra`) and written back after the known ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout

FILENAME = layout.SANITY
VERSION = 2  # 2: correlations by their size, empty maps left out (1's curves are not kept: sanity.earlier_curves)
SAME_CHECK = ("checkpoint_sha256", "images", "seed", "input_dir")  # what a kept curve's check must share


@dataclass
class SanityCurve:
    """One method's curve: its maps' similarity to the original ones after each randomization step."""

    method: str
    steps: list[str]  # "original", then the cumulatively randomized stages ("fc", "+layer4", ...)
    rank: list[float | None]  # mean |rank correlation| over the scored images, per step; None: none scored
    ssim: list[float | None]
    passed: bool
    verdict: str  # the line `xaibatch sanity` prints and the report shows
    scored: int | None = None  # images whose original map is not constant (None: version 1)
    checked: float | None = None  # when (time.time()); an earlier check's for a kept curve (None: the file's created)
    hash: str | None = None  # the checked maps' config hash (None: an older xaibatch's curve, or no record of it)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this xaibatch does not know, written back as read
    # The report's words on the curve (report/trust.py), never in the file: when a curve kept from an earlier check
    # was checked, in words (None: this check's); whether its method's maps were recomputed since. Templates read
    # them as ``c.earlier`` and ``c.stale`` (a user's index.html of an earlier release included).
    earlier: str | None = field(default=None, compare=False)
    stale: bool = field(default=False, compare=False)

    REQUIRED = ("method", "steps", "rank", "ssim", "passed", "verdict")  # what the page and figure read of a curve

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "steps": self.steps, "rank": self.rank, "ssim": self.ssim}
        if self.scored is not None:
            out["scored"] = self.scored
        out |= {"passed": self.passed, "verdict": self.verdict}
        if self.checked is not None:
            out["checked"] = self.checked
        if self.hash is not None:
            out["hash"] = self.hash
        return out | self.extra

    @classmethod
    def from_dict(cls, d: Any) -> SanityCurve:
        """A curve as the file holds it; ValueError when it lacks what the page reads, or is no curve."""
        if not isinstance(d, dict):
            raise ValueError(f"a curve that is no object: {d!r:.40}")
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise ValueError(f"a curve without {missing}")
        if not (isinstance(d["steps"], list) and isinstance(d["rank"], list) and isinstance(d["ssim"], list)):
            raise ValueError("a curve whose steps, rank or ssim is no list")
        if not isinstance(d["method"], str) or not isinstance(d["verdict"], str):
            raise ValueError("a curve whose method or verdict is no string")
        if not isinstance(d.get("checked", 0), (int, float)) or not isinstance(d.get("hash", ""), str):
            raise ValueError("a curve whose checked is no time or whose hash is no string")
        known = {*cls.REQUIRED, "scored", "checked", "hash"}
        return cls(
            d["method"],
            d["steps"],
            d["rank"],
            d["ssim"],
            d["passed"],
            d["verdict"],
            d.get("scored"),
            d.get("checked"),
            d.get("hash"),
            {k: v for k, v in d.items() if k not in known},
        )


@dataclass
class SanityResult:
    """A check's result: the sample it ran on, the model it randomized and each method's curve (this check's, then
    those kept from the folder's previous check)."""

    curves: list[SanityCurve]
    version: int | None = VERSION
    created: float | None = None  # time.time() when this check's curves were computed
    seconds: float | None = None
    images: int | None = None  # the sampled images that could be read
    seed: int | None = None
    checkpoint_sha256: str | None = None
    input_dir: str | None = None

    def to_json(self) -> str:
        head = {
            "version": self.version,
            "created": self.created,
            "seconds": self.seconds,
            "images": self.images,
            "seed": self.seed,
            "checkpoint_sha256": self.checkpoint_sha256,
            "input_dir": self.input_dir,
        }
        return json.dumps({**head, "curves": [c.to_dict() for c in self.curves]}, indent=1)

    @classmethod
    def from_json(cls, text: str, skip_bad_curves: bool = False) -> SanityResult:
        """The file's result; ValueError when it is no result (or, unless ``skip_bad_curves``, a curve is none)."""
        d = json.loads(text)
        if not isinstance(d, dict) or not isinstance(d.get("curves"), list):
            raise ValueError("no list of curves")
        curves = []
        for c in d["curves"]:
            try:
                curves.append(SanityCurve.from_dict(c))
            except ValueError:
                if not skip_bad_curves:
                    raise
        keys = ("version", "created", "seconds", "images", "seed", "checkpoint_sha256", "input_dir")
        return cls(curves, **{k: d.get(k) for k in keys})

    @classmethod
    def read(cls, out: Path, skip_bad_curves: bool = False) -> SanityResult | None:
        """``out``'s sanity.json; None when there is none or it cannot be read as one."""
        try:
            return cls.from_json((Path(out) / FILENAME).read_text("utf-8"), skip_bad_curves)
        except (OSError, ValueError):  # json's errors (UnicodeDecodeError too) are ValueErrors
            return None

    def same_check(self, other: SanityResult) -> bool:
        """Whether ``other`` checked the same model, sample size, seed and input folder in this file version."""
        return self.version == other.version == VERSION and all(
            getattr(self, k) == getattr(other, k) for k in SAME_CHECK
        )
