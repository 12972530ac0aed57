"""The report in a real browser (headless Chromium over file://): images load, links resolve, filters and
sorting work, pagination reaches every image, hostile file names never run script."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from helpers import HOSTILE_NAMES, make_checkpoint, small_run, write_images
from xaibatch import report
from xaibatch.manifest import FILENAME, Manifest
from xaibatch.pipeline import RunOptions, run
from xaibatch.tools import chromium, synth
from xaibatch.tools.chromium import CHROMEDRIVER, CHROMIUM  # noqa: F401  (test_target_label's skip)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not chromium.available(), reason=chromium.MISSING)]

TRAP = """
window.__xss = [];
window.alert = window.confirm = window.prompt = function (m) { window.__xss.push(String(m)); };
"""

RTL = "rtl \u202egnp.exe.png"  # a right-to-left override: shown as "rtl gnp.exe.png"... backwards
HOSTILE = [*HOSTILE_NAMES, "<script>alert(4)<\\script>.png", RTL]


@pytest.fixture(scope="module")
def driver():
    d = chromium.start(1280, 900, "--allow-file-access-from-files", console_log=True)
    d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRAP})
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def labeled_out(tmp_path_factory, tiny_ckpt) -> Path:
    root = tmp_path_factory.mktemp("browser")
    return small_run(root, tiny_ckpt, 9, (11, 12), ("FAKE/broken.png", b"\x89PNG but not really"))


@pytest.fixture(scope="module")
def paged_out(labeled_out, tmp_path_factory) -> Path:
    """The same run re-rendered with 5 cards per page, so there are several pages."""
    return repaged(labeled_out, tmp_path_factory.mktemp("paged") / "out", 5)


def repaged(out: Path, copy: Path, page_size: int) -> Path:
    """A copy of the output folder ``out`` at ``copy``, its report written again with ``page_size`` cards a page."""
    shutil.copytree(out, copy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.model, "PAGE_SIZE", page_size)
        report.write_report(copy)
    return copy


@pytest.fixture(scope="module")
def hostile_out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    classes = ['<b onmouseover=alert(3)>FAKE "x"', "REAL #1 %41?"]
    ckpt = make_checkpoint(root / "h.pt", classes=classes)
    rng = np.random.default_rng(0)
    for i, name in enumerate(HOSTILE):
        d = root / "in" / classes[i % 2] / ("sub #2 ?%" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        synth.save(synth.noise(rng, 32), d / name)
    (root / "in" / classes[0] / "<svg onload=alert(5)>.png").write_bytes(b"broken")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.model, "PAGE_SIZE", 4)
        run(
            RunOptions(input_dir=root / "in", out_dir=root / "out", methods=["gradcam"], checkpoint=ckpt),
            log=lambda s: None,
        )
    return root / "out"


# -- helpers --------------------------------------------------------------------------------------------


def open_page(driver, path: Path | str) -> None:
    driver.get(path if isinstance(path, str) else path.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def load_all_images(driver, timeout: float = 30) -> list[dict]:
    """Force lazy images to load, wait, and return the ones that failed."""
    driver.execute_script("document.querySelectorAll('img').forEach(function (i) { i.loading = 'eager'; });")
    end = time.time() + timeout
    while time.time() < end:
        if driver.execute_script("return Array.prototype.every.call(document.images, i => i.complete)"):
            break
        time.sleep(0.05)
    return driver.execute_script(
        "return Array.prototype.filter.call(document.images, i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => ({src: i.getAttribute('src'), alt: i.alt}))"
    )


def local_targets(driver) -> list[tuple[str, Path]]:
    """Every href/src of the page as (attribute value, file it resolves to); all must be file: and relative."""
    raw = driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('[href],[src]'), function (e) {"
        "  var a = e.hasAttribute('href') ? 'href' : 'src';"
        "  return [e.getAttribute(a), new URL(e.getAttribute(a), document.baseURI).href]; })"
    )  # SVG: no e.href
    out = []
    for attr, absolute in raw:
        assert urlsplit(attr).scheme == "" and not attr.startswith("/"), f"not a relative link: {attr!r}"
        parts = urlsplit(absolute)
        assert parts.scheme == "file", absolute
        out.append((attr, Path(unquote(parts.path))))
    return out


def check_page(driver, path: Path | str) -> None:
    """Open a page (a path, or a detail view's url: detail/page-<n>.html#<id>) and check what it shows."""
    open_page(driver, path)
    failed = load_all_images(driver)
    assert not failed, f"{path.name}: images did not load: {failed}"
    for attr, target in local_targets(driver):
        assert target.is_file(), f"{path.name}: {attr!r} -> {target} does not exist"
    assert driver.execute_script("return window.__xss") == [], f"{path.name}: script from a name ran"
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, f"{path.name}: console errors {severe}"


def detail_urls(out: Path) -> dict[str, str]:
    """Each image's detail view (detail/page-<n>.html#<card id>), from the gallery cards' links."""
    import re

    urls = {}
    for page in sorted((out / "gallery").glob("page-*.html")):
        for name, href in re.findall(
            r'<li class="card[^"]*" id="[^"]*" data-conf="[^"]*" data-name="([^"]*)"[^>]*>\n'
            r'<a class="thumbs" href="([^"]*)"',
            page.read_text(),
        ):
            from html import unescape

            path, _, frag = unescape(href).partition("#")
            urls[unescape(name)] = (page.parent / unquote(path)).resolve().as_uri() + "#" + frag
    return urls


def all_pages(out: Path) -> list[Path | str]:
    """Every page, each image's detail view in place of its page of old (one url each)."""
    return [*sorted([*out.glob("*.html"), *(out / "gallery").glob("*.html")]), *sorted(detail_urls(out).values())]


def manifest_rels(out: Path) -> set[str]:
    m = Manifest(out / FILENAME)
    try:
        return set(m.images())
    finally:
        m.close()


def visible_cards(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.prototype.filter.call(document.querySelectorAll('li.card'), c => c.offsetParent !== null)"
        ".map(c => ({name: c.dataset.name, conf: parseFloat(c.dataset.conf),"
        " group: c.closest('section.group').id, cls: c.closest('section.group').dataset.class,"
        " section: c.closest('section.group').dataset.section}))"
    )


def wait_until(cond, what: str, timeout: float = 30.0) -> None:
    """Poll a condition (the page reacts to events asynchronously); never assume a fixed delay is enough."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


# -- tests ----------------------------------------------------------------------------------------------


def test_every_page_loads_its_images_and_links(driver, labeled_out):
    pages = all_pages(labeled_out)
    assert len(pages) == len(manifest_rels(labeled_out)) + 4  # details + gallery page + index, history, skipped
    for page in pages:
        check_page(driver, page)
        if isinstance(page, str):  # a detail view shows its own image
            name = next(k for k, v in detail_urls(labeled_out).items() if v == page)
            assert driver.find_element("tag name", "h1").text == name


def test_served_by_a_static_web_server_every_page_loads_without_a_console_error(driver, labeled_out, tmp_path):
    """The folder copied elsewhere and served as a sub-path of a static web server (python -m http.server from its
    parent): every page, figure and picture loads, and the console stays clean (each page asked the server for
    /favicon.ico, which it lacks: a 404 in the console)."""
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    shutil.copytree(labeled_out, site / "runs" / "cifake")  # cp -r: new mtimes, another path
    missing = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            if args[1:2] == ("404",):
                missing.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/runs/cifake/"
    out = site / "runs" / "cifake"
    try:
        driver.get_log("browser")  # what earlier tests left
        for page in all_pages(out):
            rel = (page if isinstance(page, Path) else Path(unquote(urlsplit(page).path))).relative_to(out)
            driver.get(base + rel.as_posix() + ("#" + urlsplit(page).fragment if isinstance(page, str) else ""))
            assert not load_all_images(driver), rel
            severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not severe, f"{rel}: console errors {severe}"
    finally:
        server.shutdown()
        server.server_close()
    assert missing == []


def test_pagination_reaches_every_image(driver, paged_out):
    rels = manifest_rels(paged_out)
    open_page(driver, paged_out / "gallery" / "page-1.html")
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        cards = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('li.card'), c => c.dataset.name)"
        )
        assert 0 < len(cards) <= 5
        seen += cards
        numbers = driver.find_elements("css selector", "nav.pager a[aria-current=page]")
        assert numbers and numbers[0].text == str(pages)
        nxt = driver.find_elements("css selector", "nav.pager a[rel=next]")
        if not nxt:
            break
        nxt[0].click()
        assert pages < 100
    assert pages == -(-len(rels) // 5)
    assert sorted(seen) == sorted(rels) and len(seen) == len(set(seen))
    # a card leads to its detail page, and the detail page back to the card
    open_page(driver, paged_out / "gallery" / "page-2.html")
    first = driver.find_element("css selector", "li.card")
    cid, name = first.get_attribute("id"), first.get_attribute("data-name")
    first.find_element("css selector", "a.thumbs").click()
    assert driver.find_element("tag name", "h1").text == name
    driver.find_element("partial link text", "Back to gallery page 2").click()
    assert driver.execute_script("return location.hash") == f"#{cid}"
    assert driver.find_element("id", cid).get_attribute("data-name") == name


def test_detail_prev_next_walk_the_gallery_order(driver, paged_out):
    rels = manifest_rels(paged_out)
    open_page(driver, paged_out / "gallery" / "page-1.html")
    driver.find_element("css selector", "li.card a.thumbs").click()
    names = []
    while True:
        names.append(driver.find_element("tag name", "h1").text)
        imgs = driver.find_elements("css selector", ".views img")
        assert len(imgs) == 2 and all(int(i.get_attribute("width")) >= 256 for i in imgs)
        assert (
            driver.execute_script("return getComputedStyle(document.querySelector('.views img')).imageRendering")
            == "pixelated"
        )
        nxt = driver.find_elements("css selector", "a[rel=next]")
        if not nxt:
            break
        nxt[0].click()
    assert sorted(names) == sorted(rels)


def test_filters_hide_and_sorting_reorders(driver, labeled_out):
    open_page(driver, labeled_out / "gallery" / "page-1.html")
    assert driver.find_element("id", "controls").is_displayed()  # JS shows the controls
    everything = visible_cards(driver)
    assert len(everything) == len(manifest_rels(labeled_out))
    status = driver.find_element("id", "f-status")
    assert status.text == f"Showing {len(everything)} of {len(everything)} images on this page."

    for cls in ("0", "1"):
        select(driver, "f-class", cls)
        shown = visible_cards(driver)
        assert shown and all(c["cls"] == cls for c in shown)
        assert len(shown) == sum(c["cls"] == cls for c in everything)
    select(driver, "f-class", "")

    sections = {c["section"] for c in everything}
    for s in sections:
        select(driver, "f-show", s)
        shown = visible_cards(driver)
        assert shown and {c["section"] for c in shown} == {s}
    select(driver, "f-show", "")

    select(driver, "f-method", "-")
    assert not any(i.is_displayed() for i in driver.find_elements("css selector", "img[data-method]"))
    select(driver, "f-method", "gradcam")
    assert all(i.is_displayed() for i in driver.find_elements("css selector", "img[data-method]"))

    def groups_in_order(cards):
        out: dict[str, list] = {}
        for c in cards:
            out.setdefault(c["group"], []).append(c)
        return out

    default = groups_in_order(everything)
    changed = False
    for sort, key, reverse in (("conf-asc", "conf", False), ("conf-desc", "conf", True), ("name", "name", False)):
        select(driver, "f-sort", sort)
        now = groups_in_order(visible_cards(driver))
        assert now.keys() == default.keys()
        for g, cards in now.items():
            assert [c[key] for c in cards] == sorted((c[key] for c in cards), reverse=reverse)
            changed |= [c["name"] for c in cards] != [c["name"] for c in default[g]]
    assert changed, "no sort order differed from the gallery order"
    select(driver, "f-sort", "")
    assert visible_cards(driver) == everything  # back to the server's order

    driver.find_element("id", "f-reset").click()
    wait_until(lambda: len(visible_cards(driver)) == len(everything), "the reset to show every card")


def test_filters_work_from_the_keyboard(driver, labeled_out):
    from selenium.webdriver.common.keys import Keys

    open_page(driver, labeled_out / "gallery" / "page-1.html")
    before = visible_cards(driver)
    body = driver.find_element("tag name", "body")
    for _ in range(60):  # tab through the page until the class filter has focus
        if driver.execute_script("return document.activeElement.id") == "f-class":
            break
        driver.switch_to.active_element.send_keys(Keys.TAB) if _ else body.send_keys(Keys.TAB)
    assert driver.execute_script("return document.activeElement.id") == "f-class"
    label = driver.find_element("css selector", "label[for=f-class]")
    assert label.text
    driver.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    wait_until(lambda: driver.find_element("id", "f-class").get_attribute("value") == "0", "the class filter")
    shown = visible_cards(driver)
    assert all(c["cls"] == "0" for c in shown) and len(shown) < len(before)


def test_filter_state_follows_the_pager(driver, paged_out):
    open_page(driver, paged_out / "gallery" / "page-1.html")
    select(driver, "f-method", "-")
    select(driver, "f-sort", "name")
    nxt = driver.find_element("css selector", "nav.pager a[rel=next]")
    assert nxt.get_attribute("href").endswith("page-2.html#method=-&sort=name")
    nxt.click()
    assert driver.find_element("id", "f-method").get_attribute("value") == "-"
    assert driver.find_element("id", "f-sort").get_attribute("value") == "name"
    assert not any(i.is_displayed() for i in driver.find_elements("css selector", "img[data-method]"))


def test_a_filter_with_nothing_on_this_page_says_which_pages_hold_it(driver, paged_out):
    """A 2,000-image run: "correct" and "REAL" on gallery page 1 said "Showing 0 of 200 images on this page" and
    no more, the correct REAL images being on pages 6-10. The status now names the pages that hold the choice,
    each a link that keeps it; a choice no page holds says so."""
    pages = sorted((paged_out / "gallery").glob("page-*.html"), key=lambda p: int(p.stem[5:]))
    assert len(pages) >= 3
    tried = linked = 0
    for page in (pages[0], pages[-1]):
        for cls in ("0", "1"):
            for show in ("wrong", "right"):
                open_page(driver, page)
                select(driver, "f-class", cls)
                select(driver, "f-show", show)
                if visible_cards(driver):
                    continue
                tried += 1
                status = driver.find_element("id", "f-status")
                links = status.find_elements("tag name", "a")
                where = {
                    int(p.stem[5:])
                    for p in pages
                    if any(g.get("data-class") == cls and g.get("data-section") == show for g in _groups_on(p))
                }
                if not where:
                    assert "No image in the gallery" in status.text and not links, status.text
                    continue
                linked += 1
                assert links and "on page" in status.text, status.text
                first = links[0].get_attribute("href")
                assert urlsplit(first).fragment == f"class={cls}&show={show}"
                assert int(Path(urlsplit(first).path).stem[5:]) == min(where), (first, where)
                links[0].click()
                wait_until(lambda: visible_cards(driver), "the linked page's cards")
                assert all(c["cls"] == cls and c["section"] == show for c in visible_cards(driver))
    assert linked >= 1 and tried > linked  # the cases under test: a choice held by other pages, by none


def _groups_on(page: Path) -> list[dict[str, str]]:
    import re

    return [
        {"data-class": c, "data-section": s}
        for c, s in re.findall(
            r'<section class="group" id="[^"]*" data-class="([^"]*)" data-section="([^"]*)"', page.read_text()
        )
    ]


def test_filters_go_to_the_detail_view_and_come_back(driver, paged_out):
    """The gallery's filters were lost on a visit to a detail view: "Back to gallery page N" (and Previous,
    Next) opened the page unfiltered. The fragment now carries them there and back, and the gallery scrolls to
    the card the user came from."""
    driver.set_window_size(1280, 600)
    try:
        open_page(driver, paged_out / "gallery" / "page-2.html")
        select(driver, "f-sort", "name")
        select(driver, "f-method", "-")
        card = driver.find_elements("css selector", "li.card")[-1]
        cid = card.get_attribute("id")
        link = card.find_element("css selector", "a.thumbs")
        assert link.get_attribute("href").endswith(f"#{cid}&method=-&sort=name")
        driver.execute_script("arguments[0].click()", link)
        wait_until(lambda: "/detail/" in driver.current_url, "the detail view")
        assert driver.find_element("tag name", "h1").text == card_name(paged_out, cid)
        for rel in ("prev", "next"):
            for a in driver.find_elements("css selector", f"nav.pager a[rel={rel}]"):
                assert a.get_attribute("href").endswith("&method=-&sort=name")
        driver.find_element("partial link text", "Back to gallery page 2").click()
        wait_until(lambda: "/gallery/" in driver.current_url, "the gallery")
        assert driver.find_element("id", "f-sort").get_attribute("value") == "name"
        assert driver.find_element("id", "f-method").get_attribute("value") == "-"
        wait_until(  # the card is in view (it is the page's last card, below the fold)
            lambda: driver.execute_script(
                "var r = document.getElementById(arguments[0]).getBoundingClientRect();"
                "return r.top >= 0 && r.bottom <= window.innerHeight;",
                cid,
            ),
            "the card in view",
        )
    finally:
        driver.set_window_size(1280, 900)


def card_name(out: Path, cid: str) -> str:
    return next(n for n, u in detail_urls(out).items() if u.endswith(f"#{cid}"))


def test_pages_work_without_javascript(labeled_out):
    """Cards are server-side rendered: the raw HTML already lists every image; the controls start hidden."""
    html = (labeled_out / "gallery" / "page-1.html").read_text()
    assert html.count('<li class="card') == len(manifest_rels(labeled_out))
    assert '<form id="controls" class="controls" hidden>' in html


def test_screenshots_are_not_blank(driver, labeled_out):
    for page in (
        labeled_out / "index.html",
        labeled_out / "gallery" / "page-1.html",
        next((labeled_out / "detail").glob("*.html")),
    ):
        open_page(driver, page)
        load_all_images(driver)
        img = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"), dtype=np.float32)
        assert img.std() > 20, f"{page.name} looks blank (pixel std {img.std():.1f})"


@pytest.fixture(scope="module")
def unlabeled_out(tmp_path_factory, tiny_ckpt) -> Path:
    root = tmp_path_factory.mktemp("unlabeled")
    write_images(root / "in", 3, seed=13)
    run(
        RunOptions(input_dir=root / "in", out_dir=root / "out", methods=["gradcam"], checkpoint=tiny_ckpt),
        log=lambda s: None,
    )
    return root / "out"


@pytest.fixture(scope="module")
def truth_out(tmp_path_factory, tiny_ckpt) -> Path:
    """Grad-CAM and LIME over images with demo-style ground-truth masks beside the FAKE ones."""
    root = tmp_path_factory.mktemp("truth")
    for p in write_images(root / "in" / "FAKE", 2, seed=14):
        mask = np.zeros((32, 32), bool)
        mask[4:16, 10:24] = True
        np.save(p.with_name(p.stem + ".mask.npy"), mask)
    write_images(root / "in" / "REAL", 2, seed=15)
    run(
        RunOptions(
            input_dir=root / "in",
            out_dir=root / "out",
            methods=["gradcam", "lime"],
            checkpoint=tiny_ckpt,
            method_options={"lime": {"samples": 64}},
        ),
        log=lambda s: None,
    )
    return root / "out"


def card_columns(driver) -> list[dict]:
    """Per card: its left border colour and, per thumbnail column, the caption and whether it sits under its
    picture (same column, below it) and is shown."""
    return driver.execute_script("""
        return Array.prototype.map.call(document.querySelectorAll('li.card'), function (c) {
          return {cls: c.className, border: getComputedStyle(c).borderLeftColor,
                  cols: Array.prototype.map.call(c.querySelectorAll('.col'), function (col) {
                    var img = col.querySelector('img'), cap = col.querySelector('.cap');
                    var a = img.getBoundingClientRect(), b = cap.getBoundingClientRect();
                    return {cap: cap.textContent, method: img.getAttribute('data-method'),
                            shown: cap.offsetParent !== null,
                            under: b.top >= a.bottom - 1 && b.left >= a.left - 1 && b.right <= a.right + 1};
                  })};
        });""")


GREEN, RED, NEUTRAL = "rgb(27, 110, 42)", "rgb(163, 0, 27)", "rgb(200, 200, 200)"


def test_thumbnail_columns_are_labeled_and_borders_follow_the_label(driver, labeled_out, unlabeled_out):
    open_page(driver, labeled_out / "gallery" / "page-1.html")
    load_all_images(driver)
    cards = card_columns(driver)
    assert cards
    for c in cards:
        assert [(x["cap"], x["method"]) for x in c["cols"]] == [("Original", None), ("Grad\u2011CAM", "gradcam")]
        assert all(x["under"] and x["shown"] for x in c["cols"]), c
        assert c["border"] == (RED if "wrong" in c["cls"].split() else GREEN), c
    assert {c["border"] for c in cards} == {RED, GREEN}
    select(driver, "f-method", "-")  # originals only: the map's caption goes with its picture
    wait_until(
        lambda: all(not x["shown"] for c in card_columns(driver) for x in c["cols"] if x["method"]),
        "the map columns to hide",
    )
    assert all(c["cols"][0]["shown"] for c in card_columns(driver))

    open_page(driver, unlabeled_out / "gallery" / "page-1.html")
    cards = card_columns(driver)
    assert len(cards) == 3 and all(c["border"] == NEUTRAL for c in cards)  # no label: neither right nor wrong


def test_detail_page_colour_bars_and_ground_truth(driver, truth_out):
    urls = detail_urls(truth_out)
    fake = urls[sorted(k for k in urls if k.startswith("FAKE/"))[0]]
    check_page(driver, fake)  # every image (the colour bars too) loads, every link resolves, no console error
    bars = driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('figure[data-method] .cbar'), function (b) {"
        "  return {ticks: Array.prototype.map.call(b.querySelectorAll('.ticks span'), s => s.textContent)}; })"
    )
    assert len(bars) == 2
    grad, lime = bars
    assert grad["ticks"][0] == "0" and grad["ticks"][2].startswith("≥ ")
    assert lime["ticks"][1] == "0" and lime["ticks"][0] == "−" + lime["ticks"][2][1:]
    float(lime["ticks"][2][1:])  # a number, in probability units
    rows = driver.find_elements("css selector", "table.pointing tbody tr")
    assert [r.find_element("tag name", "th").text for r in rows] == ["Grad-CAM", "LIME"]
    assert all(r.find_elements("css selector", "td")[-1].text in ("hit", "miss") for r in rows)

    # What is drawn: one screenshot of the whole page (a tall window), cut by the elements' boxes.
    rects = driver.execute_script(
        "var d = window.devicePixelRatio;"
        "return Array.prototype.map.call(document.querySelectorAll('.cbar svg, figure.truth svg'), function (e) {"
        "  var r = e.getBoundingClientRect();"
        "  return [r.top * d, r.bottom * d, r.left * d, r.right * d].map(Math.round); })"
    )
    assert len(rects) == 3
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, height + 200)
    try:

        def drawn() -> np.ndarray | None:
            shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), np.float32)
            cuts = [shot[t:b, l:r] for t, b, l, r in rects]
            for bar in cuts[:2]:  # each colour bar's two ends differ once its SVG file has loaded
                row = bar[bar.shape[0] // 2, 3:-3]
                if np.abs(row[-1] - row[0]).max() < 100:
                    return None
            return cuts[2] if cuts[2].std() > 20 else None  # and the picture under the region

        end = time.monotonic() + 60
        while (img := drawn()) is None:
            assert time.monotonic() < end, "the colour bars or the ground-truth figure were never drawn"
            time.sleep(0.25)
    finally:
        driver.set_window_size(1280, 900)
    assert img.shape[1] >= 256
    greenness = img[..., 1] - (img[..., 0] + img[..., 2]) / 2
    s = img.shape[0] / 32  # screen pixels per image pixel
    region = np.zeros(greenness.shape, bool)
    region[int(5 * s) : int(15 * s), int(11 * s) : int(23 * s)] = True  # inside mask[4:16, 10:24], off its edges
    outside = np.ones(greenness.shape, bool)
    outside[int(3 * s) : int(17 * s), int(9 * s) : int(25 * s)] = False
    assert greenness[region].mean() > greenness[outside].mean() + 40  # the region is shaded, the rest is not
    assert img[outside].std() > 20  # drawn over the picture
    real = urls[sorted(k for k in urls if k.startswith("REAL/"))[0]]
    open_page(driver, real)
    assert driver.find_element("tag name", "h1").text.startswith("REAL/")
    assert not driver.find_elements("css selector", "figure.truth")


def test_hostile_names_never_run_script(driver, hostile_out):
    rels = manifest_rels(hostile_out)
    assert {r.rsplit("/", 1)[-1] for r in rels} == set(HOSTILE)
    for page in all_pages(hostile_out):
        check_page(driver, page)  # images load, links resolve, the alert trap stays empty, no console error
        bad = driver.execute_script(
            "return document.querySelectorAll('[onerror],[onload],[onmouseover],script:not([src]),img[src=\"x\"]')"
            ".length"
        )
        assert bad == 0, page
    # the names show as text, exactly
    open_page(driver, hostile_out / "gallery" / "page-1.html")
    seen = []
    while True:
        seen += [e.text for e in driver.find_elements("css selector", "li.card p.name")]
        nxt = driver.find_elements("css selector", "nav.pager a[rel=next]")
        if not nxt:
            break
        nxt[0].click()
    assert sorted(seen) == sorted(rels)
    assert driver.execute_script("return window.__xss") == []
    open_page(driver, hostile_out / "skipped.html")
    assert "<svg onload=alert(5)>.png" in driver.find_element("tag name", "main").text


def test_detail_view_maps_in_one_row_at_one_size_explanations_folded(driver, truth_out):
    """Issue 20: every method's map in one row at one size at a desktop width, the explanations folded under
    them; a narrow window gets no horizontal scroll bar."""
    urls = detail_urls(truth_out)
    fake = urls[sorted(k for k in urls if k.startswith("FAKE/"))[0]]
    boxes = (
        "return Array.prototype.map.call(document.querySelectorAll('.views figure > img'), function (i) {"
        "  var r = i.getBoundingClientRect(); return [r.top, r.width, r.height]; })"
    )
    try:
        driver.set_window_size(1400, 1000)
        open_page(driver, fake)
        pics = driver.execute_script(boxes)
        assert len(pics) == 3  # original, Grad-CAM, LIME
        assert len({round(t) for t, _w, _h in pics}) == 1, pics  # one row
        assert len({round(w) for _t, w, _h in pics}) == 1 and pics[0][1] >= 200, pics  # one size
        folded = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('.views figure details'), function (d) {"
            "  return [d.open, d.textContent]; })"
        )
        assert len(folded) == 2 and not any(o for o, _t in folded)
        assert "bright = more important" in folded[0][1] and "raw map (.npy" in folded[0][1]
        assert "probability units" in folded[1][1]
        ticks = driver.find_elements("css selector", "figure[data-method] .cbar .ticks")
        assert len(ticks) == 2 and all(t.is_displayed() for t in ticks)  # the numbers stay in sight
        driver.set_window_size(420, 900)
        open_page(driver, fake)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        pics = driver.execute_script(boxes)
        assert len({round(w) for _t, w, _h in pics}) == 1 and all(w <= 420 for _t, w, _h in pics), pics
    finally:
        driver.set_window_size(1280, 900)


def test_detail_view_of_a_weak_lime_map_says_so(driver, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import labeled_rows, synth

    out = synth(tmp_path / "o", labeled_rows(2), methods=("gradcam", "lime"))
    np.save(out / "maps" / "lime" / "FAKE" / "im_0000.npy", np.full((8, 8), 4e-4, np.float32))
    np.save(out / "maps" / "lime" / "REAL" / "im_0001.npy", np.full((8, 8), -0.3, np.float32))
    report.render(out)
    urls = detail_urls(out)
    check_page(driver, urls["FAKE/im_0000.png"])
    note = driver.find_element("css selector", 'figure[data-method="lime"] .weak')
    assert note.is_displayed() and "0.0004" in note.text and "overstate" in note.text
    open_page(driver, urls["REAL/im_0001.png"])  # a strong map: nothing to warn of
    assert not driver.find_elements("css selector", 'figure[data-method="lime"] .weak')
    open_page(driver, out / "gallery" / "page-1.html")
    weak = driver.find_elements("css selector", "li.card p.mag.weak")
    assert len(weak) == 1 and weak[0].is_displayed() and "⚠ weak" in weak[0].text


def test_an_earlier_models_image_says_so_in_its_detail_view_and_card(driver, tmp_path):
    """A run with another model stopped before it recomputed every image: the images it did not get to still hold
    the earlier model's prediction, and their detail view and card say so (as text: the checkpoint is user data)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import another_model, labeled_rows, synth

    out = synth(tmp_path / "o", labeled_rows(2))
    another_model(out, ["REAL/im_0001.png"], checkpoint="<img src=x onerror=alert(7)>.pt")
    report.render(out)
    urls = detail_urls(out)
    check_page(driver, urls["FAKE/im_0000.png"])
    facts = driver.find_element("css selector", "dl.facts").text
    assert (
        "Model\nan earlier model: this prediction and its maps come from resnet18, m.pt (sha256 abababababab)" in facts
    )
    assert "the next complete run recomputes them" in facts
    open_page(driver, urls["REAL/im_0001.png"])  # the last run's model: nothing to say
    assert "earlier model" not in driver.find_element("css selector", "dl.facts").text
    open_page(driver, out / "gallery" / "page-1.html")
    marks = driver.find_elements("css selector", "li.card p.earlier")
    assert len(marks) == 1 and marks[0].is_displayed() and marks[0].text == "earlier model"
    open_page(driver, out / "index.html")
    assert "1 of 2 images still hold" in driver.find_element("id", "earlier").text
    assert driver.execute_script("return window.__xss") == []


