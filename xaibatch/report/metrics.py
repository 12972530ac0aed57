"""Summary numbers: accuracy, confusion, calibration, and the decision threshold's precision, recall and ROC."""

from __future__ import annotations

from typing import Any


from ..manifest import ImageRow
from .model import CALIBRATION_BINS, CONFUSION_MAX_CLASSES, HISTOGRAM_BINS, ReportData
from .text import fmt_pct, text_on


def add_metrics(data: ReportData) -> None:
    cards = data.cards
    k = len(data.class_names)
    confs = [c.confidence for c in cards]
    data.mean_confidence = sum(confs) / len(confs) if confs else None
    lo = 1.0 / k if k > 1 else 0.0
    span = (1.0 - lo) or 1.0

    def bin_of(v: float, n: int) -> int:
        return min(n - 1, max(0, int((v - lo) / span * n)))

    data.hist_edges = [lo + span * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    pred_counts = [0] * k
    for c in cards:
        if 0 <= c.pred_index < k:
            pred_counts[c.pred_index] += 1
    n = len(cards)
    data.pred_counts = [
        (data.class_names[i], pred_counts[i], fmt_pct(pred_counts[i] / n) if n else "–") for i in range(k)
    ]
    scored = [c for c in cards if c.correct is not None]
    if not data.labeled:
        counts = [0] * HISTOGRAM_BINS
        for v in confs:
            counts[bin_of(v, HISTOGRAM_BINS)] += 1
        data.hist_series = [("all images", counts, "#0072B2")]
        return
    right_h = [0] * HISTOGRAM_BINS
    wrong_h = [0] * HISTOGRAM_BINS
    cal_n = [0] * CALIBRATION_BINS
    cal_ok = [0] * CALIBRATION_BINS
    cal_conf = [0.0] * CALIBRATION_BINS
    conf_m = [[0] * k for _ in range(k)]
    for c in scored:
        (right_h if c.correct else wrong_h)[bin_of(c.confidence, HISTOGRAM_BINS)] += 1
        b = bin_of(c.confidence, CALIBRATION_BINS)
        cal_n[b] += 1
        cal_ok[b] += bool(c.correct)
        cal_conf[b] += c.confidence
        if 0 <= c.label_index < k and 0 <= c.pred_index < k:
            conf_m[c.label_index][c.pred_index] += 1
    data.hist_series = [("correct", right_h, "#0072B2"), ("misclassified", wrong_h, "#D55E00")]
    m = len(scored)
    data.correct = sum(1 for c in scored if c.correct)
    data.wrong = m - data.correct
    data.accuracy = data.correct / m if m else None
    ece = 0.0
    data.calibration = []
    for b in range(CALIBRATION_BINS):
        lo_b, hi_b = lo + span * b / CALIBRATION_BINS, lo + span * (b + 1) / CALIBRATION_BINS
        row = {
            "lo": lo_b,
            "hi": hi_b,
            "range": f"{lo_b:.2f}–{hi_b:.2f}",
            "n": cal_n[b],
            "confidence": None,
            "accuracy": None,
            "gap": None,
        }
        if cal_n[b]:
            mc, acc = cal_conf[b] / cal_n[b], cal_ok[b] / cal_n[b]
            row.update(confidence=mc, accuracy=acc, gap=acc - mc)
            ece += cal_n[b] / m * abs(acc - mc)
        data.calibration.append(row)
    data.ece = ece if m else None
    # per class precision / recall / F1 from the confusion matrix
    per = []
    for i in range(k):
        tp = conf_m[i][i]
        support = sum(conf_m[i])
        predicted = sum(conf_m[j][i] for j in range(k))
        p = tp / predicted if predicted else None
        r = tp / support if support else None
        f = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
        per.append(
            {
                "name": data.class_names[i],
                "precision": p,
                "recall": r,
                "f1": f,
                "support": support,
                "predicted": predicted,
            }
        )

    def mean(key: str) -> float | None:
        vals = [x[key] for x in per if x[key] is not None]
        return sum(vals) / len(vals) if vals else None

    data.per_class = per
    data.macro = {"precision": mean("precision"), "recall": mean("recall"), "f1": mean("f1"), "support": m}
    if k <= CONFUSION_MAX_CLASSES:
        rows = []
        for i in range(k):
            total = sum(conf_m[i]) or 1
            row = []
            for j in range(k):
                share = conf_m[i][j] / total
                rgb = tuple(round(255 + (t - 255) * share) for t in (8, 48, 107))  # white -> dark blue
                row.append(
                    {
                        "n": conf_m[i][j],
                        "share": fmt_pct(share),
                        "diag": i == j,
                        "style": f"background-color: rgb{rgb}; color: {text_on(rgb)}",
                    }
                )
            rows.append(row)
        data.confusion = rows
    else:
        pairs = [
            (data.class_names[i], data.class_names[j], conf_m[i][j])
            for i in range(k)
            for j in range(k)
            if i != j and conf_m[i][j]
        ]
        pairs.sort(key=lambda t: -t[2])
        data.top_confusions = pairs[:50]


def decision_words(d: dict[str, Any] | None) -> str:
    if not d:
        return "the most probable class"
    head = "one logit, P(positive) = sigmoid(z); " if d.get("one_logit") else ""
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
