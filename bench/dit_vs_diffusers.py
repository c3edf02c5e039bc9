"""Our DiT (chapter 16) against HF diffusers' `DiTTransformer2DModel`: forward+backward throughput and parameters.

Both sides get the same hidden size, depth, heads, patch size, input and classes, the same batch, and the same
optimizer-free step (forward, mean-square loss, backward), timed after warm-up on the same machine in one run.
Prints the parameter counts of both and the throughput ratio ours/diffusers (goal ≥ 1.0).

Layouts differ, so parameter counts differ: diffusers' `ada_norm_zero` blocks each carry their *own* timestep and
class embedding (`CombinedTimestepLabelEmbeddings` inside every `AdaLayerNormZero`) where the reference code (and
ours) computes one conditioning vector c shared by all blocks; and diffusers' final layer regresses its shift/scale
from the time embedding of block 0 with a `proj_out_1` of width 2D.

    python bench/dit_vs_diffusers.py --smoke           # seconds: a tiny config
    python bench/dit_vs_diffusers.py                   # DiT-S/4-like depth 4 on 32×32×4, batch 8, CPU
"""
from __future__ import annotations

import argparse
import time

import torch

from diffusion_book.models.dit import DiT, DiTConfig


def timed(step, repeats: int) -> float:
    "Median seconds of `step()` over `repeats` calls, after two warm-up calls."
    step(); step()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="a tiny config, seconds")
    a = ap.parse_args(argv)
    if a.smoke:
        a.hidden, a.depth, a.heads, a.patch, a.size, a.batch, a.repeats = 64, 2, 4, 2, 8, 4, 2
    from diffusers import DiTTransformer2DModel
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours = DiT(DiTConfig(input_size=a.size, patch_size=a.patch, in_channels=a.channels, hidden_size=a.hidden,
                         depth=a.depth, num_heads=a.heads, num_classes=1000, learn_sigma=True))
    theirs = DiTTransformer2DModel(num_attention_heads=a.heads, attention_head_dim=a.hidden // a.heads,
                                   in_channels=a.channels, out_channels=2 * a.channels, num_layers=a.depth,
                                   sample_size=a.size, patch_size=a.patch, num_embeds_ada_norm=1000)
    for net in (ours, theirs):  # random weights everywhere, so that no zero-initialised branch is skipped
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.channels, a.size, a.size, generator=g)
    t = torch.randint(0, 1000, (a.batch,), generator=g)
    y = torch.randint(0, 1000, (a.batch,), generator=g)

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(x, t.float(), y).square().mean().backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        theirs(x, timestep=t, class_labels=y).sample.square().mean().backward()

    s_ours, s_theirs = timed(step_ours, a.repeats), timed(step_theirs, a.repeats)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    print(f"config: D={a.hidden} depth={a.depth} heads={a.heads} p={a.patch} input {a.channels}×{a.size}×{a.size} "
          f"batch {a.batch}, {a.threads} thread(s)")
    print(f"parameters: ours {n_ours:,}   diffusers {n_theirs:,}   (diffusers/ours {n_theirs / n_ours:.3f})")
    print(f"forward+backward: ours {a.batch / s_ours:.1f} img/s   diffusers {a.batch / s_theirs:.1f} img/s   "
          f"ratio ours/diffusers {s_theirs / s_ours:.2f}")
    return dict(params_ours=n_ours, params_diffusers=n_theirs, ratio=s_theirs / s_ours)


if __name__ == "__main__":
    main()
