"""Fetch a pinned KaTeX into `_build/vendor/katex/` (math) and MiniSearch into `_build/vendor/minisearch/`
(search) so the offline book can typeset math and search from file://.

Why this exists: Quarto (which would normally render the book and pull KaTeX from a CDN) cannot be
installed on the project's machines, and those machines reach package registries only, never a CDN.
`tools/render_book.py` therefore links a *local* KaTeX copy into `_book/site_libs/katex/`.  This
script gets that copy from the npm registry with `npm pack katex@<version>` (no npm project and no
`node_modules` needed), checks the tarball against a pinned sha256, and extracts only what the book
uses from `package/dist/`:

    katex.min.js, katex.min.css, fonts/, contrib/auto-render.min.js   (+ KaTeX's MIT LICENSE)

MiniSearch (`npm pack minisearch@7.2.0`, MIT, also sha256-pinned) is vendored the same way by
`vendor_minisearch()`: `package/dist/umd/index.js` becomes `minisearch.js` (a plain script defining
`window.MiniSearch`, so it loads from file://), plus its LICENSE.txt. Both run by default.

It is idempotent: when `<dest>/katex.min.js` exists and `<dest>/VENDOR_STAMP` names the pinned version
and hash, it does nothing.  `npm pack` also caches the tarball in `~/.npm`, so later runs work offline.

Usage:
    python tools/vendor_katex.py [--dest _build/vendor/katex] [--force] [--tarball katex-0.19.1.tgz]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KATEX_VERSION = "0.19.1"
#: sha256 of the registry tarball `katex-0.19.1.tgz` (computed once from `npm pack katex@0.19.1`).
KATEX_SHA256 = "24da5a599eb2fcede2e270b99a6ff48bca816beecc95feeb84e8cccbd1bb34fd"

MINISEARCH_VERSION = "7.2.0"
#: sha256 of the registry tarball `minisearch-7.2.0.tgz` (computed once from `npm pack minisearch@7.2.0`).
MINISEARCH_SHA256 = "cb3b8126a3ea65d6b387787294f0792b0ea4a40b70f8f37688066a5638e0218a"
MINISEARCH_FILES = {"dist/umd/index.js": "minisearch.js", "LICENSE.txt": "LICENSE.txt"}

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / "_build" / "vendor" / "katex"
STAMP_NAME = "VENDOR_STAMP"

#: Paths inside the tarball's `package/` folder that are copied; a trailing slash means a whole folder.
WANTED = ("dist/katex.min.js", "dist/katex.min.css", "dist/fonts/", "dist/contrib/auto-render.min.js", "LICENSE")


class VendorError(RuntimeError):
    """A failure with a message meant for the person running the build."""


def stamp_text() -> str:
    return f"katex {KATEX_VERSION} sha256 {KATEX_SHA256}\n"


def is_current(dest: Path) -> bool:
    """True when `dest` already holds this pinned KaTeX (so nothing needs doing)."""
    stamp = dest / STAMP_NAME
    return (dest / "katex.min.js").is_file() and stamp.is_file() and stamp.read_text() == stamp_text()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def npm_pack(workdir: Path) -> Path:
    """Run `npm pack katex@VERSION` in `workdir` and return the tarball path."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError(
            "npm was not found on PATH; it is needed once to fetch KaTeX from the npm registry.\n"
            "  Install it with `apt-get install -y npm` (Debian/Ubuntu) or from https://nodejs.org,\n"
            "  or pass --tarball PATH to a katex-%s.tgz you already have." % KATEX_VERSION
        )
    cmd = [npm, "pack", f"katex@{KATEX_VERSION}", "--silent"]
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        raise VendorError(f"`{' '.join(cmd)}` timed out after 300 s (is the npm registry reachable?)") from e
    if proc.returncode != 0:
        raise VendorError(
            f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{proc.stderr.strip() or proc.stdout.strip()}\n"
            "  Check that the npm registry is reachable (`npm ping`), or pass --tarball PATH."
        )
    tarballs = sorted(workdir.glob("katex-*.tgz"))
    if not tarballs:
        raise VendorError(f"`{' '.join(cmd)}` succeeded but wrote no katex-*.tgz in {workdir}")
    return tarballs[0]


def _wanted(rel: str) -> bool:
    return any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in WANTED)


