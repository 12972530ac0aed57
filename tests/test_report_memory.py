"""The report's memory: what a build keeps alive while it writes (issue #20's "memory flat" target)."""

from __future__ import annotations

import importlib

from test_report import labeled_rows, synth
from xaibatch import report

render_module = importlib.import_module("xaibatch.report.render")


def test_gallery_pages_leave_no_card_html_behind(tmp_path, monkeypatch):
    """A gallery page's cards, as HTML, live while the page renders, not to the end of the build (5 KB an image)."""
    out = synth(tmp_path / "o", labeled_rows(2 * report.PAGE_SIZE + 3), methods=("gradcam", "lime"), files=False)
    rendered = []
    real = render_module._render_gallery

    def spy(gallery, data, p, fast):
        html = real(gallery, data, p, fast)
        rendered.append((html, [b.html for b in p.blocks]))
        return html

    monkeypatch.setattr(render_module, "_render_gallery", spy)
    report.render(out)
    assert len(rendered) == 3
    for html, left in rendered:
        assert 'class="card' in html
        assert left == [None] * len(left)
