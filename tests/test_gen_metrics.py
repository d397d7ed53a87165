"""Generation metrics: FD, KID, k-NN precision/recall/density/coverage, fidelity, IS analogue."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from cci_core.generate.gen_metrics import (
    classifier_score,
    cluster_fidelity,
    compare_reports,
    comparison_table,
    evaluate_features,
    evaluate_generated,
    feature_fn,
    frechet_distance,
    kid,
    precision_recall_density_coverage,
    prob_fn,
    train_reference_cnn,
)


@pytest.fixture(scope="module")
def gauss():
    rng = np.random.default_rng(0)
    return rng.normal(size=(600, 8)), rng.normal(size=(600, 8))


def test_frechet_distance_zero_for_same_set_and_grows_with_shift(gauss):
    a, b = gauss
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    # A pure mean shift of s in each of 8 dimensions adds exactly 8 s^2.
    np.testing.assert_allclose(shifts, [8 * 0.25, 8 * 1.0, 8 * 4.0], rtol=1e-6)
    # Two samples of the same law are close; a scaled law is far.
    assert frechet_distance(a, b) < 0.5 < frechet_distance(a, 2 * b)


def test_frechet_distance_handles_singular_covariances():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 20))  # fewer samples than features: rank-deficient covariances
    fd = frechet_distance(a, rng.normal(size=(5, 20)))
    assert np.isfinite(fd) and fd > 0


def test_kid_unbiased_near_zero_for_same_law_positive_otherwise(gauss):
    a, b = gauss
    same, same_std = kid(a, b, subsets=50, subset_size=200, seed=0)
    assert abs(same) < 3 * same_std / np.sqrt(50) + 0.01
    shifted, _ = kid(a, b + 1.0, subsets=50, subset_size=200, seed=0)
    assert shifted > 10 * max(abs(same), 1e-3)
    assert kid(a, b, subsets=5, subset_size=100, seed=3) == kid(a, b, subsets=5, subset_size=100, seed=3)


def test_precision_recall_on_constructed_cases(gauss):
    real, _ = gauss
    same = precision_recall_density_coverage(real, real, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] >= 1.0
    # Mode collapse: fakes are a tight cluster at the centre of the real cloud.
    rng = np.random.default_rng(2)
    collapsed = precision_recall_density_coverage(real, 0.05 * rng.normal(size=(300, 8)), k=5)
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.1 and collapsed["coverage"] < 0.2
    # Fakes far away: nothing is inside either manifold.
    far = precision_recall_density_coverage(real, real[:300] + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # Chunking does not change the result.
    assert precision_recall_density_coverage(real, real[::2] + 0.1, k=3, chunk=7) == \
        precision_recall_density_coverage(real, real[::2] + 0.1, k=3, chunk=4096)


def test_cluster_fidelity_and_classifier_score_on_constructed_probabilities():
    intended = np.repeat(np.arange(4), 25)
    pred = intended.copy()
    pred[:10] = 3  # cluster 0: 15 of 25 right
    fid = cluster_fidelity(pred, intended)
    assert fid["fidelity"] == pytest.approx(90 / 100)
    assert fid["per_cluster"] == {0: 0.6, 1: 1.0, 2: 1.0, 3: 1.0}
    assert fid["n_per_cluster"][0] == 25

    confident_even = np.eye(4)[intended]
    assert classifier_score(confident_even, splits=1)[0] == pytest.approx(4.0, rel=1e-6)
    collapsed = np.tile(np.eye(4)[0], (100, 1))
    assert classifier_score(collapsed, splits=1)[0] == pytest.approx(1.0)
    uniform = np.full((100, 4), 0.25)
    assert classifier_score(uniform, splits=1)[0] == pytest.approx(1.0)
    # Rows grouped by cluster (as generated) still score ~4 with several splits.
    mean, std = classifier_score(confident_even, splits=5)
    assert 3.0 < mean <= 4.0 and std >= 0
    with pytest.raises(ValueError, match="softmax"):
        classifier_score(np.ones((10, 4)))


def test_bad_input_gives_clear_errors(gauss):
    a, _ = gauss
    with pytest.raises(ValueError, match="same network"):
        frechet_distance(a, a[:, :4])
    with pytest.raises(ValueError, match="2-D"):
        kid(a[:, 0], a)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 2), np.nan), a[:, :2])


def test_evaluate_and_compare_reports_on_digits_with_a_reference_cnn():
    digits = load_digits()
    images = np.pad((digits.images * 255 / 16).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))[..., None]
    labels = digits.target
    model = train_reference_cnn(images[:1200], labels[:1200], steps=150, batch_size=64, seed=0)
    probs = prob_fn(model)(images[1200:])
    assert (probs.argmax(1) == labels[1200:]).mean() > 0.8  # the features mean something
    # A model that expects [0, 1] pixels gets them: feeding the wrong range changes features.
    f_wrong = feature_fn(model, value_range=(0.0, 1.0))(images[:50])
    assert not np.allclose(f_wrong, feature_fn(model)(images[:50]))
    assert feature_fn(model, method="forward")(images[:5]).shape == (5, 10)

    real, held = images[:600], images[1200:]
    rng = np.random.default_rng(0)
    noisy = np.clip(held.astype(int) + rng.integers(-120, 120, held.shape), 0, 255).astype(np.uint8)
    kw = dict(k=5, kid_subsets=10, kid_subset_size=200, is_splits=4)
    good = evaluate_generated(real, held, feature_fn(model), prob_fn(model), labels[1200:], **kw)
    bad = evaluate_generated(real, noisy, feature_fn(model), prob_fn(model), labels[1200:],
                             batch_size=100, **kw)
    for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
                "fidelity", "is", "n_real", "n_fake"):
        assert key in good and key in bad
    assert good["n_real"] == 600 and good["n_fake"] == len(held) and good["kid_subset_size"] == 200
    assert good["fid"] < bad["fid"] and good["kid"] < bad["kid"]
    assert good["fidelity"] > bad["fidelity"]

    cmp = compare_reports({"held_out": good, "noisy": bad})
    assert cmp["fid"]["winner"] == "held_out" and cmp["fid"]["better"] == "lower"
    assert cmp["fidelity"]["winner"] == "held_out" and cmp["precision"]["better"] == "higher"
    assert "| fid | lower |" in comparison_table(cmp)
    # A report without classifier outputs still compares on the shared measures.
    plain = evaluate_features(feature_fn(model)(real), feature_fn(model)(held), **{
        k: v for k, v in kw.items() if k != "is_splits"})
    assert "is" not in plain and "fidelity" not in compare_reports({"a": plain, "b": good})
    three = compare_reports({"a": plain, "b": good, "c": bad})
    assert three["fidelity"]["values"]["a"] is None and three["fidelity"]["winner"] == "b"
    assert "n/a" in comparison_table(three)