def extract(tarball: Path, dest: Path) -> list[str]:
    """Extract the WANTED files (dist/ prefix dropped) into a fresh `dest`; return the copied paths."""
    staging = Path(tempfile.mkdtemp(prefix=".katex-", dir=dest.parent))
    copied: list[str] = []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.startswith("package/"):
                    continue
                rel = member.name[len("package/"):]
                if not _wanted(rel) or ".." in Path(rel).parts:
                    continue
                out_rel = rel[len("dist/"):] if rel.startswith("dist/") else rel
                target = staging / out_rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f)
                copied.append(out_rel)
        missing = [w for w in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js") if w not in copied]
        if missing or not any(c.startswith("fonts/") for c in copied):
            raise VendorError(f"{tarball.name} lacks expected files: {missing or ['fonts/']}")
        (staging / STAMP_NAME).write_text(stamp_text())
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return sorted(copied)


def vendor(dest: Path = DEFAULT_DEST, force: bool = False, tarball: Path | None = None, quiet: bool = False) -> Path:
    """Make sure `dest` holds the pinned KaTeX; return `dest`.  Raises VendorError on failure."""
    dest = Path(dest).resolve()
    say = (lambda *a: None) if quiet else print
    if not force and is_current(dest):
        say(f"KaTeX {KATEX_VERSION} already vendored in {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="katex-pack-") as tmp:
        tgz = Path(tarball).resolve() if tarball else npm_pack(Path(tmp))
        if not tgz.is_file():
            raise VendorError(f"tarball not found: {tgz}")
        digest = sha256_of(tgz)
        if digest != KATEX_SHA256:
            raise VendorError(
                f"sha256 mismatch for {tgz.name}:\n  expected {KATEX_SHA256}\n  got      {digest}\n"
                "  Refusing to use it. (If KATEX_VERSION was changed on purpose, update KATEX_SHA256 too.)"
            )
        copied = extract(tgz, dest)
    say(f"Vendored KaTeX {KATEX_VERSION} ({len(copied)} files, sha256 verified) into {dest}")
    return dest


def vendor_minisearch(dest: Path = DEFAULT_DEST.parent / "minisearch", force: bool = False,
                      tarball: Path | None = None, quiet: bool = False) -> Path:
    """Make sure `dest` holds the pinned MiniSearch (`minisearch.js`); return `dest`."""
    dest = Path(dest).resolve()
    say = (lambda *a: None) if quiet else print
    stamp = f"minisearch {MINISEARCH_VERSION} sha256 {MINISEARCH_SHA256}\n"
    if not force and (dest / "minisearch.js").is_file() and (dest / STAMP_NAME).is_file() \
            and (dest / STAMP_NAME).read_text() == stamp:
        say(f"MiniSearch {MINISEARCH_VERSION} already vendored in {dest}")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minisearch-pack-") as tmp:
        if tarball is None:
            proc = subprocess.run([shutil.which("npm") or "npm", "pack", f"minisearch@{MINISEARCH_VERSION}", "--silent"],
                                  cwd=tmp, capture_output=True, text=True, timeout=300)
            found = sorted(Path(tmp).glob("minisearch-*.tgz"))
            if proc.returncode != 0 or not found:
                raise VendorError(f"`npm pack minisearch@{MINISEARCH_VERSION}` failed: {proc.stderr.strip()}")
            tarball = found[0]
        digest = sha256_of(Path(tarball))
        if digest != MINISEARCH_SHA256:
            raise VendorError(f"sha256 mismatch for {Path(tarball).name}:\n  expected {MINISEARCH_SHA256}\n  got      {digest}")
        with tarfile.open(tarball, "r:gz") as tar:
            for rel, out_name in MINISEARCH_FILES.items():
                src = tar.extractfile(f"package/{rel}")
                if src is None:
                    raise VendorError(f"{Path(tarball).name} lacks package/{rel}")
                (dest / out_name).write_bytes(src.read())
    (dest / STAMP_NAME).write_text(stamp)
    say(f"Vendored MiniSearch {MINISEARCH_VERSION} (sha256 verified) into {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"target folder (default: {DEFAULT_DEST})")
    ap.add_argument("--force", action="store_true", help="re-fetch even if the stamp says it is current")
    ap.add_argument("--tarball", type=Path, help="use this katex tarball instead of running `npm pack`")
    args = ap.parse_args(argv)
    try:
        vendor(args.dest, force=args.force, tarball=args.tarball)
        vendor_minisearch(args.dest.parent / "minisearch", force=args.force)
    except VendorError as e:
        print(f"vendor_katex: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
