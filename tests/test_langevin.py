"""Tests for diffusion_book.langevin: Langevin's discretized stationary law, annealed Langevin on a mixture, the
NCSN loss at the exact score, the NCSN wrapper, training and caching; bad input."""
import math

import pytest
import torch

from diffusion_book.data import ring_mixture, two_modes
from diffusion_book.ddpm import TrainConfig, make_train_state
from diffusion_book.langevin import (NCSN, annealed_langevin, book_ncsn_config, check_sigmas, geometric_sigmas,
                                     langevin_dynamics, mode_weights, ncsn_loss, pretrained_ncsn, train_ncsn,
                                     ve_noised_mixture)

torch.set_num_threads(1)
D64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


class TinyNet(torch.nn.Module):
    "net(x, t) for (B, 1, 2, 2) images: a linear map of x and t (the network contract of DESIGN.md)."

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 4)

    def forward(self, x, t, cond=None):
        h = torch.cat([x.flatten(1), t[:, None].to(x.dtype) / 1000], 1)  # (B, 5)
        return self.lin(h).reshape(x.shape)


def test_gaussian_stationary_variance_has_the_discretization_bias():
    # p = N(0, s²): x' = (1−a)x + √δ z, a = δ/(2s²), so v_k = v∞ + (1−a)^{2k}(v_0 − v∞), v∞ = s²/(1 − δ/(4s²)).
    s2, delta, n = 0.5, 0.5, 100_000
    a, v_inf = delta / (2 * s2), s2 / (1 - delta / (4 * s2))
    x0 = 2.0 * torch.randn(n, 1, generator=gen(0), dtype=D64)  # v_0 = 4
    for k in (3, 30):
        x = langevin_dynamics(lambda z: -z / s2, x0, step_size=delta, n_steps=k, generator=gen(k))
        v_k = v_inf + (1 - a) ** (2 * k) * (4.0 - v_inf)
        assert abs(x.var().item() - v_k) < 4.5 * v_k * math.sqrt(2 / n), (k, x.var().item(), v_k)
    assert abs(x.var().item() - s2) > 20 * v_inf * math.sqrt(2 / n), "the O(δ) bias should be visible"


def test_langevin_callback_generator_and_device_dtype():
    x0 = torch.zeros(16, 3, dtype=torch.float32)
    seen = []
    a = langevin_dynamics(lambda z: -z, x0, step_size=0.1, n_steps=7, generator=gen(1),
                          callback=lambda k, x: seen.append((k, x.shape)))
    b = langevin_dynamics(lambda z: -z, x0, step_size=0.1, n_steps=7, generator=gen(1))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert [k for k, _ in seen] == list(range(1, 8)) and all(s == (16, 3) for _, s in seen)


def test_geometric_sigmas():
    s = geometric_sigmas(10.0, 0.01, 7)
    assert s.dtype == D64 and s.shape == (7,)
    torch.testing.assert_close(s[[0, -1]], torch.tensor([10.0, 0.01], dtype=D64), rtol=1e-12, atol=0)
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full((6,), 0.001 ** (1 / 6), dtype=D64), rtol=1e-12, atol=0)
    assert torch.equal(check_sigmas(s), s)


def test_annealed_langevin_recovers_mode_weights():
    gm = two_modes(separation=4.0, std=0.3, weights=(0.7, 0.3))
    n = 2000
    x_init = 8 * torch.rand(n, 2, generator=gen(2), dtype=D64) - 4  # half on each side
    sig = geometric_sigmas(5.0, 0.01, 20)
    noised = [ve_noised_mixture(gm, s) for s in sig.tolist()]
    x = annealed_langevin(lambda x, i: noised[int(i[0])].score(x), x_init, sig, steps_per_level=40, eps=0.5 * 0.01**2,
                          generator=gen(3))
    w = mode_weights(x, gm.means)
    se = math.sqrt(0.7 * 0.3 / n)
    assert abs(w[0] - 0.7) < 4.5 * se, w
    # plain Langevin from the same start keeps the initial split
    x_plain = langevin_dynamics(gm.score, x_init, step_size=0.01, n_steps=300, generator=gen(4))
    assert abs(mode_weights(x_plain, gm.means)[0] - (x_init[:, 0] < 0).double().mean()) < 4.5 * 0.5 / math.sqrt(n)


