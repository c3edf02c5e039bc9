"""Render the book offline: executed notebooks -> a static, navigable HTML site in `_book/`.

Why this exists: the book is defined for Quarto (`_quarto.yml`, `project.type: book`), but Quarto
cannot be installed on the project's machines (no Debian package, no npm package, and PyPI's
`quarto-cli` downloads a binary from a code host at build time).  This script reads the *same*
`_quarto.yml` chapter list and produces a comparable site with nothing but nbconvert's markdown
renderer (mistune, with its math protection), pygments and jinja2:

* one page per chapter (`<stem>.html`; the first chapter becomes `index.html`), with a left sidebar
  listing every chapter, an "On this page" table of contents, previous/next links and a footer;
* math left intact as `$...$` / `$$...$$` and typeset in the browser by a *local* KaTeX copied from
  `_build/vendor/katex` (see `tools/vendor_katex.py`) into `_book/site_libs/katex/`, linked relatively,
  so pages work straight from disk (file://) with no network;
* nbdev / Quarto cell directives honoured (`#| hide`, `#| echo: false`, `#| include: false`,
  `#| output: false`, `#| code-fold`, `#| fig-cap`; `#| export` & co. are stripped from shown code);
* figures written to `_book/figures/<stem>-N.png` (or .jpg/.svg) instead of inlined;
* `_book/book.json`, a manifest `tools/check_book.py` uses to check the pages in headless Chromium.

The committed notebooks in `nbs/` carry no outputs, so this renders *executed copies* (by default
`_build/executed/<stem>.ipynb`, written by `make book`).

Usage:
    python tools/render_book.py --src _build/executed --out _book [--config _quarto.yml]
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import nbformat
import yaml
from markupsafe import Markup
from nbconvert.filters.ansi import ansi2html
from nbconvert.filters.markdown_mistune import MISTUNE_V3, IPythonRenderer, MarkdownWithMath
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "book_assets"
GENERATOR = "tools/render_book.py"
FOOTER = "Rendered offline by tools/render_book.py from executed notebooks"


class BookError(RuntimeError):
    """A failure with a message meant for the person running the build."""


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]+>")
_TAG_ANCHOR = re.compile(r'<a class="anchor-link"[^>]*>.*?</a>')


def strip_tags(s: str) -> str:
    """Plain text of an HTML fragment (for <title>, slugs and the manifest)."""
    return html.unescape(_TAG.sub("", s)).strip()


def slugify(text: str) -> str:
    """Quarto/pandoc-like identifier: lowercase, spaces -> '-', punctuation dropped."""
    s = strip_tags(text).lower()
    s = re.sub(r"[^\w\s-]", "", s, flags=re.UNICODE)
    s = re.sub(r"\s+", "-", s.strip())
    s = s.lstrip("0123456789-_")  # ids should start with a letter (pandoc does the same)
    return s or "section"


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("false", "no", "0", "off", "")
    return bool(v)


_HEADING_ATTRS = re.compile(r"\s*\{((?:[#.][\w:-]+|[\w-]+=(?:\"[^\"]*\"|\S+))(?:\s+(?:[#.][\w:-]+|[\w-]+=(?:\"[^\"]*\"|\S+)))*)\}\s*$")


def parse_attrs(spec: str) -> tuple[str | None, list[str], dict[str, str]]:
    """Parse a pandoc attribute block body like `#sec-x .unnumbered key="v"` into (id, classes, kv)."""
    ident, classes, kv = None, [], {}
    for tok in re.findall(r'[\w-]+="[^"]*"|\S+', spec):
        if tok.startswith("#"):
            ident = tok[1:]
        elif tok.startswith("."):
            classes.append(tok[1:])
        elif "=" in tok:
            k, v = tok.split("=", 1)
            kv[k] = v.strip('"')
        else:  # pandoc shorthand `::: warning` means class "warning"
            classes.append(tok)
    return ident, classes, kv


# --------------------------------------------------------------------------------------------------
# Markdown: nbconvert's math-aware mistune renderer, plus headings/links/images/`$` handling
# --------------------------------------------------------------------------------------------------

@dataclass
class Heading:
    level: int
    id: str
    html: str  # inner HTML (math still as TeX, typeset by KaTeX in the page, TOC included)


class PageContext:
    """Per-page state shared by the markdown renderer and the cell loop."""

    def __init__(self, stem: str, out_dir: Path, asset_dirs: list[Path], link_map: dict[str, str]):
        self.stem = stem
        self.out_dir = out_dir
        self.asset_dirs = asset_dirs  # where relative image paths in markdown are looked up
        self.link_map = link_map      # notebook stem -> output page (for `[x](02_foo.ipynb)` links)
        self.headings: list[Heading] = []
        self.ids: set[str] = set()
        self.n_figures = 0
        self.n_images = 0
        self.warnings: list[str] = []

    def unique_id(self, base: str) -> str:
        ident, i = base, 1
        while ident in self.ids:
            ident, i = f"{base}-{i}", i + 1
        self.ids.add(ident)
        return ident

    def write_figure(self, data: bytes, ext: str) -> str:
        """Write figure bytes to figures/<stem>-N.<ext>; return the relative URL."""
        self.n_figures += 1
        rel = f"figures/{self.stem}-{self.n_figures}.{ext}"
        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return rel


class BookRenderer(IPythonRenderer):
    """nbconvert's IPythonRenderer (keeps `$`/`$$` math verbatim) with book-specific tweaks:

    * headings get pandoc-style ids (or the `{#id}` given in the source) and are recorded for the TOC;
      `{.unnumbered}`-style attribute blocks are removed from the text;
    * links to `foo.ipynb` are rewritten to the rendered page;
    * relative images are copied into `_book/figures/`; attachments stay data URIs;
    * a literal `$` in prose (e.g. written `\\$`) is wrapped in `<span class="nomath">` so KaTeX's
      auto-render never pairs it with another dollar sign.
    """

    def __init__(self, ctx: PageContext, attachments: dict | None = None):
        super().__init__(escape=False, anchor_link_text="#", attachments=attachments or {})
        self.ctx = ctx

    def text(self, text: str) -> str:
        out = super().text(text)
        return out.replace("$", '<span class="nomath">$</span>') if "$" in out else out

    def heading(self, text: str, level: int, **attrs: Any) -> str:
        ident = None
        m = _HEADING_ATTRS.search(text)
        classes: list[str] = []
        if m:
            ident, classes, _ = parse_attrs(m.group(1))
            text = text[: m.start()].rstrip()
        ident = self.ctx.unique_id(ident or slugify(text))
        self.ctx.headings.append(Heading(level, ident, text))
        cls = f' class="{" ".join(classes)}"' if classes else ""
        return (f'<h{level} id="{ident}"{cls}>{text}'
                f'<a class="anchor-link" href="#{ident}" aria-label="Link to this section">#</a></h{level}>\n')

    def link(self, text: str, url: str, title: str | None = None) -> str:
        return super().link(text, self._rewrite_link(url), title)

    def _rewrite_link(self, url: str) -> str:
        m = re.match(r"^(?![a-z][a-z0-9+.-]*:|/)([^#?]*?)([^/#?]+)\.(ipynb|qmd)([#?].*)?$", url, re.I)
        if not m:
            return url
        folder, stem, rest = m.group(1), m.group(2), m.group(4) or ""
        if stem in self.ctx.link_map:  # another chapter: all pages sit side by side in the book folder
            return self.ctx.link_map[stem] + rest
        return f"{folder}{stem}.html{rest}"

    def image(self, text: str, url: str, title: str | None = None) -> str:
        self.ctx.n_images += 1
        if not url.startswith("attachment:") and not re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", url, re.I):
            url = self._copy_local_image(url)
        return super().image(text, url, title)

    def _copy_local_image(self, url: str) -> str:
        rel = url.split("#")[0].split("?")[0]
        for base in self.ctx.asset_dirs:
            src = (base / rel)
            if src.is_file():
                dest_rel = f"figures/{self.ctx.stem}-{src.name}"
                dest = self.ctx.out_dir / dest_rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                return dest_rel
        self.ctx.warnings.append(f"image not found: {url}")
        return url


def _inline_markdown(text: str, ctx: PageContext) -> str:
    """Render a one-line markdown snippet (caption, callout title) without the wrapping <p>."""
    out = MarkdownWithMath(renderer=BookRenderer(ctx)).render(text).strip()
    return re.sub(r"^<p>(.*)</p>$", r"\1", out, flags=re.S)


def render_markdown(source: str, ctx: PageContext, attachments: dict | None = None) -> str:
    """Markdown -> HTML with math kept verbatim.

    Also understands pandoc/Quarto fenced divs, which mistune does not: `::: {.callout-note}` (title from
    `title="..."` or a heading on the next line) becomes a styled callout box; other `::: {.cls}` blocks
    become `<div class="cls">`.  The text between fences is rendered as markdown on its own."""
    out: list[str] = []
    buf: list[str] = []
    closers: list[str] = []   # closing tags of the open fenced divs
    fence: str | None = None  # inside a ``` code block, ::: lines are code, not divs

    def flush() -> None:
        if buf:
            out.append(MarkdownWithMath(renderer=BookRenderer(ctx, attachments)).render("\n".join(buf)))
            buf.clear()

    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        fm = re.match(r"^\s*(```+|~~~+)", line)
        if fm:
            tick = fm.group(1)
            if fence is None:
                fence = tick
            elif tick[0] == fence[0] and len(tick) >= len(fence):
                fence = None
        if fence is None:
            opening = re.match(r"^:{3,}\s*(?:\{(.*)\}|([\w-]+))\s*$", line)
            if opening:
                flush()
                _, classes, kv = parse_attrs(opening.group(1) or opening.group(2))
                callout = next((c for c in classes if c.startswith("callout")), None)
                if callout:
                    kind = callout.split("-", 1)[1] if "-" in callout else "note"
                    title = kv.get("title")
                    if title is None and i < len(lines) and re.match(r"^#{1,6}\s+", lines[i]):
                        title = re.sub(r"^#{1,6}\s+", "", lines[i]).strip()
                        i += 1
                    if title is None:
                        title = kind.capitalize()
                    title_html = f'<div class="callout-title">{_inline_markdown(title, ctx)}</div>' if title else ""
                    out.append(f'<div class="callout callout-{html.escape(kind)}">{title_html}<div class="callout-body">')
                    closers.append("</div></div>")
                else:
                    out.append(f'<div class="{html.escape(" ".join(classes))}">')
                    closers.append("</div>")
                continue
            if closers and re.match(r"^:{3,}\s*$", line):
                flush()
                out.append(closers.pop())
                continue
        buf.append(line)
    flush()
    out.extend(reversed(closers))  # unclosed fenced divs: close them so the page stays well-formed
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Code cells: directives and outputs
# --------------------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^\s*#\|\s?(.*)$")
_TQDM = re.compile(r"(\d{1,3}%\|.*\||\d+(\.\d+)?(it/s|s/it)\]|\|\s*\d+/\d+\s*\[)")
#: stderr lines that are tqdm noise in a notebook without ipywidgets (the warning and its source line)
_TQDM_WARN = re.compile(r"TqdmWarning: IProgress not found|^\s*from \.autonotebook import tqdm as notebook_tqdm\s*$")


def parse_directives(source: str) -> tuple[dict[str, Any], str]:
    """Split leading `#| key: value` lines off a code cell.  Returns (directives, remaining code).

    Bare words (`#| hide`, `#| export`) map to True; `#| default_exp mod` maps to "mod";
    YAML-ish values are parsed with yaml (so `false`, quoted captions, lists work).
    Lines ending in `#| hide_line` are removed too (nbdev)."""
    lines = source.splitlines()
    d: dict[str, Any] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if m:
            body = m.group(1).strip()
            km = re.match(r"^([\w-]+)\s*(?::\s*(.*)|\s+(.*))?$", body)
            if km:
                key = km.group(1)
                if km.group(2) is not None:
                    try:
                        val = yaml.safe_load(km.group(2)) if km.group(2).strip() else True
                    except yaml.YAMLError:
                        val = km.group(2).strip()
                elif km.group(3) is not None:
                    val = km.group(3).strip()
                else:
                    val = True
                d[key] = val
            i += 1
        elif not line.strip() and not d:
            i += 1  # leading blank lines before directives
        else:
            break
    code = [l for l in lines[i:] if not re.search(r"#\|\s*hide_line\s*$", l)]
    return d, "\n".join(code).strip("\n")


def _collapse_cr(text: str) -> str:
    """Emulate a terminal's carriage return: keep what the last `\\r` left on each line."""
    text = text.replace("\r\n", "\n")
    if "\r" not in text:
        return text
    out = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p]
        out.append(parts[-1] if parts else "")
    return "\n".join(out)


