"""Render the book offline with pandoc: executed notebooks -> a static, navigable HTML site in `_book/`.

Quarto is pandoc plus filters and templates; Quarto itself cannot be installed on the project's
machines, pandoc can (`pip install pypandoc-binary==1.17`, pandoc 3.9). This script reads the chapter
list of `_quarto.yml` (so `quarto render` still works where Quarto exists) and does, for every page:

1. notebook -> pandoc markdown (Quarto's dialect): markdown cells as they are; code cells after their
   `#|` directives (nbdev's `hide`, `export` & co. stripped from shown code; Quarto's `echo`, `include`,
   `output`, `code-fold`, `code-summary`, `label`, `fig-cap`) as pygments-highlighted raw HTML, figures
   written to `figures/<stem>-N.png`, `text/markdown` outputs as markdown (so `Markdown(f"…")` may cite);
2. `pandoc -f markdown -t json`, then `tools/book_filter.py` on the JSON (numbers `{#eq-…}` equations,
   `{#fig-…}` figures and sections per chapter, resolves `@eq-/@fig-/@sec-` across chapters), **before**
3. `pandoc -f json -t html --citeproc --bibliography=nbs/references.bib --katex --toc` (a References
   section at the end of each chapter that cites; math left as `span.math` for the vendored KaTeX).

It adds a bibliography page, an API reference (signature + docments table of every name in every
module's `__all__`, with an index linking each name to the chapter cell that defines it), a search index
(`search-index.js`, loaded as a script so search works from file://, with a vendored MiniSearch), the
executed notebooks for download, and `book.json`, the manifest `tools/check_book.py` checks.

Usage:
    python tools/render_book.py --src _build/executed --out _book [--config _quarto.yml]
"""

from __future__ import annotations

import argparse
import ast
import base64
import html
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import nbformat
import yaml
from markupsafe import Markup
from nbconvert.filters.ansi import ansi2html
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
import book_filter  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "book_assets"
GENERATOR = "tools/render_book.py (pandoc)"
FOOTER = "Rendered offline by tools/render_book.py with pandoc from executed notebooks"
MIME_ORDER = ("text/html", "image/svg+xml", "image/png", "image/jpeg", "image/gif",
              "text/markdown", "text/latex", "text/plain")
_TQDM = re.compile(r"(\d{1,3}%\|.*\||\d+(\.\d+)?(it/s|s/it)\]|\|\s*\d+/\d+\s*\[)")
_TQDM_WARN = re.compile(r"TqdmWarning: IProgress not found|^\s*from \.autonotebook import tqdm as notebook_tqdm\s*$")
_DIRECTIVE = re.compile(r"^\s*#\|\s?(.*)$")
_EXPORT = {"export", "exports", "exporti", "exec_doc"}
CODE = HtmlFormatter(cssclass="highlight")
LEXER = get_lexer_by_name("ipython3")


class BookError(RuntimeError):
    """A failure with a message meant for the person running the build."""


def pandoc_path() -> str:
    try:
        import pypandoc
        return pypandoc.get_pandoc_path()
    except (ImportError, OSError):
        if shutil.which("pandoc"):
            return shutil.which("pandoc")
        raise BookError("pandoc not found: `pip install pypandoc-binary==1.17` (tools/setup_env.sh does)") from None


def _join(data: Any) -> str:
    return "".join(data) if isinstance(data, list) else str(data)


def _truthy(v: Any) -> bool:
    return v.strip().lower() not in ("false", "no", "0", "off", "") if isinstance(v, str) else bool(v)


