"""The report for a keyboard, a screen reader, Windows high contrast and paper (headless Chromium over file://):
every table, picture and figure named; the focus kept when the detail view changes image; forced colours keep the
colour keys; the printed summary keeps every table whole and spends no ink on dark bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import write_images
from test_report_browser import open_page, repaged, wait_until
from xaibatch.pipeline import RunOptions, run
from xaibatch.tools import chromium

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not chromium.available(), reason=chromium.MISSING)]


@pytest.fixture(scope="module")
def driver():
    d = chromium.start(1280, 900, "--allow-file-access-from-files")
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_ckpt) -> Path:
    """Grad-CAM over 4 + 4 images, the FAKE ones with demo-style masks (the pointing game), and an unreadable file."""
    root = tmp_path_factory.mktemp("a11y")
    for p in write_images(root / "in" / "FAKE", 4, seed=21):
        mask = np.zeros((32, 32), bool)
        mask[4:16, 10:24] = True
        np.save(p.with_name(p.stem + ".mask.npy"), mask)
    write_images(root / "in" / "REAL", 4, seed=22)
    (root / "in" / "REAL" / "broken.png").write_bytes(b"not an image")
    run(
        RunOptions(input_dir=root / "in", out_dir=root / "out", methods=["gradcam"], checkpoint=tiny_ckpt),
        log=lambda s: None,
    )
    return root / "out"


@pytest.fixture(scope="module")
def paged(out, tmp_path_factory) -> Path:
    """The same report with 4 cards a page: two gallery pages, two detail files."""
    return repaged(out, tmp_path_factory.mktemp("a11y-paged") / "out", 4)


def gallery_order(driver, out: Path) -> list[tuple[str, str]]:
    """(name, detail url) of page 1's cards, in gallery order."""
    open_page(driver, (out / "gallery" / "page-1.html").as_uri())
    return driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('li.card'),"
        " c => [c.dataset.name, c.querySelector('a.thumbs').href])"
    )


def focused(driver) -> str:
    """What has the focus: 'next', 'prev' (the detail view's links), 'h1', or the element's tag."""
    return driver.execute_script(
        "var e = document.activeElement;"
        "return e.getAttribute('rel') || (e.tagName === 'H1' ? 'h1' : e.tagName.toLowerCase());"
    )


NAMES = r"""
function name(e) {  // the accessible name as the report gives it: a label, a caption, an alt
  if (e.hasAttribute('aria-label')) { return e.getAttribute('aria-label'); }
  if (e.hasAttribute('aria-labelledby')) {
    return e.getAttribute('aria-labelledby').split(' ').map(id => (document.getElementById(id) || {}).textContent || '').join(' ');
  }
  if (e.tagName === 'TABLE') { return e.caption ? e.caption.textContent : ''; }
  if (e.tagName === 'IMG') { return e.getAttribute('alt'); }
  return e.labels && e.labels.length ? e.labels[0].textContent : '';
}
var missing = [];
document.querySelectorAll('table, img, svg, select, input, button').forEach(function (e) {
  if (e.closest('[aria-hidden="true"]')) { return; }  // decoration beside its words
  var n = name(e);
  if (e.tagName === 'BUTTON' && !n) { n = e.textContent; }
  if (!n || !n.trim()) { missing.push(e.tagName + ' ' + e.outerHTML.slice(0, 80)); }
});
document.querySelectorAll('th:not([scope])').forEach(function (e) { missing.push('th without scope: ' + e.textContent); });
return missing;
"""


def test_every_table_picture_and_control_has_a_name(driver, out):
    """A screen reader announces a table, picture, figure or control by its name: the summary's Methods table had
    none, and the detail view's colour bars were hidden, leaving their numbers ("0 0.5 ≥ 0.9") without a word of
    what they scale."""
    urls = gallery_order(driver, out)
    pages = [out / "index.html", out / "gallery" / "page-1.html", out / "history.html", out / "skipped.html"]
    for url in [*(p.as_uri() for p in pages), urls[0][1]]:
        open_page(driver, url)
        wait_until(lambda: driver.execute_script("return !!document.querySelector('h1')"), "the page's heading")
        assert driver.execute_script(NAMES) == [], url
    bars = driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('.cbar svg'),"
        " s => [s.getAttribute('role'), s.getAttribute('aria-label')])"
    )
    assert bars == [["img", "Colour scale: bright = more important, dark = less important (the photo shows "
                     "through where the map is low)"]]  # fmt: skip


