"""Tests for diffusion_book.score_matching: the score-matching losses, Jacobian traces, ε→score; bad input."""
import math

import pytest
import torch

from diffusion_book.data import ring_mixture
from diffusion_book.ddpm import MLPDenoiser
from diffusion_book.parameterization import l_simple
from diffusion_book.schedules import linear_beta_schedule
from diffusion_book.score_matching import (dsm_loss, eps_model_to_score, explicit_score_matching_loss,
                                           implicit_score_matching_loss, jacobian_trace, sliced_score_matching_loss)

torch.set_num_threads(1)
D64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_exact_gmm_score_matches_autograd_of_log_density():
    gm = ring_mixture()
    x = gm.sample(200, generator=gen(0)).requires_grad_(True)
    for ab in (1.0, 0.3):
        (g,) = torch.autograd.grad(gm.log_prob(x, ab).sum(), x)
        torch.testing.assert_close(g, gm.score(x.detach(), ab), atol=1e-10, rtol=1e-10)


def test_jacobian_trace_linear_exact_and_hutchinson_unbiased():
    A = torch.randn(5, 5, generator=gen(1), dtype=D64)
    x = torch.randn(7, 5, generator=gen(2), dtype=D64)
    f = lambda z: z @ A.T  # noqa: E731
    torch.testing.assert_close(jacobian_trace(f, x), A.trace().expand(7), atol=1e-12, rtol=1e-12)
    R = 3000
    est = jacobian_trace(f, x[:1].repeat(R, 1), hutchinson=True, generator=gen(3))  # (R,)
    assert abs(est.mean() - A.trace()) < 4.5 * est.std() / math.sqrt(R)
    # a field that ignores x has zero trace
    assert torch.equal(jacobian_trace(lambda z: torch.ones_like(z), x), torch.zeros(7, dtype=D64))


def test_ism_minus_esm_is_constant_for_gaussian():
    # p = N(0, I): ∇log p = −x, so J_ISM − J_ESM = −½ E‖x‖² per sample only in expectation; exact for s = −x + b.
    x = torch.randn(50_000, 2, generator=gen(4), dtype=D64)
    for f in (lambda z: -2 * z, lambda z: torch.tanh(z)):
        d = (implicit_score_matching_loss(f, x, reduction="none")
             - explicit_score_matching_loss(f, x, -x, reduction="none")).detach() + 0.5 * (x**2).sum(1)
        assert d.mean().abs() < 4 * d.std() / math.sqrt(len(d))


def test_losses_are_differentiable_in_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    x = torch.randn(16, 2, generator=gen(5), dtype=D64)
    for loss in (implicit_score_matching_loss(net, x), implicit_score_matching_loss(net, x, hutchinson=True, n_probes=2),
                 sliced_score_matching_loss(net, x, 2, gen(6)), dsm_loss(net, x, 0.5, gen(7))):
        net.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_dsm_optimum_is_noised_score_for_gaussian():
    # x ~ N(0, I), x̃ = x + σz ~ N(0, (1+σ²)I): the exact noised score attains J_DSM = ½ D (1/σ² − 1/(1+σ²)).
    sigma, x = 0.5, torch.randn(200_000, 2, generator=gen(8), dtype=D64)
    val = dsm_loss(lambda z: -z / (1 + sigma**2), x, sigma, gen(9))
    torch.testing.assert_close(val, torch.tensor(0.5 * 2 * (1 / sigma**2 - 1 / (1 + sigma**2)), dtype=D64),
                               rtol=0.02, atol=0)


def test_l_simple_is_weighted_dsm():
    sched = linear_beta_schedule(100)
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=16, depth=1).double()
    score = eps_model_to_score(net, sched)
    x0 = torch.randn(64, 2, generator=gen(10), dtype=D64)
    t = torch.randint(0, 100, (64,), generator=gen(11))
    eps = torch.randn(64, 2, generator=gen(12), dtype=D64)
    ab = sched.alpha_bars[t]
    with torch.no_grad():
        a = l_simple(lambda x, tt: net(x, tt), sched, x0, t=t, noise=eps, reduction="none")
        b = dsm_loss(lambda x: score(x, t), x0, (1 - ab).sqrt(), scale=ab.sqrt(), noise=eps, reduction="none")
    torch.testing.assert_close(a, (1 - ab) * b, rtol=1e-10, atol=0)  # λ_t = 2(1−ᾱ_t)/D with D = 2


def test_eps_model_to_score_matches_oracle():
    gm, sched = ring_mixture(), linear_beta_schedule(1000)
    t = torch.tensor([5, 300, 900])
    x = torch.randn(3, 2, generator=gen(13), dtype=D64)
    ab = sched.alpha_bars[t]
    s = eps_model_to_score(lambda x_t, tt: gm.eps_oracle(x_t, sched.alpha_bars[tt.long()]), sched)(x, t)
    torch.testing.assert_close(s, gm.score(x, ab), atol=1e-10, rtol=1e-10)


def test_bad_input():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="sigma must be finite and positive"):
        dsm_loss(lambda z: -z, x, -0.1)
    with pytest.raises(ValueError, match="sigma must be finite and positive"):
        dsm_loss(lambda z: -z, x, float("nan"))
    with pytest.raises(ValueError, match="sigma must be a number or have shape"):
        dsm_loss(lambda z: -z, x, torch.ones(3))
    with pytest.raises(ValueError, match="noise must have shape"):
        dsm_loss(lambda z: -z, x, 0.5, noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="score_fn must return a tensor"):
        dsm_loss(lambda z: z.sum(1), x, 0.5)
    with pytest.raises(ValueError, match="true_score must have shape"):
        explicit_score_matching_loss(lambda z: -z, x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        implicit_score_matching_loss(lambda z: -z, torch.zeros(4, 1, 2))
    with pytest.raises(ValueError, match="x contains NaN"):
        sliced_score_matching_loss(lambda z: -z, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="n_projections must be a positive integer"):
        sliced_score_matching_loss(lambda z: -z, x, 0)
    with pytest.raises(ValueError, match="n_probes must be a positive integer"):
        jacobian_trace(lambda z: -z, x, hutchinson=True, n_probes=0)
    with pytest.raises(ValueError, match="reduction must be"):
        explicit_score_matching_loss(lambda z: -z, x, x, reduction="sum")
    sched = linear_beta_schedule(10)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        eps_model_to_score(lambda x_t, t: x_t, sched)(x, torch.tensor([10] * 4))
    with pytest.raises(ValueError, match="eps_model must return a tensor"):
        eps_model_to_score(lambda x_t, t: x_t[:, :1], sched)(x, torch.tensor([1] * 4))


def test_eps_model_to_score_passes_the_network_time():
    # the ε-network inside the score model sees a (B,) float t (float64 for float64 x), whatever form t had
    gm, sched = ring_mixture(), linear_beta_schedule(1000)
    seen = {}

    def eps_model(x_t, tt):
        seen["t"] = tt
        return gm.eps_oracle(x_t, sched.alpha_bars[tt.long()])

    x = torch.randn(3, 2, generator=gen(14), dtype=D64)
    score_model = eps_model_to_score(eps_model, sched)
    ref = score_model(x, torch.tensor([5, 300, 900]))
    assert seen["t"].dtype == torch.float64 and seen["t"].shape == (3,)
    torch.testing.assert_close(score_model(x, torch.tensor([5.0, 300.0, 900.0])), ref, atol=0, rtol=0)
    score_model(x.float(), torch.tensor([5, 300, 900]))
    assert seen["t"].dtype == torch.float32