def parse_directives(source: str) -> tuple[dict[str, Any], str]:
    """Split leading `#| key: value` lines off a code cell: (directives, remaining code).
    Bare words (`#| hide`) map to True, `#| default_exp mod` to "mod", values are YAML; `#| hide_line` lines go."""
    lines = source.splitlines()
    d: dict[str, Any] = {}
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if m:
            km = re.match(r"^([\w-]+)\s*(?::\s*(.*)|\s+(.*))?$", m.group(1).strip())
            if km:
                val: Any = True
                if km.group(2) is not None and km.group(2).strip():
                    try:
                        val = yaml.safe_load(km.group(2))
                    except yaml.YAMLError:
                        val = km.group(2).strip()
                elif km.group(3) is not None:
                    val = km.group(3).strip()
                d[km.group(1)] = val
        elif lines[i].strip() or d:
            break
        i += 1
    code = [ln for ln in lines[i:] if not re.search(r"#\|\s*hide_line\s*$", ln)]
    return d, "\n".join(code).strip("\n")


def _collapse_cr(text: str) -> str:
    """Emulate a terminal's carriage return (progress bars): keep what the last `\\r` left on each line."""
    text = text.replace("\r\n", "\n")
    return "\n".join(([p for p in ln.split("\r") if p] or [""])[-1] for ln in text.split("\n")) if "\r" in text else text


def raw(htm: str) -> str:
    """A pandoc raw HTML block (fence longer than any backtick run inside)."""
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", htm)), default=0))
    return f"{fence}{{=html}}\n{htm}\n{fence}"


