"""Tests for the offline book renderer (tools/render_book.py) and its browser check (tools/check_book.py).

A tiny fake book (a `_quarto.yml` and two notebooks with hand-made outputs) is built in tmp_path, so
these tests need no kernel and no network.  The HTML checks always run; the KaTeX check needs the
vendored copy (`python tools/vendor_katex.py`) and the browser check also needs `chromium`; they are
skipped when those are missing.
"""

import base64
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

REPO = Path(__file__).resolve().parent.parent
KATEX = REPO / "_build" / "vendor" / "katex"


def _load(name):
    """Import tools/<name>.py by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_book_tools_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered while it executes
    spec.loader.exec_module(mod)
    return mod


render_book = _load("render_book")
check_book = _load("check_book")
book_filter = _load("book_filter")


def tiny_png(w=4, h=3):
    """A valid w x h grey PNG, built by hand (no imaging library needed)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes([128] * w) for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


INLINE_MATH = r"$\bar\alpha_t = \prod_{s=1}^t \alpha_s$"
DISPLAY_MATH = "$$\nq(x_t \\mid x_0) = \\mathcal{N}(x_t; \\sqrt{\\bar\\alpha_t}\\, x_0, (1-\\bar\\alpha_t)\\mathbf{I})\n$$"
CASES_MATH = "$$\n\\beta_t = \\begin{cases} a_1 & t<2 \\\\ b_2 & \\text{else} \\end{cases}\n$$"


BIB = """@inproceedings{ho2020denoising,
  title = {Denoising Diffusion Probabilistic Models},
  author = {Ho, Jonathan and Jain, Ajay and Abbeel, Pieter},
  booktitle = {NeurIPS}, year = {2020}, eprint = {2006.11239}, archivePrefix = {arXiv}
}
"""


def make_book(root: Path) -> Path:
    """Write a fake book under `root`; return the path of its _quarto.yml."""
    (root / "nbs").mkdir(parents=True)
    (root / "_build" / "executed").mkdir(parents=True)
    (root / "nbs" / "references.bib").write_text(BIB)
    (root / "_quarto.yml").write_text(
        "project:\n  type: book\n  output-dir: _book\n"
        "book:\n  title: \"Tiny book\"\n  subtitle: \"A test\"\n  chapters:\n"
        "    - nbs/index.ipynb\n    - nbs/02_forward_process.ipynb\n")

    index = new_notebook(cells=[
        new_markdown_cell("# Tiny book\n\n> A book for the tests.\n\n"
                          "Data are $x_0 \\sim q(x_0)$; see [the forward process](02_forward_process.ipynb#sec-closed), "
                          "its closed form @eq-closed, @fig-schedule and @sec-closed."),
        new_code_cell("print('hello from index')",
                      outputs=[new_output("stream", name="stdout", text="hello from index\n")]),
    ])
    png = tiny_png()
    fwd = new_notebook(cells=[
        new_markdown_cell("# The forward process\n\n> Noise, step by step.\n\n## Closed form {#sec-closed}\n\n"
                          f"With {INLINE_MATH} we get\n\n{DISPLAY_MATH} {{#eq-closed}}\n\nand a_b_c, *emphasis*, a price of \\$5.\n\n"
                          f"{CASES_MATH} {{#eq-cases}}\n\nBy @eq-cases and [-@eq-closed], as in [@ho2020denoising, Eq. 4]."),
        new_code_cell("#| default_exp forward"),
        new_code_cell("#| hide\nSECRET_HIDDEN = 1"),
        new_code_cell("#| export\ndef alpha_bar(betas):\n    \"Cumulative product of 1 - beta.\"\n    return betas"),
        new_code_cell("#| export\n#| code-fold: true\ndef _check_betas(betas):\n    return FOLDED_HELPER"),
        new_code_cell("#| echo: false\nprint('ECHO_FALSE_CODE')",
                      outputs=[new_output("stream", name="stdout", text="only the output\n")]),
        new_code_cell("#| output: false\nprint('OUTPUT_FALSE_CODE')",
                      outputs=[new_output("stream", name="stdout", text="OUTPUT_FALSE_TEXT\n")]),
        new_code_cell("#| include: false\nINCLUDE_FALSE = 1"),
        new_markdown_cell("## A figure"),
        new_code_cell("#| label: fig-schedule\n#| fig-cap: \"The schedule $\\\\bar\\\\alpha_t$.\"\nplot()", outputs=[
            new_output("stream", name="stderr", text="\r  0%|          | 0/9 [00:00<?, ?it/s]\r100%|##########| 9/9 [00:00<00:00, 99.1it/s]\n"),
            new_output("display_data", data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}),
        ]),
        new_code_cell("from IPython.display import Markdown", outputs=[new_output(
            "display_data", data={"text/markdown": "Computed: see @fig-schedule [@ho2020denoising].", "text/plain": "md"})]),
        new_code_cell("1/0", outputs=[new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                                 traceback=["ZeroDivisionError: division by zero"])]),
        new_code_cell("x = 2\nx", outputs=[new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]),
    ])
    for nb in (index, fwd):
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    # the committed copies carry no outputs; the renderer must read the executed ones
    for name, nb in (("index", index), ("02_forward_process", fwd)):
        nbformat.write(nb, root / "_build" / "executed" / f"{name}.ipynb")
        bare = nbformat.from_dict(json.loads(nbformat.writes(nb)))
        for c in bare.cells:
            if c.cell_type == "code":
                c.outputs = []
        nbformat.write(bare, root / "nbs" / f"{name}.ipynb")
    return root / "_quarto.yml"


