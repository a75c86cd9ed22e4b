"""PatchCore (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly Detection"): `-a patchcore`.

calibrate(): the locally aware patch features (memorybank/features.py) of every normal training
image -> a greedy k-center coreset of them (detectors.CoresetMemoryBank, on features randomly
projected to 128 dims; for the map bank `coreset_projection` dims, 0: as they are) -> the memory
bank, a non-trainable weight so that model.keras carries it. Its size is known only after
calibrate, so it is recorded in the config (`bank_size`, `score_bank_size`): a reloaded model
creates a weight of that shape and the saved value loads into it.

Patch score: Euclidean distance from a patch feature to its nearest bank feature, or with
`patch_neighbours` k > 1 the mean distance to its k nearest (the reference implementation's
anomaly_scorer_num_nn; one isolated bank feature near an anomaly then lowers its score less).
Anomaly map: the grid of patch scores upsampled to the input size and blurred (sigma 4). Image score: the largest
patch score s* of the image. With `score_neighbours` b > 1 it is reweighted as in the paper (eq. 7):

    s = (1 - exp(||q* - m*||) / sum over m in N_b(m*) of exp(||q* - m||)) * s*

q* is the image's most anomalous patch feature, m* its nearest bank feature and N_b(m*) the b bank
features nearest to m* (m* included). The weight is about 1 - 1/b when m* lies among many similar
normal features and close to 1 when m* is itself a rare normal feature, so an anomaly whose nearest
normal patch is rare keeps more of its score. The paper uses b = 9; the default 1 keeps the plain max.

Image-score bank (`score_strides`, e.g. 8 16 32, or `score_stages`, e.g. 2 4 5): a second coreset, of
features that add deeper stages, from the same backbone pass, for the image score only; maps stay with
the first bank's finer features. The stride-32 context decides whether an image is anomalous better
(bench: glass_fiber image AUROC 0.903 -> 0.99, juice_bottle 0.954 -> 0.995) while it blurs the outlines
of small defects. To keep the second search cheap, only the `score_candidates` share of patches with the
highest map scores is scored against it (a quarter gave the same image AUROC as all patches on the bench
categories); the image score is the largest of those distances, reweighted as above with the second bank.
"""
import math
import time

import keras
import numpy as np
from keras import ops

from backbones.pretrained import STAGE_STRIDES
from detectors import CoresetMemoryBank
from detectors.coreset import PROJECTION_DIM
from memorybank.features import PatchFeatureModel
from processing.errors import UserError
from processing.progress import report

SEARCH_BLOCK = 256  # queries per matrix product: 8 MB of distances against a 7,800-feature bank (faster than 1,024)