def _merge_streams(outputs: list) -> list:
    merged: list = []
    for o in outputs:
        if (o.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == o.get("name")):
            merged[-1] = dict(merged[-1], text=merged[-1]["text"] + o.get("text", ""))
        else:
            merged.append(o)
    return merged


MIME_ORDER = ("text/html", "image/svg+xml", "image/png", "image/jpeg", "image/gif",
              "text/markdown", "text/latex", "text/plain")


def _b64(data: Any) -> bytes:
    if isinstance(data, list):
        data = "".join(data)
    return base64.b64decode(data)


def _join(data: Any) -> str:
    return "".join(data) if isinstance(data, list) else str(data)


class CellRenderer:
    """Turns one notebook into the HTML body of a page."""

    def __init__(self, ctx: PageContext, lexer_name: str = "python"):
        self.ctx = ctx
        try:
            self.lexer = get_lexer_by_name("ipython3" if lexer_name.startswith("python") else lexer_name)
        except ClassNotFound:
            self.lexer = get_lexer_by_name("python")
        self.formatter = HtmlFormatter(cssclass="highlight")
        self.n_errors = 0
        self.asis = False  # set per cell from `#| output: asis`

    # --- outputs ------------------------------------------------------------------------------
    def output_html(self, out: dict, caption: str | None) -> str:
        kind = out.get("output_type")
        if kind == "stream":
            name = out.get("name", "stdout")
            text = _collapse_cr(_join(out.get("text", "")))
            if name == "stderr":  # drop tqdm progress bars, keep real warnings
                text = "\n".join(l for l in text.split("\n") if not (_TQDM.search(l) or _TQDM_WARN.search(l)))
            if not text.strip():
                return ""
            if self.asis and name == "stdout":  # `#| output: asis`: printed text is markdown
                return f'<div class="cell-output cell-output-asis">{render_markdown(text, self.ctx)}</div>'
            return f'<div class="cell-output cell-output-{name}"><pre>{ansi2html(text.rstrip())}</pre></div>'
        if kind == "error":
            self.n_errors += 1
            tb = ansi2html("\n".join(out.get("traceback", [])))
            head = f'<strong>{html.escape(out.get("ename", "Error"))}</strong>: {html.escape(out.get("evalue", ""))}'
            return (f'<div class="cell-output cell-output-error"><pre>{head}</pre>'
                    f'<details><summary>Traceback</summary><pre>{tb}</pre></details></div>')
        if kind not in ("execute_result", "display_data"):
            return ""
        data = out.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            return ""  # live widgets (e.g. tqdm.auto bars) cannot work in a static page
        meta = out.get("metadata", {}) or {}
        mime = next((m for m in MIME_ORDER if m in data), None)
        if mime is None:
            return ""
        body = data[mime]
        if mime.startswith("image/"):
            ext = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/svg+xml": "svg"}[mime]
            raw = _join(body).encode() if mime == "image/svg+xml" else _b64(body)
            src = self.ctx.write_figure(raw, ext)
            self.ctx.n_images += 1
            m = meta.get(mime, {}) if isinstance(meta.get(mime), dict) else {}
            size = "".join(f' {k}="{int(m[k])}"' for k in ("width", "height") if isinstance(m.get(k), (int, float)))
            alt = html.escape(caption or f"Figure {self.ctx.n_figures}", quote=True)
            img = f'<img src="{src}" alt="{alt}"{size} loading="eager">'
            if caption:
                cap = _inline_markdown(caption, self.ctx)
                return f'<div class="cell-output cell-output-display"><figure>{img}<figcaption>{cap}</figcaption></figure></div>'
            return f'<div class="cell-output cell-output-display">{img}</div>'
        text = _join(body)
        if mime == "text/html":
            return f'<div class="cell-output cell-output-display output-html">{text}</div>'
        if mime == "text/markdown":
            return f'<div class="cell-output cell-output-display output-markdown">{render_markdown(text, self.ctx)}</div>'
        if mime == "text/latex":
            return f'<div class="cell-output cell-output-display output-latex">{html.escape(text, quote=False)}</div>'
        return f'<div class="cell-output cell-output-display"><pre>{ansi2html(text)}</pre></div>'

    # --- cells --------------------------------------------------------------------------------
    def code_cell(self, cell: dict) -> str:
        d, code = parse_directives(_join(cell.get("source", "")))
        if _truthy(d.get("hide", False)) or not _truthy(d.get("include", True)):
            return ""
        show_code = _truthy(d.get("echo", True)) and bool(code.strip())
        show_output = d.get("output", True)
        self.asis = str(show_output).lower() == "asis"
        outputs: list[str] = []
        if _truthy(show_output):
            cap = d.get("fig-cap")
            cap = cap[0] if isinstance(cap, list) and cap else cap
            outputs = [h for h in (self.output_html(o, str(cap) if cap else None)
                                   for o in _merge_streams(cell.get("outputs", []))) if h]
        if not show_code and not outputs:
            return ""
        parts = []
        if show_code:
            code_html = highlight(code, self.lexer, self.formatter)
            fold = d.get("code-fold")
            if fold is not None and _truthy(fold):
                summary = html.escape(str(d.get("code-summary", "Code")))
                opened = " open" if str(fold).lower() == "show" else ""
                code_html = f"<details class=\"code-fold\"{opened}><summary>{summary}</summary>{code_html}</details>"
            parts.append(f'<div class="cell-code">{code_html}</div>')
        parts.extend(outputs)
        label = d.get("label")
        ident = f' id="{html.escape(str(label))}"' if label else ""
        if label:
            self.ctx.ids.add(str(label))
        return f'<div class="cell"{ident}>' + "".join(parts) + "</div>\n"

    def markdown_cell(self, cell: dict) -> str:
        return render_markdown(_join(cell.get("source", "")), self.ctx, cell.get("attachments"))

    def raw_cell(self, cell: dict) -> str:
        fmt = (cell.get("metadata", {}).get("format") or cell.get("metadata", {}).get("raw_mimetype") or "").lower()
        if fmt in ("text/html", "html"):
            return _join(cell.get("source", ""))
        return ""  # front matter and other raw cells are not shown


