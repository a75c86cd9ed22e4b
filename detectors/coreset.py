"""PatchCore's memory bank (Roth et al. 2022): a greedy k-center coreset of the training vectors.

The coreset is chosen by iterative farthest-point selection: start from a random vector, then
repeatedly add the vector farthest from everything picked so far. Selection runs on a Gaussian
random projection of the features to `projection_dim` dims (cheaper, and distances are roughly
preserved); features with at most `projection_dim` dims are used as they are. The bank stores the
ORIGINAL full-dimensional vectors, in selection order, and holds round(coreset_ratio * n) of
them (Python's round: nearest integer, halves to even). Each pick's distances are first bounded on
the features' leading principal axes, and finished only where the bound cannot rule a vector out:
the same picks up to float rounding, about 2.5x faster (greedy_coreset_indices).

The score is the Euclidean distance to the nearest bank vector (k=1), or the mean distance to the
k nearest.
"""
import math

import numpy as np

from detectors._validation import check_fraction, check_positive_int
from detectors.base import Detector
from detectors.nearest import nearest_distances


PROJECTION_DIM = 128  # default dims the coreset is selected on
# Principal axes of greedy_coreset_indices' distance bound (a 1 % coreset of kolektorsdd's 273,000 patch
# features of 176 dims: 19 s without the bound; with 24 axes 19 s, 32: 12 s, 48: 8.0 s, 64: 7.5 s).
BOUND_DIMS = 64
BOUND_MARGIN = 1e-4  # relative; float rounding of the bound is far smaller
PRINCIPAL_SAMPLE = 50_000  # rows the principal axes are estimated on


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

    Keeps each vector's squared distance to its nearest picked vector and updates it after every pick.
    A pick's distance to all n vectors would read all n x d features each time (memory-bound: 30 s
    of a 343,000 x 176 fit), so the features are first rotated onto their principal axes, which keeps
    every distance; the distance over the first BOUND_DIMS axes is a lower bound of the whole one, and
    only the vectors whose bound is below their current nearest distance (a few percent once the first
    picks are in) get the rest of theirs (the same picks up to float rounding, 2.5x faster).
    """
    if size >= len(features):  # every vector is kept: the order does not matter
        return np.arange(len(features))
    features = np.asarray(features, dtype=np.float32)
    centre, axes = principal_axes(features)
    shift = centre @ axes  # (x - c) A = x A - c A: no centred copy of the features
    # The bounding axes as rows of a (BOUND_DIMS, n) array, as the matrix-vector product reads it
    # faster; the rest as (n, d - BOUND_DIMS) rows, gathered for the vectors the bound keeps.
    head_t = axes[:, :BOUND_DIMS].T @ features.T
    head_t -= shift[:BOUND_DIMS, None]
    tail = features @ axes[:, BOUND_DIMS:]
    tail -= shift[BOUND_DIMS:]
    head_norms = np.einsum("ij,ij->j", head_t, head_t)
    tail_norms = np.einsum("ij,ij->i", tail, tail)
    nearest_sq = np.full(len(features), np.inf, dtype=np.float32)
    bound = np.empty_like(nearest_sq)
    picks = np.empty(size, dtype=np.int64)
    picks[0] = first_index
    for i in range(size):
        last = picks[i]
        # A contiguous copy of the picked column makes the product measurably faster.
        np.matmul(head_t[:, last].copy(), head_t, out=bound)
        bound *= -2
        bound += head_norms
        bound += head_norms[last]
        # The margin keeps vectors whose bound rounding may have pushed just past their nearest distance.
        candidates = np.flatnonzero(bound * (1 - BOUND_MARGIN) < nearest_sq)
        if 2 * len(candidates) > len(bound):
            candidates = slice(None)  # most vectors (the first picks): all, with no gathered copy of the tail
        squared = bound[candidates] + tail_norms[candidates] + tail_norms[last] - 2 * (tail[candidates] @ tail[last])
        nearest_sq[candidates] = np.minimum(nearest_sq[candidates], squared)
        # -inf stays through every later update, so a picked vector is never picked again even when
        # rounding leaves its distance to itself slightly above 0.
        nearest_sq[last] = -np.inf
        if i + 1 < size:
            picks[i + 1] = np.argmax(nearest_sq)
    return picks


def principal_axes(features):
    """(centre, axes) of (n, d) `features`: their mean and the (d, d) rotation onto their principal axes,
    largest variance first, both float32 and estimated on at most PRINCIPAL_SAMPLE rows. A rotation, so
    (features - centre) @ axes keeps every distance between rows."""
    sample = features[::max(1, len(features) // PRINCIPAL_SAMPLE)].astype(np.float64)
    centre = sample.mean(axis=0)
    _, axes = np.linalg.eigh((sample - centre).T @ (sample - centre))  # ascending eigenvalues
    return centre.astype(np.float32), np.ascontiguousarray(axes[:, ::-1], dtype=np.float32)
