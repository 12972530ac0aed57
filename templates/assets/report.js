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

  // a class or section with no card on this page: the pages of the gallery that hold it, each a link that keeps
  // the choice (the form's data-where: "<class> <section> <first page> <last page>" per group, comma-separated)
  function elsewhere(cls, show, frag) {
    var ranges = [], where = form.getAttribute("data-where");
    if (where === null) { return; }  // a gallery template of your own from before this attribute
    where.split(",").forEach(function (g) {
      var f = g.split(" ");
      if (f.length === 4 && (!cls || f[0] === cls) && (!show || f[1] === show)) { ranges.push([+f[2], +f[3]]); }
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
      a.href = "page-" + r[0] + ".html" + (frag ? "#" + frag : "");
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
      small.textContent = " (gallery page " + n.page + ")";
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
