"""pytest plugin for `pytest --nbval-lax nbs/`: keep what nbval executed.

nbval runs every code cell of a chapter in one kernel but throws the outputs away. Here each cell's outputs
are put back into the notebook and, when every cell of the chapter passed, the executed notebook is stored
in `_build/executed/` (tools/nbcache.py) so the book render after the tests reuses it instead of executing
the chapter a second time. Timing per chapter is printed at the end.
"""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import nbcache  # noqa: E402

_state = {}  # notebook path -> {"ok": bool, "t0": float}
_timings = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    nbfile = getattr(item, "parent", None)
    if not hasattr(item, "test_outputs") or not hasattr(nbfile, "nb"):
        return
    st = _state.setdefault(str(nbfile.fspath), {"ok": True, "t0": time.time()})
    rep = outcome.get_result()
    if rep.failed:
        st["ok"] = False
    if call.when == "call" and item.test_outputs is not None:
        item.cell.outputs = list(item.test_outputs)


def pytest_runtest_teardown(item, nextitem):
    nbfile = getattr(item, "parent", None)
    if not hasattr(item, "test_outputs") or not hasattr(nbfile, "nb"):
        return
    if nextitem is not None and getattr(nextitem, "parent", None) is nbfile:
        return
    st = _state.get(str(nbfile.fspath))
    if st is None:
        return
    path = Path(str(nbfile.fspath))
    _timings.append((path.name, time.time() - st["t0"], st["ok"]))
    if st["ok"]:
        nbcache.store(path, nbfile.nb)


def pytest_terminal_summary(terminalreporter):
    if not _timings:
        return
    terminalreporter.section("chapter execution times (2 cores unless stated)")
    for name, dt, ok in _timings:
        terminalreporter.write_line(f"{name:32s} {dt:7.1f} s  {'ok' if ok else 'FAILED'}")
    terminalreporter.write_line(f"{'total':32s} {sum(t for _, t, _ in _timings):7.1f} s")
