"""PatchCore (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly Detection"): `-a patchcore`.

calibrate(): the locally aware patch features (memorybank/features.py) of every normal training
image -> a greedy k-center coreset of them (detectors.CoresetMemoryBank, on randomly projected
features) -> the memory bank, a non-trainable weight so that model.keras carries it. Its size is
known only after calibrate, so it is recorded in the config (`bank_size`): a reloaded model creates
a weight of that shape and the saved value loads into it.

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
"""
import time

import keras
import numpy as np
from keras import ops

from detectors import CoresetMemoryBank
from memorybank.features import PatchFeatureModel
from processing.errors import UserError
from processing.progress import report


@keras.saving.register_keras_serializable(package="memorybank")
class PatchCore(PatchFeatureModel):
    method_name = "patchcore"

    def __init__(self, coreset_ratio=0.1, score_neighbours=1, patch_neighbours=1, seed=0, bank_size=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < coreset_ratio <= 1:
            raise UserError(f"--coreset-ratio must be in (0, 1], got {coreset_ratio}")
        if score_neighbours < 1:
            raise UserError(f"--score-neighbours must be at least 1, got {score_neighbours}")
        if patch_neighbours < 1:
            raise UserError(f"--patch-neighbours must be at least 1, got {patch_neighbours}")
        self.coreset_ratio = float(coreset_ratio)
        self.score_neighbours = int(score_neighbours)
        self.patch_neighbours = int(patch_neighbours)
        self.seed = int(seed)  # the coreset's random start and projection (train.py --seed)
        self.bank_size = bank_size
        self.memory_bank = self._bank_weight(bank_size) if bank_size else None
        self.built = True  # all state exists (the bank once its size is known); nothing to build on a call

    def get_config(self):
        return {**super().get_config(), "coreset_ratio": self.coreset_ratio,
                "score_neighbours": self.score_neighbours, "patch_neighbours": self.patch_neighbours,
                "seed": self.seed, "bank_size": self.bank_size}

    def _bank_weight(self, size):
        return self.add_weight(shape=(size, self.feature_dim), initializer="zeros", trainable=False,
                               name="memory_bank")

    def calibrate(self, normal_images):
        features = np.concatenate(list(self.dataset_features(normal_images)))
        patches = features.reshape(-1, self.feature_dim)
        report(f"patchcore coreset: selecting {self.coreset_ratio:g} of {len(patches)} patch features "
               f"({len(features)} images x {self.grid_height}x{self.grid_width})")
        started = time.perf_counter()
        try:
            bank = CoresetMemoryBank(coreset_ratio=self.coreset_ratio, k=self.patch_neighbours,
                                     random_state=self.seed).fit(patches).memory_bank_
        except UserError as error:
            raise UserError(f"patchcore cannot build its memory bank from {len(features)} training images "
                            f"({len(patches)} patch features): {error}; add training images or raise "
                            "--size or --coreset-ratio") from error
        report(f"patchcore coreset: {len(bank)} features in {time.perf_counter() - started:.1f} s")
        if self.memory_bank is None:
            self.bank_size = len(bank)
            self.memory_bank = self._bank_weight(self.bank_size)
        elif self.bank_size != len(bank):
            # A Keras weight cannot be dropped once tracked, so a bank of another size needs a new model.
            raise UserError(f"this patchcore model holds a bank of {self.bank_size} features; calibrating it "
                            f"again would need {len(bank)}: build a new model instead")
        self.memory_bank.assign(bank)

    def _bank(self):
        if self.memory_bank is None:
            raise UserError("patchcore has no memory bank yet: calibrate it on normal images (train.py) first")
        return self.memory_bank

    def _patch_scores(self, features):
        """Eager inference: the detector's blocked search keeps memory bounded for any bank size."""
        detector = CoresetMemoryBank.from_state({"memory_bank": ops.convert_to_numpy(self._bank())},
                                                k=self.patch_neighbours)
        scores = detector.score_samples(features.reshape(-1, self.feature_dim))
        return scores.reshape(len(features), self.grid_height, self.grid_width)

    def _graph_patch_scores(self, features):
        """The same distances for export, as one (patches x bank) matrix per batch: the caller picks the batch."""
        queries = ops.reshape(features, (-1, self.feature_dim))
        squared = _squared_distances(queries, self._bank())
        if self.patch_neighbours == 1:
            nearest = ops.sqrt(ops.maximum(ops.min(squared, axis=1), 0.0))
        else:
            negated, _ = ops.top_k(-squared, self.patch_neighbours)
            nearest = ops.mean(ops.sqrt(ops.maximum(-negated, 0.0)), axis=1)
        return ops.reshape(nearest, (-1, self.grid_height, self.grid_width))

    def _image_scores(self, features, patch_scores, maps):
        patches = self.grid_height * self.grid_width
        flat_scores = ops.reshape(patch_scores, (-1, patches))
        best = ops.max(flat_scores, axis=1)
        if self.score_neighbours == 1:
            return best
        worst = ops.argmax(flat_scores, axis=1)
        # Row of image i's worst patch among all patches of the batch, flattened.
        rows = ops.arange(ops.shape(flat_scores)[0], dtype=worst.dtype) * patches + worst
        worst_features = ops.take(ops.reshape(features, (-1, self.feature_dim)), rows, axis=0)
        return best * rarity_weights(worst_features, self._bank(), self.score_neighbours)


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
