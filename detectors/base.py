"""The contract every detector follows: scikit-learn style, fitted on NORMAL samples only.

- `fit(X)`: X is an (n_samples, n_features) array of normal embeddings; returns self.
- `score_samples(X)`: (n_samples,) float32 anomaly scores, HIGHER = MORE ANOMALOUS. This is the
  opposite of scikit-learn's own outlier detectors, whose `score_samples` is higher for normal
  samples; it matches PyOD's `decision_function` and the usual anomaly-map convention.
- Constructor parameters are stored unchanged (so `get_params`, `clone` and `repr` work) and are
  validated in `fit`; learned attributes end in "_" and are set only by `fit` / `from_state`.
- `state()` / `from_state(state, **params)`: the learned float32 arrays, keyed by attribute name
  without the trailing "_", so that a Keras model can carry a fitted detector as non-trainable
  weights; `from_state` rebuilds a detector whose scores are identical to the fitted one's.
"""
import numpy as np
from sklearn.base import BaseEstimator

from detectors._validation import check_features
from processing.errors import UserError


class Detector(BaseEstimator):
    # Learned arrays (names without the trailing "_") returned by state(). The first one holds
    # the feature dimension on its last axis.
    _learned = ()

    def fit(self, X):
        self._check_params()
        X = check_features(X, "training features")
        needed, why = self._min_samples()
        if len(X) < needed:
            raise UserError(
                f"{type(self).__name__} needs at least {needed} training vectors {why}; got {len(X)}"
            )
        self._fit(X)
        self._restore()
        return self

    def score_samples(self, X):
        self._require_fitted()
        X = check_features(X)
        if X.shape[1] != self.n_features_in_:
            raise UserError(
                f"features have {X.shape[1]} dims but the detector was fitted on {self.n_features_in_}"
            )
        return np.asarray(self._score(X), dtype=np.float32)

    @property
    def n_features_in_(self):
        return getattr(self, self._learned[0] + "_").shape[-1]

    def state(self):
        self._require_fitted()
        return {name: np.array(getattr(self, name + "_")) for name in self._learned}

    @classmethod
    def from_state(cls, state, **params):
        if set(state) != set(cls._learned):
            raise UserError(
                f"{cls.__name__} state must hold exactly the arrays {sorted(cls._learned)}; "
                f"got {sorted(state)}"
            )
        detector = cls(**params)
        detector._check_params()
        for name in cls._learned:
            setattr(detector, name + "_", np.asarray(state[name], dtype=np.float32))
        detector._restore()
        return detector

    def _require_fitted(self):
        if not all(hasattr(self, name + "_") for name in self._learned):
            raise UserError(f"{type(self).__name__} is not fitted yet: call fit() on normal samples first")

    # Hooks for subclasses.

    def _check_params(self):
        """Raise UserError for an invalid constructor parameter."""

    def _min_samples(self):
        """(number of training vectors needed, why) for the message when there are fewer."""
        return 1, "to fit"

    def _fit(self, X):
        """Set the learned float32 arrays named in `_learned` from finite float32 features X."""
        raise NotImplementedError

    def _restore(self):
        """Build any helper derived from the learned arrays (after fit and from_state)."""

    def _score(self, X):
        """Anomaly scores of finite float32 X with the fitted feature dimension."""
        raise NotImplementedError
