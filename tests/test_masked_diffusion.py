import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffusion_book.data import all_strings, arithmetic_language, markov_language
from diffusion_book.ddpm import TrainConfig
from diffusion_book.masked_diffusion import (Transformer, TransformerConfig, _build_sequence_model,
                                             _train_sequence_model, ar_log_prob, ar_sample, book_sequence_config,
                                             mask_tokens, masked_bound_exact, masked_diffusion_loss,
                                             masked_diffusion_sample, prompt_template, sample_distribution_exact)
from diffusion_book.utils import make_generator

torch.set_num_threads(1)


def tiny_net(V=3, L=3, causal=False, seed=0):
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(V, L, d_model=16, n_heads=2, n_layers=1, causal=causal)).eval()


def random_logits(V, seed=0):
    "A logits_fn whose predictions depend on the whole input (a fixed random function)."
    net = tiny_net(V, 8, seed=seed)
    return lambda x: net(x)


# ---------------------------------------------------------------- forward process
def test_masking_rate_and_independence():
    x0 = torch.zeros(20_000, 8, dtype=torch.long)
    for t in (0.1, 0.5, 0.9):
        k = (mask_tokens(x0, t, 5, generator=make_generator(0)) == 5).sum(1).double()
        assert abs(k.mean() / 8 - t) < 4 * math.sqrt(t * (1 - t) / (20_000 * 8))
        assert abs(k.var() / (8 * t * (1 - t)) - 1) < 0.06  # binomial: independent positions
    t = torch.tensor([0.0, 1.0])
    x_t = mask_tokens(torch.zeros(2, 6, dtype=torch.long), t, 5)
    assert (x_t[0] == 0).all() and (x_t[1] == 5).all()
    a = mask_tokens(x0[:10], 0.5, 5, generator=make_generator(1))
    assert torch.equal(a, mask_tokens(x0[:10], 0.5, 5, generator=make_generator(1)))


# ---------------------------------------------------------------- loss weighting
def test_loss_with_given_t_is_masked_ce_over_t():
    V, seen = 4, []
    def uniform(x_t):
        seen.append(x_t)
        return torch.zeros(*x_t.shape, V)
    x0 = torch.randint(0, V, (50, 6), generator=make_generator(0))
    t = torch.rand(50, generator=make_generator(1)) * 0.9 + 0.05
    loss = masked_diffusion_loss(uniform, x0, V, t=t, generator=make_generator(2))
    k = (seen[0] == V).sum(1)
    torch.testing.assert_close(loss, k * math.log(V) / t, rtol=1e-5, atol=1e-5)


def _pattern_costs(logits_fn, x0, V):
    "c(S) = Σ_{i∈S} −log p(x0^i | x_{S^c}) for every mask pattern S of each row: (B, 2^L) and |S| (2^L,)."
    B, L = x0.shape
    masks = torch.tensor([[(j >> i) & 1 for i in range(L)] for j in range(2 ** L)], dtype=torch.bool)
    x_t = torch.where(masks[None], V, x0[:, None]).reshape(-1, L)
    logp = logits_fn(x_t).double().log_softmax(-1).reshape(B, 2 ** L, L, V)
    nll = -logp.gather(-1, x0[:, None, :, None].expand(B, 2 ** L, L, 1))[..., 0]
    return torch.where(masks[None], nll, 0.0).sum(-1), masks.sum(1)


@pytest.mark.parametrize("estimator,eps", [("time", 0.3), ("time", 0.02), ("count", 0.0)])
def test_loss_expectation_matches_closed_form(estimator, eps):
    "E[one-draw estimate] against the closed form Σ_S w(|S|) c(S) with the weights done by quadrature."
    lang = markov_language()  # exact conditionals: c(S) depends strongly on the mask, unlike a random network's
    V, L, net = lang.V, lang.L, lang.log_conditionals
    x0 = lang.sample(2, generator=make_generator(0))
    c, k = _pattern_costs(net, x0, V)
    if estimator == "time":  # (1/(1−ε)) ∫_ε^1 p^{k−1} (1−p)^{L−k} dp, p = p_mask
        n, w = np.polynomial.legendre.leggauss(50)
        p, w = eps + (1 - eps) * (n + 1) / 2, w * (1 - eps) / 2
        wk = torch.tensor([0.0] + [float(np.sum(w * p ** (kk - 1) * (1 - p) ** (L - kk))) / (1 - eps)
                                   for kk in range(1, L + 1)], dtype=torch.float64)
    else:  # L/k × P(pattern | k) × P(k) = (L/k) / (C(L,k) L)
        wk = torch.tensor([0.0] + [1 / (kk * math.comb(L, kk)) for kk in range(1, L + 1)], dtype=torch.float64)
    expected = (wk[k] * c).sum(1)
    R = 20_000
    with torch.no_grad():
        draws = masked_diffusion_loss(net, x0.repeat(R, 1), V, estimator=estimator, eps=eps,
                                      generator=make_generator(3)).double().reshape(R, 2)
    se = draws.std(0) / math.sqrt(R)
    assert ((draws.mean(0) - expected).abs() < 4 * se).all(), (draws.mean(0), expected, se)
    if estimator == "count":  # and the count estimator's expectation is the exact (continuous) bound
        torch.testing.assert_close(expected, masked_bound_exact(net, x0, V)[0], rtol=1e-5, atol=1e-5)


