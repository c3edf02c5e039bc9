"Chapter 13 (guidance) and chapter 01's labelled mixtures: exact identities, contracts, bad input. Tiny and fast."
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffusion_book.data import GaussianMixture
from diffusion_book.ddpm import TrainConfig, ddpm_sample, make_train_state, train_loop
from diffusion_book.guidance import (NoisyClassifier, autoguidance, cfg_loss, class_log_prob_grad, classifier_free_guidance,
                                     classifier_guidance, classifier_log_prob, classifier_loss, drop_labels,
                                     guidance_scale_to_w, inpaint, oracle_class_log_prob, oracle_class_net,
                                     repaint_schedule, rescale_guidance, sdedit, sigma_fn)
from diffusion_book.metrics import sliced_wasserstein
from diffusion_book.models.unet import UNet, UNetConfig
from diffusion_book.parameterization import eps_to_x0, x0_to_eps
from diffusion_book.samplers import ddim_sample, dpm_solver_pp_2m, euler_sample, heun_sample, t_to_sigma
from diffusion_book.schedules import linear_beta_schedule

D = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def setup():
    gm = GaussianMixture(torch.tensor([[-1.2, 0.0], [1.0, 0.9], [1.8, -1.2]], dtype=D), 0.6,
                         torch.tensor([0.5, 0.3, 0.2], dtype=D), labels=torch.tensor([0, 1, 1]))
    s = linear_beta_schedule(1000)  # ᾱ_T ≈ 0: x_T ~ N(0, I) is the right start
    return gm, s, oracle_class_net(gm, s), oracle_class_log_prob(gm, s)


def _ab(s, t):
    return 1 / (1 + t_to_sigma(s, t) ** 2)


# ---- chapter 01: labelled mixtures -------------------------------------------------------------------------------
def test_mixture_labels_backward_compatible():
    gm = GaussianMixture(torch.zeros(2, 2, dtype=D), 1.0)
    assert gm.labels is None and gm.num_classes is None and "C=" not in repr(gm)
    with pytest.raises(ValueError, match="no classes"):
        gm.class_log_posterior(torch.zeros(3, 2, dtype=D))
    gl = GaussianMixture(torch.zeros(3, 2, dtype=D), 1.0, labels=[1, 0, 1])
    assert gl.num_classes == 2 and torch.equal(gl.noised(0.5).labels, gl.labels)
    assert torch.equal(gl.to(torch.float32).labels, gl.labels)
    for bad in ([0, 2, 2], [-1, 0, 1]):
        with pytest.raises(ValueError, match="every class used"):
            GaussianMixture(torch.zeros(3, 2, dtype=D), 1.0, labels=bad)
    with pytest.raises(ValueError, match="labels"):
        GaussianMixture(torch.zeros(3, 2, dtype=D), 1.0, labels=[0, 1])
    with pytest.raises(ValueError, match="class id in 0…1"):
        gl.given(2)


def test_class_posterior_bayes_and_monte_carlo(setup):
    gm = setup[0]
    g = gen(0)
    x = 2 * torch.randn(64, 2, generator=g, dtype=D)
    for ab in (1.0, 0.2):
        lp = gm.class_log_posterior(x, ab)
        torch.testing.assert_close(lp.exp().sum(1), torch.ones(64, dtype=D))
        for c in range(2):
            torch.testing.assert_close(gm.given(c).log_prob(x, ab), lp[:, c] + gm.log_prob(x, ab) - gm.class_prior()[c].log())
    n, ab = 40_000, 0.3
    x0, k = gm.sample(n, generator=g, return_labels=True)
    y = gm.labels[k]
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(n, 2, generator=g, dtype=D)
    for a, ok in ((ab, True), (1.0, False)):  # the clean posterior on noisy points is miscalibrated
        resid = (y == 1).double() - gm.class_log_posterior(x_t, a)[:, 1].exp()
        z = max(abs((resid * f).mean()) / ((resid * f).std() / n**0.5) for f in (torch.ones(n, dtype=D), x_t[:, 0]))
        assert (z < 5) == ok, z
    for c in range(2):  # given(c) has the moments of the class's draws
        m, cov = gm.given(c).moments()
        torch.testing.assert_close(x0[y == c].mean(0), m, atol=0.02, rtol=0)


