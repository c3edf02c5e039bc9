"""The book's pandoc filter: what Quarto's crossref filter does for this book, on pandoc's JSON AST.

It runs in `tools/render_book.py` between `pandoc -f markdown -t json` and `pandoc -f json --citeproc`
(the order matters: pandoc parses `@eq-x` as a citation, so cross-references must become links before
citeproc sees them, or it warns "citation eq-x not found"). Two passes, because references cross chapters:

1. `number_labels(doc, chapter, page, labels)` for every page in book order: a display equation followed by
   `{#eq-…}` becomes a `Span#eq-…` whose TeX carries `\\tag{7.3}` (KaTeX draws the number); a figure with an
   id `fig-…` (a markdown image `![cap](f.png){#fig-…}`, or a `::: {#fig-…}` div whose last paragraph is the
   caption, which is what code cells with `#| label: fig-…` and `#| fig-cap:` become) gets "Figure 7.3: "
   in its caption; headings of numbered chapters get section numbers 7.1, 7.1.1. Every label is recorded
   in `labels` as id -> (reference text, page, number).
2. `resolve_refs(doc, page, labels)`: `@eq-x` → "(7.3)", `@fig-x` → "Figure 7.3", `@sec-x` → "Section 7.1"
   (or "Chapter 7"), each a link (`[-@eq-x]` gives the bare number). Unknown labels become a bold "?@eq-x"
   and are returned, so the build can report them and the checker fails. Other citations stay for citeproc.
"""

from __future__ import annotations

import re
from typing import Any, Callable

XREF_KINDS = ("eq", "fig", "sec")
_EQ_LABEL = re.compile(r"^\{#(eq-[^\s{}]+)\}(.*)$", re.S)
Labels = dict  # id -> {"text": str, "num": str, "page": str}
_TEX_ENV = re.compile(r"^\s*\\begin\{(equation|align|gather|multline|aligned|split|cases|eqnarray)\*?\}")


def _el(t: str, c: Any = None) -> dict:
    return {"t": t} if c is None else {"t": t, "c": c}


def Str(s: str) -> dict:
    return _el("Str", s)


def is_xref(ident: str) -> bool:
    return ident.split("-", 1)[0] in XREF_KINDS and "-" in ident


def walk(x: Any, fn: Callable[[dict], Any]) -> Any:
    """Bottom-up map over a pandoc AST: `fn(node)` returns None (keep), a node, or a list (splice)."""
    if isinstance(x, list):
        out = []
        for item in x:
            item = walk(item, fn)
            if isinstance(item, dict) and "t" in item:
                r = fn(item)
                if r is None:
                    out.append(item)
                elif isinstance(r, list):
                    out.extend(r)
                else:
                    out.append(r)
            else:
                out.append(item)
        return out
    if isinstance(x, dict):
        return {k: walk(v, fn) for k, v in x.items()}
    return x


def stringify(x: Any) -> str:
    """Plain text of an AST fragment (math as its TeX, raw HTML without tags)."""
    parts: list[str] = []
    if isinstance(x, dict) and "blocks" in x:
        x = x["blocks"]

    def go(y: Any) -> None:
        if isinstance(y, list):
            for z in y:
                go(z)
        elif isinstance(y, dict):
            t, c = y.get("t"), y.get("c")
            if t == "Str":
                parts.append(c)
            elif t in ("Space", "SoftBreak", "LineBreak"):
                parts.append(" ")
            elif t in ("Code", "Math"):
                parts.append(c[1])
            elif t == "CodeBlock":
                parts.append(c[1] + "\n")
            elif t in ("RawBlock", "RawInline"):
                parts.append(" " + re.sub(r"<[^>]+>", " ", c[1]) + " ")
            elif t in ("Para", "Plain", "Header"):
                go(c)
                parts.append("\n")
            elif c is not None:
                go(c)

    go(x)
    return re.sub(r"[ \t]+", " ", "".join(parts)).strip()


def _callout(classes: list[str]) -> str | None:
    """The kind of a Quarto callout div (`::: {.callout-note}`) not yet converted, else None."""
    if "callout" in classes:
        return None
    return next((m.group(1) for m in map(re.compile(r"^callout-(note|tip|warning|caution|important)$").match, classes)
                 if m), None)


