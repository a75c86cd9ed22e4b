"""CutPaste (Li et al. 2021, "CutPaste: Self-Supervised Learning for Anomaly Detection and
Localization"): `-a cutpaste`.

Training: a classifier learns to tell normal images from their CutPaste / scar versions
(processing/cutpaste.py; 3-way by default, binary or CutPaste-only by `variant`). The pretext batch is
made inside `train_step` from each batch of normal images, with the seed (run seed, generation): the
generation is epoch // `regenerate_every`, so the generated set stays the same for that many epochs
and is drawn anew after. Validation images always get the same pretext set, so validation loss and
accuracy compare across epochs.

Network: the pretrained EfficientNet-Lite backbone (trainable; it replaces the paper's ResNet-18,
which cannot be obtained offline) up to its stride-32 stage, global average pooled into the
representation; an MLP head (Dense + BatchNorm + ReLU, 5 x 512 then 128) and a linear classifier.
`freeze_backbone_epochs` K trains only the head for the first K epochs.

Scoring, as in the paper: a Gaussian density (detectors' GDE) of the pooled backbone representation
(the reference code's `embeds`, before the head), fitted on the normal training images in
`calibrate()`; the image score is its negative log-likelihood. Anomaly map: patches (`patch_size`,
by default a quarter of the input side, as 64 px of 256) cut on a stride (`patch_stride`, default a
quarter of the patch) embedded by the same network, one GDE fitted on the patches at all locations of
the normal images (at most `patch_fit_images` of them), each pixel given the mean score of the patches
that cover it, then a Gaussian blur (sigma 4). The paper uses stride 4 px; the coarser default keeps
CPU inference affordable.
Scores and maps are keras.ops (the density's quadratic form, then one fixed coverage-and-blur matrix),
shared by eager inference and the graph export.py traces (`map_and_score_graph`).
"""
import functools

import keras
import numpy as np
from keras import layers, ops
from scipy import ndimage

from backbones.pretrained import feature_extractor
from detectors import GaussianDensityDetector
from processing.anomaly_model import AnomalyModel
from processing.cutpaste import VARIANTS, num_classes, pretext_batch
from processing.embedding_plots import save_tsne
from processing.errors import UserError
from processing.progress import report
from selfsup.graph_detectors import squared_mahalanobis

HEAD_LAYERS = (512, 512, 512, 512, 512, 128)
HEAD_BN_MOMENTUM = 0.9  # Keras' 0.99 leaves inference statistics near their start in short CPU schedules
MAP_SIGMA = 4.0
MIN_PATCH_SIZE = 32  # one cell of the backbone's stride-32 stage
VALIDATION_GENERATION = -1  # the fixed pretext set of validation images
EMBED_CHUNK = 256  # images or patches per backbone call: bounds memory at any input size
DENSITIES = ("image", "patch")
PATCH_FIT_IMAGES = 100  # normal images whose patches fit the patch density (see calibrate)
# Pretext images x pixels the default schedule trains on: ~25 min on a slow 2-core CPU, ~5 on an AVX-512 one.
PRETEXT_PIXEL_BUDGET = 5000 * 256 ** 2


