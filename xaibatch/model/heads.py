"""How a classifier's outputs become class probabilities and a prediction: one-logit heads, the threshold.

A model with a single output ``z`` is read as P(positive) = sigmoid(z). :class:`OneLogitHead` wraps it so
every method sees an ordinary two-class model: its logits are ``[-z/2, +z/2]`` (negative, positive), whose
softmax is exactly ``[1 - sigmoid(z), sigmoid(z)]``. The methods differentiate the target column's logit
(Grad-CAM, guided backprop) or read its softmax probability (LIME), so the positive class gets the gradient
of ``z / 2`` and the negative class that of ``-z / 2``; both CAM methods min-max scale each map, so the
factor 1/2 drops out and the maps are those of ``z`` and ``-z``. (``[0, z]`` would give the same
probabilities but a zero gradient, and so an empty map, for every image predicted negative.) The library
methods (``cam:*``, ``captum:*``) score a class by its logit's value and size, not only its direction (Score-CAM's
softmax over channels, Grad-CAM++'s weights, attributions in logit units), so they read the head through
:func:`library_scores`: ``[-z, z]``, the scores of pytorch-grad-cam's ``BinaryClassifierOutputTarget`` and of
captum's attributions of the one output (negated for the negative class).

A model whose forward already ends in a sigmoid (``torch.sigmoid``, ``nn.Sigmoid``, then at most a
reshape) returns P(positive) itself; :func:`count_outputs` sees that in the graph of its output and the
head reads ``z = logit(p)``, so the probabilities are the model's own and every method differentiates the
logit before the model's sigmoid (``d logit(sigmoid(l)) / dl = 1``), as for a model without it.
Likewise a model ending in a softmax returns its class probabilities: :class:`SoftmaxOutputHead` reads their
logarithm as the logits (``softmax(log p) = p``), so the probabilities and the threshold rule are the model's.

A two-class model predicts the positive class when its probability is at least the threshold
(:class:`Decision`); with more classes the prediction is the most probable class. The probability compared is the
one the manifest stores and predictions.csv shows (:func:`stored`: float64, rounded to ``PROB_DECIMALS``), on the
device and from the manifest alike: a batch, one row re-decided under a new threshold and the CSV's
``p >= threshold`` agree, also at the threshold itself.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ModelError, UsageError, out_of_memory
from ..scan import named_class
from .layers import weights_place

# A probability output is clamped to [eps, 1 - eps] before its logit (|z| <= 13.8): a saturated sigmoid stays finite.
PROBABILITY_EPS = 1e-6
# What a one-logit model's library methods (cam:*, captum:*) explain, in their config: a map made before, of ±z/2,
# has another hash and is recomputed.
ONE_LOGIT_SCORES = "plus-minus-z"
# Probabilities are stored (manifest, predictions.csv) with this many decimals, and decided as stored.
PROB_DECIMALS = 6
# Autograd nodes that only reshape or copy an output: looked through to find the op that made it.
_RESHAPES = (
    "View",
    "UnsafeView",
    "ReshapeAlias",
    "Squeeze",
    "Unsqueeze",
    "Clone",
    "ToCopy",
    "Select",
    "Slice",
    "Expand",
    "Permute",
    "T",
)


class OneLogitHead(nn.Module):
    """Present a one-output model as two logits ``[-z/2, z/2]`` (the positive class in column ``positive``)."""

    num_classes = 2

    def __init__(self, net: nn.Module, positive: int = 1, probability: bool = False) -> None:
        super().__init__()
        self.net = net
        self.positive = positive
        self.probability = probability  # the net returns sigmoid(z) itself: read z = logit(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if self.probability:
            z = torch.logit(z, eps=PROBABILITY_EPS)
        half = z.reshape(z.shape[0], 1) / 2
        return torch.cat([-half, half] if self.positive == 1 else [half, -half], dim=1)


class SoftmaxOutputHead(nn.Module):
    """Present a model that returns softmax probabilities as one that returns logits: ``log(p)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.net(x).clamp_min(torch.finfo(torch.float32).tiny))


class OneLogitScores(nn.Module):
    """A :class:`OneLogitHead` as the reference libraries score its classes: ``[-z, z]`` (twice the head's logits)."""

    def __init__(self, head: OneLogitHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) * 2


def library_scores(module: nn.Module) -> nn.Module:
    """The module the library methods (``cam:*``, ``captum:*``) explain: a one-logit head's classes scored ``-z``
    and ``z`` (:class:`OneLogitScores`), any other module as it is."""
    return OneLogitScores(module) if isinstance(module, OneLogitHead) else module