def test_detail_view_names_the_faithfulness_curves(driver, tmp_path):
    """The curves' colours are said in the caption, not only in the picture's aria-label (serve's captions too)."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import labeled_rows, synth

    from xaibatch.manifest import Manifest

    out = synth(tmp_path / "o", labeled_rows(2), methods=("gradcam",))
    m = Manifest(out / "xaibatch.sqlite")
    faith = json.dumps({"deletion_curve": [0.9, 0.5, 0.2], "insertion_curve": [0.1, 0.4, 0.8]})
    m.db.execute("UPDATE maps SET deletion = 0.25, insertion = 0.5, faith_json = ? WHERE rel LIKE 'FAKE/%'", (faith,))
    m.db.execute("UPDATE maps SET deletion = 0.3, insertion = 0.4 WHERE rel LIKE 'REAL/%'")  # scores, no curves
    m.db.commit()
    m.close()
    report.render(out)
    urls = detail_urls(out)
    check_page(driver, urls["FAKE/im_0000.png"])
    fig = driver.find_element("css selector", 'figure[data-method="gradcam"]')
    assert fig.find_elements("css selector", "svg.curves")
    text = fig.get_attribute("textContent")
    assert "(lower is better, the red curve)" in text and "(higher is better, the blue curve)" in text, text
    open_page(driver, urls["REAL/im_0001.png"])  # no curves drawn: no colours named
    text = driver.find_element("css selector", 'figure[data-method="gradcam"]').get_attribute("textContent")
    assert "deletion AUC 0.300 (lower is better)" in text and "curve" not in text, text


IG_METHOD = {"title": "IntegratedGradients (captum)", "signed": True, "config": {"reduce": "sum"}, "hash": "i"}


def report_tests():
    """tests/test_report.py as a module: its synth() writes a report's manifest without a model."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import test_report

    return test_report


