"""Parity of chapter 12's samplers with HF diffusers' schedulers (run with `pytest -m parity`; skipped without diffusers).

Both sides are driven by the same ε function (the exact ε of `ring_mixture()` under the linear schedule, in float64,
evaluated at the timestep each side passes: `eps(x, t)` with σ(t) interpolated linearly in t as diffusers does) and
start from the same x_T ~ N(0, I) in VP coordinates. Diffusers runs its own loop (`set_timesteps`,
`scale_model_input`, `step`); its states are mapped back to VP coordinates (x / √(σ² + 1)) after every full step and
compared with what our sampler hands its `callback`. The identical configuration on the diffusers side:

* schedule: `num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02` (= `linear_beta_schedule(1000)`)
* DDIM: `DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing)`,
  `step(eta=η, variance_noise=z)` with the z our sampler draws from the same seeded generator
* Euler / Heun: `EulerDiscreteScheduler(timestep_spacing="linspace", use_karras_sigmas=k, final_sigmas_type="zero")`,
  `HeunDiscreteScheduler(timestep_spacing="linspace", use_karras_sigmas=k)`; the initial state is
  x_T · √(σ_max² + 1) (diffusers' `init_noise_sigma` is σ_max for "linspace"/"trailing" and √(σ_max² + 1) only for
  "leading"; the difference, 1/(2σ_max²) ≈ 2·10⁻⁵ relative, is tested separately below)
* DPM-Solver++(2M): `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
  lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace", use_karras_sigmas=k)`

Precision: diffusers computes ᾱ by a float32 cumprod (relative error up to ~4e-5 at t = 999, which moves Karras
timesteps by up to 6e-3). By default we hand each scheduler the same ᾱ in float64 (`sched.alphas_cumprod =
schedule.alpha_bars`, before `set_timesteps`); what is left is diffusers' float32 σ tables, float32 timesteps and (Euler,
DPM-Solver) float32 state inside `step`: trajectories agree to ~1e-6 → atol = rtol = 1e-5, timesteps to 1e-4, x̂_0
to 1e-4 absolute (Euler forms x̂_0 = x̄ − σε in float32 at |x̄| ≈ 157). DDIM's step is then entirely float64:
atol = rtol = 1e-10 for everything. Stock schedulers (float32 ᾱ) are checked too, at 1e-4 (states), 1e-3 (x̂_0)
and 1e-2 (timesteps).
"""
import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.parity,  # diffusers' own np.array(tensor) calls warn under numpy 2; not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")]

from diffusion_book import samplers as S  # noqa: E402
from diffusion_book.data import ring_mixture  # noqa: E402
from diffusion_book.schedules import linear_beta_schedule  # noqa: E402

T = 1000
LINEAR = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
SCHEDULE = linear_beta_schedule(T)
GM = ring_mixture()
# atol/rtol: states and final samples; t: timesteps fed to ε; x0: absolute tolerance on x̂_0 (Euler's diffusers step
# forms x̂_0 = x̄ − σε in float32 with |x̄| ≈ σ_max ≈ 157, so one float32 ulp of x̄ is ~1e-5 there)
TOL32 = dict(atol=1e-5, rtol=1e-5, t=1e-4, x0=1e-4)  # float64 ᾱ injected; float32 σ/state inside diffusers
TOL64 = dict(atol=1e-10, rtol=1e-10, t=0.0, x0=1e-10)  # DDIM with float64 ᾱ injected: all float64
STOCK = dict(atol=1e-4, rtol=1e-4, t=1e-2, x0=1e-3)  # stock diffusers: float32 ᾱ


SIGMA_TABLE = ((1 - SCHEDULE.alpha_bars) / SCHEDULE.alpha_bars).sqrt().numpy()  # (T,) σ_t = √((1 − ᾱ_t)/ᾱ_t)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny tensors: one thread is several times faster on a shared CPU (restored afterwards)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def eps_fn(x, t):
    "The exact ε of the ring mixture at timestep(s) t (integer or fractional), σ(t) linear in t between table entries."
    t = torch.as_tensor(t).to(torch.float64).reshape(-1).cpu().numpy()
    sigma = torch.from_numpy(np.interp(t, np.arange(T), SIGMA_TABLE)).to(x)
    return GM.eps_oracle(x, 1.0 / (1.0 + sigma**2))


