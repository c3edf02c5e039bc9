"Tests of the captioned `shapes` data set and its pixel detector (chapter 01)."
import re

import pytest
import torch

from diffusion_book.data import (COLOUR_NAMES, POSITION_NAMES, SHAPE_NAMES, SIZE_NAMES, degrade, detect_shapes,
                                 load_shapes, shapes_accuracy, shapes_caption, to_model_range)


def test_deterministic_prefix_and_splits():
    x1, c1, a1 = load_shapes("train", n=100, size=32)
    x2, c2, a2 = load_shapes("train", n=100, size=32)
    assert torch.equal(x1, x2) and c1 == c2 and all(torch.equal(a1[k], a2[k]) for k in a1)
    x3, c3, _ = load_shapes("train", n=30, size=32)
    assert torch.equal(x3, x1[:30]) and c3 == c1[:30]
    xt, _, _ = load_shapes("test", n=100, size=32)
    assert not torch.equal(xt, x1)
    xs, _, _ = load_shapes("train", n=100, seed=1, size=32)
    assert not torch.equal(xs, x1)
    assert x1.dtype == torch.uint8 and x1.shape == (100, 3, 32, 32)
    assert load_shapes("test", n=4, size=64)[0].shape == (4, 3, 64, 64)


_ONE = re.compile(r"^a (small|large) (\w+) (\w+) at the (top left|top right|bottom left|bottom right)$")
_TWO = re.compile(r"^a (\w+) (\w+) (left of|above) a (\w+) (\w+)$")


def test_captions_match_attributes():
    _, caps, a = load_shapes("train", n=500, size=32)
    assert 0.15 < (a["count"] == 2).double().mean() < 0.45
    for i, cap in enumerate(caps):
        assert cap == shapes_caption(a, i)
        if a["count"][i] == 1:
            size, colour, shape, pos = _ONE.match(cap).groups()
            assert (SIZE_NAMES.index(size), COLOUR_NAMES.index(colour), SHAPE_NAMES.index(shape),
                    POSITION_NAMES.index(pos)) == tuple(int(a[k][i, 0]) for k in ("size", "colour", "shape", "position"))
            assert all(int(a[k][i, 1]) == -1 for k in ("size", "colour", "shape", "position"))
        else:
            c0, s0, rel, c1, s1 = _TWO.match(cap).groups()
            assert [COLOUR_NAMES.index(c0), COLOUR_NAMES.index(c1)] == a["colour"][i].tolist()
            assert [SHAPE_NAMES.index(s0), SHAPE_NAMES.index(s1)] == a["shape"][i].tolist()
            assert c0 != c1 and s0 != s1
            p0, p1 = a["position"][i].tolist()
            assert (p1 - p0) == (1 if rel == "left of" else 2)
            assert p0 % 2 == 0 if rel == "left of" else p0 < 2  # the first object is the left (top) one


@pytest.mark.parametrize("size", [32, 64])
def test_detector_exact_on_clean(size):
    x, _, a = load_shapes("test", n=400, size=size)
    acc = shapes_accuracy(detect_shapes(x), a)
    assert acc["all"] == 1.0, acc
    # floats in [-1, 1] are read the same way
    assert shapes_accuracy(detect_shapes(to_model_range(x)), a)["all"] == 1.0


def test_detector_sees_damage_and_relabelled_images():
    x, _, a = load_shapes("test", n=300, size=32)
    # a detector that ignores the pixels would pass the clean test only by accident: swap images
    wrong = shapes_accuracy(detect_shapes(x.roll(1, 0)), a)["all"]
    assert wrong < 0.1
    heavy = shapes_accuracy(detect_shapes(degrade(x, "blur", 3)), a)["all"]
    assert heavy < 1.0
    mild = shapes_accuracy(detect_shapes(degrade(x, "noise", 10, generator=torch.Generator().manual_seed(0))), a)
    assert mild["all"] > 0.95


def test_bad_input():
    with pytest.raises(ValueError, match="split"):
        load_shapes("validation")
    with pytest.raises(ValueError, match="n must"):
        load_shapes("train", n=0)
    with pytest.raises(ValueError, match="size"):
        load_shapes("train", n=2, size=30)
    with pytest.raises(ValueError, match="images"):
        detect_shapes(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images"):
        detect_shapes(torch.zeros(2, 3, 32))
    with pytest.raises(ValueError, match="kind"):
        degrade(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "rotate", 1)
