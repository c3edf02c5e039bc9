"Chapter 15 (latent diffusion, cross-attention, text): exact properties, the pipeline format, bad input. Tiny and fast."
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from diffusion_book.ddpm import DataSpec, DiffusionModel
from diffusion_book.guidance import classifier_free_guidance
from diffusion_book.latent_diffusion import (HELD_OUT, ContrastiveTextImage, CrossAttention, SpatialTransformer,
                                             TextEncoder, TextEncoderConfig, TextToImagePipeline, TextUNet,
                                             TextUNetConfig, WordTokenizer, info_nce_loss, scaled_linear_beta_schedule,
                                             shapes_text_data, text_diffusion_loss, unet_flops)
from diffusion_book.models.autoencoder import AutoencoderConfig, AutoencoderKL

CAPS = ["a small red circle at the top left", "a red circle left of a blue square", "a large green cross at the top right"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_unet(context_dim=16, seed=0):
    torch.manual_seed(seed)
    return TextUNet(TextUNetConfig(in_channels=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                   attention_levels=(0, 1), head_channels=8, num_groups=4, context_dim=context_dim))


def randomise_outputs(net):
    "Zero-initialised output layers made non-zero, so that the text can matter."
    for m in net.modules():
        if isinstance(m, SpatialTransformer):
            torch.nn.init.normal_(m.proj_out.weight, std=0.1)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.from_captions(CAPS + ["a blue square above a yellow triangle"], max_length=10)


def test_tokenizer_round_trip_unknown_and_empty(tok):
    ids, mask = tok(CAPS)
    assert ids.shape == (3, 10) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert tok.decode(ids) == CAPS
    assert (ids[:, 0] == WordTokenizer.BOS).all() and torch.equal(mask, ids != WordTokenizer.PAD)
    ids_u, _ = tok(["A Purple Circle!"])
    assert tok.decode(ids_u) == ["a <unk> circle"]
    ids_e, mask_e = tok([""])
    assert mask_e.sum() == 1 and ids_e[0, 0] == WordTokenizer.BOS
    assert WordTokenizer.from_dict(tok.to_dict()).vocab == tok.vocab


def test_tokenizer_truncation_warns_and_bad_input(tok):
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tok(["a red circle " * 10])
    assert ids.shape == (1, 10) and mask.all()
    with pytest.raises(ValueError, match="non-empty"):
        tok([])
    with pytest.raises(TypeError, match="string"):
        tok(["a red circle", 3])
    with pytest.raises(ValueError, match="special"):
        WordTokenizer(["<pad>", "red"])


def test_cross_attention_matches_explicit_softmax_and_masks_padding():
    torch.manual_seed(0)
    ca = CrossAttention(12, 10, heads=3, head_dim=4)
    h, c = torch.randn(2, 5, 12), torch.randn(2, 6, 10)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    q = (h @ ca.to_q.weight.T).reshape(2, 5, 3, 4).transpose(1, 2)
    k = (c @ ca.to_k.weight.T).reshape(2, 6, 3, 4).transpose(1, 2)
    v = (c @ ca.to_v.weight.T).reshape(2, 6, 3, 4).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / 2.0 + torch.where(mask, 0.0, -torch.inf)[:, None, None]
    ref = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 12) @ ca.to_out[0].weight.T + ca.to_out[0].bias
    torch.testing.assert_close(ca(h, c, mask), ref, atol=1e-5, rtol=1e-5)
    # padded positions carry no weight: junk there changes nothing
    c2 = c.clone()
    c2[0, 3:] = 100 * torch.randn(3, 10)
    torch.testing.assert_close(ca(h, c2, mask), ca(h, c, mask), atol=1e-5, rtol=1e-5)


def test_single_token_is_a_query_independent_bias():
    torch.manual_seed(1)
    ca = CrossAttention(8, 6, heads=2, head_dim=4)
    out = ca(torch.randn(3, 7, 8), torch.randn(3, 1, 6))
    torch.testing.assert_close(out, out[:, :1].expand_as(out), atol=1e-6, rtol=0)


def test_spatial_transformer_identity_at_init_and_padding_invariant():
    torch.manual_seed(2)
    st = SpatialTransformer(8, 6, heads=2, head_dim=4, num_groups=4)
    x, c = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 6)
    m = torch.ones(2, 4, dtype=torch.bool)
    assert torch.equal(st(x, c, m), x)
    torch.nn.init.normal_(st.proj_out.weight, std=0.2)
    c16 = torch.cat([c, torch.randn(2, 12, 6)], 1)
    m16 = torch.cat([m, torch.zeros(2, 12, dtype=torch.bool)], 1)
    torch.testing.assert_close(st(x, c16, m16), st(x, c, m), atol=1e-5, rtol=1e-5)


