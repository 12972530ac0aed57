/* A gallery page's place among the others, drawn from gallery/pages.js (window.XAIBATCH_PAGES: each page's id,
   first and last place in gallery order; each group's key, class, section, first and last place), so that the
   page's own bytes hold its cards alone and a re-run rewrites only the pages whose cards changed: "page 3 of 40",
   "Images 401-600 of 7,950", each group's count and its cards' place in it, the numbered pager between Previous
   and Next. Without pages.js (or JavaScript) the page keeps what it was written with: its cards, Previous, Next. */
(function () {
  "use strict";
  var d = window.XAIBATCH_PAGES, cards = document.getElementById("cards");
  if (!d || !cards) { return; }
  var id = +cards.getAttribute("data-page"), n = 0;
  for (var i = 0; i < d.pages.length; i++) { if (d.pages[i][0] === id) { n = i + 1; } }
  if (!n) { return; }  // a page pages.js does not list (a copy of the folder taken mid-write): left as written
  var total = d.pages.length, page = d.pages[n - 1];
  function fmt(v) { return v.toLocaleString("en-US"); }
  function marked(kind, within) {
    return Array.prototype.slice.call((within || document).querySelectorAll("[data-pages=" + kind + "]"));
  }
  var title = document.title, dot = title.indexOf(" \u00b7 ");
  document.title = "Gallery page " + n + " of " + total + (dot < 0 ? "" : title.slice(dot));
  marked("place").forEach(function (e) { e.textContent = "Gallery, page " + n + " of " + total; });
  if (d.total) {
    marked("range").forEach(function (e) {
      e.textContent = "Images " + fmt(page[1]) + "\u2013" + fmt(page[2]) + " of " + fmt(d.total) + ". ";
    });
  }
  var groups = {};
  d.groups.forEach(function (g) { groups[g[0]] = g; });
  Array.prototype.forEach.call(document.querySelectorAll("section.group"), function (s) {
    var g = groups[s.id];
    if (!g) { return; }
    var count = g[4] - g[3] + 1, first = Math.max(page[1], g[3]) - g[3] + 1, last = Math.min(page[2], g[4]) - g[3] + 1;
    marked("count", s).forEach(function (e) { e.textContent = fmt(count) + (count === 1 ? " image, " : " images, "); });
    if (first > 1 || last < count) {
      marked("here", s).forEach(function (e) { e.textContent = "; " + fmt(first) + "\u2013" + fmt(last) + " here"; });
    }
    var ol = s.querySelector("ol.cards");
    if (ol) { ol.start = first; }
  });
  // 1 ... n-2 n-1 n n+1 n+2 ... total between Previous and Next (the links report/cards.py page_links makes)
  var want = [];
  for (var k = 1; k <= total; k++) { if (k === 1 || k === total || Math.abs(k - n) <= 2) { want.push(k); } }
  marked("pager").forEach(function (nav) {
    var ul = nav.querySelector("ul"), next = ul && ul.lastElementChild;
    if (!next) { return; }
    var prev = 0;
    want.forEach(function (k) {
      var li = document.createElement("li");
      if (k - prev > 1) {
        var gap = document.createElement("span");
        gap.className = "gap";
        gap.textContent = "\u2026";
        li.appendChild(gap);
        ul.insertBefore(li, next);
        li = document.createElement("li");
      }
      var a = document.createElement("a");
      a.href = "page-" + d.pages[k - 1][0] + ".html";
      a.setAttribute("data-keep", "");
      if (k === n) { a.setAttribute("aria-current", "page"); }
      a.textContent = String(k);
      li.appendChild(a);
      ul.insertBefore(li, next);
      prev = k;
    });
  });
}());

/* xaibatch report: filters and sorting on a gallery page. Dependency-free; it only hides and re-orders the
   cards the page already lists (never builds HTML from data), and carries the choice across pages in the
   URL fragment (#class=0&show=wrong&method=gradcam&sort=conf-desc), to the detail views and back. */
