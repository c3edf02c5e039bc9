"The README's code runs as printed (the training example with fewer steps, so the test stays fast)."
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


def test_readme_library_examples_run(tmp_path):
    code = blocks()
    assert len(code) >= 2
    run(code[0], tmp_path)
    train = code[1].replace("steps=1500", "steps=3").replace("torch.randn(64,", "torch.randn(4,")
    assert train != code[1], "the README training example changed: update this test"
    run(train + "\nassert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()\n", tmp_path)
    fast = code[2].replace("torch.randn(64,", "torch.randn(4,")
    assert fast != code[2], "the README sampling example changed: update this test"
    run(train + fast + "\nassert fast.shape == ddim.shape == (4, 1, 8, 8)"
                       " and torch.isfinite(fast).all() and torch.isfinite(ddim).all()\n", tmp_path)
