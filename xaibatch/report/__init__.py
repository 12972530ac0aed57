"""Build the report's data from the manifest, then render it with Jinja2.

Templates only display: every number, group, order, page and link is computed
here (data first, render second). The report is a static folder that works
from ``file://``: relative links only, no external URL, the project's own CSS
and JS copied in under content-hashed names.

Layout written into the output folder::

    index.html                 summary: counts, metrics, figures, configuration, run history
    gallery/page-<id>.html     about PAGE_SIZE cards each, a range of the gallery order (paging.py: <id> is kept
                               from run to run, so a re-run rewrites only the pages whose cards changed)
    gallery/pages.js           the pages in order with their places, the totals: each page's pager (report.js)
    gallery/names.js           every image's name, page and card id: "find an image", a moved card's page
    detail/page-<id>.html      the detail viewer of gallery page <id>: one image at a time, every map at one size
                               in one row; each image's URL is detail/page-<id>.html#<card id>
    detail/page-<id>.js        its images' detail data (a plain script assigning JSON: works from file://),
                               drawn by assets/detail.js with textContent only; one file per page, not per image
    history.html               every run
    skipped.html               every file that could not be read, and why
    figures/<name>-<hash>.svg  the SVG figures (only redrawn when their numbers change)
    assets/report.<hash>.css   templates/assets/report.css, content-hashed
    assets/report.<hash>.js    templates/assets/report.js, content-hashed
    assets/detail.<hash>.js    templates/assets/detail.js, content-hashed

Gallery order: labeled runs show Misclassified first, then Correct, each split
per true class (mistakes most confident first, correct ones least confident
first); unlabeled runs group by predicted class, most confident first. Pages
are only rewritten when their bytes change, so a cron re-run over an unchanged
folder rewrites the summary and nothing else; and a page's bytes depend on its
own cards alone (its place and the totals are drawn from gallery/pages.js), so a
re-run that adds images rewrites the pages they land on.

Template names (a ``--template-dir`` may override any of them; the packaged
ones are the fallback): ``base.html`` (page frame), ``_macros.html`` (card,
pager, legend), ``_runs_table.html``, ``_failures_table.html``, ``index.html``,
``gallery.html``, ``detail.html``, ``history.html``, ``skipped.html``, and the
assets ``assets/report.css``, ``assets/report.js`` and ``assets/detail.js``.

Every file is written through files.OutputDir (checked folders, descriptor-relative atomic renames), and
nothing per image is read back from disk: each map's colour-bar scale and peak are stored with its row
(MapRow.view, computed with its picture); ground-truth masks are read as user data (detail.read_array).

The package::

    model.py        sizes, limits and the dataclasses a page shows (Card, MapView, ReportData, ...)
    data.py         build(): the report's data from the manifest; cards.py, metrics.py, detail.py, text.py help
    paging.py       the gallery's pages as ranges of its order, kept from one write to the next
    detail.py       the detail view's records (and the views of maps from older folders, read once)
    meanmaps.py     the summary's mean maps: each gallery group's maps averaged, from the grids stored in their views
    fastcards.py    the packaged card macro written out in Python (the gallery's per-image cost)
    render.py       render()/write_report(): Jinja over that data, writing only what changed
    predictions.py  predictions.csv
    snapshot.py     the key that says nothing per image changed, and the summary data saved with it
"""

from .model import Card, MapView, PAGE_SIZE, ReportData, up, url
from .data import build, bundled_model_sha256, demo_model_warning
from .render import WriteStats, check_templates, environment, render, write_report
from .predictions import csv_cell

__all__ = [
    "Card",
    "MapView",
    "PAGE_SIZE",
    "ReportData",
    "WriteStats",
    "build",
    "bundled_model_sha256",
    "check_templates",
    "csv_cell",
    "demo_model_warning",
    "environment",
    "render",
    "up",
    "url",
    "write_report",
]