# --------------------------------------------------------------------------------------------------
# Book: config, chapters, pages
# --------------------------------------------------------------------------------------------------

@dataclass
class Chapter:
    source: str            # as listed in _quarto.yml, e.g. nbs/02_forward_process.ipynb
    stem: str
    out_name: str          # index.html for the first chapter
    title_html: str = ""
    title_text: str = ""
    number: str | None = None
    body: str = ""
    headings: list[Heading] = field(default_factory=list)
    n_images: int = 0
    n_figures: int = 0
    n_errors: int = 0
    unnumbered: bool = False


def load_config(path: Path) -> dict:
    if not path.is_file():
        raise BookError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BookError(f"cannot parse {path}: {e}") from e
    book = cfg.get("book") or {}
    chapters: list[str] = []
    for entry in book.get("chapters") or []:
        # Quarto allows `- part: "Name"\n  chapters: [...]`; flatten parts.
        if isinstance(entry, dict):
            chapters += [c if isinstance(c, str) else c.get("href") for c in entry.get("chapters", [])]
            if entry.get("href"):
                chapters.append(entry["href"])
        else:
            chapters.append(entry)
    if not chapters:
        raise BookError(f"{path} lists no book.chapters")
    return {"title": str(book.get("title", "Book")), "subtitle": str(book.get("subtitle", "") or ""),
            "author": book.get("author"), "chapters": chapters}


