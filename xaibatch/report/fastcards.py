"""The gallery's cards as HTML without Jinja: the packaged ``card`` macro (templates/_macros.html), written
out in Python.

Cards are the one thing the report renders per image (20,000 in a 20,000-image report), and a Jinja macro
call per card cost more than everything else the gallery does. This renders the same bytes (every value
escaped as Jinja's autoescape does: tests/test_report.py compares the two on hostile names); render.py uses
it only while the packaged ``_macros.html`` and ``gallery.html`` are the ones in use, never under a
``--template-dir`` that overrides either.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from .model import Card

MACRO_FILES = ("_macros.html", "gallery.html")  # a --template-dir with either of these uses Jinja for cards


def card_html(c: Card, root: str, px: int) -> str:
    """One card. User text (names, classes, titles) is escaped; urls (report.url: percent-encoded), the card
    id (hex), numbers and ``root`` ("../") hold no character HTML would read, as the macro's output shows."""
    e = escape
    cls = " wrong" if c.correct is False else " right" if c.correct else ""
    faith = "".join(
        f' data-del-{e(v.method)}="{v.deletion}" data-ins-{e(v.method)}="{v.insertion}"'
        for v in c.maps
        if v.deletion is not None
    )
    rel = e(c.rel)
    size = f'width="{px}" height="{px}" loading="lazy"'
    cols = "".join(
        f'<span class="col"><img src="{root}{v.thumb}" alt="{e(v.title)} map" data-method='
        f'"{e(v.method)}" {size}><span class="cap" aria-hidden="true">{e(v.title)}</span></span>'
        for v in c.maps
    )
    label = f"true {e(c.label)} · " if c.label is not None else ""
    mags = "".join(
        f'<p class="mag{" weak" if v.weak else ""}" data-method="{e(v.method)}"'
        f"{f' title={chr(34)}{e(v.weak)}{chr(34)}' if v.weak else ''}>{e(v.title)} scale {e(v.mag)}"
        f"{' ⚠ weak' if v.weak else ''}</p>"
        for v in c.maps
        if v.mag
    )
    return (
        f'<li class="card{cls}" id="{c.cid}" data-conf="{c.conf_attr}" data-name="{rel}" '
        f'data-methods="{e(c.methods_attr)}"{faith}>\n'
        f'<a class="thumbs" href="{root}{c.detail_url}">\n'
        f'<span class="col"><img src="{root}{c.thumb}" alt="{rel}: original" {size}>'
        f'<span class="cap">Original</span></span>\n'
        f"{cols}</a>\n"
        f'<p class="name">{rel}</p>\n'
        f'<p class="meta">{label}predicted {e(c.pred)} <strong>{c.conf_text}</strong></p>\n'
        f"{mags}</li>"
    )


def cards_html(cards: list[Card], root: str, px: int) -> Markup:
    """A block's cards, as the gallery template's loop over ``ui.card`` writes them."""
    return Markup("".join(f"{card_html(c, root, px)}\n" for c in cards))