@keras.saving.register_keras_serializable(package="memorybank")
class PatchCore(PatchFeatureModel):
    method_name = "patchcore"

    def __init__(self, coreset_ratio=0.1, score_neighbours=1, patch_neighbours=1, score_candidates=0.25, seed=0,
                 coreset_projection=PROJECTION_DIM, bank_size=None, score_bank_size=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < coreset_ratio <= 1:
            raise UserError(f"--coreset-ratio must be in (0, 1], got {coreset_ratio}")
        if score_neighbours < 1:
            raise UserError(f"--score-neighbours must be at least 1, got {score_neighbours}")
        if patch_neighbours < 1:
            raise UserError(f"--patch-neighbours must be at least 1, got {patch_neighbours}")
        if not 0 < score_candidates <= 1:
            raise UserError(f"--score-candidates must be in (0, 1], got {score_candidates}")
        if coreset_projection < 0:
            raise UserError(f"--coreset-projection must be 0 (none) or a number of dims, got {coreset_projection}")
        if self.score_stages and not self.grid_stride \
                and STAGE_STRIDES[self.score_stages[0]] != STAGE_STRIDES[self.feature_stages[0]]:
            # Candidates are picked by map score, so both feature sets must share one grid.
            strides = " ".join(str(STAGE_STRIDES[stage]) for stage in self.score_stages)
            raise UserError(f"--score-strides / --score-stages must include a stage at stride "
                            f"{STAGE_STRIDES[self.feature_stages[0]]}, the grid of the map features "
                            f"(or give --grid-stride); got strides {strides}")
        self.coreset_ratio = float(coreset_ratio)
        self.score_neighbours = int(score_neighbours)
        self.patch_neighbours = int(patch_neighbours)
        self.score_candidates = float(score_candidates)
        self.coreset_projection = int(coreset_projection)
        self.seed = int(seed)  # the coreset's random start and projection (train.py --seed)
        self.memory_bank = self._bank_weight("memory_bank", bank_size, self.feature_dim)
        self.score_bank = self._bank_weight("score_bank", score_bank_size, self.score_dim)
        self.built = True  # all state exists (the banks once their sizes are known); nothing to build on a call

    @property
    def bank_size(self):
        return None if self.memory_bank is None else int(self.memory_bank.shape[0])

    @property
    def score_bank_size(self):
        return None if self.score_bank is None else int(self.score_bank.shape[0])

    def get_config(self):
        return {**super().get_config(), "coreset_ratio": self.coreset_ratio,
                "score_neighbours": self.score_neighbours, "patch_neighbours": self.patch_neighbours,
                "score_candidates": self.score_candidates, "coreset_projection": self.coreset_projection,
                "seed": self.seed, "bank_size": self.bank_size,
                "score_bank_size": self.score_bank_size}

    def _bank_weight(self, name, size, dim):
        # A bank's size is known only after calibrate: a reloaded model creates it from the saved size.
        if not size:
            return None
        return self.add_weight(shape=(size, dim), initializer="zeros", trainable=False, name=name)

    def calibrate(self, normal_images):
        map_batches, score_batches = [], []
        for features in self.dataset_features(normal_images):
            map_features, score_features = self._split(features)
            map_batches.append(map_features)
            score_batches.append(score_features)
        # Each set is joined only for its own coreset and freed after it (magnetic_tile's 762 images
        # with the image-score bank: 0.55 and 1.1 GB).
        map_projection = self.coreset_projection or self.feature_dim  # 0: the features as they are
        self.memory_bank = self._store_bank("memory_bank", self._coreset(_joined(map_batches), "map", map_projection))
        if self.score_stages:
            # The image-score bank keeps the default projection: unprojected, its 300-odd dims would slow
            # the fit, and the image scores reach their targets with it.
            score_bank = self._coreset(_joined(score_batches), "score", PROJECTION_DIM)
            self.score_bank = self._store_bank("score_bank", score_bank)

    def _coreset(self, features, which, projection_dim):
        """The coreset of all patch features of (n, h, w, D) `features`, selected on their random projection
        to `projection_dim` dims (as they are if they have no more), as an (m, D) numpy bank."""
        patches = features.reshape(-1, features.shape[-1])
        report(f"patchcore {which} coreset: selecting {self.coreset_ratio:g} of {len(patches)} patch features "
               f"({len(features)} images x {self.grid_height}x{self.grid_width})")
        started = time.perf_counter()
        try:
            bank = CoresetMemoryBank(coreset_ratio=self.coreset_ratio, k=self.patch_neighbours, random_state=self.seed,
                                     projection_dim=projection_dim).fit(patches).memory_bank_
        except UserError as error:
            raise UserError(f"patchcore cannot build its memory bank from {len(features)} training images "
                            f"({len(patches)} patch features): {error}; add training images or raise "
                            "--size or --coreset-ratio") from error
        report(f"patchcore {which} coreset: {len(bank)} features in {time.perf_counter() - started:.1f} s")
        return bank

    def _store_bank(self, name, bank):
        """The weight `name` holding `bank`, created on the first calibration."""
        weight = getattr(self, name)
        if weight is None:
            weight = self._bank_weight(name, len(bank), bank.shape[1])
        elif weight.shape[0] != len(bank):
            # A Keras weight cannot be dropped once tracked, so a bank of another size needs a new model.
            raise UserError(f"this patchcore model holds a bank of {weight.shape[0]} features; calibrating it "
                            f"again would need {len(bank)}: build a new model instead")
        weight.assign(bank)
        return weight

    def _split(self, features):
        """(map features, image-score features or None)."""
        return tuple(features) if self.score_stages else (features, None)

    def _checked(self, bank):
        if bank is None:
            raise UserError("patchcore has no memory bank yet: calibrate it on normal images (train.py) first")
        return bank

    def _graph_patch_scores(self, features):
        map_features, _ = self._split(features)
        queries = ops.reshape(map_features, (-1, self.feature_dim))
        nearest = nearest_distances(queries, self._checked(self.memory_bank), self.patch_neighbours)
        return ops.reshape(nearest, (-1, self.grid_height, self.grid_width))

    def _image_scores(self, features, patch_scores, maps):
        map_features, score_features = self._split(features)
        patches = self.grid_height * self.grid_width
        flat_scores = ops.reshape(patch_scores, (-1, patches))
        if score_features is None:
            return self._reweighted_max(map_features, flat_scores, self.memory_bank)
        count = max(1, math.ceil(self.score_candidates * patches))
        _, candidates = ops.top_k(flat_scores, count)
        queries = patches_at(score_features, candidates, patches)  # (n, count, score_dim)
        bank = self._checked(self.score_bank)
        distances = nearest_distances(ops.reshape(queries, (-1, self.score_dim)), bank, self.patch_neighbours)
        return self._reweighted_max(queries, ops.reshape(distances, (-1, count)), bank)

    def _reweighted_max(self, features, scores, bank):
        """(n,) the largest of each image's (n, p) patch scores, times eq. 7's weight with b > 1; `features`
        holds the p scored patches' features of each image, in any shape that flattens to (n, p, D)."""
        best = ops.max(scores, axis=1)
        if self.score_neighbours == 1:
            return best
        worst_features = patches_at(features, ops.argmax(scores, axis=1)[:, None], scores.shape[1])[:, 0]
        return best * rarity_weights(worst_features, bank, self.score_neighbours)


def _joined(batches):
    """The list's arrays concatenated; the list is emptied, so that they are not held twice."""
    joined = np.concatenate(batches)
    batches.clear()
    return joined


def patches_at(features, indices, patches):
    """(n, k, D) features of each image's patches at its (n, k) `indices`; `features` in any shape that
    flattens to (n, patches, D). Gathered by flat row index: take_along_axis would broadcast the
    indices over all D channels, which took longer than the nearest-neighbour search on CPU."""
    rows = indices + ops.arange(ops.shape(indices)[0], dtype=indices.dtype)[:, None] * patches
    return ops.take(ops.reshape(features, (-1, features.shape[-1])), rows, axis=0)


def nearest_distances(queries, bank, neighbours):
    """(n,) Euclidean distance of each of the (n, D) queries to its nearest bank feature, or the mean over
    its `neighbours` nearest. In blocks of SEARCH_BLOCK queries, one matrix product each, so memory stays
    bounded for any number of queries (inference and export.py trace the same search).

    ||q - m||^2 = ||q||^2 + (||m||^2 - 2 q.m): the bracket comes out of one product with the bank
    augmented by its squared norms, and ||q||^2 is added only to the few kept values (on 2 cores, 1,024
    Lite0 patches against a 7,800-feature bank: 15 -> 11 ms for the nearest, 28 -> 13 ms for 3).
    """
    queries, bank = ops.convert_to_tensor(queries, "float32"), ops.convert_to_tensor(bank, "float32")
    count, dim = ops.shape(queries)[0], queries.shape[-1]
    group = _group_size(bank.shape[0], neighbours)
    augmented_bank = _augmented_bank(bank, group)
    padded = ops.pad(queries, [[0, (SEARCH_BLOCK - count % SEARCH_BLOCK) % SEARCH_BLOCK], [0, 0]])

    def block_distances(block):
        partial = ops.matmul(ops.concatenate([block, ops.ones_like(block[:, :1])], axis=1), augmented_bank)
        if neighbours == 1:
            kept = ops.min(partial, axis=1, keepdims=True)
        else:
            kept = _smallest_in_groups(partial, neighbours, group)
        squared = kept + ops.sum(block * block, axis=1, keepdims=True)
        return ops.mean(ops.sqrt(ops.maximum(squared, 0.0)), axis=1)

    distances = ops.map(block_distances, ops.reshape(padded, (-1, SEARCH_BLOCK, dim)))
    return ops.reshape(distances, (-1,))[:count]


def _group_size(bank_size, neighbours):
    """Bank columns per group for the k-smallest search: about sqrt(bank size), so that both the groups
    and their members are few; 1 (no groups: a plain minimum or top-k) for one neighbour, a bank whose
    size is not known while tracing, or when groups would be fewer than k."""
    if bank_size is None or neighbours == 1:
        return 1
    group = max(1, math.isqrt(bank_size))
    return group if -(-bank_size // group) >= neighbours else 1


def _augmented_bank(bank, group):
    """(D + 1, m') matrix [-2 m ; ||m||^2] per bank feature m, so [q, 1] @ it = ||m||^2 - 2 q.m; padded
    with columns worth 1e30 (never among the nearest) to a whole number of `group`s."""
    columns = ops.transpose(ops.concatenate([-2 * bank, ops.sum(bank * bank, axis=1, keepdims=True)], axis=1))
    padding = (group - bank.shape[0] % group) % group if group > 1 else 0
    if not padding:
        return columns
    filler = ops.concatenate([ops.zeros((bank.shape[1], padding)), ops.full((1, padding), 1e30)], axis=0)
    return ops.concatenate([columns, filler], axis=1)


def _smallest_in_groups(values, k, group):
    """(b, k) the k smallest of each row of (b, m') `values`, exactly, without a top-k over all m' columns
    (that cost as much as the matrix product). Each row is cut into groups of `group` columns; the k
    smallest values lie in the k groups with the smallest minima, as a group holding one of them has
    its minimum among the k smallest too."""
    if group > 1:
        rows = ops.shape(values)[0]
        groups = ops.reshape(values, (rows, -1, group))
        _, best_groups = ops.top_k(-ops.min(groups, axis=2), k)
        values = ops.reshape(patches_at(groups, best_groups, ops.shape(groups)[1]), (rows, k * group))
    negated, _ = ops.top_k(-values, k)
    return -negated


def rarity_weights(queries, bank, neighbours):
    """PatchCore's eq. 7 weight for each query q: 1 - softmax over m in N_b(m*) of ||q - m||, taken at m*."""
    queries, bank = ops.convert_to_tensor(queries, "float32"), ops.convert_to_tensor(bank, "float32")
    nearest = ops.take(bank, ops.argmin(_squared_distances(queries, bank), axis=1), axis=0)  # m*
    b = min(neighbours, bank.shape[0])
    _, around_nearest = ops.top_k(-_squared_distances(nearest, bank), b)  # N_b(m*)
    distances = ops.norm(queries[:, None, :] - ops.take(bank, around_nearest, axis=0), axis=-1)
    distance_to_nearest = ops.norm(queries - nearest, axis=-1)
    # exp(d*) / sum exp(d) written as 1 / sum exp(d - d*): d* is the smallest, so nothing overflows.
    return 1 - 1 / ops.sum(ops.exp(distances - distance_to_nearest[:, None]), axis=1)


def _squared_distances(queries, bank):
    """(n, m) squared Euclidean distances, as ||q||^2 - 2 q.m + ||m||^2 (one matmul)."""
    return (ops.sum(queries * queries, axis=1)[:, None] - 2 * ops.matmul(queries, ops.transpose(bank))
            + ops.sum(bank * bank, axis=1)[None, :])