@pytest.fixture(scope="module")
def five_methods_out(tmp_path_factory) -> Path:
    """A synthetic labeled report with five methods (two of them signed), so its cards are wide."""
    test_report = report_tests()

    extra = {
        "cam:eigencam": {"title": "Eigen-CAM (pytorch-grad-cam)", "signed": False, "config": {}, "hash": "e"},
        "captum:IntegratedGradients": IG_METHOD,
        "guided-gradcam": {"title": "Guided Grad-CAM", "signed": False, "config": {}, "hash": "gg"},
    }
    methods = ("gradcam", "guided-gradcam", "lime", "cam:eigencam", "captum:IntegratedGradients")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_report, "METHODS", {**test_report.METHODS, **extra})
        out = test_report.synth(
            tmp_path_factory.mktemp("five") / "o",
            test_report.labeled_rows(6),
            methods=methods,
            failures=[("FAKE/a-rather-long-file-name-that-does-not-wrap-easily.png", "cannot identify image")],
            classes=("FAKE", "REAL photographs, taken by hand with a camera and never edited"),  # a wide menu
        )
    report.render(out)
    return out


def test_a_phone_wide_window_never_scrolls_sideways(driver, five_methods_out):
    """At 375 px (a phone) no page is wider than the window: wide tables scroll in their own box, figures and
    cards shrink; a filter's label stays on the line of its menu, and a colour ramp keeps its size."""
    out = five_methods_out
    pages = [out / "index.html", out / "gallery" / "page-1.html", out / "history.html", out / "skipped.html"]
    pages.append(next(iter(detail_urls(out).values())))
    try:
        driver.set_window_size(375, 900)
        for page in pages:
            open_page(driver, page)
            load_all_images(driver)
            over = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert over <= 1, f"{page}: {over}px wider than a 375 px window"
        open_page(driver, out / "gallery" / "page-1.html")
        pairs = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('#controls label'), function (l) {"
            "  var a = l.getBoundingClientRect(), b = document.getElementById(l.htmlFor).getBoundingClientRect();"
            "  return [l.htmlFor, (a.top + a.bottom) / 2, (b.top + b.bottom) / 2]; })"
        )
        assert len(pairs) == 4
        for name, label_y, select_y in pairs:
            assert abs(label_y - select_y) < 8, f"the label of {name} is not on its menu's line"
        ramps = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('ul.legends .ramp'),"
            " r => r.getBoundingClientRect().width)"
        )
        assert len(ramps) == 5 and min(ramps) >= 88, ramps  # not squeezed by the words beside it
    finally:
        driver.set_window_size(1280, 900)


