"""Tests for diffusion_book.sde: SDE marginals, exact noised-mixture scores, samplers, PF-ODE likelihood; bad input."""
import math

import pytest
import torch

from diffusion_book.data import GaussianMixture, ring_mixture
from diffusion_book.sde import (SubVPSDE, VESDE, VPSDE, euler_maruyama, mixture_marginal, mixture_marginal_log_prob,
                                mixture_marginal_score, mixture_score_fn, pf_ode_log_likelihood, probability_flow_encode,
                                probability_flow_sample, reverse_sde_sample, time_grid)

torch.set_num_threads(1)
D64 = torch.float64
SDES = (VPSDE(), SubVPSDE(), VESDE())


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_closed_form_marginals():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=D64)
    vp, sub, ve = SDES
    B = 0.1 * t + 0.5 * 19.9 * t**2
    m, s = vp.marginal(t)
    torch.testing.assert_close(m, torch.exp(-B / 2), atol=1e-14, rtol=0)
    torch.testing.assert_close(m**2 + s**2, torch.ones(3, dtype=D64), atol=1e-14, rtol=0)  # variance preserving
    m2, s2 = sub.marginal(t)
    torch.testing.assert_close(m2, m, atol=0, rtol=0)
    torch.testing.assert_close(s2, 1 - torch.exp(-B), atol=1e-14, rtol=0)
    m3, s3 = ve.marginal(t)
    sigma = 0.01 * 5000.0**t
    torch.testing.assert_close(s3**2, sigma**2 - 0.01**2, atol=1e-10, rtol=1e-12)
    assert torch.equal(m3, torch.ones(3, dtype=D64))


def test_marginal_variance_solves_the_moment_ode():
    # d s²/dt = −b s² + g² for dx = −½ b x dt + g dW: check by central differences at interior times.
    t, h = torch.linspace(0.05, 0.95, 19, dtype=D64), 1e-6
    for sde in SDES:
        var = lambda u: sde.marginal(u)[1] ** 2  # noqa: E731
        dvar = (var(t + h) - var(t - h)) / (2 * h)
        b = -2 * sde.drift(torch.ones(19, 1, dtype=D64), t)[:, 0]  # b(t)
        torch.testing.assert_close(dvar, -b * var(t) + sde.diffusion(t) ** 2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_euler_maruyama_matches_closed_form_marginal(sde):
    n, x0 = 20_000, torch.tensor([1.0, -2.0], dtype=D64)
    xt = euler_maruyama(sde, x0.expand(n, 2), t1=0.5, steps=400, generator=gen(0))
    m, s = (v.item() for v in sde.marginal(0.5))
    se_mean, se_var = xt.std(0) / math.sqrt(n), xt.var(0) * math.sqrt(2 / (n - 1))
    assert ((xt.mean(0) - m * x0).abs() < 4 * se_mean).all()
    # EM's own O(h) bias in the variance is at most ~1.1 % here (VE); allow for it
    assert ((xt.var(0) - s**2).abs() < 4 * se_var + 0.011 * s**2).all()


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_exact_mixture_score_is_autograd_of_log_density(sde):
    gm, g = ring_mixture(), gen(1)
    x0 = gm.sample(300, generator=g)
    for t in (0.0, 0.2, 1.0, torch.rand(300, generator=g, dtype=D64)):
        m, s = sde.marginal(t)
        mb, sb = (v.reshape(-1, 1) if v.ndim else v for v in (m, s))
        x = (mb * x0 + sb * torch.randn(x0.shape, generator=g, dtype=D64)).requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture_marginal_log_prob(gm, x, m, s).sum(), x)
        torch.testing.assert_close(mixture_marginal_score(gm, x.detach(), m, s), grad, atol=1e-10, rtol=1e-10)
        if m.ndim == 0:  # also the explicitly noised mixture
            torch.testing.assert_close(mixture_marginal_log_prob(gm, x.detach(), m, s),
                                       mixture_marginal(gm, m, s).log_prob(x.detach()), atol=1e-10, rtol=1e-10)


def test_vp_score_is_chapter_01_score_and_score_fn_batches_times():
    gm, vp, g = ring_mixture(), VPSDE(), gen(2)
    x = gm.sample(100, generator=g)
    t = torch.rand(100, generator=g, dtype=D64)
    score = mixture_score_fn(gm, vp)
    torch.testing.assert_close(score(x, t), gm.score(x, vp.marginal(t)[0] ** 2), atol=1e-12, rtol=1e-12)
    same_t = torch.full((100,), 0.4, dtype=D64)  # the scalar fast path gives the same values
    torch.testing.assert_close(score(x, same_t), gm.score(x, vp.marginal(0.4)[0].item() ** 2), atol=1e-12, rtol=1e-12)


