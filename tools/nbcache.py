"""Executed-notebook cache shared by the test command (nbval) and the book build (nbclient).

The committed chapters in `nbs/` carry no outputs. Executing them is the expensive part of both `make test`
and `make book`, so whichever runs first stores each successfully executed notebook in `_build/executed/`,
stamped with a key; the other reuses it while the key still matches. The key covers everything an
execution depends on that we control: the notebook's cells, the generated library (`diffusion_book/**/*.py`)
and the scale switch. Change any of them and the chapter is executed again.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ROOT / "_build" / "executed"
KEY = "diffusion_book_cache_key"


def _library_digest() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "diffusion_book").rglob("*.py")):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def cache_key(nb_path: Path | str) -> str:
    "Key of one chapter: its cells, the library it imports, and the SMALL/FULL scale."
    nb = nbformat.read(str(nb_path), as_version=4)
    h = hashlib.sha256()
    for c in nb.cells:
        h.update(c.cell_type.encode())
        h.update(c.source.encode())
    h.update(_library_digest().encode())
    h.update(os.environ.get("DIFFUSION_BOOK_SCALE", "small").lower().encode())
    return h.hexdigest()


def executed_path(nb_path: Path | str) -> Path:
    return EXECUTED / Path(nb_path).name


def is_fresh(nb_path: Path | str) -> bool:
    "True when `_build/executed/` holds an execution of this exact chapter and library."
    out = executed_path(nb_path)
    if not out.exists():
        return False
    try:
        done = nbformat.read(str(out), as_version=4)
    except Exception:
        return False
    return done.metadata.get(KEY) == cache_key(nb_path)


def store(nb_path: Path | str, executed: nbformat.NotebookNode) -> Path:
    "Write an executed notebook atomically, stamped with the chapter's current key."
    executed.metadata[KEY] = cache_key(nb_path)
    out = executed_path(nb_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".ipynb.tmp")
    nbformat.write(executed, str(tmp))
    os.replace(tmp, out)
    return out