LONG_STEM = "camera_capture_2026-11-30T12-00-00Z_site-berlin-warehouse-07_conveyor-belt-3_frame000014_" + "x" * 20


LONG_CLASSES = ("FAKE_generated_by_stable_diffusion_xl_turbo", "REAL_photographed_on_site_by_the_inspectors")


@pytest.fixture(scope="module")
def long_names_out(tmp_path_factory) -> Path:
    """Images named as a camera names them (114 characters, no space) in classes of 43 characters, demo-style masks
    beside the FAKE ones (the ground truth section names its mask file) and an unreadable file of such a name."""
    root = tmp_path_factory.mktemp("long-names")
    ckpt = make_checkpoint(root / "m.pt", classes=LONG_CLASSES)
    for cls, seed in zip(LONG_CLASSES, (31, 32), strict=True):
        for i, p in enumerate(write_images(root / "tmp" / cls, 2, seed=seed)):
            q = root / "in" / cls / f"{cls[:4].lower()}_{LONG_STEM}{i}.png"
            q.parent.mkdir(parents=True, exist_ok=True)
            p.rename(q)
            if cls.startswith("FAKE"):
                mask = np.zeros((32, 32), bool)
                mask[4:16, 10:24] = True
                np.save(q.with_name(q.stem + ".mask.npy"), mask)
    (root / "in" / LONG_CLASSES[1] / f"broken_{LONG_STEM}.png").write_bytes(b"not an image")
    run(
        RunOptions(input_dir=root / "in", out_dir=root / "out", methods=["gradcam"], checkpoint=ckpt),
        log=lambda s: None,
    )
    return root / "out"


@pytest.mark.parametrize("width", [375, 414, 520])
def test_long_file_and_class_names_never_widen_a_phones_page(driver, long_names_out, width):
    """A FAKE image's detail view at 375 px was 37 px wider than the phone: the ground truth's note names the mask
    file (``<stem>.mask.npy``) in a ``<code>``, which did not break inside the name. And its class probabilities
    table, as wide as a long class name and a 256 px cell, hid the probabilities past its box's right edge. With 43
    characters class names the summary's "Precision (<class>)" and a gallery page's group headings did not break
    either, and at 520 px the summary's facts column, as wide as its longest term, pushed the values off the page."""
    out = long_names_out
    pages = [out / "index.html", out / "gallery" / "page-1.html", out / "history.html", out / "skipped.html"]
    pages += [url for name, url in detail_urls(out).items() if name.startswith("FAKE")]
    try:
        driver.set_window_size(width, 900)
        for page in pages:
            open_page(driver, page)
            load_all_images(driver)
            over = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert over <= 1, f"{page}: {over}px wider than a {width} px window"
        assert driver.find_elements("css selector", "figure.truth")  # the ground truth section was drawn
        # each class's probability in view, not past the right edge of the table's box (the bar may be short)
        rows = driver.execute_script(
            "var box = document.querySelector('table.probs').parentNode.getBoundingClientRect();"
            "return Array.prototype.map.call(document.querySelectorAll('table.probs tbody td'), function (td) {"
            "  var r = document.createRange(); r.selectNodeContents(td);"
            "  return [td.textContent.trim(), r.getBoundingClientRect().right - box.right]; })"
        )
        assert len(rows) == 2 and all(past <= 0 for _text, past in rows), rows
    finally:
        driver.set_window_size(1280, 900)


@pytest.mark.parametrize("width", [375, 414, 540])
def test_a_phone_shows_the_summarys_charts_at_a_readable_size(driver, labeled_out, width):
    """At 375 px the ROC curve, the histogram and the reliability diagram were shrunk to the 327 px column, their
    12 px labels drawn at 7.8-9.3 px (the sanity figure's at 5 px). A chart now shrinks to 93% of its drawn size at
    most (11.2 px labels) and scrolls in its own box, as a wide table does; the page itself does not scroll
    sideways. Where 93% fits (a tablet, a half-screen window) it shrinks to the column and does not scroll."""
    try:
        driver.set_window_size(width, 900)
        open_page(driver, labeled_out / "index.html")
        load_all_images(driver)
        charts = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('figure.chart'), function (f) {"
            "  var i = f.querySelector('img'), b = f.getBoundingClientRect();"
            "  return [i.getAttribute('src'), i.getBoundingClientRect().width / +i.getAttribute('width'), b.right,"
            "          f.scrollWidth > f.clientWidth ? getComputedStyle(f).overflowX : 'fits']; })"
        )
        assert len(charts) == 3, charts  # roc, confidence, reliability
        page = driver.execute_script("return document.documentElement.clientWidth")
        for src, scale, right, scrolls in charts:
            assert 0.925 <= scale <= 1, f"{src} drawn at {scale:.2f} of its size"
            assert right <= page and scrolls in ("auto", "fits"), (src, right, scrolls)
            if width == 540:  # a 492 px column: the 500 px histograms shrink to it, the 420 px ROC curve fits
                assert scrolls == "fits", (src, scale)
        over = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert over <= 1, f"{over}px wider than a {width} px window"
    finally:
        driver.set_window_size(1280, 900)


def test_the_gallerys_fields_are_large_enough_that_a_phone_does_not_zoom_into_them(driver, labeled_out):
    """iOS Safari zooms the page into a field whose text is under 16 px when it takes the focus, and stays zoomed:
    the gallery's find box and menus were 15 px (the page's text), so a tap on "File name contains" on an iPhone
    left the gallery magnified and scrolled sideways."""
    try:
        driver.set_window_size(375, 900)
        open_page(driver, labeled_out / "gallery" / "page-1.html")
        sizes = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('main input, main select, main button'),"
            " e => [e.id || e.textContent.trim(), parseFloat(getComputedStyle(e).fontSize)])"
        )
        assert len(sizes) >= 5, sizes  # the find box, four menus, reset
        assert all(px >= 16 for _id, px in sizes), sizes
    finally:
        driver.set_window_size(1280, 900)


def test_detail_colour_bars_line_up_when_a_title_wraps(driver, five_methods_out):
    """Six pictures in a row: a long method name wraps onto two lines, and every colour bar in the row still
    starts at the same height (before, the wrapped titles pushed their bars down)."""
    url = next(iter(detail_urls(five_methods_out).values()))
    driver.set_window_size(1280, 900)
    open_page(driver, url)
    rows = driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('.views figure[data-method]'), function (f) {"
        "  var t = f.querySelector('figcaption strong').getBoundingClientRect();"
        "  return [t.height, f.querySelector('.cbar').getBoundingClientRect().top]; })"
    )
    assert len(rows) == 5
    line = min(h for h, _top in rows)
    assert max(h for h, _top in rows) > 1.5 * line, rows  # some title wraps: the case under test
    assert max(top for _h, top in rows) - min(top for _h, top in rows) < 1, rows


