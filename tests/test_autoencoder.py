"Tests of chapter 14's KL autoencoder, patch discriminator, losses and diffusers interop (tiny sizes, seconds)."
import math

import pytest
import torch

from diffusion_book.models.autoencoder import (AETrainConfig, AutoencoderConfig, AutoencoderKL, DiagonalGaussian,
                                               PatchDiscriminator, adaptive_weight, decode_latents, encode_latents,
                                               hinge_d_loss, latent_scale_factor, load_autoencoder, save_autoencoder,
                                               train_autoencoder)

TINY = AutoencoderConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=2, norm_num_groups=4)


def tiny_ae(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(cfg).eval()


def test_shapes_and_factor():
    for levels, f in [((8,), 1), ((8, 8), 2), ((8, 8, 8), 4), ((8, 8, 8, 8), 8)]:
        cfg = AutoencoderConfig(block_out_channels=levels, latent_channels=3, norm_num_groups=4)
        ae = AutoencoderKL(cfg)
        assert cfg.downsampling_factor == f
        x = torch.randn(2, 3, 16, 24)
        post = ae.encode(x)
        assert post.mean.shape == post.logvar.shape == (2, 3, 16 // f, 24 // f)
        assert ae.decode(post.mode()).shape == x.shape


def test_bad_input_names_argument():
    ae = tiny_ae()
    with pytest.raises(ValueError, match=r"x must have 3 channels"):
        ae.encode(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"divisible by the downsampling factor f=2"):
        ae.encode(torch.randn(1, 3, 9, 8))
    x = torch.randn(1, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN"):
        ae.encode(x)
    with pytest.raises(ValueError, match=r"z must have 2 channels"):
        ae.decode(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"z contains NaN"):
        ae.decode(torch.full((1, 2, 4, 4), float("nan")))
    with pytest.raises(TypeError, match=r"x must be a floating-point"):
        ae.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="data"):
        next(train_autoencoder(ae, torch.randn(4, 3, 7, 8), AETrainConfig(steps=1, disc_start=None)))
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderConfig(block_out_channels=(6, 8), norm_num_groups=4)
    with pytest.raises(TypeError, match="model_or_state_dict"):
        AutoencoderKL.from_diffusers(42)


def test_kl_closed_form_vs_monte_carlo():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    post = DiagonalGaussian(params)
    z = torch.stack([post.sample(g) for _ in range(40_000)])  # (S, B, c, h, w)
    log_q = -torch.stack([post.nll(zi) for zi in z])  # (S, B)
    log_p = -0.5 * (math.log(2 * math.pi) + z ** 2).flatten(2).sum(2)
    mc = (log_q - log_p)
    se = mc.std(0) / math.sqrt(len(mc))
    assert ((mc.mean(0) - post.kl()).abs() < 5 * se).all()
    # the KL of N(0, I) is zero; its mode is the mean
    zero = DiagonalGaussian(torch.zeros(2, 4, 3, 3))
    torch.testing.assert_close(zero.kl(), torch.zeros(2))
    assert torch.equal(post.mode(), post.mean)


def test_reparameterised_sample_is_differentiable_and_seeded():
    params = torch.randn(2, 4, 3, 3, requires_grad=True)
    post = DiagonalGaussian(params)
    a = post.sample(torch.Generator().manual_seed(1))
    b = post.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    a.sum().backward()
    assert params.grad[:, :2].abs().min() > 0  # ∂z/∂μ = 1


def test_adaptive_weight_matches_autograd_and_balances_gradients():
    ae = tiny_ae()
    disc = PatchDiscriminator(3, 8, 1)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    x_hat = ae(x)[0]
    rec = (x - x_hat).abs().sum() / 2
    g_loss = -disc(x_hat).mean()
    lam = adaptive_weight(rec, g_loss, ae.last_layer, delta=0.0, max_weight=float("inf"))
    w = ae.last_layer
    gr, = torch.autograd.grad(rec, w, retain_graph=True)
    gg, = torch.autograd.grad(g_loss, w, retain_graph=True)
    torch.testing.assert_close(lam, gr.norm() / gg.norm())
    torch.testing.assert_close((lam * gg).norm(), gr.norm())  # λ equalises the two gradients at w_L
    assert not lam.requires_grad
    assert adaptive_weight(rec, g_loss, w, max_weight=0.5) == 0.5  # the clamp


def test_hinge_loss():
    r, f = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # ½ mean(relu(1 − r)) + ½ mean(relu(1 + f)) = ½·(0 + 0.5 + 2)/3 + ½·(0 + 1 + 2)/3
    torch.testing.assert_close(hinge_d_loss(r, f), torch.tensor(0.5 * 2.5 / 3 + 0.5 * 3 / 3))
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)) == 0


def test_patch_discriminator_is_patchwise():
    d = PatchDiscriminator(3, 8, 2).eval()
    out = d(torch.randn(2, 3, 32, 32))
    assert out.shape[:2] == (2, 1) and out.shape[2] > 1  # one logit per patch, not per image


