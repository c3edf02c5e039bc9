"""Tests for diffusion_book.samplers: spacings, σ↔t, DDIM (η = 1 ≡ DDPM, η = 0 ≡ Euler), inversion, convergence
orders on an exact Gaussian, callbacks/dtypes, and bad input. Parity with diffusers lives in test_parity_samplers.py."""
import math

import numpy as np
import pytest
import torch

from diffusion_book.data import GaussianMixture, ring_mixture
from diffusion_book.ddpm import ddpm_sample
from diffusion_book.samplers import (SPACINGS, ddim_invert, ddim_sample, ddim_sigma, dpm_solver_pp_2m, euler_sample,
                                     heun_sample, karras_sigmas, oracle_eps_model, sampling_sigmas, sampling_timesteps,
                                     schedule_sigmas, sigma_to_t, t_to_sigma)
from diffusion_book.schedules import cosine_beta_schedule, linear_beta_schedule

torch.set_num_threads(1)
D64 = torch.float64
SCHED = linear_beta_schedule(1000)
SCHED50 = linear_beta_schedule(50, beta_start=2e-3, beta_end=0.3)
GM = ring_mixture()
STDS = torch.tensor([[0.2, 0.5, 1.0, 2.0]], dtype=D64)
GAUSS = GaussianMixture(torch.zeros(1, 4, dtype=D64), STDS)
SAMPLERS = [ddim_sample, euler_sample, heun_sample, dpm_solver_pp_2m]


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T,steps,spacing,expected", [
    (10, 3, "leading", [6, 3, 0]), (10, 3, "trailing", [9, 6, 2]), (10, 3, "linspace", [9, 4, 0]),
    (10, 10, "leading", list(range(9, -1, -1))), (10, 10, "trailing", list(range(9, -1, -1))),
    (10, 1, "leading", [0]), (10, 1, "trailing", [9]), (10, 1, "linspace", [0]),
    (7, 4, "leading", [3, 2, 1, 0]), (7, 4, "trailing", [6, 4, 3, 1]), (7, 4, "linspace", [6, 4, 2, 0]),
    (1000, 10, "leading", list(range(900, -1, -100))), (1000, 10, "trailing", list(range(999, 0, -100))),
])
def test_spacing_values(T, steps, spacing, expected):
    ts = sampling_timesteps(T, steps, spacing)
    assert ts.dtype == torch.long and ts.tolist() == expected


