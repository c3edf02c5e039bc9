"""Stale-number check: every number a chapter's prose states must come from that chapter's execution.

Measured values typed into markdown go stale the day a model retrains. This tool reads executed chapters
(`_build/executed/*.ipynb`, written by `make test`'s nbval run or by `tools/execute_book.py`; or the paths given)
and fails when a markdown cell states a number that the chapter neither printed nor chose in its code.

The heuristic, in order (documented here, tested in `tests/test_check_numbers.py`):

1. **What counts as a stated number.** In each markdown cell, after removing inline code (`` `…` ``), links'
   targets, HTML comments, citations (`[@key, Eq. 4]`), and references such as "Eq. 12", "Eqs. 6–7",
   "Algorithm 2", "§3.2", "Table 1", "Theorem 1", "App. B", "chapter 04", "chapters 09–12": every decimal
   (`0.53`, `3.009`), every integer ≥ 10 (`1437`, `1,437`, `4 000`, `200\\,000`), every power of ten or
   scientific number (`10^{-4}`, `3\\cdot 10^{-5}`, `2×10⁻³`, `1e-5`, `10⁻⁴`), and percentages (`85 %`). Integers
   1900–2029 are read as years and skipped. Digits glued to a letter or underscore (`float32`, `x_1`, `\\log_2`,
   `H200`) are not numbers; nor are shapes (`8×8`, `28×28`), a table row's number label (`| 10 [SDEs](…)`, the
   index's map), a parenthesised list of two-digit chapter numbers (`(03, 04, 11)`) or a software version after
   its name (`diffusers 0.42`, `Python 3.11`). Cells from an `## Exercises` heading to the next level-2 heading are skipped:
   exercises propose parameters, they report no results.
2. **Where it may come from.** A stated number passes when it equals, at the precision it is written with,
   a number in any output of the chapter (`text/plain`, `stream`, `text/markdown`) — e.g. "0.53" matches a
   printed 0.5312, "10^{-5}" a printed 1.2e-05, "1,438" a printed 1438 — or when it is a literal constant of
   the chapter's code cells (a tolerance, a sample size: the chapter *chose* it, so it cannot go stale).
   Comments and strings do not count as code literals, nor do the arguments of `by_scale(…)` (the SMALL/FULL
   sizes: prose must not state one scale's value as if it held for both). A percentage p % also matches p/100.
3. **Paper constants** the chapter quotes without using them in code go in `PAPER_CONSTANTS` below (per
   chapter, or under `"*"` for all), or are declared in the cell itself with an HTML comment
   `<!-- paper-constants: 3.17 9.46 -->`, which the rendered page does not show. Declare only numbers read off a
   paper, never measured ones.

Exit status 1 when any chapter has an offender; each is printed as `chapter  cell N  number  «context»`.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ROOT / "_build" / "executed"

# Constants quoted from papers (not measured here). Keys: notebook stem, or "*" for every chapter.
PAPER_CONSTANTS: dict[str, set[float]] = {
    "*": {1e-4, 0.02, 1000, 0.008, 0.999, 255, 256},  # Ho et al.'s linear β_1, β_T, T; the cosine s, max β; 8-bit levels
}

_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")


def _superscripts(text: str) -> str:
    "10⁻⁴ → 10^{-4}"
    return re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+", lambda m: "^{" + m.group(0).translate(_SUPERSCRIPT) + "}", text)

# ---------------------------------------------------------------------------------------------- prose numbers
_REMOVE = [
    re.compile(r"<!--.*?-->", re.S),  # HTML comments (markers are read before this)
    re.compile(r"`[^`]*`"),  # inline code
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"https?://\S+"),
    re.compile(r"\[-?@[^\]]*\]"),  # citations [@key, Eq. 4]
    re.compile(r"(?<![\w])@[\w:.-]+"),  # bare @key / cross-references @eq-x
    re.compile(r"(?i)\b(?:eqs?|equations?|algorithms?|alg|tables?|tab|theorems?|thm|props?|propositions?|lemmas?|"
               r"sections?|sec|secs|figs?|figures?|appendix|app|chapters?|ch|cells?|steps? of algorithm|issue|"
               r"arxiv)\.?(?:\s|~|\\,)*(?:[A-Z]?\d+(?:\.\d+)*[a-z]?(?:\s*(?:[-–—,]|and|to|or|&)\s*)?)+"),
    re.compile(r"§\s*\d+(?:\.\d+)*(?:\s*[-–]\s*\d+(?:\.\d+)*)?"),
    re.compile(r"\{#[^}]*\}"),  # {#eq-label}
    re.compile(r"(?i)\b(?:diffusers|torch|pytorch|python|numpy|scipy|nbdev|jupytext|nbval|pytest|quarto|pandoc|katex|"
               r"cuda|chromium|version|v)[ \t]*\d+(?:\.\d+)+"),  # software versions: diffusers 0.42, Python 3.11
    re.compile(r"\d+\s*(?:×|\\times|x)\s*\d+(?:\s*(?:×|\\times|x)\s*\d+)*(?![\w.])"),  # shapes: 8×8, 28×28
    re.compile(r"(?m)(?<=\|)[ \t]*\d{1,2}(?=[ \t]+[A-Z\[])"),  # a table row's number label: "| 10 [SDEs](…)"
    re.compile(r"\((?:\d{2}(?:\s*[,–-]\s*|\s+and\s+)?)+\)"),  # chapter lists with leading zeros: (03, 04, 11)
]
_POW = re.compile(r"(?:(?P<m>\d+(?:\.\d+)?)\s*(?:\\cdot|\\times|×|·|\*)\s*)?10\s*\^\s*\{?\s*(?P<e>[-−+]?\s*\d+)\s*\}?")
_SCI = re.compile(r"(?<![\w.])(?P<m>\d+(?:\.\d+)?)[eE](?P<e>[-+]?\d+)(?![\w])")
_NUM = re.compile(r"(?<![\w.\\^_{])(?P<n>\d{1,3}(?:(?:,|\\,|\s|\u202f|\u2009)\d{3})+(?:\.\d+)?|\d+\.\d+|\d+)"
                  r"(?![\w]|\.\d)(?P<pct>\s*(?:\\?%|percent))?")


def _dec_places(s: str) -> int:
    return len(s.split(".")[1]) if "." in s else 0


def prose_numbers(md: str) -> list[tuple[str, float, dict]]:
    "Numbers stated in one markdown cell: (text, value, info), info = {'places'|'sig': precision, 'pct', 'ctx'}."
    for rx in _REMOVE:
        md = rx.sub(" ", md)
    md = _superscripts(md).replace("−", "-")
    out = []

    def pow_sub(m):
        e = int(m.group("e").replace(" ", "").replace("−", "-"))
        mant = m.group("m")
        val = (float(mant) if mant else 1.0) * 10.0 ** e
        sig = len(mant.replace(".", "").lstrip("0")) if mant else 1
        out.append((m.group(0).strip(), val, {"sig": max(sig, 1), "pct": False, "at": m.start()}))
        return " "

    md = _POW.sub(pow_sub, md)

    def sci_sub(m):
        mant = m.group("m")
        out.append((m.group(0), float(mant) * 10.0 ** int(m.group("e")),
                    {"sig": max(len(mant.replace(".", "").lstrip("0")), 1), "pct": False, "at": m.start()}))
        return " "

    md = _SCI.sub(sci_sub, md)
    md = re.sub(r"[_^]\{[^{}]*\}", " ", md)  # sub/superscripts (x_{t-1}, 2^{-24}): indices, not statements
    for m in _NUM.finditer(md):
        raw = m.group("n")
        clean = re.sub(r"(?:,|\\,|\s|\u202f|\u2009)", "", raw)
        val = float(clean)
        is_dec = "." in clean
        pct = bool(m.group("pct"))
        if not is_dec and not pct and val < 10:
            continue
        if not is_dec and not pct and 1900 <= val <= 2029 and clean == raw:
            continue  # a year
        out.append((raw, val, {"places": _dec_places(clean), "pct": pct, "at": m.start()}))
    for _, _, info in out:  # a little of the cleaned text around each number, for the report
        k = info.pop("at")
        info["ctx"] = " ".join(md[max(0, k - 50):k + 40].split())
    return out


# --------------------------------------------------------------------------------------------- output numbers
_OUT_NUM = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_OUT_THOUSANDS = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def output_numbers(text: str) -> set[float]:
    "Every number printed in an output text (plain, with thousands separators, scientific)."
    text = _superscripts(text).replace("−", "-")
    vals = set()
    for m in _OUT_NUM.finditer(text):
        try:
            vals.add(abs(float(m.group(0))))
        except ValueError:
            pass
    for m in _OUT_THOUSANDS.finditer(text):
        vals.add(float(m.group(0).replace(",", "")))
    for m in _POW.finditer(text):  # rendered Markdown may print 10^{-5}
        mant = m.group("m")
        vals.add((float(mant) if mant else 1.0) * 10.0 ** int(m.group("e").replace(" ", "").replace("−", "-")))
    return vals


def _output_texts(cell) -> list[str]:
    texts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            texts.append(_joined(o.get("text", "")))
        elif o.get("output_type") in ("execute_result", "display_data"):
            data = o.get("data", {})
            for mime in ("text/plain", "text/markdown"):
                if mime in data:
                    texts.append(_joined(data[mime]))
    return texts


def _joined(v) -> str:
    return "".join(v) if isinstance(v, list) else str(v)


# ----------------------------------------------------------------------------------------------- code literals
def code_literals(src: str) -> set[float]:
    "Numeric literals of a code cell, without comments, strings, or the arguments of by_scale(…)."
    lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
    vals, depth, skipping = set(), 0, False
    try:
        toks = list(tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return {abs(float(m)) for m in re.findall(r"(?<![\w.])\d+\.?\d*(?:[eE][-+]?\d+)?", src)}
    prev = None
    for tok in toks:
        if tok.type == tokenize.OP and tok.string == "(" and prev is not None and prev.string == "by_scale":
            skipping, depth = True, 0
        if skipping:
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                if depth == 0:
                    skipping = False
        elif tok.type == tokenize.NUMBER:
            try:
                v = float(tok.string.replace("_", "").rstrip("jJ"))
            except ValueError:
                v = None
            if v is not None:
                vals.add(abs(v))
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok
    return vals


# ----------------------------------------------------------------------------------------------------- matching
def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300)


def _matches(value: float, info: dict, outputs: set[float]) -> bool:
    "A printed number that, written at the prose's precision, is the prose's number."
    for o in outputs:
        if "sig" in info:
            if o > 0 and value > 0 and _close(float(f"{o:.{info['sig'] - 1}e}"), value):
                return True
        elif _close(round(o, info["places"]), value):
            return True
    return False


def _declared(md: str) -> set[float]:
    vals = set()
    for m in re.finditer(r"<!--\s*paper-constants:(.*?)-->", md, re.S):
        for tok in m.group(1).replace(",", " ").split():
            try:
                vals.add(float(tok))
            except ValueError:
                pass
    return vals


def check_notebook(path: Path | str, constants: dict[str, set[float]] | None = None) -> list[tuple[int, str, str]]:
    "Offenders of one executed notebook: (cell index, number as written, context)."
    constants = PAPER_CONSTANTS if constants is None else constants
    nb = json.loads(Path(path).read_text())
    cells = nb["cells"]
    outputs, literals = set(), set()
    for c in cells:
        if c["cell_type"] == "code":
            for text in _output_texts(c):
                outputs |= output_numbers(text)
            literals |= code_literals(_joined(c["source"]))
    allowed = literals | constants.get("*", set()) | constants.get(Path(path).stem, set())
    bad, in_exercises = [], False
    for i, c in enumerate(cells):
        if c["cell_type"] != "markdown":
            continue
        md, kept = _joined(c["source"]), []
        parts = re.split(r"(?m)^(#{1,2}[ \t]+.*)$", md)  # [text, heading, text, heading, text, …]
        for j, part in enumerate(parts):
            if j % 2 == 1:
                in_exercises = part.lstrip("#").strip().lower().startswith("exercise")
            if not in_exercises:
                kept.append(part)
        md = "".join(kept)
        ok_here = allowed | _declared(md)
        for text, value, info in prose_numbers(md):
            candidates = [value] + ([value / 100] if info.get("pct") else [])
            if any(any(_close(v, a) for a in ok_here) for v in candidates):
                continue
            if any(_matches(v, info if v == value else {"places": info.get("places", 0) + 2}, outputs)
                   for v in candidates):
                continue
            bad.append((i, text, info["ctx"]))
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="executed notebooks (default: _build/executed/*.ipynb)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.paths] or sorted(EXECUTED.glob("*.ipynb"))
    if not paths:
        print(f"no executed chapters found in {EXECUTED} (run the chapters first)", file=sys.stderr)
        return 1
    n_bad = 0
    for p in paths:
        bad = check_notebook(p)
        n_bad += len(bad)
        status = "ok" if not bad else f"{len(bad)} number(s) not found in any output or code literal"
        print(f"{p.name:32s} {status}")
        for i, text, ctx in bad:
            print(f"    cell {i:3d}  {text!r:14s} «{ctx}»")
    print(f"check_numbers: {len(paths)} chapter(s), {n_bad} stale or unsourced number(s)")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