# ---- the four identities --------------------------------------------------------------------------------------------
def test_identity1_cg_scale1_is_conditional_eps(setup):
    gm, s, net, lp = setup
    eps_u = lambda x, t: net(x, t)
    x = 2 * torch.randn(32, 2, generator=gen(1), dtype=D)
    for t in (torch.full((32,), 457.5, dtype=D), torch.full((32,), 820.0), torch.full((32,), 3, dtype=torch.long)):
        cg = classifier_guidance(eps_u, lp, 1, s, scale=1.0)
        exact = gm.given(1).eps_oracle(x, _ab(s, float(t[0])))
        torch.testing.assert_close(cg(x, t), exact, atol=1e-10, rtol=0)


def test_identity1_samples_at_floor(setup):
    gm, s, net, lp = setup
    n = 2000
    cg = classifier_guidance(lambda x, t: net(x, t), lp, 1, s, scale=1.0)
    out = dpm_solver_pp_2m(cg, s, torch.randn(n, 2, generator=gen(2), dtype=D), steps=40)
    ref_a, ref_b = gm.given(1).sample(n, generator=gen(3)), gm.given(1).sample(n, generator=gen(4))
    floor = sliced_wasserstein(ref_a, ref_b, generator=gen(5))
    assert sliced_wasserstein(out, ref_a, generator=gen(5)) < 2.5 * floor + 0.02


def test_identity2_cg_equals_cfg_along_trajectories(setup):
    gm, s, net, lp = setup
    x_T = torch.randn(200, 2, generator=gen(6), dtype=D)
    for scale in (0.5, 3.0):
        cg = classifier_guidance(lambda x, t: net(x, t), lp, 1, s, scale=scale)
        cfg = classifier_free_guidance(net, 1, scale - 1, 2, num_classes=2)
        for sampler, kw in ((dpm_solver_pp_2m, dict(steps=10)), (ddim_sample, dict(steps=10, eta=1.0))):
            xa, xb = [], []
            sampler(cg, s, x_T, callback=lambda i, t, x, x0: xa.append(x), generator=gen(7), **kw)
            sampler(cfg, s, x_T, callback=lambda i, t, x, x0: xb.append(x), generator=gen(7), **kw)
            torch.testing.assert_close(torch.stack(xa), torch.stack(xb), atol=1e-10, rtol=0)


def test_identity3_affine_invariance_and_rescale_is_not(setup):
    gm, s, net, lp = setup
    x = torch.randn(50, 2, generator=gen(8), dtype=D)
    t = torch.full((50,), 80.0, dtype=D)
    ab = _ab(s, 80.0)
    e_c, e_u = net(x, t, torch.ones(50, dtype=torch.long)), net(x, t)
    x0_c, x0_u = eps_to_x0(x, e_c, ab), eps_to_x0(x, e_u, ab)
    w = 3.0
    torch.testing.assert_close(x0_to_eps(x, (1 + w) * x0_c - w * x0_u, ab), (1 + w) * e_c - w * e_u, atol=1e-10, rtol=0)
    a = rescale_guidance((1 + w) * e_c - w * e_u, e_c, 0.7)
    b = x0_to_eps(x, rescale_guidance((1 + w) * x0_c - w * x0_u, x0_c, 0.7), ab)
    assert (a - b).abs().max() > 1e-3


def test_identity4_guidance_misses_tilted_law(setup):
    gm, s, net, lp = setup
    n, w = 2000, 7.0
    g = gen(9)
    prop = gm.given(1).sample(8 * n, generator=g)
    keep = torch.rand(len(prop), generator=g, dtype=D).log() < w * gm.class_log_posterior(prop)[:, 1]
    tilted = prop[keep][:2 * n]
    assert len(tilted) == 2 * n
    floor = sliced_wasserstein(tilted[:n], tilted[n:], generator=gen(10))
    out = dpm_solver_pp_2m(classifier_free_guidance(net, 1, w, 2), s, torch.randn(n, 2, generator=g, dtype=D), steps=30)
    assert sliced_wasserstein(out, tilted[:n], generator=gen(10)) > 5 * floor


