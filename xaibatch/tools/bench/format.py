"""The bench's tables, plain or markdown."""

from __future__ import annotations

from ...evaluation.faithfulness import CHANCE_SAMPLE
from .options import BenchResult, Row


def format_result(res: BenchResult, markdown: bool = False) -> str:
    lines: list[str] = []
    ref: dict[str, Row] = {}
    for r in res.rows:
        if r.kind == "xaibatch":
            ref[r.family] = r

    def vs(r: Row) -> str:
        ours = ref.get(r.family)
        if ours is None or r is ours or r.kind == "limit":
            return ""
        return f"{ours.rate / r.rate:.2f}x"

    cols = ("method", "implementation", "images", "seconds", "images/s", "xaibatch e2e vs this")
    table = [(r.family, r.impl, str(r.images), f"{r.seconds:.3g}", _rate(r.rate), vs(r)) for r in res.rows]
    rcols = ("ratio", "value", "target", "met")
    rtable = []
    for q in res.ratios:
        val = f"{q.value:.1f}%" if q.unit == "%" else f"{q.value:.2f}x"
        tgt = "" if q.target is None else (f"{'<=' if q.at_most else '>='} {q.target:g}{'%' if q.unit == '%' else 'x'}")
        met = "" if q.met is None else ("yes" if q.met else "NO")
        rtable.append((q.name, val, tgt, met))
    fixed = [
        f"{r.family} {r.extra['fixed']['start-up']:.2f}s + {r.extra['fixed']['report']:.2f}s"
        for r in res.rows
        if r.kind == "xaibatch" and "fixed" in r.extra
    ]
    note = (
        (
            "End to end = the runs' compute phase (read, decode, explain, write, manifest). Not counted: "
            "start-up (model load, scan, plan) + report, per run: " + ", ".join(fixed) + "."
        )
        if fixed
        else ""
    )
    if res.budget > 0:
        note += (" " if note else "") + (
            "Each rate is over its row's images column: a run's rate over fewer images carries more of its "
            "pipeline's fill (the first batch waits for the loader's workers)"
            + (
                f", and {CHANCE_SAMPLE} of the faithfulness row's images are scored twice more (the chance line)."
                if any(r.kind == "xaibatch-faith" for r in res.rows)
                else "."
            )
        )
    if res.budget > 0 and res.wall - res.budget >= 1:  # not the moments the tables and the clean-up take
        note += (" " if note else "") + (
            f"The bench ran {res.wall - res.budget:.0f} s past its {res.budget:g} s budget: every row is measured "
            "once, over at least one batch (one image for LIME and the per-image peers), even when the time is spent."
        )
    header = res.header + (["CUT OFF by a signal: only the rows measured before it are shown"] if res.cut_off else [])
    tcols, ttable = spent_table(res)
    render = md if markdown else plain
    lines += [f"{h}  " for h in header] if markdown else header
    lines += [""] + render(cols, table, right=(2, 3, 4, 5)) + [""]
    lines += [note, ""] if note else []
    lines += render(rcols, rtable, right=(1,)) + [""]
    lines += render(tcols, ttable, right=(1, 2))
    return "\n".join(lines)


def _rate(rate: float) -> str:
    """Images per second: one decimal, and three significant digits below 10 (LIME at 224 px on a CPU explains
    0.02 images/s, which one decimal printed as 0.0)."""
    return f"{rate:.1f}" if rate >= 10 else f"{rate:.3g}"


def spent_table(res: BenchResult) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Where the bench's wall time went: the parts before the rows, then each row's warm-up and rounds."""
    cols = ("where the time went", "wall s", "of it warm-up s")
    table = [(what, f"{s:.1f}", "") for what, s in res.spent]
    table += [(f"{r.family}: {r.impl}", f"{r.warm_wall + r.rounds_wall:.1f}", f"{r.warm_wall:.1f}") for r in res.rows]
    budget = f" (budget {res.budget:g} s)" if res.budget > 0 else ""
    table.append((f"total, from the command's start{budget}", f"{res.wall:.1f}", ""))
    return cols, table


def md(cols, table, right=()) -> list[str]:
    out = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(cols))) + "|",
    ]
    out += ["| " + " | ".join(row) + " |" for row in table]
    return out


def plain(cols, table, right=()) -> list[str]:
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(cols)]

    def fmt(row):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))

    return [fmt(cols), "  ".join("-" * w for w in widths)] + [fmt(row) for row in table]
