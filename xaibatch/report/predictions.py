"""predictions.csv: one row per image, written before the report that links to it."""

from __future__ import annotations

from typing import Callable


from .. import targets
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
    keys = sorted({m for _rel, m in maps if not targets.is_label_key(m)})  # a map path column per method
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_header(names, scored, keys))
    for rel in sorted(rows):
        w.writerow(_row(rel, rows[rel], names, scored, keys, maps, earlier))
    return buf.getvalue().encode()


def _header(names: list[str], scored: list[str], keys: list[str]) -> list[str]:
    """The columns: the image, its label and prediction, a probability per class, the faithfulness scores, the
    model that predicted it: its predict hash (the runs table's) and whether that is an earlier model's than the
    last run's, and last (where a column added later cannot move the others) each map's ``.npy`` path relative to
    the folder (``npy_<method>``; empty where the image has no such map): its name cannot be derived from the
    image's path alone (layout.assign_stems). The true-class maps of ``--target pred,label`` have none: the file is
    a ``--target pred`` run's (``xaibatch.open_results`` reads them)."""
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
        *[csv_cell(f"npy_{k}") for k in keys],
    ]


def _row(
    rel: str,
    r: ImageRow,
    names: list[str],
    scored: list[str],
    keys: list[str],
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
        *[csv_cell(row.npy) if (row := maps.get((rel, k))) else "" for k in keys],
    ]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """Quote a text cell a spreadsheet would run as a formula (``=HYPERLINK(...)`` as a file name)."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text
