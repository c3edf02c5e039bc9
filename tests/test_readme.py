"The README's code runs as printed (training with fewer steps, so the test stays fast), loading in a fresh process."
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run(code, tmp_path):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_readme_train_save_load_sample_evaluate(tmp_path):
    code = blocks()[0]
    fast = code.replace("steps=1500", "steps=3").replace("sample(359,", "sample(8,")
    assert fast.count("steps=3") == 1 and "sample(8," in fast, "the README example changed: update this test"
    lines = fast.splitlines()
    imports = [l for l in lines if l.startswith(("from ", "import "))]
    data = [l for l in lines if "load_digits(" in l and "=" in l]
    cut = next(i for i, l in enumerate(lines) if l.startswith("model = DiffusionModel.load"))
    run("\n".join(lines[:cut]), tmp_path)  # train and save in one process …
    assert (tmp_path / "digits.safetensors").exists()
    out = run("\n".join(imports + data + lines[cut:]) + "\nassert samples.shape == (8, 1, 8, 8)\n"
              "assert samples.min() >= -1 and samples.max() <= 1\n", tmp_path)  # … load, sample, score in another
    assert float(out.strip().splitlines()[-1]) > 0  # the FD it printed
    assert (tmp_path / "samples.png").exists()


def test_readme_sampler_example_runs(tmp_path):
    code = blocks()[1]
    run(code + "\nassert fast.shape == ddim.shape == heun.shape == (1000, 2)\n"
               "assert abs((fast[:, 0] < 0).float().mean() - 0.5) < 0.06\n", tmp_path)