def gaussian_1d(mu=0.7, s=0.4):
    return GaussianMixture(torch.tensor([[mu]], dtype=D64), s)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_pf_ode_likelihood_of_a_1d_gaussian(sde):
    # data N(μ, s²): p_t = N(m μ, m² s² + σ_t²), the score is linear; the exact p_1 closes the formula.
    gm, mu, s = gaussian_1d(), 0.7, 0.4
    score = lambda x, t: -(x - sde.marginal(t)[0][:, None] * mu) / (  # noqa: E731
        sde.marginal(t)[0][:, None] ** 2 * s**2 + sde.marginal(t)[1][:, None] ** 2)
    x = torch.linspace(-1.5, 3.0, 25, dtype=D64)[:, None]
    m1, s1 = sde.marginal(1.0)
    exact_p1 = lambda z: mixture_marginal_log_prob(gm, z, m1, s1)  # noqa: E731
    spacing = "uniform" if isinstance(sde, VESDE) else "quadratic"
    res = pf_ode_log_likelihood(sde, score, x, steps=100, method="rk4", t_min=0.0, spacing=spacing,
                                prior_log_prob=exact_p1)
    true = -0.5 * ((x[:, 0] - mu) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
    # RK4, 100 steps: VP/sub-VP reach ~3e-7 nats; VE's flow grows like e^{8.5 t} near t = 1 and reaches ~5e-5
    torch.testing.assert_close(res.log_p, true, atol=2e-4 if isinstance(sde, VESDE) else 1e-5, rtol=0)
    torch.testing.assert_close(res.log_p, res.prior_log_p + res.delta, atol=1e-12, rtol=0)
    # Hutchinson in 1-D: the Rademacher probe gives v² = 1, so the estimate is exact
    hut = pf_ode_log_likelihood(sde, score, x, steps=100, method="rk4", t_min=0.0, spacing=spacing,
                                prior_log_prob=exact_p1, divergence="hutchinson", generator=gen(3))
    torch.testing.assert_close(hut.log_p, res.log_p, atol=1e-10, rtol=0)


def test_hutchinson_likelihood_is_unbiased_in_4d():
    gm = GaussianMixture(torch.tensor([[1.0, 0.0, -1.0, 0.5], [-1.0, 0.5, 0.0, 0.0]], dtype=D64), 0.6)
    vp, g = VPSDE(), gen(4)
    score = mixture_score_fn(gm, vp)
    x = gm.sample(4, generator=g)
    kw = dict(steps=20, method="heun", t_min=0.0)
    exact = pf_ode_log_likelihood(vp, score, x, **kw).log_p
    R = 400
    est = pf_ode_log_likelihood(vp, score, x.repeat(R, 1), divergence="hutchinson", generator=g, **kw).log_p
    est = est.reshape(R, 4)
    assert ((est.mean(0) - exact).abs() < 4.5 * est.std(0) / math.sqrt(R)).all()


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_reverse_sde_and_pf_ode_sample_a_1d_gaussian(sde):
    # data N(μ, s²), exact linear score; start from the exact p_1 so only the discretization is left.
    gm, mu, s, n = gaussian_1d(), 0.7, 0.4, 5000
    score = mixture_score_fn(gm, sde)
    m1, s1 = (v.item() for v in sde.marginal(1.0))
    x_T = mixture_marginal(gm, m1, s1).sample(n, generator=gen(10))
    for x0 in (reverse_sde_sample(sde, score, x_T, steps=500, t_min=0.0, generator=gen(11)),
               probability_flow_sample(sde, score, x_T, steps=50, method="rk4", t_min=0.0)):
        se_mean, se_var = s / math.sqrt(n), s**2 * math.sqrt(2 / (n - 1))
        assert abs(x0.mean() - mu) < 4 * se_mean
        assert abs(x0.var() - s**2) < 4 * se_var + 0.02 * s**2  # + EM's O(h) bias (measured < 0.6 % at 500 steps)


def test_ode_solvers_have_their_order():
    # For Gaussian data the PF-ODE map is affine: x_1 = m μ + (x_0 − μ) √(m² s² + s_1²)/s. Doubling the steps must
    # divide the error by 2^p: p = 1 (Euler), 2 (Heun), 4 (RK4).
    gm, mu, s, vp = gaussian_1d(), 0.7, 0.4, VPSDE()
    score = mixture_score_fn(gm, vp)
    x0 = torch.linspace(-1.0, 2.0, 7, dtype=D64)[:, None]
    m1, s1 = (v.item() for v in vp.marginal(1.0))
    exact = m1 * mu + (x0 - mu) * math.sqrt(m1**2 * s**2 + s1**2) / s
    for method, order in (("euler", 1), ("heun", 2), ("rk4", 4)):
        e40, e80 = ((probability_flow_encode(vp, score, x0, steps=n, method=method, t_min=0.0) - exact).abs().max()
                    for n in (40, 80))
        assert abs(e40 / e80 / 2**order - 1) < 0.2, (method, (e40 / e80).item())


def test_samplers_run_and_pf_ode_round_trip():
    gm, g = ring_mixture(), gen(5)
    for sde in SDES:
        score = mixture_score_fn(gm, sde)
        x0 = gm.sample(64, generator=g)
        z = probability_flow_encode(sde, score, x0, steps=40, method="rk4")
        back = probability_flow_sample(sde, score, z, steps=40, method="rk4")
        assert (back - x0).norm(dim=1).median() < 1e-3
        calls = []
        out = reverse_sde_sample(sde, score, sde.prior_sample((64, 2), generator=g, dtype=D64), steps=5, generator=g,
                                 callback=lambda i, t, x: calls.append(t))
        assert out.shape == (64, 2) and out.dtype == D64 and torch.isfinite(out).all()
        assert len(calls) == 5 and abs(calls[-1] - 1e-3) < 1e-15


def test_reverse_sde_is_reproducible_with_a_generator():
    gm, vp = ring_mixture(), VPSDE()
    score = mixture_score_fn(gm, vp)
    x_T = vp.prior_sample((32, 2), generator=gen(6), dtype=D64)
    a = reverse_sde_sample(vp, score, x_T, steps=20, generator=gen(7))
    b = reverse_sde_sample(vp, score, x_T, steps=20, generator=gen(7))
    assert torch.equal(a, b)


def test_time_grid():
    ts = time_grid(1.0, 0.0, 4, "quadratic")
    assert ts[0] == 1.0 and ts[-1] == 0.0 and all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[-2] - ts[-1] < ts[0] - ts[1]  # crowded near the small end
    assert time_grid(0.0, 1.0, 4) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_prior_log_prob():
    ve = VESDE(sigma_max=3.0)
    x = torch.randn(5, 2, 3, generator=gen(8), dtype=D64)
    ref = torch.distributions.Normal(torch.tensor(0.0, dtype=D64), torch.tensor(3.0, dtype=D64)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(ve.prior_log_prob(x), ref, atol=1e-12, rtol=1e-12)


def test_bad_input():
    vp, gm = VPSDE(), ring_mixture()
    score = mixture_score_fn(gm, vp)
    x = torch.zeros(4, 2, dtype=D64)
    with pytest.raises(ValueError, match="beta_min must be a finite number >= 0"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="need 0 <= beta_min <= beta_max"):
        SubVPSDE(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_max must be a finite number >= 0"):
        VESDE(sigma_max=-5.0)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        vp.marginal(-0.1)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        vp.diffusion(torch.tensor([0.5, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        vp.drift(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):
        vp.drift(x, torch.rand(3, dtype=D64))
    with pytest.raises(ValueError, match="must have shape"):
        mixture_marginal_score(gm, torch.zeros(4, 3, dtype=D64), 1.0, 0.1)
    with pytest.raises(ValueError, match="std must be finite and >= 0"):
        mixture_marginal_log_prob(gm, x, 1.0, -0.1)
    with pytest.raises(ValueError, match="mean_coef must be a number or have shape"):
        mixture_marginal_score(gm, x, torch.ones(3, dtype=D64), 0.1)
    with pytest.raises(ValueError, match="need mean_coef > 0"):
        mixture_marginal(gm, 0.0, 1.0)
    with pytest.raises(ValueError, match="score_fn must return a tensor"):
        probability_flow_sample(vp, lambda z, t: z.sum(1), x, steps=2)
    with pytest.raises(ValueError, match="method must be one of"):
        pf_ode_log_likelihood(vp, score, x, method="dopri5")
    with pytest.raises(ValueError, match="divergence must be"):
        pf_ode_log_likelihood(vp, score, x, divergence="skilling")
    with pytest.raises(ValueError, match="n_probes must be a positive integer"):
        pf_ode_log_likelihood(vp, score, x, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max <= 1"):
        probability_flow_encode(vp, score, x, t_min=0.0, t_max=1.5)
    with pytest.raises(ValueError, match="spacing must be one of"):
        reverse_sde_sample(vp, score, x, steps=3, spacing="log")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        reverse_sde_sample(vp, score, x, steps=2.5)
    with pytest.raises(ValueError, match="x_T contains NaN"):
        reverse_sde_sample(vp, score, torch.full((4, 2), float("nan")), steps=2)
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        euler_maruyama(vp, [[0.0, 0.0]], steps=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_contract_score_fn_gets_a_B_vector_of_continuous_times(dtype):
    "Every integrator of chapter 10 calls score_fn(x, t) with t a (B,) floating tensor of x's dtype, in [0, 1]."
    gm, vp = ring_mixture(), VPSDE()
    score, seen = mixture_score_fn(gm, vp), []

    def recording(x, t):
        seen.append(t)
        return score(x.double(), t.double()).to(x.dtype)

    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    reverse_sde_sample(vp, recording, x_T, steps=3, generator=torch.Generator().manual_seed(1))
    for method in ("euler", "heun", "rk4"):
        probability_flow_sample(vp, recording, x_T, steps=3, method=method)
    probability_flow_encode(vp, recording, x_T, steps=3)
    assert len(seen) > 10
    for t in seen:
        assert isinstance(t, torch.Tensor) and t.shape == (5,) and t.dtype == dtype, (t.shape, t.dtype)
        assert (t == t[0]).all() and 0 <= t[0] <= 1