def defined_names(code: str) -> list[str]:
    """Top-level names a code cell defines (def, class, assignment)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return names


# --------------------------------------------------------------------------------------------------
# Notebook -> pandoc markdown
# --------------------------------------------------------------------------------------------------

@dataclass
class Page:
    source: str                 # as listed in _quarto.yml, or "" for generated pages
    stem: str
    out_name: str
    number: str | None = None
    markdown: str = ""
    module: str | None = None   # #| default_exp
    defines: dict = field(default_factory=dict)  # exported name -> anchor id
    n_figures: int = 0
    n_images: int = 0
    n_errors: int = 0
    notebook: str | None = None
    title_html: str = ""
    title_text: str = ""
    toc_html: str = ""
    body_html: str = ""
    sections: list = field(default_factory=list)
    missing_refs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    unnumbered: bool = False


class Converter:
    """Turns one executed notebook into pandoc markdown, writing its figures."""

    def __init__(self, page: Page, out: Path):
        self.page, self.out = page, out

    def figure_file(self, data: bytes, ext: str) -> str:
        self.page.n_figures += 1
        rel = f"figures/{self.page.stem}-{self.page.n_figures}.{ext}"
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.out / rel).write_bytes(data)
        return rel

    def output(self, o: dict, asis: bool) -> str:
        kind = o.get("output_type")
        if kind == "stream":
            name, text = o.get("name", "stdout"), _collapse_cr(_join(o.get("text", "")))
            if name == "stderr":  # drop tqdm progress bars, keep real warnings
                text = "\n".join(ln for ln in text.split("\n") if not (_TQDM.search(ln) or _TQDM_WARN.search(ln)))
            if not text.strip():
                return ""
            if asis and name == "stdout":
                return f"::: {{.cell-output .cell-output-asis}}\n{text}\n:::"
            return raw(f'<div class="cell-output cell-output-{name}"><pre>{ansi2html(text.rstrip())}</pre></div>')
        if kind == "error":
            self.page.n_errors += 1
            head = f'<strong>{html.escape(o.get("ename", "Error"))}</strong>: {html.escape(o.get("evalue", ""))}'
            tb = ansi2html("\n".join(o.get("traceback", [])))
            return raw(f'<div class="cell-output cell-output-error"><pre>{head}</pre>'
                       f'<details><summary>Traceback</summary><pre>{tb}</pre></details></div>')
        data = o.get("data", {}) if kind in ("execute_result", "display_data") else {}
        mime = next((m for m in MIME_ORDER if m in data), None)
        if mime is None or "application/vnd.jupyter.widget-view+json" in data:
            return ""
        body = _join(data[mime])
        if mime.startswith("image/"):
            ext = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/svg+xml": "svg"}[mime]
            src = self.figure_file(body.encode() if ext == "svg" else base64.b64decode(body), ext)
            self.page.n_images += 1
            meta = (o.get("metadata", {}) or {}).get(mime, {})
            size = "".join(f' {k}="{int(meta[k])}"' for k in ("width", "height")
                           if isinstance(meta, dict) and isinstance(meta.get(k), (int, float)))
            return raw(f'<img src="{src}" alt="Figure {self.page.n_figures} of {self.page.stem}"{size}>')
        if mime == "text/markdown":
            return f"::: {{.cell-output .cell-output-display .output-markdown}}\n{body}\n:::"
        cls = {"text/html": "output-html", "text/latex": "output-latex"}.get(mime, "")
        inner = body if mime == "text/html" else (html.escape(body, quote=False) if cls else f"<pre>{ansi2html(body)}</pre>")
        return raw(f'<div class="cell-output cell-output-display {cls}">{inner}</div>')

    def code_cell(self, cell: dict) -> str:
        d, code = parse_directives(_join(cell.get("source", "")))
        if isinstance(d.get("default_exp"), str):
            self.page.module = d["default_exp"]
        if _truthy(d.get("hide", False)) or not _truthy(d.get("include", True)):
            return ""
        anchors = ""
        if _EXPORT & set(d):
            new = [n for n in defined_names(code) if not n.startswith("_") and n not in self.page.defines]
            self.page.defines.update({n: f"def-{n}" for n in new})
            anchors = "".join(f'<span id="def-{n}" class="def-anchor"></span>' for n in new)
        parts = [raw(anchors)] if anchors else []
        if _truthy(d.get("echo", True)) and code.strip():
            code_html = highlight(code, LEXER, CODE)
            fold = d.get("code-fold")
            if fold is not None and _truthy(fold):
                summary = html.escape(str(d.get("code-summary", "Show the code")))
                code_html = (f'<details class="code-fold"{" open" if str(fold).lower() == "show" else ""}>'
                             f"<summary>{summary}</summary>{code_html}</details>")
            parts.append(raw(f'<div class="cell-code">{code_html}</div>'))
        show = d.get("output", True)
        outs: list[str] = []
        if _truthy(show):
            merged: list = []
            for o in cell.get("outputs", []):
                if (o.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                        and merged[-1].get("name") == o.get("name")):
                    merged[-1] = dict(merged[-1], text=_join(merged[-1]["text"]) + _join(o.get("text", "")))
                else:
                    merged.append(o)
            outs = [h for h in (self.output(o, str(show).lower() == "asis") for o in merged) if h]
        label = str(d.get("label", "") or "")
        cap = d.get("fig-cap")
        cap = " ".join(str(cap[0] if isinstance(cap, list) and cap else cap).split()) if cap else ""
        if cap or label.startswith("fig-"):  # the cell's images (and caption) become one pandoc figure
            imgs = [k for k, h in enumerate(outs) if h.startswith("```") and "<img " in h]
            if imgs:
                k = imgs[0]
                ident = f"#{label} " if label.startswith("fig-") else ""
                fig = "\n\n".join(outs[k:imgs[-1] + 1])
                outs[k:imgs[-1] + 1] = [f"::: {{{ident}.figure .cell-output-display}}\n{fig}\n\n{cap}\n:::"]
            elif label.startswith("fig-"):  # no image (not executed, or it failed): keep the label resolvable
                outs.append(f"::: {{#{label} .figure .cell-output-display}}\n{cap or 'Figure not rendered.'}\n:::")
        if not outs and not parts:
            return ""
        ident = f"#{label} " if label and not label.startswith("fig-") else ""
        return "\n\n".join([f"::: {{{ident}.cell}}", *parts, *outs, ":::"])

    def notebook(self, nb: nbformat.NotebookNode) -> str:
        parts: list[str] = []
        front: dict = {}
        for cell in nb.cells:
            src = _join(cell.get("source", ""))
            if cell.cell_type == "markdown":
                parts.append(src)
            elif cell.cell_type == "code":
                parts.append(self.code_cell(cell))
            elif cell.cell_type == "raw" and not front and not parts and src.startswith("---"):
                front = yaml.safe_load(src.strip().strip("-")) or {}
            elif cell.cell_type == "raw" and (cell.metadata.get("format") or "").lower() in ("text/html", "html"):
                parts.append(raw(src))
        text = "\n\n".join(p for p in parts if p)
        if not re.search(r"^# ", text, re.M) and front.get("title"):  # nbdev front matter instead of `# Title`
            text = f"# {front['title']}\n\n" + (f"> {front['description']}\n\n" if front.get("description") else "") + text
        return text


# --------------------------------------------------------------------------------------------------
# pandoc
# --------------------------------------------------------------------------------------------------

def run_pandoc(args: list[str], stdin: str) -> tuple[str, str]:
    proc = subprocess.run([pandoc_path(), *args], input=stdin, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BookError(f"pandoc {' '.join(args[:4])} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout, proc.stderr


READER = "markdown-implicit_figures+implicit_figures"


def take_title(doc: dict) -> tuple[list, list]:
    """Remove the first level-1 heading from the document; return (its inlines, its classes)."""
    for i, b in enumerate(doc["blocks"]):
        if b["t"] == "Header" and b["c"][0] == 1:
            del doc["blocks"][i]
            return b["c"][2], b["c"][1][1] + ([b["c"][1][0]] if b["c"][1][0] else [])
    return [book_filter.Str("Untitled")], []


def link_rewriter(link_map: dict[str, str]):
    def rewrite(url: str) -> str:
        m = re.match(r"^(?![a-z][a-z0-9+.-]*:|/)(?:[^#?]*/)?([^/#?]+)\.(ipynb|qmd)([#?].*)?$", url, re.I)
        if not m:
            return url
        return link_map.get(m.group(1), f"{m.group(1)}.html") + (m.group(3) or "")
    return rewrite


# --------------------------------------------------------------------------------------------------
# API reference
# --------------------------------------------------------------------------------------------------

def _anno(a: Any) -> str:
    if a is inspect.Parameter.empty or a is None:
        return ""
    return a if isinstance(a, str) else getattr(a, "__name__", str(a))


def api_entry(mod: str, name: str, obj: Any) -> str:
    """Markdown (with raw HTML tables) for one exported name: signature and the docments table."""
    from fastcore.docments import docments
    ident = f"api-{mod.split('.')[-1]}-{name}"
    out = [f"### `{name}` {{#{ident} .unnumbered .api-entry}}"]
    if callable(obj):
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = "(…)"
        kind = "class" if inspect.isclass(obj) else "def"
        params = ",\n    ".join(re.findall(r"(?:[^,()\[\]]|\[[^\]]*\]|\([^)]*\))+", sig[1:sig.rfind(")")])) if len(sig) > 90 else None
        sig = f"(\n    {params.strip()},\n){sig[sig.rfind(')') + 1:]}" if params else sig
        out.append(raw(f'<div class="api-sig">{highlight(f"{kind} {name}{sig}", LEXER, CODE)}</div>'))
        doc = inspect.getdoc(obj) or ""
        if doc:
            out.append(doc.split("\n\n")[0])
        try:
            dm = docments(obj, full=True)
        except Exception:  # noqa: BLE001 - builtins, C extensions
            dm = {}
        rows = [(p, v) for p, v in dm.items() if p not in ("self", "cls")]
        if rows:
            tr = "".join(
                f"<tr><td><code>{html.escape(p if p != 'return' else '→ return')}</code></td>"
                f"<td><code>{html.escape(_anno(v.get('anno')))}</code></td>"
                f"<td>{'' if v.get('default', inspect.Parameter.empty) is inspect.Parameter.empty else '<code>' + html.escape(repr(v['default'])) + '</code>'}</td>"
                f"<td>{html.escape(v.get('docment') or '')}</td></tr>" for p, v in rows)
            out.append(raw('<table class="api-params"><thead><tr><th>Parameter</th><th>Type</th><th>Default</th>'
                           f"<th>Details</th></tr></thead><tbody>{tr}</tbody></table>"))
    else:
        out.append(raw(f'<div class="api-sig">{highlight(f"{name}: {type(obj).__name__}", LEXER, CODE)}</div>'))
    return "\n\n".join(out)


def module_all(path: Path) -> list[str]:
    """`__all__` of a module file, read without importing it ([] when it is not a literal list, e.g. a
    package `__init__` that re-exports the modules' names)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                return list(ast.literal_eval(node.value))
            except ValueError:
                return []
    return []


def api_entries(lib: Path, cache: Path) -> dict[str, list[list[str]]]:
    """{module: [[name, entry markdown], ...]} for every module with an `__all__`. Importing the library (torch)
    is the slow part of a render, so the entries are cached in `cache`, keyed by a hash of the sources."""
    import hashlib
    files = sorted(p for p in lib.rglob("*.py") if p.name != "_modidx.py")  # nbdev rewrites _modidx on every export
    key = hashlib.sha256(b"".join(str(p.relative_to(lib)).encode() + p.read_bytes() for p in files)).hexdigest()
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return data["modules"]
    sys.path.insert(0, str(lib.parent))
    mods: dict[str, list[list[str]]] = {}
    for path in files:
        names = module_all(path)
        if names:
            mod = ".".join(path.relative_to(lib.parent).with_suffix("").parts)
            m = importlib.import_module(mod)
            mods[mod] = [[n, api_entry(mod, n, getattr(m, n, None))] for n in names]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "modules": mods}))
    return mods


