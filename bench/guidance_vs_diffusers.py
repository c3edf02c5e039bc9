"""Classifier-free guidance: our class-conditional U-Net against diffusers' `UNet2DModel(num_class_embeds=11)`.

The comparison of issue 15 (chapter 13), on digits, all in one run:

- **Quality per guidance weight.** Both networks are trained the way chapter 13 trains its CFG model: through the
  book's one loop, `diffusion_book.ddpm.train_loop`, with chapter 13's loss `cfg_loss` (L_simple, labels dropped to
  the null id 10 with probability p_uncond = 0.1). diffusers' network enters through a three-line adapter,
  `unet(x, t, class_labels=c).sample`, so both sides see the same random batches, label drops, steps t and noise ε
  (one generator, seeded per seed), the same AdamW, warm-up, clipping, EMA and number of steps (`--steps`, default
  600: chapter 13 trains 1,200, halved so that 3 seeds × 2 sides fit ~10 min on 2 CPU cores); parameter counts
  are printed with their ratio (within ±10 %). (bench/ddpm_vs_diffusers.py does the same for the unconditional
  model: `train_ddpm` with an adapter for diffusers' network.) Both EMA networks are then sampled by the same
  sampler — DPM-Solver++(2M), `--sampling-steps` steps, x̂₀ not clipped (chapter 13's protocol) — from the same
  initial noise with the same target labels (the test split's, class-balanced), guided by
  `diffusion_book.guidance.classifier_free_guidance` over the same grid of Ho & Salimans' w (diffusers' guidance
  scale is γ = 1 + w). Scored as in chapter 13: class accuracy of the samples under chapter 06's evaluator (trained
  on real digits, independent of both generators), FD to the training images in its feature space, precision and
  recall. Each seed sets the initial weights, the batches/drops/noise of training and the sampling noise; the
  summary gives mean ± sd over seeds, ratios, and the paired difference ours − diffusers (mean ± SE).
- **Guided sampling throughput** (images/s, full `--sampling-steps` DPM-Solver++ runs at batch N and 16
  (`--throughput-batches`), w = 2, median of `--repeats` interleaved runs): one forward on a doubled batch per step
  (ours, `classifier_free_guidance`) against two forwards per step (conditional, then unconditional) on the same
  network, for both networks; our network
  against diffusers' at equal batch; and our whole stack against diffusers' own pipeline-style loop
  (`DPMSolverMultistepScheduler` stepping, `torch.cat([x] * 2)` and `class_labels=torch.cat([y, null])`, as
  diffusers' class-conditional pipelines do) on diffusers' network. The doubled-batch and two-forward guided ε are
  checked equal, and the pipeline-style loop's samples equal to our sampler's on the same network.

    python bench/guidance_vs_diffusers.py --smoke        # seconds, any machine: checks the plumbing
    python bench/guidance_vs_diffusers.py                # SMALL digits, CPU: 600 steps, seeds 0,1,2 (~8 min on 2 quiet cores)
    python bench/guidance_vs_diffusers.py --throughput-only   # the throughput section alone, untrained networks

It prints the tables and writes `--out`: results.txt, results.json, samples per seed/side/w (uint8 .npz) and a grid
of the first seed's samples per w (PNG).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES, NULL = 10, 10  # digits; the null label ∅ = num_classes on both sides


# ---------------------------------------------------------------------------------------------- configurations
def settings(args) -> dict:
    "Both networks and the shared training settings (chapter 13's SMALL CFG model)."
    from diffusion_book.ddpm import TrainConfig
    from diffusion_book.guidance import book_guidance_configs
    book = book_guidance_configs("small", device="cpu")["cfg"]  # chapter 13: small preset, 16 channels, 10 classes
    theirs = dict(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=NUM_CLASSES + 1,  # + the null id
                  block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=16,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))  # as bench/ddpm_vs_diffusers.py
    train = replace(TrainConfig(**book["train"]), steps=args.steps)  # batch 128, lr 2e-3, warm-up 100, EMA 0.995
    if args.smoke:
        train = replace(train, batch_size=16, warmup=2)
    return dict(ours=book["unet"], theirs=theirs, train=train, p_uncond=book["p_uncond"],
                schedule=book["schedule"], T=book["T"])


class DiffusersCFG(torch.nn.Module):
    "diffusers' `UNet2DModel` behind the book's network signature `net(x_t, t, cond) -> ε̂`; cond None → ∅."

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, cond=None):
        if cond is None:
            cond = torch.full((x.shape[0],), NULL, dtype=torch.long, device=x.device)
        return self.unet(x, t, class_labels=cond).sample


def build(side: str, cfg: dict, seed: int) -> torch.nn.Module:
    "The side's network with its initial weights drawn under `seed`."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if side == "ours":
            from diffusion_book.models.unet import UNet, UNetConfig
            return UNet(UNetConfig(**cfg["ours"]))
        from diffusers import UNet2DModel
        return DiffusersCFG(UNet2DModel(**cfg["theirs"]))


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------- train, sample, score
def train(side: str, cfg: dict, seed: int, x, y, sched) -> tuple[torch.nn.Module, dict]:
    "Chapter 13's CFG training (train_loop + cfg_loss) of one side; returns the EMA network and a record."
    from diffusion_book.ddpm import make_train_state, train_loop
    from diffusion_book.guidance import cfg_loss
    tc = replace(cfg["train"], seed=seed)  # the batches, label drops, t and ε of every step
    state = make_train_state(build(side, cfg, seed), tc)
    t0 = time.perf_counter()
    for _ in train_loop(state, x, tc, cfg_loss(sched, NUM_CLASSES, cfg["p_uncond"]), labels=y):
        pass
    seconds = time.perf_counter() - t0
    state.ema.copy_to(state.model)
    net = state.model.eval().requires_grad_(False)
    return net, dict(params=n_params(net), train_seconds=seconds, train_images_per_second=tc.steps * tc.batch_size / seconds,
                     final_loss=float(np.mean(state.losses[-50:])))


@torch.no_grad()
def sample_cfg(net, sched, x_T, y, w: float, steps: int) -> torch.Tensor:
    "Chapter 13's guided sampler: DPM-Solver++(2M), one doubled-batch forward per step, x̂₀ not clipped."
    from diffusion_book.guidance import classifier_free_guidance
    from diffusion_book.samplers import dpm_solver_pp_2m
    return dpm_solver_pp_2m(classifier_free_guidance(net, y, w, NULL, num_classes=NUM_CLASSES), sched, x_T, steps=steps)


def two_forward_cfg(net, y, w: float):
    "The guided ε with two forwards per step: ε̃ = (1 + w) ε(x, y) − w ε(x, ∅), each branch its own call."
    def eps(x, t):
        null = torch.full_like(y, NULL)
        e_c, e_u = net(x, t, y), net(x, t, null)
        return e_c + w * (e_c - e_u)
    return eps


@torch.no_grad()
def diffusers_pipeline_cfg(unet, x_T, y, w: float, steps: int) -> torch.Tensor:
    "diffusers' own loop as its class-conditional pipelines write it: doubled latents, γ = 1 + w, scheduler.step."
    from diffusers import DPMSolverMultistepScheduler
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02, algorithm_type="dpmsolver++", solver_order=2,
                                        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
                                        timestep_spacing="trailing")  # configured like our dpm_solver_pp_2m
    sched.set_timesteps(steps, device=x_T.device)
    labels = torch.cat([torch.full_like(y, NULL), y])  # (2B,): unconditional half first, as the pipelines do
    gamma = 1.0 + w
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(torch.cat([x] * 2), t)
        e_u, e_c = unet(inp, t.expand(len(inp)), class_labels=labels).sample.chunk(2)
        x = sched.step(e_u + gamma * (e_c - e_u), t, x).prev_sample
    return x


def score(raw: torch.Tensor, y, ev, x_train) -> dict:
    "Chapter 13's metrics on samples clamped to [−1, 1]: evaluator accuracy against the target labels, FD, P/R."
    from diffusion_book.metrics import embed, evaluate_samples
    s = raw.clamp(-1, 1)
    m = evaluate_samples(s, ev, x_train)
    _, p = embed(ev, s)
    return dict(accuracy=(p.argmax(1) == y).double().mean().item(), fd=m["fd"], precision=m["precision"],
                recall=m["recall"], pixel_std=raw.std().item())


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------- throughput
def throughput(nets: dict, sched, x_T, y, args) -> dict:
    "Guided sampling images/s per variant, median of interleaved repeats; plus the two equivalence checks."
    from diffusion_book.guidance import classifier_free_guidance
    from diffusion_book.samplers import dpm_solver_pp_2m
    w, steps = 2.0, args.sampling_steps
    run = {}
    for side, net in nets.items():
        run[f"{side}, one doubled-batch forward"] = lambda net=net: sample_cfg(net, sched, x_T, y, w, steps)
        run[f"{side}, two forwards"] = lambda net=net: dpm_solver_pp_2m(two_forward_cfg(net, y, w), sched, x_T,
                                                                        steps=steps)
    run["diffusers, pipeline-style loop"] = lambda: diffusers_pipeline_cfg(nets["diffusers"].unet, x_T, y, w, steps)
    times = {k: [] for k in run}
    with torch.no_grad():
        for f in run.values():  # warm-up
            f()
        for _ in range(args.repeats):  # interleaved, so that a change of load hits every variant alike
            for k, f in run.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        checks = {}
        t = torch.full((len(x_T),), 500.0)
        for side, net in nets.items():
            one = classifier_free_guidance(net, y, w, NULL, num_classes=NUM_CLASSES)(x_T, t)
            two = two_forward_cfg(net, y, w)(x_T, t)
            checks[f"{side}: |one doubled-batch ε̃ − two-forward ε̃|max"] = (one - two).abs().max().item()
        ours_loop = sample_cfg(nets["diffusers"], sched, x_T, y, w, steps)
        pipe = diffusers_pipeline_cfg(nets["diffusers"].unet, x_T, y, w, steps)
        checks["diffusers net: |our sampler − pipeline-style loop|max / |samples|max"] = (
            (ours_loop - pipe).abs().max() / pipe.abs().max()).item()
    return dict(images_per_second={k: len(x_T) / float(np.median(v)) for k, v in times.items()},
                seconds=times, checks=checks, w=w, batch=len(x_T), steps=steps)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="equal training steps for both sides (default 600)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--w", default="0,0.5,1,2,4,8", help="Ho & Salimans' w grid (diffusers' γ = 1 + w)")
    ap.add_argument("--sampling-steps", type=int, default=20, help="DPM-Solver++(2M) steps (= NFE)")
    ap.add_argument("--n-samples", type=int, default=None, help="samples per w (default: the test split, 359)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per throughput variant")
    ap.add_argument("--throughput-batches", default=None,
                    help="comma-separated batch sizes for the throughput section (default: N and 16)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the plumbing in seconds")
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the throughput section, on untrained networks (images/s does not depend on the weights)")
    ap.add_argument("--out", default=str(ROOT / "_build" / "bench" / "guidance_vs_diffusers"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.seeds = args.steps or 20, args.seeds or "0,1"
        args.n_samples, args.sampling_steps, args.repeats = args.n_samples or 32, 5, 1
        args.throughput_batches = args.throughput_batches or "32,4"
        args.w = "0,2" if args.w == ap.get_default("w") else args.w
    args.steps, args.seeds = args.steps or 600, args.seeds or "0,1,2"
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    ws = [float(v) for v in args.w.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from diffusion_book.data import load_image_dataset
    from diffusion_book.metrics import embed, evaluate_samples, get_evaluator
    from diffusion_book.schedules import make_schedule
    t_start = time.perf_counter()
    cfg = settings(args)
    sched = make_schedule(cfg["schedule"], cfg["T"])
    x, y = load_image_dataset("digits", "train")
    xt, yt = load_image_dataset("digits", "test")
    n = args.n_samples or len(xt)
    y_gen = yt.repeat(n // len(yt) + 1)[:n]  # the test split's labels: class-balanced targets, as chapter 13
    if args.throughput_only:
        nets = {side: build(side, cfg, seeds[0]).eval().requires_grad_(False) for side in ("ours", "diffusers")}
        tp = throughputs(nets, sched, x, y_gen, n, args)
        text = "\n".join([f"parameters: ours {n_params(nets['ours']):,}, diffusers {n_params(nets['diffusers']):,}; "
                          f"untrained networks; CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"]
                         + throughput_lines(tp, args))
        print(text)
        (out / "throughput.txt").write_text(text + "\n")
        (out / "throughput.json").write_text(json.dumps(tp, indent=2))
        return check_failures(tp)

    ev = get_evaluator("digits", verbose=False)
    _, p_real = embed(ev, xt)
    real = dict(accuracy=(p_real.argmax(1) == yt).double().mean().item(), fd=evaluate_samples(xt, ev, x)["fd"])
    print(f"budget: {args.steps} training steps per side at batch {cfg['train'].batch_size}, seeds {seeds}, "
          f"w ∈ {ws}, N = {n} samples per w, DPM-Solver++(2M) {args.sampling_steps} steps; "
          f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads", flush=True)
    runs, nets = [], None
    for seed in seeds:
        rec = {"seed": seed}
        seed_nets = {}
        for side in ("ours", "diffusers"):
            net, rec[side] = train(side, cfg, seed, x, y, sched)
            seed_nets[side] = net
            print(f"[seed {seed}] {side}: {rec[side]['params']:,} parameters, trained {args.steps} steps in "
                  f"{rec[side]['train_seconds']:.0f} s, final loss {rec[side]['final_loss']:.4f}", flush=True)
        x_T = torch.randn(n, *x.shape[1:], generator=torch.Generator().manual_seed(1000 + seed))  # same for both
        samples = {}
        for side, net in seed_nets.items():
            rec[side]["per_w"], samples[side] = {}, {}
            for w in ws:
                raw = sample_cfg(net, sched, x_T, y_gen, w, args.sampling_steps)
                rec[side]["per_w"][str(w)] = score(raw, y_gen, ev, x)
                samples[side][w] = raw
            np.savez_compressed(out / f"samples_seed{seed}_{side}.npz",
                                **{f"w={w:g}": to_uint8(s) for w, s in samples[side].items()})
        line = "  ".join(f"w={w:g}: acc {rec['ours']['per_w'][str(w)]['accuracy']:.3f}/"
                         f"{rec['diffusers']['per_w'][str(w)]['accuracy']:.3f} FD "
                         f"{rec['ours']['per_w'][str(w)]['fd']:.2f}/{rec['diffusers']['per_w'][str(w)]['fd']:.2f}"
                         for w in ws)
        print(f"[seed {seed}] ours/diffusers  {line}", flush=True)
        if nets is None:  # the first seed's networks: throughput and the sample grid
            nets = seed_nets
            grid(samples, ws, out / "grid.png", seed)
        runs.append(rec)

    tp = throughputs(nets, sched, x, y_gen, n, args)
    text = report(runs, tp, real, ws, seeds, cfg, args, n, time.perf_counter() - t_start)
    print(text)
    (out / "results.txt").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(dict(runs=runs, throughput=tp, real=real, args=vars(args),
                                                      train=asdict(cfg["train"]), p_uncond=cfg["p_uncond"]), indent=2))
    return check_failures(tp)


def throughputs(nets, sched, x, y_gen, n: int, args) -> dict:
    "`throughput` at each batch size of `--throughput-batches` (default N and 16), same noise seed."
    out = {}
    for b in [int(v) for v in (args.throughput_batches or f"{n},16").split(",")]:
        x_T = torch.randn(b, *x.shape[1:], generator=torch.Generator().manual_seed(999))
        out[str(b)] = throughput(nets, sched, x_T, y_gen.repeat(b // len(y_gen) + 1)[:b], args)
    return out


def check_failures(tp: dict) -> int:
    "1 if an equivalence check failed (a bug in one of the guided ε's or loops), else 0."
    bad = [f"batch {b}: {k}" for b, r in tp.items() for k, v in r["checks"].items() if not v < 1e-3]
    if bad:
        print(f"FAILED equivalence checks: {bad}", file=sys.stderr)
    return 1 if bad else 0


def grid(samples: dict, ws, path: Path, seed: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from diffusion_book.utils import show_images
    fig, axes = plt.subplots(2, len(ws), figsize=(2.2 * len(ws), 4.8), squeeze=False)
    for i, side in enumerate(samples):
        for j, w in enumerate(ws):
            show_images(samples[side][w][:64].clamp(-1, 1), nrow=8, ax=axes[i, j], title=f"{side}, w = {w:g}")
    fig.suptitle(f"classifier-free guidance, seed {seed}: ours (top) vs diffusers' UNet2DModel (bottom)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def report(runs, tp, real, ws, seeds, cfg, args, n, seconds) -> str:
    def ms(v):
        v = np.asarray(v, dtype=float)
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))

    def se(v):
        v = np.asarray(v, dtype=float)
        return v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")

    o, d = runs[0]["ours"]["params"], runs[0]["diffusers"]["params"]
    tr = lambda side: ms([r[side]["train_images_per_second"] for r in runs])[0]
    L = [f"budget: {args.steps} training steps per side (batch {cfg['train'].batch_size}, AdamW lr {cfg['train'].lr:g}, "
         f"warm-up {cfg['train'].warmup}, EMA {cfg['train'].ema_decay}, p_uncond {cfg['p_uncond']}), {len(seeds)} seeds "
         f"{seeds}, N = {n} samples per w, DPM-Solver++(2M) {args.sampling_steps} steps, x̂₀ not clipped; "
         f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; whole run {seconds:.0f} s",
         f"parameters: ours {o:,}, diffusers {d:,} (ours/diffusers {o / d:.3f})",
         f"training images/s (mean over seeds): ours {tr('ours'):.0f}, diffusers {tr('diffusers'):.0f} "
         f"(ratio {tr('ours') / tr('diffusers'):.2f}×)",
         f"real test digits: evaluator accuracy {real['accuracy']:.3f}, FD to the training set {real['fd']:.3f} "
         f"(the floor at N = 359)", "",
         "accuracy (higher better) and FD (lower better) per w, mean ± sd over seeds; ratio > 1: ours better; "
         "paired difference ours − diffusers, mean ± SE",
         f"{'w':>4s} {'γ':>4s} | {'acc ours':>13s} {'acc diffusers':>13s} {'ratio':>6s} {'Δacc':>15s} | "
         f"{'FD ours':>13s} {'FD diffusers':>13s} {'ratio':>6s} {'ΔFD':>15s} {'ours≤':>5s}"]
    for w in ws:
        get = lambda side, k: [r[side]["per_w"][str(w)][k] for r in runs]
        ao, ad, fo, fd = get("ours", "accuracy"), get("diffusers", "accuracy"), get("ours", "fd"), get("diffusers", "fd")
        (mao, sao), (mad, sad), (mfo, sfo), (mfd, sfd) = ms(ao), ms(ad), ms(fo), ms(fd)
        da, df = np.subtract(ao, ad), np.subtract(fo, fd)
        L.append(f"{w:4g} {1 + w:4g} | {mao:6.3f} ± {sao:4.3f} {mad:6.3f} ± {sad:4.3f} {mao / mad:5.3f}× "
                 f"{da.mean():+6.3f} ± {se(da):5.3f} | {mfo:6.2f} ± {sfo:4.2f} {mfd:6.2f} ± {sfd:4.2f} {mfd / mfo:5.2f}× "
                 f"{df.mean():+6.2f} ± {se(df):5.2f} {int((df <= 0).sum())}/{len(df)}")
    L.append("")
    L.append(f"recall (mean over seeds) per w: " + ", ".join(
        f"w={w:g} {ms([r['ours']['per_w'][str(w)]['recall'] for r in runs])[0]:.2f}/"
        f"{ms([r['diffusers']['per_w'][str(w)]['recall'] for r in runs])[0]:.2f}" for w in ws) + " (ours/diffusers)")
    return "\n".join(L + [""] + throughput_lines(tp, args))


def throughput_lines(tps: dict, args) -> list[str]:
    L = []
    for tp in tps.values():
        L += _throughput_lines(tp, args) + [""]
    return L[:-1]


def _throughput_lines(tp, args) -> list[str]:
    ips, L = tp["images_per_second"], []
    one, two = "one doubled-batch forward", "two forwards"
    L += [f"guided sampling throughput, images/s (batch {tp['batch']}, w = {tp['w']:g}, {tp['steps']} steps, "
              f"median of {args.repeats} interleaved runs):"]
    for k, v in ips.items():
        L.append(f"  {k:40s}{v:9.1f}")
    L += [f"  {one} / {two}: ours {ips[f'ours, {one}'] / ips[f'ours, {two}']:.2f}×, "
          f"diffusers' net {ips[f'diffusers, {one}'] / ips[f'diffusers, {two}']:.2f}×",
          f"  our net / diffusers' net, both {one}: {ips[f'ours, {one}'] / ips[f'diffusers, {one}']:.2f}×",
          f"  ours (net + CFG + sampler) / diffusers' pipeline-style loop on its net: "
          f"{ips[f'ours, {one}'] / ips['diffusers, pipeline-style loop']:.2f}×"]
    L += [f"  checks (must be ~0):"] + [f"    {k}: {v:.2e}" for k, v in tp["checks"].items()]
    return L


if __name__ == "__main__":
    sys.exit(main())
