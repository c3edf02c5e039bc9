"Parity with the reference library (HF diffusers), run with `pytest -m parity`; skipped without diffusers."
import pytest
import torch

from diffusion_book.schedules import cosine_beta_schedule, linear_beta_schedule

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity


@pytest.mark.parametrize("T", [1000, 50])
def test_linear_matches_ddpm_scheduler(T):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    ours = linear_beta_schedule(T, 1e-4, 0.02)
    torch.testing.assert_close(ours.betas.float(), ref.betas, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(ours.alphas.float(), ref.alphas, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(ours.alpha_bars.float(), ref.alphas_cumprod, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("T", [1000, 50])
def test_cosine_matches_squaredcos_cap_v2(T):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    ours = cosine_beta_schedule(T)
    torch.testing.assert_close(ours.betas.float(), ref.betas, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.alpha_bars.float(), ref.alphas_cumprod, atol=1e-6, rtol=1e-5)


def test_q_sample_matches_add_noise():
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = cosine_beta_schedule(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    torch.testing.assert_close(ours.q_sample(x0, t, noise=eps), ref.add_noise(x0, eps, t), atol=1e-5, rtol=1e-5)