def test_annealed_langevin_callback_and_denoise():
    # With score −x/(1+σ²) (data = N(0, I)), the denoising step multiplies x by 1 − σ_L²/(1+σ_L²).
    sig = torch.tensor([2.0, 1.0, 0.5])
    score = lambda x, i: -x / (1 + sig[i, None].to(x) ** 2)  # noqa: E731
    calls = []
    x_init = torch.randn(8, 2, generator=gen(5), dtype=D64)
    a = annealed_langevin(score, x_init, sig, steps_per_level=4, eps=0.01, denoise=False, generator=gen(6),
                          callback=lambda k, i, x: calls.append((k, i)))
    b = annealed_langevin(score, x_init, sig, steps_per_level=4, eps=0.01, denoise=True, generator=gen(6))
    assert calls == [(k + 1, k // 4) for k in range(12)]
    torch.testing.assert_close(b, a * (1 - 0.25 / 1.25), rtol=1e-12, atol=1e-12)


def test_ve_noised_mixture_matches_rescaled_vp_and_sampling():
    gm = ring_mixture()
    y = 2 * torch.randn(500, 2, generator=gen(7), dtype=D64)
    sigma = 0.7
    ab = 1 / (1 + sigma**2)
    ve = ve_noised_mixture(gm, sigma)
    torch.testing.assert_close(ve.score(y), math.sqrt(ab) * gm.score(math.sqrt(ab) * y, ab), rtol=1e-10, atol=1e-10)
    x = gm.sample(200_000, generator=gen(8))
    x = x + sigma * torch.randn(x.shape, generator=gen(9), dtype=D64)
    m, cov = ve.moments()
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.03, rtol=0)
    assert ve_noised_mixture(gm, 0).stds.equal(gm.stds)


def test_ncsn_loss_at_exact_score_matches_closed_form():
    D, sig = 3, geometric_sigmas(2.0, 0.1, 5)
    x = torch.randn(100_000, D, generator=gen(10), dtype=D64)
    per = ncsn_loss(lambda xt, i: -xt / (1 + sig[i, None] ** 2), x, sig, generator=gen(11), reduction="none")
    expected = (D / 2 / (1 + sig**2)).mean()
    assert abs(per.mean() - expected) < 4.5 * per.std() / math.sqrt(len(per))
    # with fixed levels and noise it is σ²·dsm per example: ½‖σ s + z‖²
    idx = torch.tensor([0, 4, 2])
    z = torch.randn(3, D, generator=gen(12), dtype=D64)
    f = lambda xt, i: -xt  # noqa: E731
    got = ncsn_loss(f, x[:3], sig, sigma_index=idx, noise=z, reduction="none")
    s = sig[idx, None]
    torch.testing.assert_close(got, 0.5 * ((s * f(x[:3] + s * z, idx) + z) ** 2).sum(1), rtol=1e-12, atol=1e-12)


def test_ncsn_wrapper_divides_by_sigma_and_maps_levels():
    torch.manual_seed(0)
    net = TinyNet()
    sig = geometric_sigmas(5.0, 0.05, 4)
    model = NCSN(net, sig)
    torch.testing.assert_close(model.t_levels[[0, -1]], torch.tensor([999.0, 0.0]), atol=1e-3, rtol=0)
    x, idx = torch.randn(4, 1, 2, 2, generator=gen(13)), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(model(x, idx), net(x, model.t_levels[idx]) / sig[idx].float()[:, None, None, None])


def test_train_ncsn_yields_steps_and_refuses_bad_input():
    torch.manual_seed(0)
    model = NCSN(TinyNet(), geometric_sigmas(2.0, 0.1, 3))
    cfg = TrainConfig(steps=5, batch_size=8, lr=1e-2, warmup=1, grad_clip=None)
    state = make_train_state(model, cfg)
    logs = list(train_ncsn(state, torch.rand(32, 1, 2, 2) * 2 - 1, cfg))
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5] and all(math.isfinite(r["loss"]) for r in logs)
    bad = make_train_state(TinyNet(), cfg)
    with pytest.raises(TypeError, match="noise ladder"):
        next(train_ncsn(bad, torch.zeros(8, 1, 2, 2), cfg))
    with pytest.raises(ValueError, match="NaN"):
        next(train_ncsn(state, torch.full((8, 1, 2, 2), float("nan")), cfg))


