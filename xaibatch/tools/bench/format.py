"""The bench's tables, plain or markdown."""

from __future__ import annotations

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
    table = [(r.family, r.impl, str(r.images), f"{r.seconds:.3g}", f"{r.rate:.1f}", vs(r)) for r in res.rows]
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
    header = res.header + (["CUT OFF by a signal: only the rows measured before it are shown"] if res.cut_off else [])
    if markdown:
        lines += [f"{h}  " for h in header] + [""]
        lines += md(cols, table, right=(2, 3, 4, 5)) + [""]
        lines += [note, ""] if note else []
        lines += md(rcols, rtable, right=(1,))
    else:
        lines += header + [""]
        lines += plain(cols, table, right=(2, 3, 4, 5)) + [""]
        lines += [note, ""] if note else []
        lines += plain(rcols, rtable, right=(1,))
    return "\n".join(lines)


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