(function () {
  "use strict";
  var form = document.getElementById("controls");
  if (!form) { return; }
  var els = {
    "class": document.getElementById("f-class"),
    show: document.getElementById("f-show"),
    method: document.getElementById("f-method"),
    sort: document.getElementById("f-sort")
  };
  var status = document.getElementById("f-status");
  var groups = Array.prototype.slice.call(document.querySelectorAll("section.group"));
  var lists = groups.map(function (g) {
    var ol = g.querySelector("ol.cards");
    return { group: g, ol: ol, cards: Array.prototype.slice.call(ol.children) };
  });
  var total = lists.reduce(function (n, l) { return n + l.cards.length; }, 0);

  function value(name) { return els[name] ? els[name].value : ""; }

  function hasOption(select, v) {
    for (var i = 0; i < select.options.length; i++) { if (select.options[i].value === v) { return true; } }
    return false;
  }

  function byConf(a, b) { return parseFloat(a.getAttribute("data-conf")) - parseFloat(b.getAttribute("data-conf")); }
  function byName(a, b) {
    var x = a.getAttribute("data-name"), y = b.getAttribute("data-name");
    return x < y ? -1 : x > y ? 1 : 0;
  }

  // Faithfulness: "del-<method>" puts the highest deletion AUC first, "ins-<method>" the lowest insertion AUC;
  // either way the least faithful maps lead, and cards without a score go last.
  function byScore(sort) {
    var attr = "data-" + sort, sign = sort.indexOf("del-") === 0 ? -1 : 1;
    return function (a, b) {
      var x = parseFloat(a.getAttribute(attr)), y = parseFloat(b.getAttribute(attr));
      if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
      return sign * (x - y);
    };
  }

  function fragment() {
    var parts = [];
    Object.keys(els).forEach(function (k) {
      var v = value(k);
      if (v) { parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(v)); }
    });
    return parts.join("&");
  }

  function apply(fromUser) {
    var cls = value("class"), show = value("show"), method = value("method"), sort = value("sort");
    var shown = 0;
    lists.forEach(function (l) {
      var g = l.group;
      var groupOk = (!cls || g.getAttribute("data-class") === cls) && (!show || g.getAttribute("data-section") === show);
      var order = l.cards.slice();
      if (sort === "conf-desc") { order.sort(function (a, b) { return byConf(b, a); }); }
      else if (sort === "conf-asc") { order.sort(byConf); }
      else if (sort === "name") { order.sort(byName); }
      else if (/^(del|ins)-/.test(sort)) { order.sort(byScore(sort)); }
      if (sort || fromUser) { order.forEach(function (card) { l.ol.appendChild(card); }); }
      var visible = 0;
      l.cards.forEach(function (card) {
        var methods = (card.getAttribute("data-methods") || "").split(" ");
        var ok = groupOk && (!method || method === "-" || methods.indexOf(method) >= 0);
        card.hidden = !ok;
        if (ok) { visible++; }
        var imgs = card.querySelectorAll("img[data-method], p.mag[data-method]");
        for (var i = 0; i < imgs.length; i++) {
          var m = imgs[i].getAttribute("data-method");
          var hide = method === "-" || (method !== "" && m !== method);
          imgs[i].hidden = hide;
          if (imgs[i].parentNode.classList.contains("col")) { imgs[i].parentNode.hidden = hide; }
        }
      });
      g.hidden = visible === 0;
      shown += visible;
    });
    var headings = document.querySelectorAll("h2.section");
    for (var i = 0; i < headings.length; i++) {
      var h = headings[i], any = false, el = h.nextElementSibling;
      while (el && !(el.tagName === "H2")) { if (el.classList.contains("group") && !el.hidden) { any = true; } el = el.nextElementSibling; }
      h.hidden = !any;
    }
    var frag = fragment();
    status.textContent = "Showing " + shown + " of " + total + " images on this page.";
    if (!shown && (cls || show)) { elsewhere(cls, show, frag); }
    if (fromUser && window.history && history.replaceState) {
      history.replaceState(null, "", frag ? "#" + frag : location.pathname + location.search);
    }
    var links = document.querySelectorAll("a[data-keep]");
    for (var j = 0; j < links.length; j++) {
      var a = links[j], base = a.getAttribute("href").split("#")[0];
      a.setAttribute("href", frag ? base + "#" + frag : base);
    }
    // a card's detail view gets the choice too (#<card id>&show=wrong...), and hands it back to this page
    var cardLinks = document.querySelectorAll("li.card > a.thumbs");
    for (var c = 0; c < cardLinks.length; c++) {
      var bare = cardLinks[c].getAttribute("href").split("&")[0];
      cardLinks[c].setAttribute("href", frag ? bare + "&" + frag : bare);
    }
  }

  // every group as [class, section, first page, last page] (places in the pager), from pages.js (see above), else
  // from the form's data-where ("<class> <section> <first page> <last page>" per group, comma-separated: a gallery
  // template of your own from before pages.js), else null
  var paged = window.XAIBATCH_PAGES;
  function place(pos) {  // the place in the pager of the page that holds gallery place pos
    for (var i = 0; i < paged.pages.length; i++) { if (pos <= paged.pages[i][2]) { return i + 1; } }
    return paged.pages.length;
  }
  function where() {
    if (paged && paged.groups) {
      return paged.groups.map(function (g) { return [String(g[1]), g[2], place(g[3]), place(g[4])]; });
    }
    var w = form.getAttribute("data-where");
    return w === null ? null : w.split(",").map(function (g) { var f = g.split(" "); return [f[0], f[1], +f[2], +f[3]]; });
  }
  function pageHref(k) { return "page-" + (paged ? paged.pages[k - 1][0] : k) + ".html"; }

  // a class or section with no card on this page: the pages of the gallery that hold it, each a link that keeps
  // the choice
  function elsewhere(cls, show, frag) {
    var ranges = [], groups = where();
    if (groups === null) { return; }
    groups.forEach(function (f) {
      if ((!cls || f[0] === cls) && (!show || f[1] === show)) { ranges.push([f[2], f[3]]); }
    });
    ranges.sort(function (a, b) { return a[0] - b[0]; });
    var merged = [];
    ranges.forEach(function (r) {
      var last = merged[merged.length - 1];
      if (last && r[0] <= last[1] + 1) { last[1] = Math.max(last[1], r[1]); } else { merged.push(r.slice()); }
    });
    if (!merged.length) { status.appendChild(document.createTextNode(" No image in the gallery matches this choice.")); return; }
    var many = merged.length > 1 || merged[0][0] !== merged[0][1];
    status.appendChild(document.createTextNode(" The images you chose are on page" + (many ? "s " : " ")));
    merged.forEach(function (r, i) {
      if (i) { status.appendChild(document.createTextNode(", ")); }
      var a = document.createElement("a");
      a.href = pageHref(r[0]) + (frag ? "#" + frag : "");
      a.textContent = r[0] === r[1] ? String(r[0]) : r[0] + "\u2013" + r[1];
      status.appendChild(a);
    });
    status.appendChild(document.createTextNode("."));
  }

  // back from a detail view (#<card id>&show=wrong...): the card the user came from, in view
  function revisit() {
    var h = location.hash.replace(/^#/, ""), first = h.split("&")[0];
    if (h.indexOf("&") < 0 || first.indexOf("=") >= 0) { return; }
    var card = document.getElementById(first);
    if (card && card.classList.contains("card") && !card.hidden) { card.scrollIntoView({block: "center"}); }
  }

  function restore() {
    var h = location.hash.replace(/^#/, "");
    if (h.indexOf("=") < 0) { return; }
    h.split("&").forEach(function (pair) {
      var kv = pair.split("="), k, v;
      try { k = decodeURIComponent(kv[0] || ""); v = decodeURIComponent(kv[1] || ""); } catch (e) { return; }  // a mangled link
      if (Object.prototype.hasOwnProperty.call(els, k) && els[k] && hasOption(els[k], v)) { els[k].value = v; }
    });
  }

  form.addEventListener("change", function () { apply(true); });
  form.addEventListener("submit", function (e) { e.preventDefault(); });
  form.addEventListener("reset", function () { setTimeout(function () { apply(true); }, 0); });
  form.hidden = false;
  restore();
  apply(false);
  revisit();
}());

/* Find an image on any gallery page. The first search loads names.js, beside the pages: every image's name,
   gallery page and card id. The matching names are then listed as links to their detail views, built from
   text nodes only, since file names are user data. A query that ends with a whole name (a pasted path) finds it
   too. */
(function () {
  "use strict";
  var form = document.getElementById("find");
  if (!form) { return; }
  var input = document.getElementById("find-name");
  var status = document.getElementById("find-status");
  var list = document.getElementById("find-results");
  var MOST = 50;
  var names = null, loading = false, timer = null;
  var places = {};  // a page's id -> its place in the pager (gallery/pages.js), shown beside each name found
  (window.XAIBATCH_PAGES ? window.XAIBATCH_PAGES.pages : []).forEach(function (p, i) { places[p[0]] = i + 1; });

  window.xaibatchNames = function (pages) {
    names = [];
    pages.forEach(function (p) {
      p[1].forEach(function (e) { names.push({ id: e[0], name: e[1], lower: e[1].toLowerCase(), page: p[0] }); });
    });
    search();
  };

  function load() {
    if (loading) { return; }
    loading = true;
    status.textContent = "Loading the names\u2026";
    var s = document.createElement("script");
    s.src = "names.js";
    s.onerror = function () { status.textContent = "The list of names (gallery/names.js) could not be loaded."; };
    document.body.appendChild(s);
  }

  function search() {
    var typed = input.value.trim(), q = typed.toLowerCase();
    while (list.firstChild) { list.removeChild(list.firstChild); }
    list.hidden = true;
    if (!q) { status.textContent = ""; return; }
    if (names === null) { load(); return; }
    var found = 0, tail = "/" + q, posix = "/" + q.replace(/\\/g, "/");  // a pasted Windows path too
    for (var i = 0; i < names.length; i++) {
      var n = names[i], end = "/" + n.lower;
      if (n.lower.indexOf(q) < 0 && tail.slice(-end.length) !== end && posix.slice(-end.length) !== end) { continue; }
      found++;
      if (found > MOST) { continue; }
      var li = document.createElement("li"), a = document.createElement("a"), small = document.createElement("small");
      a.href = "../detail/page-" + n.page + ".html#" + n.id;
      a.textContent = n.name;
      a.setAttribute("dir", "auto");  // a right-to-left name cannot turn the words after it
      small.textContent = " (gallery page " + (places[n.page] || n.page) + ")";
      li.appendChild(a);
      li.appendChild(small);
      list.appendChild(li);
    }
    list.hidden = found === 0;
    status.textContent = found === 0 ? "No file name contains \u201c" + typed + "\u201d." :
      found + (found === 1 ? " image" : " images") + (found > MOST ? ", the first " + MOST + " listed." : ".");
  }

  input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(search, 150); });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    clearTimeout(timer);
    search();
    var first = list.querySelector("a");
    if (first) { first.focus(); }
  });
  form.hidden = false;
}());

/* A picture of this page that does not load: its file went since the page was loaded (a run rewrote the report
   under a page left open: its images removed, their thumbnails deleted; the gallery's thumbnails load as they
   are scrolled to), or the folder was copied without it. Said once, above the gallery, instead of broken
   pictures with nothing to explain them. */
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !document.querySelector("section.group")) { return; }
  var said = false;
  function say() {
    if (said) { return; }
    said = true;
    var p = document.createElement("p");
    p.className = "warn";
    p.id = "stale-note";
    p.setAttribute("role", "status");
    p.textContent = "Some pictures of this page could not be loaded: a run has rewritten the report since this " +
      "page was loaded (reload it), or the folder was copied without them.";
    main.insertBefore(p, main.firstChild);
  }
  document.addEventListener("error", function (e) {
    if (e.target && e.target.tagName === "IMG") { say(); }
  }, true);  // an image's error does not bubble: caught on its way down
  Array.prototype.forEach.call(document.images, function (img) {
    if (img.complete && img.getAttribute("src") && img.naturalWidth === 0) { say(); }
  });
}());