def _tagged(math: dict, number: str) -> dict:
    tex = math["c"][1].rstrip()
    return _el("Math", [math["c"][0], f"{tex}\n\\tag{{{number}}}"])


def number_labels(doc: dict, chapter: str | None, page: str, labels: Labels,
                  number_sections: bool = True) -> list[str]:
    """Pass 1 on one page (see the module docstring). Returns duplicate-label problems."""
    prefix = f"{chapter}." if chapter else ""
    count = {"eq": 0, "fig": 0}
    sec = [0, 0, 0, 0, 0, 0, 0]
    problems: list[str] = []

    def record(ident: str, text: str, num: str) -> None:
        if ident in labels:
            problems.append(f"label {ident} defined twice ({labels[ident]['page']} and {page})")
        labels[ident] = {"text": text, "num": num, "page": page}

    def inlines(xs: list) -> list:
        out: list = []
        i = 0
        while i < len(xs):
            x = xs[i]
            if x.get("t") == "Math" and x["c"][0]["t"] == "DisplayMath":
                j = i + 1
                while j < len(xs) and xs[j].get("t") in ("Space", "SoftBreak"):
                    j += 1
                m = _EQ_LABEL.match(xs[j]["c"]) if j < len(xs) and xs[j].get("t") == "Str" else None
                if m:
                    count["eq"] += 1
                    num = f"{prefix}{count['eq']}"
                    record(m.group(1), f"({num})", num)
                    out.append(_el("Span", [[m.group(1), ["equation"], []], [_tagged(x, num)]]))
                    if m.group(2):
                        out.append(Str(m.group(2)))
                    i = j + 1
                    continue
            out.append(x)
            i += 1
        return out

    def figure(ident: str, caption_blocks: list) -> list:
        count["fig"] += 1
        num = f"{prefix}{count['fig']}"
        record(ident, f"Figure {num}", num)
        head = [_el("Span", [["", ["figure-number"], []], [Str(f"Figure {num}:")]]), _el("Space")]
        if caption_blocks and caption_blocks[0]["t"] in ("Plain", "Para"):
            return [_el("Plain", head + caption_blocks[0]["c"])] + caption_blocks[1:]
        return [_el("Plain", head)] + caption_blocks

    def block(b: dict) -> Any:
        t, c = b["t"], b.get("c")
        if t in ("Para", "Plain"):
            return _el(t, inlines(c))
        if t == "Figure":
            (ident, cls, kv), (short, cap), body = c
            if ident.startswith("fig-"):
                return _el("Figure", [[ident, cls, kv], [short, figure(ident, cap)], body])
        if t == "Div" and _callout(c[0][1]):
            (ident, cls, kv), body = c  # Quarto callout: a title bar from title="…" or a leading heading
            kind = _callout(cls)
            title = [Str(dict(kv).get("title", ""))] if dict(kv).get("title") else []
            if not title and body and body[0]["t"] == "Header":
                title, body = body[0]["c"][2], body[1:]
            head = _el("Div", [["", ["callout-title"], []], [_el("Plain", title or [Str(kind.capitalize())])]])
            return _el("Div", [[ident, ["callout", f"callout-{kind}"], []],
                               [head, _el("Div", [["", ["callout-body"], []], body])]])
        if t == "Div":
            (ident, cls, kv), body = c
            if ident.startswith("fig-") or "figure" in cls:
                cap = body[-1:] if body and body[-1]["t"] == "Para" else []
                rest = body[: len(body) - len(cap)]
                cap = [_el("Plain", cap[0]["c"])] if cap else []
                if ident.startswith("fig-"):
                    cap = figure(ident, cap)
                return _el("Figure", [[ident, [x for x in cls if x != "figure"], kv], [None, cap], rest])
        if t == "Header":
            level, (ident, cls, kv), text = c
            if level == 1:
                if ident.startswith("sec-"):
                    record(ident, f"Chapter {chapter}" if chapter else stringify(text), chapter or "")
                return None
            num = ""
            if number_sections and chapter and "unnumbered" not in cls and level <= 4:
                sec[level - 1] += 1
                sec[level:] = [0] * (len(sec) - level)
                num = ".".join([chapter] + [str(n) for n in sec[1:level]])
                text = [_el("Span", [["", ["header-section-number"], []], [Str(num)]]), _el("Space")] + text
            if ident.startswith("sec-"):
                record(ident, f"Section {num}" if num else stringify(text), num)
            return _el("Header", [level, [ident, cls, kv], text])
        return None

    # one top-down pass over blocks (figures and headers may be nested in divs)
    def blocks(bs: list) -> list:
        out = []
        for b in bs:
            if b.get("t") == "Div" and _callout(b["c"][0][1]):
                b = block(b) or b  # a callout's heading is its title, not a numbered section
            t = b.get("t")
            if t in ("Div", "BlockQuote"):
                b = {"t": t, "c": [b["c"][0], blocks(b["c"][1])] if t == "Div" else blocks(b["c"])}
            elif t == "BulletList":
                b = {"t": t, "c": [blocks(item) for item in b["c"]]}
            elif t == "OrderedList":
                b = {"t": t, "c": [b["c"][0], [blocks(item) for item in b["c"][1]]]}
            r = block(b)
            out.append(b if r is None else r)
        return out

    doc["blocks"] = blocks(doc["blocks"])
    return problems


