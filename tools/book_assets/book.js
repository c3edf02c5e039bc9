/* Behaviour of the offline book (tools/render_book.py), no network needed:
 * 1. typeset math with the local KaTeX auto-render ($$..$$, $..$, \[..\], \(..\), LaTeX environments);
 * 2. collapse the chapter list on narrow screens;
 * 3. with `?selfcheck` in the URL, write facts about the rendered page as JSON into <pre id="selfcheck">
 *    once everything has loaded, for tools/check_book.py (which reads it via `chromium --dump-dom`). */
(function () {
  "use strict";
  var jsErrors = [];
  window.addEventListener("error", function (e) {
    jsErrors.push(String((e && e.message) || e) + (e && e.filename ? " @ " + e.filename.split("/").pop() + ":" + e.lineno : ""));
  });

  var ERROR_COLOR = "#cc0011", ERROR_RGB = "rgb(204, 0, 17)";
  var mathDone = false;
  function typeset() {
    if (typeof window.renderMathInElement !== "function") return;
    window.renderMathInElement(document.body, {
      delimiters: [
        { left: "$$", right: "$$", display: true },
        { left: "\\[", right: "\\]", display: true },
        { left: "$", right: "$", display: false },
        { left: "\\(", right: "\\)", display: false },
        { left: "\\begin{equation}", right: "\\end{equation}", display: true },
        { left: "\\begin{equation*}", right: "\\end{equation*}", display: true },
        { left: "\\begin{align}", right: "\\end{align}", display: true },
        { left: "\\begin{align*}", right: "\\end{align*}", display: true },
        { left: "\\begin{gather}", right: "\\end{gather}", display: true },
        { left: "\\begin{gather*}", right: "\\end{gather*}", display: true }
      ],
      ignoredTags: ["script", "noscript", "style", "textarea", "pre", "code", "option"],
      ignoredClasses: ["nomath"],
      throwOnError: false,           // bad TeX shows as a red .katex-error span (the checker reports it)
      errorColor: ERROR_COLOR,       // unknown commands are drawn in this colour (the checker finds them by it)
      macros: {},                    // one object for the page: \newcommand persists across cells
      globalGroup: true
    });
    mathDone = true;
  }
  try { typeset(); } catch (e) { jsErrors.push("typeset: " + e); }

  var chapters = document.querySelector("details.chapters");
  if (chapters && window.matchMedia && window.matchMedia("(max-width: 820px)").matches) chapters.removeAttribute("open");

  function skip(node) {
    for (var el = node.parentElement; el; el = el.parentElement) {
      var tag = el.tagName;
      if (tag === "PRE" || tag === "CODE" || tag === "SCRIPT" || tag === "STYLE" || tag === "TEXTAREA" ||
          tag === "KBD" || tag === "SAMP" || tag === "TITLE") return true;
      var cl = el.classList;
      if (cl && (cl.contains("katex") || cl.contains("nomath") || cl.contains("katex-error"))) return true;
    }
    return false;
  }

  function snippets(re) {
    var found = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, null), n;
    while ((n = walker.nextNode())) {
      var t = n.nodeValue, m;
      if (!re.test(t) || skip(n)) continue;
      re.lastIndex = 0;
      var g = new RegExp(re.source, "g");
      while ((m = g.exec(t)) && found.length < 20) {
        found.push(t.slice(Math.max(0, m.index - 40), m.index + 40).replace(/\s+/g, " "));
      }
    }
    return found;
  }

  function selfcheck() {
    var imgs = Array.prototype.slice.call(document.images);
    var facts = {
      page: location.pathname.split("/").pop(),
      title: document.title,
      katex_loaded: typeof window.katex !== "undefined",
      math_typeset: mathDone,
      katex: document.querySelectorAll(".katex").length,
      katex_display: document.querySelectorAll(".katex-display").length,
      katex_errors: Array.prototype.slice.call(document.querySelectorAll(".katex-error"), 0, 20).map(function (e) {
        return (e.getAttribute("title") || "") + " :: " + e.textContent.slice(0, 80);
      }).concat(Array.prototype.slice.call(
        document.querySelectorAll('.katex-html .text[style*="' + ERROR_RGB + '"]'), 0, 20).map(function (e) {
        return "unknown command " + e.textContent.slice(0, 60);
      })),
      raw_dollars: snippets(/\$/),
      raw_tex_delims: snippets(/\\\(|\\\)|\\\[|\\\]|\\begin\{/),
      images: imgs.map(function (img) {
        var src = img.getAttribute("src") || "";
        return { src: src.length > 120 ? src.slice(0, 120) + "..." : src,
                 ok: img.complete && img.naturalWidth > 0, w: img.naturalWidth, h: img.naturalHeight };
      }),
      headings: document.querySelectorAll("main h2").length,
      js_errors: jsErrors
    };
    var pre = document.createElement("pre");
    pre.id = "selfcheck";
    pre.textContent = JSON.stringify(facts);
    document.body.appendChild(pre);
  }

  if (/[?&]selfcheck\b/.test(location.search)) {
    if (document.readyState === "complete") selfcheck();
    else window.addEventListener("load", selfcheck);
  }
})();
