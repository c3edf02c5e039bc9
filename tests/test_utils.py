import numpy as np
import pytest
import torch

from diffusion_book.utils import (by_scale, cache_dir, check_tensor, expect_error, get_device, get_scale,
                                  make_generator, scatter2d, seed_everything, show_images, to_image_grid)


def test_generators_reproducible():
    assert torch.equal(torch.randn(4, generator=make_generator(3)), torch.randn(4, generator=make_generator(3)))
    g = seed_everything(5)
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=make_generator(5)))


def test_scale(monkeypatch):
    monkeypatch.delenv("DIFFUSION_BOOK_SCALE", raising=False)
    assert get_scale() == "small" and by_scale("s", "f") == "s"
    monkeypatch.setenv("DIFFUSION_BOOK_SCALE", "FULL")
    assert get_scale() == "full" and by_scale("s", "f") == "f"
    monkeypatch.setenv("DIFFUSION_BOOK_SCALE", "huge")
    with pytest.raises(ValueError, match="DIFFUSION_BOOK_SCALE"):
        get_scale()
    with pytest.raises(ValueError, match="scale="):
        by_scale(1, 2, scale="medium")


def test_get_device():
    assert get_device().type in ("cpu", "cuda", "mps")
    assert get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            get_device("cuda")


@pytest.mark.parametrize("kwargs,x,exc,match", [
    (dict(ndim=2), torch.zeros(3), ValueError, "2 dimensions"),
    (dict(min_ndim=2), torch.zeros(3), ValueError, "at least 2"),
    (dict(shape=(None, 2)), torch.zeros(3, 3), ValueError, r"\('\*', 2\)"),
    (dict(floating=True), torch.zeros(3, dtype=torch.long), TypeError, "floating"),
    (dict(floating=False), torch.zeros(3), TypeError, "integer"),
    (dict(finite=True), torch.tensor([1.0, float("inf")]), ValueError, "NaN or Inf"),
    (dict(), np.zeros(3), TypeError, "torch.Tensor"),
])
def test_check_tensor_errors(kwargs, x, exc, match):
    with pytest.raises(exc, match=match):
        check_tensor(x, "x", **kwargs)


def test_check_tensor_passes_good_input():
    x = torch.zeros(2, 3)
    assert check_tensor(x, "x", ndim=2, shape=(2, None), floating=True, finite=True) is x


def test_expect_error_fails_when_it_should():
    with pytest.raises(AssertionError, match="nothing was raised"):
        with expect_error(ValueError):
            pass
    with pytest.raises(AssertionError, match="does not match"):
        with expect_error(ValueError, "shape"):
            raise ValueError("other")
    with pytest.raises(KeyError):  # other exception types pass through
        with expect_error(ValueError):
            raise KeyError("k")


def test_image_grid():
    x = torch.linspace(-1, 1, 3).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    g = to_image_grid(x, nrow=3, pad=0)
    assert g.shape == (2, 6)
    np.testing.assert_allclose(g[:, :2], 0.0)
    np.testing.assert_allclose(g[:, 4:], 1.0)
    assert to_image_grid(torch.zeros(5, 3, 4, 4)).shape[-1] == 3
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="4 dimensions"):
        to_image_grid(torch.zeros(4, 4))


def test_plots_return_axes():
    assert show_images(torch.zeros(4, 1, 8, 8), title="t") is not None
    assert scatter2d(torch.randn(10, 2), lim=3) is not None
    with pytest.raises(ValueError):
        scatter2d(torch.randn(10, 3))


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_BOOK_CACHE", str(tmp_path))
    p = cache_dir("a", "b")
    assert p == tmp_path / "a" / "b" and p.is_dir()