def find_executed(src_dir: Path, chapter: str, config_dir: Path) -> Path:
    """The executed copy of a chapter: <src>/<stem>.ipynb (or <src>/<chapter path>).  .qmd/.md are read as is."""
    p = Path(chapter)
    if p.suffix in (".qmd", ".md"):
        cand = config_dir / p
        if cand.is_file():
            return cand
        raise BookError(f"chapter {chapter}: file not found ({cand})")
    for cand in (src_dir / f"{p.stem}.ipynb", src_dir / p):
        if cand.is_file():
            return cand
    raise BookError(
        f"chapter {chapter}: no executed copy at {src_dir / (p.stem + '.ipynb')}.\n"
        "  The committed notebooks carry no outputs; run `make book` (it executes them into "
        f"{src_dir}) before rendering.")


def _number_chapters(chapters: list[Chapter], mode: str) -> None:
    n = 0
    for i, ch in enumerate(chapters):
        if i == 0 or ch.unnumbered:
            continue  # the first chapter (index) is the preface
        n += 1
        m = re.match(r"^(\d+)[_-]", ch.stem)
        ch.number = str(int(m.group(1))) if (mode == "prefix" and m) else str(n)


def read_chapter(path: Path) -> nbformat.NotebookNode:
    if path.suffix == ".ipynb":
        try:
            return nbformat.read(str(path), as_version=4)
        except Exception as e:  # noqa: BLE001 - report any parse failure the same way
            raise BookError(f"cannot read notebook {path}: {e}") from e
    text = path.read_text()
    nb = nbformat.v4.new_notebook()
    fm = re.match(r"^---\n.*?\n---\n", text, re.S)
    if fm:
        nb.cells.append(nbformat.v4.new_raw_cell(fm.group(0)))
        text = text[fm.end():]
    nb.cells.append(nbformat.v4.new_markdown_cell(text))
    return nb


