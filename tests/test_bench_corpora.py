"""The validation suite's corpus builders (benchmarks/corpora.py) on the real source files."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.corpora import (
    LOOKALIKES,
    UNBALANCED_LARGEST,
    UNBALANCED_RATIO,
    build,
    digits_resized,
    fashion_mnist,
    geometric_sizes,
)


@pytest.fixture(scope="module")
def fmnist():
    return fashion_mnist()


def test_unbalanced_sizes_fall_geometrically_every_class_present_and_seeded(fmnist):
    X, y, info = build("fmnist-unbalanced", seed=3)
    classes, counts = np.unique(y, return_counts=True)
    assert list(classes) == list(range(10))  # every class present
    by_size = np.sort(counts)[::-1]
    assert by_size[0] == UNBALANCED_LARGEST and by_size[-1] == UNBALANCED_LARGEST // UNBALANCED_RATIO
    ratios = by_size[:-1] / by_size[1:]
    assert np.allclose(ratios, UNBALANCED_RATIO ** (1 / 9), rtol=0.01)  # one ratio between neighbours
    assert list(by_size) == geometric_sizes(10)
    assert info["sizes"] == {str(c): int(n) for c, n in zip(classes, counts)}  # written as built
    assert [info["sizes"][str(c)] for c in info["class_for_size"]] == geometric_sizes(10)
    # the rows are Fashion-MNIST's own images with their own labels
    images, labels = fmnist
    first = np.flatnonzero((images.reshape(len(images), -1) == X[0].reshape(-1)).all(axis=1))
    assert y[0] in labels[first]
    # deterministic for the seed, another seed another draw
    X2, y2, info2 = build("fmnist-unbalanced", seed=3)
    assert np.array_equal(X, X2) and np.array_equal(y, y2) and info == info2
    _, y4, info4 = build("fmnist-unbalanced", seed=4)
    assert info4["class_for_size"] != info["class_for_size"] or not np.array_equal(y4, y)


def test_lookalikes_keep_only_the_five_upper_body_garments(fmnist):
    X, y, info = build("fmnist-lookalikes")
    assert LOOKALIKES == (0, 2, 3, 4, 6)
    assert sorted(np.unique(y)) == [0, 2, 3, 4, 6]
    assert X.shape == (35000, 28, 28) and info["class_counts"] == {str(c): 7000 for c in LOOKALIKES}
    assert set(info["classes"].values()) == {"T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"}
    images, labels = fmnist
    keep = np.isin(labels, LOOKALIKES)
    assert np.array_equal(X, images[keep]) and np.array_equal(y, labels[keep])  # source order, labels kept


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resized_shapes_and_labels(size):
    from sklearn.datasets import load_digits
    d = load_digits()
    X, y, info = build(f"digits{size}")
    assert X.shape == (1797, size, size) and X.dtype == np.uint8
    assert np.array_equal(y, d.target)
    assert info["shape"] == [size, size] and "Lanczos" in info["resampling"]
    # a resized digit still looks like its 8x8 self: block-averaged back, it correlates with the source
    back = X.reshape(1797, 8, size // 8, 8, size // 8).mean(axis=(2, 4)).reshape(1797, -1)
    src = d.images.reshape(1797, -1)
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(back[:50], src[:50])]
    assert min(corr) > 0.9
    assert np.array_equal(X, digits_resized(size)[0])  # deterministic
