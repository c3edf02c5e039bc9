"""Tests for diffusion_book.models.dit (chapter 16): patchify, adaLN-Zero at init, presets, bad input, model files."""
import dataclasses
import json

import pytest
import torch

from diffusion_book.ddpm import DataSpec, DiffusionModel, network_config
from diffusion_book.models.dit import (DIT_PRESETS, DiT, DiTConfig, dit_config, flops, num_parameters, patchify,
                                       sincos_pos_embed_2d, unpatchify)
from diffusion_book.schedules import linear_beta_schedule


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw):
    base = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    return DiTConfig(**{**base, **kw})


def randomize_(net, seed=0):
    "Give every parameter random values, so that outputs depend on every input (zero-init layers included)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


@pytest.mark.parametrize("p,C,H,W", [(1, 1, 3, 5), (2, 3, 4, 6), (4, 2, 8, 12), (8, 4, 16, 8), (3, 1, 9, 6)])
def test_patchify_round_trip(p, C, H, W):
    x = torch.randn(2, C, H, W, generator=torch.Generator().manual_seed(p))
    tok = patchify(x, p)
    assert tok.shape == (2, (H // p) * (W // p), p * p * C)
    assert torch.equal(unpatchify(tok, p, H, W), x)


def test_patchify_token_layout():
    x = torch.arange(32.).reshape(1, 2, 4, 4)
    # token (0, 1): rows 0-1, columns 2-3, channel last
    assert torch.equal(patchify(x, 2)[0, 1], torch.tensor([2., 18., 3., 19., 6., 22., 7., 23.]))


@pytest.mark.parametrize("shape", [(1, 1, 6, 8), (1, 1, 8, 6)])
def test_patchify_not_divisible(shape):
    with pytest.raises(ValueError, match="must divide"):
        patchify(torch.zeros(shape), 4)


def test_unpatchify_wrong_token_count():
    with pytest.raises(ValueError, match="tile"):
        unpatchify(torch.zeros(1, 5, 4), 2, 4, 4)


def test_pos_embed_relative():
    pe = sincos_pos_embed_2d(16, 3, 3).double()
    G = pe @ pe.T
    # tokens (0,0)-(1,1) and (1,1)-(2,2) have the same offset
    torch.testing.assert_close(G[0, 4], G[4, 8], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed_2d(6, 2, 2)


def test_identity_and_zero_output_at_init():
    torch.manual_seed(0)
    net = DiT(tiny())
    h, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    for block in net.blocks:
        assert torch.equal(block(h, c), h)
    out = net(torch.randn(3, 1, 8, 8), torch.rand(3) * 999, torch.tensor([0, 5, 10]))
    assert torch.equal(out, torch.zeros(3, 2, 8, 8))


def test_first_step_gradient_only_in_final_layer():
    torch.manual_seed(0)
    net = DiT(tiny())
    out = net(torch.randn(3, 1, 8, 8), torch.rand(3) * 999, torch.tensor([0, 5, 10]))
    ((out - torch.randn_like(out)) ** 2).mean().backward()
    nonzero = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    assert nonzero == {"final_layer.linear.weight", "final_layer.linear.bias"}


@pytest.mark.parametrize("learn_sigma,C", [(True, 1), (False, 1), (True, 3), (False, 4)])
def test_output_shape(learn_sigma, C):
    net = randomize_(DiT(tiny(in_channels=C, learn_sigma=learn_sigma)))
    out = net(torch.randn(2, C, 8, 8), torch.tensor([0.0, 500.5]), torch.tensor([1, 2]))
    assert out.shape == (2, 2 * C if learn_sigma else C, 8, 8)


def test_conditioning_matters_and_null_default():
    net = randomize_(DiT(tiny()))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 10.0])
    a, b = net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([10, 10])), atol=0, rtol=0)
    assert not torch.allclose(net(x, t), net(x, t + 100))


def test_unconditional():
    net = randomize_(DiT(tiny(num_classes=None)))
    assert net.y_embedder is None
    assert net(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 1]))


PAPER = {"DiT-S/4": (33e6, 1.4e9), "DiT-B/4": (130e6, 5.6e9), "DiT-L/4": (458e6, 19.7e9),
         "DiT-XL/4": (675e6, 29.1e9), "DiT-XL/2": (675e6, 118.6e9)}  # Peebles & Xie 2023 Table 1, §5


