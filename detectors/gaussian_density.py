"""Gaussian density estimation (GDE) as in CutPaste (Li et al. 2021).

A single Gaussian is fitted with Ledoit-Wolf shrinkage; the score is the negative log-likelihood
under it, -log N(x; mean, covariance), so higher = more anomalous.
"""
import numpy as np

from detectors._gaussian import fit_gaussian, squared_mahalanobis
from detectors.base import Detector
from processing.errors import UserError


class GaussianDensityDetector(Detector):
    # log_normalizer = (d log(2 pi) + log det covariance) / 2, the constant part of the NLL.
    _learned = ("mean", "precision", "log_normalizer")

    def _min_samples(self):
        return 2, "to estimate a covariance"

    def _fit(self, X):
        mean, covariance, precision = fit_gaussian(X, "shrinkage")
        sign, log_det = np.linalg.slogdet(covariance)
        if sign <= 0 or not np.isfinite(log_det):
            raise UserError("training features have no variance: a Gaussian density cannot be fitted")
        self.mean_ = mean.astype(np.float32)
        self.precision_ = precision.astype(np.float32)
        self.log_normalizer_ = np.array((X.shape[1] * np.log(2 * np.pi) + log_det) / 2, dtype=np.float32)

    def _score(self, X):
        return squared_mahalanobis(X, self.mean_, self.precision_) / 2 + self.log_normalizer_
