"""Tests for diffusion_book.metrics: Fréchet distance, precision/recall, entropy, memorization,
evaluate_samples' input checks, the classifier's shapes, and the config-hash model cache."""
import json
import math
import warnings

import pytest
import torch
import torch.nn as nn

from diffusion_book import metrics, utils  # the trained-model cache lives in utils (metrics re-exports it)
from diffusion_book.metrics import (CacheError, SmallClassifier, class_histogram, config_hash, entropy,
                                    evaluate_samples, frechet_distance, frechet_distance_from_stats,
                                    gaussian_stats, knn_radii, load_cached, load_or_train, memorization,
                                    metrics_table, precision_recall, save_cached)

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- Fréchet distance
def test_fd_identical_sets_is_zero():
    f = torch.randn(500, 16, generator=gen(), dtype=F64)
    assert abs(frechet_distance(f, f)) < 1e-9


def test_fd_closed_form_diagonal_gaussians():
    g = gen(1)
    mu1, mu2 = torch.randn(8, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)
    s1, s2 = torch.rand(8, generator=g, dtype=F64) + 0.1, torch.rand(8, generator=g, dtype=F64) + 0.1
    fd = frechet_distance_from_stats(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2))
    exact = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    assert fd == pytest.approx(exact, rel=1e-10)


def test_fd_closed_form_proportional_full_covariances():
    g = gen(2)
    a = torch.randn(12, 12, generator=g, dtype=F64)
    cov = a @ a.T + 0.1 * torch.eye(12, dtype=F64)
    mu1, mu2 = torch.zeros(12, dtype=F64), torch.ones(12, dtype=F64)
    fd = frechet_distance_from_stats(mu1, cov, mu2, 0.25 * cov)  # c = 0.5
    assert fd == pytest.approx(12 + 0.25 * float(cov.trace()), rel=1e-10)


def test_fd_from_samples_converges_to_closed_form():
    g = gen(3)
    n, d = 200_000, 3
    a = torch.randn(n, d, generator=g, dtype=F64) * torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    b = torch.randn(n, d, generator=g, dtype=F64) * torch.tensor([1.5, 1.0, 0.5], dtype=F64) + 1.0
    exact = 3 * 1.0 + 0.5**2 + 1.0**2 + 0.0
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.05)


def test_fd_is_symmetric():
    g = gen(4)
    a, b = torch.randn(300, 10, generator=g), torch.randn(200, 10, generator=g) * 2 + 1
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)


def test_fd_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    import numpy as np
    g = gen(5)
    a, b = torch.randn(20, 20, generator=g, dtype=F64), torch.randn(20, 20, generator=g, dtype=F64)
    c1, c2 = a @ a.T / 20 + 0.01 * torch.eye(20, dtype=F64), b @ b.T / 20 + 0.01 * torch.eye(20, dtype=F64)
    m1, m2 = torch.randn(20, generator=g, dtype=F64), torch.randn(20, generator=g, dtype=F64)
    ref = float(((m1 - m2) ** 2).sum() + c1.trace() + c2.trace()
                - 2 * np.trace(scipy_linalg.sqrtm((c1 @ c2).numpy())).real)
    assert frechet_distance_from_stats(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)


def test_fd_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(torch.randn(50, 8), torch.randn(50, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.randn(1, 8), torch.randn(50, 8))
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_stats(torch.randn(0, 8))
    bad = torch.randn(50, 8)
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(bad, torch.randn(50, 8))
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(torch.randn(50), torch.randn(50))
    with pytest.raises(TypeError, match="floating"):
        frechet_distance(torch.ones(50, 8, dtype=torch.int64), torch.randn(50, 8))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance_from_stats(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# ---------------------------------------------------------------- precision / recall
def test_precision_recall_known_cases():
    x = torch.randn(400, 2, generator=gen(6))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100) == (0.0, 0.0)
    p, r = precision_recall(x, torch.randn(400, 2, generator=gen(7)))
    assert p > 0.85 and r > 0.85


def test_knn_radii_excludes_self_and_checks_k():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    torch.testing.assert_close(knn_radii(x, k=1), torch.tensor([1.0, 1.0, 2.0], dtype=F64))
    torch.testing.assert_close(knn_radii(x, k=2), torch.tensor([3.0, 2.0, 3.0], dtype=F64))
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(x, k=3)
    with pytest.raises(ValueError, match="features"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 3))


