"""Our U-Net + DDPM against HF diffusers' UNet2DModel + DDPMScheduler, on the same data and budget, in one run.

Both sides get the same data, batch size, optimizer (AdamW), learning-rate warm-up, gradient clipping, EMA, the
same random batches/steps/noise (one seed), a parameter count within ±10 %, and either the same number of
training steps (`--steps`, the SMALL/CPU comparison of issue 5) or the same wall-clock budget (`--seconds`, the
GPU comparison of issue 9). Each side trains and samples in its own subprocess, so its peak memory is its own.
Samples start from the same initial noise and are scored by chapter 06's metrics (`diffusion_book.metrics`).

    python bench/ddpm_vs_diffusers.py --smoke                       # seconds, any machine: checks the plumbing
    python bench/ddpm_vs_diffusers.py --data digits --steps 3000    # SMALL, CPU
    python bench/ddpm_vs_diffusers.py --data fashion_mnist --seconds 210 --device cuda   # FULL, one GPU
    python bench/ddpm_vs_diffusers.py --data digits --memory        # peak memory per batch size, both sides
    python bench/ddpm_vs_diffusers.py --data fashion_mnist --seconds 210 --device cuda --n-samples 5000 \
        --only ours --out A    # one side per call (then the same with --only diffusers --out B) ...
    python bench/ddpm_vs_diffusers.py --data fashion_mnist --score-from A B --out results   # ... scored on any machine

Samplers (`--samplers`, default ddpm1000,ddim50,ddim20,dpm20,dpm10, the protocol of issue 9): each side with its own
library's loops from the same initial noise. It prints both sides and the ratios, and writes `--out`: results.json,
results.txt, one PNG grid per side, the samples as uint8 .npz per side keyed by sampler (6 files).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- configurations
def settings(args) -> dict:
    "Model and training settings shared by both sides."
    if args.data == "digits":
        # chapter 07's SMALL model: the small preset at 16 base channels (~0.30 M parameters)
        ours = dict(preset="small", overrides=dict(base_channels=16, head_channels=16))
        theirs = dict(sample_size=8, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                      attention_head_dim=16,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
        train = dict(batch_size=128, lr=2e-3, warmup=100, ema_decay=0.995, grad_clip=1.0)  # as chapter 07
    else:  # 28×28 Fashion-MNIST / MNIST: the FULL preset vs the reference configuration of issue 9
        ours = dict(preset="full")
        theirs = dict(sample_size=28, block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=32,
                      attention_head_dim=64,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
        train = dict(batch_size=256, lr=4e-4, warmup=500, ema_decay=0.9995, grad_clip=1.0)
    if args.smoke:
        ours = dict(preset="small", overrides=dict(base_channels=16, num_groups=4, head_channels=16))
        theirs.update(block_out_channels=(16, 32, 32), norm_num_groups=4, attention_head_dim=16)
        train.update(batch_size=16, warmup=2)
    return dict(ours=ours, theirs=theirs, train=train)


def load_data(name: str, smoke: bool):
    from diffusion_book.data import load_image_dataset
    x, y = load_image_dataset(name, "train")
    xt, yt = load_image_dataset(name, "test")
    if smoke and name != "digits":
        x, y, xt, yt = x[:512], y[:512], xt[:256], yt[:256]
    return x, y, xt, yt


def build(side: str, cfg: dict, device):
    if side == "ours":
        from diffusion_book.models.unet import UNET_PRESETS, UNet
        return UNet(UNET_PRESETS[cfg["ours"]["preset"]](**cfg["ours"].get("overrides", {}))).to(device)
    from diffusers import UNet2DModel
    return UNet2DModel(in_channels=1, out_channels=1, **cfg["theirs"]).to(device)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------- one side
def run_side(side: str, args) -> dict:
    "Train and sample one side; called in a subprocess. Returns a JSON-ready record."
    from diffusion_book.ddpm import EMA, TrainConfig, ddpm_sample, make_train_state, train_ddpm
    from diffusion_book.schedules import linear_beta_schedule
    torch.manual_seed(args.seed)  # the initial weights; the seed also sets batches, noise and the sampling noise
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = settings(args)
    x, _, _, _ = load_data(args.data, args.smoke)
    schedule = linear_beta_schedule(1000)
    model = build(side, cfg, device)
    net = model if side == "ours" else (lambda x_t, t, cond=None: model(x_t, t).sample)
    tc = TrainConfig(steps=args.steps or 10**9, seed=args.seed, mixed_precision=device.type == "cuda", **cfg["train"])

    class Wrapped(torch.nn.Module):  # the training loop calls model(x, t, cond)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x_t, t, cond=None):
            return net(x_t, t, cond)

    state = make_train_state(Wrapped(model), tc)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, t0, steps_done = [], time.perf_counter(), 0
    for rec in train_ddpm(state, schedule, x, tc):
        losses.append(rec["loss"])
        steps_done = rec["step"]
        if args.seconds and time.perf_counter() - t0 >= args.seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    state.ema.copy_to(state.model)
    state.model.eval()
    eps_net = lambda xt, t: state.model(xt, t)  # the EMA weights; returns ε̂ for both sides
    samples, sample_s = {}, {}
    for name in args.samplers.split(","):
        g = torch.Generator(device).manual_seed(1234 + args.seed)  # every sampler starts from the same x_T
        x_T = torch.randn(args.n_samples, *x.shape[1:], generator=g, device=device)
        t1 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = [(sample_ours if side == "ours" else sample_diffusers)(eps_net, name, chunk, g, schedule)
                   for chunk in x_T.split(args.sample_batch)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        sample_s[name] = time.perf_counter() - t1
        samples[name] = torch.cat(out).float().clamp(-1, 1).cpu()
        print(f"[{side}] {name}: {args.n_samples / sample_s[name]:.1f} samples/s", flush=True)
    first = args.samplers.split(",")[0]
    return dict(side=side, device_name=torch.cuda.get_device_name() if device.type == "cuda" else
                f"CPU, {os.cpu_count()} cores", params=n_params(model), steps=steps_done, train_seconds=train_s,
                images_per_second=steps_done * tc.batch_size / train_s, final_loss=float(np.mean(losses[-50:])),
                sample_seconds=sample_s[first], samples_per_second=args.n_samples / sample_s[first],
                sampler_seconds=sample_s, sampler_samples_per_second={k: args.n_samples / v for k, v in sample_s.items()},
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
                samples=samples)


SAMPLERS = {"ddpm1000": ("ddpm", 1000), "ddim50": ("ddim", 50), "ddim20": ("ddim", 20),
            "dpm20": ("dpm", 20), "dpm10": ("dpm", 10)}


def _parse_sampler(name: str) -> tuple[str, int]:
    if name not in SAMPLERS:
        raise SystemExit(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


@torch.no_grad()
def sample_ours(net, name, x_T, g, schedule):
    "Our samplers (chapters 07, 12), x̂₀ clipped to [−1, 1]; DDIM on the 'trailing' grid (chapter 12's choice)."
    from diffusion_book.ddpm import ddpm_sample
    from diffusion_book.samplers import ddim_sample, dpm_solver_pp_2m
    kind, steps = _parse_sampler(name)
    if kind == "ddpm":
        return ddpm_sample(net, schedule, x_T, generator=g, clip_x0=(-1, 1))
    if kind == "ddim":
        return ddim_sample(net, schedule, x_T, steps=steps, eta=0.0, spacing="trailing", clip_x0=(-1, 1))
    return dpm_solver_pp_2m(net, schedule, x_T, steps=steps, clip_x0=(-1, 1))


@torch.no_grad()
def sample_diffusers(model, name, x_T, g, schedule=None):
    "diffusers' own loops with their defaults for images: DDPM/DDIM clip_sample, DPM-Solver++ thresholding at 1."
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
    kind, steps = _parse_sampler(name)
    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    if kind == "ddpm":
        sched = DDPMScheduler(**common, variance_type="fixed_small", clip_sample=True)
    elif kind == "ddim":
        sched = DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True)
    else:  # dynamic thresholding with sample_max_value=1 is clipping x̂₀ to [−1, 1]
        sched = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                            thresholding=True, sample_max_value=1.0)
    sched.set_timesteps(steps)
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = model(sched.scale_model_input(x, t), t.expand(len(x)).to(x.device))
        kw = {"generator": g} if kind == "ddpm" else {}
        x = sched.step(eps, t, x, **kw).prev_sample
    return x


def probe_memory(side: str, args) -> dict:
    "Peak memory of a few training steps at batch `args.probe_batch` (one side, one subprocess)."
    from diffusion_book.ddpm import TrainConfig, make_train_state, train_ddpm
    from diffusion_book.schedules import linear_beta_schedule
    device = torch.device(args.device)
    cfg = settings(args)
    x, _, _, _ = load_data(args.data, args.smoke)
    model = build(side, cfg, device)
    net = model if side == "ours" else (lambda x_t, t, cond=None: model(x_t, t).sample)

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x_t, t, cond=None):
            return net(x_t, t, cond)

    tc = TrainConfig(**{**cfg["train"], "batch_size": args.probe_batch}, steps=3, mixed_precision=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in train_ddpm(make_train_state(Wrapped(model), tc), linear_beta_schedule(1000), x, tc):
        pass
    return dict(side=side, batch=args.probe_batch,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None)


def memory_table(args, out: Path):
    "Peak RSS (CPU) or peak CUDA memory per batch size, both sides, each in a fresh subprocess."
    rows = []
    for b in [int(v) for v in args.memory_batches.split(",")]:
        for side in ("ours", "diffusers"):
            cmd = [sys.executable, __file__, "--side", side, "--probe-batch", str(b), "--data", args.data,
                   "--device", args.device, "--out", str(out)] + (["--smoke"] if args.smoke else [])
            subprocess.run(cmd, check=True)
            rows.append(json.loads((out / f"probe_{side}_{b}.json").read_text()))
    key = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    lines = [f"peak memory ({'CUDA' if key == 'peak_cuda_mb' else 'process RSS'}, MB) per batch size, "
             f"3 training steps, data {args.data}", f"{'batch':>8s}{'ours':>10s}{'diffusers':>11s}{'ratio':>8s}"]
    for b in sorted({r["batch"] for r in rows}):
        o, d = (next(r[key] for r in rows if r["batch"] == b and r["side"] == s) for s in ("ours", "diffusers"))
        lines.append(f"{b:8d}{o:10.0f}{d:11.0f}{d / o:7.2f}×")
    text = "\n".join(lines)
    print(text)
    (out / "memory.txt").write_text(text + "\n")
    (out / "memory.json").write_text(json.dumps(rows, indent=2))


# ---------------------------------------------------------------------------------------------- orchestration
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits", choices=["digits", "fashion_mnist", "mnist"])
    ap.add_argument("--steps", type=int, default=None, help="equal number of training steps for both sides")
    ap.add_argument("--seconds", type=float, default=None, help="equal wall-clock training budget instead")
    ap.add_argument("--n-samples", type=int, default=None, help="samples per side (default: test-set size)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", default="ddpm1000,ddim50,ddim20,dpm20,dpm10",
                    help=f"comma-separated, from {', '.join(SAMPLERS)}; the first one gives the headline FD")
    ap.add_argument("--sample-batch", type=int, default=2500, help="samples per sampler call (memory)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds: one full run per seed, then mean ± sd")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the plumbing in seconds")
    ap.add_argument("--out", default=str(ROOT / "_build" / "bench" / "ddpm_vs_diffusers"))
    ap.add_argument("--memory", action="store_true", help="only measure peak memory per batch size")
    ap.add_argument("--memory-batches", default="32,64,128,256", help="batch sizes for --memory")
    ap.add_argument("--only", choices=["ours", "diffusers"],
                    help="train and sample one side only, writing <side>.json and <side>_samples.npz to --out "
                         "(e.g. one GPU call per side); score both later with --score-from")
    ap.add_argument("--score-from", nargs="+", metavar="DIR", help="score sides written by --only in these folders")
    ap.add_argument("--side", choices=["ours", "diffusers"], help=argparse.SUPPRESS)  # internal: one subprocess
    ap.add_argument("--probe-batch", type=int, help=argparse.SUPPRESS)  # internal: memory probe
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps = args.steps or 20
        args.n_samples = args.n_samples or 16
    if not args.steps and not args.seconds:
        args.steps = 1500 if args.data == "digits" else 3000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.side and args.probe_batch:  # child: one memory probe
        (out / f"probe_{args.side}_{args.probe_batch}.json").write_text(json.dumps(probe_memory(args.side, args)))
        return 0
    if args.memory:
        memory_table(args, out)
        return 0
    if args.seeds:
        return multi_seed(args, argv or sys.argv[1:], out)
    _, _, xt, yt = load_data(args.data, args.smoke)
    args.n_samples = args.n_samples or len(xt)
    if args.side or args.only:  # one side: train, sample, save its record and uint8 samples (no scoring)
        side = args.side or args.only
        rec = run_side(side, args)
        np.savez_compressed(out / f"{side}_samples.npz", **{k: to_uint8(v) for k, v in rec.pop("samples").items()})
        (out / f"{side}.json").write_text(json.dumps({**rec, "args": vars(args)}))
        return 0
    if args.score_from:  # score two sides run earlier with --only (e.g. one GPU call each)
        found = {side: [Path(d) for d in args.score_from if (Path(d) / f"{side}.json").exists()]
                 for side in ("ours", "diffusers")}
        missing = [side for side, dirs in found.items() if not dirs]
        if missing:
            raise SystemExit(f"--score-from: no {' or '.join(f'{m}.json' for m in missing)} in {args.score_from}; "
                             "write each side first with --only ours|diffusers --out DIR")
        recs = {side: load_side(dirs[0], side) for side, dirs in found.items()}
        for key in ("device", "steps", "seconds", "seed"):  # the budget and device the sides ran with
            setattr(args, key, recs["ours"]["args"][key])
        args.samplers = ",".join(recs["ours"]["samples"])
        args.n_samples = len(next(iter(recs["ours"]["samples"].values())))
        score(recs, args, xt, yt, out)
        return 0
    for name in args.samplers.split(","):
        _parse_sampler(name)
    work = Path(tempfile.mkdtemp(prefix="bench_ddpm_"))  # children's records and float samples; not in --out
    recs = {}
    for side in ("ours", "diffusers"):
        cmd = [sys.executable, __file__, "--side", side, "--data", args.data, "--device", args.device,
               "--seed", str(args.seed), "--n-samples", str(args.n_samples), "--out", str(work),
               "--samplers", args.samplers, "--sample-batch", str(args.sample_batch)]
        cmd += ["--steps", str(args.steps)] if args.steps else ["--seconds", str(args.seconds)]
        cmd += ["--smoke"] if args.smoke else []
        print(f"[{side}] training and sampling ...", flush=True)
        subprocess.run(cmd, check=True)
        recs[side] = load_side(work, side)
    shutil.rmtree(work, ignore_errors=True)
    score(recs, args, xt, yt, out)
    return 0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    "Images in [−1, 1] → uint8 [0, 255] (how samples are stored and exchanged)."
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def load_side(folder: Path, side: str) -> dict:
    "A side's record and its samples (uint8 .npz → float in [−1, 1]), as written by `--only`/`--side`."
    rec = json.loads((folder / f"{side}.json").read_text())
    with np.load(folder / f"{side}_samples.npz") as z:
        rec["samples"] = {k: torch.from_numpy(z[k]).float() / 127.5 - 1 for k in z.files}
    return rec


def score(recs, args, xt, yt, out):
    from diffusion_book.data import load_image_dataset
    from diffusion_book.metrics import evaluate_samples, get_evaluator
    from diffusion_book.utils import show_images
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    evaluator = get_evaluator(args.data, verbose=False)
    x_train, _ = load_image_dataset(args.data, "train")
    if args.data == "digits":  # as chapters 06/07: reference = the 1,438 training images
        ref, floor_set = x_train, xt[: args.n_samples]
    else:  # 28×28 (issue 9): N samples against the test images; floor = N training images against the test images
        ref, floor_set = xt, x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[: args.n_samples]]
    mem = x_train[:5000] if args.smoke else x_train  # memorization: nearest training neighbours
    floor = evaluate_samples(floor_set, evaluator, ref, mem) if not args.smoke else None
    names = args.samplers.split(",")
    rows = {}
    for side, r in recs.items():
        r["sampler_metrics"] = {}
        for name in names:
            m = evaluate_samples(r["samples"][name], evaluator, ref, mem)
            r["sampler_metrics"][name] = {k: m[k] for k in ("fd", "precision", "recall", "class_entropy", "nn_ratio_pixel")}
        m = evaluate_samples(r["samples"][names[0]], evaluator, ref, mem)  # the headline sampler
        r.update({k: m[k] for k in ("fd", "precision", "recall", "class_entropy", "nn_ratio_pixel")})
        r["class_histogram"] = m["class_histogram"]
        rows[side] = r
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4))
        for ax, name in zip(np.atleast_1d(axes), names):
            show_images(r["samples"][name][:64], nrow=8, ax=ax, title=f"{name}: FD {r['sampler_metrics'][name]['fd']:.2f}")
        fig.suptitle(f"{side}: {r['steps']} training steps, {args.data}")
        fig.savefig(out / f"grid_{side}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        np.savez_compressed(out / f"samples_{side}.npz", **{name: to_uint8(r["samples"][name]) for name in names})
    o, d = rows["ours"], rows["diffusers"]
    lines = [f"device: {args.device} ({o['device_name']}), "
             f"data: {args.data}, budget: {f'{args.steps} steps' if args.steps else f'{args.seconds} s'}, N = {args.n_samples} samples",
             f"{'':24s}{'ours':>12s}{'diffusers':>12s}{'ratio':>10s}"]
    def row(name, a, b, fmt, better="higher"):
        ratio = (a / b if better == "higher" else b / a) if a and b else float("nan")
        lines.append(f"{name:24s}{fmt.format(a):>12s}{fmt.format(b):>12s}{ratio:>9.2f}×")
    row("parameters", o["params"], d["params"], "{:,}")
    row("training steps", o["steps"], d["steps"], "{:d}")
    row("train images/s", o["images_per_second"], d["images_per_second"], "{:.0f}")
    for name in names:
        row(f"{name} samples/s", o["sampler_samples_per_second"][name], d["sampler_samples_per_second"][name], "{:.1f}")
    for name in names:
        row(f"{name} FD (lower better)", o["sampler_metrics"][name]["fd"], d["sampler_metrics"][name]["fd"], "{:.3f}",
            better="lower")
    row(f"{names[0]} precision", o["precision"], d["precision"], "{:.3f}")
    row(f"{names[0]} recall", o["recall"], d["recall"], "{:.3f}")
    row(f"{names[0]} class entropy", o["class_entropy"], d["class_entropy"], "{:.3f}")
    row("peak RSS MB", o["peak_rss_mb"], d["peak_rss_mb"], "{:.0f}", better="lower")
    if o.get("peak_cuda_mb"):
        row("peak CUDA MB", o["peak_cuda_mb"], d["peak_cuda_mb"], "{:.0f}", better="lower")
    if floor:
        lines.append(f"FD floor (real images vs the reference set, N = {args.n_samples}): {floor['fd']:.3f}")
    lines.append("ours: DDPM (ch. 07), DDIM η=0 on the 'trailing' grid, DPM-Solver++(2M) (ch. 12), x̂₀ clipped; diffusers: "
                 "DDPMScheduler/DDIMScheduler with clip_sample, DPMSolverMultistepScheduler with thresholding at 1")
    lines.append("ratios: >1 means ours is better (throughput, quality) or smaller (memory, FD)")
    text = "\n".join(lines)
    print(text)
    (out / "results.txt").write_text(text + "\n")
    summary = {s: {k: v for k, v in r.items() if k != "samples"} for s, r in rows.items()}
    summary["floor_fd"] = floor["fd"] if floor else None
    summary["args"] = vars(args)
    (out / "results.json").write_text(json.dumps(summary, indent=2))


def multi_seed(args, argv, out: Path) -> int:
    "One full run per seed (initial weights, batches, noise, sampling noise), then FD and throughput as mean ± sd."
    seeds = [int(v) for v in args.seeds.split(",")]
    base = [a for i, a in enumerate(argv) if a not in ("--seeds", "--out", "--seed")
            and (i == 0 or argv[i - 1] not in ("--seeds", "--out", "--seed"))]
    runs = []
    for s in seeds:
        print(f"=== seed {s} ===", flush=True)
        subprocess.run([sys.executable, __file__, *base, "--seed", str(s), "--out", str(out / f"seed{s}")], check=True)
        runs.append(json.loads((out / f"seed{s}" / "results.json").read_text()))
    def stats(vals):
        v = np.asarray(vals, dtype=float)
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))
    lines = [f"{len(seeds)} seeds {seeds}; data {args.data}; budget {f'{args.steps} steps' if args.steps else f'{args.seconds} s'}"
             f"; device {args.device}", f"{'':22s}{'ours':>18s}{'diffusers':>18s}{'ratio':>8s}"]
    for name, key, lower in (("FD (lower better)", "fd", True), ("train images/s", "images_per_second", False),
                             ("sampling samples/s", "samples_per_second", False), ("precision", "precision", False),
                             ("recall", "recall", False)):
        (mo, so), (md, sd) = stats([r["ours"][key] for r in runs]), stats([r["diffusers"][key] for r in runs])
        lines.append(f"{name:22s}{mo:11.3f} ± {so:5.3f}{md:11.3f} ± {sd:5.3f}{(md / mo if lower else mo / md):7.2f}×")
    diff = np.array([r["ours"]["fd"] - r["diffusers"]["fd"] for r in runs])
    se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    lines.append(f"FD ours − diffusers per seed: {', '.join(f'{d:+.3f}' for d in diff)}; mean {diff.mean():+.3f} ± {se:.3f} (SE); "
                 f"ours ≤ diffusers in {(diff <= 0).sum()}/{len(diff)} seeds")
    lines.append(f"FD floor (N = {runs[0]['args']['n_samples']}): {runs[0]['floor_fd']}")
    text = "\n".join(lines)
    print(text)
    (out / "seeds.txt").write_text(text + "\n")
    (out / "seeds.json").write_text(json.dumps({"seeds": seeds, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
