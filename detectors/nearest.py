"""Exact k-nearest-neighbour Euclidean distances by blocked matrix products.

Squared distances come from ||q||^2 - 2 q.b + ||b||^2, so the heavy work is one BLAS matmul per
block. The bank is augmented once to [-2 b, ||b||^2] and the queries to [q, 1], so that one matmul
yields -2 q.b + ||b||^2 directly (no extra passes over the block), and ||q||^2, constant per row,
is added after the minimum. Queries and bank are both cut into blocks of `batch_size` rows, so the extra memory is
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
    augmented_bank = np.concatenate([-2 * bank, np.einsum("ij,ij->i", bank, bank)[:, None]], axis=1)
    distances = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), batch_size):
        block = queries[start:start + batch_size]
        distances[start:start + len(block)] = _smallest_squared(block, augmented_bank, k, batch_size)
    # Rounding can make a squared distance slightly negative.
    np.maximum(distances, 0, out=distances)
    return np.sqrt(distances, out=distances)


def _smallest_squared(queries, augmented_bank, k, batch_size):
    """The k smallest squared distances from each query to the bank, sorted ascending."""
    augmented_queries = np.concatenate([queries, np.ones((len(queries), 1), np.float32)], axis=1)
    best = np.full((len(queries), k), np.inf, dtype=np.float32)
    # One reused product buffer: a fresh batch_size^2 array per block costs the kernel's page faults
    # on every block (the previous one is still alive when the next is allocated), which made the
    # whole search 1.3-1.8x slower on a 2-core CPU.
    products = np.empty((len(queries), min(batch_size, len(augmented_bank))), np.float32)
    for start in range(0, len(augmented_bank), batch_size):
        block = augmented_bank[start:start + batch_size]
        squared = np.matmul(augmented_queries, block.T, out=products[:, :len(block)])  # ||q||^2 left out
        if k == 1:  # a plain min is over 10x faster than concatenate + partition
            np.minimum(best[:, 0], squared.min(axis=1), out=best[:, 0])
        else:
            candidates = np.concatenate([best, squared], axis=1)
            best = np.partition(candidates, k - 1, axis=1)[:, :k]
    return np.sort(best, axis=1) + np.einsum("ij,ij->i", queries, queries)[:, None]
