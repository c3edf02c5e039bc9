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
