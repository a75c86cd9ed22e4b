"""Gaussian fitting and Mahalanobis distances shared by the Mahalanobis and GDE detectors."""
import numpy as np
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

COVARIANCES = ("shrinkage", "pinv")


def fit_gaussian(X, covariance="shrinkage"):
    """(mean, covariance, precision) in float64.

    "shrinkage": Ledoit-Wolf shrunk covariance, well conditioned even with few samples.
    "pinv": maximum-likelihood covariance and its Moore-Penrose pseudo-inverse.
    """
    X = X.astype(np.float64)
    if covariance == "shrinkage":
        estimator = LedoitWolf().fit(X)
        return estimator.location_, estimator.covariance_, estimator.precision_
    estimator = EmpiricalCovariance(store_precision=False).fit(X)
    return estimator.location_, estimator.covariance_, np.linalg.pinv(estimator.covariance_, hermitian=True)


def squared_mahalanobis(X, mean, precision):
    """(n,) float64 (x - mean)^T precision (x - mean), clipped at 0 against rounding."""
    centered = X.astype(np.float64) - mean
    squared = np.einsum("ij,ij->i", centered @ precision.astype(np.float64), centered)
    return np.maximum(squared, 0)