ROWS = """
var rows = {};
Array.prototype.forEach.call(document.querySelectorAll('.views figure'), function (f) {
  var r = f.getBoundingClientRect(), t = Math.round(r.top);
  (rows[t] = rows[t] || []).push(Math.round(r.width * 10) / 10);
});
return Object.keys(rows).sort(function (a, b) { return a - b; }).map(function (t) { return rows[t]; });
"""


@pytest.mark.parametrize("width", [1280, 1024, 900, 768, 600, 375])
def test_a_detail_row_too_wide_for_the_window_wraps_evenly(driver, five_methods_out, width):
    """Six pictures (the original and five maps) that do not fit one row split into even rows at one size:
    at 1024 px the row wrapped 5 + 1, at 768 px 4 + 2, an orphan map under a full row of small ones. Now
    3 + 3 (or 2 + 2 + 2), as large as the rows' share allows; one row where six fit, as before."""
    url = next(iter(detail_urls(five_methods_out).values()))
    try:
        driver.set_window_size(width, 900)
        open_page(driver, url)
        rows = driver.execute_script(ROWS)
        counts = [len(r) for r in rows]
        assert sum(counts) == 6
        assert len(set(counts)) == 1, rows  # even rows: no orphan
        assert len({w for r in rows for w in r}) == 1, rows  # one size
        assert rows[0][0] >= FIGURE_MIN
        if width >= 1280:
            assert counts == [6]
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 1
        # a window resized while the view is open wraps again, raising no error event
        driver.execute_script("window.__errors = []; addEventListener('error', e => __errors.push(e.message));")
        driver.set_window_size(1280, 900)
        wait_until(lambda: [len(r) for r in driver.execute_script(ROWS)] == [6], "one row after widening")
        driver.set_window_size(width, 900)
        wait_until(lambda: driver.execute_script(ROWS) == rows, "the same rows again")
        assert driver.execute_script("return window.__errors") == []
    finally:
        driver.set_window_size(1280, 900)


@pytest.fixture(scope="module")
def tall_out(tmp_path_factory) -> Path:
    """A synthetic report of a tall photo (300x2400: display copy 64x512) and a panorama (4000x800: 512x102),
    four methods with long library titles, colour bars with long numbers and a weak LIME map; and a web banner
    (10000x20: 512x1) and a one-pixel-wide line (1x400), thinner than any photo."""
    test_report = report_tests()

    from xaibatch.layout import display_size
    from xaibatch.pipeline.pictures import map_size

    extra = {
        "cam:gradcam++": {"title": "Grad-CAM++ (pytorch-grad-cam)", "signed": False, "config": {}, "hash": "p"},
        "captum:IntegratedGradients": IG_METHOD,
    }
    methods = ("gradcam", "cam:gradcam++", "captum:IntegratedGradients", "lime")
    sizes = {
        "FAKE/tall.png": (300, 2400),
        "REAL/wide.png": (4000, 800),
        "REAL/banner.png": (10000, 20),
        "REAL/line.png": (1, 400),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_report, "METHODS", {**test_report.METHODS, **extra})
        out = test_report.synth(
            tmp_path_factory.mktemp("tall") / "o",
            [
                ("FAKE/tall.png", 0, 0.9),
                ("REAL/wide.png", 1, 0.2),
                ("REAL/banner.png", 1, 0.3),
                ("REAL/line.png", 1, 0.4),
            ],
            methods=methods,
        )
    m = Manifest(out / FILENAME)
    for rel, (w, h) in sizes.items():
        m.db.execute("UPDATE images SET width = ?, height = ? WHERE rel = ?", (w, h, rel))
    m.db.commit()
    m.close()
    rng = np.random.default_rng(0)
    for rel, (w, h) in sizes.items():
        stem = rel.rsplit(".", 1)[0]
        dw, dh = display_size(w, h)
        for sub in ("images", *(f"maps/{k}" for k in methods)):
            Image.fromarray(rng.integers(0, 255, (dh, dw, 3), np.uint8)).save(out / sub / f"{stem}.png")
        mh, mw = map_size(h, w, 1024)
        ramp = np.linspace(0, 0.93, mh * mw, dtype=np.float32).reshape(mh, mw)  # ticks 0, 0.46, >= 0.92
        for k in methods:
            a = {"lime": ramp * 4e-4, "captum:IntegratedGradients": (ramp - 0.465) * 0.0012}.get(k, ramp)
            np.save(out / "maps" / k / f"{stem}.npy", a)  # IntegratedGradients: about -0.000557 / 0 / +0.000557
    report.render(out)
    return out


FIGURE_MIN = 150  # report.css .views --min: the width a title and a colour bar's numbers need

TALL_LAYOUT = """
function box(e) { var r = e.getBoundingClientRect(); return {l: r.left, r: r.right, t: r.top, b: r.bottom, w: r.width, h: r.height}; }
return Array.prototype.map.call(document.querySelectorAll('.views figure'), function (f) {
  var img = f.querySelector('img');
  return {fig: box(f), img: box(img), dw: +img.getAttribute('width'), dh: +img.getAttribute('height'),
          ticks: Array.prototype.map.call(f.querySelectorAll('.cbar .ticks > span'), function (t) {
            return {text: t.textContent, box: box(t), lines: t.getClientRects().length}; })};
});
"""


def overlapping(boxes: list[dict]) -> list[tuple[int, int]]:
    """The pairs of boxes that cover a common area (a shared edge is not an overlap)."""
    return [
        (i, j)
        for i, a in enumerate(boxes)
        for j, b in enumerate(boxes[i + 1 :], i + 1)
        if min(a["r"], b["r"]) - max(a["l"], b["l"]) > 0.5 and min(a["b"], b["b"]) - max(a["t"], b["t"]) > 0.5
    ]


@pytest.mark.parametrize("width", [1400, 390])
def test_a_tall_pictures_figures_keep_a_readable_width(driver, tall_out, width):
    """A 300x2400 photo (display copy 64x512) held every figure to 64 px at 1400 px: titles broke inside words
    ("Integrat|edGradi|ents"), colour-bar numbers ran together ("00.4 >= / 65 0.92"); at 390 px the copies were
    stretched 2.5 times. Each figure is now at least FIGURE_MIN wide, the picture at most its display copy's
    size, its aspect kept, centred, no taller than the window; numbers and words are never cut or overlaid."""
    url = detail_urls(tall_out)["FAKE/tall.png"]
    try:
        driver.set_window_size(width, 900)
        open_page(driver, url)
        assert not load_all_images(driver)
        figs = driver.execute_script(TALL_LAYOUT)
        assert len(figs) == 5 and {(f["dw"], f["dh"]) for f in figs} == {(64, 512)}
        for f in figs:
            fig, img = f["fig"], f["img"]
            assert fig["w"] >= FIGURE_MIN, figs
            assert img["w"] <= f["dw"] + 0.5 and img["h"] <= f["dh"] + 0.5, f  # never enlarged
            assert img["h"] == pytest.approx(img["w"] * f["dh"] / f["dw"], abs=1.5), f  # its aspect kept
            assert abs((img["l"] + img["r"]) / 2 - (fig["l"] + fig["r"]) / 2) <= 1, f  # centred
            assert img["h"] <= driver.execute_script("return window.innerHeight")
            ticks = f["ticks"]
            if ticks:  # the original has no colour bar
                assert len(ticks) == 3 and all(t["lines"] == 1 for t in ticks), ticks  # no number broken
                assert overlapping([t["box"] for t in ticks]) == [], ticks
                assert all(fig["l"] - 0.5 <= t["box"]["l"] and t["box"]["r"] <= fig["r"] + 0.5 for t in ticks), ticks
        texts = [t["text"] for f in figs for t in f["ticks"]]
        assert any(t.startswith("−0.0005") for t in texts) and any(t.startswith("≥ 0.9") for t in texts), texts
        if width >= 1400:
            assert len({round(f["fig"]["t"]) for f in figs}) == 1, figs  # one row
        assert driver.execute_script(BROKEN_WORDS, ".views figcaption strong") == []
        assert driver.execute_script(BROKEN_WORDS, ".views .weak") == []
        weak = driver.find_element("css selector", 'figure[data-method="lime"] .weak')
        assert weak.is_displayed() and weak.size["width"] >= FIGURE_MIN  # not one word a line
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 1
    finally:
        driver.set_window_size(1280, 900)


@pytest.mark.parametrize("width", [1400, 390])
def test_a_panoramas_figures_fill_their_columns_as_before(driver, tall_out, width):
    """A 4000x800 photo (display copy 512x102) keeps its layout: one row at 1400 px, each picture as wide as its
    figure (never wider than 512 px), two columns on a phone, nothing wider than the window."""
    url = detail_urls(tall_out)["REAL/wide.png"]
    try:
        driver.set_window_size(width, 900)
        open_page(driver, url)
        figs = driver.execute_script(TALL_LAYOUT)
        assert len(figs) == 5 and {(f["dw"], f["dh"]) for f in figs} == {(512, 102)}
        for f in figs:
            assert f["fig"]["w"] >= FIGURE_MIN and f["img"]["w"] == pytest.approx(f["fig"]["w"], abs=0.5), f
            assert f["img"]["w"] <= 512.5
            assert overlapping([t["box"] for t in f["ticks"]]) == []
        tops = sorted({round(f["fig"]["t"]) for f in figs})
        assert len(tops) == (1 if width >= 1400 else 3), figs  # one row; on a phone two figures a row
        assert driver.execute_script(BROKEN_WORDS, ".views figcaption strong") == []
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 1
    finally:
        driver.set_window_size(1280, 900)


@pytest.mark.parametrize(
    ("rel", "width"), [("REAL/banner.png", 1400), ("REAL/banner.png", 390), ("REAL/line.png", 1400)]
)
def test_a_banner_or_a_one_pixel_line_is_drawn_stretched_not_invisible(driver, tall_out, rel, width):
    """A 10000x20 web banner (display copy 512x1) was drawn 253x0 px: its original and every map invisible, and
    a 1x400 line 1 px wide. A picture thinner than 1:8 is now drawn stretched to 1:8, said in the original's
    caption; the original and its maps in boxes of one size, so the maps still lie over the image."""
    url = detail_urls(tall_out)[rel]
    try:
        driver.set_window_size(width, 900)
        open_page(driver, url)
        assert not load_all_images(driver)
        figs = driver.execute_script(TALL_LAYOUT)
        assert len(figs) == 5
        boxes = {(round(f["img"]["w"]), round(f["img"]["h"])) for f in figs}
        assert len(boxes) == 1, figs  # the maps line up with the original
        ((w, h),) = boxes
        assert min(w, h) >= 16 and max(w, h) / min(w, h) == pytest.approx(8, abs=0.5), figs
        caption = driver.find_element("css selector", ".views figure figcaption").text
        assert "stretched" in caption, caption
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 1
    finally:
        driver.set_window_size(1280, 900)