def api_page(modules: dict[str, list[list[str]]], pages: list[Page]) -> tuple[str, dict[str, str]]:
    """Markdown of the API reference page and {qualified name: anchor id}."""
    where = {}
    for p in pages:
        for n, anchor in p.defines.items():
            where.setdefault((p.module, n), (p, anchor))
            where.setdefault((None, n), (p, anchor))
    index, body, ids = [], [], {}
    for mod, entries in modules.items():
        short = mod.split(".", 1)[-1]
        body.append(f"## `{mod}` {{#api-{short.replace('.', '-')} .unnumbered}}")
        for name, entry in entries:
            hit = where.get((short, name)) or where.get((short.split(".")[-1], name)) or where.get((None, name))
            defined = (f"{hit[0].number or ''} {hit[0].title_text or hit[0].stem}".strip(),
                       f"{hit[0].out_name}#{hit[1]}") if hit else None
            body.append(entry + (f"\n\n[[defined in {defined[0]}]({defined[1]})]{{.api-defined}}" if defined else ""))
            ident = f"api-{mod.split('.')[-1]}-{name}"
            ids[f"{mod}.{name}"] = ident
            index.append((name, mod, ident, defined))
    rows = "\n".join(f"| [`{n}`](#{i}) | `{m}` | {f'[{d[0]}]({d[1]})' if d else ''} |"
                     for n, m, i, d in sorted(index, key=lambda r: r[0].lower()))
    md = ("# API reference {.unnumbered}\n\n> Every name in every module's `__all__`: signature, parameters "
          "(the docments in the code) and the chapter that defines it.\n\n## Index of exported names {.unnumbered}\n\n"
          f"| Name | Module | Defined in |\n|:--|:--|:--|\n{rows}\n\n" + "\n\n".join(body))
    return md, ids