class Recorder:
    "An ε function that logs the timesteps it is called with (to compare what each side feeds the network)."

    def __init__(self):
        self.ts = []

    def __call__(self, x, t):
        t = torch.as_tensor(t)
        self.ts.append(float(t.reshape(-1)[0]))
        return eps_fn(x, t)


def x_T(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ours(fn, x, **kw):
    "Run one of our samplers; returns the final sample, the per-step states and x̂_0, and the timesteps fed to ε."
    rec, states, x0s = Recorder(), [], []
    out = fn(rec, SCHEDULE, x, callback=lambda i, t, xt, x0: (states.append(xt.clone()), x0s.append(x0.clone())), **kw)
    return out, states, x0s, rec.ts


@torch.no_grad()
def theirs(sched, x, steps, *, sigma_space=False, eta=0.0, noises=None, clipped_eps=False):
    "Diffusers' own loop; states after each full step in VP coordinates (x / √(σ² + 1) for σ-space schedulers)."
    rec, states, x0s = Recorder(), [], []
    sched.set_timesteps(steps)
    if sigma_space:
        x = x * math.sqrt(float(sched.sigmas.max()) ** 2 + 1)
    heun = isinstance(sched, diffusers.HeunDiscreteScheduler)
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)
        eps = rec(x_in, t.expand(len(x)))
        kw = {}
        if type(sched) is diffusers.DDIMScheduler:
            kw = dict(eta=eta, variance_noise=noises[i] if eta > 0 else None, use_clipped_model_output=clipped_eps)
        out = sched.step(eps, t, x, **kw)
        x = out.prev_sample
        if heun and not (sched.state_in_first_order or i == len(sched.timesteps) - 1):
            continue  # Heun's predictor half-step: not a full step
        vp = x / math.sqrt(float(sched.sigmas[sched.step_index]) ** 2 + 1) if sigma_space else x
        states.append(vp.clone())
        x0s.append(None if heun else getattr(out, "pred_original_sample", None))  # Heun's is the corrector's
    return x, states, x0s, rec.ts


def assert_same(a, b, tol):
    "Final samples, every trajectory state, x̂_0 where diffusers reports it, and the timesteps fed to ε agree."
    out_a, st_a, x0_a, ts_a = a
    out_b, st_b, x0_b, ts_b = b
    tol = dict(tol)
    t_tol, x0_tol = tol.pop("t"), tol.pop("x0")
    assert len(ts_a) == len(ts_b), f"NFE: ours {len(ts_a)}, diffusers {len(ts_b)}"
    np.testing.assert_allclose(ts_a, ts_b, atol=t_tol, rtol=0, err_msg="timesteps fed to eps_model")
    assert len(st_a) == len(st_b), f"steps: ours {len(st_a)}, diffusers {len(st_b)}"
    for i, (p, q) in enumerate(zip(st_a, st_b)):
        torch.testing.assert_close(p, q.to(p.dtype), **tol, msg=lambda m: f"step {i}: {m}")
    for i, (p, q) in enumerate(zip(x0_a, x0_b)):
        if q is not None:
            torch.testing.assert_close(p, q.to(p.dtype), atol=x0_tol, rtol=0, msg=lambda m: f"x0_hat at step {i}: {m}")
    torch.testing.assert_close(out_a, out_b.to(out_a.dtype), **tol)


def make(kind, *, spacing="linspace", karras=False, float64=True, clip=None):
    "A diffusers scheduler configured as our sampler `kind`; `float64` hands it our ᾱ in float64 (see module doc)."
    clip_kw = dict(clip_sample=clip is not None, clip_sample_range=clip or 1.0)
    if kind == "ddim":
        sched = diffusers.DDIMScheduler(**LINEAR, set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing,
                                        **clip_kw)
    elif kind == "euler":
        sched = diffusers.EulerDiscreteScheduler(**LINEAR, timestep_spacing=spacing, use_karras_sigmas=karras,
                                                 final_sigmas_type="zero")
    elif kind == "heun":
        sched = diffusers.HeunDiscreteScheduler(**LINEAR, timestep_spacing=spacing, use_karras_sigmas=karras, **clip_kw)
    else:
        sched = diffusers.DPMSolverMultistepScheduler(**LINEAR, algorithm_type="dpmsolver++", solver_order=2,
                                                      solver_type="midpoint", lower_order_final=True,
                                                      final_sigmas_type="zero", timestep_spacing=spacing,
                                                      use_karras_sigmas=karras)
    if float64:
        sched.alphas_cumprod = SCHEDULE.alpha_bars.clone()  # the same numbers, in float64
    return sched


