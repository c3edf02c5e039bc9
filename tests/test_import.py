"The library is usable outside notebooks: a fresh interpreter imports the modules and calls them."
import subprocess
import sys

CODE = """
import torch
import diffusion_book
import diffusion_book.schedules as S, diffusion_book.data as D, diffusion_book.utils as U
x0, y = D.load_digits("train")
s = S.cosine_beta_schedule(100)
x_t = s.q_sample(x0[:4], torch.tensor([0, 10, 50, 99]), generator=U.make_generator(0))
gm = D.ring_mixture()
assert x_t.shape == (4, 1, 8, 8) and gm.score(gm.sample(3)).shape == (3, 2)
print("ok", diffusion_book.__version__)
"""


def test_fresh_interpreter_import_and_call(tmp_path):
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")
