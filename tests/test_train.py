"Chapter 18: runs, checkpoints that resume exactly, data parallelism, host syncs, the command line."
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_book.ddpm import DiffusionModel, MLPDenoiser, TrainConfig, make_train_state, train_loop
from diffusion_book.train import RunConfig, SyncCounter, checkpoints, latest_checkpoint, load_image_folder, main, train_run

torch.set_num_threads(1)
TINY = RunConfig(steps=12, batch_size=16, warmup=2, log_every=4, checkpoint_every=4, keep=2, base_channels=8, T=100)
ENV = dict(os.environ, OMP_NUM_THREADS="1")
CLI = [sys.executable, "-m", "diffusion_book.train"]


def weights_equal(a, b, atol=0.0):
    return all((x - y).abs().max() <= atol for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values()))


def test_config_round_trip_and_validation():
    assert RunConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(ValueError, match="unknown RunConfig fields"):
        RunConfig.from_json(json.dumps({"stepz": 3}))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        RunConfig(steps=0)


def test_accumulation_equals_one_big_batch():
    "k micro-batches of B/k give the gradient of one batch of B (a loss without random draws: exact up to round-off)."
    x = torch.rand(32, 2) * 2 - 1
    t = torch.full((32,), 3.0)
    loss_fn = lambda net, x0, cond, g: ((net(x0, t[: len(x0)]) - x0.flip(1)) ** 2).mean()
    cfg = TrainConfig(steps=3, batch_size=32, warmup=1, lr=1e-2)
    states = []
    for k in (1, 4):
        torch.manual_seed(0)
        st = make_train_state(MLPDenoiser(hidden=16), cfg)
        list(train_loop(st, x, cfg, loss_fn, accumulate=k))
        states.append(st.model.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], atol=1e-6, rtol=1e-5)


def test_resume_after_a_real_kill_is_bit_identical(tmp_path):
    cfg = dataclasses.replace(TINY, steps=40, checkpoint_every=5, keep=10)
    args = ["train", "--data", "digits", "--steps", "40", "--batch-size", "16", "--warmup", "2", "--log-every", "4",
            "--checkpoint-every", "5", "--keep", "10", "--base-channels", "8", "--T", "100", "--out", str(tmp_path / "run")]
    p = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "run" / "checkpoints" / "step_0000010.safetensors").exists():
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = checkpoints(tmp_path / "run")[-1].name
    assert not (tmp_path / "run" / "model.safetensors").exists(), "the run finished before it could be killed"
    r = subprocess.run(CLI + args, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = DiffusionModel.load(tmp_path / "run" / "model.safetensors")
    straight = train_run(cfg, tmp_path / "straight", progress=False)
    assert weights_equal(resumed, straight), f"killed after {killed_at}, resumed run differs"


def test_other_config_refused_and_corrupt_checkpoint_skipped(tmp_path):
    train_run(TINY, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="lr: saved 0.002, model 0.001"):
        train_run(dataclasses.replace(TINY, lr=1e-3), tmp_path / "r", progress=False)
    newest = checkpoints(tmp_path / "r")[-1]
    newest.write_bytes(newest.read_bytes()[:500])
    with pytest.warns(UserWarning, match="corrupt"):
        assert latest_checkpoint(tmp_path / "r") == checkpoints(tmp_path / "r")[-2]


def test_two_process_ddp_equals_one_process(tmp_path):
    cfg = dataclasses.replace(TINY, steps=6, batch_size=32, checkpoint_every=6)
    (tmp_path / "c.json").write_text(cfg.to_json())
    script = tmp_path / "ddp.py"
    script.write_text("import sys, torch\nfrom diffusion_book.train import RunConfig, train_run\ntorch.set_num_threads(1)\n"
                      "train_run(RunConfig.from_json(open(sys.argv[1]).read()), sys.argv[2], progress=False)\n")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                        str(script), str(tmp_path / "c.json"), str(tmp_path / "two")],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    one = train_run(dataclasses.replace(cfg, grad_accum=2), tmp_path / "one", progress=False)
    assert weights_equal(one, DiffusionModel.load(tmp_path / "two" / "model.safetensors"), atol=1e-5)


def test_sampler_syncs_do_not_grow_with_steps():
    from diffusion_book.samplers import ddim_sample, dpm_solver_pp_2m, euler_sample, heun_sample
    from diffusion_book.schedules import linear_beta_schedule
    sched, eps = linear_beta_schedule(100), lambda x, t: 0.1 * x
    for fn in (ddim_sample, dpm_solver_pp_2m, euler_sample, heun_sample):
        counts = []
        for n in (4, 8):
            with SyncCounter() as c:
                fn(eps, sched, torch.randn(2, 3), steps=n)
            counts.append(c.count)
        assert counts[0] == counts[1], f"{fn.__name__}: {counts}"
    with SyncCounter() as c:
        torch.ones(2).sum().item()
    assert c.count == 1  # the counter sees a sync


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("args,match", [
    (["train", "--preset", "huge", "--out", "x"], "invalid choice: 'huge'"),
    (["train", "--data", "/nonexistent/pics", "--out", "x"], "no such folder"),
    (["train", "--steps", "0", "--out", "x"], "steps must be >= 1"),
    (["sample"], "exactly one of --run"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_arguments_are_one_line_exit_2(args, match, tmp_path):
    r = subprocess.run(CLI + args, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and match in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_help():
    r = subprocess.run(CLI + ["train", "--help"], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and "--data" in r.stdout and "folder of PNG/JPEG" in r.stdout and "(default: 1000)" in r.stdout


def test_cli_train_sample_evaluate_on_a_folder(tmp_path):
    import matplotlib.pyplot as plt
    for c, v in (("a", 30), ("b", 200)):
        (tmp_path / "pics" / c).mkdir(parents=True)
        for i in range(5):
            plt.imsave(tmp_path / "pics" / c / f"{i}.png", np.full((12, 10), v, np.uint8), cmap="gray", vmin=0, vmax=255)
    run = lambda *a: subprocess.run(CLI + list(a), capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    r = run("train", "--data", "pics", "--size", "8", "--channels", "1", "--steps", "3", "--batch-size", "4",
            "--base-channels", "8", "--T", "50", "--out", "run")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("sample", "--run", "run", "--n", "12", "--steps", "3", "--out", "s.png")
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.load(tmp_path / "s.npz")["samples"].shape == (12, 1, 8, 8) and (tmp_path / "s.png").exists()
    r = run("evaluate", "--samples", "s.npz", "--data", "digits")
    assert r.returncode == 0 and "fd" in json.loads(r.stdout), r.stderr[-2000:]


def test_training_step_syncs_do_not_grow_with_steps():
    "Fused AdamW, l_simple(check=False) and log_every = n: the host reads are the entry checks, none per step."
    from diffusion_book.ddpm import l_simple
    from diffusion_book.models.unet import UNet, unet_small_config
    from diffusion_book.schedules import linear_beta_schedule
    sched, x = linear_beta_schedule(100), torch.rand(64, 1, 8, 8) * 2 - 1
    counts = []
    for n in (3, 6):
        cfg = TrainConfig(steps=n, batch_size=8, warmup=1)
        st = make_train_state(UNet(unet_small_config(base_channels=8, head_channels=8, num_groups=4, channel_mults=(1, 2))),
                              cfg, fused=True)
        loss = lambda m, x0, c, g: l_simple(lambda z, t: m(z, t), sched, x0, generator=g, check=False)
        with SyncCounter() as c:
            for _ in train_loop(st, x, cfg, loss, log_every=n):
                pass
        counts.append(c.count)
    assert counts[0] == counts[1], counts
