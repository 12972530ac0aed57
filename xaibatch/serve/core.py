"""What ``xaibatch serve`` computes, without the web layer: the model loaded once (as ``xaibatch run`` loads it),
uploads decoded with the loader's checks, and batches of requests explained by the run's
:class:`~xaibatch.methods.explainer.Explainer`, so an image's maps equal :func:`xaibatch.explain`'s bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..model import heads
from ..data import DECODE_FORMATS, MAX_PIXELS, decode_errors, decode_pil, display_copy, open_image_file
from ..defaults import LIME_DEFAULTS
from ..errors import EMPTY_FILE, DecodeError, UsageError, outcome
from ..methods import Method, create_method, method_class
from ..methods.base import first_segmenter, options_for
from ..methods.explainer import Explainer
from ..overlay import MAP_PNG_STRATEGY, ZERO_MAP, draw, encode_png
from ..pipeline.options import ModelOptions, RunOptions
from ..report.cards import zero_words
from ..report.detail import colour_ticks
from ..pipeline.prepare import Prepared, prepare
from ..scan import Scan

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # larger uploads get one line, never a decode
MIN_LIME_SAMPLES, MAX_LIME_SAMPLES = 10, 5000  # the slider's range, also enforced for API calls
NATIVE_METHODS = ("gradcam", "guided-gradcam", "lime")


@dataclass
class ServeOptions(ModelOptions):
    """``xaibatch serve``'s options: the model as ``xaibatch run`` takes it (ModelOptions), the page's methods."""

    out: Path
    methods: list[str] = field(default_factory=lambda: list(NATIVE_METHODS))  # offered in the page
    device: str = "auto"
    seed: int = 0
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # LIME's "samples": the slider's start


@dataclass
class Upload:
    """An image as the user sent it: its bytes (what flagging saves), its PIL format and the decoded RGB image."""

    data: bytes
    image_format: str
    image: Image.Image
    sha256: str


@dataclass
class MapPicture:
    method: str
    title: str
    signed: bool
    map: np.ndarray  # (input_size, input_size) float32, as explain() returns it
    overlay_png: bytes
    ticks: list[str]  # under the colour bar, as the report's detail page prints them
    note: str
    faith: dict[str, Any] | None = None  # deletion/insertion AUCs and curves (faithfulness.Scores.rows), on request


@dataclass
class Result:
    upload: Upload
    probs: list[float]
    pred: int
    maps: list[MapPicture]
    seconds: float  # the batch's compute time


def read_upload(path: str | Path, max_bytes: int | None = None) -> Upload:
    """Read and decode an uploaded file with the loader's checks; DecodeError (one line) when it is no image."""
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    f, size = open_image_file(path)  # refuses 0 bytes, FIFOs, devices
    with f:
        if size > max_bytes:
            raise DecodeError(f"refused: {size:,} bytes, over the upload limit of {max_bytes:,}")
        data = f.read(max_bytes + 1)
    return decode_upload(data, max_bytes)


def decode_upload(data: bytes, max_bytes: int | None = None) -> Upload:
    """:func:`read_upload` for bytes in memory."""
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    if not data:
        raise DecodeError(f"{EMPTY_FILE} (0 bytes)")
    if len(data) > max_bytes:
        raise DecodeError(f"refused: over the upload limit of {max_bytes:,} bytes")
    with decode_errors(MAX_PIXELS):
        try:
            with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as im:
                image_format = im.format or ""
        except Image.UnidentifiedImageError:
            image_format = ""  # decode_pil says why, in the loader's words
        image = decode_pil(io.BytesIO(data), MAX_PIXELS)
    return Upload(data, image_format, image, hashlib.sha256(data).hexdigest())