def resolve_refs(doc: dict, page: str, labels: Labels,
                 rewrite_link: Callable[[str], str] | None = None) -> list[str]:
    """Pass 2: cross-references become links; returns the labels that were not found."""
    missing: list[str] = []

    def ref(cit: dict) -> list:
        ident = cit["citationId"]
        lab = labels.get(ident)
        pre = cit["citationPrefix"] + ([_el("Space")] if cit["citationPrefix"] else [])
        suf = cit["citationSuffix"]
        if lab is None:
            missing.append(ident)
            return pre + [_el("Strong", [Str(f"?@{ident}")])] + suf
        text = lab["num"] if cit["citationMode"]["t"] == "SuppressAuthor" and lab["num"] else lab["text"]
        href = ("" if lab["page"] == page else lab["page"]) + "#" + ident
        return pre + [_el("Link", [["", ["xref"], []], [Str(text)], [href, ""]])] + suf

    def fn(x: dict) -> Any:
        if x["t"] in ("RawInline", "RawBlock") and x["c"][0] in ("tex", "latex") and _TEX_ENV.match(x["c"][1]):
            math = _el("Math", [_el("DisplayMath"), x["c"][1]])  # HTML would drop raw TeX: give it to KaTeX
            return math if x["t"] == "RawInline" else _el("Para", [math])
        if x["t"] == "Cite":
            cits = x["c"][0]
            if not any(is_xref(c["citationId"]) for c in cits):
                return None
            out: list = []
            rest = [c for c in cits if not is_xref(c["citationId"])]
            for k, c in enumerate(c for c in cits if is_xref(c["citationId"])):
                out += ([Str(","), _el("Space")] if k else []) + ref(c)
            if rest:  # a mixed group: keep the real citations for citeproc
                out += [Str(";"), _el("Space"), _el("Cite", [rest, [Str("@" + rest[0]["citationId"])]])]
            return out
        if x["t"] == "Link" and rewrite_link:
            attr, text, (url, title) = x["c"]
            return _el("Link", [attr, text, [rewrite_link(url), title]])
        return None

    doc["blocks"] = walk(doc["blocks"], fn)
    return missing


def has_citations(doc: dict) -> bool:
    found = []
    walk(doc["blocks"], lambda x: found.append(1) if x["t"] == "Cite" else None)
    return bool(found)


def sections(doc: dict) -> list[dict]:
    """Search-index entries: one per heading (level ≤ 3) with the text up to the next one."""
    out: list[dict] = [{"id": "", "title": "", "text": []}]
    for b in doc["blocks"]:
        if b["t"] == "Header" and b["c"][0] <= 3 and b["c"][1][0]:
            out.append({"id": b["c"][1][0], "title": stringify(b["c"][2]), "text": []})
        else:
            out[-1]["text"].append(stringify(b))
    return [dict(s, text=" ".join(s["text"])) for s in out if s["id"] or s["text"]]