# ---------------------------------------------------------------- diversity and memorization
def test_entropy_and_histogram():
    probs = torch.eye(4, dtype=F64).repeat(5, 1)  # 20 samples, 5 of each class
    h = class_histogram(probs)
    torch.testing.assert_close(h, torch.full((4,), 0.25, dtype=F64))
    assert entropy(h) == pytest.approx(math.log(4), rel=1e-12)
    assert entropy(torch.tensor([1.0, 0.0, 0.0])) == 0.0


def test_memorization_flags_copies_not_fresh_samples():
    g = gen(8)
    train, fresh = torch.randn(600, 1, 4, 4, generator=g), torch.randn(200, 1, 4, 4, generator=g)
    copies = memorization(train[:200], train)
    assert copies == {"nn_ratio": 0.0, "copy_fraction": 1.0}
    new = memorization(fresh, train)
    assert 0.85 < new["nn_ratio"] < 1.15 and new["copy_fraction"] < 0.05
    with pytest.raises(ValueError, match="NaN"):
        memorization(torch.full((3, 4), float("nan")), train.flatten(1))


# ---------------------------------------------------------------- classifier and evaluate_samples
@pytest.mark.parametrize("c,size", [(1, 8), (1, 28), (3, 32)])
def test_small_classifier_shapes(c, size):
    m = SmallClassifier(in_channels=c, image_size=size, feature_dim=24)
    x = torch.randn(5, c, size, size)
    assert m.features(x).shape == (5, 24) and m(x).shape == (5, 10)
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(5, c, size + 1, size + 1))


def test_evaluate_samples_keys_and_bad_input():
    torch.manual_seed(0)
    ev = SmallClassifier().eval()
    g = gen(9)
    train = torch.rand(120, 1, 8, 8, generator=g) * 2 - 1
    out = evaluate_samples(train[:40], ev, train, train, bootstrap=3, generator=g)
    for key in ("fd", "fd_std", "precision", "recall", "class_entropy", "confidence", "nn_ratio_pixel",
                "copy_fraction_pixel", "nn_ratio_feature", "copy_fraction_feature"):
        assert key in out and math.isfinite(out[key])
    assert out["copy_fraction_pixel"] == 1.0 and out["nn_ratio_pixel"] == 0.0
    assert "FD" in metrics_table({"copies": out}).splitlines()[0]
    with pytest.raises(ValueError, match="NaN"):
        evaluate_samples(torch.full((10, 1, 8, 8), float("nan")), ev, train)
    with pytest.raises(ValueError, match="reference"):
        evaluate_samples(torch.zeros(10, 1, 7, 7), ev, train)
    with pytest.raises(ValueError, match="more than k"):
        evaluate_samples(train[:3], ev, train)
    with pytest.raises(ValueError, match="no evaluator"):
        metrics.get_evaluator("imagenet")


# ---------------------------------------------------------------- the model cache
def build(cfg):
    return nn.Sequential(nn.Linear(cfg["d"], 6), nn.Tanh(), nn.Linear(6, 2))


def make_train(calls):
    def train(model, cfg):
        calls.append(1)
        g = gen(cfg["seed"])
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        return {"loss": [1.0, 0.5]}
    return train


CFG = {"name": "t", "version": 1, "d": 3, "seed": 0}


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash(CFG)) == 64
    with pytest.raises(TypeError, match="JSON"):
        config_hash({"a": object()})
    with pytest.raises(TypeError, match="dict"):
        config_hash([1, 2])


def test_cache_roundtrip_bit_identical(tmp_path):
    calls = []
    m1, r1 = load_or_train(build, make_train(calls), CFG, tmp_path, verbose=False)
    m2, r2 = load_or_train(build, make_train(calls), CFG, tmp_path, verbose=False)
    assert len(calls) == 1 and r1["cached"] is False and r2["cached"] is True
    assert r2["meta"]["loss"] == [1.0, 0.5] and "train_seconds" in r2["meta"]
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    key = config_hash(CFG)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.json", f"{key}.safetensors"]
    assert json.loads((tmp_path / f"{key}.json").read_text())["config"] == CFG
    assert not m2.training


def test_cache_relative_folder_goes_under_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_BOOK_CACHE", str(tmp_path))
    load_or_train(build, make_train([]), CFG, "models", verbose=False)
    assert (tmp_path / "models" / f"{config_hash(CFG)}.safetensors").exists()