def test_text_unet_contract_and_text_dependence():
    net = tiny_unet()
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0])
    a, b = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    m = torch.ones(2, 5, dtype=torch.bool)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    assert torch.equal(net(z, t, (a, m)), net(z, t, (b, m))), "identity transformers: text-blind at init"
    randomise_outputs(net)
    out = net(z, t, (a, m))
    assert out.shape == z.shape and (out - net(z, t, (b, m))).abs().max() > 1e-4
    with pytest.raises(TypeError, match="cond must be"):
        net(z, t, a)
    with pytest.raises(ValueError, match="context"):
        net(z, t, (a[..., :3], m))
    with pytest.raises(TypeError, match="bool"):
        net(z, t, (a, m.float()))
    with pytest.raises(ValueError, match="num_classes"):
        TextUNetConfig(num_classes=3)


def test_cfg_with_empty_caption_one_forward_equals_two():
    net = randomise_outputs(tiny_unet())
    z, t = torch.randn(3, 4, 8, 8), torch.full((3,), 400.0)
    c, m = torch.randn(3, 6, 16), torch.ones(3, 6, dtype=torch.bool)
    m[0, 3:] = False
    null = (torch.randn(1, 6, 16), torch.tensor([[True] + [False] * 5]))
    calls = []
    counting = lambda x, tt, cond: (calls.append(x.shape[0]), net(x, tt, cond))[1]
    w = 2.5
    out = classifier_free_guidance(counting, (c, m), w, null)(z, t)
    e_c, e_u = net(z, t, (c, m)), net(z, t, (null[0].expand(3, -1, -1), null[1].expand(3, -1)))
    torch.testing.assert_close(out, (1 + w) * e_c - w * e_u, atol=1e-5, rtol=1e-5)
    assert calls == [6], "one doubled-batch forward per step"
    torch.testing.assert_close(classifier_free_guidance(net, (c, m), 0.0, null)(z, t), e_c, atol=1e-6, rtol=0)
    torch.testing.assert_close(classifier_free_guidance(net, (c, m), -1.0, null)(z, t), e_u, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="null_cond must be one too"):
        classifier_free_guidance(net, (c, m), 1.0, null[0])
    with pytest.raises(ValueError, match="differ in shape"):
        classifier_free_guidance(net, (c, m), 1.0, (null[0][:, :4], null[1][:, :4]))(z, t)


def test_info_nce_closed_forms():
    B = 8
    torch.testing.assert_close(info_nce_loss(torch.zeros(B, B)), torch.tensor(math.log(B)))
    lg = torch.randn(B, B, generator=gen(0))
    ref = 0.5 * (F.cross_entropy(lg, torch.arange(B)) + F.cross_entropy(lg.T, torch.arange(B)))
    torch.testing.assert_close(info_nce_loss(lg), ref)
    groups = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    same = (groups[:, None] == groups[None]).float().requires_grad_(True)
    g, = torch.autograd.grad(info_nce_loss(30 * same, groups), same)
    assert g.abs().max() < 1e-6  # identical captions are not pushed apart


def test_text_encoder_padding_invariance_and_clip_shapes(tok):
    torch.manual_seed(3)
    enc = TextEncoder(TextEncoderConfig(len(tok), 16, dim=16, layers=2, heads=2))
    ids, mask = tok(CAPS)
    ids16 = torch.cat([ids, torch.zeros(3, 6, dtype=torch.long)], 1)
    mask16 = torch.cat([mask, torch.zeros(3, 6, dtype=torch.bool)], 1)
    torch.testing.assert_close(enc(ids16, mask16)[:, :10], enc(ids, mask), atol=1e-5, rtol=1e-5)
    assert (enc(ids, mask)[~mask] == 0).all()
    with pytest.raises(ValueError, match="at most"):
        enc(torch.zeros(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.bool))
    clip = ContrastiveTextImage(enc.config, 8, 3, 4)
    assert clip(torch.zeros(3, 3, 16, 16), ids, mask).shape == (3, 3)