def test_scale_factor_gives_unit_variance():
    ae = tiny_ae()
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    s = latent_scale_factor(ae, x, generator=torch.Generator().manual_seed(0))
    z = torch.cat([ae.encode(b).sample(torch.Generator().manual_seed(0)) for b in x.split(256)])
    torch.testing.assert_close((z * s).std(), torch.tensor(1.0), atol=1e-5, rtol=0)
    ae.scaling_factor.fill_(s)
    zl = encode_latents(ae, x)
    torch.testing.assert_close(decode_latents(ae, zl), ae.decode(ae.encode(x).mode()), atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    ae = tiny_ae()
    ae.scaling_factor.fill_(0.37)
    path = save_autoencoder(tmp_path / "ae.safetensors", ae, meta={"note": "test"})
    assert path.with_suffix(".json").exists()
    ae2, rec = load_autoencoder(path)
    assert ae2.config == ae.config and rec["meta"] == {"note": "test"}
    assert abs(ae2.scaling_factor.item() - 0.37) < 1e-7
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ae2(x)[0], ae(x)[0], atol=0, rtol=0)


def test_training_reduces_loss_and_is_sync_free():
    torch.manual_seed(0)
    ae = AutoencoderKL(TINY)
    data = torch.rand(32, 3, 8, 8) * 2 - 1
    cfg = AETrainConfig(steps=40, batch_size=8, lr=2e-3, disc_start=20, disc_channels=8, disc_layers=1, log_every=20)
    it = train_autoencoder(ae, data, cfg)
    first = next(it)  # includes validation and the first 20 steps
    # the next 20 steps (with the GAN on) read the device once, at the log
    calls = []
    import traceback
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):  # reads of a tensor's value on the host, except the optimisers' CPU step counters
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default and \
                    not any("torch/optim" in f.filename for f in traceback.extract_stack()):
                calls.append(1)
            return func(*args, **(kwargs or {}))

    with Count():
        last = next(it)
    assert len(calls) == 0, f"{len(calls)} host syncs in 20 steps"
    assert last["step"] == 40 and last["lambda"] > 0 and last["d_loss"] > 0
    assert last["rec"] < first["rec"]
    assert first["lambda"] == 0  # the discriminator is off before disc_start


@pytest.mark.parity
def test_from_diffusers_parity():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
                                  layers_per_block=2, latent_channels=4, norm_num_groups=4, sample_size=16,
                                  scaling_factor=0.25).eval()
    with torch.no_grad():  # move the weights off diffusers' init (zero biases etc.) so every path is exercised
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for source in (ref, ref.state_dict()):
        ours = AutoencoderKL.from_diffusers(source, norm_num_groups=4).eval()
        assert ours.config.block_out_channels == (8, 16, 16) and ours.config.layers_per_block == 2
        x = torch.randn(2, 3, 16, 24)
        z = torch.randn(2, 4, 4, 6)
        with torch.no_grad():
            p_ref, p_ours = ref.encode(x).latent_dist, ours.encode(x)
            torch.testing.assert_close(p_ours.mean, p_ref.mean, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(p_ours.logvar, p_ref.logvar, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-5, rtol=1e-5)
    assert abs(AutoencoderKL.from_diffusers(ref).scaling_factor.item() - 0.25) < 1e-7
    # legacy attention names (query/key/value/proj_attn) are renamed
    legacy = {k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value").replace("to_out.0", "proj_attn"): v
              for k, v in ref.state_dict().items()}
    ours = AutoencoderKL.from_diffusers(legacy, norm_num_groups=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-5, rtol=1e-5)
    # a model without mid-block attention or quant convs
    ref2 = diffusers.AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=2,
                                   mid_block_add_attention=False, use_quant_conv=False,
                                   use_post_quant_conv=False).eval()
    ours2 = AutoencoderKL.from_diffusers(ref2).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 8, 8)
        torch.testing.assert_close(ours2.encode(x).mean, ref2.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-5)


def test_pretrained_autoencoder_caches_by_config(tmp_path, monkeypatch):
    from diffusion_book.models.autoencoder import book_autoencoder_config, pretrained_autoencoder
    monkeypatch.setenv("DIFFUSION_BOOK_CACHE", str(tmp_path))
    cfg = book_autoencoder_config("small", device="cpu")
    assert cfg == book_autoencoder_config("small", device="cpu")  # a stable cache key
    full = book_autoencoder_config("full", device="cpu")
    assert AutoencoderConfig(**full["ae"]).downsampling_factor == 4 and full["size"] == 64
    cfg = {**cfg, "n_train": 64, "ae": TINY.to_dict(),
           "train": {**cfg["train"], "steps": 4, "batch_size": 4, "disc_start": 2, "log_every": 2}}
    ae1, r1 = pretrained_autoencoder(cfg, verbose=False)
    ae2, r2 = pretrained_autoencoder(cfg, verbose=False)
    assert not r1["cached"] and r2["cached"]
    assert ae2.scaling_factor.item() == pytest.approx(r1["meta"]["scaling_factor"]) and ae2.scaling_factor.item() != 1.0
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ae2(x)[0], ae1(x)[0], atol=0, rtol=0)