# --------------------------------------------------------------------------------------------------
# Book
# --------------------------------------------------------------------------------------------------

def load_config(path: Path) -> dict:
    if not path.is_file():
        raise BookError(f"config not found: {path}")
    book = (yaml.safe_load(path.read_text()) or {}).get("book") or {}
    chapters: list[str] = []
    for entry in book.get("chapters") or []:  # Quarto parts: `- part: …\n  chapters: [...]`
        if isinstance(entry, dict):
            chapters += [c if isinstance(c, str) else c.get("href") for c in entry.get("chapters", [])]
        else:
            chapters.append(entry)
    if not chapters:
        raise BookError(f"{path} lists no book.chapters")
    return {"title": str(book.get("title", "Book")), "subtitle": str(book.get("subtitle", "") or ""),
            "chapters": chapters}


def find_executed(src_dir: Path, chapter: str, config_dir: Path) -> Path:
    p = Path(chapter)
    if p.suffix in (".qmd", ".md") and (config_dir / p).is_file():
        return config_dir / p
    for cand in (src_dir / f"{p.stem}.ipynb", src_dir / p):
        if cand.is_file():
            return cand
    raise BookError(f"chapter {chapter}: no executed copy at {src_dir / (p.stem + '.ipynb')}.\n"
                    "  The committed notebooks carry no outputs; run `make book` (it executes them into "
                    f"{src_dir}) before rendering.")


