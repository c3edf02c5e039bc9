"Unit tests of tools/check_numbers.py (the stale-number check) on tiny synthetic notebooks."
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import check_numbers as cn  # noqa: E402


def _nb(tmp_path, cells, name="99_demo.ipynb"):
    nb_cells = []
    for kind, src, *outs in cells:
        c = {"cell_type": kind, "metadata": {}, "source": src}
        if kind == "code":
            c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": o} for o in outs]
            c["execution_count"] = 1
        nb_cells.append(c)
    p = tmp_path / name
    p.write_text(json.dumps({"cells": nb_cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return p


def _bad(tmp_path, cells, **kw):
    return [text for _, text, _ in cn.check_notebook(_nb(tmp_path, cells), **kw)]


def test_measured_value_must_be_printed(tmp_path):
    cells = [("code", "gap = run()\nprint(f'{gap:.4f}')", "0.5312\n"),
             ("markdown", "The gap is about 0.53 nats, not 0.13.")]
    assert _bad(tmp_path, cells) == ["0.13"]  # 0.53 is the printed 0.5312 at two places


def test_integers_thousands_and_years(tmp_path):
    cells = [("code", "x = load()\nprint(x.shape)", "torch.Size([1438, 1, 8, 8])\n"),
             ("markdown", "The 1,438 training digits (Ho et al. 2020) — not 1437 — and 8×8 pixels.")]
    assert _bad(tmp_path, cells) == ["1437"]


def test_powers_of_ten_and_scientific(tmp_path):
    cells = [("code", "print(f'{err:.1e}')", "1.2e-05\n"),
             ("markdown", "Error about $10^{-5}$, i.e. 1e-5; far from $3\\cdot 10^{-4}$ and from 10⁻⁸.")]
    assert _bad(tmp_path, cells) == ["3\\cdot 10^{-4}", "10^{-8}"]


def test_code_literals_count_but_not_comments_strings_or_by_scale(tmp_path):
    cells = [("code", "N_MC = by_scale(4000, 40000)  # 360 test digits\nassert err < 0.05\ns = 'about 777'\nM = 2_000"),
             ("markdown", "Tolerance 0.05 with 2,000 draws; 4,000 samples; 40000 at FULL; 360 digits; 777.")]
    assert _bad(tmp_path, cells) == ["4,000", "40000", "360", "777"]


def test_references_citations_code_and_exercises_are_skipped(tmp_path):
    cells = [("code", "pass"),
             ("markdown", "By Eq. 12 and Eqs. 6–7 [@ho2020denoising, Eq. 14], Algorithm 2, §3.2, chapter 11, "
                          "chapters 09–12, `x[:1437]`, float32, $x_{100}$, $\\log_2$, H200."),
             ("markdown", "## Exercises\n\n1. Try 1,000 samples and 0.37."),
             ("markdown", "More exercise text with 12.5."),
             ("markdown", "## Summary\n\nStale 12.5 here.")]
    assert _bad(tmp_path, cells) == ["12.5"]


def test_percentages_and_rendered_markdown(tmp_path):
    p = tmp_path / "98_md.ipynb"
    p.write_text(json.dumps({"cells": [
        {"cell_type": "code", "metadata": {}, "source": "Markdown(f'{share:.0%}')", "execution_count": 1,
         "outputs": [{"output_type": "execute_result", "metadata": {}, "execution_count": 1,
                      "data": {"text/markdown": "The first steps carry 87 % of it.", "text/plain": "<Markdown>"}}]},
        {"cell_type": "code", "metadata": {}, "source": "assert share > 0.85", "outputs": [], "execution_count": 2},
        {"cell_type": "markdown", "metadata": {}, "source": "More than 85 % (87 %), not 95 %."}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert [t for _, t, _ in cn.check_notebook(p)] == ["95"]


def test_paper_constants_allowlist_and_marker(tmp_path):
    cells = [("code", "pass"),
             ("markdown", "Ho et al. report FID 3.17 and 9.46 bits. <!-- paper-constants: 3.17 -->"),
             ("markdown", "Their β_T = 0.02 over T = 1000 steps.")]
    assert _bad(tmp_path, cells) == ["9.46"]
    assert _bad(tmp_path, cells, constants={"*": {0.02, 1000}, "99_demo": {9.46}}) == []


def test_cli_exit_status(tmp_path):
    good = _nb(tmp_path, [("code", "print(3.25)", "3.25\n"), ("markdown", "It is 3.25.")], "01_good.ipynb")
    bad = _nb(tmp_path, [("code", "pass"), ("markdown", "It is 3.25.")], "02_bad.ipynb")
    tool = Path(cn.__file__)
    r = subprocess.run([sys.executable, str(tool), str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    r = subprocess.run([sys.executable, str(tool), str(good), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "02_bad.ipynb" in r.stdout and "'3.25'" in r.stdout


def test_shapes_row_labels_and_chapter_lists(tmp_path):
    cells = [("code", "pass"),
             ("markdown", "| chapter | what |\n|---|---|\n| 10 [SDEs](10_sde.html) | VP |\n| 13 Guidance | soon |\n"
                          "Digits are 8×8, FULL uses 28×28 images; see (03, 04, 11). Stale: 0.731 and | 47 |.")]
    assert _bad(tmp_path, cells) == ["0.731", "47"]


def test_software_versions_are_not_measurements(tmp_path):
    cells = [("code", "pass"), ("markdown", "diffusers 0.42 and Python 3.11.7 (torch 2.13) differ by 0.42 nats.")]
    assert _bad(tmp_path, cells) == ["0.42"]
