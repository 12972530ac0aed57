"""The HTML the page shows for one result (or one line for a failure): data first, then an autoescaped template."""

from __future__ import annotations

import base64
from functools import lru_cache

import jinja2

from ..report.figures import colour_bar
from ..overlay import colour_stops, png_bytes
from ..report.model import MAX_PROBS_SHOWN
from ..report.text import fmt_pct
from .core import Result

TEMPLATE = """\
<div class="xb-result" data-pred="{{ pred }}">
<p class="xb-pred">Prediction: <b>{{ pred }}</b> ({{ conf }}) · rule: {{ rule }} · {{ seconds }}
{%- if detail %} · <a class="xb-detail" href="{{ detail }}" target="_blank" rel="noopener">in the report</a>{% endif %}</p>
<table class="xb-probs">{% if probs | length < classes %}<caption>The {{ probs | length }} most likely of {{ classes }}
classes</caption>{% endif %}{% for name, pct, w in probs %}
<tr><td>{{ name }}</td><td class="xb-num">{{ pct }}</td><td><span class="xb-bar" style="width:{{ w }}px"></span></td></tr>
{%- endfor %}</table>
<div class="xb-maps">
<figure class="xb-map" data-method="image"><figcaption>Image</figcaption><img alt="the image" src="{{ image }}"
style="{{ box }}"></figure>
{%- for m in maps %}
<figure class="xb-map" data-method="{{ m.method }}"><figcaption>{{ m.title }}</figcaption>
<img alt="{{ m.title }} map" src="{{ m.src }}" style="{{ box }}">
<img class="xb-colourbar" alt="colour bar" src="{{ m.bar }}">
<div class="xb-ticks">{% for t in m.ticks %}<span>{{ t }}</span>{% endfor %}</div>
<small>{{ m.note }}</small>
{%- if m.faith %}<br><small class="xb-faith">deletion AUC {{ m.faith.deletion }} (red curve, lower is better), insertion AUC
{{ m.faith.insertion }} (blue curve, higher is better)</small><br><svg class="xb-curves" width="120" height="60" viewBox="-2 -2 124 64"
role="img" aria-label="deletion (red) and insertion (blue) curves: probability of {{ pred }} against the share of
pixels changed"><rect x="0" y="0" width="120" height="60" fill="none" stroke="#ccc"/><polyline
points="{{ m.faith.curves[0] }}" fill="none" stroke="#D55E00" stroke-width="1.5"/><polyline
points="{{ m.faith.curves[1] }}" fill="none" stroke="#0072B2" stroke-width="1.5"/></svg>{% endif %}</figure>
{%- endfor %}
</div></div>
<style>
.xb-maps{display:flex;flex-wrap:wrap;gap:12px}.xb-map{margin:0;width:200px}.xb-map img{display:block;margin:0 auto;
image-rendering:pixelated}.xb-map img.xb-colourbar{width:200px;height:14px;image-rendering:auto}.xb-ticks{display:flex;
justify-content:space-between;font-size:12px}.xb-probs td{padding:0 6px}.xb-num{text-align:right}
.xb-bar{display:inline-block;height:10px;background:#4c78a8}
</style>
"""

PICTURE_WIDTH, PICTURE_MAX_HEIGHT = 200, 300  # px: a tall picture keeps its colour bar in view

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_PAGE = _ENV.from_string(TEMPLATE)
_LINE = _ENV.from_string('<p class="xb-{{ kind }}"{% if kind == "error" %} role="alert"{% endif %}>{{ text }}</p>')


def data_uri(body: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(body).decode()}"


@lru_cache(maxsize=2)
def bar_uri(signed: bool) -> str:
    return data_uri(colour_bar(colour_stops(signed)), "image/svg+xml")


def result_html(r: Result, names: list[str], rule: str, detail: str | None) -> str:
    from PIL import Image

    from ..data import display_copy

    # the likeliest first, as many as a report's detail page lists: ImageNet's 1000 rows put the maps 20,000 px down
    order = sorted(range(len(r.probs)), key=lambda i: -r.probs[i])[:MAX_PROBS_SHOWN]
    probs = [(names[i], fmt_pct(r.probs[i]), round(120 * r.probs[i])) for i in order]
    maps = [
        {
            "method": m.method,
            "title": m.title,
            "src": data_uri(m.overlay_png, "image/png"),
            "bar": bar_uri(m.signed),
            "ticks": m.ticks,
            "note": m.note,
            "faith": _faith(m.faith),
        }
        for m in r.maps
    ]
    display = display_copy(r.upload.image)
    image = data_uri(png_bytes(Image.fromarray(display)), "image/png")
    return _PAGE.render(
        pred=names[r.pred],
        conf=fmt_pct(r.probs[r.pred]),
        rule=rule,
        seconds=f"{r.seconds:.2f} s",
        detail=detail,
        probs=probs,
        classes=len(r.probs),
        maps=maps,
        image=image,
        box=picture_box(display.shape[1], display.shape[0]),
    )


def picture_box(w: int, h: int) -> str:
    """The drawn size of a w x h picture and its maps: PICTURE_WIDTH wide, or narrower for a picture taller than
    PICTURE_MAX_HEIGHT at that width (a 100x800 photo was drawn 1600 px tall, its colour bar and numbers far below
    the window); the picture's own aspect either way."""
    width = min(PICTURE_WIDTH, PICTURE_MAX_HEIGHT * w / h)
    return f"width:{width:.0f}px;height:{width * h / w:.0f}px"


def _faith(row: dict | None) -> dict | None:
    """The report's wording and curves (trust.curve_points) for one map's deletion/insertion scores."""
    from ..report.trust import curve_points

    if not row:
        return None
    return {
        "deletion": f"{row['deletion']:.3f}",
        "insertion": f"{row['insertion']:.3f}",
        "curves": (curve_points(row["deletion_curve"]), curve_points(row["insertion_curve"])),
    }


def line_html(text: str, kind: str = "error") -> str:
    """One line in the page: an error (a refused upload) or a note (a flag saved)."""
    return _LINE.render(text=text, kind=kind)


def numbered(n: int, body: str) -> str:
    """An answer with its number, so a page (and a test) tells a new answer from the one before."""
    return f'<div class="xb-answer" data-answer="{int(n)}">{body}</div>'
