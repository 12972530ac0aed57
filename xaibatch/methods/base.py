"""The interface every explanation method implements, and the registry the CLI reads.

A method gets one :class:`Batch` (the model input on the device, the class to
explain per image, and what the shared forward pass already computed) and
returns one map per image at the model's input size. Everything else (reading
files, resizing to the original size, writing, the manifest) is the pipeline's.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch

from ..method_specs import check_option_names, unknown_method
from ..model.layers import TargetLayer
from ..preprocess import Preprocess


# How random methods (LIME, captum's GradientShap and NoiseTunnel) seed each image; in their maps' hashes, so maps
# seeded by an earlier rule (a run's by the image's path, explain()'s by its position) are recomputed once.
IMAGE_SEEDS = "pixels"


def image_seed(text: str) -> int:
    """A 32-bit seed from a string (the chance map's, from the image's sha256: faithfulness.chance_seed)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def pixel_seeds(x_uint8: torch.Tensor) -> list[int]:
    """One seed per image of a (B, 3, S, S) uint8 batch, from its pixels as the model gets them: a function of the
    image alone, never of its path, its name, its place in a batch or folder, or the batch size; so a run, a
    resumed run, ``--engine ray``, explain() and serve draw the same samples for the same picture. Methods mix in
    their own seed (--seed)."""
    arr = x_uint8.detach().to("cpu", torch.uint8).contiguous().numpy()
    shape = np.asarray(arr.shape[1:], dtype="<i8").tobytes()
    return [int.from_bytes(hashlib.sha256(shape + a.tobytes()).digest()[:4], "little") for a in arr]


def uses_seeds(methods: Iterable[Method]) -> bool:
    """Whether any of ``methods`` draws random numbers per image (and so needs :func:`pixel_seeds`)."""
    return any(m.takes_seed for m in methods)


@dataclass
class ModelContext:
    """What a method may know about the model it explains."""

    model: torch.nn.Module
    layer: TargetLayer | None  # None: no method of the run needs a layer (build_methods, needs_layer)
    preprocess: Preprocess  # input size, mean, std: normalizing and black baselines go through it
    device: torch.device
    _forward_only: torch.nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def input_size(self) -> int:
        return self.preprocess.image_size

    def forward_model(self) -> torch.nn.Module:
        """``model`` for forwards without gradient whose outputs are not stored (LIME's perturbed images,
        faithfulness's curves): eval-mode BatchNorm folded into the convolution before it where that is exact
        (model/fold.py: the same numbers to float rounding; ``model`` itself when nothing folds). Built on first
        use, once per context (a run's, an explain() call's, a sanity step's: ``replace`` starts it afresh). Never
        for the prediction pass or the gradient methods: their hooks and layer names are ``model``'s."""
        if self._forward_only is None:
            try:  # fold.py watches the probe through torch's dispatch modes (torch.utils._python_dispatch)
                from ..model.fold import fold_batchnorm
            except ImportError:  # a torch without them: the model as it is, as for anything fold.py cannot tell
                self._forward_only = self.model
                return self.model
            param = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
            dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
            size = self.preprocess.image_size
            probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device, dtype)
            self._forward_only = fold_batchnorm(self.model, probe)
        return self._forward_only


@dataclass
class Batch:
    """One batch as the methods see it; ``cache`` lets methods share work."""

    x: torch.Tensor  # (B, 3, H, W) normalized model input, on the device
    targets: torch.Tensor  # (B,) long: the class each map explains
    logits: torch.Tensor  # (B, K) from the shared forward pass
    # target layer output, as (B, C, h, w), in the graph of ``logits``; that graph starts there (layers.py
    # forward_from_layer): ``logits`` has no gradient with respect to ``x`` or any parameter
    activations: torch.Tensor | None = None
    segments: torch.Tensor | None = None  # (B, H, W) long superpixel labels, when a method asked for them
    seeds: list[int] | None = None  # one seed per image (pixel_seeds: from its pixels), stable across runs
    cache: dict[str, Any] = field(default_factory=dict)
    should_stop: Callable[[], bool] | None = None  # a long method polls this per model sub-batch
    on_progress: Callable[[int, int], None] | None = None  # (done, total) units of this batch's work

    def progress(self, done: int, total: int) -> None:
        """Report progress within this batch, then raise :class:`StopRequested` if a stop was asked for."""
        if self.on_progress is not None:
            self.on_progress(done, total)
        if self.should_stop is not None and self.should_stop():
            raise StopRequested


class StopRequested(Exception):
    """A method saw ``Batch.should_stop()`` mid-batch: the batch is abandoned (not saved; the next run redoes it)."""


@dataclass
class Explanation:
    maps: torch.Tensor  # (B, H, W) float32 at the model's input size
    info: list[dict[str, Any]] | None = None  # per-image facts worth recording (e.g. segment count)


