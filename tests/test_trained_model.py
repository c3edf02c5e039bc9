"The library as a practitioner meets it (issue 22): the trained-model object, safe loading, guard rails."
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
import torch

from diffusion_book.ddpm import (DataSpec, DiffusionModel, MLPDenoiser, TrainConfig, config_diff, load_checkpoint,
                                 make_train_state, save_checkpoint, train_ddpm)
from diffusion_book.metrics import evaluate_samples
from diffusion_book.models.unet import UNet, unet_small_config
from diffusion_book.schedules import cosine_beta_schedule, linear_beta_schedule
from diffusion_book.utils import check_image_range, get_device, make_generator, save_image_grid, to_image_grid

torch.set_num_threads(1)
UNET = dict(base_channels=8, head_channels=8, num_groups=4, channel_mults=(1, 2))
SCHED = linear_beta_schedule(50)


def images(n=64, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tiny_model(schedule=SCHED, classes=None, **unet):
    cfg = unet_small_config(**{**UNET, **unet, "num_classes": classes})
    return DiffusionModel.create("unet", cfg, schedule, DataSpec((1, 8, 8), num_classes=classes), seed=0)


def snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- one object: save, load, sample -------------------------------------------------------------------------------

def test_save_load_sample_round_trip(tmp_path):
    m = tiny_model()
    list(m.fit(images(), TrainConfig(steps=3, batch_size=8, warmup=1), progress=False))
    path = m.save(tmp_path / "m.safetensors")
    back = DiffusionModel.load(path)
    assert not back.training and not any(p.requires_grad for p in back.parameters())
    assert same(snapshot(m.net), snapshot(back.net)) and back.data == m.data and back.parameterization == "eps"
    x_T = torch.randn(4, 1, 8, 8, generator=make_generator(1))
    for sampler in ("ddim", "dpm++", "euler", "heun"):
        a, b = m.sample(4, sampler=sampler, steps=4, x_T=x_T), back.sample(4, sampler=sampler, steps=4, x_T=x_T)
        assert torch.equal(a, b) and a.shape == (4, 1, 8, 8) and a.min() >= -1 and a.max() <= 1, sampler
    a = back.sample(2, sampler="ddpm", generator=make_generator(0))
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, back.sample(2, sampler="ddpm", generator=make_generator(0)))


def test_saved_model_carries_its_schedule(tmp_path):
    path = tiny_model(cosine_beta_schedule(50)).save(tmp_path / "cos.safetensors")
    back = DiffusionModel.load(path)
    assert torch.equal(back.schedule.betas, cosine_beta_schedule(50).betas)  # the β's themselves, not a name
    linear = tiny_model(linear_beta_schedule(50))
    before = snapshot(linear.net)
    with pytest.raises(ValueError, match="another noise schedule; nothing was loaded|schedule"):
        linear.load_weights(path)
    assert same(before, snapshot(linear.net))


def test_refused_load_changes_nothing_and_names_the_field(tmp_path):
    path = tiny_model().save(tmp_path / "m.safetensors")
    other = tiny_model(channel_mults=(1, 2, 2))
    before = snapshot(other.net)
    with pytest.raises(ValueError, match=r"net_config.channel_mults: saved \[1, 2\], model \[1, 2, 2\]"):
        other.load_weights(path)
    assert same(before, snapshot(other.net))  # bit-identical after the refused load


def test_checkpoint_load_is_all_or_nothing_and_leaves_global_rng(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, warmup=1)
    st = make_train_state(lambda: UNet(unet_small_config(**UNET)), cfg)
    list(train_ddpm(st, SCHED, images(), cfg))
    path = save_checkpoint(tmp_path / "c.safetensors", st, {"run": 1})
    big = make_train_state(lambda: UNet(unet_small_config(**{**UNET, "channel_mults": (1, 2, 2)})), cfg)
    before = snapshot(big.model)
    with pytest.raises(ValueError, match=r"channel_mults: saved \[1, 2\], model \[1, 2, 2\]"):
        load_checkpoint(path, big)
    assert same(before, snapshot(big.model)) and big.step == 0
    with pytest.raises(ValueError, match="run: saved 1, model 2"):
        load_checkpoint(path, make_train_state(lambda: UNet(unet_small_config(**UNET)), cfg), {"run": 2})
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    load_checkpoint(path, make_train_state(lambda: UNet(unet_small_config(**UNET)), cfg))
    assert torch.equal(rng, torch.get_rng_state())  # global RNG untouched unless restore_global_rng=True


def test_config_diff_nested():
    assert config_diff({"a": 1, "u": {"c": (1, 2)}}, {"a": 1, "u": {"c": [1, 2, 2]}, "x": 0}) == [
        "u.c: saved (1, 2), model [1, 2, 2]", "x: saved (absent), model 0"]


def test_not_a_model_file(tmp_path):
    st = make_train_state(MLPDenoiser(), TrainConfig(steps=1))
    path = save_checkpoint(tmp_path / "c.safetensors", st)
    with pytest.raises(ValueError, match="training checkpoint: use load_checkpoint"):
        DiffusionModel.load(path)
    with pytest.raises(FileNotFoundError):
        DiffusionModel.load(tmp_path / "missing.safetensors")