def render(root: Path, *extra: str) -> int:
    return render_book.main(["--config", str(root / "_quarto.yml"), "--src", str(root / "_build" / "executed"),
                             "--out", str(root / "_book"), *extra])


@pytest.fixture(scope="module")
def plain_book(tmp_path_factory):
    """The fake book rendered without KaTeX (pure HTML checks)."""
    root = tmp_path_factory.mktemp("plain")
    make_book(root)
    assert render(root, "--no-katex") == 0
    return root / "_book"


def page(book: Path, name: str) -> str:
    return (book / name).read_text(encoding="utf-8")


def main_of(html: str) -> str:
    return html.split('<main id="content"', 1)[1].split("</main>", 1)[0]


def test_pages_and_manifest(plain_book):
    assert (plain_book / "index.html").is_file() and (plain_book / "02_forward_process.html").is_file()
    manifest = json.loads((plain_book / "book.json").read_text())
    assert [c["file"] for c in manifest["chapters"]] == ["index.html", "02_forward_process.html", "bibliography.html"]
    assert manifest["chapters"][1]["title"] == "The forward process"
    assert manifest["chapters"][1]["number"] == "2"
    assert all(not c["missing_refs"] for c in manifest["chapters"]) and not manifest["citation_warnings"]
    assert (plain_book / "site_libs" / "book.css").is_file() and (plain_book / "site_libs" / "pygments.css").is_file()
    # the executed notebook is offered for download next to its page
    assert (plain_book / "02_forward_process.ipynb").is_file()
    assert 'href="02_forward_process.ipynb" download' in page(plain_book, "02_forward_process.html")