def one_logit(module: nn.Module) -> bool:
    """Whether ``module`` is a one-logit model read as two classes (its library methods' maps are of ``±z``)."""
    return isinstance(module, OneLogitHead)


def unwrap(module: nn.Module) -> nn.Module:
    """The user's own module (whose layer names ``--target-layer`` uses)."""
    return module.net if isinstance(module, (OneLogitHead, SoftmaxOutputHead)) else module


@dataclass(frozen=True)
class Decision:
    """Two classes: predict ``positive`` when its probability is at least ``threshold``."""

    positive: int
    threshold: float
    positive_name: str
    one_logit: bool
    probability: bool = False  # the one output is the model's own sigmoid, P(positive)

    def predict(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, 2) probabilities -> (B,) long class indices, from the positive class's probability as stored."""
        yes = stored(probs[:, self.positive]) >= self.threshold
        return torch.where(yes, self.positive, 1 - self.positive).long()

    def config(self) -> dict[str, Any]:
        d = {"positive": self.positive_name, "threshold": self.threshold, "one_logit": self.one_logit}
        if self.probability:  # only then: the records of every other run keep their bytes
            d["one_logit_output"] = "probability"
        return d


def stored(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities as the manifest stores them: float64, rounded to ``PROB_DECIMALS`` (Python's ``round``'s values;
    idempotent: a stored value stores as itself). Bit-equal on every device: CUDA divides by a Python number as a
    multiplication by its reciprocal (1 ulp off for a third of the values, measured on an H100), by a tensor exactly."""
    scale = 10.0**PROB_DECIMALS
    return torch.round(probs.double() * scale) / torch.tensor(scale, dtype=torch.float64, device=probs.device)


def predict(probs: torch.Tensor, decision: Decision | None) -> torch.Tensor:
    """Class index per row of (B, K) probabilities: the threshold rule for two classes, else the argmax."""
    return decision.predict(probs) if decision is not None else probs.argmax(1)


def predict_one(probs: Sequence[float], decision: Decision | None) -> int:
    """:func:`predict` for one image's probabilities (a list or a numpy row)."""
    return int(predict(torch.as_tensor([list(map(float, probs))], dtype=torch.float64), decision)[0])


def predict_rows(probs: Any, decision: Decision | None) -> list[int]:
    """:func:`predict_one` of every row of (B, K) probabilities (a numpy array), in one call: the same float64
    comparison, without building a tensor per image (a batch's rows are built on the compute thread)."""
    return predict(torch.from_numpy(np.asarray(probs, dtype=np.float64)), decision).tolist()


@dataclass(frozen=True)
class Outputs:
    """What one forward showed of a model's output: how many values per image, and whether a sigmoid made them."""

    count: int
    probability: bool  # one output that is sigmoid(...) (then at most reshaped): already a probability
    softmax: bool = False  # several outputs that are softmax(...): already the class probabilities


def last_op(out: torch.Tensor) -> str | None:
    """The op that computed ``out``, past reshapes and copies (``"Sigmoid"``, ``"Softmax"``, ...); None: no graph."""
    fn = out.grad_fn
    while fn is not None:
        name = fn.name().rstrip("0123456789")
        op = name[: -len("Backward")] if name.endswith("Backward") else name
        if op not in _RESHAPES or not fn.next_functions:
            return op
        fn = fn.next_functions[0][0]
    return None


def count_outputs(module: nn.Module, input_size: int, what: str) -> Outputs:
    """Run one zero image through ``module``; return its outputs, or say why it cannot be used."""
    try:
        out = _zero_forward(module, input_size)
    except Exception as e:  # chained: a notebook shows the user's own traceback under the one line
        if out_of_memory(e):  # not the model's fault, nor the size's to guess at: said as every out-of-memory is
            raise
        raise forward_failed(module, input_size, what, e) from e
    if not isinstance(out, torch.Tensor) or out.ndim not in (1, 2) or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{what}: returns {shape} for one image; it must return logits of shape (batch, classes) "
            "or (batch, 1) / (batch,) for a one-logit sigmoid head"
        )
    count = 1 if out.ndim == 1 else int(out.shape[1])
    op = last_op(out)
    return Outputs(count, count == 1 and op == "Sigmoid", count > 1 and op == "Softmax")


def _zero_forward(module: nn.Module, input_size: int) -> Any:
    device, dtype = weights_place(module)
    x = torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype)
    x.requires_grad_(True)  # a graph, even of frozen weights, shows the op that made the output
    with torch.enable_grad():
        return module.eval()(x)


OTHER_SIZES = (224, 256)  # the size a failed forward is tried again at: the first that is not the one that failed


