"""Gaussian-mixture detector: the score is the negative log-likelihood under a fitted
sklearn GaussianMixture (i.e. -GaussianMixture.score_samples), so higher = more anomalous."""
import numpy as np
from sklearn.mixture import GaussianMixture

from detectors._validation import check_choice, check_positive_int
from detectors.base import Detector

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class GMMDetector(Detector):
    _learned = ("means", "weights", "covariances", "precisions_cholesky")

    def __init__(self, n_components=4, covariance_type="full", random_state=0):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.random_state = random_state

    def _check_params(self):
        check_positive_int("n_components", self.n_components)
        check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)

    def _min_samples(self):
        return self.n_components, f"for n_components={self.n_components}"

    def _fit(self, X):
        mixture = self._new_mixture().fit(X.astype(np.float64))
        for name in self._learned:
            setattr(self, name + "_", getattr(mixture, name + "_").astype(np.float32))

    def _restore(self):
        # Scores always come from a mixture rebuilt from the float32 learned arrays, so a
        # detector from from_state() scores exactly like the one that was fitted.
        mixture = self._new_mixture()
        for name in self._learned:
            setattr(mixture, name + "_", getattr(self, name + "_").astype(np.float64))
        mixture.n_features_in_ = self.n_features_in_
        self.mixture_ = mixture

    def _score(self, X):
        return -self.mixture_.score_samples(X.astype(np.float64))

    def _new_mixture(self):
        return GaussianMixture(
            n_components=self.n_components, covariance_type=self.covariance_type, random_state=self.random_state
        )
