"""PaDiM (Defard et al. 2020, "a Patch Distribution Modeling Framework"): `-a padim`.

The locally aware patch features of memorybank/features.py, reduced to a random subset of
`padim_features` channels (seeded; the paper's random dimensionality reduction), model each grid
position with its own multivariate Gaussian fitted on the normal training images: a mean and a
covariance with a small ridge (0.01 I, as in the paper). The mean, the inverse covariance and the
channel subset (or projection) are non-trainable weights; their shapes follow from the input size
and feature count, so they exist from construction on.

`deep_features` K > 0 draws K of the channels apart, from the last (deepest) of the feature stages,
and `padim_features` from the others. A stride-32 stage gives each position context that the
shallow stages lack (kolektorsdd's pixel AUROC needs it), but its 192-320 channels would fill most
of one uniform draw over the concatenation and blur every map (bottle's AUPRO 0.933 -> 0.868 at
384 px with stages 1 2 4 6); 30 drawn apart keep the shallow stages' localisation (0.921-0.928).

`embedding="orthogonal"` replaces the channel subsets by semi-orthogonal projections (Kim et al. 2021,
"Semi-orthogonal Embedding for Efficient Unsupervised Anomaly Segmentation"): each of the two draws
becomes a seeded random matrix with orthonormal columns (the Q of a Gaussian matrix's QR), so every
Gaussian dimension mixes all channels of its stages instead of keeping one. Same dims, same cost per
Gaussian, plus one small matrix product per patch.

`embedding="pca"` projects each of the two channel blocks onto its leading principal axes instead:
those of the training images' patch features pooled over all positions, found by a first pass over
the training images (one more backbone pass: fit time about doubles). No seed enters it, so every
seed gives the same Gaussians. Mahalanobis distances do not change under an invertible map of the
kept dims (but for the ridge), so what counts is the subspace: the one the normal features vary most
in. At 384 px with stages 1 2 4 6 it scored every crack of lookout_cookies above every normal cookie
(the random subsets: with two of five seeds), at some cost in AUPRO elsewhere (README, Measured
results).

Several embeddings, e.g. `embedding=("pca", "subset")`, make an ensemble: each member fits its own
Gaussians, all in one pass over the training images (the k-th seeded member draws with seed + 2k, its
deep channels with seed + 2k + 1), and a patch's score is the mean of the members' distances. Each
member adds its Gaussians to the model's size and scoring cost (at 384 px, 9,216 of 130 dims: 620 MB).
At 384 px with stages 1 2 4 6, pca beside the seed's subsets kept cookie's perfect image AUROC and
most of the subsets' AUPRO (bottle 0.9225, glass_fiber 0.668, against 0.9218 and 0.635 with pca alone;
seed 0, README). `deep_features` may give each member its own count, e.g. (30, 30, 0) for
("pca", "subset", "subset"): a member with 0 models the other stages alone, without the last stage's
context: its maps are sharper on small defects (magnetic_tile's blowholes), while the other members
keep the context that kolektorsdd's maps need.

`shrinkage` a > 0 shrinks each position's covariance towards the covariance pooled over all
positions, (1 - a) S_p + a mean_p(S_p), before the ridge (Friedman 1989's regularised discriminant
analysis). With fewer training images than dims a position's own covariance is singular, and the
ridge alone weighs every direction its images did not vary in by 1 / 0.01; the pooled covariance
knows how the features vary elsewhere in the image. With a = 0.1 (384 px, stages 1 2 4 6 with 30
deep channels, seeds 0-4) the maps of five of the six bench categories got sharper (pixel AUROC /
AUPRO: juice_bottle 0.886 / 0.807 -> 0.912 / 0.838, glass_fiber 0.818 / 0.693 -> 0.843 / 0.734,
cookie 0.951 / 0.836 -> 0.962 / 0.877), but cookie's image AUROC fell (0.993 -> 0.970).

Patch score: Mahalanobis distance of the patch feature to its position's Gaussian (the members' mean).
Anomaly map: the patch scores upsampled to the input size and blurred (sigma 4). Image score: the max
of the map.
"""
import functools