@pytest.mark.parametrize("name", list(PAPER))
def test_presets_match_paper(name):
    params, gflops = PAPER[name]
    assert abs(num_parameters(DIT_PRESETS[name]) / params - 1) < 0.02
    assert abs(flops(DIT_PRESETS[name]) / gflops - 1) < 0.03


def test_preset_exact_count():
    # DiT-XL/2 of the reference code: 675,129,632 parameters including its frozen (N, D) positional table
    assert num_parameters(DIT_PRESETS["DiT-XL/2"]) + 256 * 1152 == 675_129_632
    assert len(DIT_PRESETS) == 12 and dit_config("DiT-S/8", in_channels=1).in_channels == 1
    with pytest.raises(ValueError, match="unknown DiT preset"):
        dit_config("DiT-M/2")


def test_flops_match_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    cfg = tiny()
    net = DiT(cfg)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        net(torch.randn(1, 1, 8, 8), torch.zeros(1), torch.tensor([3]))
    assert fc.get_total_flops() == 2 * flops(cfg)
    assert num_parameters(cfg) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("x,t,cond,match", [
    (torch.randn(2, 3, 8, 8), torch.zeros(2), None, "shape"),
    (torch.randn(2, 1, 4, 4), torch.zeros(2), None, "shape"),
    (torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 11]), "class ids"),
    (torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([-1, 0]), "class ids"),
    (torch.randn(2, 1, 8, 8), torch.zeros(1), None, "t"),
    (torch.randn(2, 1, 8, 8), torch.zeros(2, 1), None, "t"),
    (torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([0.0, 1.0]), "cond"),
    (torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 1, 2]), "cond"),
])
def test_bad_input(x, t, cond, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DiT(tiny())(x, t, cond)


@pytest.mark.parametrize("bad", [dict(patch_size=3), dict(num_heads=5), dict(hidden_size=30, num_heads=5),
                                 dict(num_classes=0), dict(depth=0), dict(learn_sigma=1)])
def test_bad_config(bad):
    with pytest.raises((ValueError, TypeError)):
        tiny(**bad)


def test_config_round_trip_json():
    cfg = tiny()
    d = json.loads(json.dumps(cfg.to_dict()))
    assert DiTConfig(**d) == cfg
    net = DiT(cfg)
    assert network_config(net) == d


def test_diffusion_model_save_load(tmp_path):
    cfg = tiny(learn_sigma=False)
    x = torch.rand(20, 1, 8, 8) * 2 - 1
    y = torch.arange(20) % 10
    model = DiffusionModel.create("dit", cfg, linear_beta_schedule(50), DataSpec.of(x, y, "toy"), seed=3)
    randomize_(model.net)
    path = model.save(tmp_path / "dit.safetensors")
    back = DiffusionModel.load(path)
    assert isinstance(back.net, DiT) and back.net.config == cfg
    xt, t = torch.randn(4, 1, 8, 8), torch.tensor([0.0, 10.0, 20.5, 49.0])
    torch.testing.assert_close(back.eps(xt, t, y[:4]), model.eps(xt, t, y[:4]), atol=0, rtol=0)
    s = back.sample(3, labels=2, guidance=1.0, steps=3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 8, 8)
    model2 = DiffusionModel.create("dit", cfg, linear_beta_schedule(50), DataSpec.of(x, y, "toy"), seed=4)
    model2.load_weights(path)
    torch.testing.assert_close(model2.eps(xt, t, y[:4]), model.eps(xt, t, y[:4]), atol=0, rtol=0)


def test_learned_sigma_eps_first_half():
    cfg = tiny(learn_sigma=True)
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    model = DiffusionModel.create("dit", cfg, linear_beta_schedule(20), DataSpec.of(x, torch.arange(10), "toy"))
    randomize_(model.net)
    xt, t, c = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 5.0]), torch.tensor([0, 1])
    torch.testing.assert_close(model.eps(xt, t, c), model.net(xt, t, c)[:, :1], atol=0, rtol=0)


def test_dtype_mismatch():
    with pytest.raises(TypeError, match="float64"):
        DiT(tiny())(torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.zeros(1))