def forward_failed(module: nn.Module, input_size: int, what: str, e: Exception) -> ModelError:
    """The one line for a forward that raised ``e`` at ``input_size``: the exception's type, message and where in
    the user's code first; "give the input size it was trained at" only when the size is the likely cause, i.e.
    the forward runs at another size, or fails there in other words (a fixed Linear after a flatten: its shapes
    change with the size). A bug the size does not touch (a Linear that never fits) got the size hint alone."""
    said = f"{type(e).__name__}: {_first_line(e)}"
    text = f"{what}: its forward raised {said}{_where(e)}, on a {input_size}x{input_size} input"
    other = next(s for s in OTHER_SIZES if s != input_size)
    try:
        _zero_forward(module, other)
    except Exception as again:
        if f"{type(again).__name__}: {_first_line(again)}" == said:
            return ModelError(text)
        return ModelError(
            f"{text}; its error changes with the input size: give the input size it was trained at with --image-size"
        )
    return ModelError(f"{text}; it runs at {other}x{other}: give the input size it was trained at with --image-size")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _where(e: BaseException) -> str:
    """`` (FILE, line N, in NAME)``: the deepest frame of ``e``'s traceback outside torch and xaibatch (the user's
    forward, or their model library's), or "" when there is none."""
    skip = (str(Path(torch.__file__).parent) + os.sep, str(Path(__file__).parents[1]) + os.sep)  # not torchvision
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    return f" ({frames[-1].filename}, line {frames[-1].lineno}, in {frames[-1].name})" if frames else ""


def decision_for(
    names: list[str], positive: str | None, threshold: float | None, one_logit: bool, probability: bool = False
) -> Decision | None:
    """The decision rule for these classes (``names`` in the model's output order), or None (more than two classes:
    argmax). The positive class: ``positive``, else a one-logit head's second class (``--classes A,B``: sigmoid(z)
    is P(B); folder names are sorted), else the second in sorted order. ``positive`` names its class as a class
    folder does (``scan.named_class``): exactly, else the one class that differs from it only by case."""
    if len(names) != 2:
        for flag, v in (("--positive-class", positive), ("--threshold", threshold)):
            if v is not None:
                raise UsageError(f"{flag} needs a two-class model; this one has {len(names)} classes {names}")
        return None
    if positive is not None:
        near = named_class(positive, names)
        if len(near) > 1:
            raise UsageError(
                f"--positive-class {positive!r} matches the classes {' and '.join(map(repr, near))} only by case; "
                "give one of them exactly"
            )
        name = near[0] if near else positive
    elif one_logit:  # sigmoid(z) is the second class in output order (as explain() reads it): --classes as given
        name = names[1]
    else:
        name = sorted(names)[1]
    if name not in names:
        raise UsageError(f"--positive-class {name!r} is not one of the classes {', '.join(names)}")
    t = 0.5 if threshold is None else float(threshold)
    if not 0.0 <= t <= 1.0:
        raise UsageError(f"--threshold {t} must be between 0 and 1")
    return Decision(names.index(name), t, name, one_logit, probability)


def wrap(module: nn.Module, outputs: Outputs) -> nn.Module:
    """The module as xaibatch reads it, by its :class:`Outputs`: one logit as two classes (:class:`OneLogitHead`),
    a model's own softmax as logits (:class:`SoftmaxOutputHead`), any other as it is. A run's model
    (:func:`adapt`) and ``explain()``'s module alike."""
    if outputs.count == 1:
        return OneLogitHead(module, probability=outputs.probability).eval()
    if outputs.softmax:
        return SoftmaxOutputHead(module).eval()
    return module


def adapt(model: Any) -> bool:
    """:func:`wrap` a :class:`~xaibatch.model.loading.LoadedModel`'s module, in place; whether it has one logit
    (then read as two classes)."""
    one_logit = model.num_classes == 1
    model.module = wrap(model.module, Outputs(model.num_classes, model.probability, model.softmax))
    if one_logit:
        model.outputs = 2
    return one_logit


def with_positive(module: nn.Module, decision: Decision | None) -> None:
    """Point a one-logit head's sigmoid at the positive class's column."""
    if isinstance(module, OneLogitHead) and decision is not None:
        module.positive = decision.positive


__all__ = [
    "Decision",
    "OneLogitHead",
    "OneLogitScores",
    "Outputs",
    "SoftmaxOutputHead",
    "adapt",
    "count_outputs",
    "decision_for",
    "last_op",
    "library_scores",
    "one_logit",
    "predict",
    "predict_one",
    "predict_rows",
    "stored",
    "unwrap",
    "with_positive",
    "wrap",
]
