/* Behaviour of the offline book (tools/render_book.py), no network needed:
 * 1. typeset pandoc's `span.math` with the local KaTeX (and raw LaTeX/HTML outputs with its auto-render);
 * 2. collapse the chapter list on narrow screens;
 * 3. search: on first use load site_libs/minisearch/minisearch.js and search-index.js as <script>s (works from
 *    file://, where fetch() does not), index the sections with MiniSearch, list matching sections as links;
 * 4. with `?selfcheck` in the URL (and `&q=word` to run a search), write facts about the rendered page as JSON
 *    into <pre id="selfcheck"> once everything has loaded, for tools/check_book.py (`chromium --dump-dom`). */
(function () {
  "use strict";
  var jsErrors = [];
  window.addEventListener("error", function (e) {
    jsErrors.push(String((e && e.message) || e) + (e && e.filename ? " @ " + e.filename.split("/").pop() + ":" + e.lineno : ""));
  });
  var ERROR_COLOR = "#cc0011", ERROR_RGB = "rgb(204, 0, 17)";
  var macros = {};  // one object for the page: \newcommand persists across formulas
  var opts = { throwOnError: false, errorColor: ERROR_COLOR, macros: macros, globalGroup: true };
  var mathDone = false;
  function typeset() {
    if (!window.katex) return;
    document.querySelectorAll("span.math").forEach(function (el) {
      var tex = el.textContent, display = el.classList.contains("display");
      tex = tex.replace(/^\s*\\[\[(]/, "").replace(/\\[\])]\s*$/, "");
      var o = Object.assign({}, opts, { displayMode: display });
      try { window.katex.render(tex, el, o); } catch (e) { jsErrors.push("katex: " + e); }
    });
    if (typeof window.renderMathInElement === "function") {
      document.querySelectorAll(".output-latex, .output-html").forEach(function (el) {
        window.renderMathInElement(el, Object.assign({}, opts, {
          delimiters: [{ left: "$$", right: "$$", display: true }, { left: "\\[", right: "\\]", display: true },
                       { left: "$", right: "$", display: false }, { left: "\\(", right: "\\)", display: false }],
          ignoredTags: ["script", "noscript", "style", "textarea", "pre", "code", "option"] }));
      });
    }
    mathDone = true;
  }
  try { typeset(); } catch (e) { jsErrors.push("typeset: " + e); }

  var chapters = document.querySelector("details.chapters"), tocBox = document.querySelector("details.toc-details");
  if (window.matchMedia && window.matchMedia("(max-width: 820px)").matches) {
    if (chapters) chapters.removeAttribute("open");
    if (tocBox) tocBox.removeAttribute("open");
  }

  // `?at=id` shows the page from that element on (for screenshots of a section)
  var at = (location.search.match(/[?&]at=([\w:.-]+)/) || [])[1];
  if (at) window.addEventListener("load", function () {
    // headless screenshots capture the top of the document only, so pull the content up instead of scrolling
    var el = document.getElementById(at), main = document.getElementById("content");
    if (el && main) main.style.marginTop = -(el.getBoundingClientRect().top - main.getBoundingClientRect().top - 16) + "px";
  });

  // ---- search ------------------------------------------------------------------------------------
  var mini = null, loading = [];
  function loadScript(src, done) {
    var s = document.createElement("script");
    s.src = src; s.onload = function () { done(null); }; s.onerror = function () { done("cannot load " + src); };
    document.head.appendChild(s);
  }
  function withIndex(cb) {
    if (mini) return cb(null);
    loading.push(cb);
    if (loading.length > 1) return;
    function finish(err) { var l = loading; loading = []; l.forEach(function (f) { f(err); }); }
    loadScript("site_libs/minisearch/minisearch.js", function (err) {
      if (err) return finish(err);
      loadScript("search-index.js", function (err2) {
        if (err2 || !window.BOOK_SEARCH_DOCS) return finish(err2 || "search-index.js defines no BOOK_SEARCH_DOCS");
        mini = new window.MiniSearch({ fields: ["title", "text"], storeFields: ["url", "title", "chapter", "page"],
                                       searchOptions: { boost: { title: 3 }, prefix: true, fuzzy: 0.15, combineWith: "AND" } });
        mini.addAll(window.BOOK_SEARCH_DOCS);
        finish(null);
      });
    });
  }
  function snippet(doc, q) {
    var text = (window.BOOK_SEARCH_DOCS[doc.id] || {}).text || "", word = q.split(/\s+/)[0].toLowerCase();
    var i = Math.max(0, text.toLowerCase().indexOf(word));
    return (i > 30 ? "…" : "") + text.slice(Math.max(0, i - 30), i + 70) + "…";
  }
  var input = document.getElementById("search-input"), list = document.getElementById("search-results");
  function show(q) {
    withIndex(function (err) {
      if (err) { jsErrors.push("search: " + err); return; }
      var hits = q.trim().length < 2 ? [] : mini.search(q).slice(0, 15);
      list.innerHTML = "";
      hits.forEach(function (h) {
        var li = document.createElement("li"), a = document.createElement("a"), s = document.createElement("span");
        a.href = h.url; a.textContent = h.title;
        s.className = "search-where"; s.textContent = h.chapter + " — " + snippet(h, q);
        a.appendChild(s); li.appendChild(a); list.appendChild(li);
      });
      if (!hits.length && q.trim().length >= 2) { list.innerHTML = "<li class=\"search-none\">No matches</li>"; }
      list.hidden = q.trim().length < 2;
    });
  }
  if (input && list) {
    input.addEventListener("focus", function () { withIndex(function () {}); });
    input.addEventListener("input", function () { show(input.value); });
    input.addEventListener("keydown", function (e) { if (e.key === "Escape") { input.value = ""; list.hidden = true; } });
    var pre = (location.search.match(/[?&]search=([^&]*)/) || [])[1];  // `?search=word` opens with results
    if (pre) { input.value = decodeURIComponent(pre); show(input.value); }
  }

  // ---- selfcheck ---------------------------------------------------------------------------------
  function skip(node) {
    for (var el = node.parentElement; el; el = el.parentElement) {
      var tag = el.tagName;
      if (tag === "PRE" || tag === "CODE" || tag === "SCRIPT" || tag === "STYLE" || tag === "TEXTAREA" ||
          tag === "KBD" || tag === "SAMP" || tag === "TITLE") return true;
      var cl = el.classList;
      if (cl && (cl.contains("katex") || cl.contains("katex-error"))) return true;
    }
    return false;
  }
  function snippets(re) {
    var found = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, null), n, m;
    while ((n = walker.nextNode())) {
      if (skip(n)) continue;
      var g = new RegExp(re.source, "g"), t = n.nodeValue;
      while ((m = g.exec(t)) && found.length < 20) found.push(t.slice(Math.max(0, m.index - 40), m.index + 60).replace(/\s+/g, " "));
    }
    return found;
  }
  function overflow() {
    var out = [];
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });  // measure folded code too
    document.querySelectorAll(".cell-code pre, .api-sig pre, .content > pre, .sourceCode pre").forEach(function (el) {
      if (el.scrollWidth > el.clientWidth + 1) {
        var lines = el.textContent.split("\n"), longest = Math.max.apply(null, lines.map(function (l) { return l.length; }));
        out.push({ kind: "code", longest: longest, scroll: el.scrollWidth, client: el.clientWidth,
                   text: lines.filter(function (l) { return l.length === longest; })[0].slice(0, 80) });
      }
    });
    document.querySelectorAll(".katex-display").forEach(function (el) {
      if (el.scrollWidth > el.clientWidth + 1) {
        var ann = el.querySelector("annotation");
        out.push({ kind: "math", scroll: el.scrollWidth, client: el.clientWidth,
                   text: (ann ? ann.textContent : el.textContent).replace(/\s+/g, " ").slice(0, 100) });
      }
    });
    return out;
  }
  function selfcheck(searchResult) {
    var imgs = Array.prototype.slice.call(document.images);
    var facts = {
      page: location.pathname.split("/").pop(), title: document.title,
      katex_loaded: typeof window.katex !== "undefined", math_typeset: mathDone,
      katex: document.querySelectorAll(".katex").length,
      katex_display: document.querySelectorAll(".katex-display").length,
      katex_errors: Array.prototype.slice.call(document.querySelectorAll(".katex-error"), 0, 20).map(function (e) {
        return (e.getAttribute("title") || "") + " :: " + e.textContent.slice(0, 80);
      }).concat(Array.prototype.slice.call(
        document.querySelectorAll('.katex-html .text[style*="' + ERROR_RGB + '"]'), 0, 20).map(function (e) {
        return "unknown command " + e.textContent.slice(0, 60);
      })),
      // pandoc turns $…$ into math; a leftover pair with TeX inside (or $$) means the markdown did not parse
      raw_dollars: snippets(/\$\$|\$[^$]{0,200}?[\\^_{][^$]*?\$/),
      raw_tex_delims: snippets(/\\\(|\\\)|\\\[|\\\]|\\begin\{/),
      unresolved: snippets(/\?@[\w-]+|(^|[\s(\[])@(eq|fig|sec)-[\w-]+|\b[a-z]+\d{4}[a-z]+\?/),
      images: imgs.map(function (img) {
        var src = img.getAttribute("src") || "";
        return { src: src.length > 120 ? src.slice(0, 120) + "..." : src, ok: img.complete && img.naturalWidth > 0 };
      }),
      headings: document.querySelectorAll("main h2").length,
      width: window.innerWidth,
      page_overflow: document.documentElement.scrollWidth > window.innerWidth + 1,
      chapters_open: !!(chapters && chapters.open) || !!(tocBox && tocBox.open && window.innerWidth <= 820),
      content_left: (document.getElementById("content") || document.body).getBoundingClientRect().left,
      overflow: overflow(),
      search: searchResult || null,
      js_errors: jsErrors
    };
    var pre = document.createElement("pre");
    pre.id = "selfcheck";
    pre.textContent = JSON.stringify(facts);
    document.body.appendChild(pre);
  }
  if (/[?&]selfcheck\b/.test(location.search)) {
    var q = (location.search.match(/[?&]q=([^&]*)/) || [])[1];
    var run = function () {
      if (!q) return selfcheck(null);
      q = decodeURIComponent(q);
      withIndex(function (err) {
        selfcheck(err ? { query: q, error: String(err) } :
          { query: q, results: mini.search(q).slice(0, 10).map(function (h) { return { url: h.url, page: h.page }; }) });
      });
    };
    if (document.readyState === "complete") run(); else window.addEventListener("load", run);
  }
})();