def test_directives(plain_book):
    body = main_of(page(plain_book, "02_forward_process.html"))
    assert "SECRET_HIDDEN" not in body                     # #| hide drops the cell
    assert "#|" not in body and "#| export" not in body    # directive lines are stripped from shown code
    assert "alpha_bar" in body                             # ...but exported code stays visible
    assert "default_exp" not in body
    assert "ECHO_FALSE_CODE" not in body and "only the output" in body   # #| echo: false
    assert "OUTPUT_FALSE_CODE" in body and "OUTPUT_FALSE_TEXT" not in body  # #| output: false
    assert "INCLUDE_FALSE" not in body                     # #| include: false
    assert "In&nbsp;[" not in body and "In [" not in body  # no prompts
    fold = re.search(r'<details class="code-fold"><summary>Show the code</summary>(.*?)</details>', body, re.S)
    assert fold and "FOLDED_HELPER" in fold.group(1) and "alpha_bar" not in fold.group(1)  # #| code-fold: true
    assert 'id="def-alpha_bar"' in body and 'id="def-_check_betas"' not in body  # anchors for exported names


def test_math_is_left_for_katex(plain_book):
    body = main_of(page(plain_book, "02_forward_process.html"))
    assert '<span class="math inline">\\bar\\alpha_t = \\prod_{s=1}^t \\alpha_s</span>' in body
    assert "\\mathcal{N}(x_t; \\sqrt{\\bar\\alpha_t}\\, x_0, (1-\\bar\\alpha_t)\\mathbf{I})" in body
    assert "a_1 &amp; t&lt;2 \\\\ b_2" in body                  # `\\`, `&`, `<` inside math survive
    for math in re.findall(r'<span class="math[^"]*">(.*?)</span>', body, re.S):
        assert "<em>" not in math and "<strong>" not in math, math
    assert "a_b_c" in body and "<em>emphasis</em>" in body and "price of $5" in body


def test_equations_figures_sections_are_numbered(plain_book):
    body = main_of(page(plain_book, "02_forward_process.html"))
    # per-chapter numbers from the file prefix; KaTeX draws \tag{2.1} at the right margin
    assert re.search(r'<span id="eq-closed" class="equation"><span class="math display">[^<]*\\tag\{2\.1\}', body)
    assert re.search(r'<span id="eq-cases" class="equation"><span class="math display">[^<]*\\tag\{2\.2\}', body)
    assert "{#eq-" not in body
    assert re.search(r'<figure id="fig-schedule"[^>]*>.*?<img src="figures/02_forward_process-1.png".*?'
                     r'<figcaption><span class="figure-number">Figure 2\.1:</span> The schedule', body, re.S)
    assert '<span class="header-section-number">2.1</span> Closed form' in body
    assert '<span class="header-section-number">2.2</span> A figure' in body


def test_cross_references_resolve_within_and_across_chapters(plain_book):
    body = main_of(page(plain_book, "02_forward_process.html"))
    assert 'By <a href="#eq-cases" class="xref">(2.2)</a> and <a href="#eq-closed" class="xref">2.1</a>' in body
    assert '<a href="#fig-schedule" class="xref">Figure 2.1</a>' in body      # from a Markdown() output
    idx = main_of(page(plain_book, "index.html"))
    assert '<a href="02_forward_process.html#eq-closed" class="xref">(2.1)</a>' in idx
    assert '<a href="02_forward_process.html#fig-schedule" class="xref">Figure 2.1</a>' in idx
    assert '<a href="02_forward_process.html#sec-closed" class="xref">Section 2.1</a>' in idx
    assert "@eq-" not in idx and "?@" not in idx


def test_citations_and_references(plain_book):
    body = main_of(page(plain_book, "02_forward_process.html"))
    assert re.search(r'\(<a href="#ref-ho2020denoising"[^>]*>Ho et al\. 2020</a>, Eq\. 4\)', body)
    assert 'id="references"' in body and 'id="ref-ho2020denoising"' in body   # a References section at the end
    assert "Denoising Diffusion Probabilistic Models" in body.split('id="references"')[1]
    assert "References" not in main_of(page(plain_book, "index.html"))        # no citations, no section
    bib = main_of(page(plain_book, "bibliography.html"))
    assert 'id="ref-ho2020denoising"' in bib