def clean_out(out: Path, config_dir: Path) -> None:
    """Remove what a previous run wrote (pages, figures, site_libs, notebooks, index, manifest) only."""
    if out.resolve() == config_dir or (out / ".git").exists() or (out / "_quarto.yml").exists():
        raise BookError(f"refusing to render into {out}: it looks like a project folder, not an output folder")
    out.mkdir(parents=True, exist_ok=True)
    for p in ("figures", "site_libs"):
        shutil.rmtree(out / p, ignore_errors=True)
    for p in [*out.glob("*.html"), *out.glob("*.ipynb"), out / "book.json", out / "search-index.js"]:
        p.unlink(missing_ok=True)


def write_site_libs(out: Path, katex_dir: Path | None, search_dir: Path | None) -> None:
    libs = out / "site_libs"
    libs.mkdir(parents=True)
    for name in ("book.css", "book.js"):
        shutil.copyfile(ASSETS / name, libs / name)
    (libs / "pygments.css").write_text(HtmlFormatter(style="friendly").get_style_defs(".highlight") + "\n")
    if katex_dir is not None:
        shutil.copytree(katex_dir, libs / "katex", ignore=shutil.ignore_patterns("VENDOR_STAMP"))
    if search_dir is not None:
        shutil.copytree(search_dir, libs / "minisearch", ignore=shutil.ignore_patterns("VENDOR_STAMP"))


def prepare(pg: Page, path: Path, out: Path, first: bool) -> Page:
    """Convert one chapter to markdown (writing its figures) and copy its notebook for download."""
    nb = nbformat.read(str(path), as_version=4) if path.suffix == ".ipynb" else None
    pg.markdown = Converter(pg, out).notebook(nb) if nb is not None else path.read_text()
    m = re.match(r"^(\d+)[_-]", pg.stem)
    pg.number = str(int(m.group(1))) if (m and not first) else None
    if nb is not None:
        shutil.copyfile(path, out / f"{pg.stem}.ipynb")
        pg.notebook = f"{pg.stem}.ipynb"
    return pg


