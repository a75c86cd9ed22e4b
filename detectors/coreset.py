"""PatchCore's memory bank (Roth et al. 2022): a greedy k-center coreset of the training vectors.

The coreset is chosen by iterative farthest-point selection: start from a random vector, then
repeatedly add the vector farthest from everything picked so far. Selection runs on a Gaussian
random projection of the features to `projection_dim` dims (cheaper, and distances are roughly
preserved); features with at most `projection_dim` dims are used as they are. The bank stores the
ORIGINAL full-dimensional vectors, in selection order, and holds round(coreset_ratio * n) of
them (Python's round: nearest integer, halves to even).

The score is the Euclidean distance to the nearest bank vector (k=1), or the mean distance to the
k nearest.
"""
import math

import numpy as np

from detectors._validation import check_fraction, check_positive_int
from detectors.base import Detector
from detectors.nearest import nearest_distances


PROJECTION_DIM = 128  # default dims the coreset is selected on


class CoresetMemoryBank(Detector):
    _learned = ("memory_bank",)

    def __init__(self, coreset_ratio=0.1, projection_dim=PROJECTION_DIM, k=1, batch_size=2048, random_state=0):
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.k = k
        self.batch_size = batch_size
        self.random_state = random_state

    def _check_params(self):
        check_fraction("coreset_ratio", self.coreset_ratio)
        check_positive_int("projection_dim", self.projection_dim)
        check_positive_int("k", self.k)
        check_positive_int("batch_size", self.batch_size)

    def _min_samples(self):
        # Smallest n with coreset_ratio * n >= k, so the bank holds at least k vectors.
        needed = math.ceil(self.k / self.coreset_ratio)
        return needed, f"for coreset ratio {self.coreset_ratio} (k={self.k})"

    def _fit(self, X):
        rng = np.random.default_rng(self.random_state)
        size = round(self.coreset_ratio * len(X))
        selection_features = random_projection(X, self.projection_dim, rng)
        picks = greedy_coreset_indices(selection_features, size, first_index=int(rng.integers(len(X))))
        self.memory_bank_ = X[picks]

    def _score(self, X):
        return nearest_distances(X, self.memory_bank_, self.k, self.batch_size).mean(axis=1)


def random_projection(X, projection_dim, rng):
    """X projected to projection_dim dims by a N(0, 1/projection_dim) Gaussian matrix, which keeps
    expected squared distances; X itself when it has no more dims than that."""
    if X.shape[1] <= projection_dim:
        return X
    matrix = rng.standard_normal((X.shape[1], projection_dim), dtype=np.float32)
    matrix /= np.sqrt(projection_dim)
    return X @ matrix


def greedy_coreset_indices(features, size, first_index):
    """Indices of `size` rows of `features` in greedy farthest-point order, starting at first_index.

    Keeps each vector's squared distance to its nearest picked vector and updates it after every
    pick, so one pick costs one (n x d) matrix-vector product.
    """
    if size >= len(features):  # every vector is kept: the order does not matter
        return np.arange(len(features))
    # Features as rows of a (d, n) array: the matrix-vector product reads it about 1.5x faster.
    features_t = np.ascontiguousarray(features.T, dtype=np.float32)
    sq_norms = np.einsum("ij,ij->j", features_t, features_t)
    nearest_sq = np.full(len(features), np.inf, dtype=np.float32)
    squared = np.empty_like(nearest_sq)
    picks = np.empty(size, dtype=np.int64)
    picks[0] = first_index
    for i in range(1, size):
        last = picks[i - 1]
        # A contiguous copy of the picked column makes the product measurably faster.
        np.matmul(features_t[:, last].copy(), features_t, out=squared)
        squared *= -2
        squared += sq_norms
        squared += sq_norms[last]
        np.minimum(nearest_sq, squared, out=nearest_sq)
        # -inf stays through np.minimum, so a picked vector is never picked again even when
        # rounding leaves its distance to itself slightly above 0.
        nearest_sq[last] = -np.inf
        picks[i] = np.argmax(nearest_sq)
    return picks
