"""Deep SVDD (Ruff et al. 2018, "Deep One-Class Classification") with patch-level maps: `-a deepsvdd`.

A bias-free encoder phi (selfsup/svdd_encoders.py) maps every patch of an image to a point in a
`latent_dim`-space; training pulls the patch embeddings of normal images towards a fixed centre c.

* Patches: by default the paper's CNN runs on overlapping `patch_size` x `patch_size` patches taken
  every `patch_stride` pixels (Patch SVDD style, Yi and Yoon 2020); with `backbone` the frozen
  pretrained EfficientNet-Lite features + a trainable bias-free head, one patch per stride-8 cell.
* d(x), the image's squared distance: the mean over its patches of ||phi(patch) - c||^2. With one
  patch covering the image (`patch_size` = input size) it is exactly the paper's ||phi(x) - c||^2.
* c (prepare_training, before the first step): the mean of the initial patch embeddings of the
  training images, components with |c_i| < eps pushed to +-eps. Optionally the encoder is first
  pretrained as an autoencoder on the same patches (`pretrain_epochs`), as in the paper.
* Objectives (selfsup/svdd_objective.py): one-class or soft-boundary. R is refitted as the
  (1 - nu) quantile of the training distances every `radius_every` epochs (soft-boundary), and once
  more when training ends under both objectives, so that the image score
  d(x) - R^2 is negative inside the sphere and positive (anomalous) outside it, with about a fraction
  nu of the normal training images above 0, before any finetuning. Under one-class R plays no part
  in the loss; it only gives the score this meaning.
* Anomaly map: ||phi(patch) - c||^2 per patch, bilinearly upsampled and blurred (sigma 4). Distance
  to c rather than to the nearest normal patch embedding (Patch SVDD's kNN): it is what the objective
  minimises, the map then agrees with the image score (whose d(x) is the map's patch mean), and the
  model needs no memory bank. The price is that one centre must fit every kind of normal patch.
* Golden-sample mode (`golden` N > 0, processing/golden.py): training, c and R use only the first N
  training images, expanded by seeded batched augmentation.
* c and R are non-trainable weights, so model.keras carries them.

No early stopping: the soft-boundary loss jumps whenever R is refitted, the one-class loss keeps
falling on training and validation alike, and restoring "best" weights would leave R belonging to
other weights. The validation loss is still logged for the training curves.
"""
import keras
import numpy as np
from keras import ops

from memorybank.features import upsample_and_blur, upsample_and_blur_graph
from processing.golden import expand_golden, golden_epoch_size
from processing.anomaly_model import AnomalyModel
from processing.errors import UserError
from processing.progress import report
from selfsup import svdd_encoders
from selfsup.svdd_objective import (OBJECTIVES, SOFT_BOUNDARY, RadiusUpdate, centre_from_mean,
                                    radius_from_distances, svdd_loss)

DEFAULT_LATENT_DIM = 512
WEIGHT_DECAY = 1e-6  # the paper's lambda