# ---------------------------------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_timesteps_match_ddim(spacing):
    "Every step count 1…T for T ∈ {1000, 50, 37, 10}: the same steps as DDIMScheduler (steps_offset=0)."
    extra = []
    for T_ in (1000, 50, 37, 10):
        sched = diffusers.DDIMScheduler(num_train_timesteps=T_, steps_offset=0, timestep_spacing=spacing)
        for steps in range(1, T_ + 1):
            sched.set_timesteps(steps)
            ref = sched.timesteps.long()
            got = S.sampling_timesteps(T_, steps, spacing)
            assert got.dtype == torch.long and got.shape == (steps,), (T_, steps, got.dtype, got.shape)
            if len(ref) == steps + 1 and spacing == "trailing" and ref[-1] == -1:
                extra.append((T_, steps))  # diffusers' float np.arange appends a spurious step −1 (see below)
                ref = ref[:-1]
            assert torch.equal(got, ref), f"T={T_}, steps={steps}: ours {got.tolist()} vs diffusers {ref.tolist()}"
    # diffusers 0.42 ("trailing" only): 64 pairs, e.g. (T, steps) = (1000, 61), get steps+1 entries, the last −1
    # (an index that wraps to ᾱ_{T−1}); ours returns exactly `steps` entries, the first `steps` of diffusers'.
    assert spacing == "trailing" or not extra


def test_sigma_table_and_conversions():
    sched = diffusers.EulerDiscreteScheduler(**LINEAR)  # before set_timesteps: the full table, descending, then 0
    sig = S.schedule_sigmas(SCHEDULE)
    assert sig.dtype == torch.float64 and sig.shape == (T,)
    torch.testing.assert_close(sig.flip(0), sched.sigmas[:-1].double(), atol=0, rtol=2e-4)  # diffusers: float32 ᾱ
    # σ → t is diffusers' log-σ interpolation; t → σ its linear interpolation of the table
    log_sigmas = np.log(SIGMA_TABLE)
    probe = np.array([0.0101, 0.05, 0.3, 1.0, 3.7, 40.0, 150.0])
    expect = np.array([sched._sigma_to_t(s, log_sigmas) for s in probe])
    np.testing.assert_allclose(np.asarray(S.sigma_to_t(SCHEDULE, torch.from_numpy(probe)), dtype=np.float64), expect,
                               atol=1e-9, rtol=0)
    t = np.array([0.0, 0.25, 10.5, 499.9, 998.999, 999.0])
    np.testing.assert_allclose(np.asarray(S.t_to_sigma(SCHEDULE, torch.from_numpy(t)), dtype=np.float64),
                               np.interp(t, np.arange(T), SIGMA_TABLE), atol=0, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("leading", 50), ("trailing", 10), ("trailing", 50)])
def test_ddim_matches_diffusers(spacing, steps):
    x = x_T()
    a = ours(S.ddim_sample, x, steps=steps, eta=0.0, spacing=spacing)
    assert_same(a, theirs(make("ddim", spacing=spacing), x, steps), TOL64)
    if steps == 50:
        assert_same(a, theirs(make("ddim", spacing=spacing, float64=False), x, steps), STOCK)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_matches_diffusers_with_the_same_noise(eta):
    steps, seed, x = 20, 7, x_T()
    a = ours(S.ddim_sample, x, steps=steps, eta=eta, spacing="leading", generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)  # our sampler draws one N(0, I) per step, in order, from `generator`
    noises = [torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(steps)]
    assert_same(a, theirs(make("ddim", spacing="leading"), x, steps, eta=eta, noises=noises), TOL64)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_clip_matches_clip_sample_with_clipped_model_output(eta):
    "clip_x0=(−c, c) clips x̂_0 and re-derives ε̂: diffusers' clip_sample_range=c with use_clipped_model_output=True."
    steps, seed, c, x = 20, 3, 1.5, x_T()
    a = ours(S.ddim_sample, x, steps=steps, eta=eta, clip_x0=(-c, c), spacing="leading",
             generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    noises = [torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(steps)]
    assert (a[2][-1].abs() == c).any()  # the clip is active
    assert_same(a, theirs(make("ddim", spacing="leading", clip=c), x, steps, eta=eta, noises=noises, clipped_eps=True),
                TOL64)


@pytest.mark.parametrize("spacing,steps", [("leading", 20), ("trailing", 25)])
def test_ddim_invert_matches_ddim_inverse_scheduler(spacing, steps):
    "Encoding: DDIMInverseScheduler(set_alpha_to_one=True) also evaluates ε at the current point and the target step."
    x0 = GM.sample(64, generator=torch.Generator().manual_seed(1))
    a = ours(S.ddim_invert, x0, steps=steps, spacing=spacing)
    sched = diffusers.DDIMInverseScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                           timestep_spacing=spacing)
    sched.alphas_cumprod = SCHEDULE.alpha_bars.clone()
    assert_same(a, theirs(sched, x0, steps), TOL64)