def test_class_labels_checked_once():
    m = tiny_model(classes=3)
    assert m.sample(3, sampler="ddim", steps=2, labels=torch.tensor([0, 1, 2]), generator=make_generator(0)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must lie in 0…2"):
        m.sample(2, sampler="ddim", steps=2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_model().sample(2, labels=1)
    with pytest.raises(ValueError, match="sampler must be one of"):
        m.sample(2, sampler="plms")
    with pytest.raises(ValueError, match="finite"):
        m.sample(2, labels=1, guidance=float("nan"))


def test_x_T_dtype_is_cast_to_the_network():
    m = tiny_model()
    x64 = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=make_generator(0))
    out = m.sample(2, sampler="ddim", steps=2, x_T=x64)  # no "mat1 and mat2 must have the same dtype"
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, m.sample(2, sampler="ddim", steps=2, x_T=x64.float()), atol=0, rtol=0)


def test_seed_seeds_the_initial_weights():
    build = lambda: MLPDenoiser(hidden=16)
    a = make_train_state(build, TrainConfig(seed=3)).model
    torch.randn(10)  # unrelated global randomness does not matter
    b = make_train_state(build, TrainConfig(seed=3)).model
    c = make_train_state(build, TrainConfig(seed=4)).model
    assert same(snapshot(a), snapshot(b)) and not same(snapshot(a), snapshot(c))
    assert same(snapshot(tiny_model().net), snapshot(tiny_model().net))


@pytest.mark.parametrize("field,value", [("steps", 2.5), ("batch_size", 8.0), ("seed", True), ("warmup", "10")])
def test_train_config_needs_integers(field, value):
    with pytest.raises(TypeError, match=f"TrainConfig.{field} must be an integer"):
        TrainConfig(**{field: value})


# --- value range at the boundary -----------------------------------------------------------------------------------

@pytest.mark.parametrize("x,match", [(torch.randint(0, 256, (32, 1, 8, 8)).float(), "outside the declared range"),
                                     (torch.rand(32, 1, 8, 8), "not below the midpoint")])
def test_training_refuses_images_in_the_wrong_range(x, match):
    cfg = TrainConfig(steps=2, batch_size=8)
    with pytest.raises(ValueError, match=match) as e:
        next(train_ddpm(make_train_state(UNet(unet_small_config(**UNET)), cfg), SCHED, x, cfg))
    assert "to_model_range" in str(e.value)  # the message names the fix
    with pytest.raises(ValueError, match=match):
        next(tiny_model().fit(x, cfg, progress=False))


def test_training_on_2d_points_is_not_range_checked():
    cfg = TrainConfig(steps=2, batch_size=8)
    x = torch.randn(32, 2) * 5
    assert len(list(train_ddpm(make_train_state(MLPDenoiser(), cfg), SCHED, x, cfg))) == 2


def test_evaluate_samples_refuses_out_of_range():
    class Ev(torch.nn.Module):  # a stand-in evaluator: evaluation must stop before it is used
        def features(self, x):
            raise AssertionError("the evaluator ran on out-of-range samples")
    ref = images(32)
    with pytest.raises(ValueError, match="outside the declared range"):
        evaluate_samples(torch.randn(32, 1, 8, 8) * 30, Ev(), ref)
    with pytest.raises(ValueError, match="not below the midpoint"):
        evaluate_samples((ref + 1) / 2, Ev(), ref)
    check_image_range(ref.clamp(-1, 1), "ok")


# --- devices, grids, discoverability ---------------------------------------------------------------------------

def test_device_messages():
    with pytest.raises(ValueError, match="not a device this library knows"):
        get_device("gpu")
    with pytest.raises(TypeError, match="seed must be an integer"):
        make_generator(0.5)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            make_generator(0, "cuda")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            get_device("cuda:0")


def test_image_grid_scale(tmp_path):
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    assert to_image_grid(x, scale=4).shape == (4 * 73, 4 * 73)
    img = plt.imread(save_image_grid(x, tmp_path / "g.png"))
    assert min(img.shape[:2]) >= 500  # viewable, not a 73×73 thumbnail
    with pytest.raises(TypeError, match="scale must be an integer"):
        to_image_grid(x, scale=1.5)


def test_one_default_spacing_for_every_discrete_time_sampler():
    import inspect
    from diffusion_book import samplers
    fns = (samplers.ddim_sample, samplers.dpm_solver_pp_2m, samplers.euler_sample, samplers.heun_sample)
    assert {inspect.signature(f).parameters["spacing"].default for f in fns} == {"trailing"}


def run_fresh(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_public_names_import_lazily_from_the_package():
    out = run_fresh("import sys, diffusion_book as d\n"
                    "assert 'torch' not in sys.modules, 'importing the package imported torch'\n"
                    "from diffusion_book import DiffusionModel, ddim_sample, load_digits\n"
                    "from diffusion_book.models import UNet, UNetConfig\n"
                    "from diffusion_book.models.unet import UNet as U2\n"
                    "assert UNet is U2 and DiffusionModel.__module__ == 'diffusion_book.ddpm'\n"
                    "print(len(d.__all__))")
    assert int(out) > 100


def test_help_shows_the_argument_docs():
    out = run_fresh("from diffusion_book.samplers import ddim_sample\n"
                    "from diffusion_book.ddpm import DiffusionModel, TrainConfig\n"
                    "print(ddim_sample.__doc__); print(DiffusionModel.sample.__doc__)")
    assert "eta" in out and "η ≥ 0" in out  # the docment of `eta` is in __doc__, so help() shows it
    assert "guidance" in out and "Ho & Salimans" in out


def test_unet_dtype_mismatch_is_a_clear_error():
    from diffusion_book.samplers import ddim_sample
    net = UNet(unet_small_config(**UNET))
    with pytest.raises(TypeError, match=r"x is torch.float64 but this UNet's weights are torch.float32"):
        ddim_sample(lambda x, t: net(x, t), SCHED, torch.randn(2, 1, 8, 8, dtype=torch.float64), steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose: allowed
        assert net(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)
