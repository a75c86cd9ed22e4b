"""The detectors' `score_samples` (detectors/) in keras.ops, from their stored state, for export.py.

Each function takes the state arrays a fitted detector's `state()` gives (as tensors or Keras weights)
and (n, D) query vectors, and returns (n,) float32 scores equal to the numpy detector's within float32
rounding, in ops that trace into a SavedModel, TFLite and ONNX graph (no numpy, sklearn or scipy).
The kNN search is one (queries x memory) matrix per call: the caller bounds the batch.
"""
import math

from keras import ops

from processing.errors import UserError

TINY = 1.1754944e-38  # np.finfo(float32).tiny: the norm floor of detectors/_vectors.l2_normalize


def l2_normalize(vectors):
    norms = ops.sqrt(ops.sum(vectors * vectors, axis=1, keepdims=True))
    return vectors / ops.maximum(norms, TINY)


def squared_mahalanobis(vectors, mean, precision):
    """(n,) (x - mean)^T precision (x - mean), clipped at 0 against rounding (detectors/_gaussian.py)."""
    centered = vectors - mean
    return ops.maximum(ops.sum(ops.matmul(centered, precision) * centered, axis=1), 0.0)


def knn_scores(vectors, train_features, k, metric):
    """KNNDetector: mean distance to the k nearest training vectors (cosine: (1 - cos) via ||a - b||^2 / 2)."""
    if metric == "cosine":
        vectors = l2_normalize(vectors)
    squared = (ops.sum(vectors * vectors, axis=1)[:, None] - 2 * ops.matmul(vectors, ops.transpose(train_features))
               + ops.sum(train_features * train_features, axis=1)[None, :])
    nearest_squared = ops.maximum(-ops.top_k(-squared, k, sorted=False)[0], 0.0)
    distances = nearest_squared / 2 if metric == "cosine" else ops.sqrt(nearest_squared)
    return ops.mean(distances, axis=1)


def gmm_scores(vectors, means, weights, precisions_cholesky, covariance_type):
    """GMMDetector: -log sum_c w_c N(x; mu_c, diag sigma_c^2), as sklearn's GaussianMixture.score_samples."""
    if covariance_type != "diag":
        raise UserError(f"a GMM detector with {covariance_type!r} covariances cannot be exported; "
                        "only 'diag' (the --detector gmm setting) can")
    dims = means.shape[-1]
    # (n, c, D) standardised offsets; sklearn expands the square, the direct form rounds no worse.
    standardized = (vectors[:, None, :] - means[None]) * precisions_cholesky[None]
    log_densities = (-0.5 * (dims * math.log(2 * math.pi) + ops.sum(standardized * standardized, axis=2))
                     + ops.sum(ops.log(precisions_cholesky), axis=1)[None, :])
    return -ops.logsumexp(log_densities + ops.log(weights)[None, :], axis=1)


def detector_scores(detector, state, params, vectors):
    """(n,) scores of the detector named `detector` (detectors.make_detector names) from its `state`."""
    vectors = ops.convert_to_tensor(vectors, "float32")
    if detector == "knn":
        return knn_scores(vectors, state["train_features"], params.get("k", 5), params.get("metric", "euclidean"))
    if detector == "mahalanobis":
        return ops.sqrt(squared_mahalanobis(vectors, state["mean"], state["precision"]))
    if detector == "cosine":
        return 1 - ops.matmul(l2_normalize(vectors), state["mean_direction"][:, None])[:, 0]
    if detector == "gmm":
        return gmm_scores(vectors, state["means"], state["weights"], state["precisions_cholesky"],
                          params.get("covariance_type", "full"))
    raise UserError(f"the {detector} detector has no keras.ops scoring, so its model cannot be exported")
