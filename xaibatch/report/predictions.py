"""predictions.csv: one row per image, written before the report that links to it."""

from __future__ import annotations

from typing import Callable


from ..manifest import ImageRow, MapRow


def predictions_csv(
    names: list[str],
    rows: dict[str, ImageRow],
    maps: dict[tuple[str, str], MapRow],
    earlier: Callable[[str], bool],
) -> bytes:
    """predictions.csv's bytes (the report computes them while it still holds the manifest's rows); ``earlier``:
    whether a predict hash is an earlier model's than the last run's (History.earlier)."""
    import csv
    import io

    scored = sorted({m for (_rel, m), row in maps.items() if row.deletion is not None})  # faithfulness columns
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_header(names, scored))
    for rel in sorted(rows):
        w.writerow(_row(rel, rows[rel], names, scored, maps, earlier))
    return buf.getvalue().encode()


def _header(names: list[str], scored: list[str]) -> list[str]:
    """The columns: the image, its label and prediction, a probability per class, the faithfulness scores, and last
    (where a column added later cannot move the others) the model that predicted it: its predict hash (the runs
    table's) and whether that is an earlier model's than the last run's."""
    return [
        "path",
        "label",
        "pred",
        "confidence",
        "correct",
        *[csv_cell(f"p_{n}") for n in names],
        *[f"{kind}_{m}" for m in scored for kind in ("deletion", "insertion")],
        "model_hash",
        "earlier_model",
    ]


def _row(
    rel: str,
    r: ImageRow,
    names: list[str],
    scored: list[str],
    maps: dict[tuple[str, str], MapRow],
    earlier: Callable[[str], bool],
) -> list:
    """One image's cells, as :func:`_header` names them."""
    label = names[r.label] if r.label is not None and r.label < len(names) else ""
    correct = "" if r.label is None else int(r.label == r.pred)
    faith = []
    for m in scored:
        row = maps.get((rel, m))
        faith += [
            "" if row is None or v is None else f"{v:.6f}"
            for v in ((row.deletion, row.insertion) if row else (None, None))
        ]
    return [
        csv_cell(rel),
        csv_cell(label),
        csv_cell(names[r.pred]),
        f"{r.confidence:.6f}",
        correct,
        *[f"{v:.6f}" for v in r.probs],
        *faith,
        csv_cell(r.predict_hash),
        int(earlier(r.predict_hash)),
    ]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """Quote a text cell a spreadsheet would run as a formula (``=HYPERLINK(...)`` as a file name)."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text