def test_figure_and_outputs(plain_book):
    body = main_of(page(plain_book, "02_forward_process.html"))
    assert (plain_book / "figures" / "02_forward_process-1.png").read_bytes() == tiny_png()
    assert "it/s" not in body                              # tqdm progress bars on stderr are dropped
    assert "ZeroDivisionError" in body and "division by zero" in body
    assert "<pre>2</pre>" in body


def test_search_index(plain_book):
    text = (plain_book / "search-index.js").read_text()
    docs = json.loads(text.split("=", 1)[1].rstrip().rstrip(";"))
    closed = [d for d in docs if d["url"] == "02_forward_process.html#sec-closed"]
    assert closed and closed[0]["title"] == "2.1 Closed form" and "emphasis" in closed[0]["text"]
    assert check_book.search_term(plain_book, json.loads((plain_book / "book.json").read_text()))[1] in (
        "02_forward_process.html", "index.html", "bibliography.html")


def test_navigation(plain_book):
    idx, fwd = page(plain_book, "index.html"), page(plain_book, "02_forward_process.html")
    for html in (idx, fwd):
        assert 'href="index.html"' in html and 'href="02_forward_process.html"' in html
        assert "Rendered offline by tools/render_book.py" in html
        assert not re.search(r'(<link[^>]*href|src)="(https?:)?//', html)  # nothing loaded from a CDN
    assert re.search(r'<li class="current"><a href="02_forward_process.html"', fwd)
    assert 'class="prev" href="index.html"' in fwd and 'class="next" href="02_forward_process.html"' in idx
    assert 'href="02_forward_process.html#sec-closed"' in idx   # .ipynb links point at the pages
    assert 'href="#sec-closed"' in fwd and 'id="sec-closed"' in fwd  # TOC entry and its anchor
    assert '<span class="chapter-number">2</span>' in fwd


def test_parse_directives():
    d, code = render_book.parse_directives("#| export\n#|hide\n#| fig-cap: \"A $x$\"\n#| echo: false\n"
                                           "#| default_exp core\nx = 1  #| hide_line\ny = 2")
    assert d == {"export": True, "hide": True, "fig-cap": "A $x$", "echo": False, "default_exp": "core"}
    assert code == "y = 2"


# ---- the filter on tiny inputs, without notebooks ------------------------------------------------

