"""Chapter 12's samplers against HF diffusers' schedulers: sample error at equal NFE on exact scores, and throughput.

(a) Exact-score study. The exact ε of a Gaussian mixture (`ring_mixture()`, 2-D, and a 16-D mixture of 8 components;
`oracle_eps_model`) under the linear schedule (T = 1000) drives our `ddim_sample` / `euler_sample` / `heun_sample` /
`dpm_solver_pp_2m` and diffusers' `DDIMScheduler` / `EulerDiscreteScheduler` / `HeunDiscreteScheduler` /
`DPMSolverMultistepScheduler`, each in its own loop as diffusers' pipelines run it (`set_timesteps`,
`x_T · init_noise_sigma`, `scale_model_input`, `step`), from the same x_T ~ N(0, I), in float64, at equal
NFE ∈ {5, 10, 20, 50, 100, 1000} (Heun: NFE = 2·steps − 1 with steps = ⌊(NFE + 1)/2⌋; the NFE used is printed).
Error = sliced Wasserstein-1 (`diffusion_book.metrics.sliced_wasserstein`, the same 256 directions for every row) of
N samples to N true draws; the floor is the same distance from `--floor-repeats` independent sets of N true draws
(mean ± sd). Every time discretization runs on both sides with the same configuration ("matched": diffusers'
`timestep_spacing` / `use_karras_sigmas` set like ours); the last column compares our best discretization
(labelled) with diffusers' default configuration of that scheduler (the first column group). Configurations where
the two differ by design are named in the summary (DDIM "linspace": diffusers steps to t − ⌊T/S⌋, not to the next
listed step); a configuration our sampler refuses up front (DPM-Solver++ "linspace" with steps = T, whose grid
repeats a step — diffusers returns NaN there) is printed as "refused"; diffusers' failures are reported, ours make
the script exit 1.

(b) Throughput. Chapter 07's trained digits DDPM (`pretrained_ddpm(book_ddpm_config())`, its EMA U-Net) as ε-network
for our sampler loop and diffusers' scheduler loop at equal NFE and batch size, and a free ε (ε = x/10) that exposes
the cost of each loop itself: a warm-up run, then the median (and min) of `--repeats` timed runs per side,
alternating which side goes first.

    python bench/samplers_vs_diffusers.py --smoke            # seconds: checks the plumbing
    python bench/samplers_vs_diffusers.py                     # the full study on the CPU
    python bench/samplers_vs_diffusers.py --skip-gmm --device cuda   # throughput on a GPU

It prints both sides and the ratios (errors: ours/diffusers, < 1 means ours is better; throughput: ours/diffusers
samples/s, > 1 means ours is faster) and writes `--out`: `samplers.json` and `samplers_error_vs_nfe.png`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

try:
    import diffusers
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("bench/samplers_vs_diffusers.py compares against HF diffusers, which is not installed: "
             "pip install -e '.[parity]' (or pip install diffusers).")

from diffusion_book import samplers as S  # noqa: E402
from diffusion_book.data import GaussianMixture, ring_mixture  # noqa: E402
from diffusion_book.metrics import sliced_wasserstein  # noqa: E402
from diffusion_book.schedules import linear_beta_schedule  # noqa: E402

T = 1000
LINEAR = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)

# sampler → its time discretizations: label → (our keywords, diffusers scheduler keywords); the first is diffusers' default
CONFIGS = {
    "ddim": {"leading": (dict(spacing="leading"), dict(timestep_spacing="leading")),
             "trailing": (dict(spacing="trailing"), dict(timestep_spacing="trailing")),
             "linspace": (dict(spacing="linspace"), dict(timestep_spacing="linspace"))},
    "euler": {"linspace": (dict(spacing="linspace"), dict(timestep_spacing="linspace")),
              "karras": (dict(spacing="linspace", sigmas="karras"), dict(use_karras_sigmas=True))},
    "heun": {"linspace": (dict(spacing="linspace"), dict(timestep_spacing="linspace")),
             "karras": (dict(spacing="linspace", sigmas="karras"), dict(use_karras_sigmas=True))},
    "dpm++2m": {"linspace": (dict(spacing="linspace"), dict(timestep_spacing="linspace")),
                "karras": (dict(spacing="linspace", sigmas="karras"), dict(use_karras_sigmas=True)),
                "trailing": (dict(spacing="trailing"), dict(timestep_spacing="trailing"))},
}
# Identical algorithms still differ a little: diffusers' float32 ᾱ/σ/state, and for Euler/Heun its init_noise_sigma
# (σ_max instead of √(σ_max² + 1), 2e-5 relative); at the floor this moves the sliced-W estimate by up to ~0.1 %.
TIE = 2e-3  # relative slack under which "ours ≤ diffusers" counts as a tie
BY_DESIGN = {("ddim", "linspace"): "diffusers' DDIMScheduler steps from t to t − ⌊T/S⌋, not to the next listed step"}
OURS = {"ddim": "ddim_sample", "euler": "euler_sample", "heun": "heun_sample", "dpm++2m": "dpm_solver_pp_2m"}


def make_scheduler(sampler: str, **kw):
    "A stock diffusers scheduler for `sampler`, configured like ours (linear β, no clipping, σ → 0 at the end)."
    if sampler == "ddim":
        return diffusers.DDIMScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True, steps_offset=0, **kw)
    if sampler == "euler":
        return diffusers.EulerDiscreteScheduler(**LINEAR, final_sigmas_type="zero", **kw)
    if sampler == "heun":
        return diffusers.HeunDiscreteScheduler(**LINEAR, **kw)
    return diffusers.DPMSolverMultistepScheduler(**LINEAR, algorithm_type="dpmsolver++", solver_order=2,
                                                 solver_type="midpoint", lower_order_final=True,
                                                 final_sigmas_type="zero", **kw)


def steps_for(sampler: str, nfe: int) -> int:
    "Solver steps for an NFE budget: Heun spends 2·steps − 1 evaluations, the others one per step."
    return max(1, (nfe + 1) // 2) if sampler == "heun" else nfe


@torch.no_grad()
def diffusers_sample(sched, eps_model, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    "Diffusers' own sampling loop, as its pipelines run it."
    sched.set_timesteps(steps, device=x_T.device)
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = eps_model(sched.scale_model_input(x, t), t.expand(len(x)))
        x = sched.step(eps, t, x).prev_sample
    return x


class Counter:
    "Wraps an ε-model and counts its evaluations (NFE)."

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


# ---------------------------------------------------------------------------------------------- (a) exact scores
def mixtures(names):
    out = {}
    for name in names:
        if name == "ring":
            out["ring (2-D, 8 comp.)"] = ring_mixture()
        elif name == "hd":
            g = torch.Generator().manual_seed(0)
            means = 1.5 * torch.randn(8, 16, generator=g, dtype=torch.float64)  # 8 components in 16-D
            stds = 0.2 + 0.3 * torch.rand(8, 16, generator=g, dtype=torch.float64)
            out["16-D mixture (8 comp.)"] = GaussianMixture(means, stds, torch.rand(8, generator=g, dtype=torch.float64) + 0.5)
        else:
            raise ValueError(f"unknown mixture {name!r}: choose from ring, hd.")
    return out


def sw(x, ref, seed=0):
    "Sliced W1 with fixed directions; NaN when a sampler blew up (non-finite samples)."
    if not torch.isfinite(x).all():
        return float("nan")
    return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(seed))


def gmm_study(args) -> list[dict]:
    schedule = linear_beta_schedule(T)
    rows = []
    for name, gm in mixtures(args.mixtures).items():
        eps_model = S.oracle_eps_model(gm, schedule)
        g = torch.Generator().manual_seed(args.seed)
        ref = gm.sample(args.n, generator=g)
        x_T = torch.randn(args.n, gm.D, generator=g, dtype=torch.float64)
        floors = torch.tensor([sw(gm.sample(args.n, generator=g), ref) for _ in range(args.floor_repeats)])
        floor, floor_sd = floors.mean().item(), floors.std().item() if len(floors) > 1 else 0.0
        print(f"\n{name}: N = {args.n}, floor (true vs true, {len(floors)} draws) = {floor:.4f} ± {floor_sd:.4f}",
              flush=True)
        for sampler in args.samplers:
            for label, (our_kw, their_kw) in CONFIGS[sampler].items():
                for nfe in args.nfe:
                    steps = steps_for(sampler, nfe)
                    ours_eps, their_eps = Counter(eps_model), Counter(eps_model)
                    t0 = time.perf_counter()
                    refused = None
                    try:  # an exception of ours is reported with the rest and makes the script exit non-zero
                        x_ours, ours_fail = getattr(S, OURS[sampler])(ours_eps, schedule, x_T, steps=steps, **our_kw), None
                    except ValueError as e:  # a configuration our sampler refuses up front, by design (not a failure)
                        x_ours, ours_fail, refused = torch.full_like(x_T, float("nan")), None, str(e)
                    except Exception as e:
                        x_ours, ours_fail = torch.full_like(x_T, float("nan")), f"{type(e).__name__}: {e}"
                        print(f"  ours failed: {sampler} {label} steps={steps}: {ours_fail}", file=sys.stderr)
                    t1 = time.perf_counter()
                    try:
                        x_theirs, fail = diffusers_sample(make_scheduler(sampler, **their_kw), their_eps, x_T, steps), None
                    except Exception as e:  # diffusers' failure is a result, ours is not
                        x_theirs, fail = torch.full_like(x_T, float("nan")), f"{type(e).__name__}: {e}"
                    t2 = time.perf_counter()
                    if fail is None and not torch.isfinite(x_theirs).all():
                        fail = "non-finite samples"
                    e_o, e_d = sw(x_ours, ref), sw(x_theirs, ref)
                    used = 2 * steps - 1 if sampler == "heun" else steps
                    for side, c, bad in (("ours", ours_eps.calls, ours_fail or refused), ("diffusers", their_eps.calls, fail)):
                        if c != used and not bad:
                            print(f"  warning: {side} {sampler} {label} steps={steps} used {c} NFE, expected {used}",
                                  file=sys.stderr)
                    rows.append(dict(data=name, sampler=sampler, config=label, nfe=nfe, steps=steps, nfe_used=used,
                                     nfe_ours=ours_eps.calls, nfe_diffusers=their_eps.calls, err_ours=e_o,
                                     err_diffusers=e_d, ratio=e_o / e_d, floor=floor, floor_sd=floor_sd,
                                     max_abs_diff=float((x_ours - x_theirs).abs().max()), diffusers_error=fail,
                                     ours_error=ours_fail or (None if math.isfinite(e_o) or refused else "non-finite samples"),
                                     ours_refused=refused,
                                     seconds_ours=t1 - t0, seconds_diffusers=t2 - t1))
            print_sampler(rows, name, sampler)
    return rows


def num(v, width, digits):
    "A number for the table; NaN (a sampler that blew up) prints as 'NaN'."
    return f"{v:{width}.{digits}f}" if math.isfinite(v) else f"{'NaN':>{width}s}"


def print_sampler(rows, data, sampler):
    mine = [r for r in rows if r["data"] == data and r["sampler"] == sampler]
    labels = list(CONFIGS[sampler])
    head = f"  {sampler:8s}{'NFE':>5s}" + "".join(f"   {lab + ': diffusers':>19s}{'ours':>8s}{'ratio':>7s}" for lab in labels)
    print(head + f"   {'ours best / diffusers default':>31s}")
    for nfe in sorted({r["nfe"] for r in mine}):
        rs = {r["config"]: r for r in mine if r["nfe"] == nfe}
        used = rs[labels[0]]["nfe_used"]
        line = f"  {'':8s}{used:5d}"
        for lab in labels:
            r = rs[lab]
            ours_txt = f"{'refused':>8s}" if r["ours_refused"] else num(r["err_ours"], 8, 4)
            line += f"   {num(r['err_diffusers'], 19, 4)}{ours_txt}{num(r['ratio'], 7, 3)}"
        best = min(rs.values(), key=lambda r: r["err_ours"] if math.isfinite(r["err_ours"]) else math.inf)
        default = rs[labels[0]]
        line += f"   {num(best['err_ours'], 6, 4)} ({best['config']:8s}) {num(best['err_ours'] / default['err_diffusers'], 6, 3)}"
        print(line, flush=True)


# ---------------------------------------------------------------------------------------------- (b) throughput
def time_pair(run: dict, repeats: int, sync) -> dict:
    "Timed runs of both sides, alternating which goes first; returns {side: [seconds, …]}."
    times = {"ours": [], "diffusers": []}
    with torch.no_grad():
        for r in range(repeats):
            for side in (("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")):
                sync()
                t0 = time.perf_counter()
                run[side]()
                sync()
                times[side].append(time.perf_counter() - t0)
    return times


def throughput(args) -> list[dict]:
    from diffusion_book.ddpm import book_ddpm_config, pretrained_ddpm
    device = torch.device(args.device)
    bundle, _ = pretrained_ddpm(book_ddpm_config(device=args.device), verbose=False)
    net = bundle.ema.to(device).eval()
    models = {"digits U-Net": lambda x, t: net(x, t),  # the same callable on both sides
              "loop only (ε = x/10)": lambda x, t: 0.1 * x}  # no network: what each sampler loop itself costs
    schedule = linear_beta_schedule(T)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    print(f"\nthroughput: digits DDPM ({sum(p.numel() for p in net.parameters()):,} parameters) and a free ε "
          f"(loop overhead only), device {args.device}, {torch.get_num_threads()} thread(s); median (and min) of "
          f"{args.repeats} runs per side after a warm-up (loop only: {4 * args.repeats})", flush=True)
    print(f"  {'ε':22s}{'sampler':9s}{'NFE':>5s}{'batch':>7s}{'diffusers/s':>13s}{'ours/s':>10s}{'ratio':>7s}"
          f"{'ratio(min)':>11s}{'max|Δx|':>10s}")
    for model_name, eps_model in models.items():
        repeats = args.repeats if model_name == "digits U-Net" else 4 * args.repeats
        for sampler in args.samplers:
            our_kw, their_kw = next(iter(CONFIGS[sampler].values()))  # diffusers' default discretization, matched
            steps = steps_for(sampler, args.tp_nfe)
            for batch in args.batches:
                x_T = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed)).to(device)
                sched = make_scheduler(sampler, **their_kw)  # built once, as a pipeline does; set_timesteps per call
                run = {"ours": lambda: getattr(S, OURS[sampler])(eps_model, schedule, x_T, steps=steps, **our_kw),
                       "diffusers": lambda: diffusers_sample(sched, eps_model, x_T, steps)}
                with torch.no_grad():
                    out = {side: f() for side, f in run.items()}  # warm-up (and the outputs, to check they agree)
                times = time_pair(run, repeats, sync)
                med = {side: statistics.median(v) for side, v in times.items()}
                best = {side: min(v) for side, v in times.items()}
                row = dict(model=model_name, sampler=sampler, config=next(iter(CONFIGS[sampler])),
                           nfe=2 * steps - 1 if sampler == "heun" else steps, steps=steps, batch=batch,
                           seconds_ours=med["ours"], seconds_diffusers=med["diffusers"],
                           samples_per_s_ours=batch / med["ours"], samples_per_s_diffusers=batch / med["diffusers"],
                           ratio=med["diffusers"] / med["ours"], ratio_min=best["diffusers"] / best["ours"],
                           times=times, max_abs_diff=float((out["ours"].float() - out["diffusers"].float()).abs().max()))
                rows.append(row)
                print(f"  {model_name:22s}{sampler:9s}{row['nfe']:5d}{batch:7d}{row['samples_per_s_diffusers']:13.1f}"
                      f"{row['samples_per_s_ours']:10.1f}{row['ratio']:6.2f}×{row['ratio_min']:10.2f}×"
                      f"{row['max_abs_diff']:10.1e}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- output
def plot(rows, path: Path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datas = list(dict.fromkeys(r["data"] for r in rows))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(len(datas), len(samplers), figsize=(3.4 * len(samplers), 2.9 * len(datas)), squeeze=False)
    for i, d in enumerate(datas):
        for j, s in enumerate(samplers):
            ax = axes[i, j]
            for k, cfg in enumerate(CONFIGS[s]):
                rs = sorted((r for r in rows if r["data"] == d and r["sampler"] == s and r["config"] == cfg),
                            key=lambda r: r["nfe"])
                if not rs:
                    continue
                x = [r["nfe_used"] for r in rs]
                ax.plot(x, [r["err_ours"] for r in rs], "-o", ms=3, color=f"C{k}", label=f"ours, {cfg}")
                ax.plot(x, [r["err_diffusers"] for r in rs], "--x", ms=5, color=f"C{k}", alpha=0.7,
                        label=f"diffusers, {cfg}")
                floor, sd = rs[0]["floor"], rs[0]["floor_sd"]
            ax.axhspan(floor - 2 * sd, floor + 2 * sd, color="grey", alpha=0.25, label="true vs true (±2 sd)")
            ax.axhline(floor, color="grey", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_xticks(sorted({r["nfe_used"] for r in rows if r["sampler"] == s}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set(yscale="log", xlabel="NFE", ylabel="sliced W1 to true samples" if j == 0 else None,
                   title=f"{s} — {d}", )
            ax.title.set_fontsize(8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="samples per side (and true samples) in the exact-score study")
    ap.add_argument("--nfe", default=None, help="NFE budgets, comma-separated (default 5,10,20,50,100,1000)")
    ap.add_argument("--samplers", default="ddim,euler,heun,dpm++2m", help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--floor-repeats", type=int, default=5, help="independent true sets for the floor (mean ± sd)")
    ap.add_argument("--mixtures", default="ring,hd", help="ring (2-D ring of 8), hd (16-D, 8 components)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for the throughput part")
    ap.add_argument("--batches", default="359,1024", help="throughput batch sizes")
    ap.add_argument("--tp-nfe", type=int, default=20, help="NFE for the throughput part")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for the throughput part (default: torch's)")
    ap.add_argument("--skip-gmm", action="store_true", help="only the throughput part")
    ap.add_argument("--skip-throughput", action="store_true", help="only the exact-score study")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing in seconds")
    ap.add_argument("--out", default=str(ROOT / "_build" / "bench" / "samplers_vs_diffusers"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.nfe, args.mixtures, args.floor_repeats = min(args.n, 400), args.nfe or "5,10", "ring", 2
        args.batches, args.tp_nfe, args.repeats, args.threads = "16", 3, 1, args.threads or 1
    args.nfe = [int(v) for v in (args.nfe or "5,10,20,50,100,1000").split(",")]
    args.samplers = [s.strip() for s in args.samplers.split(",")]
    args.mixtures = [s.strip() for s in args.mixtures.split(",")]
    args.batches = [int(v) for v in args.batches.split(",")]
    if unknown := set(args.samplers) - set(CONFIGS):
        ap.error(f"unknown samplers {sorted(unknown)}; choose from {list(CONFIGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else f'CPU ({os.cpu_count()} cores)'}")
    print("error = sliced W1 to true samples (lower is better); ratio = ours / diffusers (< 1: ours better)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the oracle's tensors are small: one thread is faster (and steadier on a shared CPU)
    gmm = [] if args.skip_gmm else gmm_study(args)
    torch.set_num_threads(args.threads or threads)
    tp = [] if args.skip_throughput else throughput(args)
    wall = time.perf_counter() - t_start
    summary = summarize(gmm, tp)
    print(summary["text"])
    print(f"wall time {wall:.0f} s")
    record = dict(args=vars(args), diffusers=diffusers.__version__, torch=torch.__version__, wall_seconds=wall,
                  gmm=gmm, throughput=tp, summary={k: v for k, v in summary.items() if k != "text"})
    (out / "samplers.json").write_text(json.dumps(finite(record), indent=2))
    if gmm:
        plot(gmm, out / "samplers_error_vs_nfe.png")
    print(f"wrote {out / 'samplers.json'}" + (f" and {out / 'samplers_error_vs_nfe.png'}" if gmm else ""))
    if summary.get("ours_failures"):
        print("error: our samplers failed or produced non-finite samples (see the summary)", file=sys.stderr)
        return 1
    return 0


def finite(obj):
    "JSON has no NaN/Infinity: write them as null."
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def summarize(gmm, tp) -> dict:
    lines, res = ["", "summary"], {}
    if gmm:
        where = lambda rs: ", ".join(sorted({f"{r['sampler']} {r['config']} NFE {r['nfe']}" for r in rs}))  # noqa: E731
        same = [r["ratio"] for r in gmm if math.isfinite(r["ratio"]) and (r["sampler"], r["config"]) not in BY_DESIGN]
        res["matched_ratio_min"], res["matched_ratio_max"] = min(same), max(same)
        lines.append(f"  matched configurations, same algorithm: ours/diffusers error ratio in "
                     f"[{min(same):.4f}, {max(same):.4f}] over {len(same)} rows")
        for (smp, cfg), why in BY_DESIGN.items():
            if diff := [r["ratio"] for r in gmm if (r["sampler"], r["config"]) == (smp, cfg) and math.isfinite(r["ratio"])]:
                res[f"ratio_{smp}_{cfg}"] = [min(diff), max(diff)]
                lines.append(f"  {smp} {cfg} (differs by design: {why}): ratio in [{min(diff):.3f}, {max(diff):.3f}]")
        if fails := [r for r in gmm if r["diffusers_error"]]:
            lines.append(f"  diffusers failed ({fails[0]['diffusers_error']}) in {len(fails)} rows: {where(fails)}")
        if refusals := [r for r in gmm if r["ours_refused"]]:
            lines.append(f"  ours refused by design in {len(refusals)} rows: {where(refusals)} "
                         f"({refusals[0]['ours_refused']})")
        if ours_fails := [r for r in gmm if r["ours_error"]]:
            lines.append(f"  OURS FAILED ({ours_fails[0]['ours_error']}) in {len(ours_fails)} rows: {where(ours_fails)}")
        res["ours_failures"] = len(ours_fails)
        strict, tie, lost = 0, 0, []
        for key in sorted({(r["data"], r["sampler"], r["nfe"]) for r in gmm}):
            rs = [r for r in gmm if (r["data"], r["sampler"], r["nfe"]) == key]
            default = next(r for r in rs if r["config"] == next(iter(CONFIGS[key[1]])))
            best = min(rs, key=lambda r: r["err_ours"] if math.isfinite(r["err_ours"]) else math.inf)
            o, d = best["err_ours"], default["err_diffusers"]
            if math.isfinite(o) and (not math.isfinite(d) or o <= d):
                strict += 1
            elif math.isfinite(o) and o <= d * (1 + TIE):
                tie += 1
            else:
                lost.append(f"{key[0]} {key[1]} NFE {key[2]}: {o:.4f} vs {d:.4f}")
        n = strict + tie + len(lost)
        res.update(best_vs_default_strict=strict, best_vs_default_tie=tie, best_vs_default_lost=lost)
        lines.append(f"  ours (best discretization) vs diffusers (default configuration), {n} data × sampler × NFE: "
                     f"lower or equal in {strict}, within {100 * TIE:g} % (a tie) in {tie}, worse in {len(lost)}"
                     + (f": {'; '.join(lost)}" if lost else ""))
    for model in dict.fromkeys(r["model"] for r in tp):
        ratios = [r["ratio"] for r in tp if r["model"] == model]
        geo = math.exp(statistics.mean(math.log(v) for v in ratios))
        res[f"throughput_ratio[{model}]"] = dict(min=min(ratios), max=max(ratios), geomean=geo)
        lines.append(f"  throughput ours/diffusers, {model}: {min(ratios):.2f}× … {max(ratios):.2f}× "
                     f"(geometric mean {geo:.2f}×) over {len(ratios)} rows")
    return dict(text="\n".join(lines), **res)


if __name__ == "__main__":
    sys.exit(main())
