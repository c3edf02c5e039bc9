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


@pytest.mark.parametrize("linear", [True, False])
def test_spatial_transformer_from_diffusers(linear):
    "Chapter 15: a diffusers Transformer2DModel (SD 2 linear or SD 1 1×1-conv projections) converted; outputs equal."
    from diffusion_book.latent_diffusion import SpatialTransformer
    torch.manual_seed(0)
    ref = diffusers.models.Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16,
                                              norm_num_groups=4, cross_attention_dim=12, num_layers=2,
                                              use_linear_projection=linear).eval()
    for p in ref.parameters():  # diffusers initialises nothing to zero; perturb all weights anyway
        p.data.add_(0.05 * torch.randn_like(p))
    ours = SpatialTransformer.from_diffusers(ref).eval()
    x, ctx = torch.randn(2, 16, 4, 5), torch.randn(2, 7, 12)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        want = ref(x, encoder_hidden_states=ctx, encoder_attention_mask=mask.float()).sample
        got = ours(x, ctx, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="heads"):
        SpatialTransformer.from_diffusers(ref.state_dict())
    again = SpatialTransformer.from_diffusers(ref.state_dict(), heads=2, num_groups=4)
    with torch.no_grad():
        torch.testing.assert_close(again(x, ctx, mask), want, atol=1e-5, rtol=1e-5)