def test_the_detail_view_keeps_the_focus_when_it_changes_image(driver, out):
    """Enter on Next, or an arrow key, redrew the view and dropped the focus to the page's top: the next Tab began
    again at "Skip to content" and a screen reader said nothing of the new image. The focus now stays on the same
    link of the new view, else moves to the image's name, and a status names the image shown."""
    from selenium.webdriver.common.keys import Keys

    order = gallery_order(driver, out)
    names = [n for n, _u in order]
    open_page(driver, order[0][1])
    driver.find_element("css selector", "nav.pager a[rel=next]").send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_element("tag name", "h1").text == names[1], "the second image")
    assert focused(driver) == "next"
    status = driver.find_element("css selector", "#detail + [role=status]")
    assert names[1] in status.get_attribute("textContent")
    driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)  # the key, with the focus on Next
    wait_until(lambda: driver.find_element("tag name", "h1").text == names[2], "the third image")
    assert focused(driver) == "next"
    driver.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    wait_until(lambda: driver.find_element("tag name", "h1").text == names[1], "the second image again")
    assert focused(driver) == "next"
    driver.find_element("css selector", "nav.pager a[rel=prev]").send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_element("tag name", "h1").text == names[0], "the first image")
    assert focused(driver) == "h1"  # the first image has no Previous link: its name holds the focus
    assert driver.execute_script("return getComputedStyle(document.activeElement).outlineStyle") != "none"
    driver.switch_to.active_element.send_keys(Keys.TAB)  # the next Tab goes on from the view, not the page's top
    assert driver.execute_script("return document.activeElement.closest('#detail') !== null")
    driver.find_element("css selector", "figure[data-method] summary").send_keys(Keys.ARROW_RIGHT)
    wait_until(lambda: driver.find_element("tag name", "h1").text == names[1], "the second image by its key")
    assert focused(driver) == "h1"
    assert names[1] in status.get_attribute("textContent")


