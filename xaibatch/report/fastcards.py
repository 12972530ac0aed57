"""The gallery's cards as HTML without Jinja: the packaged ``card`` macro (templates/_macros.html), written
out in Python.

Cards are the one thing the report renders per image (20,000 in a 20,000-image report), and a Jinja macro
call per card cost more than everything else the gallery does. This renders the same bytes (every value
escaped as Jinja's autoescape does: tests/test_report.py compares the two on hostile names); render.py uses
it only while the packaged ``_macros.html`` and ``gallery.html`` are the ones in use, never under a
``--template-dir`` that overrides either.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

from .model import Card

MACRO_FILES = ("_macros.html", "gallery.html")  # a --template-dir with either of these uses Jinja for cards


def card_html(c: Card, root: str, px: int, _parts: dict[Any, tuple[str, str, str, str]] | None = None) -> str:
    """One card. User text (names, classes, titles) and the confidence (">99.9%", fmt_pct) are escaped; urls
    (report.url: percent-encoded), the card id (hex), numbers and ``root`` ("../") hold no character HTML would
    read, as the macro's output shows.
    ``_parts``: each method's escaped pieces, shared by a page's cards (:func:`cards_html`)."""
    e = escape
    parts = {} if _parts is None else _parts
    cls = " wrong" if c.correct is False else " right" if c.correct else ""
    size = f'width="{px}" height="{px}" loading="lazy"'
    faith, cols, mags = [], [], []
    for v in c.maps:
        got = parts.get((v.method, v.title))
        if got is None:
            m, title = e(v.method), e(v.title)
            caption = "<wbr>".join(str(e(part)) for part in v.m.caption or (v.title,))
            got = parts[(v.method, v.title)] = (
                m,
                f'<span class="col"><img src="{root}',
                f'" alt="{title} map" data-method="{m}" {size}><span class="cap" aria-hidden="true" title="{title}">{caption}'
                "</span></span>",
                f' data-method="{m}"',
            )
        m, col_head, col_tail, mag_attr = got
        if v.deletion is not None:
            faith.append(f' data-del-{m}="{v.deletion}" data-ins-{m}="{v.insertion}"')
        cols.append(f"{col_head}{v.thumb}{col_tail}")
        if v.mag:
            mags.append(
                f'<p class="mag{" weak" if v.weak else ""}"{mag_attr}'
                f"{f' title={chr(34)}{e(v.weak)}{chr(34)}' if v.weak else ''}>{e(v.title)} scale {e(v.mag)}"
                f"{' ⚠ weak' if v.weak else ''}</p>"
            )
    rel = e(c.rel)
    label = f"true {e(c.label)} · " if c.label is not None else ""
    return (
        f'<li class="card{cls}" id="{c.cid}" data-conf="{c.conf_attr}" data-name="{rel}" '
        f'data-methods="{e(c.methods_attr)}"{"".join(faith)}>\n'
        f'<a class="thumbs" href="{root}{c.detail_url}">\n'
        f'<span class="col"><img src="{root}{c.thumb}" alt="{rel}: original" {size}>'
        f'<span class="cap">Original</span></span>\n'
        f"{''.join(cols)}</a>\n"
        f'<p class="name">{rel}</p>\n'
        f'<p class="meta">{label}predicted {e(c.pred)} <strong>{e(c.conf_text)}</strong></p>\n'
        f"{_earlier(c.earlier)}"
        f"{''.join(mags)}</li>"
    )


def _earlier(words: str) -> str:
    """The mark of a card whose prediction an earlier model made (see Card.earlier)."""
    if not words:
        return ""
    return (
        f'<p class="earlier" title="predicted by {escape(words)}, not by the last run\'s model: the next complete '
        'run recomputes it">earlier model</p>'
    )


def cards_html(cards: list[Card], root: str, px: int) -> Markup:
    """A block's cards, as the gallery template's loop over ``ui.card`` writes them."""
    parts: dict[Any, tuple[str, str, str, str]] = {}
    return Markup("".join(f"{card_html(c, root, px, parts)}\n" for c in cards))
