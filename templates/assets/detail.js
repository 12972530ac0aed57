/* xaibatch report: the detail view. Draws one image of a gallery page from that page's data file
   (detail/page-<n>.js sets window.XAIBATCH_DETAIL), the image named in the URL fragment (#<card id>, then
   the gallery's filters, kept for the links and followed by Previous and Next), the first one without it.
   Dependency-free; every element is built with createElement and textContent, never from HTML text, so file
   and class names (user data) stay text. */
(function () {
  "use strict";
  var root = document.getElementById("detail");
  var data = window.XAIBATCH_DETAIL;
  if (!root || !data) { return; }
  var site = data.site, images = data.images;
  var gallery = root.getAttribute("data-gallery"), up = "../";
  var siteTitle = document.title.slice(document.title.indexOf(" · ") + 3);  // after our own prefix
  var byId = {};
  images.forEach(function (im, i) { byId[im.id] = i; });
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    (kids || []).forEach(function (k) { if (k !== null && k !== undefined) { e.appendChild(typeof k === "string" ? document.createTextNode(k) : k); } });
    return e;
  }
  function svg(tag, attrs, kids) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    (kids || []).forEach(function (k) { e.appendChild(typeof k === "string" ? document.createTextNode(k) : k); });
    return e;
  }
  // a file name is user data: isolated, so a right-to-left mark in it cannot turn the words around it
  function iso(name) { return "\u2068" + name + "\u2069"; }
  // the fragment: #<card id>, then the gallery's filters (&show=wrong...), carried to the neighbours and back
  var keep = "", want = {"class": "", show: ""};
  function tail() { return keep ? "&" + keep : ""; }
  function href(n) { return (n.page ? "page-" + n.page + ".html#" : "#") + n.id + tail(); }
  function fromHash() {
    var h = location.hash.slice(1), amp = h.indexOf("&");
    keep = amp < 0 ? "" : h.slice(amp + 1);
    want = {"class": "", show: ""};
    keep.split("&").forEach(function (pair) {
      var kv = pair.split("="), k, v;
      try { k = decodeURIComponent(kv[0] || ""); v = decodeURIComponent(kv[1] || ""); } catch (e) { return; }  // a mangled link
      if (Object.prototype.hasOwnProperty.call(want, k)) { want[k] = v; }
    });
    show(amp < 0 ? h : h.slice(0, amp));
  }

  // Previous and Next under the gallery's class and misclassified/correct filters: the images they keep, in
  // gallery order, across its pages. They keep whole gallery groups (one section, one class: "wrong-0", the
  // group's id in the gallery), so a step stays in the image's group, goes on to the neighbouring group when the
  // filter keeps it, else to the same class's group beyond (cprev, cnext: report/detail.py, class_neighbours).
  // The sort and the method choice change no step: the order is the gallery's own.
  function filtered() { return !!(want["class"] || want.show); }
  function kept(group) {
    var d = group.lastIndexOf("-");
    return (!want["class"] || group.slice(d + 1) === want["class"]) && (!want.show || group.slice(0, d) === want.show);
  }
  function step(im, rel) {
    var n = im[rel];
    if (!filtered() || !im.group || !kept(im.group)) { return n; }  // an image the filter leaves out: every image
    if (n && kept(n.group || im.group)) { return n; }
    var c = im[rel === "prev" ? "cprev" : "cnext"];
    return c && kept(c.group) ? c : null;
  }

  // the link a step to another page's view was taken by, for that page to focus its own (per tab; none in a
  // browser that refuses storage to file://, which then starts at the page's top as any page does)
  var FOCUS_KEY = "xaibatch-detail-focus";
  function remember(rel) { try { sessionStorage.setItem(FOCUS_KEY, rel); } catch (e) { /* no storage */ } }
  function recall() {
    try { var rel = sessionStorage.getItem(FOCUS_KEY); sessionStorage.removeItem(FOCUS_KEY); return rel; }
    catch (e) { return null; }
  }

  // a page's place in the gallery's pager (its id names its files: report/paging.py), from gallery/pages.js
  function place(id) {
    var d = window.XAIBATCH_PAGES;
    for (var i = 0; d && i < d.pages.length; i++) { if (d.pages[i][0] === id) { return i + 1; } }
    return id;
  }

  function pager(im) {
    function side(n, rel, text) {
      if (!n && filtered() && im[rel]) {  // the first or last image the filter keeps: say so
        text = rel === "prev" ? "← No previous image in this filter" : "No next image in this filter →";
      }
      if (!n) { return el("span", {"aria-disabled": "true"}, [text]); }
      var a = el("a", {href: href(n), rel: rel, "aria-keyshortcuts": rel === "prev" ? "ArrowLeft" : "ArrowRight",
                       title: (rel === "prev" ? "Previous" : "Next") + " image (" + (rel === "prev" ? "←" : "→") + " key)"},
        rel === "prev" ? ["← Previous", el("span", {"class": "sr"}, [" image"])]
        : ["Next", el("span", {"class": "sr"}, [" image"]), " →"]);
      if (!n.page) { a.addEventListener("click", function () { show(n.id); }); }
      else {  // to another gallery page's view: a new document, which puts the focus back on this link (start)
        a.addEventListener("click", function (e) {
          if (!(e.ctrlKey || e.metaKey || e.shiftKey || e.altKey)) { remember(rel); }
        });
      }
      return a;
    }
    return el("nav", {"class": "pager", "aria-label": "Neighbouring images"}, [el("ul", {}, [
      el("li", {}, [side(step(im, "prev"), "prev", "← Previous")]),
      el("li", {}, [el("a", {href: gallery + "page-" + im.page + ".html#" + im.id + tail()}, ["Back to gallery page " + place(im.page)])]),
      el("li", {}, [side(step(im, "next"), "next", "Next →")])])]);
  }

  function facts(im) {
    var kids = [];
    function row(k, v, cls) { kids.push(el("dt", {}, [k])); kids.push(el("dd", cls ? {"class": cls} : {}, v)); }
    if (im.label !== null) { row("True class", [im.label + (im.label_conf ? " (" + im.label_conf + ")" : "")]); }
    var verdict = im.correct === false ? el("strong", {"class": "bad"}, ["misclassified"])
      : im.correct ? el("span", {"class": "good"}, ["correct"]) : null;
    row("Predicted", [im.pred + " (" + im.conf + ")", verdict ? " " : null, verdict]);
    if (im.earlier) {  // a run with another model stopped before it recomputed this image
      row("Model", [el("strong", {"class": "bad"}, ["an earlier model"]),
        ": this prediction and its maps come from " + im.earlier + ", not from the last run's model; " +
        "the next complete run recomputes them"]);
    }
    row("Maps explain", [im.label_maps && im.label_maps.length
      ? im.pred + " (the predicted class) and " + im.label + " (the true class), in two rows"
      : im.target + " (" + site.target_words + ")"]);
    row("File", [el("bdi", {}, [im.rel])], "name");
    row("Size", [im.w + "×" + im.h + " px, " + im.bytes + ", sha256 " + im.sha]);
    return el("dl", {"class": "facts"}, kids);
  }

  function picture(src, alt, im) {
    var a = {src: up + src, alt: alt, width: String(im.dw), height: String(im.dh)};
    if (im.pixelated) { a["class"] = "pixelated"; }
    return el("img", a);
  }

  function colourBar(m, ticks) {
    // named by what its colours mean (the numbers under it follow as text); hidden, it left those numbers bare
    var s = svg("svg", {width: "256", height: "14", viewBox: "0 0 256 14", role: "img", "aria-label": "Colour scale: " + m.legend},
                [svg("image", {href: up + m.bar, width: "256", height: "14"})]);
    var kids = [s];
    if (ticks.length) { kids.push(el("span", {"class": "ticks"}, ticks.map(function (t) { return el("span", {}, [t]); }))); }
    return el("span", {"class": "cbar"}, kids);
  }

  // the saved map's size, H×W: the image's own, or smaller when the image is over --max-map-side (by area);
  // nothing when the map could not be read
  function npyShape(v, im) {
    if (!v.shape) { return ""; }
    var s = ", " + v.shape[0] + "×" + v.shape[1];
    return v.shape[0] === im.h && v.shape[1] === im.w ? s : s + ", scaled down from the image's " + im.h + "×" + im.w + " by --max-map-side";
  }

  // a method's title as text parts with a <wbr> between them: a narrow figure breaks "Integrated|Gradients"
  // between its words, never inside one (the parts: text.break_points)
  function titleParts(m) {
    var kids = [];
    (m.breaks || [m.title]).forEach(function (p, i) { if (i) { kids.push(el("wbr")); } kids.push(p); });
    return kids;
  }

  function mapFigure(v, im, target) {
    var m = site.methods[v.m] || {title: v.m, legend: "", scale_words: "", bar: ""};
    var about = [el("small", {}, [m.scale_words + "." + (v.note ? " " + v.note : "")]), el("br"),
                 el("small", {}, [m.legend + "."]), el("br")];
    if (v.del !== undefined) {
      var red = v.curves ? ", the red curve" : "", blue = v.curves ? ", the blue curve" : "";
      about.push(el("small", {}, ["deletion AUC " + v.del + " (lower is better" + red + "), insertion AUC " + v.ins +
                                  " (higher is better" + blue + ")"]), el("br"));
      if (v.curves) {
        about.push(svg("svg", {"class": "curves", width: "120", height: "60", viewBox: "-2 -2 124 64", role: "img",
          "aria-label": "deletion (red) and insertion (blue) curves: probability of " + target + " against the share of pixels changed"}, [
          svg("rect", {x: "0", y: "0", width: "120", height: "60", fill: "none", stroke: "#ccc"}),
          svg("polyline", {points: v.curves[0], fill: "none", stroke: "#D55E00", "stroke-width": "1.5"}),
          svg("polyline", {points: v.curves[1], fill: "none", stroke: "#0072B2", "stroke-width": "1.5"})]), el("br"));
      }
    }
    about.push(el("a", {href: up + v.npy, download: ""}, ["raw map (.npy, float32" + npyShape(v, im) + ")"]));
    if (v.info.length) {
      about.push(el("ul", {"class": "info"}, v.info.map(function (kv) {
        var words = site.info_words[kv[0]];
        return el("li", {}, [el("code", {}, [kv[0] + "=" + kv[1]]), words ? ": " + words : null]);
      })));
    }
    var below = [colourBar(m, v.ticks)];
    if (v.weak) { below.push(el("p", {"class": "weak", role: "note"}, ["⚠ " + v.weak + "."])); }
    below.push(el("details", {}, [el("summary", {}, ["What this map shows"])].concat(about)));
    return el("figure", {"data-method": v.m}, [
      picture(v.png, m.title + " map of " + iso(im.rel) + " for class " + iso(target), im),
      el("figcaption", {}, [el("span", {"class": "title"}, [el("strong", {}, titleParts(m))]), el("div", {}, below)])]);
  }

  function viewsRow(im, maps, target) {
    var figs = [el("figure", {}, [picture(im.image, iso(im.rel) + ": original", im),
      el("figcaption", {}, [el("span", {"class": "title"}, [el("strong", {}, ["Original"]),
        im.stretched ? " (stretched to be seen)" : im.pixelated ? " (enlarged)" : null])])])];
    maps.forEach(function (v) {
      figs.push(v ? mapFigure(v, im, target)
        : el("figure", {"class": "none"}, [el("figcaption", {}, [el("span", {"class": "title"}, ["no map of " + target])])]));
    });
    var d = el("div", {"class": "views"}, figs);
    d.style.setProperty("--n", String(figs.length));
    d.style.setProperty("--w", im.dw + "px");  // the display copy's size: never drawn larger (report.css)
    d.style.setProperty("--ar", String(im.dw / im.dh));
    return d;
  }

  // A misclassified image of a --target pred,label run: one row per class, "why" the prediction above
  // "why not" the true class, each method's two maps in the same column at the same size.
  function views(im) {
    if (!im.label_maps || !im.label_maps.length) { return viewsRow(im, im.maps, im.target); }
    var byMethod = {};
    im.label_maps.forEach(function (v) { byMethod[v.m] = v; });
    function row(kind, heading, maps, target) {
      var id = "h-why-" + kind;
      return el("section", {"class": "why", "data-target": kind, "aria-labelledby": id},
        [el("h2", {id: id}, [heading]), viewsRow(im, maps, target)]);
    }
    return el("div", {"class": "targets"}, [
      row("pred", "Why " + im.pred, im.maps, im.pred),
      row("label", "Why not " + im.label, im.maps.map(function (v) { return byMethod[v.m] || null; }), im.label)]);
  }

  function truth(im) {
    var t = im.truth;
    if (!t) { return null; }
    var h2 = el("h2", {id: "h-truth"}, ["Ground truth"]);
    if (t.skipped) {
      return el("section", {"aria-labelledby": "h-truth"}, [h2, el("p", {"class": "warn"},
        ["The ground-truth mask ", el("code", {}, [t.mask]), " beside the input image was skipped: " + t.skipped + "."])]);
    }
    var marks = [svg("image", {href: up + im.image, x: "0", y: "0", width: String(t.w), height: String(t.h), preserveAspectRatio: "none"}),
                 svg("path", {d: t.path, fill: "#00d000", "fill-opacity": "0.45"})];
    t.points.forEach(function (p) {
      if (!p.label) { return; }  // no maximum, or its ring stands with another map's at the same pixel
      marks.push(svg("circle", {cx: p.x.toFixed(2), cy: p.y.toFixed(2), r: t.r.toFixed(2), fill: "none", stroke: p.colour,
        "stroke-width": "2", "vector-effect": "non-scaling-stroke"}));
      marks.push(svg("text", {x: p.lx.toFixed(2), y: p.ly.toFixed(2), "font-size": t.font.toFixed(2), fill: p.colour, stroke: "#000",
        "stroke-width": "0.6", "paint-order": "stroke", "vector-effect": "non-scaling-stroke"}, [p.label]));
    });
    var fig = el("figure", {"class": "truth"}, [
      svg("svg", {viewBox: "0 0 " + t.w + " " + t.h, width: String(im.dw), height: String(im.dh), role: "img", "aria-labelledby": "truth-cap"}, marks),
      el("figcaption", {id: "truth-cap"}, ["Ground-truth region (green) and each map's maximum (numbered rings; maps whose maximum is the same pixel share a ring)."])]);
    var rows = t.points.map(function (p) {
      var result = p.hit === undefined ? "not scored: " + p.note
        : p.hit ? el("span", {"class": "good"}, ["hit"]) : el("strong", {"class": "bad"}, ["miss"]);
      var sw = el("span", {"class": "swatch", "aria-hidden": "true"});
      sw.style.borderColor = p.colour;
      return el("tr", {}, [el("td", {}, [sw, " " + p.n]), el("th", {scope: "row"}, [p.title]),
        el("td", {}, [p.px ? "(" + p.px[0] + ", " + p.px[1] + ")" : "–"]), el("td", {}, [result])]);
    });
    var table = el("table", {"class": "pointing"}, [el("caption", {}, ["Pointing game (chance " + t.share + ")"]),
      el("thead", {}, [el("tr", {}, ["#", "Method", "Maximum at (x, y)", "Inside the region?"].map(function (h) { return el("th", {scope: "col"}, [h]); }))]),
      el("tbody", {}, rows)]);
    return el("section", {"aria-labelledby": "h-truth"}, [h2,
      el("p", {}, ["The demo's synthesized region, from ", el("code", {}, [t.mask]), " beside the input image, is shaded green; numbered rings mark where each map is largest (LIME: its strongest evidence for the class). Pointing game: a map ",
        el("em", {}, ["hits"]), " when its maximum lies inside the region. The region covers " + t.share + " of the image, so a map pointing at random would hit " + t.share + " of the time."]),
      fig, el("div", {"class": "scroll"}, [table])]);
  }

  function probs(im) {
    var n = site.n_classes;
    var caption = im.probs.length < n ? "The " + im.probs.length + " most likely of " + n + " classes" : "Every class, most likely first";
    return [el("h2", {}, ["Class probabilities"]), el("div", {"class": "scroll"}, [el("table", {"class": "probs"}, [el("caption", {}, [caption]),
      el("thead", {}, [el("tr", {}, [el("th", {scope: "col"}, ["Class"]), el("th", {scope: "col"}, ["Probability"])])]),
      el("tbody", {}, im.probs.map(function (p) {
        var bar = el("span", {"class": "bar"});
        bar.style.width = p[2] + "%";
        return el("tr", {}, [el("th", {scope: "row"}, [el("bdi", {}, [p[0]])]),
          el("td", {}, [el("span", {"class": "track", "aria-hidden": "true"}, [bar]), " " + p[1]])]);
      }))])])];
  }

  // a row of figures that does not fit the window wraps into even rows (report.css .views.balanced): the columns
  // that fit are counted with the one-row layout (its auto-fill tracks), then the figures are shared out evenly
  function balance() {
    Array.prototype.forEach.call(root.querySelectorAll(".views"), function (v) {
      v.classList.remove("balanced");
      var fit = getComputedStyle(v).gridTemplateColumns.split(" ").filter(Boolean).length, n = v.children.length;
      if (fit >= 1 && fit < n) {
        v.style.setProperty("--cols", String(Math.ceil(n / Math.ceil(n / fit))));
        v.classList.add("balanced");
      }
    });
  }
  var width = -1;
  function rebalance() {
    if (root.clientWidth !== width) { width = root.clientWidth; balance(); }
  }

  // the polite status that names each newly shown image, beside the view (outside the elements replaced)
  var status = el("p", {"class": "sr", role: "status", "aria-live": "polite"});
  root.parentNode.insertBefore(status, root.nextSibling);
  var shown = null, shownKeep = "";
  // A link to an image that is not on this page: written before a run moved it to another gallery page (a gallery
  // page open since, a bookmark, serve's link) or removed it. It drew this page's first image, another one: now
  // the image's page is looked up in the gallery's names (gallery/names.js) and opened, else the view says so.
  // Also when only the fragment changed (a link pasted over an image shown, a step back): no new load. Never a
  // loop: the lookup opens another page, or says the image is gone.
  var CARD = /^c[0-9a-f]{12}$/;
  function elsewhere(id) {
    shown = null;  // the view no longer shows the image it drew: a link back to it draws it again
    var here = root.getAttribute("data-page");
    window.xaibatchNames = function (pages) {
      for (var p = 0; p < pages.length; p++) {
        for (var e = 0; e < pages[p][1].length; e++) {
          if (pages[p][1][e][0] === id && String(pages[p][0]) !== here) {
            location.replace("page-" + pages[p][0] + ".html#" + id + tail());
            return;
          }
        }
      }
      gone();
    };
    var s = document.createElement("script");
    s.src = gallery + "names.js";
    s.onerror = gone;
    document.body.appendChild(s);
  }
  function gone() {
    var back = el("a", {href: gallery + "page-" + (root.getAttribute("data-page") || "1") + ".html"}, ["Back to the gallery"]);
    root.replaceChildren(el("h1", {}, ["Not in the report any more"]), el("p", {"class": "warn"}, [
      "The image this link names is not in the report now: a run since removed it (its file left the input ",
      "folder, or was renamed). ", back, "."]));
  }
  function show(id) {
    var known = Object.prototype.hasOwnProperty.call(byId, id);
    if (!known && CARD.test(id)) { elsewhere(id); return; }  // a card of another page, or gone
    if (!images.length) {
      root.replaceChildren(el("h1", {}, ["No images yet."]));
      return;
    }
    if (!known && shown !== null) { return; }  // a fragment that names no image (#main) keeps the one shown
    var i = known ? byId[id] : 0;
    if (shown === i && shownKeep === keep) { return; }
    shown = i;
    shownKeep = keep;
    var im = images[i];
    // the focus inside the view (Previous, Next, a map's explanations) would go with the elements replaced, to
    // the page's top: it moves to the new view's same link, else to the image's name, and the status says which
    // image this is (a screen reader hears the new name, not only "Next image, link" again)
    var focused = document.activeElement, rel = null, refocus = false;
    if (focused && focused !== document.body && root.contains(focused)) {
      refocus = true;
      rel = focused.getAttribute("rel");
    }
    var first = !status.hasAttribute("data-shown");
    var h1 = el("h1", {"class": "name", tabindex: "-1"}, [el("bdi", {}, [im.rel])]);
    var kids = [pager(im), h1, facts(im), views(im), truth(im)].concat(probs(im));
    root.replaceChildren.apply(root, kids.filter(function (k) { return k; }));
    balance();
    document.title = iso(im.rel) + " · " + siteTitle;
    if (refocus) {
      var again = rel && root.querySelector("nav.pager a[rel=" + rel + "]");
      (again || h1).focus({preventScroll: !!again});
    }
    status.setAttribute("data-shown", "");
    if (!first) {
      status.textContent = "Showing " + iso(im.rel) + (im.label !== null ? ", true class " + im.label : "") +
        ", predicted " + im.pred + (im.correct === false ? ", misclassified" : "") + ".";
    }
  }

  // ← and → follow Previous and Next (no modifier; never while typing or inside a form control)
  document.addEventListener("keydown", function (e) {
    if (e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) { return; }
    var t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName))) { return; }
    var rel = e.key === "ArrowLeft" ? "prev" : e.key === "ArrowRight" ? "next" : "";
    var a = rel && root.querySelector("nav.pager a[rel=" + rel + "]");
    if (a) { e.preventDefault(); a.click(); }
  });
  // "Skip to content" moves the focus without taking the image's id out of the URL
  var skip = document.querySelector("a.skip"), main = document.getElementById("main");
  if (skip && main) {
    skip.addEventListener("click", function (e) {
      e.preventDefault();
      main.setAttribute("tabindex", "-1");
      main.focus();
    });
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
  var came = recall();
  if (came === "prev" || came === "next") {
    var link = root.querySelector("nav.pager a[rel=" + came + "]"), name = root.querySelector("h1");
    if (link || name) { (link || name).focus(); }
  }
  width = root.clientWidth;
  // a scroll bar coming or going too; in the next frame, since balancing changes the observed element's height
  // (inside the observer's callback that is an error event: "ResizeObserver loop completed ...")
  if (window.ResizeObserver) { new ResizeObserver(function () { requestAnimationFrame(rebalance); }).observe(root); }
  else { window.addEventListener("resize", rebalance); }
}());
