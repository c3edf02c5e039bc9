import math

import pytest
import torch

from diffusion_book.schedules import (NoiseSchedule, cosine_beta_schedule, linear_beta_schedule, make_schedule)
from diffusion_book.utils import make_generator


def test_contract_shapes_and_values():
    s = linear_beta_schedule(1000)
    assert s.T == 1000
    for a in (s.betas, s.alphas, s.alpha_bars):
        assert a.shape == (1000,) and a.dtype == torch.float64
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    torch.testing.assert_close(s.alpha_bars, torch.cumprod(1 - s.betas, 0))
    assert s.alpha_bars[-1] < 1e-4


def test_cosine_formula():
    s = cosine_beta_schedule(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 500, 998):
        assert abs(s.alpha_bars[t].item() - f((t + 1) / 1000) / f(0)) < 1e-10
    assert s.betas.max() <= 0.999


def test_q_sample_matches_formula_and_dtype_device():
    s = cosine_beta_schedule(100)
    x0 = torch.randn(3, 1, 4, 4)
    eps = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 50, 99])
    x_t = s.q_sample(x0, t, noise=eps)
    ab = s.alpha_bars[t].float().view(3, 1, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    assert x_t.dtype == torch.float32
    assert s.q_sample(x0.double(), t).dtype == torch.float64
    # integer-valued floats are accepted as step indices; the generator makes draws reproducible
    torch.testing.assert_close(s.q_sample(x0, t.float(), generator=make_generator(0)),
                               s.q_sample(x0, t, generator=make_generator(0)))


def test_q_sample_one_t_broadcasts():
    s = linear_beta_schedule(10)
    x0 = torch.ones(4, 2)
    out = s.q_sample(x0, torch.tensor([3]), noise=torch.zeros(4, 2))
    torch.testing.assert_close(out, torch.full((4, 2), s.alpha_bars[3].sqrt().item()))


def test_q_step_sample_moment():
    s = linear_beta_schedule(10, 0.1, 0.2)
    x = torch.ones(200_000, 1, dtype=torch.float64)
    y = s.q_step_sample(x, torch.full((200_000,), 4), generator=make_generator(0))
    b = s.betas[4]
    assert abs(y.mean() - (1 - b).sqrt()) < 5 * (b / 200_000).sqrt()
    assert abs(y.var() - b) < 5 * b * math.sqrt(2 / 200_000)


def test_snr():
    s = linear_beta_schedule(100)
    snr = s.snr(torch.arange(100))
    torch.testing.assert_close(snr, s.alpha_bars / (1 - s.alpha_bars))
    assert (snr.diff() < 0).all()


@pytest.mark.parametrize("betas", [[0.1, 1.0], [0.0, 0.1], [-0.1], [0.1, float("nan")]])
def test_bad_betas(betas):
    with pytest.raises(ValueError, match="open interval"):
        NoiseSchedule(torch.tensor(betas))


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="at least one"):
        NoiseSchedule(torch.tensor([], dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        NoiseSchedule(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="positive integer"):
        linear_beta_schedule(0)
    with pytest.raises(ValueError, match="positive integer"):
        cosine_beta_schedule(10.5)
    with pytest.raises(ValueError, match="beta_start"):
        linear_beta_schedule(10, beta_start=0.5, beta_end=1.5)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_beta_schedule(10, max_beta=1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("sigmoid")
    assert make_schedule("cosine", 10).T == 10


def test_bad_t_and_shapes():
    s = linear_beta_schedule(10)
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        s.q_sample(x0, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        s.q_sample(x0, torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer-valued"):
        s.q_sample(x0, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="match the batch"):
        s.q_sample(x0, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="shape of x0"):
        s.q_sample(x0, torch.tensor([0, 1]), noise=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating"):
        s.q_sample(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1 dimensions"):
        s.q_sample(x0, torch.zeros(2, 1, dtype=torch.long))


def test_q_step_sample_checks_noise_shape():
    s = linear_beta_schedule(10)
    with pytest.raises(ValueError, match="shape of x_prev"):
        s.q_step_sample(torch.zeros(2, 3), torch.tensor([0, 1]), noise=torch.zeros(2, 4))


def test_float32_reads_keep_one_minus_alpha_bar():
    # √ᾱ and √(1−ᾱ) are formed in float64 and cast afterwards: 1 − ᾱ_1 of the cosine schedule survives float32
    s = cosine_beta_schedule(1000)
    x = torch.zeros(1, 3)
    t = torch.tensor([0])
    exact = (1 - s.alpha_bars[0]).item()
    var = s.q_mean_var(x, t)[1]
    assert var.dtype == torch.float32
    assert abs(var.double().item() / exact - 1) < 1e-6
    s1 = s.extract("sqrt_one_minus_alpha_bars", t, x)
    assert abs(s1.double().item() ** 2 / exact - 1) < 1e-6
    # the cast-first value this replaces is visibly worse (guards against reintroducing it)
    assert abs((1 - s.extract("alpha_bars", t, x)).double().item() / exact - 1) > 1e-5
    torch.testing.assert_close(s.sqrt_alpha_bars ** 2, s.alpha_bars, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sqrt_one_minus_alpha_bars ** 2, 1 - s.alpha_bars, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64])
def test_extract_accepts_integer_valued_float_t(dtype):
    # the time contract: samplers pass networks a floating (B,) t; schedule reads accept it unchanged
    s = linear_beta_schedule(100)
    x = torch.zeros(3, 2, 2)
    t_int = torch.tensor([0, 42, 99])
    t = t_int.to(dtype)
    for name in ("betas", "alpha_bars", "sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"):
        got = s.extract(name, t, x)
        assert got.shape == (3, 1, 1) and got.dtype == x.dtype
        torch.testing.assert_close(got, getattr(s, name)[t_int].float().view(3, 1, 1), atol=0, rtol=0)
    torch.testing.assert_close(s.q_sample(x, t, noise=x + 1), s.q_sample(x, t_int, noise=x + 1), atol=0, rtol=0)


def test_extract_check_false_rounds_without_value_checks():
    s = linear_beta_schedule(10)
    x = torch.zeros(2, 1)
    near = torch.tensor([2.0 - 1e-6, 5.0 + 1e-6])  # float round-off around integers
    torch.testing.assert_close(s.extract("alpha_bars", near, x, check=False),
                               s.alpha_bars[[2, 5]].float().view(2, 1))
    with pytest.raises(TypeError, match="integer-valued"):
        s.extract("alpha_bars", near, x)  # the default still validates
    with pytest.raises(ValueError, match="match the batch"):
        s.extract("alpha_bars", torch.tensor([1.0, 2.0, 3.0]), x, check=False)  # shapes are always checked
    with pytest.raises(TypeError, match="step indices"):
        s.extract("alpha_bars", torch.tensor([True, False]), x)


def test_extract_check_false_makes_no_host_sync():
    # per-step reads inside sampler loops must not synchronise (counted as aten._local_scalar_dense on CPU)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    s = cosine_beta_schedule(50)
    x = torch.zeros(4, 3)
    t = torch.full((4,), 7.0)
    s.extract("alpha_bars", t, x)  # warm the cache
    with Count():
        s.extract("sqrt_alpha_bars", t, x, check=False)
        s.extract("alpha_bars", t.long(), x, check=False)
    assert Count.n == 0
    with Count():
        s.extract("alpha_bars", t, x)  # check=True validates values: that costs a sync, by design
    assert Count.n > 0


def test_network_time_dtype():
    from diffusion_book.schedules import network_time
    t = torch.tensor([3, 4])
    assert network_time(t, torch.zeros(2, 1)).dtype == torch.float32
    assert network_time(t, torch.zeros(2, 1, dtype=torch.float64)).dtype == torch.float64
    assert network_time(t, torch.zeros(2, 1, dtype=torch.float16)).dtype == torch.float32
    torch.testing.assert_close(network_time(t, torch.zeros(2, 1)), torch.tensor([3.0, 4.0]))
