"""Tests for diffusion_book.learned_variances: interpolation endpoints, respacing, the stop-gradient, the Gaussian
optimum against Monte Carlo, the NLL estimator, and bad input."""
import math

import pytest
import torch

from diffusion_book.ddpm import ddpm_sample
from diffusion_book.elbo import bits_per_dim, posterior_log_variance_clipped, posterior_variance, vlb_terms
from diffusion_book.learned_variances import (LearnedVarianceMLP, even_timesteps, hybrid_loss,
                                              interpolated_log_variance, learned_reverse_mean_var,
                                              learned_variance_config, nll_bits_per_dim,
                                              optimal_reverse_variance_gaussian, respace_schedule,
                                              sample_learned_variance, split_model_output, vlb_term)
from diffusion_book.schedules import cosine_beta_schedule, linear_beta_schedule

torch.set_num_threads(1)
D64 = torch.float64
LIN = linear_beta_schedule(1000)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_mlp(dim=3):
    torch.manual_seed(0)
    return LearnedVarianceMLP(dim=dim, hidden=16, depth=2).double()


# ---------------------------------------------------------------- interpolation and the network contract
@pytest.mark.parametrize("sched", [LIN, cosine_beta_schedule(200)])
def test_interpolation_endpoints(sched):
    t = torch.arange(sched.T)
    ones = torch.ones(sched.T, 2, 2, dtype=D64)
    lo, hi = posterior_log_variance_clipped(sched), sched.betas.log()
    torch.testing.assert_close(interpolated_log_variance(sched, -ones, t)[:, 0, 0], lo, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(interpolated_log_variance(sched, ones, t)[:, 1, 1], hi, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(interpolated_log_variance(sched, 0 * ones, t, raw=False)[:, 0, 1], lo, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(interpolated_log_variance(sched, ones, t, raw=False)[:, 0, 1], hi, atol=1e-12, rtol=1e-12)
    # no clamping: r = 3 extrapolates (documented behaviour, as in the paper)
    torch.testing.assert_close(interpolated_log_variance(sched, 3 * ones, t)[:, 0, 0], 2 * hi - lo, atol=1e-12, rtol=1e-12)


def test_interpolation_keeps_dtype_and_shape():
    v = torch.zeros(4, 1, 8, 8)
    out = interpolated_log_variance(LIN, v, torch.tensor([0, 1, 500, 999]))
    assert out.shape == v.shape and out.dtype == torch.float32


def test_split_model_output():
    out = torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)
    eps, r = split_model_output(out, torch.zeros(2, 2, 3))
    torch.testing.assert_close(eps, out[:, :2])
    torch.testing.assert_close(r, out[:, 2:])
    with pytest.raises(ValueError, match="2·C channels"):
        split_model_output(torch.zeros(2, 3, 3), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="2·C channels"):
        split_model_output(torch.zeros(2, 3, 3))  # odd channel count


# ---------------------------------------------------------------- respacing
@pytest.mark.parametrize("sched", [LIN, cosine_beta_schedule(1000)])
@pytest.mark.parametrize("K", [1, 2, 7, 50, 1000])
def test_respaced_alpha_bar_equals_original(sched, K):
    sub, tmap = respace_schedule(sched, even_timesteps(sched.T, K))
    assert sub.T == K == len(tmap) and tmap[-1] == sched.T - 1
    torch.testing.assert_close(sub.alpha_bars, sched.alpha_bars[tmap], atol=1e-15, rtol=1e-12)


def test_respace_arbitrary_subset_and_identity():
    sub, tmap = respace_schedule(LIN, [3, 10, 400])
    assert tmap.tolist() == [3, 10, 400]
    torch.testing.assert_close(sub.alpha_bars, LIN.alpha_bars[[3, 10, 400]], atol=0, rtol=1e-12)
    torch.testing.assert_close(respace_schedule(LIN, range(1000))[0].betas, LIN.betas, atol=1e-15, rtol=1e-12)


def test_even_timesteps_matches_reference_spacing():
    # improved-diffusion's space_timesteps(T, [K]): round(i * (T - 1) / (K - 1))
    T, K = 1000, 25
    ref = [round(i * (T - 1) / (K - 1)) for i in range(K)]
    assert even_timesteps(T, K).tolist() == ref
    assert even_timesteps(T, 1).tolist() == [T - 1]


# ---------------------------------------------------------------- L_hybrid
class OutputLeaf(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = torch.nn.Parameter(out)

    def forward(self, x, t, cond=None):
        return self.out


def test_stop_gradient_vlb_gives_no_gradient_to_eps_half():
    x0 = (torch.randint(0, 17, (8, 1, 4, 4), generator=gen(0)) / 8.0 - 1).double()  # 17-level grid
    leaf = OutputLeaf(0.3 * torch.randn(8, 2, 4, 4, generator=gen(1), dtype=D64))
    total, parts = hybrid_loss(leaf, LIN, x0, generator=gen(2), num_levels=17)
    g_vlb = torch.autograd.grad(parts["vlb"], leaf.out, retain_graph=True)[0]
    g_simple = torch.autograd.grad(parts["simple"], leaf.out, retain_graph=True)[0]
    assert (g_vlb[:, :1] == 0).all() and g_vlb[:, 1:].abs().sum() > 0
    assert (g_simple[:, 1:] == 0).all() and g_simple[:, :1].abs().sum() > 0
    torch.testing.assert_close(total, parts["simple"] + 1e-3 * parts["vlb"])


def test_hybrid_vlb_part_sums_to_vlb_terms():
    model, sched = tiny_mlp(), linear_beta_schedule(40, 2e-3, 0.4)
    x0 = torch.tensor([[0.3, -1.2, 0.8]], dtype=D64)
    noise = torch.randn(40, 1, 3, generator=gen(3), dtype=D64)
    with torch.no_grad():
        _, parts = hybrid_loss(model, sched, x0.expand(40, 3), t=torch.arange(40), noise=noise[:, 0],
                               decoder="gaussian", reduction="none")
        ref = vlb_terms(lambda x, t: learned_reverse_mean_var(model, sched, x, t), sched, x0, noise=noise,
                        decoder="gaussian")
    torch.testing.assert_close(parts["vlb"].mean(), bits_per_dim(ref.terms.sum(), 3), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(parts["vlb"] / 40, bits_per_dim(ref.terms[0], 3), atol=1e-10, rtol=1e-10)


def test_vlb_term_decoder_and_kl_match_vlb_terms_per_step():
    x0 = (torch.randint(0, 17, (5, 1, 2, 2), generator=gen(4)) / 8.0 - 1).double()
    fn = lambda x, t: (0.9 * x, torch.full_like(x, -6.0))
    noise = torch.randn(1000, *x0.shape, generator=gen(5), dtype=D64)
    ref = vlb_terms(fn, LIN, x0, noise=noise, num_levels=17)
    for i in (0, 1, 37, 999):
        t = torch.full((5,), i)
        x_t = LIN.q_sample(x0, t, noise=noise[i])
        m, lv = fn(x_t, t)
        torch.testing.assert_close(vlb_term(LIN, x0, x_t, t, m, lv, num_levels=17), ref.terms[:, i], atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------- the Gaussian optimum
def test_optimal_gaussian_variance_endpoints_and_monte_carlo():
    opt = optimal_reverse_variance_gaussian(LIN, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(opt[:, 0], posterior_variance(LIN), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(opt[:, 1], LIN.betas, atol=1e-12, rtol=1e-12)
    n, s, g = 100_000, 0.4, gen(6)
    for i in (1, 30, 700):
        x_prev = LIN.q_sample(s * torch.randn(n, 1, generator=g, dtype=D64), torch.full((n,), i - 1), generator=g)
        x_t = LIN.q_step_sample(x_prev, torch.full((n,), i), generator=g)
        # best predictor of x_prev from x_t by least squares (no formula used), residual variance vs the optimum
        slope = (x_prev * x_t).mean() / (x_t * x_t).mean()
        resid = (x_prev - slope * x_t).var().item()
        want = optimal_reverse_variance_gaussian(LIN, s**2)[i].item()
        assert abs(resid - want) < 4 * want * math.sqrt(2 / n), (i, resid, want)


def test_optimal_variance_lies_between_bounds():
    opt = optimal_reverse_variance_gaussian(LIN, torch.linspace(0, 1, 11))  # (T, 11)
    assert (opt >= posterior_variance(LIN)[:, None] - 1e-15).all() and (opt <= LIN.betas[:, None] + 1e-15).all()
    assert (opt.diff(dim=1) >= -1e-15).all()  # increasing in s²


# ---------------------------------------------------------------- sampler
def test_sampler_all_steps_fixed_small_is_ddpm_sample():
    sched = linear_beta_schedule(100, 1e-3, 0.2)
    eps_model = lambda x, t: 0.5 * x * (1 - sched.alpha_bars[t.long()]).sqrt()[:, None]  # any deterministic ε-model
    x_T = torch.randn(64, 2, generator=gen(7), dtype=D64)
    a = ddpm_sample(eps_model, sched, x_T, generator=gen(8), variance="small")
    b = sample_learned_variance(eps_model, sched, x_T, generator=gen(8), variance="fixed_small")
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_sampler_learned_uses_model_steps_and_respaced_variance():
    calls = []
    model = lambda x, t: (calls.append(t[0].item()), torch.cat([torch.zeros_like(x), -torch.ones_like(x)], 1))[1]
    x_T = torch.randn(3, 1, 4, 4, generator=gen(9))
    seen = []
    out = sample_learned_variance(model, LIN, x_T, steps=5, generator=gen(10),
                                  callback=lambda k, t, x, x0: seen.append((k, t)))
    assert calls == [999.0, 749.0, 500.0, 250.0, 0.0] and [t for _, t in seen] == [999, 749, 500, 250, 0]
    assert out.shape == x_T.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------- NLL estimator
def test_nll_estimator_exact_when_all_steps_are_exact():
    sched = linear_beta_schedule(30, 3e-3, 0.5)
    x0 = torch.randn(6, 2, generator=gen(11), dtype=D64)
    fn = lambda x, t: (0.8 * x, torch.full_like(x, -2.0))
    est = nll_bits_per_dim(fn, sched, x0, exact_steps=30, strata=0, generator=gen(12), decoder="gaussian")
    g = gen(12)
    noise = torch.stack([torch.randn(x0.shape, generator=g, dtype=D64) for _ in range(30)])  # same draws, same order
    ref = vlb_terms(fn, sched, x0, noise=noise, decoder="gaussian")
    torch.testing.assert_close(est, bits_per_dim(ref.total, 2), atol=1e-10, rtol=1e-10)


def test_nll_estimator_is_unbiased_on_a_deterministic_integrand():
    # a "model" whose per-step cost grows with t: the stratified estimate must match the full sum on average
    sched = linear_beta_schedule(200, 1e-3, 0.1)
    x0 = torch.zeros(4000, 1, dtype=D64)
    fn = lambda x, t: (x, torch.zeros_like(x))
    full = nll_bits_per_dim(fn, sched, x0[:400], exact_steps=200, strata=0, generator=gen(13), decoder="gaussian")
    est = nll_bits_per_dim(fn, sched, x0, exact_steps=5, strata=10, generator=gen(14), decoder="gaussian")
    se = math.hypot(est.std() / math.sqrt(len(est)), full.std() / math.sqrt(len(full)))
    assert abs(est.mean() - full.mean()) < 4 * se


# ---------------------------------------------------------------- bad input
def test_bad_input():
    x = torch.zeros(2, 1, 8, 8)
    two = lambda x, t: torch.cat([x, x], 1)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=1000\]"):
        sample_learned_variance(two, LIN, x, steps=1001)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=1000\]"):
        sample_learned_variance(two, LIN, x, steps=0)
    with pytest.raises(ValueError, match=r"steps must be an integer"):
        even_timesteps(1000, 2.5)
    with pytest.raises(ValueError, match="2·C channels"):
        sample_learned_variance(lambda x, t: x, LIN, x, steps=3)
    with pytest.raises(ValueError, match="variance must be one of"):
        sample_learned_variance(two, LIN, x, steps=3, variance="large")
    with pytest.raises(ValueError, match="strictly increasing"):
        respace_schedule(LIN, [5, 3])
    with pytest.raises(ValueError, match="strictly increasing"):
        respace_schedule(LIN, [0, 1000])
    with pytest.raises(ValueError, match="non-empty"):
        respace_schedule(LIN, [])
    with pytest.raises(TypeError, match="NoiseSchedule"):
        respace_schedule(LIN.betas, [0])
    with pytest.raises(ValueError, match="NaN"):
        interpolated_log_variance(LIN, torch.tensor([[float("inf")]]), torch.zeros(1))
    with pytest.raises(ValueError, match="data_var"):
        optimal_reverse_variance_gaussian(LIN, -0.1)
    with pytest.raises(ValueError, match="decoder"):
        vlb_term(LIN, x, x, torch.zeros(2), x, x, decoder="laplace")
    with pytest.raises(ValueError, match="strata"):
        nll_bits_per_dim(lambda x, t: (x, x), LIN, x, exact_steps=10, strata=0)
    with pytest.raises(ValueError, match="lambda_vlb"):
        hybrid_loss(two, LIN, x, lambda_vlb=-1.0)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        learned_reverse_mean_var(two, LIN, x, torch.tensor([0, 1000]))


def test_config_is_chapter_07s_with_two_output_channels():
    from diffusion_book.ddpm import book_ddpm_config
    c, base = learned_variance_config("small", "cpu"), book_ddpm_config("small", "cpu")
    assert c["unet"]["out_channels"] == 2 * base["unet"]["in_channels"]
    assert {k: v for k, v in c["unet"].items() if k != "out_channels"} == \
           {k: v for k, v in base["unet"].items() if k != "out_channels"}
    assert c["num_levels"] == 17 and c["lambda_vlb"] == 1e-3 and c["schedule"] == base["schedule"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_contract_model_gets_a_floating_B_vector_of_integer_steps(dtype):
    "sample_learned_variance and learned_reverse_mean_var call model(x, t) with t (B,) float (float64 iff x is), integer-valued."
    sched, seen = linear_beta_schedule(50, 2e-3, 0.3), []

    def model(x, t):
        seen.append(t)
        return torch.cat([0.1 * x, torch.zeros_like(x)], 1)  # ε̂ and r = 0

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    sample_learned_variance(model, sched, x, steps=7, generator=torch.Generator().manual_seed(1))
    sub, tmap = respace_schedule(sched, even_timesteps(sched.T, 7))
    learned_reverse_mean_var(model, sub, x, torch.full((4,), 3), timestep_map=tmap)
    assert len(seen) == 8
    for t in seen:
        assert t.shape == (4,) and t.dtype == dtype and torch.equal(t, t.round()) and 0 <= t[0] <= sched.T - 1
    assert seen[-1][0] == tmap[3]  # the model sees its own training step, not the respaced index