# ---- CFG mechanics ---------------------------------------------------------------------------------------------------
def test_one_forward_equals_two_forwards_unet():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), num_groups=4,
                           head_channels=8, mid_attention=False, num_classes=3))
    for p in unet.parameters():  # the zero-initialised output layer would make every branch equal
        p.data.normal_(0, 0.1)
    calls = []
    counting = lambda x, t, c: (calls.append(len(x)), unet(x, t, c))[1]
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([5.0, 100.0, 250.5, 999.0]), torch.tensor([0, 1, 2, 1])
    out = classifier_free_guidance(counting, y, 2.0, 3)(x, t)
    assert calls == [8]
    e_c, e_u = unet(x, t, y), unet(x, t, torch.full((4,), 3))
    torch.testing.assert_close(out, 3 * e_c - 2 * e_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(classifier_free_guidance(unet, y, -1.0, 3)(x, t), e_u, atol=1e-6, rtol=0)  # w = −1 is legitimate
    torch.testing.assert_close(classifier_free_guidance(unet, 2, 0.0, 3)(x, t), unet(x, t, torch.full((4,), 2)))
    assert guidance_scale_to_w(7.5) == 6.5


def test_wrappers_plug_into_every_sampler(setup):
    gm, s, net, lp = setup
    x_T = torch.randn(16, 2, generator=gen(11), dtype=D)
    eps_cfg = classifier_free_guidance(net, 1, 1.0, 2)
    eps_cg = classifier_guidance(lambda x, t: net(x, t), lp, 1, s, scale=2.0)
    for eps in (eps_cfg, eps_cg):
        for sampler in (ddim_sample, dpm_solver_pp_2m, euler_sample, heun_sample):
            out = sampler(eps, s, x_T, steps=5)
            assert out.shape == x_T.shape and torch.isfinite(out).all()
    s50 = linear_beta_schedule(50)  # DDPM runs every step: a short chain keeps the test fast
    for eps in (classifier_free_guidance(net, 1, 1.0, 2), classifier_guidance(lambda x, t: net(x, t), lp, 1, s50, scale=2.0)):
        assert torch.isfinite(ddpm_sample(eps, s50, x_T, generator=gen(12))).all()


class _CountSyncs(TorchDispatchMode):
    n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            _CountSyncs.n += 1
        return func(*args, **(kwargs or {}))


def test_wrappers_make_no_host_sync():
    s = linear_beta_schedule(100)
    W = torch.randn(3, 4)
    net = lambda x, t, c: x * 0.9 + 0.01 * t[:, None] + 0.1 * c[:, None].float()
    log_prob = lambda x, t: (x[:, :3] @ torch.eye(3) + 0.001 * t[:, None]).log_softmax(-1)
    x, t = torch.randn(6, 4), torch.full((6,), 42.5)
    wrappers = [classifier_free_guidance(net, torch.tensor([0, 1, 2, 0, 1, 2]), 2.0, 3, num_classes=3),
                classifier_free_guidance(net, 1, 2.0, 3, rescale=0.7, interval=(0.2, 3.0), schedule=s),
                classifier_guidance(lambda x, t: 0.5 * x, log_prob, torch.tensor([0, 1, 2, 0, 1, 2]), s, scale=3.0)]
    for eps in wrappers:
        eps(x, t)  # warm caches
        _CountSyncs.n = 0
        with _CountSyncs():
            eps(x, t)
            eps(x, t.long())
        assert _CountSyncs.n == 0, _CountSyncs.n
    del W


def test_guidance_interval_and_rescale():
    s = linear_beta_schedule(1000)
    net = lambda x, t, c: torch.where(c[:, None] == 3, torch.zeros_like(x), torch.ones_like(x))  # ε_c = 1, ε_u = 0
    x = torch.zeros(2, 2)
    sig = sigma_fn(s)
    t_in, t_out = torch.tensor([300.0, 300.0]), torch.tensor([999.0, 999.0])
    assert 0.28 < sig(t_in)[0] <= 5.42 < sig(t_out)[0]
    eps = classifier_free_guidance(net, 0, 2.0, 3, interval=(0.28, 5.42), schedule=s)
    torch.testing.assert_close(eps(x, t_in), torch.full((2, 2), 3.0))  # guided inside the band
    torch.testing.assert_close(eps(x, t_out), torch.full((2, 2), 1.0))  # conditional outside
    g = torch.randn(3, 4) * 5
    c = torch.randn(3, 4)
    torch.testing.assert_close(rescale_guidance(g, c, 1.0).std(1), c.std(1))
    torch.testing.assert_close(rescale_guidance(g, c, 0.0), g)


# ---- training pieces -------------------------------------------------------------------------------------------------
def test_label_dropout_rate():
    y = torch.randint(0, 10, (100_000,), generator=gen(13))
    for p in (0.0, 0.1, 0.5):
        out = drop_labels(y, 10, p, gen(14))
        rate = (out == 10).double().mean().item()
        assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / len(y)) + 1e-12
        assert torch.equal(out[out != 10], y[out != 10])
    with pytest.raises(ValueError, match="p must lie in"):
        drop_labels(y, 10, 1.5)