@pytest.mark.parametrize("spacing", SPACINGS)
def test_spacings_are_strictly_decreasing_and_exactly_steps_long(spacing):
    for T in (13, 100, 1000):
        for steps in range(1, T + 1, max(1, T // 97)):
            ts = sampling_timesteps(T, steps, spacing)
            assert len(ts) == steps and ts.min() >= 0 and ts.max() <= T - 1
            assert (ts[1:] < ts[:-1]).all()
    assert len(sampling_timesteps(1000, 61, "trailing")) == 61  # diffusers' np.arange yields 62 steps here


def test_sigma_conversions():
    sig = schedule_sigmas(SCHED)
    steps = torch.arange(1000, dtype=D64)
    torch.testing.assert_close(t_to_sigma(SCHED, steps), sig, atol=0, rtol=1e-14)
    torch.testing.assert_close(sigma_to_t(SCHED, sig), steps, atol=1e-9, rtol=0)
    assert isinstance(t_to_sigma(SCHED, 10.5), float) and isinstance(sigma_to_t(SCHED, 1.0), float)
    assert t_to_sigma(SCHED, 10.5) == pytest.approx(0.5 * (sig[10] + sig[11]).item(), rel=1e-14)
    assert sigma_to_t(SCHED, 1e-6) == 0.0 and sigma_to_t(SCHED, 1e6) == 999.0  # clipped like diffusers
    ks = karras_sigmas(0.01, 80.0, 5)
    assert ks[0].item() == pytest.approx(80.0) and ks[-1].item() == pytest.approx(0.01) and (ks.diff() < 0).all()


def test_oracle_is_chapter01_eps_at_integer_t_and_continuous_between():
    eps = oracle_eps_model(GM, SCHED)
    x = GM.sample(6, generator=gen(0))
    t = torch.tensor([0, 5, 100, 500, 998, 999])
    torch.testing.assert_close(eps(x, t), GM.eps_oracle(x, SCHED.alpha_bars[t]), atol=1e-12, rtol=1e-12)
    a, b = eps(x, torch.full((6,), 400.0)), eps(x, torch.full((6,), 401.0))
    mid = eps(x, torch.full((6,), 400.5))
    assert ((mid - a).abs() <= (b - a).abs() + 1e-12).all()


def test_ddim_eta1_all_steps_equals_ddpm_sample():
    eps = oracle_eps_model(GM, SCHED50)
    x_T = torch.randn(300, 2, generator=gen(0), dtype=D64)
    for clip in (None, (-1.0, 1.0)):
        a = ddpm_sample(eps, SCHED50, x_T, generator=gen(1), clip_x0=clip)
        b = ddim_sample(eps, SCHED50, x_T, steps=50, eta=1.0, generator=gen(1), clip_x0=clip)
        torch.testing.assert_close(b, a, atol=1e-11, rtol=1e-11)
    assert ddim_sigma(0.5, 0.6, 1.0) ** 2 == pytest.approx((1 - 0.6) / (1 - 0.5) * (1 - 0.5 / 0.6), rel=1e-14)


def test_ddim_eta0_is_euler_and_dpm_order1_is_ddim():
    eps = oracle_eps_model(GM, SCHED)
    x_T = torch.randn(200, 2, generator=gen(2), dtype=D64)
    sig = schedule_sigmas(SCHED)
    for spacing in SPACINGS:
        grid = torch.cat([sig[sampling_timesteps(1000, 12, spacing)], torch.zeros(1, dtype=D64)])
        ref = ddim_sample(eps, SCHED, x_T, steps=12, spacing=spacing)
        torch.testing.assert_close(euler_sample(eps, SCHED, x_T, sigmas=grid), ref, atol=1e-11, rtol=1e-11)
        torch.testing.assert_close(dpm_solver_pp_2m(eps, SCHED, x_T, sigmas=grid, order=1), ref, atol=1e-11, rtol=1e-11)


def test_inversion_round_trip_on_gaussian_oracle():
    eps = oracle_eps_model(GAUSS, SCHED)
    x0 = GAUSS.sample(256, generator=gen(3))
    errs = []
    for n in (50, 100, 200):
        z = ddim_invert(eps, SCHED, x0, steps=n, spacing="trailing")
        errs.append(((ddim_sample(eps, SCHED, z, steps=n, spacing="trailing") - x0).abs().max() / STDS.max()).item())
    assert errs[-1] < 3e-2, errs
    assert all(1.6 < errs[i] / errs[i + 1] < 2.4 for i in range(2)), errs  # first order in the steps


def _exact_then_project(x_T, grid):
    "Exact PF-ODE flow from σ_0 to the last nonzero node, then the x̂_0 projection every sampler ends with."
    s0, s_last = grid[0].item(), grid[-2].item()
    xbar = x_T * math.sqrt(s0**2 + 1) * ((STDS**2 + s_last**2) / (STDS**2 + s0**2)).sqrt()
    return xbar * STDS**2 / (STDS**2 + s_last**2)


@pytest.mark.parametrize("name,run,grid,lo,hi", [
    ("ddim", lambda e, x, n: ddim_sample(e, SCHED, x, steps=n, spacing="linspace"),
     lambda n: torch.cat([schedule_sigmas(SCHED)[sampling_timesteps(1000, n, "linspace")], torch.zeros(1, dtype=D64)]),
     0.9, 1.15),
    ("euler", lambda e, x, n: euler_sample(e, SCHED, x, steps=n, spacing="linspace"),
     lambda n: sampling_sigmas(SCHED, n, "linspace")[0], 0.9, 1.15),
    ("heun", lambda e, x, n: heun_sample(e, SCHED, x, steps=n, spacing="linspace"),
     lambda n: sampling_sigmas(SCHED, n, "linspace")[0], 1.85, 2.3),
    ("dpm++2m karras", lambda e, x, n: dpm_solver_pp_2m(e, SCHED, x, steps=n, sigmas="karras"),
     lambda n: sampling_sigmas(SCHED, n, sigmas="karras", solver="dpm")[0], 1.8, 2.3),
])
def test_convergence_order_on_exact_gaussian(name, run, grid, lo, hi):
    eps = oracle_eps_model(GAUSS, SCHED)
    x_T = torch.randn(32, 4, generator=gen(4), dtype=D64)
    ns = [32, 64, 128, 256]
    errs = [(run(eps, x_T, n) - _exact_then_project(x_T, grid(n))).abs().max().item() for n in ns]
    order = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert lo < order < hi, (name, order, errs)


def test_heun_nfe_callbacks_dtype_and_device():
    calls = []
    eps = oracle_eps_model(GM, SCHED)
    counting = lambda x, t: (calls.append(t), eps(x, t))[1]
    x_T = torch.randn(8, 2, generator=gen(5))  # float32
    seen = []
    out = heun_sample(counting, SCHED, x_T, steps=6, callback=lambda i, t, x, x0: seen.append((i, x)))
    assert len(calls) == 11 and [i for i, _ in seen] == list(range(6))
    assert out.dtype == torch.float32 and calls[0].dtype == torch.float32 and calls[0].shape == (8,)
    torch.testing.assert_close(seen[-1][1], out)
    for sampler in SAMPLERS:
        states = []
        y = sampler(eps, SCHED, x_T, steps=5, callback=lambda i, t, x, x0: states.append(x))
        assert y.dtype == x_T.dtype and y.device == x_T.device and len(states) == 5
        torch.testing.assert_close(states[-1], y)


def _recorded_times(sampler, x, **kw):
    "Run `sampler` with an ε-model that records every t it is given."
    eps, ts = oracle_eps_model(GM, SCHED), []
    sampler(lambda x_, t: (ts.append(t), eps(x_, t))[1], SCHED, x, **kw)
    return ts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampler,kw,fractional", [  # fractional: False = integer-valued, True = some fractional
    (ddim_sample, {}, False), (ddim_sample, dict(eta=1.0, generator=gen(0)), False), (ddim_invert, {}, False),
    (ddpm_sample, {}, False),  # chapter 07's sampler honours the same contract
    (euler_sample, {}, False), (heun_sample, {}, False), (dpm_solver_pp_2m, {}, False),  # trailing: integer steps
    (euler_sample, dict(sigmas="karras"), True), (heun_sample, dict(spacing="linspace"), True),
    (dpm_solver_pp_2m, dict(sigmas="karras", round_timesteps=False), True),
])
def test_time_contract_every_sampler_passes_a_floating_B_vector_of_steps(sampler, kw, fractional, dtype):
    "The network-time contract: t is a (B,) floating tensor (float64 iff x is float64) of steps in [0, T−1]."
    x = torch.randn(6, 2, generator=gen(9), dtype=dtype)
    ts = _recorded_times(sampler, x, **({} if sampler is ddpm_sample else dict(steps=7)), **kw)
    assert ts, "the ε-model was never called"
    for t in ts:
        assert isinstance(t, torch.Tensor) and t.shape == (6,) and t.dtype == dtype and t.device == x.device, (t.dtype, t.shape)
        assert (t == t[0]).all() and 0 <= t[0] <= SCHED.T - 1
    integer = [torch.equal(t, t.round()) for t in ts]
    assert (not all(integer)) if fractional else all(integer), integer