def test_text_diffusion_loss_drops_captions():
    net = tiny_unet()
    enc = TextEncoder(TextEncoderConfig(20, 8, dim=16, layers=1, heads=2))
    ids = torch.randint(3, 20, (10, 8))
    ids[:, 0] = WordTokenizer.BOS
    null = torch.tensor([WordTokenizer.BOS] + [WordTokenizer.PAD] * 7)
    seen = []
    spy = lambda z, t, cond: (seen.append(cond[1].sum(1)), net(z, t, cond))[1]
    loss = text_diffusion_loss(scaled_linear_beta_schedule(), enc, ids, null, p_uncond=0.5)(
        spy, torch.randn(400, 4, 8, 8), torch.arange(400) % 10, gen(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    frac_null = (seen[0] == 1).double().mean().item()
    assert 0.4 < frac_null < 0.6, frac_null  # p_uncond = 0.5 over 400 draws
    with pytest.raises(ValueError, match="p_uncond"):
        text_diffusion_loss(scaled_linear_beta_schedule(), enc, ids, null, p_uncond=1.0)


def test_scaled_linear_schedule():
    s = scaled_linear_beta_schedule(1000)
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([0.00085, 0.012], dtype=torch.float64))
    d = s.betas.sqrt().diff()
    torch.testing.assert_close(d, torch.full_like(d, d[0].item()))
    with pytest.raises(ValueError):
        scaled_linear_beta_schedule(1000, 0.02, 0.01)


def test_held_out_pairs_are_removed():
    x, caps, attrs = shapes_text_data("test", size=16)
    assert len(x) == len(caps) < 1000
    for colour, shape in HELD_OUT:
        assert not any(f"{colour} {shape}" in c for c in caps)


def test_unet_flops_scales_with_area():
    cfg = TextUNetConfig(in_channels=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                         mid_attention=False, head_channels=8, num_groups=4, context_dim=8)
    r = unet_flops(cfg, 16) / unet_flops(cfg, 8)
    assert 3.5 < r < 4.5  # convolutions only: FLOPs ∝ H·W


def tiny_pipeline(tok):
    torch.manual_seed(4)
    ae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 8, 8), latent_channels=4, norm_num_groups=4))
    enc = TextEncoder(TextEncoderConfig(len(tok), tok.max_length, dim=16, layers=1, heads=2))
    model = DiffusionModel(randomise_outputs(tiny_unet()), scaled_linear_beta_schedule(), DataSpec((4, 8, 8), None))
    return TextToImagePipeline(ae.eval(), tok, enc.eval(), model.eval())


def test_pipeline_samples_and_round_trips(tok, tmp_path):
    pipe = tiny_pipeline(tok)
    a = pipe(CAPS[:2], steps=3, guidance=2.0, generator=gen(0))
    assert a.shape == (2, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    pipe.save(tmp_path / "pipe")
    (tmp_path / "pipe.old").mkdir()
    (tmp_path / "pipe.old" / "junk").write_text("left by an interrupted save")
    pipe.save(tmp_path / "pipe")  # overwriting a saved pipeline works, even with a stale .old folder around
    assert not (tmp_path / "pipe.old").exists()
    pipe2 = TextToImagePipeline.load(tmp_path / "pipe")
    # the same weights; freshly loaded tensors may select other CPU kernels (differences ~1e-6)
    torch.testing.assert_close(pipe2(CAPS[:2], steps=3, guidance=2.0, generator=gen(0)), a, atol=1e-5, rtol=0)
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == [
        "autoencoder.json", "autoencoder.safetensors", "pipeline.json", "text_encoder.safetensors", "unet.safetensors"]
    (tmp_path / "pipe" / "pipeline.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="format"):
        TextToImagePipeline.load(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError):
        TextToImagePipeline.load(tmp_path / "nothing")


def test_pipeline_bad_input(tok):
    pipe = tiny_pipeline(tok)
    with pytest.raises(ValueError, match="non-empty"):
        pipe([])
    with pytest.raises(ValueError, match="x_T"):
        pipe(CAPS[:1], steps=2, x_T=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="guidance"):
        pipe(CAPS[:1], steps=2, guidance=float("inf"))
    with pytest.warns(UserWarning, match="truncated"):
        pipe(["a red circle " * 10], steps=2)
    with pytest.raises(ValueError, match="do not fit"):
        TextToImagePipeline(pipe.autoencoder, tok, TextEncoder(TextEncoderConfig(len(tok), 10, dim=32, heads=2)),
                            pipe.model)
    with pytest.raises(TypeError, match="TextUNet"):
        TextToImagePipeline(pipe.autoencoder, tok, pipe.text_encoder, "not a model")


def test_diffusion_model_sample_with_cond_needs_null_for_guidance(tok):
    pipe = tiny_pipeline(tok)
    cond = pipe.encode_text(CAPS[:2])
    with pytest.raises(ValueError, match="null_cond"):
        pipe.model.sample(2, cond=cond, guidance=1.0, steps=2)
    with pytest.raises(ValueError, match="not both"):
        pipe.model.sample(2, cond=cond, labels=1, steps=2)
    assert pipe.model.sample(2, cond=cond, steps=2, generator=gen(0)).shape == (2, 4, 8, 8)


def test_text_unet_in_a_model_file(tmp_path):
    model = DiffusionModel(tiny_unet(), scaled_linear_beta_schedule(), DataSpec((4, 8, 8), None))
    model.save(tmp_path / "m.safetensors")
    back = DiffusionModel.load(tmp_path / "m.safetensors")
    assert isinstance(back.net, TextUNet) and back.net.config == model.net.config