def test_bound_is_tight_with_exact_conditionals():
    lang = markov_language()
    x0 = lang.sample(100, generator=make_generator(0))
    bound, ao = masked_bound_exact(lang.log_conditionals, x0, lang.V)
    nll = -lang.log_prob(x0)
    assert (bound - nll).abs().max() < 1e-10 and (ao - nll).abs().max() < 1e-10
    R = 200
    g = make_generator(1)
    draws = torch.stack([masked_diffusion_loss(lang.log_conditionals, x0, lang.V, estimator="count", generator=g)
                         .double() for _ in range(R)])
    pooled_se = draws.std(0).mean() / math.sqrt(R * len(x0))
    assert abs(float((draws.mean(0) - nll).mean())) < 4 * pooled_se


def test_bound_above_model_nll_and_model_is_normalised():
    V, L = 3, 4
    net = tiny_net(V, L)
    every = all_strings(V, L)
    bound, ao = masked_bound_exact(net, every, V)
    assert abs(float((-ao).exp().sum()) - 1) < 1e-6 and (bound >= ao - 1e-6).all()
    q = sample_distribution_exact(net, L, V, steps=L)  # the one-token random-order sampler
    torch.testing.assert_close(q, (-ao).exp(), rtol=1e-5, atol=1e-7)
    t_bounds = [float(masked_bound_exact(net, every[:5], V, steps=T)[0].mean()) for T in (1, 4, 64)]
    assert t_bounds[0] > t_bounds[1] > t_bounds[2] > float(bound[:5].mean())


# ---------------------------------------------------------------- sampler
def test_one_token_per_step_is_exact_and_two_are_not():
    lang = arithmetic_language()
    p = lang.exact_distribution()
    q5 = sample_distribution_exact(lang.log_conditionals, 5, lang.V, steps=5)
    q3 = sample_distribution_exact(lang.log_conditionals, 5, lang.V, steps=3)
    assert 0.5 * (q5 - p).abs().sum() < 1e-12 and 0.5 * (q3 - p).abs().sum() > 0.1
    s = masked_diffusion_sample(lang.log_conditionals, 5, lang.V, steps=3, batch_size=10_000, generator=make_generator(0))
    emp = lang.distribution(s)
    g = make_generator(1)
    floor = np.mean([0.5 * float((torch.bincount(torch.multinomial(q3, 10_000, replacement=True, generator=g),
                                                 minlength=len(q3)) / 10_000 - q3).abs().sum()) for _ in range(3)])
    assert 0.5 * float((emp - q3).abs().sum()) < 1.2 * floor + 0.005  # the sampler follows its exact distribution
    assert abs(float(lang.is_valid(s).double().mean()) - float(q3[p > 0].sum())) < 0.02


def test_prompt_tokens_never_change():
    V = 5
    prompt = torch.tensor([[1, 2, 3], [4, 0, 0]])
    tmpl = prompt_template(prompt, 5, V)
    assert tmpl.shape == (2, 8) and (tmpl[:, 3:] == V).all()
    tmpl[:, 6] = 2  # an infilled position too
    for rm in ("random", "low_confidence"):
        out = masked_diffusion_sample(random_logits(V), tmpl, V, steps=4, remasking=rm, generator=make_generator(0))
        fixed = tmpl != V
        assert torch.equal(out[fixed], tmpl[fixed]) and (out < V).all()


def test_block_order_is_respected():
    V, seen = 4, []
    masked_diffusion_sample(random_logits(V), 8, V, steps=8, block_length=2, batch_size=16, remasking="low_confidence",
                            generator=make_generator(0), callback=lambda i, x: seen.append((x != V).clone()))
    revealed = torch.stack(seen)  # (8, B, L)
    for step in range(8):
        block = step // 2
        assert not revealed[step, :, 2 * (block + 1):].any()  # later blocks untouched
        if step % 2 == 1:
            assert revealed[step, :, : 2 * (block + 1)].all()  # this block complete at its last step


