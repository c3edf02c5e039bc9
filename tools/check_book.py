"""Check the rendered book in a real browser (headless Chromium), without a driver or network.

Why this exists: the offline renderer (`tools/render_book.py`, used because Quarto cannot be installed
here) leaves math as `$...$` for KaTeX to typeset in the browser, so "the HTML looks right" is not
enough: only a browser shows whether KaTeX loaded, typeset every formula and left no stray `$`, and
whether every figure loads.  For each chapter page listed in `<book>/book.json` (the renderer's
manifest; `_quarto.yml` is the fallback) this script runs

    chromium --headless ... --virtual-time-budget=5000 --dump-dom 'file:///.../page.html?selfcheck'

`site_libs/book.js` sees `?selfcheck`, waits for the page's load event and writes facts about the live
page (number of `.katex` elements, `.katex-error`s, stray `$` or `\\(` in visible text, image load
status, JavaScript errors) as JSON into `<pre id="selfcheck">`, which the dumped DOM carries back.
Links and resources are checked here: every relative target must exist on disk (and `page.html#id`
fragments must exist in the target page); pages must not load scripts/styles/images from the network.

Each page is loaded at a 1400 px wide window (`--width`). Besides math, images and links, a page fails on
* horizontal overflow (`scrollWidth > clientWidth`) of a display equation, or of a code block whose longest
  line has at most 100 characters (`--code-chars`); code folded with `#| code-fold` is opened and measured;
* an unresolved cross-reference (`?@eq-x` or a leftover `@eq-x` in the text, or one the renderer reported in
  book.json) or citation (citeproc's "citation … not found" warnings, or its bold `key?` in the text).
Book-wide checks: at a 420 px window (`--narrow`) the chapter list is collapsed and no page scrolls sideways
(first pages checked: `--narrow-pages`); the search index finds a word that occurs in exactly one chapter
(typed into MiniSearch in the browser, first hit on that chapter); the API page has an entry for every name
in every module's `__all__` (read from the sources with `ast`, not from the renderer).

Prints one PASS/FAIL line per page and a summary; exit 0 if all pass, 1 if any fails, 2 if Chromium
is missing.  `--screenshot PATH` also saves a PNG of `--screenshot-page` at `--window-size` (for the README).

Usage:
    python tools/check_book.py _book [--screenshot docs/chapter-1400.png --screenshot-page 12_samplers.html]
"""

from __future__ import annotations

import argparse
import ast
import collections
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars")
INSTALL_HINT = ("Chromium was not found. Install it with:\n"
                "  apt-get update && apt-get install -y chromium      (Debian/Ubuntu, as root)\n"
                "or point --chromium / $CHROMIUM at a Chrome/Chromium binary.")


def find_chromium(explicit: str | None = None) -> str | None:
    """The browser to use: `explicit` (only), else $CHROMIUM (only), else the usual names on PATH."""
    wanted = explicit or os.environ.get("CHROMIUM")
    for cand in [wanted] if wanted else CHROMIUM_CANDIDATES:
        path = shutil.which(cand)  # handles absolute paths too (checks they are executable)
        if path:
            return path
    return None