# ---------------------------------------------------------------------------------------------------- σ-space ODE
SIGMAS = {False: None, True: "karras"}


@pytest.mark.parametrize("kind,sampler", [("euler", "euler_sample"), ("heun", "heun_sample")])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [10, 30])
def test_euler_heun_match_diffusers(kind, sampler, karras, steps):
    x = x_T()
    a = ours(getattr(S, sampler), x, steps=steps, spacing="linspace", sigmas=SIGMAS[karras])
    b = theirs(make(kind, karras=karras), x, steps, sigma_space=True)
    assert len(b[3]) == (2 * steps - 1 if kind == "heun" else steps)  # Heun: the last step to σ = 0 is Euler's
    assert_same(a, b, TOL32)
    if steps == 30:
        assert_same(a, theirs(make(kind, karras=karras, float64=False), x, steps, sigma_space=True), STOCK)


@pytest.mark.parametrize("kind,sampler", [("euler", "euler_sample"), ("heun", "heun_sample")])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_heun_other_spacings_match_diffusers(kind, sampler, spacing):
    x = x_T()
    a = ours(getattr(S, sampler), x, steps=10, spacing=spacing)
    assert_same(a, theirs(make(kind, spacing=spacing), x, 10, sigma_space=True), TOL32)


def test_heun_clip_matches_clip_sample():
    "Heun with clip_x0 = HeunDiscreteScheduler(clip_sample=True): x̂_0 clipped, slope re-derived from it."
    x, c = x_T(), 1.5
    a = ours(S.heun_sample, x, steps=10, spacing="linspace", clip_x0=(-c, c))
    assert_same(a, theirs(make("heun", clip=c), x, 10, sigma_space=True), TOL32)


def test_euler_initial_scale_vs_diffusers_init_noise_sigma():
    "Diffusers' `init_noise_sigma` (σ_max for linspace) differs from √(σ_max² + 1) by a relative 1/(2σ_max²)."
    sched = make("euler")
    sched.set_timesteps(10)
    smax = float(sched.sigmas.max())
    assert float(sched.init_noise_sigma) == pytest.approx(smax, rel=1e-7)
    assert math.sqrt(smax**2 + 1) / smax - 1 == pytest.approx(1 / (2 * smax**2), rel=1e-3)
    assert 1 / (2 * smax**2) < 3e-5


# ---------------------------------------------------------------------------------------------------- DPM-Solver++(2M)
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpm_solver_pp_2m_matches_diffusers(karras, steps):
    x = x_T()
    a = ours(S.dpm_solver_pp_2m, x, steps=steps, spacing="linspace", sigmas=SIGMAS[karras])
    assert_same(a, theirs(make("dpm", karras=karras), x, steps), TOL32)
    if steps == 20:
        assert_same(a, theirs(make("dpm", karras=karras, float64=False), x, steps), STOCK)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [7, 25])
def test_dpm_solver_pp_2m_other_spacings_match_diffusers(spacing, steps):
    x = x_T()  # 25 ≥ 15 steps: diffusers' lower_order_final no longer forces the second-to-last step to first order
    a = ours(S.dpm_solver_pp_2m, x, steps=steps, spacing=spacing)
    assert_same(a, theirs(make("dpm", spacing=spacing), x, steps), TOL32)
