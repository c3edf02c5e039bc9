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


def test_readme_text_to_image_example_runs(tmp_path):
    "Block 3 as printed, with the trained miniature replaced by a tiny untrained pipeline (training takes minutes)."
    code = blocks()[2]
    assert code.count("pretrained_text_to_image()") == 1, "the README example changed: update this test"
    tiny = (
        "import torch\n"
        "from diffusion_book.ddpm import DataSpec, DiffusionModel\n"
        "from diffusion_book.latent_diffusion import (TextEncoder, TextEncoderConfig, TextUNet, TextUNetConfig,\n"
        "    WordTokenizer, scaled_linear_beta_schedule)\n"
        "from diffusion_book.models.autoencoder import AutoencoderConfig, AutoencoderKL\n"
        "def tiny():\n"
        "    tok = WordTokenizer.from_captions(['a large red circle at the top left'], max_length=12)\n"
        "    ae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 8, 8), latent_channels=4, norm_num_groups=4))\n"
        "    enc = TextEncoder(TextEncoderConfig(len(tok), 12, dim=16, layers=1, heads=2))\n"
        "    net = TextUNet(TextUNetConfig(in_channels=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,\n"
        "                                  attention_levels=(1,), head_channels=8, num_groups=4, context_dim=16))\n"
        "    model = DiffusionModel(net, scaled_linear_beta_schedule(), DataSpec((4, 8, 8), None))\n"
        "    return TextToImagePipeline(ae.eval(), tok, enc.eval(), model.eval())\n")
    lines = code.splitlines()
    head = [l for l in lines if l.startswith(("from ", "import "))]
    rest = [l for l in lines if not l.startswith(("from ", "import "))]
    run("\n".join(head) + "\n" + tiny + "\n".join(rest).replace("pretrained_text_to_image()", "tiny()")
        + "\nassert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1\n", tmp_path)
    assert (tmp_path / "t2i" / "pipeline.json").exists() and (tmp_path / "t2i.png").exists()
