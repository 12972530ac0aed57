"""Summary numbers: accuracy, confusion, calibration, and the decision threshold's precision, recall and ROC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..manifest import ImageRow
from .model import CALIBRATION_BINS, CONFUSION_MAX_CLASSES, HISTOGRAM_BINS, Card, ReportData
from .text import fmt_pct, text_on


@dataclass(frozen=True)
class ConfidenceScale:
    """Where a top-class confidence can fall, from chance (1/k) to 1, cut into the histogram's and calibration's bins."""

    lo: float
    span: float

    @classmethod
    def of(cls, k: int, threshold: float | None = None) -> ConfidenceScale:
        """``threshold``: two classes decided by --threshold, whose predicted class's probability can be as low as
        min(t, 1 - t), under chance: from there (a P(FAKE) of 0.35 under --threshold 0.7 was counted in the
        "0.50–0.55" bin, and its bin's mean confidence lay outside its range)."""
        lo = 1.0 / k if k > 1 else 0.0
        if threshold is not None and k == 2:
            lo = min(lo, threshold, 1.0 - threshold)
        return cls(lo, (1.0 - lo) or 1.0)

    def edge(self, i: int, n: int) -> float:
        """The lower edge of bin ``i`` of ``n`` (``i == n``: the top, 1 exactly: lo + span can round below it)."""
        return 1.0 if i == n else self.lo + self.span * i / n

    def bin(self, v: float, n: int) -> int:
        return min(n - 1, max(0, int((v - self.lo) / self.span * n)))

    def histogram(self, values: list[float]) -> list[int]:
        counts = [0] * HISTOGRAM_BINS
        for v in values:
            counts[self.bin(v, HISTOGRAM_BINS)] += 1
        return counts


def add_metrics(data: ReportData, cards: list[Card] | None = None) -> None:
    """Fill the summary's numbers over ``cards`` (all of them by default; data.assemble leaves out the images an
    earlier model predicted): confidences and predicted classes; with labels, accuracy, calibration, per class
    scores and the confusions. ``data.decision`` (decision_summary), when set: its threshold sets the bins."""
    cards, names = data.cards if cards is None else cards, data.class_names
    scale = ConfidenceScale.of(len(names), (data.decision or {}).get("threshold"))
    confs = [c.confidence for c in cards]
    data.mean_confidence = sum(confs) / len(confs) if confs else None
    data.hist_edges = [scale.edge(i, HISTOGRAM_BINS) for i in range(HISTOGRAM_BINS + 1)]
    data.pred_counts = prediction_counts(cards, names)
    many = len(names) > CONFUSION_MAX_CLASSES  # ImageNet's 1000: list only the classes that occur
    if many:
        data.pred_counts = [row for row in data.pred_counts if row[1]]
        data.classes_unlisted = len(names) - len(data.pred_counts)
    if not data.labeled:
        data.hist_series = [("all images", scale.histogram(confs), "#0072B2")]
        return
    scored = [c for c in cards if c.correct is not None]
    data.hist_series = [
        ("correct", scale.histogram([c.confidence for c in scored if c.correct]), "#0072B2"),
        ("misclassified", scale.histogram([c.confidence for c in scored if not c.correct]), "#D55E00"),
    ]
    m = len(scored)
    data.correct = sum(1 for c in scored if c.correct)
    data.wrong = m - data.correct
    data.accuracy = data.correct / m if m else None
    data.calibration, data.ece = calibration(scored, scale)
    conf_m = confusion_matrix(scored, len(names))
    data.per_class = per_class_scores(names, conf_m)
    data.macro = macro_average(data.per_class, m)
    data.confusion_names = names
    if not many:
        data.confusion = data.confusion_shown = confusion_cells(conf_m)
        return
    # the rows of the classes with images or predictions; the matrix over them when they are few. data.confusion
    # stays None: it is over every class, as a --template-dir index.html written before confusion_names labels it
    # (r.class_names[i]); such a page lists the most frequent confusions, as it did
    occur = [i for i, c in enumerate(data.per_class) if c["support"] or c["predicted"]]
    data.per_class = [data.per_class[i] for i in occur]
    data.classes_unlisted = len(names) - len(occur)
    data.top_confusions = top_confusions(names, conf_m)
    if len(occur) <= CONFUSION_MAX_CLASSES:
        data.confusion_names = [names[i] for i in occur]
        data.confusion_shown = confusion_cells([[conf_m[i][j] for j in occur] for i in occur])


def prediction_counts(cards: list[Card], names: list[str]) -> list[tuple[str, int, str]]:
    """Per class: its name, how many images were predicted as it, and their share."""
    k, n = len(names), len(cards)
    counts = [0] * k
    for c in cards:
        if 0 <= c.pred_index < k:
            counts[c.pred_index] += 1
    return [(names[i], counts[i], fmt_pct(counts[i] / n) if n else "–") for i in range(k)]


def calibration(scored: list[Card], scale: ConfidenceScale) -> tuple[list[dict[str, Any]], float | None]:
    """The reliability table (per confidence bin: mean confidence, accuracy, their gap) and the expected
    calibration error (None without labeled images)."""
    n = [0] * CALIBRATION_BINS
    ok = [0] * CALIBRATION_BINS
    conf = [0.0] * CALIBRATION_BINS
    for c in scored:
        b = scale.bin(c.confidence, CALIBRATION_BINS)
        n[b] += 1
        ok[b] += bool(c.correct)
        conf[b] += c.confidence
    m = len(scored)
    ece = 0.0
    rows = []
    # two decimals where they are the edges (chance 1/2, 1/5), else three: 40 classes' first bin, from 0.025, read
    # "0.03–0.12" and held a mean confidence of 2.8 %, outside its printed range
    edges = [scale.edge(b, CALIBRATION_BINS) for b in range(CALIBRATION_BINS + 1)]
    places = 2 if all(abs(round(e, 2) - e) < 1e-9 for e in edges) else 3
    for b in range(CALIBRATION_BINS):
        lo_b, hi_b = edges[b], edges[b + 1]
        row = {
            "lo": lo_b,
            "hi": hi_b,
            "range": f"{lo_b:.{places}f}–{hi_b:.{places}f}",
            "n": n[b],
            "confidence": None,
            "accuracy": None,
            "gap": None,
        }
        if n[b]:
            mc, acc = conf[b] / n[b], ok[b] / n[b]
            row.update(confidence=mc, accuracy=acc, gap=acc - mc)
            ece += n[b] / m * abs(acc - mc)
        rows.append(row)
    return rows, (ece if m else None)


def confusion_matrix(scored: list[Card], k: int) -> list[list[int]]:
    """Counts per (true class, predicted class); images whose label or prediction is no class here are left out."""
    conf_m = [[0] * k for _ in range(k)]
    for c in scored:
        if 0 <= c.label_index < k and 0 <= c.pred_index < k:
            conf_m[c.label_index][c.pred_index] += 1
    return conf_m


def per_class_scores(names: list[str], conf_m: list[list[int]]) -> list[dict[str, Any]]:
    """Per class precision, recall and F1 from the confusion matrix (None where undefined)."""
    k = len(names)
    per = []
    for i in range(k):
        tp = conf_m[i][i]
        support = sum(conf_m[i])
        predicted = sum(conf_m[j][i] for j in range(k))
        p = tp / predicted if predicted else None
        r = tp / support if support else None
        # 2 tp / (support + predicted) is F1 where both are defined, and 0 where one is undefined and the other 0
        # (a class with images that is never predicted): scikit-learn's value with zero_division=0
        f = 2 * tp / (support + predicted) if support + predicted else None
        per.append({"name": names[i], "precision": p, "recall": r, "f1": f, "support": support, "predicted": predicted})
    return per


def macro_average(per: list[dict[str, Any]], support: int) -> dict[str, Any]:
    """The unweighted mean of each score over the classes that have images or predictions, an undefined score
    counted as 0 (scikit-learn's macro average with zero_division=0). Leaving those out made a model that predicts
    one class for everything look as good as its one predicted class."""
    present = [x for x in per if x["support"] or x["predicted"]]

    def mean(key: str) -> float | None:
        return sum(x[key] or 0.0 for x in present) / len(present) if present else None

    return {"precision": mean("precision"), "recall": mean("recall"), "f1": mean("f1"), "support": support}


def confusion_cells(conf_m: list[list[int]]) -> list[list[dict[str, Any]]]:
    """The confusion matrix as table cells, shaded by each true class's share (white to dark blue); a class with no
    images has no shares ("–": its row read "0 (0.0%)" in every column, shares that add up to 0 %)."""
    rows = []
    for i, counts in enumerate(conf_m):
        total = sum(counts)
        row = []
        for j, count in enumerate(counts):
            share = count / total if total else 0.0
            rgb = tuple(round(255 + (t - 255) * share) for t in (8, 48, 107))  # white -> dark blue
            row.append(
                {
                    "n": count,
                    "share": fmt_pct(share) if total else "–",
                    "diag": i == j,
                    "style": f"background-color: rgb{rgb}; color: {text_on(rgb)}",
                }
            )
        rows.append(row)
    return rows


def top_confusions(names: list[str], conf_m: list[list[int]]) -> list[tuple[str, str, int]]:
    """The 50 most frequent (true class, predicted class) mistakes, most frequent first."""
    k = len(names)
    pairs = [(names[i], names[j], conf_m[i][j]) for i in range(k) for j in range(k) if i != j and conf_m[i][j]]
    pairs.sort(key=lambda t: -t[2])
    return pairs[:50]


def decision_words(d: dict[str, Any] | None) -> str:
    if not d:
        return "the most probable class"
    head = "one logit, P(positive) = sigmoid(z); " if d.get("one_logit") else ""
    if d.get("one_logit_output") == "probability":
        head = "one output, P(positive) = the model's own sigmoid; "
    return f"{head}{d['positive']} when P({d['positive']}) ≥ {d['threshold']:g}"


def decision_summary(d: dict[str, Any] | None, names: list[str], images: dict[str, ImageRow]) -> dict[str, Any] | None:
    """Threshold, accuracy, the positive class's precision and recall, and its ROC curve (labeled images)."""
    import numpy as np

    if not d or d.get("positive") not in names or len(names) != 2:
        return None
    pos, t = names.index(d["positive"]), float(d["threshold"])
    out: dict[str, Any] = {
        "positive": d["positive"],
        "negative": names[1 - pos],
        "threshold": t,
        "one_logit": bool(d.get("one_logit")),
        "words": decision_words(d),
    }
    rows = [r for r in images.values() if r.label is not None and 0 <= r.label < 2 and len(r.probs) == 2]
    if not rows:
        return out
    score = np.array([r.probs[pos] for r in rows], dtype=np.float64)
    truth = np.array([r.label == pos for r in rows])
    said = np.array([r.pred == pos for r in rows])
    tp, fp = int((said & truth).sum()), int((said & ~truth).sum())
    fn, tn = int((~said & truth).sum()), int((~said & ~truth).sum())
    out.update(
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        n=len(rows),
        accuracy=(tp + tn) / len(rows),
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / (tp + fn) if tp + fn else None,
        fpr=fp / (fp + tn) if fp + tn else None,
    )
    if truth.all() or not truth.any():
        return out  # a ROC curve needs both classes
    order = np.argsort(-score, kind="stable")
    s, y = score[order], truth[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # one point per distinct score
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    fpr = np.r_[0.0, fps / (~truth).sum()]
    tpr = np.r_[0.0, tps / truth.sum()]
    out.update(
        roc_fpr=[round(float(v), 6) for v in fpr],
        roc_tpr=[round(float(v), 6) for v in tpr],
        auc=float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
        point=(fp / (fp + tn), tp / (tp + fn)),
    )
    return out