def test_detail_view_arrow_keys_walk_the_images(driver, paged_out):
    """→ and ← step through the images as Next and Previous do, across gallery pages too."""
    from selenium.webdriver.common.keys import Keys

    open_page(driver, paged_out / "gallery" / "page-1.html")
    names = [c.get_attribute("data-name") for c in driver.find_elements("css selector", "li.card")]
    open_page(driver, paged_out / "gallery" / "page-2.html")
    names += [c.get_attribute("data-name") for c in driver.find_elements("css selector", "li.card")]
    open_page(driver, detail_urls(paged_out)[names[3]])

    def press(key: str, expect: str) -> None:
        driver.find_element("tag name", "body").send_keys(key)
        wait_until(lambda: driver.find_element("tag name", "h1").text == expect, f"{expect} after the key")

    press(Keys.ARROW_RIGHT, names[4])
    press(Keys.ARROW_RIGHT, names[5])  # the first image of gallery page 2: another data file
    press(Keys.ARROW_LEFT, names[4])
    nxt = driver.find_element("css selector", "a[rel=next]")
    assert nxt.get_attribute("aria-keyshortcuts") == "ArrowRight"


def _contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two computed CSS colours ("rgb(r, g, b)")."""
    import re

    def lum(c: str) -> float:
        r, g, b = (int(x) / 255 for x in re.findall(r"\d+", c)[:3])
        lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_focus_ring_stands_out_on_the_page_and_the_header(driver, labeled_out):
    """WCAG 1.4.11: a keyboard user's focus indicator needs 3:1 against what it is drawn on (the light orange
    of before had 2:1 on white)."""
    from selenium.webdriver.common.keys import Keys

    open_page(driver, labeled_out / "gallery" / "page-1.html")
    driver.find_element("tag name", "body").send_keys(Keys.TAB)  # the skip link, then the header's links
    rings = []
    for _ in range(12):
        rings.append(
            driver.execute_script(
                "var e = document.activeElement, s = getComputedStyle(e), p = e.parentElement;"  # the ring is outside e
                "while (p && getComputedStyle(p).backgroundColor.indexOf('rgba(0, 0, 0, 0)') === 0) { p = p.parentElement; }"
                "return [s.outlineStyle, s.outlineColor, p ? getComputedStyle(p).backgroundColor : 'rgb(255, 255, 255)',"
                " e.closest('header') !== null];"
            )
        )
        driver.switch_to.active_element.send_keys(Keys.TAB)
    assert any(h for *_r, h in rings) and not all(h for *_r, h in rings)  # on the header and on the page
    for style, ring, background, _in_header in rings:
        assert style != "none"
        assert _contrast(ring, background) >= 3, (ring, background)


def test_a_ring_at_the_pictures_edge_is_drawn_whole(driver, tmp_path):
    """A map whose maximum is the corner pixel: its numbered ring on the ground-truth figure reaches past the
    picture's edge, and was cut off there."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import synth as manifest_synth

    inp = tmp_path / "in"
    (inp / "FAKE").mkdir(parents=True)
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    np.save(inp / "FAKE" / "im_0000.mask.npy", mask)
    out = manifest_synth(tmp_path / "o", [("FAKE/im_0000.png", 0, 0.9)], side=32, input_dir=inp)
    corner = np.zeros((32, 32), np.float32)
    corner[0, 0] = 1.0
    np.save(out / "maps" / "gradcam" / "FAKE" / "im_0000.npy", corner)
    report.render(out)
    check_page(driver, detail_urls(out)["FAKE/im_0000.png"])
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, height + 200)
    try:
        left, top = driver.execute_script(
            "var r = document.querySelector('figure.truth svg').getBoundingClientRect(), d = window.devicePixelRatio;"
            "return [Math.round(r.left * d), Math.round(r.top * d)];"
        )
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), np.int32)
    finally:
        driver.set_window_size(1280, 900)
    outside = np.concatenate(
        [shot[top - 8 : top, left : left + 16].reshape(-1, 3), shot[top : top + 16, left - 8 : left].reshape(-1, 3)]
    )
    cyan = (outside[:, 0] < 90) & (outside[:, 1] > 170) & (outside[:, 2] > 200)  # MARKER_COLOURS[0], #00e5ff
    assert cyan.sum() >= 4, "the ring is cut off at the picture's edge"


BROKEN_WORDS = """
return Array.prototype.flatMap.call(document.querySelectorAll(arguments[0]), function (el) {
  var broken = [], walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT), node, m;
  while ((node = walk.nextNode())) {
    var words = /[^\\s-]+-?/g;  // a break after a space or a hyphen is a word's own; <wbr> parts are their own nodes
    while ((m = words.exec(node.data))) {
      var r = document.createRange();
      r.setStart(node, m.index);
      r.setEnd(node, m.index + m[0].length);
      var tops = new Set(Array.prototype.map.call(r.getClientRects(), function (b) { return Math.round(b.top); }));
      if (tops.size > 1) broken.push(m[0]);
    }
  }
  return broken;
});
"""


LINES_OF_LAST_WORD = """
var cap = Array.prototype.find.call(document.querySelectorAll(arguments[0]), c => c.textContent.startsWith(arguments[1]));
var t = cap.firstChild, r = document.createRange();
r.setStart(t, t.data.lastIndexOf(' ') + 1);
r.setEnd(t, t.data.length);
return new Set(Array.prototype.map.call(r.getClientRects(), b => Math.round(b.top))).size;
"""


@pytest.mark.parametrize("width", [375, 1024, 1920])
def test_card_captions_never_break_inside_a_word(driver, five_methods_out, width):
    """The 88 px cards broke "IntegratedGrad|ients" (and at 375 px "Integrat|edGradi|ents"): captions now break
    between the words of a camel-case name, and on a phone the thumbnails wrap to a second row rather than
    shrink under a word's width."""
    try:
        driver.set_window_size(width, 900)
        open_page(driver, five_methods_out / "gallery" / "page-1.html")
        caps = driver.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('.card .cap'), c => c.textContent)"
        )
        assert any(c.startswith("IntegratedGradients") for c in caps), caps  # the case under test
        assert driver.execute_script(BROKEN_WORDS, ".card .cap") == []
        # nor after the hyphen of a short word: a card read "Guided Grad-" over "CAM"
        assert driver.execute_script(LINES_OF_LAST_WORD, ".card .cap", "Guided Grad") == 1
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 1
    finally:
        driver.set_window_size(1280, 900)


def test_the_confusion_matrix_note_reads_on_one_line(driver, labeled_out):
    """Its caption was as wide as the 2x2 table: three lines of a few words. The note now spans the page."""
    try:
        driver.set_window_size(1024, 900)
        open_page(driver, labeled_out / "index.html")
        lines = driver.execute_script("""
            var el = document.getElementById('confusion-note');  // its shading clause: a span, not printed
            var r = document.createRange(); r.selectNodeContents(el);
            return new Set(Array.prototype.map.call(r.getClientRects(), b => Math.round(b.top))).size;""")
        assert lines == 1
    finally:
        driver.set_window_size(1280, 900)


def found(driver) -> list[str]:
    """The names listed by "find an image" (read in one call: the list is rebuilt as the search runs)."""
    return driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('#find-results a'), a => a.textContent)"
    )


def test_find_an_image_on_any_page_and_open_its_detail_view(driver, paged_out, hostile_out):
    """The gallery's "find an image" searches every page's names (gallery/names.js, loaded on the first
    search): the names that contain the text, or a pasted path that ends with a name, each a link to its
    detail view; names are shown as text."""
    from selenium.webdriver.common.keys import Keys

    urls = detail_urls(paged_out)
    last_page = max(int(u.split("detail/page-")[1].split(".")[0]) for u in urls.values())
    name = sorted(n for n, u in urls.items() if f"detail/page-{last_page}.html" in u)[0]
    assert last_page > 1
    open_page(driver, paged_out / "gallery" / "page-1.html")
    assert name not in [c["name"] for c in visible_cards(driver)]  # not on this page
    box = driver.find_element("id", "find-name")
    query = name.rsplit("/", 1)[-1][:-4].upper()  # "IMG_007": any case
    box.send_keys(query)
    want = sorted(n for n in urls if query.lower() in n.lower())
    wait_until(lambda: sorted(found(driver)) == want, f"the names containing {query}")
    assert len(want) == 2 and name in want  # FAKE/img_007.png and REAL/img_007.png
    status = driver.find_element("id", "find-status").text
    assert status == "2 images."
    box.clear()
    box.send_keys("C:\\data\\incoming\\" + name.replace("/", "\\"))  # a pasted Windows path too
    wait_until(lambda: found(driver) == [name], "the pasted Windows path's image")
    box.clear()
    box.send_keys(f"/data/incoming/{name}")  # a pasted path finds the image it ends with
    wait_until(lambda: found(driver) == [name], "the pasted path's image")
    box.send_keys(Keys.ENTER)  # Enter: to the first result ...
    driver.switch_to.active_element.send_keys(Keys.ENTER)  # ... and open it
    wait_until(
        lambda: driver.find_elements("tag name", "h1") and driver.find_element("tag name", "h1").text == name,
        "its detail view",
    )
    assert driver.current_url == urls[name]
    check_page(driver, driver.current_url)
    open_page(driver, paged_out / "gallery" / "page-1.html")
    driver.find_element("id", "find-name").send_keys("no such name")
    wait_until(lambda: driver.find_element("id", "find-status").text.startswith("No file name contains"), "none")
    assert found(driver) == []
    # hostile names: listed exactly, as text
    rels = manifest_rels(hostile_out)
    open_page(driver, hostile_out / "gallery" / "page-1.html")
    driver.find_element("id", "find-name").send_keys("<")
    wait_until(lambda: sorted(found(driver)) == sorted(r for r in rels if "<" in r), "the names with <")
    assert driver.execute_script("return window.__xss") == []
    assert driver.execute_script("return document.querySelectorAll('[onerror],[onload],script:not([src])').length") == 0


