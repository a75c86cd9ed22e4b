"""Cosine-to-mean detector: the score is 1 - cos(x, mean direction), in [0, 2].

The mean direction is the normalised mean of the L2-normalised training vectors, so every
training vector counts equally whatever its norm. An all-zero query has similarity 0 (score 1).
"""
import numpy as np

from detectors._vectors import l2_normalize
from detectors.base import Detector
from processing.errors import UserError


class CosineToMeanDetector(Detector):
    _learned = ("mean_direction",)

    def _fit(self, X):
        mean = l2_normalize(X).mean(axis=0, keepdims=True)
        if np.linalg.norm(mean) < 1e-6:  # below this the direction would be rounding noise
            raise UserError("training directions average to (nearly) zero: there is no mean direction")
        self.mean_direction_ = l2_normalize(mean)[0]

    def _score(self, X):
        return 1 - l2_normalize(X) @ self.mean_direction_