import keras
import numpy as np
from keras import ops

from memorybank.features import PatchFeatureModel
from processing.errors import UserError
from processing.progress import report

RIDGE = 0.01
EMBEDDINGS = ("subset", "orthogonal", "pca")  # how the patch features are reduced to the Gaussians' dims
CHUNK_BYTES = 512 * 2 ** 20  # features merged into the Gaussians at a time (float64)
POSITION_BLOCK = 512  # Gaussians whose outer products or inverses are computed at a time (a 70 MB temporary)


@keras.saving.register_keras_serializable(package="memorybank")
class PaDiM(PatchFeatureModel):
    method_name = "padim"

    def __init__(self, padim_features=100, deep_features=0, seed=0, embedding="subset", shrinkage=0.0, **kwargs):
        super().__init__(**kwargs)
        self.padim_features, self.seed = int(padim_features), int(seed)
        self.embeddings = (embedding,) if isinstance(embedding, str) else tuple(embedding)
        self.deep_features, self.member_deep_features = self._deep_counts(deep_features)
        unknown = [name for name in self.embeddings if name not in EMBEDDINGS]
        if unknown or not self.embeddings:
            raise UserError(f"--padim-embedding takes one or more of {', '.join(EMBEDDINGS)}, got "
                            f"{' '.join(unknown) or 'none'}")
        pca_deep = [deep for name, deep in zip(self.embeddings, self.member_deep_features) if name == "pca"]
        if len(set(pca_deep)) < len(pca_deep):
            raise UserError("--padim-embedding names pca more than once with the same --padim-deep-features: pca "
                            "has no seed, so those members would be the same Gaussians")
        if not 0 <= shrinkage <= 1:
            raise UserError(f"--padim-shrinkage must be between 0 and 1, got {shrinkage}")
        self.shrinkage = float(shrinkage)
        deep_dim = self._last_stage_channels() if any(self.member_deep_features) else 0
        if deep_dim and len(self.feature_stages) < 2:
            raise UserError("--padim-deep-features needs two or more --feature-stages: it draws from the last "
                            f"one apart from the others, got {self.feature_stages[0]} alone")
        if not all(0 <= deep <= deep_dim for deep in self.member_deep_features):
            raise UserError(f"--padim-deep-features must be between 0 and {deep_dim} (the channels of stage "
                            f"{self.feature_stages[-1]}), got {' '.join(map(str, self.member_deep_features))}")
        if not 1 <= self.padim_features <= self.feature_dim - deep_dim:
            raise UserError(f"--padim-features must be between 1 and {self.feature_dim - deep_dim} "
                            f"(the {self.backbone} patch feature size"
                            f"{' without the last stage' if deep_dim else ''}), got {padim_features}")
        positions = self.grid_height * self.grid_width
        self._shallow_dim = self.feature_dim - deep_dim
        self.reductions, self.means, self.precisions = [], [], []
        for member, (embedding, seed, deep, dims) in enumerate(zip(self.embeddings, self._member_seeds(),
                                                                   self.member_deep_features, self.member_dims)):
            suffix = f"_{member}" if member else ""  # the first member's names are those of one-member models
            self.reductions.append(self._reduction_weight(embedding, seed, deep, suffix))
            self.means.append(self.add_weight(shape=(positions, dims), initializer="zeros", trainable=False,
                                              name=f"mean{suffix}"))
            self.precisions.append(self.add_weight(shape=(positions, dims, dims), initializer="zeros",
                                                   trainable=False, name=f"precision{suffix}"))
        self.built = True  # all state exists; nothing to build on a call

    def _deep_counts(self, deep_features):
        """deep_features as given (one count, or one per member) -> (the config's value, a count per member)."""
        counts = [int(deep_features)] if np.ndim(deep_features) == 0 else [int(count) for count in deep_features]
        if len(counts) == 1:
            return counts[0], counts * len(self.embeddings)
        if len(counts) != len(self.embeddings):
            raise UserError(f"--padim-deep-features takes one count, or one per --padim-embedding member "
                            f"({len(self.embeddings)}), got {len(counts)}")
        return counts, counts

    def _member_seeds(self):
        """Each member's seed (None for pca): the first seeded member draws with seed, its deep channels
        with seed + 1; the next with seed + 2 and + 3; and so on."""
        seeds = iter(range(self.seed, self.seed + 2 * len(self.embeddings), 2))
        return [None if embedding == "pca" else next(seeds) for embedding in self.embeddings]

    def _reduction_weight(self, embedding, seed, deep_features, suffix):
        """A member's channel subset (dims,) or projection (D, dims), drawn with seed (and seed + 1 for its
        deep_features channels, so that the other stages' draw is the one made without them)."""
        shallow_dim, deep_dim = self._shallow_dim, self.feature_dim - self._shallow_dim
        dims = self.padim_features + deep_features
        if embedding == "subset":
            subset = self.add_weight(shape=(dims,), dtype="int32", initializer="zeros", trainable=False,
                                     name=f"channel_subset{suffix}")
            subset.assign(np.concatenate([random_channels(shallow_dim, self.padim_features, seed),
                                          shallow_dim + random_channels(deep_dim, deep_features, seed + 1)]))
            return subset
        projection = self.add_weight(shape=(self.feature_dim, dims), initializer="zeros", trainable=False,
                                     name=f"projection{suffix}")
        if embedding == "orthogonal":  # pca's projection is fitted by calibrate()
            projection.assign(self._block_projection(semi_orthogonal(shallow_dim, self.padim_features, seed),
                                                     semi_orthogonal(deep_dim, deep_features, seed + 1)))
        return projection

    def _last_stage_channels(self):
        # The concatenation runs over the stages in increasing order, so these are its last channels.
        return self.patch_features.get_layer(f"local_mean_stage{self.feature_stages[-1]}").output.shape[-1]

    def _block_projection(self, shallow, deep):
        """(D, dims) projection: the other stages' channels onto the first padim_features dims, the last
        stage's onto the deep ones after them."""
        projection = np.zeros((self.feature_dim, self.padim_features + deep.shape[1]), np.float32)
        projection[:len(shallow), :self.padim_features] = shallow
        projection[len(shallow):, self.padim_features:] = deep
        return projection

    @property
    def member_dims(self):
        """Channels each member's Gaussians model."""
        return [self.padim_features + deep for deep in self.member_deep_features]

    def get_config(self):
        embedding = self.embeddings[0] if len(self.embeddings) == 1 else list(self.embeddings)
        return {**super().get_config(), "padim_features": self.padim_features, "deep_features": self.deep_features,
                "seed": self.seed, "embedding": embedding, "shrinkage": self.shrinkage}

    def _member_features(self, features):
        """(n, h, w, D) features -> one (n, positions, dims) array per member: its chosen channels, or
        their projections."""
        features = ops.convert_to_tensor(features)
        reduced = [ops.take(features, reduction, axis=-1) if embedding == "subset" else ops.matmul(features, reduction)
                   for embedding, reduction in zip(self.embeddings, self.reductions)]
        return [ops.reshape(member, (-1, self.grid_height * self.grid_width, dims))
                for member, dims in zip(reduced, self.member_dims)]

    @functools.cached_property
    def _compiled_member_features(self):
        return self._compiled(lambda images: self._member_features(self.patch_features(images)))

    def calibration_features(self, images):
        # The chosen channels are taken inside the compiled graph: an eager take of the 496 channels of
        # stages 1 2 4 6 at 384 px cost half as much again as the features themselves.
        return [ops.convert_to_numpy(member) for member in self._compiled_member_features(images)]

    def calibrate(self, normal_images):
        if "pca" in self.embeddings:
            self._fit_principal_axes(normal_images)
        # One pass fills every member's Gaussians; their buffers share the memory one member had.
        gaussians = [RunningGaussians(CHUNK_BYTES // len(self.embeddings)) for _ in self.embeddings]
        for features in self.dataset_features(normal_images):
            for member, member_features in zip(gaussians, features):
                member.update(member_features)
        count = gaussians[0].count
        if count < 2:
            raise UserError(f"padim needs at least 2 training images to estimate covariances, got {count}")
        for member, mean, precision in zip(gaussians, self.means, self.precisions):
            member_mean, scatter = member.finish()
            mean.assign(member_mean.astype(np.float32))
            precision.assign(inverses(self._covariances(scatter, count)))
        members = f"{len(self.embeddings)} x " if len(self.embeddings) > 1 else ""
        dims = "/".join(str(member_dims) for member_dims in dict.fromkeys(self.member_dims))
        report(f"padim: {members}{self.grid_height * self.grid_width} Gaussians of {dims} dims from {count} images")

    def _covariances(self, scatter, count):
        """A member's scatter matrices -> its covariances, shrunk and with the ridge, computed in place of
        the scatter (at 384 px each copy is 1.25 GB)."""
        covariance = scatter
        covariance /= count - 1
        if self.shrinkage:
            pooled = covariance.mean(axis=0)
            covariance *= 1 - self.shrinkage
            covariance += self.shrinkage * pooled
        covariance += RIDGE * np.eye(covariance.shape[-1])
        return covariance

    def _fit_principal_axes(self, normal_images):
        """A first pass over the training images: each pca member's (D, dims) projection onto the leading
        principal axes of their patch features, pooled over all positions, for each of the two channel
        blocks."""
        report("padim: principal axes of the training features (first of two passes)")
        pooled = RunningGaussians()
        for features in self.dataset_features(normal_images, self.extract):
            pooled.update(features.reshape(-1, 1, self.feature_dim))
        _, scatter = pooled.finish()
        cut = self._shallow_dim
        shallow = leading_eigenvectors(scatter[0, :cut, :cut], self.padim_features)
        # One eigendecomposition of the last stage's block serves every pca member: each takes its leading axes.
        deep = leading_eigenvectors(scatter[0, cut:, cut:], max(self.member_deep_features))
        for embedding, reduction, deep_features in zip(self.embeddings, self.reductions, self.member_deep_features):
            if embedding == "pca":
                reduction.assign(self._block_projection(shallow, deep[:, :deep_features]))

    def _graph_patch_scores(self, features):
        distances = 0.0
        for member, mean, precision in zip(self._member_features(features), self.means, self.precisions):
            centred = member - mean
            squared = ops.sum(ops.einsum("npd,pde->npe", centred, precision) * centred, axis=-1)
            distances += ops.sqrt(ops.maximum(squared, 0.0))  # rounding can make it slightly negative
        return ops.reshape(distances / len(self.embeddings), (-1, self.grid_height, self.grid_width))


def inverses(matrices):
    """(m, d, d) float64 symmetric positive definite matrices -> their float32 inverses, POSITION_BLOCK
    at a time: inverting all at once held two more float64 copies (2.5 GB at 384 px) besides the input.
    keras.ops rather than np.linalg.inv: OpenBLAS threads on 1024 small matrices took 100x longer
    (56 s instead of 0.6 s) on a busy 2-core machine."""
    result = np.empty(matrices.shape, np.float32)
    for start in range(0, len(matrices), POSITION_BLOCK):
        block = ops.convert_to_tensor(matrices[start:start + POSITION_BLOCK], "float64")
        result[start:start + POSITION_BLOCK] = ops.convert_to_numpy(ops.linalg.inv(block))
    return result


def random_channels(feature_dim, count, seed):
    """`count` distinct channel indices out of `feature_dim`, drawn with `seed`, in increasing order."""
    return np.sort(np.random.default_rng(seed).choice(feature_dim, count, replace=False)).astype(np.int32)


def leading_eigenvectors(symmetric, count):
    """(d, count) float32: the eigenvectors of a symmetric (d, d) matrix with the largest eigenvalues."""
    _, vectors = np.linalg.eigh(symmetric)  # ascending eigenvalues
    return vectors[:, ::-1][:, :count].astype(np.float32)


def semi_orthogonal(feature_dim, count, seed):
    """(feature_dim, count) float32 matrix with orthonormal columns, drawn with `seed`: the Q of the
    QR decomposition of a standard Gaussian matrix, signs fixed so that R's diagonal is positive (Q is
    then Haar-distributed, and one seed gives one matrix whatever the LAPACK). count 0 (no deep draw)
    gives a (feature_dim, 0) matrix, as numpy's QR of an empty matrix does."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((feature_dim, count)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


class RunningGaussians:
    """Per-position count, mean and scatter matrix (sum of outer products of deviations) of features
    that arrive batch by batch, so that no more than a chunk of them is held at once.

    Each batch is written, minus c (the first batch's mean, so that the deviations stay small and
    subtracting n m m^T at the end loses nothing), into one float64 buffer of about `chunk_bytes`, laid
    out position by position; a full buffer adds its sums of x - c and of (x - c)(x - c)^T, one batched
    matrix product. Why: at 384 px the scatter matrices (9,216 positions of 130 dims) take 1.25 GB, and
    every pass over them, or over a fresh array of that size, costs about as much as a 16-image batch's
    matrix products; merging each batch by Chan's update made several such passes (2.8 s per batch).
    With this and the channels taken in the compiled graph, mvtec_ad/bottle's fit (209 images, 384 px,
    stages 1 2 4 6 with 30 deep channels) went from 65 s to 38 s and its peak memory from 8.9 to 7.8 GB;
    the products and the inverses computed POSITION_BLOCK Gaussians at a time took train.py's peak from
    7.6 to 5.1 GB (identical Gaussians).
    """

    def __init__(self, chunk_bytes=CHUNK_BYTES):
        self.chunk_bytes = chunk_bytes
        self.count, self._buffered = 0, 0
        self._shift = self._buffer = self._sums = self._products = None

    def update(self, batch):
        """batch: (n, positions, dims) features of n images."""
        batch = np.asarray(batch)
        if self._shift is None:
            self._allocate(batch)
        while len(batch):
            free = self._buffer[:, self._buffered:]
            taken = batch[:free.shape[1]]
            # The subtraction writes straight into the buffer, in float64 and transposed: no array in between.
            np.subtract(taken.transpose(1, 0, 2), self._shift[:, None], out=free[:, :len(taken)])
            self._buffered += len(taken)
            self.count += len(taken)
            batch = batch[len(taken):]
            if self._buffered == self._buffer.shape[1]:
                self._merge_buffer()

    def _allocate(self, first_batch):
        positions, dims = first_batch.shape[1:]
        self._shift = first_batch.mean(axis=0, dtype=np.float64)
        self._buffer = np.empty((positions, max(1, self.chunk_bytes // (positions * dims * 8)), dims))
        self._sums, self._products = np.zeros((positions, dims)), np.zeros((positions, dims, dims))

    def _merge_buffer(self):
        shifted = self._buffer[:, :self._buffered]  # (positions, n, dims), each position's block contiguous
        self._sums += shifted.sum(axis=1)
        # Block by block: one temporary for all positions would be as large as the scatter matrices.
        for start in range(0, len(shifted), POSITION_BLOCK):
            block = shifted[start:start + POSITION_BLOCK]
            self._products[start:start + POSITION_BLOCK] += block.transpose(0, 2, 1) @ block
        self._buffered = 0

    def finish(self):
        """(mean, scatter) in float64, (positions, dims) and (positions, dims, dims); the object is spent
        afterwards (the scatter is computed in place of its sums)."""
        if self._buffered:
            self._merge_buffer()
        shift_mean = self._sums / self.count
        scatter, self._products, self._buffer = self._products, None, None
        scatter -= self.count * np.einsum("pd,pe->pde", shift_mean, shift_mean)
        return self._shift + shift_mean, scatter