def test_training_losses_run_in_train_loop():
    s = linear_beta_schedule(100)
    cfg = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), num_groups=4,
               head_channels=8, mid_attention=False)
    x, y = torch.rand(32, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (32,))
    tc = TrainConfig(steps=2, batch_size=8, warmup=1)
    unet = UNet(UNetConfig(**cfg, num_classes=3))
    recs = list(train_loop(make_train_state(unet, tc), x, tc, cfg_loss(s, 3), labels=y))
    assert len(recs) == 2 and math.isfinite(recs[-1]["loss"])
    with pytest.raises(ValueError, match="needs class labels"):
        list(train_loop(make_train_state(unet, tc), x, tc, cfg_loss(s, 3)))
    clf = NoisyClassifier(UNetConfig(**cfg), 3)
    recs = list(train_loop(make_train_state(clf, tc), x, tc, classifier_loss(s), labels=y))
    assert 0 <= recs[-1]["accuracy"] <= 1
    for t in (torch.tensor([3, 50]), torch.tensor([3.0, 50.5])):
        assert clf(x[:2], t).shape == (2, 3)
    lp = classifier_log_prob(clf)(x[:2], torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="must be unconditional"):
        NoisyClassifier(UNetConfig(**cfg, num_classes=3), 3)


# ---- inpainting and SDEdit -------------------------------------------------------------------------------------------
def test_repaint_schedule():
    assert repaint_schedule(3) == [0, 1, 2, 3]
    seq = repaint_schedule(20, jump=4, resample=3)
    assert seq[0] == 0 and seq[-1] == 20 and all(abs(b - a) == 1 for a, b in zip(seq, seq[1:]))
    assert sum(b > a for a, b in zip(seq, seq[1:])) == 20 + 2 * 20
    with pytest.raises(ValueError, match="jump must be a positive integer"):
        repaint_schedule(10, jump=0)


def test_inpaint_keeps_known_exactly(setup):
    gm, s, net, lp = setup
    x_known = torch.randn(64, 2, generator=gen(15), dtype=D)
    eps_u = lambda x, t: net(x, t)
    for r, mask in ((1, torch.tensor([True, False])), (3, torch.tensor([[True, False]] * 32 + [[False, True]] * 32))):
        out = inpaint(eps_u, s, x_known, mask, steps=10, resample=r, jump=2, generator=gen(16))
        assert torch.equal(out[mask.expand(64, 2)], x_known[mask.expand(64, 2)])
        assert torch.isfinite(out).all()
    img = torch.rand(3, 1, 8, 8) * 2 - 1
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :] = 1
    out = inpaint(lambda x, t: 0.1 * x, s, img, m, steps=5, clip_x0=(-1, 1), generator=gen(17))
    assert torch.equal(out[..., :4, :], img[..., :4, :])
    with pytest.raises(ValueError, match="only 0 and 1"):
        inpaint(eps_u, s, x_known, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(eps_u, s, x_known, torch.tensor([True, False, True]))


def test_inpaint_mixture_conditional_monte_carlo():
    # replacement is biased towards the unconditional law; RePaint's resampling reduces the bias (exact scores)
    from diffusion_book.samplers import oracle_eps_model
    gm = GaussianMixture(torch.tensor([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]], dtype=D), 0.5,
                         torch.tensor([0.4, 0.1, 0.1, 0.4], dtype=D))
    s = linear_beta_schedule(1000)
    a = 0.8
    log_pi = gm.weights.log() - 0.5 * ((a - gm.means[:, 0]) / 0.5) ** 2
    p_exact = (log_pi.softmax(0) * 0.5 * (1 + torch.erf(gm.means[:, 1] / (0.5 * 2**0.5)))).sum().item()
    x_known = torch.tensor([[a, 0.0]], dtype=D).expand(3000, 2)
    err = {}
    for r in (1, 6):
        out = inpaint(oracle_eps_model(gm, s), s, x_known, torch.tensor([True, False]), steps=25, resample=r, jump=5,
                      generator=gen(18))
        err[r] = abs((out[:, 1] > 0).double().mean().item() - p_exact)
    assert err[1] > 5 * math.sqrt(0.2 * 0.8 / 3000) and err[6] < err[1]


