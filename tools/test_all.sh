#!/usr/bin/env bash
# Everything CI checks, in order, each step timed. Called by `make test` (and so by .ci/run).
set -uo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
T0=$(date +%s)
fail=0
step() { echo; echo "=== $* ==="; S0=$(date +%s); }
done_step() { echo "--- $(( $(date +%s) - S0 )) s"; }
snapshot() { find diffusion_book -name '*.py' -print0 | sort -z | xargs -0 sha256sum | sha256sum; }

step "1/6 library in sync with the notebooks (nbdev-export changes nothing)"
before=$(snapshot; git status --porcelain -- diffusion_book)
$V/nbdev-export
after=$(snapshot; git status --porcelain -- diffusion_book)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev-export changed diffusion_book/ -- the library was out of sync with nbs/ (or hand-edited)."
  echo "      Edit the notebook, run 'make sync' (or nbdev-export), and commit nbs/ and diffusion_book/ together."
  git status --porcelain -- diffusion_book | head -20
  fail=1
fi
if [ "${CI:-}" = "true" ] && ! git diff --exit-code --stat -- diffusion_book; then fail=1; fi
done_step

step "2/6 notebooks clean (committed without outputs; nbdev-clean changes nothing)"
before=$(find nbs -name '*.ipynb' -print0 | sort -z | xargs -0 sha256sum)
$V/nbdev-clean
after=$(find nbs -name '*.ipynb' -print0 | sort -z | xargs -0 sha256sum)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev-clean changed notebooks in nbs/; commit the cleaned versions:"
  git status --porcelain -- nbs | head -20
  fail=1
fi
done_step

step "3/6 library tests (pytest tests/)"
$V/python -m pytest tests/ -q -rs
rc=$?
if [ $rc -eq 5 ]; then echo "FAIL: pytest collected no tests in tests/"; fail=1
elif [ $rc -ne 0 ]; then fail=1; fi
done_step

step "4/6 every chapter executed (nbval --nbval-lax; checks are assert cells)"
$V/python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 -p no:cacheprovider --ignore=nbs/_scratch nbs/ -q
rc=$?
nbval_ok=1
if [ $rc -eq 5 ]; then echo "FAIL: nbval collected no notebook cells in nbs/"; fail=1; nbval_ok=0
elif [ $rc -ne 0 ]; then fail=1; nbval_ok=0; fi
done_step

step "5/6 rendered book: render from the executed chapters, then check every page in headless Chromium"
if [ $nbval_ok -eq 0 ]; then echo "skipped: a chapter failed to execute above"
elif $V/python tools/execute_book.py && $V/python tools/render_book.py --src _build/executed --out _book \
   && $V/python tools/check_book.py _book; then :; else fail=1; fi
done_step

step "6/6 numbers in prose come from execution (tools/check_numbers.py on _build/executed/)"
if [ $nbval_ok -eq 0 ]; then echo "skipped: a chapter failed to execute above"
elif ! $V/python tools/check_numbers.py; then fail=1; fi
done_step

echo
echo "make test: $(( $(date +%s) - T0 )) s wall time on $(nproc) cores; result: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"
exit $fail