@keras.saving.register_keras_serializable(package="selfsup")
class DeepSVDD(AnomalyModel):
    method_name = "deepsvdd"
    default_epochs = 20  # a 2-core CPU schedule; the paper trains 150 epochs
    default_learning_rate = 1e-4  # the paper's Adam rate
    early_stopping = False

    def __init__(self, objective="one-class", nu=0.1, radius_every=5, pretrain_epochs=0, backbone=None, golden=0,
                 patch_size=None, patch_stride=None, latent_dim=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.objective = objective
        self.nu = float(nu)
        self.radius_every = int(radius_every)
        self.pretrain_epochs = int(pretrain_epochs)
        self.backbone = backbone
        self.golden = int(golden)
        self.latent_dim = int(latent_dim or DEFAULT_LATENT_DIM)
        self.seed = int(seed)
        self._check_options(patch_size, patch_stride)
        if backbone:
            self.patch_size = self.patch_stride = None
            self.encoder = svdd_encoders.backbone_encoder(backbone, self.input_size, self.channels, self.latent_dim)
            self.grid = self.encoder.outputs[0].shape[1]
        else:
            self.patch_size = int(patch_size or self.input_size // 4)
            self.patch_stride = int(patch_stride or self.patch_size // 2)
            self._check_patches()
            self.encoder = svdd_encoders.patch_encoder(self.patch_size, self.channels, self.latent_dim)
            self.grid = svdd_encoders.grid_size(self.input_size, self.patch_stride)
        self.centre = self.add_weight(shape=(self.latent_dim,), initializer="zeros", trainable=False, name="centre")
        self.radius = self.add_weight(shape=(), initializer="zeros", trainable=False, name="radius")
        self._radius_data = None  # the training dataset, set by prepare_training for the radius refits
        self.built = True

    def get_config(self):
        return {**super().get_config(), "objective": self.objective, "nu": self.nu, "radius_every": self.radius_every,
                "pretrain_epochs": self.pretrain_epochs, "backbone": self.backbone, "golden": self.golden,
                "patch_size": self.patch_size, "patch_stride": self.patch_stride, "latent_dim": self.latent_dim,
                "seed": self.seed}

    def _check_options(self, patch_size, patch_stride):
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown --svdd-objective '{self.objective}'; choose one of {', '.join(OBJECTIVES)}")
        if not 0 < self.nu <= 1:
            raise UserError(f"--nu must be in (0, 1], got {self.nu}")
        if self.radius_every < 1 or self.pretrain_epochs < 0 or self.golden < 0 or self.latent_dim < 1:
            raise UserError("--radius-every and --latent-dim must be at least 1, --pretrain-epochs and --golden "
                            "at least 0")
        if self.backbone and (patch_size or patch_stride or self.pretrain_epochs):
            raise UserError("--svdd-patch-size, --svdd-patch-stride and --pretrain-epochs apply to deepsvdd's own "
                            "encoder; with --svdd-backbone the patches are the backbone's stride-8 cells and it is "
                            "already pretrained: drop them")

    def _check_patches(self):
        if self.patch_size % 2 or not 8 <= self.patch_size <= self.input_size:
            raise UserError(f"--svdd-patch-size must be even and in [8, {self.input_size}] (the input size), "
                            f"got {self.patch_size}")
        if not 1 <= self.patch_stride <= self.patch_size:
            raise UserError(f"--svdd-patch-stride must be in [1, {self.patch_size}] (the patch size), "
                            f"got {self.patch_stride}")

    # ---- embeddings and distances
    def embed(self, images, training=False):
        """(n, S, S, C) images -> (n, g, g, latent_dim) patch embeddings."""
        if self.backbone:
            return self.encoder(images, training=training)
        patches = svdd_encoders.overlapping_patches(images, self.patch_size, self.patch_stride)
        flat = ops.reshape(patches, (-1, self.patch_size, self.patch_size, self.channels))
        codes = self.encoder(flat, training=training)
        return ops.reshape(codes, (-1, self.grid, self.grid, self.latent_dim))

    @property
    def image_embedding_dim(self):
        return self.latent_dim

    def _batch_image_embeddings(self, images):
        """The patch embeddings averaged over the grid."""
        return ops.convert_to_numpy(ops.mean(self.embed(images), axis=(1, 2)))

    def call(self, images, training=False):
        """(n, g, g) squared distances of the patch embeddings to c."""
        return ops.sum(ops.square(self.embed(images, training=training) - self.centre), axis=-1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return svdd_loss(self.objective, ops.mean(y_pred, axis=(1, 2)), self.radius, self.nu)

    def image_distances(self, dataset):
        """(N,) squared distances d(x) of every image of a batched dataset."""
        return np.concatenate([self.predict_on_batch(batch).mean(axis=(1, 2)) for batch in dataset])

    # ---- training hooks
    def make_optimizer(self, learning_rate, steps_per_epoch, epochs):
        return keras.optimizers.Adam(learning_rate, weight_decay=WEIGHT_DECAY)

    def training_data(self, train_ds):
        return expand_golden(train_ds, self.golden, self.seed) if self.golden else train_ds

    def images_per_epoch(self, n_train_images):
        return golden_epoch_size(self.golden) if self.golden else n_train_images

    def prepare_training(self, train_ds):
        self._radius_data = train_ds
        if self.pretrain_epochs:
            self._pretrain(train_ds)
        total, count = np.zeros(self.latent_dim, np.float64), 0
        for batch in train_ds:
            embeddings = ops.convert_to_numpy(self.embed(batch)).reshape(-1, self.latent_dim)
            total += embeddings.sum(axis=0)
            count += len(embeddings)
        self.centre.assign(centre_from_mean(total / count))

    def training_callbacks(self):
        every = self.radius_every if self.objective == SOFT_BOUNDARY else None
        return [RadiusUpdate(self.update_radius, every)]

    def update_radius(self):
        """R <- sqrt of the (1 - nu) quantile of d(x) over the training data."""
        self.radius.assign(radius_from_distances(self.image_distances(self._radius_data), self.nu))

    def _pretrain(self, train_ds):
        """The paper's pretraining: encoder + mirrored decoder as an autoencoder of the training patches (L2)."""
        decoder = svdd_encoders.patch_decoder(self.patch_size, self.channels, self.latent_dim)
        autoencoder = keras.Sequential([self.encoder, decoder], name="svdd_pretraining")
        learning_rate = float(ops.convert_to_numpy(self.optimizer.learning_rate))
        autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")

        def as_pairs(images):
            patches = svdd_encoders.overlapping_patches(images, self.patch_size, self.patch_stride)
            patches = ops.reshape(patches, (-1, self.patch_size, self.patch_size, self.channels))
            return patches, patches

        # shuffle=False: train_ds is shuffled by its pipeline (Keras would only warn that it ignores the flag).
        history = autoencoder.fit(train_ds.map(as_pairs), epochs=self.pretrain_epochs, shuffle=False,
                                  verbose=0).history["loss"]
        report(f"deepsvdd autoencoder pretraining: {self.pretrain_epochs} epochs, patch L2 loss "
               f"{history[0]:.4f} -> {history[-1]:.4f}")

    # ---- maps and scores
    def _scores_from(self, patch_distances):
        """d(x) - R^2 (keras.ops): positive outside the sphere (anomalous), negative inside."""
        return ops.mean(patch_distances, axis=(1, 2)) - ops.square(self.radius)

    def map_and_score_graph(self, images):
        patch_distances = self(images)
        return upsample_and_blur_graph(patch_distances, self.input_size), self._scores_from(patch_distances)

    def graph_maps(self, images):
        return self.map_and_score_graph(images)[0]

    def _batch_maps(self, images):
        return upsample_and_blur(self.predict_on_batch(images), self.input_size)

    def maps_and_scores(self, images):
        """Eager inference: the compiled predict function per batch (faster than tracing calls), one pass."""
        images = self.check_images(images)
        if not len(images):
            return np.zeros(images.shape[:3], np.float32), np.zeros(0, np.float32)
        patch_distances = self.in_batches(self.predict_on_batch, images)
        scores = ops.convert_to_numpy(self._scores_from(patch_distances)).astype(np.float32)
        return upsample_and_blur(patch_distances, self.input_size), scores