def build(config: Path, src: Path, out: Path, katex_dir: Path | None, search_dir: Path | None = None,
          bibliography: Path | None = None, api: bool = True, lib: Path | None = None, log=print) -> dict:
    """Render the whole book; returns the manifest written to `<out>/book.json`."""
    t0 = time.perf_counter()
    cfg = load_config(config)
    config_dir = config.resolve().parent
    paths = [find_executed(src, c, config_dir) for c in cfg["chapters"]]  # fail before writing anything
    pages = [Page(c, Path(c).stem, "index.html" if i == 0 else f"{Path(c).stem}.html")
             for i, c in enumerate(cfg["chapters"])]
    if len({p.out_name for p in pages}) != len(pages):
        raise BookError("two chapters map to the same page name: " + ", ".join(p.out_name for p in pages))
    bib = bibliography if bibliography is not None else config_dir / "nbs" / "references.bib"
    clean_out(out, config_dir)
    write_site_libs(out, katex_dir, search_dir)

    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as procs:  # pygments is the slow part: use the cores
        pages = list(procs.map(prepare, pages, paths, [out] * len(pages), [i == 0 for i in range(len(pages))]))
    lib = lib or config_dir / "diffusion_book"
    cache = config_dir / "_build" / "api-cache.json"
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        # importing the library for its signatures (torch: seconds) overlaps with pandoc reading the chapters
        entries = pool.submit(api_entries, lib, cache) if api and lib.is_dir() else None
        to_json = lambda pg: json.loads(run_pandoc(["-f", READER, "-t", "json"], pg.markdown)[0])  # noqa: E731
        docs = list(pool.map(to_json, pages))
        api_ids: dict[str, str] = {}
        if entries is not None:
            for pg in pages:  # titles for the "defined in" links
                t = re.search(r"^# (.+?)(\s*\{.*\})?\s*$", pg.markdown, re.M)
                pg.title_text = t.group(1) if t else pg.stem
            md, api_ids = api_page(entries.result(), pages)
            pages.append(Page("", "api", "api.html", markdown=md))
        if bib.is_file():
            pages.append(Page("", "bibliography", "bibliography.html",
                              markdown="---\nnocite: |\n  @*\n---\n\n# Bibliography {.unnumbered}\n\n"
                                       "> Every work in `nbs/references.bib`.\n\n::: {#refs}\n:::\n"))
        docs += list(pool.map(to_json, pages[len(docs):]))
    labels: dict = {}
    titles = []
    for pg, doc in zip(pages, docs):
        title, cls = take_title(doc)
        pg.unnumbered = "unnumbered" in cls
        if pg.unnumbered:
            pg.number = None
        ident = next((c for c in cls if c.startswith("sec-")), None)
        if ident:
            labels[ident] = {"text": f"Chapter {pg.number}" if pg.number else book_filter.stringify(title),
                             "num": pg.number or "", "page": pg.out_name}
        titles.append(title)
        pg.warnings += book_filter.number_labels(doc, pg.number, pg.out_name, labels)
    rewrite = link_rewriter({p.stem: p.out_name for p in pages})
    template = str(ASSETS / "fragment.html")

    def second(args):
        pg, doc, title = args
        pg.missing_refs = book_filter.resolve_refs(doc, pg.out_name, labels, rewrite)
        doc["meta"]["title"] = {"t": "MetaInlines", "c": title}
        doc["meta"]["link-citations"] = {"t": "MetaBool", "c": True}
        if book_filter.has_citations(doc) and pg.stem != "bibliography":
            doc["blocks"] += [{"t": "Header", "c": [2, ["references", ["unnumbered"], []], [book_filter.Str("References")]]},
                              {"t": "Div", "c": [["refs", [], []], []]}]
        pg.sections = book_filter.sections(doc)
        extra = ["--citeproc", f"--bibliography={bib}"] if bib.is_file() else []
        html_out, err = run_pandoc(["-f", "json", "-t", "html5", "--katex", "--toc", f"--toc-depth={2 if pg.stem == 'api' else 3}",
                                    "--wrap=none", "-s", f"--template={template}", *extra], json.dumps(doc))
        pg.warnings += [ln.strip() for ln in err.splitlines() if ln.strip()]
        pg.title_html, pg.toc_html, pg.body_html = (s.strip() for s in html_out.split("<!--split-->"))
        pg.title_text = book_filter.stringify(title)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(second, zip(pages, docs, titles)))

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ASSETS)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    tpl = env.get_template("page.html")
    nav = [{"href": p.out_name, "number": p.number, "title": Markup(p.title_html)} for p in pages]
    for i, pg in enumerate(pages):
        (out / pg.out_name).write_text(tpl.render(
            book_title=cfg["title"], book_subtitle=cfg["subtitle"],
            page_title=f"{pg.title_text} – {cfg['title']}" if i else cfg["title"],
            chapters=[dict(c, current=c["href"] == pg.out_name) for c in nav], number=pg.number,
            title=Markup(pg.title_html), toc=Markup(pg.toc_html), body=Markup(pg.body_html),
            prev=nav[i - 1] if i else None, next=nav[i + 1] if i + 1 < len(nav) else None,
            katex=katex_dir is not None, search=search_dir is not None, notebook=pg.notebook,
            footer=FOOTER, source=pg.source or "generated", generator=GENERATOR), encoding="utf-8")
    docs_index = [{"id": k, "page": pg.out_name, "url": f"{pg.out_name}#{s['id']}" if s["id"] else pg.out_name,
                   "chapter": (f"{pg.number} " if pg.number else "") + pg.title_text,
                   "title": s["title"] or pg.title_text, "text": s["text"][:20000]}
                  for k, (pg, s) in enumerate((pg, s) for pg in pages for s in pg.sections)]
    (out / "search-index.js").write_text("window.BOOK_SEARCH_DOCS = " + json.dumps(docs_index, ensure_ascii=False)
                                         + ";\n", encoding="utf-8")
    cite_warn = [f"{p.out_name}: {w}" for p in pages for w in p.warnings if "citation" in w.lower()]
    manifest = {
        "generator": GENERATOR, "title": cfg["title"], "subtitle": cfg["subtitle"], "katex": katex_dir is not None,
        "search": "search-index.js" if search_dir is not None else None,
        "api": {"page": "api.html", "ids": api_ids} if api_ids else None,
        "chapters": [{"source": p.source, "file": p.out_name, "title": p.title_text, "number": p.number,
                      "notebook": p.notebook, "sections": len([s for s in p.sections if s["id"]]),
                      "images": p.n_images, "figures": p.n_figures, "errors": p.n_errors,
                      "missing_refs": p.missing_refs, "warnings": p.warnings} for p in pages],
        "labels": len(labels), "citation_warnings": cite_warn,
    }
    (out / "book.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for p in pages:
        for w in p.warnings + [f"unresolved cross-reference @{r}" for r in p.missing_refs]:
            log(f"  warning: {p.out_name}: {w}")
        if p.n_errors:
            log(f"  warning: {p.out_name}: {p.n_errors} cell(s) have error outputs")
    log(f"Rendered {len(pages)} pages ({len(labels)} labels) into {out} in {time.perf_counter() - t0:.2f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("_build/executed"), help="folder of executed notebooks")
    ap.add_argument("--out", type=Path, default=Path("_book"), help="output folder (default _book)")
    ap.add_argument("--config", type=Path, default=Path("_quarto.yml"), help="Quarto book config to read")
    ap.add_argument("--vendor", type=Path, default=None, help="vendored KaTeX/MiniSearch (default _build/vendor)")
    ap.add_argument("--no-katex", action="store_true", help="render without KaTeX (math stays as TeX source)")
    ap.add_argument("--no-api", action="store_true", help="skip the API reference page")
    ap.add_argument("--lib", type=Path, default=None, help="package documented on the API page "
                    "(default: diffusion_book next to the config)")
    args = ap.parse_args(argv)
    vendor = (args.vendor or args.config.resolve().parent / "_build" / "vendor").resolve()
    katex_dir, search_dir = vendor / "katex", vendor / "minisearch"
    if args.no_katex:
        katex_dir = None
    elif not (katex_dir / "katex.min.js").is_file():
        print(f"render_book: error: no KaTeX in {katex_dir}.\n  Run `python tools/vendor_katex.py` once (it fetches "
              "KaTeX and MiniSearch with npm), or pass --no-katex to render math as TeX source.", file=sys.stderr)
        return 1
    if not (search_dir / "minisearch.js").is_file():
        print(f"render_book: note: no MiniSearch in {search_dir} (python tools/vendor_katex.py); no search box")
        search_dir = None
    try:
        build(args.config, args.src, args.out, katex_dir, search_dir, api=not args.no_api, lib=args.lib)
    except BookError as e:
        print(f"render_book: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