def render_chapter(ch: Chapter, nb: nbformat.NotebookNode, ctx: PageContext) -> None:
    """Fill `ch.body`, `ch.headings`, `ch.title_*` from the notebook."""
    lang = (nb.metadata.get("language_info", {}) or {}).get("name") or \
        (nb.metadata.get("kernelspec", {}) or {}).get("language") or "python"
    cells = CellRenderer(ctx, lang)
    parts: list[str] = []
    front: dict = {}
    for cell in nb.cells:
        ctype = cell.get("cell_type")
        if ctype == "raw" and not front and re.match(r"^---\s*\n", _join(cell.get("source", ""))):
            try:
                front = yaml.safe_load(_join(cell.source).strip().strip("-")) or {}
            except yaml.YAMLError:
                front = {}
            continue
        if ctype == "markdown":
            parts.append(cells.markdown_cell(cell))
        elif ctype == "code":
            parts.append(cells.code_cell(cell))
        elif ctype == "raw":
            parts.append(cells.raw_cell(cell))
    body = "\n".join(p for p in parts if p)
    h1 = next((h for h in ctx.headings if h.level == 1), None)
    if h1 is None:
        # nbdev-style front matter instead of a `# Title` cell: synthesise the heading and summary
        title = str(front.get("title") or ch.stem)
        ident = ctx.unique_id(slugify(title))
        h1 = Heading(1, ident, html.escape(title))
        desc = front.get("description")
        head = f'<h1 id="{ident}">{h1.html}</h1>\n' + (f"<blockquote><p>{html.escape(str(desc))}</p></blockquote>\n" if desc else "")
        body = head + body
        ctx.headings.insert(0, h1)
    ch.unnumbered = bool(re.search(rf'<h1 id="{re.escape(h1.id)}" class="[^"]*\bunnumbered\b', body))
    ch.title_html = h1.html
    ch.title_text = strip_tags(h1.html)
    ch.body = body
    ch.headings = [h for h in ctx.headings if h is not h1]
    ch.n_images = ctx.n_images
    ch.n_figures = ctx.n_figures
    ch.n_errors = cells.n_errors


