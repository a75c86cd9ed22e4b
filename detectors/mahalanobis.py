"""Mahalanobis detector: the score is the (plain, not squared) Mahalanobis distance to the mean.

covariance="shrinkage" uses the Ledoit-Wolf estimate; "pinv" uses the empirical covariance and
its pseudo-inverse, so directions without variance in the training data are ignored.
"""
import numpy as np

from detectors._gaussian import COVARIANCES, fit_gaussian, squared_mahalanobis
from detectors._validation import check_choice
from detectors.base import Detector


class MahalanobisDetector(Detector):
    _learned = ("mean", "precision")

    def __init__(self, covariance="shrinkage"):
        self.covariance = covariance

    def _check_params(self):
        check_choice("covariance", self.covariance, COVARIANCES)

    def _min_samples(self):
        return 2, "to estimate a covariance"

    def _fit(self, X):
        mean, _, precision = fit_gaussian(X, self.covariance)
        self.mean_ = mean.astype(np.float32)
        self.precision_ = precision.astype(np.float32)

    def _score(self, X):
        return np.sqrt(squared_mahalanobis(X, self.mean_, self.precision_))
