"""Detectors on hand-made cases with known answers, plus the shared contract for all of them."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.covariance import LedoitWolf
from sklearn.mixture import GaussianMixture

from detectors import (
    DETECTORS,
    CoresetMemoryBank,
    CosineToMeanDetector,
    GaussianDensityDetector,
    GMMDetector,
    KMeansDetector,
    KNNDetector,
    MahalanobisDetector,
    make_detector,
    nearest_distances,
)
from detectors.coreset import BOUND_DIMS, greedy_coreset_indices
from processing.errors import UserError

# Small parameters so every detector fits the 6-dim blob below in milliseconds; the coreset
# projects 6 dims to 4 so the projection path runs too.
SMALL_PARAMS = {
    "knn": {"k": 3},
    "mahalanobis": {},
    "gde": {},
    "gmm": {"n_components": 2},
    "kmeans": {"n_clusters": 3},
    "cosine": {},
    "coreset": {"coreset_ratio": 0.2, "projection_dim": 4},
}


def column(*values):
    return np.array(values, dtype=np.float32)[:, None]


@pytest.fixture
def blob():
    """Normal training samples (a Gaussian blob off the origin, so the cosine detector has a
    mean direction) and far-away queries."""
    rng = np.random.default_rng(0)
    normal = rng.normal(loc=3.0, size=(300, 6)).astype(np.float32)
    inliers = rng.normal(loc=3.0, size=(20, 6)).astype(np.float32)
    far = inliers * np.array([-1, 1, -1, 1, -1, 1], dtype=np.float32) * 4
    return normal, inliers, far


# nearest_distances


def test_nearest_distances_matches_brute_force_with_small_blocks():
    rng = np.random.default_rng(1)
    queries, bank = rng.normal(size=(53, 7)), rng.normal(size=(29, 7))
    # batch_size smaller than both the query count and the bank: several blocks each way.
    distances = nearest_distances(queries, bank, k=3, batch_size=8)
    expected = np.sort(cdist(queries, bank), axis=1)[:, :3]
    assert distances.shape == (53, 3) and distances.dtype == np.float32
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(nearest_distances(queries, bank, batch_size=8)[:, 0], expected[:, 0], rtol=1e-4)


def test_nearest_distances_rejects_k_larger_than_bank():
    with pytest.raises(ValueError, match="bank size"):
        nearest_distances(np.zeros((2, 3)), np.zeros((2, 3)), k=3)


# One hand-made case per detector


def test_knn_scores_distance_on_a_line():
    detector = KNNDetector(k=1).fit(column(0, 1, 2, 10))
    np.testing.assert_allclose(detector.score_samples(column(4, 1, 11)), [2, 0, 1])
    # k=2 averages the two nearest: 4 -> (|4-2| + |4-1|) / 2.
    np.testing.assert_allclose(KNNDetector(k=2).fit(column(0, 1, 2, 10)).score_samples(column(4)), [2.5])


def test_knn_cosine_metric_is_one_minus_cosine_similarity():
    detector = KNNDetector(k=1, metric="cosine").fit(np.array([[1, 0], [0, 1]]))
    scores = detector.score_samples(np.array([[5, 0], [1, 1], [-1, 0]]))
    np.testing.assert_allclose(scores, [0, 1 - np.sqrt(0.5), 1], atol=1e-6)


def test_mahalanobis_pinv_matches_hand_formula_on_diagonal_gaussian():
    # Mean 0 and (maximum-likelihood) covariance exactly diag(a^2/2, b^2/2).
    a, b = 2.0, 6.0
    train = np.array([[a, 0], [-a, 0], [0, b], [0, -b]])
    queries = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, -3.0], [0.0, 0.0]])
    expected = np.sqrt(2 * queries[:, 0] ** 2 / a**2 + 2 * queries[:, 1] ** 2 / b**2)
    scores = MahalanobisDetector(covariance="pinv").fit(train).score_samples(queries)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_mahalanobis_shrinkage_uses_ledoit_wolf(blob):
    normal, inliers, _ = blob
    estimator = LedoitWolf().fit(normal.astype(np.float64))
    centered = inliers - estimator.location_
    expected = np.sqrt(np.einsum("ij,jk,ik->i", centered, np.linalg.inv(estimator.covariance_), centered))
    scores = MahalanobisDetector().fit(normal).score_samples(inliers)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_gde_is_negative_log_likelihood_of_ledoit_wolf_gaussian(blob):
    normal, inliers, far = blob
    estimator = LedoitWolf().fit(normal.astype(np.float64))
    detector = GaussianDensityDetector().fit(normal)
    expected = -multivariate_normal.logpdf(inliers, estimator.location_, estimator.covariance_)
    np.testing.assert_allclose(detector.score_samples(inliers), expected, rtol=1e-4)
    assert detector.score_samples(far).min() > detector.score_samples(inliers).max()


def test_gde_rejects_features_without_variance():
    with pytest.raises(UserError, match="no variance"):
        GaussianDensityDetector().fit(np.ones((10, 3)))


def test_kmeans_scores_distance_to_nearest_centroid():
    # Two clusters symmetric around (0, 0) and (10, 10): those are the centroids.
    offsets = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])
    train = np.vstack([offsets, offsets + 10])
    detector = KMeansDetector(n_clusters=2).fit(train)
    scores = detector.score_samples(np.array([[3, 4], [10, 10], [13, 14]]))
    np.testing.assert_allclose(scores, [5, 0, 5], atol=1e-5)


def test_gmm_is_negative_mixture_log_likelihood(blob):
    normal, inliers, far = blob
    detector = GMMDetector(n_components=2).fit(normal)
    mixture = GaussianMixture(n_components=2, random_state=0).fit(normal.astype(np.float64))
    np.testing.assert_allclose(detector.score_samples(inliers), -mixture.score_samples(inliers), rtol=1e-4)
    assert detector.score_samples(far).min() > detector.score_samples(inliers).max()


def test_cosine_to_mean_direction():
    # Unequal norms: the mean is taken over normalised vectors, so the direction is (1, 1).
    detector = CosineToMeanDetector().fit(np.array([[3, 0], [0, 1]]))
    scores = detector.score_samples(np.array([[2, 2], [1, -1], [-1, -1], [0, 0]]))
    np.testing.assert_allclose(scores, [0, 1, 2, 1], atol=1e-6)


def test_cosine_rejects_training_directions_that_cancel():
    with pytest.raises(UserError, match="no mean direction"):
        CosineToMeanDetector().fit(np.array([[1, 0], [-1, 0]]))


# Coreset memory bank


def test_greedy_coreset_picks_farthest_points_in_order():
    points = column(0, 1, 3, 7, 8, 20)
    # From 0: farthest is 20; then 8 (8 from 0, 12 from 20); then 3 (3 from 0, 4 from 8).
    assert greedy_coreset_indices(points, 4, first_index=0).tolist() == [0, 5, 4, 2]
    # From 3: 20, then 8 (5 from 3), then 0 (3 from 3; 1 and 7 are nearer to a pick).
    assert greedy_coreset_indices(points, 4, first_index=2).tolist() == [2, 5, 4, 0]


def test_greedy_coreset_never_repeats_a_pick_among_duplicates():
    picks = greedy_coreset_indices(np.zeros((5, 3), dtype=np.float32), 3, first_index=2)
    assert len(set(picks.tolist())) == 3


def test_greedy_coreset_matches_brute_force_farthest_points_in_more_dims_than_its_bound():
    # Variances falling off as in real features, so the principal-axes bound skips most updates.
    rng = np.random.default_rng(4)
    features = (rng.normal(size=(600, BOUND_DIMS + 36)) * np.linspace(3, 0.1, BOUND_DIMS + 36)).astype(np.float32)
    expected, nearest = [7], np.linalg.norm(features - features[7], axis=1)
    for _ in range(39):
        expected.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(features - features[expected[-1]], axis=1))
    assert greedy_coreset_indices(features, 40, first_index=7).tolist() == expected


@pytest.mark.parametrize("n, expected_size", [(123, 12), (127, 13)])
def test_coreset_bank_holds_rounded_ratio_of_original_vectors(n, expected_size):
    # 20 dims projected to 4 for selection; the bank keeps the original 20-dim rows.
    train = np.random.default_rng(2).normal(size=(n, 20)).astype(np.float32)
    bank = CoresetMemoryBank(coreset_ratio=0.1, projection_dim=4).fit(train).memory_bank_
    assert bank.shape == (expected_size, 20)
    assert all((train == row).all(axis=1).any() for row in bank)


@pytest.mark.parametrize("k", [1, 3])
def test_coreset_scores_are_brute_force_nearest_bank_distances(k):
    rng = np.random.default_rng(3)
    train, queries = rng.normal(size=(200, 5)), rng.normal(size=(50, 5))
    detector = CoresetMemoryBank(coreset_ratio=0.25, k=k, batch_size=16).fit(train)
    expected = np.sort(cdist(queries, detector.memory_bank_), axis=1)[:, :k].mean(axis=1)
    np.testing.assert_allclose(detector.score_samples(queries), expected, rtol=1e-4, atol=1e-5)


def test_coreset_too_few_vectors_for_ratio():
    with pytest.raises(UserError, match="needs at least 10 training vectors for coreset ratio 0.1.*got 9"):
        CoresetMemoryBank(coreset_ratio=0.1).fit(np.ones((9, 3)))


# The contract, for every detector


@pytest.fixture(params=sorted(DETECTORS))
def name(request):
    return request.param


def test_far_points_score_higher_than_inliers(name, blob):
    normal, inliers, far = blob
    detector = make_detector(name, **SMALL_PARAMS[name]).fit(normal)
    inlier_scores, far_scores = detector.score_samples(inliers), detector.score_samples(far)
    assert inlier_scores.dtype == np.float32 and inlier_scores.shape == (20,)
    assert far_scores.min() > inlier_scores.max()


def test_state_round_trip_gives_identical_scores(name, blob):
    normal, inliers, far = blob
    detector = make_detector(name, **SMALL_PARAMS[name]).fit(normal)
    state = detector.state()
    assert all(isinstance(array, np.ndarray) and array.dtype == np.float32 for array in state.values())
    assert not any(key.endswith("_") for key in state)
    rebuilt = DETECTORS[name].from_state(state, **detector.get_params())
    queries = np.vstack([inliers, far])
    np.testing.assert_array_equal(rebuilt.score_samples(queries), detector.score_samples(queries))


def test_state_with_wrong_arrays_is_rejected(name, blob):
    state = make_detector(name, **SMALL_PARAMS[name]).fit(blob[0]).state()
    state["unexpected"] = state.popitem()[1]
    with pytest.raises(UserError, match="state must hold exactly the arrays"):
        DETECTORS[name].from_state(state, **SMALL_PARAMS[name])


def test_learned_attributes_are_set_only_by_fit(name, blob):
    detector = make_detector(name, **SMALL_PARAMS[name])
    assert not [attribute for attribute in vars(detector) if attribute.endswith("_")]
    assert detector.get_params() == clone(detector).get_params()
    for method in (detector.state, lambda: detector.score_samples(blob[1])):
        with pytest.raises(UserError, match="not fitted yet"):
            method()


def test_nan_or_inf_features_are_rejected(name, blob):
    normal, inliers, _ = blob
    poisoned = normal.copy()
    poisoned[[4, 7], 1] = [np.nan, np.inf]
    with pytest.raises(UserError, match="NaN or infinite values in 2 of 300 rows"):
        make_detector(name, **SMALL_PARAMS[name]).fit(poisoned)
    detector = make_detector(name, **SMALL_PARAMS[name]).fit(normal)
    with pytest.raises(UserError, match="NaN or infinite"):
        detector.score_samples(poisoned[:10])


def test_wrong_feature_dimension_at_score_time(name, blob):
    detector = make_detector(name, **SMALL_PARAMS[name]).fit(blob[0])
    with pytest.raises(UserError, match="features have 5 dims but the detector was fitted on 6"):
        detector.score_samples(blob[1][:, :5])


def test_features_that_are_not_a_matrix(name):
    with pytest.raises(UserError, match=r"\(n_samples, n_features\) array; got shape \(4,\)"):
        make_detector(name, **SMALL_PARAMS[name]).fit(np.ones(4))


def test_too_few_training_vectors(name):
    if name == "cosine":
        pytest.skip("one vector already has a direction")
    with pytest.raises(UserError, match=r"needs at least \d+ training vectors .*; got 1"):
        make_detector(name, **SMALL_PARAMS[name]).fit(np.ones((1, 6)))


# Parameters and the registry


@pytest.mark.parametrize(
    "detector, message",
    [
        (KNNDetector(metric="manhattan"), "metric must be one of 'euclidean', 'cosine'"),
        (KNNDetector(k=0), "k must be a positive integer"),
        (MahalanobisDetector(covariance="exact"), "covariance must be one of"),
        (GMMDetector(covariance_type="full-rank"), "covariance_type must be one of"),
        (CoresetMemoryBank(coreset_ratio=1.5), r"coreset_ratio must be a number in \(0, 1\]"),
        (CoresetMemoryBank(projection_dim=np.float32(64)), "projection_dim must be a positive integer"),
    ],
)
def test_invalid_parameters_are_rejected_at_fit(detector, message):
    with pytest.raises(UserError, match=message):
        detector.fit(np.ones((20, 2)))


def test_make_detector_builds_registered_classes():
    detector = make_detector("knn", k=2, metric="cosine")
    assert isinstance(detector, KNNDetector) and detector.get_params()["metric"] == "cosine"


def test_make_detector_lists_valid_names_and_parameters():
    with pytest.raises(UserError, match="unknown detector 'lof'; choose one of: knn, mahalanobis, gde"):
        make_detector("lof")
    with pytest.raises(UserError, match="no parameter n_neighbors; its parameters are: k, metric, batch_size"):
        make_detector("knn", n_neighbors=3)
