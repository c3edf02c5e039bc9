"""Chapter 15's cross-attention block and text U-Net against HF diffusers: outputs after conversion, throughput.

1. `SpatialTransformer` vs diffusers' `Transformer2DModel` (linear projections, GEGLU, layer norm) at the same
   channels, heads, context width, depth and input: diffusers' weights are converted with
   `SpatialTransformer.from_diffusers`, the outputs compared (with a padding mask), then forward+backward timed.
2. `TextUNet` vs diffusers' `UNet2DConditionModel` with cross-attention blocks at the same widths, levels, blocks
   per level, heads and context: parameters and forward+backward throughput only. The layouts do not match, so no
   weights are converted: our ResBlocks take the time embedding as a GroupNorm scale/shift (AdaGN, Dhariwal &
   Nichol 2021) where diffusers' default `ResnetBlock2D` adds it as a bias; our U-Net follows chapter 05 (one more
   block per level in the decoder, stride-2 downsampling after every level but the last), and diffusers' blocks
   downsample inside `CrossAttnDownBlock2D`.

Every step is timed after warm-up, median of `--repeats`, in one run on one machine; the ratios are ours/diffusers
in images per second (> 1: ours is faster).

    python bench/cross_attention_vs_diffusers.py --smoke     # seconds
    python bench/cross_attention_vs_diffusers.py             # chapter 15's latent U-Net, batch 64, CPU
"""
from __future__ import annotations

import argparse

import torch

from dit_vs_diffusers import timed  # the same timer (bench/ is on sys.path when run as a script)


def fwd_bwd(net, *args, **kwargs):
    def step():
        out = net(*args, **kwargs)
        out = out.sample if hasattr(out, "sample") else out
        out.square().mean().backward()
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=8, help="latent side")
    ap.add_argument("--channels", type=int, default=32, help="SpatialTransformer channels")
    ap.add_argument("--base", type=int, default=16, help="U-Net base channels (chapter 15: 16)")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="a tiny config, seconds")
    a = ap.parse_args(argv)
    if a.smoke:
        a.batch, a.channels, a.base, a.repeats = 4, 16, 8, 2
    from diffusers import Transformer2DModel, UNet2DConditionModel
    from diffusion_book.latent_diffusion import SpatialTransformer, TextUNet, TextUNetConfig
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, L, C, D = a.batch, a.tokens, a.channels, a.context
    ctx = torch.randn(B, L, D)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, L // 2:] = torch.rand(B, L - L // 2) < 0.5  # ragged captions
    print(f"torch {torch.__version__}, {a.threads} thread(s); batch {B}, {L} tokens of width {D}")

    # 1. the block, converted
    heads, head_dim = 2, C // 2
    ref = Transformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=C, norm_num_groups=4,
                             cross_attention_dim=D, use_linear_projection=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = SpatialTransformer.from_diffusers(ref)
    x = torch.randn(B, C, a.size, a.size)
    with torch.no_grad():
        diff = (ours(x, ctx, mask) - ref(x, encoder_hidden_states=ctx, encoder_attention_mask=mask.float()).sample)
    t_ours = timed(fwd_bwd(ours, x, ctx, mask), a.repeats)
    t_ref = timed(fwd_bwd(ref, x, encoder_hidden_states=ctx, encoder_attention_mask=mask.float()), a.repeats)
    n = lambda m: sum(p.numel() for p in m.parameters())
    print(f"\nSpatialTransformer vs Transformer2DModel ({C} channels, {heads} heads, {a.size}×{a.size}): "
          f"parameters {n(ours):,} vs {n(ref):,}; max |Δ output| after from_diffusers {diff.abs().max():.1e}")
    print(f"  forward+backward: ours {B / t_ours:8.1f} images/s, diffusers {B / t_ref:8.1f} images/s, "
          f"ratio {t_ref / t_ours:.2f}")

    # 2. the U-Net, same widths and levels, no conversion (layouts differ: see the docstring)
    cfg = TextUNetConfig(in_channels=4, base_channels=a.base, channel_mults=(1, 2), num_res_blocks=1,
                         attention_levels=(0, 1), head_channels=a.base, num_groups=4, context_dim=D)
    unet = TextUNet(cfg)
    ref_unet = UNet2DConditionModel(sample_size=a.size, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=cfg.level_channels, norm_num_groups=4, cross_attention_dim=D,
                                    attention_head_dim=a.base,
                                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    z, t = torch.randn(B, 4, a.size, a.size), torch.rand(B) * 999
    t_u = timed(fwd_bwd(unet, z, t, (ctx, mask)), a.repeats)
    t_r = timed(fwd_bwd(ref_unet, z, t, encoder_hidden_states=ctx, encoder_attention_mask=mask.float()), a.repeats)
    print(f"\nTextUNet vs UNet2DConditionModel (widths {cfg.level_channels}, cross-attention at both levels + mid, "
          f"{a.size}×{a.size}×4): parameters {n(unet):,} vs {n(ref_unet):,} ({n(unet) / n(ref_unet):.2f}×)")
    print(f"  forward+backward: ours {B / t_u:8.1f} images/s, diffusers {B / t_r:8.1f} images/s, ratio {t_r / t_u:.2f}")
    return {"block_max_diff": diff.abs().max().item(), "block_ratio": t_ref / t_ours, "unet_ratio": t_r / t_u}


if __name__ == "__main__":
    main()