class Service:
    """The model, loaded once, and the methods made from it; one batch at a time (a lock)."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        for m in opts.methods:
            method_class(m)  # an unknown name: UsageError with the close matches, before the model loads
        run_opts = RunOptions(
            input_dir=Path("."),
            out_dir=opts.out,
            methods=list(opts.methods),
            **opts.model_options(),
            device=opts.device,
            seed=opts.seed,
            method_options=opts.method_options,
            workers=0,
        )
        # The run's own loading path; an empty unlabeled scan: the class names come from the model or --classes.
        self.prepared: Prepared = prepare(run_opts, Scan(Path("."), None, [], []))
        self.names = self.prepared.names
        self.decision = self.prepared.model.decision
        self._made: dict[tuple[str, int | None], Method] = {
            (m.name, self._samples_key(m.name, None)): m for m in self.prepared.methods
        }
        self._lock = threading.Lock()
        self._scorer: Any = None

    # -- what the page offers ---------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return self.prepared.model.input_size

    def title(self, name: str) -> str:
        return method_class(name).title

    def rule(self) -> str:
        """How a prediction is made from the probabilities."""
        d = self.decision
        if d is None:
            return "the class with the highest probability"
        head = "one-logit head read as two classes (sigmoid); " if d.one_logit else ""
        if d.probability:
            head = "one output read as two classes (the model's own sigmoid); "
        other = self.names[1 - d.positive]
        return f"{head}{d.positive_name} when its probability is ≥ {d.threshold:g}, else {other}"

    def _samples_key(self, name: str, samples: int | None) -> int | None:
        return None if name != "lime" or samples is None or samples == self.default_lime_samples() else int(samples)

    def default_lime_samples(self) -> int:
        """The samples slider's start: LIME's samples as the methods were made (method_options, else LIME's own)."""
        return int(self.opts.method_options.get("lime", {}).get("samples", LIME_DEFAULTS["samples"]))

    def method(self, name: str, lime_samples: int | None = None) -> Method:
        """The method object (made once per name and LIME sample count), with prepare()'s options."""
        key = (name, self._samples_key(name, lime_samples))
        if key not in self._made:
            cls = method_class(name)
            options = options_for(cls, self.opts.seed, self.opts.method_options.get(name))
            if key[1] is not None:
                options["samples"] = key[1]
            self._made[key] = create_method(name, self.prepared.ctx, **options)
        return self._made[key]

    def scorer(self) -> Any:
        """Deletion and insertion as a run's --faithfulness scores them (the default steps and baseline)."""
        if self._scorer is None:
            from ..evaluation.faithfulness import FaithConfig, Scorer

            ctx = self.prepared.ctx
            self._scorer = Scorer(ctx.forward_model(), FaithConfig(), ctx.preprocess)
        return self._scorer

    # -- explaining -------------------------------------------------------------------------------
    def explain(
        self, uploads: list[Upload], methods: list[str], lime_samples: int | None = None, faithfulness: bool = False
    ) -> list[Result]:
        """Explain ``uploads`` as one batch with ``methods`` (all of them with the same settings); with
        ``faithfulness`` also each map's deletion and insertion curves."""
        if not methods:
            raise UsageError("choose at least one method")
        made = [self.method(m, lime_samples) for m in dict.fromkeys(methods)]
        pre = self.prepared.ctx.preprocess
        x = torch.stack([torch.from_numpy(pre.resize_image(u.image).copy()).permute(2, 0, 1) for u in uploads])
        segmenter = first_segmenter(made)
        segments = None
        if segmenter is not None:  # as explain() and the DataLoader make them: from the model input
            segments = torch.stack(
                [
                    torch.from_numpy(np.ascontiguousarray(segmenter(a.permute(1, 2, 0).numpy()), dtype=np.int64))
                    for a in x
                ]
            )
        explainer = Explainer(
            made, self.prepared.ctx, "pred", scorer=self.scorer() if faithfulness else None, decision=self.decision
        )
        with self._lock:
            t0 = time.perf_counter()
            done = explainer(x, None, segments)  # seeded by each image's pixels, as a run's
            probs = done.probs.cpu()
            maps = {k: v.maps.cpu().numpy() for k, v in done.methods.items()}
            faith = {k: v.faith for k, v in done.methods.items()}
            seconds = time.perf_counter() - t0
        preds = heads.predict(probs, self.decision).tolist()
        results = []
        for j, u in enumerate(uploads):
            display = display_copy(u.image)
            pictures = [
                self._picture(
                    m, maps[m.name][j], display, self.names[int(preds[j])], faith[m.name][j] if faith[m.name] else None
                )
                for m in made
            ]
            results.append(Result(u, probs[j].tolist(), int(preds[j]), pictures, seconds))
        return results

    def _picture(self, m: Method, a: np.ndarray, display: np.ndarray, target: str, faith: dict | None) -> MapPicture:
        signed, superpixels = type(m).signed, type(m).superpixels
        over, scale = draw(display, a, signed)  # a run's pixels and scale for this image and map (overlay.draw)
        if float(np.abs(a).max(initial=0.0)) <= ZERO_MAP:  # no colour: no scale to read, as in the report
            ticks, note = [], zero_words(type(m).title, signed, superpixels)
        else:
            ticks, note = colour_ticks(scale, signed, target, superpixels)
        png = encode_png(over, MAP_PNG_STRATEGY)  # as the run's writer encodes an overlay: the same bytes
        return MapPicture(m.name, type(m).title, signed, a, png, ticks, note, faith)


@dataclass(frozen=True)
class Request:
    upload: Upload | None  # None: one that already failed (the caller makes its line)
    methods: tuple[str, ...]
    lime_samples: int | None = None
    faithfulness: bool = False


def explain_requests(service: Service, requests: list[Request]) -> list[Result | str]:
    """Explain several requests at once: one batch per setting (methods, LIME samples, faithfulness); a failure
    is that request's line, an upload of None an empty string."""
    out: list[Result | str] = ["" for _ in requests]
    groups: dict[tuple[tuple[str, ...], int | None, bool], list[int]] = {}
    for i, r in enumerate(requests):
        if r.upload is not None:
            methods = tuple(dict.fromkeys(r.methods))
            key = (methods, r.lime_samples if "lime" in methods else None, r.faithfulness)
            groups.setdefault(key, []).append(i)
    for (methods, samples, faith), idx in groups.items():
        try:
            results = service.explain([requests[i].upload for i in idx], list(methods), samples, faith)
        except Exception as e:  # one bad request never stops the server: its line (errors.outcome)
            results = [outcome(e, caller="other").line] * len(idx)
        for i, r in zip(idx, results, strict=True):
            out[i] = r
    return out
