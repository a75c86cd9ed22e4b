"""k-nearest-neighbour detector: the score is the MEAN distance to the k nearest training vectors.

The mean over the k nearest (rather than the distance to the k-th alone) is less sensitive to a
single stray training vector. With metric="cosine" vectors are L2-normalised and the distance is
the cosine distance 1 - cos(a, b) (in [0, 2]). Scoring a training vector itself counts that
vector as one of its neighbours (distance 0).
"""
import numpy as np

from detectors._validation import check_choice, check_positive_int
from detectors._vectors import l2_normalize
from detectors.base import Detector
from detectors.nearest import nearest_distances

METRICS = ("euclidean", "cosine")


class KNNDetector(Detector):
    _learned = ("train_features",)  # L2-normalised when metric="cosine"

    def __init__(self, k=5, metric="euclidean", batch_size=1024):
        self.k = k
        self.metric = metric
        self.batch_size = batch_size

    def _check_params(self):
        check_positive_int("k", self.k)
        check_choice("metric", self.metric, METRICS)
        check_positive_int("batch_size", self.batch_size)

    def _min_samples(self):
        return self.k, f"for k={self.k}"

    def _fit(self, X):
        # np.array copies: the detector must not change when the caller reuses its array.
        self.train_features_ = np.array(self._prepare(X))

    def _score(self, X):
        distances = nearest_distances(self._prepare(X), self.train_features_, self.k, self.batch_size)
        if self.metric == "cosine":
            distances = distances ** 2 / 2  # ||a - b||^2 = 2 - 2 cos(a, b) for unit vectors
        return distances.mean(axis=1)

    def _prepare(self, X):
        return l2_normalize(X) if self.metric == "cosine" else X