class Method:
    """Base class: subclasses set ``name`` and implement :meth:`explain`."""

    name: ClassVar[str]
    title: ClassVar[str]  # shown in the report
    signed: ClassVar[bool] = False  # maps in [-1, 1]-ish with meaning in the sign (LIME) instead of [0, 1]
    # signed maps: one value per superpixel, its effect on the probability (LIME), not per-pixel logit attributions
    superpixels: ClassVar[bool] = False
    needs_activations: ClassVar[bool] = False  # wants the target layer captured in the shared forward
    takes_seed: ClassVar[bool] = False  # accepts a ``seed`` option (the run's --seed unless given)
    needs_layer: ClassVar[bool] = False  # reads the target layer itself (library CAMs), without the shared capture
    library: ClassVar[str] = "xaibatch"  # whose implementation computes the maps
    batching: ClassVar[str] = "batch"  # "batch", or how it loops ("per image", ...), for ``xaibatch methods``
    defaults: ClassVar[dict[str, Any]] = {}  # every option it takes, with its default
    summary: ClassVar[str] = ""  # when to use it, one line

    def __init__(self, ctx: ModelContext, **options: Any) -> None:
        self.ctx = ctx
        self.options = options

    def config(self) -> dict[str, Any]:
        """Everything that changes this method's maps; goes into the configuration hash."""
        return dict(self.options)

    def estimate(self, n_images: int) -> str | None:
        """A one-line cost estimate for ``n_images`` images, printed at the start when the method is slow."""
        return None

    def segmenter(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """A picklable function run in DataLoader workers on each (H, W, 3) uint8 input image."""
        return None

    def explain(self, batch: Batch) -> Explanation:  # pragma: no cover - interface
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class Family:
    """Names resolved on lookup rather than listed (``captum:NoiseTunnel.<method>``): ``prefix`` + anything."""

    prefix: str
    resolve: Callable[[str], type[Method] | None]  # the full name -> its class, or None when it names nothing
    pattern: str  # how the names look, for listings (``captum:NoiseTunnel.<method>``)
    example: type[Method]  # one resolved member: library, batching, signed and summary stand for the family
    title: str
    options: dict[str, Any]  # the options every member takes, with defaults


FAMILIES: list[Family] = []


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to ``xaibatch run --method``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def register_family(family: Family) -> Family:
    """Make every name ``family.resolve`` accepts available to ``--method``."""
    FAMILIES.append(family)
    return family


def method_class(name: str) -> type[Method]:
    """Return the class a method name stands for; an unknown name lists the close matches."""
    cls = METHODS.get(name)
    if cls is not None:
        return cls
    for fam in FAMILIES:
        if name.startswith(fam.prefix) and (cls := fam.resolve(name)) is not None:
            return cls
    raise unknown_method(name, list(METHODS) + [f.pattern for f in FAMILIES])


def option_names(cls: type[Method]) -> set[str]:
    """Every option ``cls`` takes: its defaults' names, and ``seed`` when it takes one."""
    return set(cls.defaults) | ({"seed"} if cls.takes_seed else set())


def check_options(cls: type[Method], options: dict[str, Any]) -> None:
    """Raise a one-line UsageError for an option ``cls`` does not take."""
    check_option_names(cls.name, option_names(cls), options)


def options_for(cls: type[Method], seed: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options ``cls`` is made with: the run's ``seed`` when it takes one, then the options given (a ``seed``
    among them wins). Seed first: the order is the configuration hash's."""
    return {**({"seed": seed} if cls.takes_seed else {}), **(given or {})}


def needs_layer(classes: Iterable[type[Method]], layer_name: str | None = None) -> bool:
    """Whether the CAM layer must be found: a method reads it, or the user named one (then it is checked)."""
    return layer_name is not None or any(c.needs_activations or c.needs_layer for c in classes)


def first_segmenter(methods: Iterable[Method]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The superpixel function the images are cut with: the first method's that has one (every method of a batch
    sees the same segments)."""
    return next((s for m in methods if (s := m.segmenter()) is not None), None)


def create_method(name: str, ctx: ModelContext, **options: Any) -> Method:
    return method_class(name)(ctx, **options)


def build_methods(
    names: Iterable[str],
    model: torch.nn.Module,
    preprocess: Preprocess,
    device: torch.device,
    layer_name: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
) -> tuple[ModelContext, list[Method]]:
    """The context every method of a run (or an explain() call, or serve) shares and the methods made in it, each
    with :func:`options_for`; the CAM layer of ``model`` (a wrapped head, read through it) is looked for only when
    :func:`needs_layer`."""
    from ..model.heads import unwrap
    from ..model.layers import find_target_layer

    names = list(names)
    classes = {m: method_class(m) for m in names}
    layer = None
    if needs_layer(classes.values(), layer_name):
        layer = find_target_layer(unwrap(model), preprocess.image_size, layer_name)
    ctx = ModelContext(model=model, layer=layer, preprocess=preprocess, device=device)
    return ctx, [create_method(m, ctx, **options_for(classes[m], seed, (options or {}).get(m))) for m in names]


def normalize_per_image(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min-max scale each map of a (B, H, W) batch to [0, 1], as pytorch-grad-cam does."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    flat = flat - lo
    hi = flat.max(dim=1, keepdim=True).values
    return (flat / (hi + eps)).view_as(maps)


@dataclass(frozen=True)
class MethodListing:
    """One row of ``xaibatch methods``."""

    name: str
    title: str
    library: str
    batching: str
    signed: bool
    options: dict[str, Any]
    summary: str


def list_methods() -> list[MethodListing]:
    """Every registered method, then every family, as plain rows (importing no attribution library)."""
    rows = []
    for name, cls in METHODS.items():
        opts = {**cls.defaults, **({"seed": 0} if cls.takes_seed and "seed" not in cls.defaults else {})}
        rows.append(MethodListing(name, cls.title, cls.library, cls.batching, cls.signed, opts, cls.summary))
    for fam in FAMILIES:
        cls = fam.example
        rows.append(
            MethodListing(fam.pattern, fam.title, cls.library, cls.batching, cls.signed, dict(fam.options), cls.summary)
        )
    return rows