def run_chromium(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run headless Chromium with a throw-away profile; works as root and without a display."""
    with tempfile.TemporaryDirectory(prefix="check-book-chromium-") as profile:
        env = dict(os.environ)
        home = env.get("HOME")
        if not home or not os.access(home, os.W_OK):
            env["HOME"] = profile  # Chromium writes under $HOME; CI users sometimes have none
        env.pop("DISPLAY", None)   # never try to reach an X server
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------------
# Static checks on the dumped DOM
# --------------------------------------------------------------------------------------------------

class _Refs(HTMLParser):
    """Collects link/resource URLs and element ids from HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []      # <a href>: navigation
        self.resources: list[str] = []  # <img src>, <script src>, <link href>: must load offline
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag in ("img", "script", "source", "iframe") and a.get("src"):
            self.resources.append(a["src"])
        elif tag == "link" and a.get("href"):
            self.resources.append(a["href"])


def parse_refs(text: str) -> _Refs:
    p = _Refs()
    p.feed(text)
    return p


_id_cache: dict[Path, set[str]] = {}


def ids_of(path: Path) -> set[str]:
    if path not in _id_cache:
        _id_cache[path] = parse_refs(path.read_text(encoding="utf-8", errors="replace")).ids
    return _id_cache[path]


def check_refs(page: Path, dom: str) -> tuple[list[str], int]:
    """Return (problems, number of relative references checked)."""
    refs = parse_refs(dom)
    problems: list[str] = []
    checked = 0
    for url, is_resource in [(u, False) for u in refs.links] + [(u, True) for u in refs.resources]:
        parts = urlsplit(url)
        if parts.scheme in ("data", "mailto", "javascript", "about"):
            continue
        if parts.scheme or url.startswith("//"):
            if is_resource:
                problems.append(f"network resource (page must work offline): {url}")
            continue  # external <a href> links are fine
        checked += 1
        if not parts.path:  # same-page fragment
            if parts.fragment and unquote(parts.fragment) not in refs.ids:
                problems.append(f"missing anchor on this page: {url}")
            continue
        target = (page.parent / unquote(parts.path)).resolve()
        if not target.exists():
            problems.append(f"broken {'resource' if is_resource else 'link'}: {url}")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in ids_of(target):
            problems.append(f"missing anchor: {url}")
    return problems, checked


# --------------------------------------------------------------------------------------------------
# Per-page browser check
# --------------------------------------------------------------------------------------------------

_SELFCHECK = re.compile(r'<pre id="selfcheck"[^>]*>(.*?)</pre>', re.S)


@dataclass
class PageResult:
    page: str
    ok: bool = True
    math: int = 0
    display: int = 0
    images: int = 0
    refs: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.ok = False
        self.problems.append(msg)


def load_facts(chromium: str, path: Path, budget_ms: int, timeout: float, width: int,
               query: str = "") -> tuple[dict | None, str, str]:
    """Open `path?selfcheck[&q=query]` at a `width` px window; return (facts, dumped DOM, error)."""
    url = path.as_uri() + "?selfcheck" + (f"&q={query}" if query else "")
    try:
        proc = run_chromium(chromium, [f"--virtual-time-budget={budget_ms}", f"--window-size={width},1000",
                                       "--dump-dom", url], timeout)
    except subprocess.TimeoutExpired:
        return None, "", f"chromium timed out after {timeout:.0f} s"
    m = _SELFCHECK.search(proc.stdout)
    if proc.returncode != 0 or not m:
        err = (proc.stderr or "").strip().splitlines()[-3:]
        return None, "", (f"page did not load or site_libs/book.js did not run (chromium exit {proc.returncode}); "
                          + " | ".join(err))
    return json.loads(html.unescape(m.group(1))), proc.stdout, ""


def check_page(chromium: str, book: Path, page: str, expect_katex: bool, min_math: int,
               budget_ms: int, timeout: float, width: int = 1400, code_chars: int = 100,
               reported: dict | None = None) -> PageResult:
    res = PageResult(page)
    t0 = time.perf_counter()
    path = (book / page).resolve()
    if not path.is_file():
        res.fail(f"page missing: {path}")
        return res
    facts, dom, err = load_facts(chromium, path, budget_ms, timeout, width)
    res.seconds = time.perf_counter() - t0
    if facts is None:
        res.fail(err)
        return res
    for o in facts.get("overflow", []):
        if o["kind"] == "math":
            res.fail(f"display equation scrolls sideways at {width} px ({o['scroll']} > {o['client']} px): {o['text']}")
        elif o["longest"] <= code_chars:
            res.fail(f"code block scrolls sideways at {width} px though its longest line has {o['longest']} "
                     f"≤ {code_chars} characters ({o['scroll']} > {o['client']} px): {o['text']}")
    for s_ in facts.get("unresolved", []):
        res.fail(f"unresolved cross-reference or citation in text: …{s_}…")
    for r in (reported or {}).get("missing_refs", []):
        res.fail(f"renderer reports an unresolved cross-reference: @{r}")
    for w in (reported or {}).get("warnings", []):
        if "citation" in w.lower() or "label" in w.lower():
            res.fail(f"renderer warning: {w}")
    res.math, res.display = facts.get("katex", 0), facts.get("katex_display", 0)
    res.images = len(facts.get("images", []))
    if expect_katex and not facts.get("katex_loaded"):
        res.fail("KaTeX did not load (site_libs/katex missing?)")
    if res.math < min_math:
        res.fail(f"only {res.math} typeset math elements (.katex), expected at least {min_math}")
    for e in facts.get("katex_errors", []):
        res.fail(f"KaTeX error: {e}")
    for s in facts.get("raw_dollars", []):
        res.fail(f"raw $ in text: …{s}…")
    for s in facts.get("raw_tex_delims", []):
        res.fail(f"raw TeX delimiter in text: …{s}…")
    for img in facts.get("images", []):
        if not img.get("ok"):
            res.fail(f"image did not load: {img.get('src')}")
    for e in facts.get("js_errors", []):
        res.fail(f"JavaScript error: {e}")
    problems, res.refs = check_refs(path, dom)
    for p in problems:
        res.fail(p)
    return res


def pages_of(book: Path, config: Path | None) -> tuple[list[str], bool]:
    """Chapter pages from the renderer's manifest, else from _quarto.yml.  Returns (pages, katex expected)."""
    manifest = book / "book.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        return [c["file"] for c in data["chapters"]], bool(data.get("katex", True))
    cfg_path = config or book.parent / "_quarto.yml"
    if not cfg_path.is_file():
        raise SystemExit(f"check_book: no {manifest} and no {cfg_path}: cannot tell which pages to check")
    import yaml  # only needed for the fallback

    chapters = (yaml.safe_load(cfg_path.read_text()).get("book") or {}).get("chapters") or []
    return ["index.html" if i == 0 else Path(c).stem + ".html" for i, c in enumerate(chapters)], True


def screenshot(chromium: str, book: Path, page: str, out: Path, budget_ms: int, timeout: float,
               size: str = "1280,1600") -> str | None:
    """Save a PNG of `page` (`page.html#anchor` scrolls there); returns an error message or None."""
    page, _, frag = page.partition("#")
    path = (book / page).resolve()
    if not path.is_file():
        return f"screenshot page not found: {path}"
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    try:
        proc = run_chromium(chromium, [f"--virtual-time-budget={budget_ms}", f"--window-size={size}",
                                       f"--screenshot={out}", path.as_uri() + (f"?at={frag}" if frag else "")], timeout)
    except subprocess.TimeoutExpired:
        return f"chromium timed out taking the screenshot after {timeout:.0f} s"
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        return f"screenshot failed (chromium exit {proc.returncode}): {(proc.stderr or '').strip()[-300:]}"
    return None


# --------------------------------------------------------------------------------------------------
# Book-wide checks: narrow window, search, API reference
# --------------------------------------------------------------------------------------------------

def check_narrow(chromium: str, book: Path, page: str, width: int, budget_ms: int, timeout: float) -> list[str]:
    facts, _, err = load_facts(chromium, (book / page).resolve(), budget_ms, timeout, width)
    if facts is None:
        return [f"{page} at {width} px: {err}"]
    out = []
    if facts.get("chapters_open"):
        out.append(f"{page} at {width} px: the chapter list is not collapsed")
    if facts.get("page_overflow"):
        out.append(f"{page} at {width} px: the page scrolls sideways")
    if facts.get("content_left", 0) > 40:
        out.append(f"{page} at {width} px: the text starts {facts['content_left']:.0f} px from the left edge")
    return out


def search_term(book: Path, manifest: dict) -> tuple[str, str] | None:
    """A word that occurs in the search index of exactly one chapter page: (word, page). Preferred: a long
    word from a section title of a late chapter."""
    index = book / (manifest.get("search") or "search-index.js")
    text = index.read_text(encoding="utf-8")
    docs = json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))
    where: dict[str, set] = collections.defaultdict(set)
    for d in docs:
        for w in re.findall(r"[A-Za-z]{6,}", d["title"] + " " + d["text"]):
            where[w.lower()].add(d["page"])
    chapters = [c["file"] for c in manifest["chapters"] if c.get("source")]
    for field_, n in (("title", 8), ("text", 8), ("text", 6)):
        for page in reversed(chapters):
            text = " ".join(d[field_] for d in docs if d["page"] == page)
            words = sorted({w.lower() for w in re.findall(rf"[A-Za-z]{{{n},}}", text) if where[w.lower()] == {page}})
            if words:
                return words[0], page
    return None