def test_cache_corrupt_weights_raise_or_retrain(tmp_path):
    calls = []
    m1, r1 = load_or_train(build, make_train(calls), CFG, tmp_path, verbose=False)
    w = tmp_path / f"{r1['key']}.safetensors"
    w.write_bytes(w.read_bytes()[:-10])  # truncated
    with pytest.raises(CacheError, match="checksum"):
        load_or_train(build, make_train(calls), CFG, tmp_path, on_corrupt="raise", verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m2, r2 = load_or_train(build, make_train(calls), CFG, tmp_path, verbose=False)
    assert len(calls) == 2 and not r2["cached"] and any("Retraining" in str(c.message) for c in caught)
    assert torch.equal(m1[0].weight, m2[0].weight)
    _, r3 = load_or_train(build, make_train(calls), CFG, tmp_path, verbose=False)
    assert r3["cached"] and len(calls) == 2  # the rewritten entry is good again


def test_cache_garbage_and_mismatched_files(tmp_path):
    calls = []
    _, r = load_or_train(build, make_train(calls), CFG, tmp_path, verbose=False)
    w, j = tmp_path / f"{r['key']}.safetensors", tmp_path / f"{r['key']}.json"
    good_json = j.read_text()
    # a weights file that is not safetensors at all, with a matching checksum: the loader's error is wrapped
    w.write_bytes(b"\x00" * 64)
    rec = json.loads(good_json)
    rec["weights_sha256"] = utils._sha256_file(w)
    j.write_text(json.dumps(rec))
    with pytest.raises(CacheError, match="does not fit"):
        load_cached(build(CFG), CFG, tmp_path)
    j.write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        load_cached(build(CFG), CFG, tmp_path)
    rec["config"] = {**CFG, "d": 99}
    j.write_text(json.dumps(rec))
    with pytest.raises(CacheError, match="does not record the config"):
        load_cached(build(CFG), CFG, tmp_path)
    w.unlink()
    j.write_text(good_json)
    with pytest.raises(CacheError, match="missing"):
        load_cached(build(CFG), CFG, tmp_path)
    assert load_cached(build(CFG), {**CFG, "seed": 1}, tmp_path) is None  # never cached
    with pytest.raises(ValueError, match="on_corrupt"):
        load_or_train(build, make_train(calls), CFG, tmp_path, on_corrupt="ignore")


def test_cache_changed_architecture_is_a_clear_error(tmp_path):
    load_or_train(build, make_train([]), CFG, tmp_path, verbose=False)
    wider = lambda cfg: nn.Sequential(nn.Linear(cfg["d"], 7), nn.Tanh(), nn.Linear(7, 2))
    with pytest.raises(CacheError, match="version"):
        load_or_train(wider, make_train([]), CFG, tmp_path, on_corrupt="raise", verbose=False)


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    calls = []
    model, r = load_or_train(build, make_train(calls), CFG, tmp_path, verbose=False)
    w = tmp_path / f"{r['key']}.safetensors"
    before = w.read_bytes()

    def crash(model, filename, *a, **k):  # write half a file, then die
        with open(filename, "wb") as f:
            f.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(utils, "save_model", crash)
    other = build(CFG)
    with pytest.raises(OSError, match="disk full"):
        save_cached(other, CFG, {}, tmp_path)
    monkeypatch.undo()
    assert w.read_bytes() == before  # the old entry is untouched …
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]  # … and no temp files remain
    assert load_cached(build(CFG), CFG, tmp_path) is not None
    with pytest.raises(TypeError, match="meta"):
        save_cached(model, CFG, {"bad": object()}, tmp_path)
    assert w.read_bytes() == before


# ---------------------------------------------------------------- import
def test_sliced_wasserstein_shift_closed_form_and_errors():
    import math
    from diffusion_book.metrics import sliced_wasserstein
    from diffusion_book.utils import make_generator
    g = make_generator(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    exact = m.norm() * math.gamma(1.5) / (math.sqrt(math.pi) * math.gamma(2.0))
    assert abs(sliced_wasserstein(x, x + m, n_projections=20_000, generator=g) - exact) < 0.02 * exact
    assert sliced_wasserstein(x, x, generator=g) == 0.0
    assert sliced_wasserstein(x, x.flip(0), generator=g) < 1e-12  # order of samples is irrelevant
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(x, x[:, :2], generator=g)
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(x, torch.full_like(x, float("nan")), generator=g)