def test_one_default_spacing_trailing_for_every_sampler():
    import inspect
    for fn in (ddim_sample, ddim_invert, euler_sample, heun_sample, dpm_solver_pp_2m, sampling_timesteps, sampling_sigmas):
        assert inspect.signature(fn).parameters["spacing"].default == "trailing", fn.__name__
    eps, x = oracle_eps_model(GM, SCHED), torch.randn(20, 2, generator=gen(3), dtype=D64)
    # with the default, Euler's grid is DDIM's: the two samplers agree to round-off
    torch.testing.assert_close(euler_sample(eps, SCHED, x, steps=9), ddim_sample(eps, SCHED, x, steps=9), atol=1e-11, rtol=1e-11)


def test_stochastic_ddim_is_reproducible_and_deterministic_samplers_ignore_generator():
    eps = oracle_eps_model(GM, SCHED)
    x_T = torch.randn(50, 2, generator=gen(6), dtype=D64)
    a = ddim_sample(eps, SCHED, x_T, steps=10, eta=0.7, generator=gen(7))
    b = ddim_sample(eps, SCHED, x_T, steps=10, eta=0.7, generator=gen(7))
    c = ddim_sample(eps, SCHED, x_T, steps=10, eta=0.7, generator=gen(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(dpm_solver_pp_2m(eps, SCHED, x_T, steps=8, generator=gen(1)),
                       dpm_solver_pp_2m(eps, SCHED, x_T, steps=8, generator=gen(2)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bad_steps_and_spacing(sampler):
    eps = oracle_eps_model(GM, SCHED)
    x = torch.randn(3, 2, dtype=D64)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, T=1000\]"):
        sampler(eps, SCHED, x, steps=1001)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, T=1000\]"):
        sampler(eps, SCHED, x, steps=0)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, T=1000\]"):
        sampler(eps, SCHED, x, steps=-3)
    with pytest.raises(TypeError, match="steps must be an integer"):
        sampler(eps, SCHED, x, steps=2.5)
    with pytest.raises(ValueError, match="unknown spacing 'cosine'"):
        sampler(eps, SCHED, x, steps=5, spacing="cosine")
    with pytest.raises(ValueError, match="eps_model returned"):
        sampler(lambda x, t: x[:, :1], SCHED, x, steps=3)
    with pytest.raises(TypeError):
        sampler(eps, SCHED, x.long(), steps=3)


def test_bad_eta_sigmas_and_conversions():
    eps = oracle_eps_model(GM, SCHED)
    x = torch.randn(3, 2, dtype=D64)
    for eta in (-0.1, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
            ddim_sample(eps, SCHED, x, steps=5, eta=eta)
    with pytest.raises(ValueError, match="too large"):
        ddim_sample(eps, SCHED, x, steps=5, eta=5.0)
    with pytest.raises(ValueError, match="unknown spacing"):
        sampling_timesteps(1000, 5, "Leading")
    with pytest.raises(ValueError, match=r"steps must lie in \[1, T=10\]"):
        sampling_timesteps(10, 11)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, T=1000\]"):
        ddim_invert(eps, SCHED, x, steps=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        euler_sample(eps, SCHED, x, sigmas=[1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="schedule's range"):
        heun_sample(eps, SCHED, x, sigmas=[200.0, 0.0])
    with pytest.raises(ValueError, match="sigmas must be None, 'karras'"):
        dpm_solver_pp_2m(eps, SCHED, x, sigmas="exponential")
    with pytest.raises(ValueError, match="repeat a step"):
        dpm_solver_pp_2m(eps, SCHED, x, steps=1000, spacing="linspace")
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        dpm_solver_pp_2m(eps, SCHED, x, steps=5, order=3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\]"):
        t_to_sigma(SCHED, torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        sigma_to_t(SCHED, -1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(0.0, 1.0, 5)
    assert dpm_solver_pp_2m(eps, SCHED, x, steps=1000, spacing="trailing").shape == x.shape  # the fix the error names
    assert sampling_timesteps(1000, 1000, "linspace").tolist() == list(range(999, -1, -1))
    assert cosine_beta_schedule(100).T == len(schedule_sigmas(cosine_beta_schedule(100)))