def ast_of(md: str) -> dict:
    out = subprocess.run([render_book.pandoc_path(), "-f", render_book.READER, "-t", "json"], input=md,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_filter_numbers_per_chapter_and_reports_unknown_labels():
    a = ast_of("## One\n\n$$a$$ {#eq-a}\n\n$$b$$\n\n- in a list: $$c$$ {#eq-c}, then text.\n\n![cap](f.png){#fig-f}\n")
    b = ast_of("See @eq-a, @eq-c, [-@eq-c], @fig-f and @eq-nope; [@eq-a; @ho2020denoising].")
    labels: dict = {}
    assert book_filter.number_labels(a, "7", "07.html", labels) == []
    assert book_filter.number_labels(b, "8", "08.html", labels) == []
    assert {k: v["text"] for k, v in labels.items()} == {"eq-a": "(7.1)", "eq-c": "(7.2)", "fig-f": "Figure 7.1"}
    assert book_filter.stringify(a["blocks"][0]) == "7.1 One"
    assert "\\tag{7.2}" in json.dumps(a) and ", then text." in book_filter.stringify(a)
    missing = book_filter.resolve_refs(b, "08.html", labels)
    assert missing == ["eq-nope"]
    text = book_filter.stringify(b)
    assert text.startswith("See (7.1), (7.2), 7.2, Figure 7.1 and ?@eq-nope;"), text
    links = []
    book_filter.walk(b["blocks"], lambda x: links.append(x["c"][2][0]) if x["t"] == "Link" else None)
    assert links[:4] == ["07.html#eq-a", "07.html#eq-c", "07.html#eq-c", "07.html#fig-f"]
    cites = []
    book_filter.walk(b["blocks"], lambda x: cites.append(x["c"][0]) if x["t"] == "Cite" else None)
    assert [[c["citationId"] for c in cs] for cs in cites] == [["ho2020denoising"]]  # the real one is left for citeproc
    dup = ast_of("$$x$$ {#eq-a}")
    assert book_filter.number_labels(dup, "9", "09.html", labels) == ["label eq-a defined twice (07.html and 09.html)"]


def test_unresolved_references_and_citations_are_reported(tmp_path):
    make_book(tmp_path)
    nb_path = tmp_path / "_build" / "executed" / "index.ipynb"
    nb = nbformat.read(str(nb_path), as_version=4)
    nb.cells[0].source += " Also @eq-missing and [@nobody2099nothing]."
    nbformat.write(nb, str(nb_path))
    assert render(tmp_path, "--no-katex") == 0
    manifest = json.loads((tmp_path / "_book" / "book.json").read_text())
    assert manifest["chapters"][0]["missing_refs"] == ["eq-missing"]
    assert any("nobody2099nothing" in w for w in manifest["citation_warnings"])


def test_refuses_to_render_into_the_project(tmp_path, capsys):
    make_book(tmp_path)
    assert render_book.main(["--config", str(tmp_path / "_quarto.yml"), "--src", str(tmp_path / "_build" / "executed"),
                             "--out", str(tmp_path), "--no-katex"]) == 1
    assert "refusing" in capsys.readouterr().err
    assert (tmp_path / "_quarto.yml").is_file()


def test_missing_executed_copy_is_a_clear_error(tmp_path, capsys):
    make_book(tmp_path)
    (tmp_path / "_build" / "executed" / "02_forward_process.ipynb").unlink()
    assert render(tmp_path, "--no-katex") == 1
    err = capsys.readouterr().err
    assert "nbs/02_forward_process.ipynb" in err and "make book" in err


def test_missing_katex_is_a_clear_error(tmp_path, capsys):
    make_book(tmp_path)
    assert render(tmp_path, "--vendor", str(tmp_path / "no-katex-here")) == 1
    assert "vendor_katex.py" in capsys.readouterr().err


needs_katex = pytest.mark.skipif(not (KATEX / "katex.min.js").is_file(),
                                 reason="KaTeX not vendored (run: python tools/vendor_katex.py)")
needs_chromium = pytest.mark.skipif(check_book.find_chromium() is None,
                                    reason="chromium not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def katex_book(tmp_path_factory):
    if not (KATEX / "katex.min.js").is_file():
        pytest.skip("KaTeX not vendored (run: python tools/vendor_katex.py)")
    root = tmp_path_factory.mktemp("katex")
    make_book(root)
    assert render(root, "--vendor", str(KATEX.parent)) == 0
    return root / "_book"


@needs_katex
def test_local_katex_is_linked_relatively(katex_book):
    libs = katex_book / "site_libs" / "katex"
    assert (libs / "katex.min.js").is_file() and (libs / "contrib" / "auto-render.min.js").is_file()
    assert any((libs / "fonts").glob("*.woff2"))
    html = page(katex_book, "02_forward_process.html")
    assert '<script src="site_libs/katex/katex.min.js">' in html
    assert '<link rel="stylesheet" href="site_libs/katex/katex.min.css">' in html


@needs_katex
@needs_chromium
def test_browser_check_passes_and_screenshots(katex_book, tmp_path, capsys):
    shot = tmp_path / "shot.png"
    rc = check_book.main([str(katex_book), "--narrow-pages", "1", "--screenshot", str(shot),
                          "--screenshot-page", "02_forward_process.html"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "narrow window: 420 px, 1 pages: PASS" in out and "search: PASS" in out
    assert re.search(r"PASS\s+02_forward_process.html\s+math=(\d+)", out)
    assert int(re.search(r"02_forward_process.html\s+math=(\d+)", out).group(1)) >= 4
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_katex
@needs_chromium
def test_browser_check_catches_problems(katex_book, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(katex_book, bad)
    p = bad / "index.html"
    p.write_text(p.read_text().replace("</main>", "<p>stray $ x_1 $ sign, ?@eq-gone</p>"
                                       "<p><span class=\"math display\">\\[\\frac{1}\\]</span></p>"
                                       "<p><span class=\"math display\">\\[" + "+".join(["x_{%d}" % i for i in range(120)])
                                       + "\\]</span></p><pre class=\"sourceCode\"><code>" + "y = 1 " * 16 + "</code></pre>"
                                       "<img src=\"figures/nope.png\"></main>"))
    assert check_book.main([str(bad), "--narrow-pages", "0", "--width", "600"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  index.html" in out and "raw $" in out and "KaTeX error" in out and "nope.png" in out
    assert "unresolved cross-reference" in out and "display equation scrolls sideways" in out
    assert "code block scrolls sideways" in out


def test_callouts_get_a_title_bar():
    doc = ast_of('::: {.callout-warning title="Careful"}\nText.\n:::\n\n::: {.callout-tip}\n## Tip $x$\nMore.\n:::\n')
    book_filter.number_labels(doc, "3", "03.html", {})
    kinds = [(b["c"][0][1], book_filter.stringify(b["c"][1][0])) for b in doc["blocks"]]
    assert kinds == [(["callout", "callout-warning"], "Careful"), (["callout", "callout-tip"], "Tip x")]
    assert "3.1" not in json.dumps(doc)  # the callout's heading took no section number


def test_api_reference_page(tmp_path):
    """Every `__all__` name gets a signature and a docments table, linked to the cell that defines it."""
    make_book(tmp_path)
    lib = tmp_path / "tinybooklib"
    lib.mkdir()
    (lib / "__init__.py").write_text("")
    (lib / "forward.py").write_text(
        "__all__ = ['alpha_bar', 'SCALE']\nSCALE = 2\n\n"
        "def alpha_bar(betas,  # the variances beta_t\n              eps: float = 1e-3,  # floor\n"
        "              ) -> float:\n    \"Cumulative product of 1 - beta (Ho et al. 2020, Eq. 4).\"\n    return 1.0\n")
    cache = tmp_path / "_build" / "api-cache.json"
    assert render(tmp_path, "--no-katex", "--lib", str(lib)) == 0
    api = main_of(page(tmp_path / "_book", "api.html"))
    assert 'id="api-forward-alpha_bar"' in api and 'id="api-forward-SCALE"' in api
    assert "the variances beta_t" in api and "<code>0.001</code>" in api and "Cumulative product" in api
    assert 'href="02_forward_process.html#def-alpha_bar"' in api      # defined in chapter 2's export cell
    assert 'href="#api-forward-alpha_bar"' in api                      # the index of exported names
    assert cache.is_file()
    manifest = json.loads((tmp_path / "_book" / "book.json").read_text())
    assert check_book.check_api(tmp_path / "_book", manifest, lib) == ([], 2)
    (lib / "forward.py").write_text((lib / "forward.py").read_text().replace("'SCALE']", "'SCALE', 'gamma']"))
    assert check_book.check_api(tmp_path / "_book", manifest, lib)[0] == ["API entry missing for tinybooklib/forward.py: gamma"]


def test_bare_latex_environments_become_math():
    doc = ast_of("Text\n\n\\begin{align}\na &= b\n\\end{align}\n\nand \\begin{equation*}x\\end{equation*} inline.")
    book_filter.resolve_refs(doc, "p.html", {})
    maths = []
    book_filter.walk(doc["blocks"], lambda x: maths.append(x["c"][1]) if x["t"] == "Math" else None)
    assert maths == ["\\begin{align}\na &= b\n\\end{align}", "\\begin{equation*}x\\end{equation*}"]