def test_skip_to_content_keeps_the_image_shown(driver, paged_out):
    """On a detail view "Skip to content" set the fragment to #main, which names no image: the view jumped to
    the page's first image and the URL no longer named the one read. It now moves the focus only."""
    from selenium.webdriver.common.keys import Keys

    urls = detail_urls(paged_out)
    name = sorted(urls)[3]
    open_page(driver, urls[name])
    assert driver.find_element("tag name", "h1").text == name
    driver.find_element("tag name", "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("class") == "skip"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_until(lambda: driver.switch_to.active_element.get_attribute("id") == "main", "the focus on main")
    assert driver.find_element("tag name", "h1").text == name and driver.current_url == urls[name]
    driver.execute_script("location.hash = 'main'")  # a link from elsewhere: still the same image
    time.sleep(0.2)
    assert driver.find_element("tag name", "h1").text == name


def test_probability_bars_are_as_long_as_the_probabilities(driver, labeled_out):
    """The bars were a percentage of the table cell, capped at 10rem: every probability over about 67% drew the
    same full bar. Each bar is now its share of one track."""
    for url in sorted(detail_urls(labeled_out).values())[:4]:
        open_page(driver, url)
        rows = driver.execute_script("""
            return Array.prototype.map.call(document.querySelectorAll('table.probs tbody tr'), function (tr) {
              var bar = tr.querySelector('.bar'), track = tr.querySelector('.track');
              return [tr.querySelector('td').textContent.trim(), bar.getBoundingClientRect().width,
                      track.getBoundingClientRect().width];
            });""")
        assert len(rows) == 2
        for text, bar, track in rows:
            assert bar == pytest.approx(track * float(text.rstrip("%")) / 100, abs=1.0), (text, bar, track)


def test_a_mangled_fragment_leaves_the_gallery_working(driver, labeled_out):
    """A link cut mid-escape (#class=%E0%A4%A) threw "URI malformed" and left the filters unapplied."""
    driver.get_log("browser")  # drop earlier pages' messages
    open_page(driver, (labeled_out / "gallery" / "page-1.html").as_uri() + "#class=%E0%A4%A&sort=name")
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    assert driver.find_element("id", "f-status").text.startswith("Showing ")
    assert driver.find_element("id", "f-sort").get_attribute("value") == "name"  # the readable part still applies


def test_a_right_to_left_name_turns_no_text_around_it(driver, hostile_out):
    """A name with a right-to-left override turned the words after it ("(gallery page 1)" read backwards in the
    Find results). Names are isolated: their own direction, bidi-isolated in the detail view, and between
    isolate marks in the page title and the pictures' alt texts."""
    open_page(driver, hostile_out / "gallery" / "page-1.html")
    driver.find_element("id", "find-name").send_keys("rtl")
    wait_until(lambda: len(found(driver)) == 1 and RTL in found(driver)[0], "the RTL name")
    link = driver.find_element("css selector", "#find-results a")
    assert link.get_attribute("dir") == "auto"
    small = driver.find_element("css selector", "#find-results small")
    assert small.get_attribute("textContent").startswith(" (gallery page ")
    # the words after the name stay left to right: "(" is left of ")"
    left, right = driver.execute_script("""
        var t = document.querySelector('#find-results small').firstChild, r = document.createRange();
        r.setStart(t, 1); r.setEnd(t, 2); var a = r.getBoundingClientRect().left;
        r.setStart(t, t.length - 1); r.setEnd(t, t.length); return [a, r.getBoundingClientRect().left];""")
    assert left < right
    link.click()
    wait_until(lambda: "\u202e" in driver.find_element("tag name", "h1").text, "its detail view")
    assert driver.execute_script("return getComputedStyle(document.querySelector('h1 bdi')).unicodeBidi") == "isolate"
    assert driver.title.startswith("\u2068") and "\u2069 · " in driver.title
    alts = driver.execute_script("return Array.prototype.map.call(document.querySelectorAll('.views img'), i => i.alt)")
    assert alts and all(a.startswith("\u2068") or " of \u2068" in a for a in alts), alts


@pytest.fixture(scope="module")
def mixed_out(tmp_path_factory) -> Path:
    """test_report.mixed_rows at 3 cards a page: wrong FAKE (4), wrong REAL (3), right FAKE (3), right REAL (3),
    in this gallery order over 5 pages, each group across a page boundary."""
    tr = report_tests()
    out = tr.synth(tmp_path_factory.mktemp("mixed") / "o", tr.mixed_rows())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.model, "PAGE_SIZE", 3)
        report.render(out)
    return out


def test_detail_prev_next_follow_the_gallerys_filter(driver, mixed_out):
    """With "misclassified" chosen, Previous from the first misclassified image showed a correct one: Previous and
    Next ignored the gallery's filters. They now step through the images the class and misclassified/correct
    filters keep, in gallery order and across gallery pages (and data files), keep the filter in the URL, and say
    when there is no previous or next one; without a filter they walk every image as before."""
    import re

    from selenium.webdriver.common.keys import Keys

    order = []  # (name, gallery group) in gallery order
    for n in range(1, 6):
        html = (mixed_out / "gallery" / f"page-{n}.html").read_text()
        for group, cards in re.findall(r'<section class="group" id="([^"]*)"(.*?)</ol>', html, re.S):
            order += [(name, group) for name in re.findall(r'data-name="([^"]*)"', cards)]
    assert [g for _n, g in order] == ["wrong-0"] * 4 + ["wrong-1"] * 3 + ["right-0"] * 3 + ["right-1"] * 3

    def h1() -> str:
        return driver.find_element("tag name", "h1").text

    def walk(rel: str, choice: str) -> list[str]:
        """Follow the pager's ``rel`` link until it is gone; the images shown, the filter kept in every URL."""
        seen = [h1()]
        while links := driver.find_elements("css selector", f"nav.pager a[rel={rel}]"):
            links[0].click()
            wait_until(lambda: h1() != seen[-1], f"the {rel} image")
            seen.append(h1())
            frag = driver.execute_script("return location.hash")
            assert frag.endswith(choice) if choice else "&" not in frag, driver.current_url
        return seen

    def pager() -> str:
        return driver.find_element("css selector", "nav.pager").text

    # the gallery's "misclassified": its first card's detail view, then Next to the last misclassified image
    open_page(driver, mixed_out / "gallery" / "page-1.html")
    select(driver, "f-show", "wrong")
    driver.find_element("css selector", "li.card a.thumbs").click()
    wrong = [n for n, g in order if g.startswith("wrong-")]
    assert walk("next", "&show=wrong") == wrong  # pages 1, 2 and 3
    assert "No next image in this filter" in pager()  # a correct image follows in the gallery
    back = driver.find_element("partial link text", "Back to gallery page 3")
    assert back.get_attribute("href").endswith("&show=wrong")
    assert walk("prev", "&show=wrong") == wrong[::-1]
    assert "← Previous" in pager() and "in this filter" not in pager()  # the gallery's first image

    # a class (both sections): misclassified FAKE, then correct FAKE, over the misclassified REAL between them
    fake = [n for n, g in order if g.endswith("-0")]
    open_page(driver, detail_urls(mixed_out)[fake[0]].split("&")[0] + "&class=0")
    assert walk("next", "&class=0") == fake
    assert "No next image in this filter" in pager()
    # the arrow keys follow the same steps, across a page boundary (right FAKE's first, on page 3, back to page 2)
    open_page(driver, detail_urls(mixed_out)[fake[4]].split("&")[0] + "&class=0&sort=name")
    driver.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
    wait_until(lambda: h1() == fake[3], "the last misclassified FAKE after ←")
    assert "/detail/page-2.html#" in driver.current_url and driver.current_url.endswith("&class=0&sort=name")

    # a class and a section: one group, no step out of it either way
    reals = [n for n, g in order if g == "wrong-1"]
    open_page(driver, detail_urls(mixed_out)[reals[0]].split("&")[0] + "&class=1&show=wrong")
    assert "No previous image in this filter" in pager()
    assert walk("next", "&class=1&show=wrong") == reals
    assert "No next image in this filter" in pager()

    # no filter: every image in gallery order, as before
    open_page(driver, detail_urls(mixed_out)[order[0][0]])
    assert walk("next", "") == [n for n, _g in order]
    assert "in this filter" not in pager()


def test_a_long_class_name_wraps_inside_its_mean_maps_caption(driver, tmp_path, tiny_ckpt):
    """A class name with no space ("american_staffordshire_terrier") ran out of its 152 px mean map caption over
    the next figure's; it now breaks inside its caption, at any width."""
    classes = ["american_staffordshire_terrier_" + "x" * 30, "REAL"]
    ckpt = make_checkpoint(tmp_path / "c.pt", classes=classes)
    for i, c in enumerate(classes):
        write_images(tmp_path / "in" / c, 3, seed=i)
    run(
        RunOptions(input_dir=tmp_path / "in", out_dir=tmp_path / "out", methods=["gradcam"], checkpoint=ckpt),
        log=lambda s: None,
    )
    try:
        for width in (375, 1400):
            driver.set_window_size(width, 900)
            open_page(driver, tmp_path / "out" / "index.html")
            spill = driver.execute_script(
                "return Array.prototype.map.call(document.querySelectorAll('.mean-maps figcaption'), function (c) {"
                "  return c.scrollWidth - c.clientWidth; })"
            )
            assert spill and max(spill) <= 1, (width, spill)
    finally:
        driver.set_window_size(1280, 900)


