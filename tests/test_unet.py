"""Tests for diffusion_book.models.unet (chapter 05): shapes, the network contract, bad input, determinism."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from diffusion_book.models.unet import (UNET_PRESETS, AttentionBlock, ResBlock, UNet, UNetConfig, timestep_embedding,
                                        unet_full_config, unet_small_config)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    "These tensors are tiny: one thread avoids OpenMP start-up and spin costs (large on shared 2-core machines)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw):
    "A small, fast config for tests (8 groups, heads of 16 channels)."
    base = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), num_groups=8,
                head_channels=16)
    return UNetConfig(**{**base, **kw})


def reinit_zero_layers_(net):
    "Re-initialise zero-initialised layers so that the output depends on the inputs."
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return net


# --- timestep_embedding -------------------------------------------------------------------------------------------

def test_embedding_values_and_shapes():
    e = timestep_embedding(torch.tensor([0, 1]), 8)
    assert e.shape == (2, 8) and e.dtype == torch.float32
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos 0 = 1, sin 0 = 0
    torch.testing.assert_close(e[1, 0], torch.cos(torch.tensor(1.0)))  # ω_0 = 1
    torch.testing.assert_close(e[1, 5], torch.sin(torch.tensor(10000.0 ** (-1 / 4))))  # ω_1 = P^(-1/h)
    odd = timestep_embedding(torch.tensor([3.0]), 9)
    assert odd.shape == (1, 9) and odd[0, -1] == 0
    assert timestep_embedding(torch.tensor([3.0], dtype=torch.float64), 8).dtype == torch.float64
    # integer and float t give the same embedding
    torch.testing.assert_close(timestep_embedding(torch.arange(5), 16), timestep_embedding(torch.arange(5.0), 16))


def test_embedding_stays_float32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = timestep_embedding(torch.tensor([999.0]), 16)
    assert e.dtype == torch.float32
    torch.testing.assert_close(e, timestep_embedding(torch.tensor([999.0]), 16))


@pytest.mark.parametrize("t, dim, max_period, exc, match", [
    (torch.zeros(2, 1), 8, 1e4, ValueError, "1 dimensions"),
    (torch.ones(2, dtype=torch.bool), 8, 1e4, TypeError, "real float or integer"),
    (torch.zeros(2), 1, 1e4, ValueError, "dim must be"),
    (torch.zeros(2), 8, 1.0, ValueError, "max_period"),
    ([0.0, 1.0], 8, 1e4, TypeError, "torch.Tensor"),
])
def test_embedding_bad_input(t, dim, max_period, exc, match):
    with pytest.raises(exc, match=match):
        timestep_embedding(t, dim, max_period)


# --- config ---------------------------------------------------------------------------------------------------------

def test_config_defaults_and_roundtrip():
    c = UNetConfig(in_channels=3)
    assert c.out_channels == 3 and c.time_embed_dim == 256 and c.level_channels == (64, 128, 256)
    assert c.resolutions(28) == (28, 14, 7) and c.resolutions(8) == (8, 4, 2)
    d = c.to_dict()
    d["channel_mults"], d["attention_levels"] = list(d["channel_mults"]), list(d["attention_levels"])  # as from JSON
    assert UNetConfig(**d) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.base_channels = 32


@pytest.mark.parametrize("kw, match", [
    (dict(base_channels=48), "num_groups=32 must divide"),
    (dict(attention_levels=(3,)), "attention_levels"),
    (dict(head_channels=48), "head_channels=48"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_classes=0), "num_classes"),
    (dict(channel_mults=()), "channel_mults"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(in_channels=0), "in_channels"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kw)


def test_presets():
    assert set(UNET_PRESETS) == {"small", "full"}
    small, full = unet_small_config(), unet_full_config(num_classes=10)
    assert full.num_classes == 10 and full.attention_levels == (1, 2) and full.resolutions(28)[1:] == (14, 7)
    n = lambda cfg: sum(p.numel() for p in UNet(cfg).parameters())
    assert 0.5e6 <= n(small) <= 2e6
    assert abs(n(unet_full_config()) / 16.05e6 - 1) <= 0.10  # diffusers UNet2DModel (64, 128, 256): 16.05 M


# --- shapes -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, hw", [
    (tiny(), (8, 8)),
    (tiny(), (7, 7)),
    (tiny(channel_mults=(1, 2, 2)), (28, 28)),
    (tiny(channel_mults=(1, 1, 2, 2), attention_levels=(2, 3)), (28, 28)),  # 28 → 14 → 7 → 4 and back
    (tiny(in_channels=3), (32, 32)),
    (tiny(in_channels=3, out_channels=6), (9, 12)),  # learned variance: 2C outputs; odd, non-square
    (tiny(num_classes=10, num_res_blocks=2), (8, 8)),
    (tiny(attention_levels=(), mid_attention=False, dropout=0.1), (5, 5)),
])
def test_output_shape(cfg, hw):
    net = UNet(cfg).eval()
    x = torch.randn(2, cfg.in_channels, *hw)
    y = net(x, torch.tensor([0.0, 999.0]), torch.tensor([3, 10]) if cfg.num_classes else None)
    assert y.shape == (2, cfg.out_channels, *hw)
    assert torch.isfinite(y).all()


def test_untrained_output_is_zero_and_blocks_are_identity():
    net = UNet(tiny())
    assert not net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).any()  # zero-initialised output conv
    x, e = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    torch.testing.assert_close(ResBlock(16, 16, 8, num_groups=8)(x, e), x, atol=0, rtol=0)
    torch.testing.assert_close(AttentionBlock(16, num_groups=8, head_channels=8)(x), x, atol=0, rtol=0)


def test_int_and_float_t_agree():
    torch.manual_seed(0)
    net = reinit_zero_layers_(UNet(tiny())).eval()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(net(x, torch.tensor([0, 5, 999])), net(x, torch.tensor([0.0, 5.0, 999.0])))


# --- bad input ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_args, exc, match", [
    (lambda: (torch.randn(2, 3, 8, 8), torch.zeros(2), None), ValueError, "in_channels=1"),
    (lambda: (torch.randn(2, 8, 8), torch.zeros(2), None), ValueError, "4 dimensions"),
    (lambda: (torch.randint(0, 3, (2, 1, 8, 8)), torch.zeros(2), None), TypeError, "floating-point"),
    (lambda: (torch.randn(2, 1, 8, 8), torch.zeros(3), None), ValueError, r"t must have shape \(2,\)"),
    (lambda: (torch.randn(2, 1, 8, 8), torch.tensor(1.0), None), ValueError, r"t must have shape \(2,\)"),
    (lambda: (torch.randn(2, 1, 8, 8), torch.zeros(2, 1), None), ValueError, r"t must have shape \(2,\)"),
    (lambda: (torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.bool), None), TypeError, "real float or integer"),
    (lambda: (torch.randn(2, 1, 8, 8), [0, 1], None), TypeError, "t must be a torch.Tensor"),
    (lambda: (torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([1, 2])), ValueError, "unconditional"),
])
def test_bad_input_unconditional(make_args, exc, match):
    net = UNet(tiny())
    with pytest.raises(exc, match=match):
        net(*make_args())


@pytest.mark.parametrize("cond, exc, match", [
    (torch.tensor([0, 11]), ValueError, r"\[0, 9\] \(or 10, the null class\)"),
    (torch.tensor([-1, 3]), ValueError, r"got values in \[-1, 3\]"),
    (torch.tensor([0.0, 1.0]), TypeError, "integer tensor"),
    (torch.tensor([1, 2, 3]), ValueError, r"cond must have shape \(2,\)"),
])
def test_bad_cond(cond, exc, match):
    net = UNet(tiny(num_classes=10))
    with pytest.raises(exc, match=match):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2), cond)


# --- conditioning, determinism, gradients -------------------------------------------------------------------------------

def test_class_conditioning_changes_output_and_null_class():
    torch.manual_seed(0)
    net = reinit_zero_layers_(UNet(tiny(num_classes=10))).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 100)
    y_a, y_b = net(x, t, torch.tensor([0, 1, 2, 3])), net(x, t, torch.tensor([4, 5, 6, 7]))
    assert ((y_a - y_b).norm() / y_a.norm()) > 1e-2
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 10)), atol=0, rtol=0)  # None = null class
    assert net.class_embed.num_embeddings == 11


def test_time_changes_output():
    torch.manual_seed(0)
    net = reinit_zero_layers_(UNet(tiny())).eval()
    x = torch.randn(2, 1, 8, 8)
    assert (net(x, torch.tensor([10, 10])) - net(x, torch.tensor([900, 900]))).abs().max() > 1e-3


def test_determinism_with_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = reinit_zero_layers_(UNet(tiny(num_classes=10, dropout=0.1))).eval()
        g = torch.Generator().manual_seed(7)
        x = torch.randn(3, 1, 8, 8, generator=g)
        outs.append(net(x, torch.tensor([1, 50, 900]), torch.tensor([0, 5, 10])))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    torch.manual_seed(124)
    other = reinit_zero_layers_(UNet(tiny(num_classes=10, dropout=0.1))).eval()
    assert not torch.equal(other(x, torch.tensor([1, 50, 900]), torch.tensor([0, 5, 10])), outs[0])


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    net = reinit_zero_layers_(UNet(tiny(dropout=0.5)))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    net.train()
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


def test_every_parameter_gets_a_gradient_by_step_two():
    torch.manual_seed(0)
    net = UNet(tiny(num_classes=3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, t, y = torch.randn(6, 1, 8, 8), torch.randint(0, 1000, (6,)), torch.tensor([0, 1, 2, 3, 0, 1])
    for step in range(3):
        opt.zero_grad(set_to_none=False)
        ((net(x, t, y) - x) ** 2).mean().backward()
        got = {n for n, p in net.named_parameters() if p.grad.any()}
        if step == 0:
            assert got == {"conv_out.weight", "conv_out.bias"}
        opt.step()
    assert got == {n for n, _ in net.named_parameters()}


# --- memory format, precision, compile ----------------------------------------------------------------------------------

def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    net = reinit_zero_layers_(UNet(tiny(channel_mults=(1, 2, 2)))).eval()
    x, t = torch.randn(2, 1, 12, 12), torch.tensor([3, 700])
    with torch.no_grad():
        ref = net(x, t)
        y_cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
        torch.testing.assert_close(y_cl, ref, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = net(x, t)
    assert ((y16.float() - ref).norm() / ref.norm()) < 0.03


def test_compile_traces_one_graph():
    import torch._dynamo
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("TorchDynamo is not supported on this Python/platform")
    torch._dynamo.reset()
    net = reinit_zero_layers_(UNet(tiny(num_classes=10))).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([3, 10])
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # a graph break would raise here
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), net(x, t, y), atol=1e-5, rtol=1e-5)
