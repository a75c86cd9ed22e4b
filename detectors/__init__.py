"""Anomaly scorers fitted on embeddings of NORMAL samples; higher score = more anomalous.

See detectors/base.py for the shared contract (fit / score_samples / state / from_state).
"""
import inspect

from detectors.coreset import CoresetMemoryBank
from detectors.cosine import CosineToMeanDetector
from detectors.gaussian_density import GaussianDensityDetector
from detectors.gmm import GMMDetector
from detectors.kmeans import KMeansDetector
from detectors.knn import KNNDetector
from detectors.mahalanobis import MahalanobisDetector
from detectors.nearest import nearest_distances
from processing.errors import UserError

DETECTORS = {
    "knn": KNNDetector,
    "mahalanobis": MahalanobisDetector,
    "gde": GaussianDensityDetector,
    "gmm": GMMDetector,
    "kmeans": KMeansDetector,
    "cosine": CosineToMeanDetector,
    "coreset": CoresetMemoryBank,
}


def make_detector(name, **params):
    """An unfitted detector from its registry name and constructor parameters."""
    if name not in DETECTORS:
        raise UserError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    detector_class = DETECTORS[name]
    accepted = list(inspect.signature(detector_class).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"detector {name!r} has no parameter {', '.join(unknown)}; "
            f"its parameters are: {', '.join(accepted) or 'none'}"
        )
    return detector_class(**params)


__all__ = [*(cls.__name__ for cls in DETECTORS.values()), "DETECTORS", "make_detector", "nearest_distances"]