def check_search(chromium: str, book: Path, manifest: dict, budget_ms: int, timeout: float) -> tuple[list[str], str]:
    picked = search_term(book, manifest)
    if picked is None:
        return ["search: no word occurs in exactly one chapter's section titles (index empty?)"], ""
    word, page = picked
    facts, _, err = load_facts(chromium, (book / "index.html").resolve(), budget_ms, timeout, 1400, query=word)
    if facts is None:
        return [f"search: {err}"], word
    res = facts.get("search") or {}
    if res.get("error"):
        return [f"search for {word!r}: {res['error']}"], word
    hits = res.get("results", [])
    if not hits or hits[0]["page"] != page:
        return [f"search for {word!r} (only in {page}) found {[h['url'] for h in hits[:3]]}"], word
    target = hits[0]["url"]
    problems, _ = check_refs(book / "index.html", f'<a href="{target}"></a>')
    return [f"search result link: {p}" for p in problems], f"{word!r} -> {target}"


def check_api(book: Path, manifest: dict, lib: Path) -> tuple[list[str], int]:
    """Every name in every module's `__all__` (parsed from `lib`'s sources) has an entry on the API page."""
    api = manifest.get("api") or {}
    if not lib.is_dir():
        return [], 0
    page = book / (api.get("page") or "api.html")
    if not page.is_file():
        return [f"API reference page missing: {page.name}"], 0
    ids = ids_of(page.resolve())
    problems, n = [], 0
    for path in sorted(lib.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                try:
                    names = list(ast.literal_eval(node.value))
                except ValueError:  # a computed __all__ (the package re-exporting its modules' names)
                    names = []
                for name in names:
                    n += 1
                    if f"api-{path.stem}-{name}" not in ids:
                        problems.append(f"API entry missing for {path.relative_to(lib.parent)}: {name}")
    return problems, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("book", type=Path, nargs="?", default=Path("_book"), help="rendered book folder (default _book)")
    ap.add_argument("--config", type=Path, help="_quarto.yml to read when the book has no book.json")
    ap.add_argument("--chromium", help="Chromium/Chrome binary (default: /usr/bin/chromium or $CHROMIUM)")
    ap.add_argument("--min-math", type=int, default=1, help="typeset formulas each page must have (default 1)")
    ap.add_argument("--budget-ms", type=int, default=5000, help="Chromium --virtual-time-budget (default 5000)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds allowed per Chromium run (default 120)")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="pages checked in parallel")
    ap.add_argument("--screenshot", type=Path, help="also save a PNG screenshot here")
    ap.add_argument("--screenshot-page", default=None, help="page for --screenshot (default: the second chapter)")
    ap.add_argument("--window-size", default="1400,1000", help="screenshot size W,H (default 1400,1000)")
    ap.add_argument("--shot", action="append", default=[], metavar="PAGE:W,H:PNG",
                    help="save a screenshot of PAGE at a W x H window to PNG (repeatable)")
    ap.add_argument("--shots-only", action="store_true", help="only take the screenshots, check nothing")
    ap.add_argument("--width", type=int, default=1400, help="window width for the page checks (default 1400)")
    ap.add_argument("--code-chars", type=int, default=100,
                    help="code blocks whose longest line is at most this long must not scroll (default 100)")
    ap.add_argument("--narrow", type=int, default=420, help="narrow window width to check (default 420)")
    ap.add_argument("--narrow-pages", type=int, default=3, help="pages checked at the narrow width (default 3)")
    ap.add_argument("--lib", type=Path, default=None,
                    help="package whose __all__ names need API entries (default: diffusion_book next to the book)")
    args = ap.parse_args(argv)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(f"check_book: {INSTALL_HINT}", file=sys.stderr)
        return 2
    book = args.book
    if not book.is_dir():
        print(f"check_book: no book folder {book}; run tools/render_book.py first", file=sys.stderr)
        return 1
    pages, expect_katex = pages_of(book, args.config)
    manifest = json.loads((book / "book.json").read_text()) if (book / "book.json").is_file() else {"chapters": []}
    entries = {c["file"]: c for c in manifest["chapters"]}
    status = 0
    for spec in args.shot:
        try:
            pg, size, png = spec.split(":", 2)
        except ValueError:
            print(f"check_book: --shot wants PAGE:W,H:PNG, got {spec!r}", file=sys.stderr)
            return 1
        err = screenshot(chromium, book, pg, Path(png), args.budget_ms, args.timeout, size)
        print(f"check_book: {err}" if err else f"screenshot of {pg} at {size} saved to {png}")
        status = status or (1 if err else 0)
    if args.shots_only:
        return status
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda p: check_page(
            chromium, book, p, expect_katex, args.min_math if entries.get(p, {}).get("source", True) else 0,
            args.budget_ms, args.timeout, args.width, args.code_chars, entries.get(p)), pages))
        narrow = list(pool.map(lambda p: check_narrow(chromium, book, p, args.narrow, args.budget_ms, args.timeout),
                               pages[: args.narrow_pages]))
    width = max(len(p) for p in pages)
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.page:<{width}}  math={r.math:<4} (display {r.display:<3})"
              f"  images={r.images:<3} refs={r.refs:<4} {r.seconds:5.1f}s")
        for p in r.problems[:25]:
            print(f"        - {p}")
        if len(r.problems) > 25:
            print(f"        … and {len(r.problems) - 25} more")
    n_ok = sum(r.ok for r in results)
    print(f"{n_ok}/{len(results)} pages passed; {sum(r.math for r in results)} formulas, "
          f"{sum(r.images for r in results)} images; {time.perf_counter() - t0:.1f} s ({Path(chromium).name})")
    status = status or (0 if n_ok == len(results) else 1)
    book_problems = [p for ps in narrow for p in ps] + list(manifest.get("citation_warnings", []))
    print(f"narrow window: {args.narrow} px, {len(narrow)} pages: "
          f"{'PASS' if not any(narrow) else 'FAIL'} (chapter list collapsed, no sideways scrolling)")
    if manifest.get("search"):
        probs, what = check_search(chromium, book, manifest, args.budget_ms, args.timeout)
        book_problems += probs
        print(f"search: {'PASS' if not probs else 'FAIL'} {what}")
    lib = args.lib or book.resolve().parent / "diffusion_book"
    if manifest.get("generator", "").startswith("tools/render_book.py"):
        probs, n = check_api(book, manifest, lib)
        book_problems += probs
        print(f"API reference: {'PASS' if not probs else 'FAIL'} ({n} names in __all__ of {lib.name})")
    for p in book_problems[:40]:
        print(f"        - {p}")
    if book_problems:
        status = 1

    if args.screenshot:
        page = args.screenshot_page or (pages[1] if len(pages) > 1 else pages[0])
        err = screenshot(chromium, book, page, args.screenshot, args.budget_ms, args.timeout, args.window_size)
        if err:
            print(f"check_book: {err}", file=sys.stderr)
            status = 1
        else:
            print(f"screenshot of {page} saved to {args.screenshot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
