"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): `-a mae`.

A small ViT trained from scratch on the normal images. Each image is cut into patches (16 px by
default); a random 75 % of them are hidden, the encoder sees only the visible ones, and a light
decoder (visible tokens + a shared mask token at every hidden place, 2 blocks of width 64) predicts
the pixels of every patch. The loss is the mean squared error on the hidden patches only, optionally
against per-patch normalised pixels (`norm_pix_loss`, the paper's better-features variant). Positions
are fixed sine-cosine tables (selfsup/vit.py). Training: AdamW (weight decay 0.05, beta2 0.95) with
the warm-up + cosine schedule of selfsup/schedules.py, for a fixed number of epochs.

Anomaly map: a normal model reconstructs hidden normal patches well and hidden defects badly. The
map is the per-pixel squared error (mean over channels; predictions clipped to [0, 1], the images'
range) of hidden patches, averaged over
`map_maskings` maskings that together hide every patch: a fixed seeded permutation of the patches is
read as a ring, and masking j hides the run of `mask_ratio * N` patches starting at j * N / K, so
each patch is hidden by at least one masking (ceil(N / K) <= hidden run; checked when the model is
built). The maskings depend only on the config, so a reloaded model gives the same maps. With
`norm_pix_loss` the prediction is mapped back to pixels with the hidden patch's own mean and
standard deviation (as the paper's pictures do), so the map shows errors of structure, not of a
whole patch's brightness.

Embeddings (`image_embeddings`): the mean of the encoder's output tokens on the whole, unmasked image. Image score:
a detector (`--detector`, kNN cosine k=5 by default, as SimCLR and DINO; selfsup/embedding_scoring.py)
fitted on the embeddings of the normal training images in `calibrate()`; model.keras carries it.
"""
import math

import keras
import numpy as np
from keras import layers, ops

from processing.anomaly_model import AnomalyModel
from processing.embedding_plots import save_tsne
from processing.errors import UserError
from processing.progress import report
from selfsup.embedding_scoring import StoredDetector, detector_min_samples, detector_params
from selfsup.schedules import warmup_cosine
from selfsup.vit import HEAD_DIM, TransformerBlock, patchify, sincos_positions, unpatchify

WEIGHT_DECAY = 0.05  # AdamW, as in the paper


@keras.saving.register_keras_serializable(package="selfsup")
class MaskedAutoencoder(AnomalyModel):
    method_name = "mae"
    default_epochs = 100
    default_batch_size = 32
    default_learning_rate = 1e-3
    # The schedule is a fixed warm-up + cosine decay, and a random masking makes the validation loss
    # noisy: stopping on it would cut the schedule short.
    early_stopping = False

    def __init__(self, patch_size=16, mask_ratio=0.75, encoder_dim=128, encoder_depth=4, decoder_dim=64,
                 decoder_depth=2, map_maskings=4, norm_pix_loss=False, detector="knn", covariance="shrinkage",
                 detector_shape=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.detector, self.covariance = detector, covariance
        self.image_detector = StoredDetector(detector, detector_params(detector, covariance), detector_shape,
                                             name="image_detector")
        self.patch_size, self.mask_ratio = int(patch_size), float(mask_ratio)
        self.encoder_dim, self.encoder_depth = int(encoder_dim), int(encoder_depth)
        self.decoder_dim, self.decoder_depth = int(decoder_dim), int(decoder_depth)
        self.map_maskings, self.norm_pix_loss, self.seed = int(map_maskings), bool(norm_pix_loss), int(seed)
        self._check_options()
        self.grid = self.input_size // self.patch_size
        self.n_patches = self.grid ** 2
        self.n_masked = round(self.mask_ratio * self.n_patches)
        self._check_masking()
        self.n_visible = self.n_patches - self.n_masked
        patch_values = self.patch_size ** 2 * self.channels

        self.encoder_positions = sincos_positions(self.grid, self.encoder_dim)
        self.decoder_positions = sincos_positions(self.grid, self.decoder_dim)
        self.patch_embedding = layers.Dense(self.encoder_dim, name="patch_embedding")
        self.encoder_blocks = [TransformerBlock(self.encoder_dim, name=f"encoder_{i}") for i in range(self.encoder_depth)]
        self.encoder_norm = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")
        self.decoder_embedding = layers.Dense(self.decoder_dim, name="decoder_embedding")
        self.decoder_blocks = [TransformerBlock(self.decoder_dim, name=f"decoder_{i}") for i in range(self.decoder_depth)]
        self.decoder_norm = layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")
        self.pixel_prediction = layers.Dense(patch_values, name="pixel_prediction")
        self.mask_token = self.add_weight(shape=(1, 1, self.decoder_dim), name="mask_token",
                                          initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._build_layers(patch_values)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "mask_ratio": self.mask_ratio,
                "encoder_dim": self.encoder_dim, "encoder_depth": self.encoder_depth,
                "decoder_dim": self.decoder_dim, "decoder_depth": self.decoder_depth,
                "map_maskings": self.map_maskings, "norm_pix_loss": self.norm_pix_loss, "seed": self.seed,
                "detector": self.detector, "covariance": self.covariance,
                "detector_shape": self.image_detector.state_shapes}

    @property
    def min_train_images(self):
        return detector_min_samples(self.image_detector)

    def _check_options(self):
        if self.patch_size < 1 or self.input_size % self.patch_size:
            raise UserError(f"--mae-patch {self.patch_size} does not divide the input size {self.input_size}; "
                            "pass a --size that is a multiple of the patch size, or another --mae-patch")
        for name, dim in (("--mae-dim", self.encoder_dim), ("decoder width", self.decoder_dim)):
            if dim < HEAD_DIM or dim % HEAD_DIM:
                raise UserError(f"{name} must be a positive multiple of {HEAD_DIM} (the attention head width), got {dim}")
        for name, depth in (("--mae-depth", self.encoder_depth), ("decoder depth", self.decoder_depth)):
            if depth < 1:
                raise UserError(f"{name} must be at least 1, got {depth}")
        if self.map_maskings < 1:
            raise UserError(f"--mae-maskings must be at least 1, got {self.map_maskings}")

    def _check_masking(self):
        if not 0 < self.n_masked < self.n_patches:
            raise UserError(f"--mask-ratio {self.mask_ratio} hides {self.n_masked} of {self.n_patches} patches; "
                            "choose a ratio that hides some patches and leaves some visible (e.g. 0.75)")
        needed = math.ceil(self.n_patches / self.n_masked)
        if self.map_maskings < needed:
            raise UserError(f"--mae-maskings {self.map_maskings} with --mask-ratio {self.mask_ratio} leaves some "
                            f"patches never hidden, so the map would miss them; pass --mae-maskings {needed} or more")

    def _build_layers(self, patch_values):
        """Create every weight now, so that a reloaded model can load them without a forward pass."""
        self.patch_embedding.build((None, None, patch_values))
        for block in self.encoder_blocks:
            block.build((None, None, self.encoder_dim))
        self.encoder_norm.build((None, None, self.encoder_dim))
        self.decoder_embedding.build((None, None, self.encoder_dim))
        for block in self.decoder_blocks:
            block.build((None, None, self.decoder_dim))
        self.decoder_norm.build((None, None, self.decoder_dim))
        self.pixel_prediction.build((None, None, self.decoder_dim))
        self.built = True

    # ---- masking
    def map_masks(self):
        """(map_maskings, n_patches) bool, True = hidden: the fixed maskings the anomaly map averages over."""
        order = np.random.default_rng(self.seed).permutation(self.n_patches)
        masks = np.zeros((self.map_maskings, self.n_patches), bool)
        for j in range(self.map_maskings):
            start = j * self.n_patches // self.map_maskings
            masks[j, order[(start + np.arange(self.n_masked)) % self.n_patches]] = True
        return masks

    # ---- the network
    def _encode(self, tokens):
        for block in self.encoder_blocks:
            tokens = block(tokens)
        return self.encoder_norm(tokens)

    def _forward(self, images, order):
        """Pixel predictions (B, N, p*p*C) of every patch, and the hidden-patch mask (B, N) as float.

        order (B, N): patch indices per image; the first n_visible are shown to the encoder.
        """
        tokens = self.patch_embedding(patchify(images, self.patch_size)) + self.encoder_positions
        shown = order[:, :self.n_visible]
        visible = ops.take_along_axis(tokens, ops.repeat(shown[..., None], self.encoder_dim, axis=2), axis=1)
        x = self.decoder_embedding(self._encode(visible))
        mask_tokens = ops.broadcast_to(self.mask_token, (ops.shape(x)[0], self.n_masked, self.decoder_dim))
        x = ops.concatenate([x, mask_tokens], axis=1)  # in `order`; put back in patch order:
        restore = ops.argsort(order, axis=1)
        x = ops.take_along_axis(x, ops.repeat(restore[..., None], self.decoder_dim, axis=2), axis=1)
        x = x + self.decoder_positions
        for block in self.decoder_blocks:
            x = block(x)
        return self.pixel_prediction(self.decoder_norm(x)), ops.cast(restore >= self.n_visible, "float32")

    def call(self, images, training=False):
        """Training forward pass: a fresh random masking per image; returns (predictions, hidden mask)."""
        noise = keras.random.uniform((ops.shape(images)[0], self.n_patches), seed=self.seed_generator)
        return self._forward(images, ops.argsort(noise, axis=1))

    def _targets(self, images):
        """Patches as pixels, and as the loss's targets with their per-patch mean and std (normalised or not)."""
        patches = patchify(images, self.patch_size)
        if not self.norm_pix_loss:
            return patches, patches, 0.0, 1.0
        mean = ops.mean(patches, axis=-1, keepdims=True)
        std = ops.sqrt(ops.var(patches, axis=-1, keepdims=True) + 1e-6)
        return patches, (patches - mean) / std, mean, std

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        predictions, hidden = y_pred
        _, targets, _, _ = self._targets(x)
        per_patch = ops.mean(ops.square(predictions - targets), axis=-1)
        return ops.sum(per_patch * hidden) / ops.sum(hidden)

    def make_optimizer(self, learning_rate, steps_per_epoch, epochs):
        optimizer = keras.optimizers.AdamW(warmup_cosine(learning_rate, steps_per_epoch, epochs),
                                           weight_decay=WEIGHT_DECAY, beta_2=0.95)
        # As in the paper: no decay of biases, norms and the mask token.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "mask_token"])
        return optimizer

    # ---- maps, reconstructions, embeddings
    def _masked_reconstruction(self, images, masks):
        """Predicted pixels (clipped to [0, 1], the images' range) of every patch of every image under each
        (N,) bool mask, and the pixels themselves: both (K * B, N, p*p*C), masking-major."""
        tiled = ops.tile(images, (len(masks), 1, 1, 1))
        # A stable sort of a mask puts the visible patches first, as _forward expects.
        orders = ops.convert_to_tensor(np.argsort(masks, axis=1, kind="stable"), "int32")
        predictions, _ = self._forward(tiled, ops.repeat(orders, ops.shape(images)[0], axis=0))
        patches, _, mean, std = self._targets(tiled)
        return ops.clip(predictions * std + mean, 0.0, 1.0), patches

    def graph_maps(self, images):
        masks = self.map_masks()
        predictions, patches = self._masked_reconstruction(images, masks)
        squared = ops.reshape(ops.square(predictions - patches),
                              (self.map_maskings, -1, self.n_patches, self.patch_size ** 2, self.channels))
        errors = ops.mean(squared, axis=-1) * masks[:, None, :, None].astype("float32")  # hidden patches only
        mean_errors = ops.sum(errors, axis=0) / masks.sum(axis=0)[:, None].astype("float32")
        return unpatchify(mean_errors, self.patch_size, self.grid, 1)[..., 0]

    def reconstruct(self, images, mask):
        """(n, H, W, C) images with the patches hidden by `mask` (N,) bool replaced by their prediction."""
        predictions, patches = self._masked_reconstruction(images, mask[None])
        mixed = ops.where(mask[None, :, None], predictions, patches)
        return ops.convert_to_numpy(unpatchify(mixed, self.patch_size, self.grid, self.channels))

    def inspection_rows(self, images):
        images = self.check_images(images)
        mask = self.map_masks()[0]
        masked = images * np.repeat(np.repeat(~mask.reshape(self.grid, self.grid), self.patch_size, 0),
                                    self.patch_size, 1)[None, :, :, None]
        rows = zip(images, masked, self.in_batches(lambda batch: self.reconstruct(batch, mask), images),
                   self.anomaly_map(images))
        return [list(row) for row in rows]

    def inspection_plots(self, folder, normal_images, test_images, test_defects):
        """t-SNE of the encoder embeddings of normal training images and of the test images by defect."""
        images = np.concatenate([self.check_images(normal_images), self.check_images(test_images)])
        embeddings = self.image_embeddings(images)
        save_tsne(folder / "tsne_embeddings.png", embeddings,
                  ["train"] * len(normal_images) + [f"test {defect}" for defect in test_defects],
                  title="mae encoder embeddings", seed=self.seed)

    def graph_embeddings(self, images):
        """(n, encoder_dim) mean of the encoder's tokens for each whole (unmasked) image, in keras.ops."""
        tokens = self.patch_embedding(patchify(ops.convert_to_tensor(images), self.patch_size))
        return ops.mean(self._encode(tokens + self.encoder_positions), axis=1)

    @property
    def image_embedding_dim(self):
        return self.encoder_dim

    def _batch_image_embeddings(self, images):
        return ops.convert_to_numpy(self.graph_embeddings(images))

    # ---- image scores
    def calibrate(self, normal_images):
        embeddings = [self.image_embeddings(batch) for batch in normal_images]
        if not embeddings:
            raise UserError("mae needs normal training images to calibrate; train/good gave none")
        self.image_detector.fit_vectors(np.concatenate(embeddings))
        report(f"mae: {self.detector} detector fitted on {sum(map(len, embeddings))} image embeddings")

    def maps_and_scores(self, images):
        """Reconstruction-error maps; scores from the image detector on the embeddings."""
        images = self.check_images(images)
        scores = self.image_detector.score_vectors(self.image_embeddings(images)) if len(images) else np.zeros(0)
        return self.anomaly_map(images), scores.astype(np.float32)

    def map_and_score_graph(self, images):
        return self.graph_maps(images), self.image_detector.score_graph(self.graph_embeddings(images))
