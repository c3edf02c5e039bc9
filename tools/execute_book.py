"""Execute every chapter listed in `_quarto.yml` into `_build/executed/` (skipping fresh cached ones).

Used by `make book`. `make test` executes the chapters with nbval instead and fills the same cache
(`nbs/conftest.py`), so a book rendered after the tests executes nothing again.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbcache  # noqa: E402

ROOT = nbcache.ROOT


def chapters(config: Path = ROOT / "_quarto.yml") -> list[Path]:
    book = yaml.safe_load(config.read_text())["book"]
    return [ROOT / c for c in book["chapters"]]


def execute(nb_path: Path, timeout: int = 1800) -> float:
    t0 = time.time()
    nb = nbformat.read(str(nb_path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(nb_path.parent)}})
    client.execute()
    nbcache.store(nb_path, nb)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--force", action="store_true", help="execute even when the cache is fresh")
    args = ap.parse_args(argv)
    total = time.time()
    for nb in chapters():
        if not args.force and nbcache.is_fresh(nb):
            print(f"  cached    {nb.name}")
            continue
        print(f"  executing {nb.name} ...", flush=True)
        try:
            dt = execute(nb)
        except Exception as e:  # nbclient raises CellExecutionError with the traceback
            print(f"FAILED: {nb.name}\n{e}", file=sys.stderr)
            return 1
        print(f"  executed  {nb.name} in {dt:.1f} s", flush=True)
    print(f"executed chapters in {time.time() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