def _add_number_to_h1(ch: Chapter) -> None:
    if ch.number is None:
        return
    h1 = re.search(r"<h1 id=\"[^\"]*\"[^>]*>", ch.body)
    if h1:
        ch.body = (ch.body[: h1.end()] + f'<span class="chapter-number">{ch.number}</span>&#8194;'
                   + ch.body[h1.end():])


def write_site_libs(out: Path, katex_dir: Path | None) -> None:
    libs = out / "site_libs"
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    for name in ("book.css", "book.js"):
        shutil.copyfile(ASSETS / name, libs / name)
    fmt = HtmlFormatter(style="friendly")
    (libs / "pygments.css").write_text(
        "/* generated by tools/render_book.py from pygments style 'friendly' */\n" + fmt.get_style_defs(".highlight") + "\n")
    if katex_dir is not None:
        dest = libs / "katex"
        dest.mkdir()
        for rel in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js", "LICENSE"):
            src = katex_dir / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest / rel)
        shutil.copytree(katex_dir / "fonts", dest / "fonts")


def clean_out(out: Path, config_dir: Path) -> None:
    """Remove what a previous run of this script wrote (pages, figures, site_libs, manifest) only."""
    if out.resolve() == config_dir or (out / ".git").exists() or (out / "_quarto.yml").exists():
        raise BookError(f"refusing to render into {out}: it looks like a project folder, not an output folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    for p in ("figures", "site_libs"):
        if (out / p).is_dir():
            shutil.rmtree(out / p)
    for p in list(out.glob("*.html")) + [out / "book.json"]:
        if p.is_file():
            p.unlink()


def build(config: Path, src: Path, out: Path, katex_dir: Path | None, numbering: str = "prefix",
          log=print) -> dict:
    """Render the whole book; returns the manifest written to `<out>/book.json`."""
    t0 = time.perf_counter()
    cfg = load_config(config)
    config_dir = config.resolve().parent
    paths = [find_executed(src, c, config_dir) for c in cfg["chapters"]]  # fail early, before writing anything

    chapters = [Chapter(source=c, stem=Path(c).stem, out_name="index.html" if i == 0 else f"{Path(c).stem}.html")
                for i, c in enumerate(cfg["chapters"])]
    if len({c.out_name for c in chapters}) != len(chapters):
        raise BookError("two chapters map to the same page name: " + ", ".join(c.out_name for c in chapters))
    link_map = {c.stem: c.out_name for c in chapters}

    clean_out(out, config_dir)
    write_site_libs(out, katex_dir)

    warnings: list[str] = []
    for ch, path in zip(chapters, paths):
        nb = read_chapter(path)
        asset_dirs = [config_dir / Path(ch.source).parent, path.parent]
        ctx = PageContext(ch.stem, out, asset_dirs, link_map)
        render_chapter(ch, nb, ctx)
        warnings += [f"{ch.source}: {w}" for w in ctx.warnings]
        if ch.n_errors:
            warnings.append(f"{ch.source}: {ch.n_errors} cell(s) have error outputs")
    _number_chapters(chapters, numbering)
    for ch in chapters:
        _add_number_to_h1(ch)

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ASSETS)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    template = env.get_template("page.html")
    for i, ch in enumerate(chapters):
        prev_ch = chapters[i - 1] if i > 0 else None
        next_ch = chapters[i + 1] if i + 1 < len(chapters) else None
        toc = [h for h in ch.headings if h.level in (2, 3)]
        page = template.render(
            book_title=cfg["title"], book_subtitle=cfg["subtitle"],
            page_title=f"{ch.title_text} – {cfg['title']}" if i else cfg["title"],
            chapters=[{"href": c.out_name, "number": c.number, "title": Markup(c.title_html), "current": c is ch}
                      for c in chapters],
            toc=[{"id": h.id, "level": h.level, "html": Markup(_TAG_ANCHOR.sub("", h.html))} for h in toc],
            body=Markup(ch.body),
            prev=prev_ch and {"href": prev_ch.out_name, "number": prev_ch.number, "title": Markup(prev_ch.title_html)},
            next=next_ch and {"href": next_ch.out_name, "number": next_ch.number, "title": Markup(next_ch.title_html)},
            katex=katex_dir is not None, footer=FOOTER, source=ch.source, generator=GENERATOR,
        )
        (out / ch.out_name).write_text(page, encoding="utf-8")
        log(f"  wrote {out / ch.out_name}  ({ch.n_figures} figures, {len(toc)} sections)")

    manifest = {
        "generator": GENERATOR, "title": cfg["title"], "subtitle": cfg["subtitle"],
        "katex": katex_dir is not None,
        "chapters": [{"source": c.source, "file": c.out_name, "title": c.title_text, "number": c.number,
                      "sections": len([h for h in c.headings if h.level == 2]), "images": c.n_images,
                      "figures": c.n_figures, "errors": c.n_errors} for c in chapters],
    }
    (out / "book.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for w in warnings:
        log(f"  warning: {w}")
    log(f"Rendered {len(chapters)} pages into {out} in {time.perf_counter() - t0:.2f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("_build/executed"), help="folder of executed notebooks")
    ap.add_argument("--out", type=Path, default=Path("_book"), help="output folder (default _book)")
    ap.add_argument("--config", type=Path, default=Path("_quarto.yml"), help="Quarto book config to read")
    ap.add_argument("--katex", type=Path, default=None,
                    help="vendored KaTeX folder (default: _build/vendor/katex next to the config)")
    ap.add_argument("--no-katex", action="store_true", help="render without KaTeX (math stays as TeX source)")
    ap.add_argument("--numbering", choices=("prefix", "sequential"), default="prefix",
                    help="chapter numbers from the file-name prefix (02_x -> 2, default) or 1, 2, 3 in order")
    args = ap.parse_args(argv)
    if not MISTUNE_V3:
        print("render_book: error: needs mistune>=3 (nbconvert's markdown renderer); "
              "`pip install 'mistune>=3'`", file=sys.stderr)
        return 1

    katex_dir = None
    if not args.no_katex:
        katex_dir = (args.katex or args.config.resolve().parent / "_build" / "vendor" / "katex").resolve()
        if not (katex_dir / "katex.min.js").is_file() or not (katex_dir / "contrib" / "auto-render.min.js").is_file():
            print(f"render_book: error: no KaTeX in {katex_dir}.\n"
                  "  Run `python tools/vendor_katex.py` once (it fetches KaTeX with npm), "
                  "or pass --no-katex to render math as TeX source.", file=sys.stderr)
            return 1
    try:
        build(args.config, args.src, args.out, katex_dir, args.numbering)
    except BookError as e:
        print(f"render_book: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
