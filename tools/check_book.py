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

Prints one PASS/FAIL line per page and a summary; exit 0 if all pass, 1 if any fails, 2 if Chromium
is missing.  `--screenshot PATH` also saves a 1280x1600 PNG of `--screenshot-page` (for the README).

Usage:
    python tools/check_book.py _book [--screenshot docs/screenshot.png --screenshot-page 02_forward_process.html]
"""

from __future__ import annotations

import argparse
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


def check_page(chromium: str, book: Path, page: str, expect_katex: bool, min_math: int,
               budget_ms: int, timeout: float) -> PageResult:
    res = PageResult(page)
    t0 = time.perf_counter()
    path = (book / page).resolve()
    if not path.is_file():
        res.fail(f"page missing: {path}")
        return res
    url = path.as_uri() + "?selfcheck"
    try:
        proc = run_chromium(chromium, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    except subprocess.TimeoutExpired:
        res.fail(f"chromium timed out after {timeout:.0f} s")
        return res
    res.seconds = time.perf_counter() - t0
    dom = proc.stdout
    m = _SELFCHECK.search(dom)
    if proc.returncode != 0 or not m:
        err = (proc.stderr or "").strip().splitlines()[-3:]
        res.fail(f"page did not load or site_libs/book.js did not run (chromium exit {proc.returncode}); "
                 + " | ".join(err))
        return res
    facts = json.loads(html.unescape(m.group(1)))
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
    """Save a PNG of `page`; returns an error message or None."""
    path = (book / page).resolve()
    if not path.is_file():
        return f"screenshot page not found: {path}"
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    try:
        proc = run_chromium(chromium, [f"--virtual-time-budget={budget_ms}", f"--window-size={size}",
                                       f"--screenshot={out}", path.as_uri()], timeout)
    except subprocess.TimeoutExpired:
        return f"chromium timed out taking the screenshot after {timeout:.0f} s"
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        return f"screenshot failed (chromium exit {proc.returncode}): {(proc.stderr or '').strip()[-300:]}"
    return None


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
    ap.add_argument("--window-size", default="1280,1600", help="screenshot size W,H (default 1280,1600)")
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
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda p: check_page(chromium, book, p, expect_katex, args.min_math,
                                                     args.budget_ms, args.timeout), pages))
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
    status = 0 if n_ok == len(results) else 1

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