def test_sdedit():
    s = linear_beta_schedule(100)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    out = sdedit(lambda z, t: torch.zeros_like(z), s, x, 0, steps=1, generator=gen(19))
    torch.testing.assert_close(out, math.sqrt(s.alpha_bars[0].item()) * 0 + out)  # runs; ε = 0 keeps x̂0 = x_t/√ᾱ
    z = sdedit(lambda z, t: torch.zeros_like(z), s, x, 40, steps=8, generator=gen(19))
    assert z.shape == x.shape
    with pytest.raises(ValueError, match=r"t0 must be an integer step in \[0, 99\]"):
        sdedit(lambda z, t: z, s, x, 100)
    with pytest.raises(ValueError, match="steps must be an integer"):
        sdedit(lambda z, t: z, s, x, 5, steps=10)


# ---- bad input -------------------------------------------------------------------------------------------------------
def test_bad_input(setup):
    gm, s, net, lp = setup
    eps_u = lambda x, t: net(x, t)
    x, t = torch.randn(8, 2, dtype=D), torch.full((8,), 10.0, dtype=D)
    for bad in (float("nan"), float("inf"), "2", None):
        with pytest.raises(ValueError, match="w must be a finite number"):
            classifier_free_guidance(net, 1, bad, 2)
        with pytest.raises(ValueError, match="scale must be a finite number"):
            classifier_guidance(eps_u, lp, 1, s, scale=bad)
    with pytest.raises(ValueError, match="cond must hold class ids in 0…1"):
        classifier_free_guidance(net, torch.tensor([0, 2]), 1.0, 2, num_classes=2)
    with pytest.raises(ValueError, match="cond must hold class ids"):
        classifier_free_guidance(net, -1, 1.0, 2)
    with pytest.raises(ValueError, match="y must hold class ids"):
        classifier_guidance(eps_u, lp, -3, s)
    with pytest.raises(ValueError, match="labels must lie in 0…C−1"):
        classifier_guidance(eps_u, lp, 2, s)(x, t)
    with pytest.raises(TypeError, match="integer class ids"):
        classifier_guidance(eps_u, lp, torch.tensor([1.0]), s)
    with pytest.raises(ValueError, match="y has 3 labels for a batch of 8"):
        classifier_guidance(eps_u, lp, torch.tensor([0, 1, 1]), s)(x, t)
    with pytest.raises(ValueError, match="cond has batch size 3"):
        classifier_free_guidance(net, torch.tensor([0, 1, 1]), 1.0, 2)(x, t)
    with pytest.raises(ValueError, match=r"must return \(B, C\)"):
        classifier_guidance(eps_u, lambda x, t: lp(x, t)[:, 0], 1, s)(x, t)
    with pytest.raises(ValueError, match=r"must return \(B, C\)"):
        classifier_guidance(eps_u, lambda x, t: lp(x, t)[:4], 1, s)(x, t)
    with pytest.raises(ValueError, match="net returned"):
        classifier_free_guidance(lambda x, t, c: x[:8], 1, 1.0, 2)(x, t)
    with pytest.raises(ValueError, match="interval= needs schedule="):
        classifier_free_guidance(net, 1, 1.0, 2, interval=(0.3, 5.0))
    with pytest.raises(ValueError, match="0 <= σ_lo < σ_hi"):
        classifier_free_guidance(net, 1, 1.0, 2, interval=(5.0, 0.3), schedule=s)
    with pytest.raises(TypeError, match="null_cond must be an int"):
        classifier_free_guidance(net, 1, 1.0, 2.0)
    # negative w is legitimate: w = −1 is the unconditional model
    torch.testing.assert_close(classifier_free_guidance(net, 1, -1.0, 2)(x, t), net(x, t))


def test_autoguidance():
    good = lambda x, t, c: torch.ones_like(x)
    weak = lambda x, t, c: torch.zeros_like(x)
    out = autoguidance(good, weak, 1, 2.0)(torch.zeros(3, 2), torch.zeros(3))
    torch.testing.assert_close(out, torch.full((3, 2), 3.0))