def test_a_link_from_before_a_run_moved_or_removed_its_image_never_shows_another(driver, paged_out):
    """A colleague's gallery page open while a cron job's run added images (a bookmark, serve's link): its link to
    detail/page-1.html#<id> of an image that the run moved to page 2 drew page 1's first image, another one, with
    nothing to say so; a link to an image removed since did the same. Now the view goes to the image's page (the
    gallery's filters kept), or says the image is not in the report any more."""
    urls = detail_urls(paged_out)
    name = sorted(n for n, u in urls.items() if "detail/page-2.html#" in u)[0]
    cid = urls[name].rsplit("#", 1)[1]
    stale = (paged_out / "detail" / "page-1.html").resolve().as_uri()
    driver.get_log("browser")
    open_page(driver, f"{stale}#{cid}&show=right")
    wait_until(lambda: driver.current_url.endswith(f"/detail/page-2.html#{cid}&show=right"), "the image's own page")
    wait_until(lambda: driver.find_element("css selector", "#detail h1").text == name, "the image the link named")
    open_page(driver, paged_out / "detail" / "page-3.html")  # another document: the next link is a fresh load
    open_page(driver, f"{stale}#c{'0' * 12}")
    wait_until(
        lambda: driver.find_element("css selector", "#detail h1").text == "Not in the report any more",
        "the gone image's note",
    )
    assert "a run since removed it" in driver.find_element("id", "detail").text
    assert driver.current_url.endswith(f"/detail/page-1.html#c{'0' * 12}")
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    open_page(driver, f"{stale}#main")  # a fragment that is no card: the page's first image, as before
    assert driver.find_element("css selector", "#detail h1").text in urls


def test_a_gallery_page_left_open_while_a_run_removed_its_pictures_says_so(driver, paged_out, tmp_path):
    """A colleague's gallery page open while a cron job's run removed images: the thumbnails load as they are
    scrolled to, and those whose files the run deleted were broken pictures with nothing to say why. Whenever a
    picture fails (as the page loads, or later as it is scrolled to) one note says so."""
    copy = tmp_path / "out"
    shutil.copytree(paged_out, copy)
    open_page(driver, copy / "gallery" / "page-2.html")
    assert not load_all_images(driver) and driver.find_elements("id", "stale-note") == []  # all there: no note
    srcs = driver.execute_script("return Array.prototype.map.call(document.images, i => i.getAttribute('src'))")
    gone = [s for s in srcs if s.startswith("../images/")]
    (copy / "gallery" / gone[-1]).resolve().unlink()  # the run deletes it after rewriting the report
    driver.execute_script(  # a thumbnail scrolled to only now, after its file went: the page's own picture
        "var i = document.querySelector('img[src=\"' + arguments[0] + '\"]'); i.src = i.src + '?now';", gone[-1]
    )
    wait_until(lambda: driver.find_elements("id", "stale-note"), "the note, once a picture fails later")
    assert (
        "a run has rewritten the report since this page was loaded (reload it)"
        in driver.find_element("id", "stale-note").text
    )
    (copy / "gallery" / gone[0]).resolve().unlink()
    open_page(driver, copy / "gallery" / "page-2.html")  # loaded with pictures already gone
    assert load_all_images(driver)
    wait_until(lambda: driver.find_elements("id", "stale-note"), "the note, for pictures failed as the page loaded")
    assert len(driver.find_elements("css selector", ".warn#stale-note")) == 1


def test_a_stale_link_followed_from_an_image_shown_never_keeps_that_image(driver, paged_out):
    """A link from before a run opened in a tab that already shows an image of the same detail page (the address
    pasted over it, a step back in the tab's history) changes only the fragment: no new load. The lookup ran only
    on a fresh load, so the view kept the image shown, another one than the link's, its URL naming the other."""
    urls = detail_urls(paged_out)
    here = sorted(n for n, u in urls.items() if "detail/page-1.html#" in u)[0]
    moved = sorted(n for n, u in urls.items() if "detail/page-2.html#" in u)[0]
    page1 = (paged_out / "detail" / "page-1.html").resolve().as_uri()
    driver.get_log("browser")  # read, so cleared: the browser is shared, and an earlier test's failed pictures logged
    open_page(driver, f"{page1}#{urls[here].rsplit('#', 1)[1]}")
    wait_until(lambda: driver.find_element("css selector", "#detail h1").text == here, "the image the link named")
    cid = urls[moved].rsplit("#", 1)[1]
    driver.execute_script("location.hash = arguments[0];", f"#{cid}&show=right")  # the same document
    wait_until(lambda: driver.current_url.endswith(f"/detail/page-2.html#{cid}&show=right"), "the image's own page")
    wait_until(lambda: driver.find_element("css selector", "#detail h1").text == moved, "the image the link named")
    open_page(driver, f"{page1}#{urls[here].rsplit('#', 1)[1]}")
    driver.execute_script("location.hash = arguments[0];", f"#c{'0' * 12}")  # an image removed since
    wait_until(
        lambda: driver.find_element("css selector", "#detail h1").text == "Not in the report any more",
        "the gone image's note",
    )
    driver.execute_script("location.hash = arguments[0];", f"#c{'1' * 12}")  # and another, after the note
    wait_until(
        lambda: driver.find_element("css selector", "#detail h1").text == "Not in the report any more",
        "the gone image's note",
    )
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_pager_and_totals_are_drawn_from_pages_js(driver, tmp_path, monkeypatch):
    """A gallery page's bytes hold its own cards alone (report/paging.py: a re-run rewrites only the pages whose
    cards changed); its place, the totals, each group's count and the numbered pager are drawn by report.js from
    gallery/pages.js, a plain script that works from file://, also after a split gave pages ids out of order."""
    from test_report import labeled_rows, pages_js, synth as synth_manifest

    monkeypatch.setattr(report.model, "PAGE_SIZE", 100)
    out = synth_manifest(tmp_path / "o", labeled_rows(1200), files=False)
    report.render(out)
    synth_manifest(out, [(f"FAKE/burst_{i:03d}.png", 0, 0.3 + i * 1e-5) for i in range(250)], files=False)
    report.render(out)
    info = pages_js(out)
    ids = [p[0] for p in info["pages"]]
    assert ids != sorted(ids) and info["total"] == 1450
    place = next(n for n, pid in enumerate(ids, 1) if pid > 12)  # a split's new page, its id past the old pages
    pid, first, last = info["pages"][place - 1]
    driver.get_log("browser")
    open_page(driver, out / "gallery" / f"page-{pid}.html")
    assert driver.find_element("tag name", "h1").text == f"Gallery, page {place} of {len(ids)}"
    assert driver.title.startswith(f"Gallery page {place} of {len(ids)} · ")
    assert f"Images {first:,}–{last:,} of 1,450." in driver.find_element("id", "main").text
    current = driver.find_elements("css selector", "nav.pager a[aria-current=page]")
    assert [a.text for a in current] == [str(place)] * 2  # top and bottom
    numbered = driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('nav.pager')[0].querySelectorAll('a'),"
        " a => [a.textContent, a.getAttribute('href')])"
    )
    assert numbered[0] == ["← Previous", f"page-{ids[place - 2]}.html"] and numbered[-1][0] == "Next →"
    for text, href in numbered[1:-1]:
        assert href == f"page-{ids[int(text) - 1]}.html"
    # each group's count and the place of its cards here, and the list numbers, from pages.js's groups
    groups = {g[0]: g for g in info["groups"]}
    for sec in driver.find_elements("css selector", "section.group"):
        g = groups[sec.get_attribute("id")]
        count = g[4] - g[3] + 1
        start = max(first, g[3]) - g[3] + 1
        assert f"({count:,} images, " in sec.find_element("tag name", "h3").text
        assert sec.find_element("css selector", "ol.cards").get_attribute("start") == str(start)
    # a numbered link leads to the page it names, from file://
    target = next(text for text, _href in numbered[1:-1] if text != str(place))
    driver.find_element("css selector", f"nav.pager a[href='page-{ids[int(target) - 1]}.html']").click()
    wait_until(
        lambda: driver.find_element("tag name", "h1").text == f"Gallery, page {target} of {len(ids)}", "that page"
    )
    # the detail view names the page by its place too, and leads back to it
    open_page(driver, out / "gallery" / f"page-{pid}.html")
    driver.find_element("css selector", "li.card a.thumbs").click()
    back = driver.find_element("partial link text", "Back to gallery page")
    assert back.text == f"Back to gallery page {place}"
    back.click()
    wait_until(lambda: driver.find_element("tag name", "h1").text.startswith(f"Gallery, page {place} "), "back")
    # a choice no card here matches: the pages that hold it, linked by their ids
    open_page(driver, out / "gallery" / "page-1.html")
    select(driver, "f-show", "right")
    links = driver.find_element("id", "f-status").find_elements("tag name", "a")
    assert links
    for a in links:
        href = urlsplit(a.get_attribute("href"))
        assert 'data-section="right"' in Path(unquote(href.path)).read_text()
    # no script error (the pictures are not there: a manifest without files)
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"] == []


def test_a_bookmark_to_a_page_merged_away_opens_its_image(driver, tmp_path, monkeypatch):
    """A link to detail/page-<id>.html#<image> kept from before a run merged that page into its neighbour (most of
    its images removed) found no file; now it opens the image's detail view, and a link to the gallery page opens
    the page its cards went to, the fragment (a filter) kept."""
    from test_report import labeled_rows, pages_js, synth as synth_manifest
    from xaibatch.manifest import FILENAME, Manifest

    monkeypatch.setattr(report.model, "PAGE_SIZE", 20)
    out = synth_manifest(tmp_path / "o", labeled_rows(200), files=False)
    report.render(out)
    urls = detail_urls(out)
    victim = pages_js(out)["pages"][4][0]
    on_victim = sorted(n for n, u in urls.items() if f"detail/page-{victim}.html#" in u)
    kept = on_victim[-1]
    m = Manifest(out / FILENAME)
    m.remove_images([n for n in on_victim if n != kept])
    m.close()
    report.render(out)
    ids = [p[0] for p in pages_js(out)["pages"]]
    assert victim not in ids
    cid = urls[kept].rsplit("#", 1)[1]
    now = detail_urls(out)[kept]
    assert f"page-{victim}.html" not in now
    driver.get_log("browser")
    open_page(driver, (out / "detail" / f"page-{victim}.html").resolve().as_uri() + f"#{cid}&show=right")
    wait_until(lambda: driver.current_url.endswith(now.split("/", 1)[1] + "&show=right"), "the image's own page")
    wait_until(lambda: driver.find_element("css selector", "#detail h1").text == kept, "the image the link named")
    open_page(driver, (out / "gallery" / f"page-{victim}.html").resolve().as_uri() + "#show=right")
    wait_until(lambda: "#show=right" in driver.current_url and f"page-{victim}.html" not in driver.current_url, "on")
    wait_until(lambda: driver.find_element("tag name", "h1").text.startswith("Gallery, page "), "a gallery page")
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"] == []