def test_book_config_and_pretrained_cache(tmp_path, monkeypatch):
    for scale in ("small", "full"):
        cfg = book_ncsn_config(scale, device="cpu")
        assert cfg["sigma_max"] > cfg["sigma_min"] > 0 and cfg["n_levels"] >= 2
        TrainConfig(**cfg["train"])
    monkeypatch.setenv("DIFFUSION_BOOK_CACHE", str(tmp_path))
    cfg = book_ncsn_config("small", device="cpu")
    cfg["unet"].update(base_channels=8, head_channels=8, time_embed_dim=16)
    cfg["train"].update(steps=2, batch_size=4)
    m1, r1 = pretrained_ncsn(cfg, verbose=False)
    m2, r2 = pretrained_ncsn(cfg, verbose=False)
    assert not r1["cached"] and r2["cached"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    torch.testing.assert_close(m2.sigmas.double(), geometric_sigmas(cfg["sigma_max"], cfg["sigma_min"], cfg["n_levels"]),
                               rtol=1e-6, atol=0)


def test_bad_input_raises_clear_errors():
    f = lambda x, i: -x  # noqa: E731
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="finite number > 0"):
        geometric_sigmas(1.0, -0.1, 5)
    with pytest.raises(ValueError, match="sigma_max > sigma_min"):
        geometric_sigmas(0.1, 1.0, 5)
    with pytest.raises(ValueError, match="at least 2"):
        geometric_sigmas(1.0, 0.1, 1)
    with pytest.raises(ValueError, match="positive integer"):
        geometric_sigmas(1.0, 0.1, 2.5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        annealed_langevin(f, x, [1.0, 0.5, 0.5], steps_per_level=1, eps=1e-3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        annealed_langevin(f, x, [0.1, 0.5], steps_per_level=1, eps=1e-3)
    with pytest.raises(ValueError, match="finite and positive"):
        annealed_langevin(f, x, [1.0, -0.5], steps_per_level=1, eps=1e-3)
    with pytest.raises(ValueError, match="finite and positive"):
        check_sigmas([1.0, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        check_sigmas([[1.0, 0.5]])
    with pytest.raises(ValueError, match="eps must be"):
        annealed_langevin(f, x, [1.0, 0.5], steps_per_level=1, eps=0.0)
    with pytest.raises(ValueError, match="steps_per_level must be a positive integer"):
        annealed_langevin(f, x, [1.0, 0.5], steps_per_level=0, eps=1e-3)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        annealed_langevin(lambda x, i: x[:, :1], x, [1.0, 0.5], steps_per_level=1, eps=1e-3)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        langevin_dynamics(lambda x: x.sum(), x, step_size=0.1, n_steps=1)
    for bad_step in (0.0, -0.1, float("inf"), True):
        with pytest.raises(ValueError, match="step_size must be"):
            langevin_dynamics(lambda x: -x, x, step_size=bad_step, n_steps=3)
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        langevin_dynamics(lambda x: -x, x, step_size=0.1, n_steps=0)
    with pytest.raises(TypeError, match="x_init must be a floating-point tensor"):
        langevin_dynamics(lambda x: -x, torch.zeros(4, 2, dtype=torch.long), step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match="x_init contains NaN"):
        langevin_dynamics(lambda x: -x, torch.full((4, 2), float("nan")), step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        ve_noised_mixture(ring_mixture(), -0.1)
    with pytest.raises(ValueError, match=r"centers must have shape"):
        mode_weights(x, torch.zeros(2, 3))
    sig = torch.tensor([1.0, 0.5])
    with pytest.raises(ValueError, match="sigma_index must lie in"):
        ncsn_loss(f, x, sig, sigma_index=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"sigma_index must have shape \(4,\)"):
        ncsn_loss(f, x, sig, sigma_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="reduction must be"):
        ncsn_loss(f, x, sig, reduction="sum")
    with pytest.raises(ValueError, match="strictly decreasing"):
        NCSN(TinyNet(), [0.5, 1.0])
    with pytest.raises(ValueError, match="at least 2"):
        NCSN(TinyNet(), [0.5])
    model = NCSN(TinyNet(), [1.0, 0.5])
    with pytest.raises(ValueError, match="sigma_index must lie in"):
        model(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="sigma_index must be an integer tensor"):
        model(torch.zeros(2, 1, 2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="differ from score_fn.sigmas"):  # a sub-ladder would mis-index an NCSN
        annealed_langevin(model, torch.zeros(2, 1, 2, 2), [1.0, 0.7], steps_per_level=1, eps=1e-3)
    annealed_langevin(model, torch.zeros(2, 1, 2, 2), model.sigmas, steps_per_level=1, eps=1e-3)  # its own: fine


def test_mode_weights():
    centers = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 5.0]], dtype=D64)
    x = torch.tensor([[-2.0, 0.1], [-0.5, 0.0], [0.7, -1.0], [0.0, 4.0]], dtype=D64)
    torch.testing.assert_close(mode_weights(x, centers), torch.tensor([0.5, 0.25, 0.25], dtype=D64))


def test_time_contract_annealed_langevin_passes_level_indices_and_ncsn_passes_float_t():
    "annealed_langevin calls score_fn(x, i) with i a (B,) int64 index into `sigmas` (0 = σ_max); an NCSN feeds its net (B,) float32 t."
    sig = geometric_sigmas(5.0, 0.1, 4)
    seen_idx, seen_t = [], []

    class Net(torch.nn.Module):
        def forward(self, x, t, cond=None):
            seen_t.append(t)
            return -x

    ncsn = NCSN(Net(), sig)
    score = lambda x, i: (seen_idx.append(i), ncsn(x, i))[1]
    annealed_langevin(score, torch.zeros(3, 2), sig, steps_per_level=2, eps=1e-3, generator=torch.Generator().manual_seed(0))
    assert [int(i[0]) for i in seen_idx] == [0, 0, 1, 1, 2, 2, 3, 3, 3]  # walked from σ_max; the last call denoises at σ_min
    assert all(i.dtype == torch.long and i.shape == (3,) for i in seen_idx)
    assert all(t.dtype == torch.float32 and t.shape == (3,) for t in seen_t)
    assert seen_t[0][0] == pytest.approx(999) and seen_t[-1][0] == pytest.approx(0)  # t = 999 at σ_max, 0 at σ_min