def test_determinism_with_generator():
    V = 4
    f = random_logits(V)
    for rm in ("random", "low_confidence"):
        a = masked_diffusion_sample(f, 8, V, steps=4, remasking=rm, batch_size=32, generator=make_generator(5))
        b = masked_diffusion_sample(f, 8, V, steps=4, remasking=rm, batch_size=32, generator=make_generator(5))
        c = masked_diffusion_sample(f, 8, V, steps=4, remasking=rm, batch_size=32, generator=make_generator(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
    x0 = torch.randint(0, V, (16, 8), generator=make_generator(0))
    assert torch.equal(masked_diffusion_loss(f, x0, V, generator=make_generator(1)),
                       masked_diffusion_loss(f, x0, V, generator=make_generator(1)))


class _CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.n += 1
        return func(*args, **(kwargs or {}))


def test_no_host_sync_per_step():
    V = 4
    f = random_logits(V)
    counts = {}
    for steps in (2, 8):
        for rm in ("random", "low_confidence"):
            with _CountSyncs() as c:
                masked_diffusion_sample(f, prompt_template(torch.tensor([1, 2]), 6, V), V, steps=steps, remasking=rm,
                                        block_length=4, generator=make_generator(0))
            counts[steps, rm] = c.n
    assert counts[2, "random"] == counts[8, "random"] and counts[2, "low_confidence"] == counts[8, "low_confidence"]


# ---------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors():
    V = 4
    f = random_logits(V)
    good = torch.randint(0, V, (3, 8))
    with pytest.raises(ValueError, match="token >= V"):
        masked_diffusion_loss(f, good.index_fill(1, torch.tensor([0]), V + 2), V)
    with pytest.raises(ValueError, match="mask id"):
        masked_diffusion_loss(f, good.index_fill(1, torch.tensor([0]), V), V)
    with pytest.raises(ValueError, match="negative"):
        masked_diffusion_loss(f, good - 1 - good, V)
    with pytest.raises(TypeError, match="integer"):
        masked_diffusion_loss(f, good.float(), V)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        masked_diffusion_sample(f, 8, V, steps=0)
    with pytest.raises(ValueError, match="block_length must be a positive divisor"):
        masked_diffusion_sample(f, 8, V, steps=4, block_length=3)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        masked_diffusion_sample(f, 8, V, steps=3, block_length=2)
    with pytest.raises(ValueError, match="prompt is empty"):
        prompt_template(torch.zeros(1, 0, dtype=torch.long), 4, V)
    with pytest.raises(ValueError, match="empty"):
        masked_diffusion_sample(f, torch.zeros(1, 0, dtype=torch.long), V, steps=1)
    with pytest.raises(ValueError, match="token >= V"):
        masked_diffusion_sample(f, good.index_fill(1, torch.tensor([0]), V + 1), V, steps=2)
    with pytest.raises(ValueError, match="remasking"):
        masked_diffusion_sample(f, 8, V, steps=2, remasking="confident")
    with pytest.raises(ValueError, match=r"logits_fn must return \(B, L, V\)"):
        masked_diffusion_sample(lambda x: torch.zeros(*x.shape, V + 1), 8, V, steps=2)
    with pytest.raises(ValueError, match="estimator"):
        masked_diffusion_loss(f, good, V, estimator="k")
    with pytest.raises(ValueError, match="L <= 16"):
        masked_bound_exact(f, torch.zeros(1, 17, dtype=torch.long), V)


# ---------------------------------------------------------------- models
def test_causal_flag_and_ar_normalisation():
    V, L = 3, 4
    bi, ar = tiny_net(V, L), tiny_net(V, L, causal=True)
    x = torch.randint(0, V, (5, L), generator=make_generator(0))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V  # change the last token
    assert torch.allclose(ar(x)[:, :-1], ar(y)[:, :-1], atol=1e-6)  # earlier positions cannot see it
    assert not torch.allclose(bi(x)[:, :-1], bi(y)[:, :-1], atol=1e-6)
    with torch.no_grad():
        assert abs(float(ar_log_prob(ar, all_strings(V, L)).double().exp().sum()) - 1) < 1e-5
    s = ar_sample(ar, 7, L, generator=make_generator(1))
    assert s.shape == (7, L) and torch.equal(s, ar_sample(ar, 7, L, generator=make_generator(1)))


def test_configs_have_equal_parameters_and_training_runs():
    for data in ("markov", "arithmetic", "pydoc"):
        a, b = book_sequence_config(data, "masked"), book_sequence_config(data, "autoregressive")
        na = sum(p.numel() for p in _build_sequence_model(a).parameters())
        assert na == sum(p.numel() for p in _build_sequence_model(b).parameters())
        assert a["train"] == b["train"]
    for kind in ("masked", "autoregressive"):
        cfg = book_sequence_config("arithmetic", kind)
        cfg["train"] = asdict(TrainConfig(steps=3, batch_size=8, warmup=1))
        model = _build_sequence_model(cfg)
        meta = _train_sequence_model(model, cfg)
        assert len(meta["losses"]) == 3 and all(math.isfinite(v) for v in meta["losses"])
    with pytest.raises(ValueError, match="kind"):
        book_sequence_config("markov", "diffusion")