def test_forced_colours_keep_the_colour_keys(driver, out):
    """Windows high contrast dropped the gallery's colour ramps (blank boxes beside "bright = more important"),
    drew the current page of the pager like every other, and gave the ground-truth table's swatches the text
    colour, so no swatch matched its ring in the figure."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "forced-colors", "value": "active"}]})
    try:
        open_page(driver, (out / "gallery" / "page-1.html").as_uri())
        assert driver.execute_script("return matchMedia('(forced-colors: active)').matches")
        ramps = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('.ramp'), r => getComputedStyle(r).backgroundImage)"
        )
        assert ramps and all("gradient" in r for r in ramps), ramps
        # the fixture has one page: a second page's link is drawn beside it to compare
        current, other = driver.execute_script(
            "var a = document.querySelector('.pager a[aria-current=page]'), b = a.cloneNode(true);"
            "b.removeAttribute('aria-current'); a.parentNode.appendChild(b);"
            "return [a, b].map(e => getComputedStyle(e).backgroundColor + ' ' + getComputedStyle(e).color);"
        )
        assert current != other
        fake = next(u for n, u in gallery_order(driver, out) if n.startswith("FAKE/"))
        open_page(driver, fake)
        wait_until(lambda: driver.find_elements("css selector", "table.pointing .swatch"), "the pointing table")
        swatch = driver.execute_script(
            "var s = document.querySelector('table.pointing .swatch'), c = document.querySelector('figure.truth circle');"
            "return [getComputedStyle(s).borderTopColor, getComputedStyle(c).stroke, getComputedStyle(s.parentNode).color];"
        )
        assert swatch[0] == swatch[1] and swatch[0] != swatch[2], swatch
        bar = driver.execute_script(
            "return getComputedStyle(document.querySelector('table.probs .bar')).backgroundColor"
        )
        assert bar == "rgb(0, 114, 178)"  # the probability bars: report.css .bar
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})


def test_the_printed_summary_keeps_every_table_whole_and_spends_no_ink(driver, out):
    """Printed, the run history's twelve columns were cut at the paper's edge (a box that scrolls on screen),
    the folded reliability table was left out, and the dark header band and the navigation were printed."""
    driver.set_window_size(680, 900)  # about the text width of A4 or Letter paper
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        open_page(driver, (out / "index.html").as_uri())
        page = driver.execute_script("return document.documentElement.clientWidth")
        wide = driver.execute_script(
            "return Array.prototype.filter.call(document.querySelectorAll('table'), function (t) {"
            "  var r = t.getBoundingClientRect(), box = t.parentNode.getBoundingClientRect();"
            "  return r.right > document.documentElement.clientWidth || r.right > box.right + 1; })"
            ".map(t => (t.caption ? t.caption.textContent : t.getAttribute('aria-labelledby')) + ' ' + t.offsetWidth)"
        )
        assert wide == [], f"cut off on {page} px of paper: {wide}"
        folded = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('details table'), t => t.offsetHeight)"
        )
        assert folded and all(h > 0 for h in folded), folded
        shown = driver.execute_script(
            "var h = document.querySelector('header.top'), n = h.querySelector('nav');"
            "return [getComputedStyle(h).backgroundColor, getComputedStyle(n).display];"
        )
        assert shown == ["rgba(0, 0, 0, 0)", "none"]
        cells = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('table.confusion td'),"
            " c => getComputedStyle(c).backgroundColor)"
        )
        assert cells and set(cells) == {"rgba(0, 0, 0, 0)"}
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})
        driver.set_window_size(1280, 900)


@pytest.fixture(scope="module")
def many_classes_out(tmp_path_factory) -> Path:
    """28 classes of long names (a full confusion matrix: at most report.model.CONFUSION_MAX_CLASSES), an image each."""
    from helpers import make_checkpoint

    root = tmp_path_factory.mktemp("a11y-many")
    names = [f"class_{i:02d}_northern_{'forest_' if i % 2 else ''}species" for i in range(28)]
    ckpt = make_checkpoint(root / "m.pt", classes=names)
    for k, name in enumerate(names):
        write_images(root / "in" / name, 1, seed=40 + k)
    run(
        RunOptions(input_dir=root / "in", out_dir=root / "out", methods=["gradcam"], checkpoint=ckpt, workers=0),
        log=lambda s: None,
    )
    return root / "out"


@pytest.mark.parametrize("paper", [680, 720])  # the text widths of A4 and Letter (default margins), in CSS px
def test_a_printed_confusion_matrix_of_many_classes_fits_the_paper(driver, many_classes_out, paper):
    """Printed, a 28-class confusion matrix kept 6 of its 28 columns: its names and "0 (0.0%)" cells did not wrap,
    and the rest lay past the paper's edge. Now its headers stand upright, its cells hold the counts and it fits;
    on screen it is as before (a box that scrolls, the shares in the cells, a note on their shading)."""
    url = (many_classes_out / "index.html").as_uri()
    open_page(driver, url)
    assert driver.execute_script("return document.querySelectorAll('table.confusion th[scope=col]').length") == 29
    screen = driver.execute_script("return document.querySelector('table.confusion small').offsetWidth")
    assert screen > 0
    assert "shading" in driver.execute_script("return document.getElementById('confusion-note').innerText")
    driver.set_window_size(paper, 900)
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        open_page(driver, url)
        box = driver.execute_script(
            "var t = document.querySelector('table.confusion'), r = t.getBoundingClientRect();"
            "return [r.right, document.documentElement.clientWidth, t.querySelector('tbody td').textContent,"
            " Math.min.apply(null, Array.prototype.map.call(t.querySelectorAll('td'), c => c.offsetWidth"
            "   - c.scrollWidth))];"
        )
        right, page, cell, spill = box
        assert right <= page, f"the matrix reaches {right} px on {page} px of paper"
        assert spill >= 0, "a count spills out of its cell"
        assert cell.strip().split()[0].isdigit(), cell
        note = driver.execute_script("return document.getElementById('confusion-note').innerText")
        assert "shading" not in note, note  # no shading on paper
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})
        driver.set_window_size(1280, 900)


def test_a_printed_confusion_matrix_of_long_class_names_fits_the_paper(driver, tmp_path):
    """Two classes of 43 characters without a space: the printed matrix was 921 px wide on 665 px of paper (its names
    and cells did not wrap). Now they wrap and it fits."""
    from test_report_browser import report_tests
    from xaibatch import report

    test_report = report_tests()
    classes = ("FAKE_generated_by_stable_diffusion_xl_turbo", "REAL_photographed_on_site_by_the_inspectors")
    rows = [(f"{classes[i % 2]}/im_{i}.png", i % 2, 0.3 + 0.1 * (i % 5)) for i in range(8)]
    out = test_report.synth(tmp_path / "o", rows, classes=classes)
    report.render(out)
    driver.set_window_size(680, 900)
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        open_page(driver, (out / "index.html").as_uri())
        right, page = driver.execute_script(
            "return [document.querySelector('table.confusion').getBoundingClientRect().right,"
            " document.documentElement.clientWidth]"
        )
        assert right <= page, f"the matrix reaches {right} px on {page} px of paper"
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})
        driver.set_window_size(1280, 900)


def test_a_printed_chart_wider_than_the_paper_shrinks_to_fit(driver, tmp_path):
    """A chart keeps its drawn size on screen (a phone scrolls it in its box); on paper, a box that scrolls would cut
    it, so the sanity figure (701 px: seven stages and the legend beside) shrinks to the paper's width."""
    from test_report_browser import report_tests
    from xaibatch import report
    from xaibatch.evaluation.sanity_file import FILENAME, SanityCurve, SanityResult

    test_report = report_tests()
    out = test_report.synth(tmp_path / "o", test_report.labeled_rows(4))
    stages = ["original", "head", "+s4", "+s3", "+s2", "+s1", "+stem"]
    values = [1.0, 0.5, 0.4, 0.3, 0.2, 0.2, 0.1]
    curve = SanityCurve("gradcam", stages, values, values, True, "gradcam: passes", checked=1.0)
    (out / FILENAME).write_text(SanityResult([curve], created=2.0, images=4).to_json())
    report.render(out)
    sizes = "return Array.prototype.map.call(document.querySelectorAll('figure.chart img'), i => [i.getAttribute('src'), +i.getAttribute('width'), i.getBoundingClientRect().right, document.documentElement.clientWidth])"
    open_page(driver, (out / "index.html").as_uri())
    assert [w for src, w, _r, _p in driver.execute_script(sizes) if "sanity" in src] == [701]
    driver.set_window_size(680, 900)
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        open_page(driver, (out / "index.html").as_uri())
        charts = driver.execute_script(sizes)
        assert len(charts) == 3, charts  # the histogram, the reliability diagram, the sanity figure
        assert all(right <= page for _s, _w, right, page in charts), charts
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})
        driver.set_window_size(1280, 900)


def test_a_step_to_another_gallery_pages_image_keeps_the_focus_too(driver, paged):
    """Next from the last image of a gallery page opens another detail file: a new document, whose focus began at
    the page's top. It is now on that page's own Next (or Previous) link."""
    from selenium.webdriver.common.keys import Keys

    first = gallery_order(driver, paged)
    open_page(driver, (paged / "gallery" / "page-2.html").as_uri())
    second = driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('li.card'), c => c.dataset.name)"
    )
    open_page(driver, first[-1][1])
    driver.find_element("css selector", "nav.pager a[rel=next]").send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_element("tag name", "h1").text == second[0], "page 2's first image")
    assert "detail/page-2.html" in driver.current_url
    wait_until(lambda: focused(driver) == "next", "the focus on Next")
    driver.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    wait_until(lambda: driver.find_element("tag name", "h1").text == first[-1][0], "page 1's last image")
    wait_until(lambda: focused(driver) == "prev", "the focus on Previous")
    open_page(driver, (paged / "gallery" / "page-1.html").as_uri())
    open_page(driver, first[-1][1])  # opened afresh (a bookmark, the gallery's link): the page's top, as before
    assert focused(driver) == "body"
