
import pytest
import torch

from diffusion_book.ddpm import (EMA, MLPDenoiser, TrainConfig, ddpm_sample, load_checkpoint, make_train_state,
                                 read_checkpoint, save_checkpoint, train_ddpm)
from diffusion_book.models.unet import UNet, unet_small_config
from diffusion_book.schedules import linear_beta_schedule

torch.set_num_threads(1)
SCHED = linear_beta_schedule(50)


def tiny_unet():
    torch.manual_seed(0)
    return UNet(unet_small_config(base_channels=8, head_channels=8, num_groups=4, channel_mults=(1, 2), dropout=0.1))


def data(n=64):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


CFG = TrainConfig(steps=12, batch_size=8, lr=1e-3, warmup=3, ema_decay=0.9, seed=1)


def run(state, until=None):
    return list(train_ddpm(state, SCHED, data(), CFG, until=until))


def test_resume_gives_identical_unet_weights(tmp_path):
    straight = make_train_state(tiny_unet(), CFG)
    torch.manual_seed(123)  # dropout draws from the global generator, which the checkpoint restores when asked
    run(straight)
    first = make_train_state(tiny_unet(), CFG)
    torch.manual_seed(123)
    run(first, until=5)
    save_checkpoint(tmp_path / "c.safetensors", first, {"unet": "tiny"})
    torch.manual_seed(999)  # a new process would have other global random state
    resumed = make_train_state(tiny_unet(), CFG)
    assert load_checkpoint(tmp_path / "c.safetensors", resumed, restore_global_rng=True) == {"unet": "tiny"}
    run(resumed)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in straight.ema.shadow)
    assert straight.losses == resumed.losses and resumed.step == CFG.steps


def test_corrupt_checkpoint_is_refused_and_good_one_survives(tmp_path, monkeypatch):
    state = make_train_state(tiny_unet(), CFG)
    run(state, until=2)
    path = save_checkpoint(tmp_path / "c.safetensors", state)
    good = path.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(trunc, make_train_state(tiny_unet(), CFG))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.safetensors")

    # a crash in the middle of writing leaves the previous checkpoint untouched
    import diffusion_book.ddpm as ddpm_mod

    def crash(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(ddpm_mod, "save_file", crash)
    run(state, until=4)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, state)
    assert path.read_bytes() == good
    assert read_checkpoint(path)[2]["step"] == 2


def test_non_finite_loss_names_the_step():
    class Bad(MLPDenoiser):
        n = 0

        def forward(self, x, t, cond=None):
            self.n += 1
            return super().forward(x, t) * (float("inf") if self.n == 3 else 1.0)

    torch.manual_seed(0)
    st = make_train_state(Bad(), CFG)
    with pytest.raises(FloatingPointError, match="at step 3"):
        list(train_ddpm(st, SCHED, torch.randn(32, 2), CFG))
    assert st.step == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=0)
    st = make_train_state(MLPDenoiser(), CFG)
    with pytest.raises(ValueError, match="NaN"):
        next(train_ddpm(st, SCHED, torch.tensor([[0.0, float("nan")]]), CFG))
    with pytest.raises(ValueError, match="labels"):
        next(train_ddpm(st, SCHED, torch.randn(4, 2), CFG, labels=torch.zeros(3, dtype=torch.long)))
    eps = lambda x, t: torch.zeros_like(x)
    with pytest.raises(ValueError, match="all T=50 steps"):
        ddpm_sample(eps, SCHED, torch.randn(2, 2), steps=10)
    with pytest.raises(ValueError, match="variance"):
        ddpm_sample(eps, SCHED, torch.randn(2, 2), variance="medium")
    with pytest.raises(ValueError, match="returned shape"):
        ddpm_sample(lambda x, t: x[:, :1], SCHED, torch.randn(2, 2))
    with pytest.raises(ValueError, match="decay"):
        EMA(MLPDenoiser(), decay=1.5)


def test_sampler_is_exact_for_gaussian_data():
    "Data N(0, s²): the exact ε̂ is linear, and Algorithm 2 must return variance ≈ s² (large T)."
    s2, sched = 0.25, linear_beta_schedule(1000)
    ab = lambda t: sched.alpha_bars[t.long()][:, None]  # t arrives as float step indices (the contract)
    eps = lambda x, t: x * (1 - ab(t)).sqrt() / (ab(t) * s2 + 1 - ab(t))
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(eps, sched, torch.randn(20_000, 1, generator=g, dtype=torch.float64), generator=g)
    assert abs(x.var().item() - s2) < 5 * s2 * (2 / 20_000) ** 0.5 + 0.003
    assert abs(x.mean().item()) < 5 * (s2 / 20_000) ** 0.5


def test_sampler_generator_reproducible_and_callback():
    calls = []
    torch.manual_seed(0)
    net = MLPDenoiser().eval()
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    sample = lambda seed, cb=None: ddpm_sample(lambda x, t: net(x, t), SCHED, x_T,
                                               generator=torch.Generator().manual_seed(seed), callback=cb)
    a = sample(0, lambda i, t, x, x0: calls.append(i))
    assert torch.equal(a, sample(0)) and not torch.equal(a, sample(1))
    assert calls == list(range(49, -1, -1)) and a.shape == (4, 2)


def test_ddpm_sample_passes_float_integer_valued_t():
    seen = []
    record = lambda x, t: (seen.append((t.dtype, t.shape, bool((t == t.round()).all()))), torch.zeros_like(x))[1]
    ddpm_sample(record, SCHED, torch.randn(3, 2))
    ddpm_sample(record, SCHED, torch.randn(3, 2, dtype=torch.float64))
    assert {d for d, _, _ in seen[:50]} == {torch.float32} and {d for d, _, _ in seen[50:]} == {torch.float64}
    assert all(shape == (3,) and integral for _, shape, integral in seen)


def test_ddpm_sample_matches_chapter_04_posterior_mean_and_has_no_per_step_sync():
    "The inline coefficients equal chapter 04's ε → μ conversion step by step (float64), and the loop never syncs."
    from diffusion_book.parameterization import eps_to_posterior_mean
    from diffusion_book.elbo import posterior_variance
    from diffusion_book.train import SyncCounter
    eps = lambda x, t: torch.sin(x + t[:, None] / 7)  # any smooth function of (x, t)
    x_T = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = ddpm_sample(eps, SCHED, x_T, generator=torch.Generator().manual_seed(1))
    g, x, var = torch.Generator().manual_seed(1), x_T, posterior_variance(SCHED)
    for i in range(SCHED.T - 1, -1, -1):
        t = torch.full((5,), i)
        mean = eps_to_posterior_mean(SCHED, x, t, eps(x, t.double()))
        x = mean + (var[i].sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype) if i else 0)
    torch.testing.assert_close(ours, x, atol=1e-12, rtol=0)
    counts = []
    for T in (20, 40):
        with SyncCounter() as c:
            ddpm_sample(eps, linear_beta_schedule(T), x_T)
        counts.append(c.count)
    assert counts[0] == counts[1], counts