@keras.saving.register_keras_serializable(package="selfsup")
class CutPaste(AnomalyModel):
    method_name = "cutpaste"
    # The paper trains longer (pass -e 30 for its schedule); see default_epochs_for.
    default_epochs = 10
    default_batch_size = 64
    default_learning_rate = 1e-3
    default_validation_fraction = 0.2
    early_stopping = False  # the pretext loss says little about anomaly detection
    min_train_images = 2  # a Gaussian density needs two embeddings
    inference_batch_size = 8  # images whose patches go through the backbone together

    def __init__(self, backbone="lite0", variant="3way", head_layers=HEAD_LAYERS, regenerate_every=1,
                 freeze_backbone_epochs=0, patch_size=None, patch_stride=None, patch_fit_images=None,
                 rotate90=True, seed=0, **kwargs):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise UserError(f"unknown --cutpaste-variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if regenerate_every < 1 or freeze_backbone_epochs < 0:
            raise UserError("--regenerate-every must be at least 1 and --freeze-backbone-epochs at least 0")
        self.patch_size = int(patch_size or min(self.input_size, max(MIN_PATCH_SIZE, self.input_size // 4)))
        self.patch_stride = int(patch_stride or max(1, self.patch_size // 4))
        if self.patch_size > self.input_size:
            raise UserError(f"images are {self.input_size} px but the patch size is {self.patch_size} px; "
                            "pass a --cutpaste-patch-size at most the input --size, or a larger --size")
        if not 1 <= self.patch_stride <= self.patch_size:
            raise UserError(f"--cutpaste-patch-stride must be between 1 and the patch size {self.patch_size}")
        self.patch_fit_images = int(PATCH_FIT_IMAGES if patch_fit_images is None else patch_fit_images)
        if self.patch_fit_images < 1:
            raise UserError(f"--cutpaste-patch-fit-images must be at least 1, got {self.patch_fit_images}")
        self.backbone = backbone
        self.variant = variant
        self.head_layers = tuple(int(units) for units in head_layers)
        self.regenerate_every = int(regenerate_every)
        self.freeze_backbone_epochs = int(freeze_backbone_epochs)
        self.rotate90 = bool(rotate90)
        self.seed = int(seed)

        self.encoder = _encoder(backbone, self.channels)
        self.representation_dim = self.encoder.output_shape[-1]
        self.head = keras.Sequential(
            [block for units in self.head_layers
             for block in (layers.Dense(units), layers.BatchNormalization(momentum=HEAD_BN_MOMENTUM), layers.ReLU())],
            name="head")
        self.classifier = layers.Dense(num_classes(variant), name="classifier")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.generation = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                          name="pretext_generation")
        dim = self.representation_dim
        self.densities = {name: {
            "mean": self.add_weight(shape=(dim,), initializer="zeros", trainable=False, name=f"{name}_mean"),
            "precision": self.add_weight(shape=(dim, dim), initializer="zeros", trainable=False,
                                         name=f"{name}_precision"),
            "log_normalizer": self.add_weight(shape=(), initializer="zeros", trainable=False,
                                              name=f"{name}_log_normalizer")} for name in DENSITIES}
        self.calibrated = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                          name="calibrated")
        self.head.build((None, self.representation_dim))
        self.classifier.build((None, self.head_layers[-1]))
        self.built = True  # every weight exists from construction on

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone, "variant": self.variant,
                "head_layers": list(self.head_layers), "regenerate_every": self.regenerate_every,
                "freeze_backbone_epochs": self.freeze_backbone_epochs, "patch_size": self.patch_size,
                "patch_stride": self.patch_stride, "patch_fit_images": self.patch_fit_images,
                "rotate90": self.rotate90, "seed": self.seed}

    def call(self, images, training=False):
        """Pretext logits."""
        return self.classifier(self.head(self.encoder(images, training=training), training=training))

    # ---- training
    def default_epochs_for(self, n_train_images):
        """default_epochs, fewer where they would pass PRETEXT_PIXEL_BUDGET: on 2 CPU cores the trainable
        backbone learns from about 4 pretext images of 256 px a second (forward and backward), so 10 epochs
        of magnetic_tile's 610 training images (3 pretext images each in 3way) would take about 80 minutes."""
        pixels_per_epoch = n_train_images * num_classes(self.variant) * self.input_size ** 2
        epochs = int(min(self.default_epochs, max(1, PRETEXT_PIXEL_BUDGET // max(1, pixels_per_epoch))))
        if epochs < self.default_epochs:
            report(f"cutpaste: default schedule cut to {epochs} of {self.default_epochs} epochs for {n_train_images} "
                   f"training images of {self.input_size} px (about 25 minutes on a slow 2-core CPU); pass -e for more")
        return epochs

    def make_optimizer(self, learning_rate, steps_per_epoch, epochs):
        return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=3e-5)

    def pretext(self, images, generation):
        """Normal images -> (pretext images, class labels), seeded by (seed, generation)."""
        seed = ops.stack([ops.convert_to_tensor(self.seed, "int32"), ops.cast(generation, "int32")])
        pretext_images, _, labels = pretext_batch(images, seed, self.variant, rotate=self.rotate90)
        return pretext_images, labels

    def train_step(self, images):
        return super().train_step(self.pretext(images, ops.convert_to_tensor(self.generation)))

    def test_step(self, images):
        return super().test_step(self.pretext(images, VALIDATION_GENERATION))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.accuracy.update_state(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def prepare_training(self, train_ds):
        # Slots for the backbone too, so that the optimizer can take it on when PretextSchedule thaws it.
        self.optimizer.build(self.trainable_variables)

    def training_callbacks(self):
        return [PretextSchedule()]

    # ---- calibration and scoring
    def embed(self, images):
        """(n, h, w, C) images or patches in [0, 1] -> (n, representation_dim) float32 numpy."""
        images = np.asarray(images, np.float32)
        return np.concatenate([self.encoder.predict_on_batch(images[i:i + EMBED_CHUNK])
                               for i in range(0, len(images), EMBED_CHUNK)])

    def patches(self, images):
        """(n, S, S, C) -> (n * g * g, patch, patch, C) patches on the stride grid, image-major."""
        positions = patch_positions(self.input_size, self.patch_size, self.patch_stride)
        window = positions[:, None] + np.arange(self.patch_size)[None]  # (g, patch) pixel indices
        rows = ops.take(images, window.ravel(), axis=1)  # (n, g * patch, S, C)
        grid = ops.take(rows, window.ravel(), axis=2)  # (n, g * patch, g * patch, C)
        g, p = len(positions), self.patch_size
        grid = ops.reshape(grid, (-1, g, p, g, p, self.channels))
        return ops.reshape(ops.transpose(grid, (0, 1, 3, 2, 4, 5)), (-1, p, p, self.channels))

    def _patch_embeddings(self, images):
        return self.embed(self.patches(images))

    def calibrate(self, normal_images):
        """Fits the image density on every normal image and the patch density on the patches of at most
        `patch_fit_images` of them, evenly spread (patches cost about 10 image forwards each: all 762 of
        magnetic_tile would add about 12 minutes on 2 CPU cores for no better density). Two passes, so
        `normal_images` must be re-iterable (a tf.data dataset or a list of batches)."""
        image_embeddings = [self.embed(np.asarray(batch, np.float32)) for batch in normal_images]
        n_images = sum(len(embeddings) for embeddings in image_embeddings)
        if n_images < 2:
            raise UserError(f"cutpaste needs at least 2 normal training images to fit its Gaussian density, got "
                            f"{n_images}; add images to train/good, or pass --validation-fraction 0")
        every = -(-n_images // self.patch_fit_images)  # ceil: keep images 0, every, 2 * every, ...
        patch_embeddings, first, n_fitted = [], 0, 0
        for batch in normal_images:
            batch = np.asarray(batch, np.float32)
            chosen = batch[(first + np.arange(len(batch))) % every == 0]
            first += len(batch)
            if len(chosen):
                patch_embeddings.append(self.in_batches(self._patch_embeddings, chosen))
                n_fitted += len(chosen)
        for name, embeddings in zip(DENSITIES, (image_embeddings, patch_embeddings)):
            state = GaussianDensityDetector().fit(np.concatenate(embeddings)).state()
            for key, weight in self.densities[name].items():
                weight.assign(state[key])
        self.calibrated.assign(1)
        report(f"cutpaste: Gaussian densities of {n_images} images and {sum(map(len, patch_embeddings))} patches "
               f"({self.patch_size} px, stride {self.patch_stride}) of {n_fitted} images")

    def density(self, name):
        """The numpy detector of density `name` (the reference that `density_scores` follows)."""
        self._require_calibrated()
        return GaussianDensityDetector.from_state({key: ops.convert_to_numpy(weight)
                                                   for key, weight in self.densities[name].items()})

    def _require_calibrated(self):
        if not int(self.calibrated.numpy()):
            raise UserError("cutpaste has no Gaussian density yet: calibrate it on normal images (train.py) first")

    def density_scores(self, name, embeddings):
        """(n,) GaussianDensityDetector scores (negative log-likelihood) under density `name`, in keras.ops."""
        density = self.densities[name]
        squared = squared_mahalanobis(ops.convert_to_tensor(embeddings, "float32"), density["mean"],
                                      density["precision"])
        return squared / 2 + density["log_normalizer"]

    @property
    def image_embedding_dim(self):
        return self.representation_dim

    def _batch_image_embeddings(self, images):
        """The embeddings the image score is the density of."""
        return self.embed(images)

    def score(self, images):
        """(N,) negative log-likelihood of the image embeddings under the normal images' Gaussian."""
        self._require_calibrated()
        return ops.convert_to_numpy(self.density_scores("image", self.image_embeddings(images)))

    def maps_and_scores(self, images):
        return self.anomaly_map(images), self.score(images)

    def _batch_maps(self, images):
        self._require_calibrated()
        return ops.convert_to_numpy(self._maps(self.density_scores("patch", self._patch_embeddings(images))))

    def _maps(self, patch_scores):
        """Patch scores (image-major, as `patches`) -> (n, S, S) maps: each pixel the mean score of the
        patches covering it, then the Gaussian blur, as one fixed (S, g) matrix A: map = A @ scores @ A.T."""
        operator = ops.convert_to_tensor(_map_operator(self.input_size, self.patch_size, self.patch_stride))
        g = operator.shape[1]
        return ops.matmul(ops.matmul(operator, ops.reshape(patch_scores, (-1, g, g))), ops.transpose(operator))

    def map_and_score_graph(self, images):
        """The eager maps and scores in one traceable pass (export.py): the same ops on the encoder's output."""
        patch_scores = self.density_scores("patch", self.encoder(self.patches(images)))
        return self._maps(patch_scores), self.density_scores("image", self.encoder(images))

    def inspection_plots(self, folder, normal_images, test_images, test_defects):
        """t-SNE of the embeddings of normal images, their CutPaste and scar versions, and the test images."""
        normal_images = self.check_images(normal_images)
        pretext, _, labels = pretext_batch(normal_images, (self.seed, VALIDATION_GENERATION), "3way", rotate=False)
        names = np.array(["normal", "cutpaste", "scar"])[ops.convert_to_numpy(labels)].tolist()
        images = np.concatenate([ops.convert_to_numpy(pretext), self.check_images(test_images)])
        embeddings = self.image_embeddings(images)
        save_tsne(folder / "tsne_embeddings.png", embeddings, names + [f"test {defect}" for defect in test_defects],
                  title=f"cutpaste embeddings ({self.variant})", seed=self.seed)


class PretextSchedule(keras.callbacks.Callback):
    """Sets each epoch's pretext generation, and freezes the backbone during the first epochs.

    Both follow from the epoch number alone, so a resumed run continues with the same schedule."""

    def on_epoch_begin(self, epoch, logs=None):
        model = self.model
        model.generation.assign(epoch // model.regenerate_every)
        frozen = epoch < model.freeze_backbone_epochs
        if model.encoder.trainable == frozen:
            model.encoder.trainable = not frozen
            model.make_train_function(force=True)  # a traced step keeps the trainable variables it saw
            report(f"cutpaste: backbone {'frozen' if frozen else 'trainable'} from epoch {epoch + 1}")


def _encoder(variant, channels):
    """(N, h, w, channels) images or patches of any size in [0, 1] -> (N, D) pooled backbone features."""
    images = keras.Input(shape=(None, None, channels), name="images")
    rgb = layers.Concatenate(name="to_rgb")([images] * 3) if channels == 1 else images
    features = feature_extractor(variant, strides=(32,), trainable=True)(rgb)
    features = features[0] if isinstance(features, list) else features  # a one-output model may give a list
    return keras.Model(images, layers.GlobalAveragePooling2D(name="pool")(features), name=f"encoder_{variant}")


def patch_positions(size, patch, stride):
    """Top-left offsets of the patches along one side: every `stride` px, the last one flush with the edge."""
    positions = np.arange(0, size - patch + 1, stride)
    return positions if positions[-1] == size - patch else np.append(positions, size - patch)


@functools.lru_cache(maxsize=8)
def _map_operator(size, patch, stride):
    """(size, g) float32 matrix: the coverage mean, then scipy's Gaussian blur (sigma MAP_SIGMA, reflect) of
    each column; blurring is linear, so blurring the operator equals blurring every map it makes."""
    blurred = ndimage.gaussian_filter1d(_coverage_operator(size, patch, stride), MAP_SIGMA, axis=0, mode="reflect")
    return blurred.astype(np.float32)


def _coverage_operator(size, patch, stride):
    """(size, g) matrix that gives each pixel the mean of the scores of the patches covering it (per axis;
    the 2-D mean over covering patches is separable because coverage is a product of the two axes)."""
    positions = patch_positions(size, patch, stride)
    pixels = np.arange(size)[:, None]
    covers = ((pixels >= positions[None]) & (pixels < positions[None] + patch)).astype(np.float64)
    return covers / covers.sum(axis=1, keepdims=True)
