"""Exact k-nearest-neighbour Euclidean distances by blocked matrix products.

Squared distances come from ||q||^2 - 2 q.b + ||b||^2, so the heavy work is one BLAS matmul per
block. Queries and bank are both cut into blocks of `batch_size` rows, so the extra memory is
about batch_size^2 float32 values whatever the number of queries and bank vectors; a running
top-k is merged across bank blocks. Work is in float32 (like faiss): distances between vectors
with large norms carry an absolute error of roughly 1e-7 * ||v||^2 in the squared distance.
"""
import numpy as np


def nearest_distances(queries, bank, k=1, batch_size=2048):
    """(n_queries, k) float32 distances to the k nearest rows of `bank`, ascending per row."""
    queries = np.asarray(queries, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k} needs 1 <= k <= {len(bank)} (the bank size)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    bank_sq_norms = np.einsum("ij,ij->i", bank, bank)
    distances = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), batch_size):
        block = queries[start:start + batch_size]
        distances[start:start + len(block)] = _smallest_squared(block, bank, bank_sq_norms, k, batch_size)
    # Rounding can make a squared distance slightly negative.
    np.maximum(distances, 0, out=distances)
    return np.sqrt(distances, out=distances)


def _smallest_squared(queries, bank, bank_sq_norms, k, batch_size):
    """The k smallest squared distances from each query to the bank, sorted ascending."""
    query_sq_norms = np.einsum("ij,ij->i", queries, queries)[:, None]
    best = np.full((len(queries), k), np.inf, dtype=np.float32)
    for start in range(0, len(bank), batch_size):
        squared = queries @ bank[start:start + batch_size].T
        squared *= -2
        squared += query_sq_norms
        squared += bank_sq_norms[start:start + batch_size]
        if k == 1:  # a plain min is over 10x faster than concatenate + partition
            np.minimum(best[:, 0], squared.min(axis=1), out=best[:, 0])
        else:
            candidates = np.concatenate([best, squared], axis=1)
            best = np.partition(candidates, k - 1, axis=1)[:, :k]
    return np.sort(best, axis=1)
