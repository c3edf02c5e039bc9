"""Training at scale (chapter 18): host syncs per step and training throughput, ours against diffusers, in one run.

(a) Host-device synchronisations (`aten._local_scalar_dense`, counted by `diffusion_book.train.SyncCounter`) per
    training step and per sampling step: our `train_loop` (fused AdamW, loss read every `log_every` steps) and our
    samplers, against a training step written as diffusers' `train_unconditional.py` example writes it
    (`UNet2DModel`, `DDPMScheduler.add_noise`, AdamW, clipping, `EMAModel`, the loss logged every step) and the
    `DDPMScheduler` / `DPMSolverMultistepScheduler` sampling loops. Counted over n and 2n steps; the per-step
    figure is the difference divided by n, so one-off syncs at start-up do not count.
(b) Training throughput (images/s) at equal parameters (±10 %, the SMALL configuration of
    `bench/ddpm_vs_diffusers.py`): ours in 1 and 2 processes (`torchrun`, gloo on CPU, NCCL on GPU), ours with
    `torch.compile`, and diffusers' step in 1 process.

    python bench/train_at_scale.py --smoke            # seconds: checks the plumbing
    python bench/train_at_scale.py                    # CPU, SMALL (8×8 digits); ratios printed
    python bench/train_at_scale.py --device cuda      # the FULL-scale issue's GPU run
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def ours_net(device, smoke):
    from diffusion_book.models.unet import UNet, unet_small_config
    kw = dict(base_channels=16, head_channels=16) if not smoke else dict(base_channels=8, head_channels=8, num_groups=4, channel_mults=(1, 2))
    torch.manual_seed(0)
    return UNet(unet_small_config(**kw)).to(device)


def diffusers_net(device, smoke):
    from diffusers import UNet2DModel
    cfg = dict(sample_size=8, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=16,
               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    if smoke:
        cfg.update(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    torch.manual_seed(0)
    return UNet2DModel(in_channels=1, out_channels=1, **cfg).to(device)


def data(device, n=1438):
    from diffusion_book.data import load_digits
    return load_digits("train")[0][:n].to(device)


# ------------------------------------------------------------------------------------------------ (a) host syncs
def ours_train_steps(n, device, smoke, batch=64, compile_=False):
    from diffusion_book.ddpm import TrainConfig, l_simple, make_train_state, train_loop
    from diffusion_book.schedules import linear_beta_schedule
    net, sched, x = ours_net(device, smoke), linear_beta_schedule(1000), data(device)
    if compile_:
        net.forward = torch.compile(net.forward)
    cfg = TrainConfig(steps=n, batch_size=batch, warmup=10, lr=2e-3, ema_decay=0.995)
    st = make_train_state(net, cfg, fused=True)
    loss = lambda m, x0, c, g: l_simple(lambda z, t: m(z, t), sched, x0, generator=g, check=False)
    return lambda: [None for _ in train_loop(st, x, cfg, loss, log_every=max(n, 1))], st


def diffusers_train_steps(n, device, smoke, batch=64):
    "One step as diffusers' examples/unconditional_image_generation/train_unconditional.py writes it."
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    net, x = diffusers_net(device, smoke), data(device)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    ema = EMAModel(net.parameters(), decay=0.995)
    g = torch.Generator(device).manual_seed(0)

    def run():
        for _ in range(n):
            idx = torch.randint(len(x), (batch,), generator=g, device=device)
            x0 = x[idx]
            noise = torch.randn(x0.shape, generator=g, device=device)
            t = torch.randint(0, 1000, (batch,), generator=g, device=device)
            pred = net(sched.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.step(net.parameters())
            loss.detach().item()  # the example logs the loss every step
    return run, None


def count(fn):
    from diffusion_book.train import SyncCounter
    with SyncCounter() as c:
        fn()
    return c.count


def per_step(make, n, *a):
    c1, c2 = count(make(n, *a)[0]), count(make(2 * n, *a)[0])
    return (c2 - c1) / n


def ours_sampler(name, steps, device, smoke):
    from diffusion_book import samplers
    from diffusion_book.ddpm import ddpm_sample
    from diffusion_book.schedules import linear_beta_schedule
    net = ours_net(device, smoke).eval()
    eps = lambda x, t: net(x, t)
    x_T = torch.randn(4, 1, 8, 8, device=device)
    with torch.no_grad():
        if name == "ddpm":
            return lambda: ddpm_sample(eps, linear_beta_schedule(steps), x_T)
        fn = {"ddim": samplers.ddim_sample, "dpm++": samplers.dpm_solver_pp_2m}[name]
        return lambda: fn(eps, linear_beta_schedule(1000), x_T, steps=steps)


def diffusers_sampler(name, steps, device, smoke):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
    net = diffusers_net(device, smoke).eval()
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}[name]
    s = cls(num_train_timesteps=steps if name == "ddpm" else 1000)

    def run():
        s.set_timesteps(steps)
        x = torch.randn(4, 1, 8, 8, device=device)
        with torch.no_grad():
            for t in s.timesteps:
                x = s.step(net(x, t).sample, t, x).prev_sample
    return run


def syncs(args, device):
    n = 3 if args.smoke else 10
    rows = {"training step": (per_step(ours_train_steps, n, device, args.smoke),
                              per_step(diffusers_train_steps, n, device, args.smoke))}
    for name in ("ddpm", "ddim", "dpm++"):
        o = [count(ours_sampler(name, k, device, args.smoke)) for k in (n, 2 * n)]
        d = [count(diffusers_sampler(name, k, device, args.smoke)) for k in (n, 2 * n)]
        rows[f"{name} sampling step"] = ((o[1] - o[0]) / n, (d[1] - d[0]) / n)
    return rows


# ------------------------------------------------------------------------------------------------ (b) throughput
def throughput(make, steps, *a, **kw):
    run, _ = make(2, *a, **kw)
    run()  # warm-up (compile, allocator)
    run, _ = make(steps, *a, **kw)
    t0 = time.perf_counter()
    run()
    return 64 * steps / (time.perf_counter() - t0)


def ddp_throughput(steps, device, smoke, world=2):
    "images/s of `train_run` under torchrun with `world` processes, timed inside rank 0 (start-up excluded)."
    code = ("import json, sys, time, torch\n"
            "from diffusion_book.train import RunConfig, train_run\n"
            "torch.set_num_threads(max(1, torch.get_num_threads() // %d))\n"
            "kw = dict(batch_size=64, warmup=10, log_every=1000, checkpoint_every=10**6, T=1000, base_channels=%d)\n"
            "train_run(RunConfig(steps=2, **kw), sys.argv[1] + '/warm', progress=False, device=%r)\n"
            "t0 = time.perf_counter()\n"
            "train_run(RunConfig(steps=%d, **kw), sys.argv[1] + '/run', progress=False, device=%r)\n"
            "dt = time.perf_counter() - t0\n"
            "import os\n"
            "if os.environ.get('RANK', '0') == '0': print(json.dumps({'images_per_s': 64 * %d / dt}))\n"
            % (world, 8 if smoke else 16, None if device.type == "cuda" else "cpu", steps,
               None if device.type == "cuda" else "cpu", steps))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "run.py").write_text(code)
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                            "--master_port=29541", str(Path(d) / "run.py"), d], capture_output=True, text=True, timeout=1800)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        return json.loads(r.stdout.strip().splitlines()[-1])["images_per_s"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=60, help="timed training steps per measurement")
    p.add_argument("--smoke", action="store_true", help="tiny networks and steps: check the plumbing")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--out", type=Path, default=None, help="write results.json here")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    steps = 3 if a.smoke else a.steps
    res = {"syncs_per_step": syncs(a, device)}
    print("host syncs per step        ours   diffusers")
    for k, (o, d) in res["syncs_per_step"].items():
        print(f"{k:24s} {o:6.1f}   {d:6.1f}")
    t_ours = throughput(ours_train_steps, steps, device, a.smoke)
    t_diff = throughput(diffusers_train_steps, steps, device, a.smoke)
    rows = {"ours, 1 process": t_ours, "diffusers, 1 process": t_diff}
    if not a.no_compile:
        try:
            rows["ours, torch.compile"] = throughput(ours_train_steps, steps, device, a.smoke, compile_=True)
        except Exception as e:  # inductor needs a C compiler on CPU
            print(f"torch.compile row skipped: {type(e).__name__}: {str(e)[:200]}")
    rows["ours, 2 processes (torchrun)"] = ddp_throughput(steps, device, a.smoke)
    res["images_per_s"] = rows
    print(f"\ntraining throughput (images/s, batch 64, {device.type}; ratios against diffusers, 1 process)")
    for k, v in rows.items():
        print(f"{k:30s} {v:8.0f}   {v / t_diff:5.2f}×")
    n1, n2 = ours_net(device, a.smoke), diffusers_net(device, a.smoke)
    res["parameters"] = {"ours": sum(q.numel() for q in n1.parameters()), "diffusers": sum(q.numel() for q in n2.parameters())}
    print(f"parameters: ours {res['parameters']['ours']:,}, diffusers {res['parameters']['diffusers']:,}")
    print(f"2-process scaling efficiency: {rows['ours, 2 processes (torchrun)'] / (2 * t_ours):.2f}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
