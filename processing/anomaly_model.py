"""The method contract every `-a` method implements (see DESIGN.md, "The method contract").

finetune.py and test.py only call `anomaly_map`, `score` and `maps_and_scores`; they never
branch on the method.

Training hooks and `train.py --resume` (processing/checkpoints.py): a run stopped after epoch k and
resumed must reach the same weights as an uninterrupted one. train.py checkpoints every model variable
(seed-generator states and non-trainable weights included) and the optimizer's; in return the hooks
keep to this contract:
* `training_data(batches)` is called once per epoch, on that epoch's shuffled batches, right after
  `keras.utils.set_random_seed(data.epoch_seed(seed, epoch))`: randomness it creates (tf.data maps,
  SeedGenerators made inside it) then depends on (seed, epoch) only. Randomness inside `train_step`
  must come from SeedGenerators the model owns (they are checkpointed) or from seeds derived from
  the epoch, never from a process-wide generator.
* `prepare_training` runs once on a fresh run and is skipped on resume: whatever it computes must live
  in model variables (e.g. a centre as a non-trainable weight), which the checkpoint restores.
* callbacks from `training_callbacks` must derive their state from the epoch number or model variables.
* `compute_loss` returns the plain batch mean; under --distribute the base class divides it by the
  number of replicas, as Keras expects of a loss whose replica gradients it sums.
"""
import functools

import keras
import numpy as np
from keras import ops
from scipy import ndimage

from processing.errors import UserError


class AnomalyModel(keras.Model):
    """Base class: subclasses implement `graph_maps(images) -> (n, H, W)` maps in keras.ops (or `_batch_maps`
    where maps need numpy; such a method cannot be exported), higher = more anomalous."""

    method_name = "base"
    trains_by_gradient = True  # False: train.py skips fit() and only calibrates
    score_sigma = 4.0  # Gaussian blur before taking the max, so one hot pixel does not decide a score
    inference_batch_size = 32

    # Training defaults: train.py uses them where the user passes no flag.
    default_epochs = 50
    default_batch_size = 16
    default_learning_rate = 1e-3
    default_validation_fraction = 0.1
    early_stopping = True  # stop on the validation loss; False for pretext tasks whose loss is no guide
    min_train_images = 1
    image_embedding_dim = None  # methods that learn image embeddings set it and implement _batch_image_embeddings

    def __init__(self, input_size=256, channels=3, **kwargs):
        super().__init__(**kwargs)
        self.input_size = int(input_size)
        self.channels = int(channels)

    def get_config(self):
        return {**super().get_config(), "input_size": self.input_size, "channels": self.channels}

    # ---- what a method may override
    def make_optimizer(self, learning_rate, steps_per_epoch, epochs):
        return keras.optimizers.Adam(learning_rate)

    def training_data(self, train_ds):
        """The tf.data fit() trains on, from batches of normal images (e.g. add pretext labels, augment)."""
        return train_ds

    def default_epochs_for(self, n_train_images):
        """The epochs train.py uses when -e is not given (a method may scale them to the data's size)."""
        return self.default_epochs

    def images_per_epoch(self, n_train_images):
        """How many images training_data() yields per epoch (for the images/s figures)."""
        return n_train_images

    def prepare_training(self, train_ds):
        """Runs once before fit(): initialisation that needs data (e.g. a centre, a pretraining stage)."""

    def training_callbacks(self):
        """Extra Keras callbacks fit() needs (e.g. a schedule that updates a radius every k epochs)."""
        return []

    def _compute_loss(self, *args, **kwargs):
        # Keras's own compute_loss pre-divides by the replica count; the methods' overrides return a plain mean.
        import tensorflow as tf

        loss = super()._compute_loss(*args, **kwargs)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas == 1 or type(self).compute_loss is keras.Model.compute_loss:
            return loss
        return loss / replicas

    def calibrate(self, normal_images):
        """Fit what gradients do not learn (detector statistics, centres, memory banks). No-op by default."""

    def configure_maps(self, **options):
        """Switch how maps are computed (e.g. the residual kind of autoencoders)."""
        if options:
            raise UserError(f"{', '.join(options)} cannot be set for method {self.method_name}: "
                            "these options apply to autoencoders only")

    def map_options(self):
        return {}

    def inspection_rows(self, images):
        """Rows of pictures that show what the model does with `images` (train.py -i)."""
        maps = self.anomaly_map(images)
        return [[image, heat] for image, heat in zip(images, maps)]

    def inspection_plots(self, folder, normal_images, test_images, test_defects):
        """Extra PNGs for train.py -i in `folder` (e.g. a t-SNE of embeddings), from normal training images and
        labelled test images (`test_defects`: "good" or the defect type per image). None by default."""

    def image_embeddings(self, images):
        """(N, image_embedding_dim) float32 numpy: one learned vector per image, for analyze.py, embedding
        plots and image scores, `inference_batch_size` images at a time. UserError for a method without them."""
        if self.image_embedding_dim is None:
            raise UserError(f"{self.method_name} models have no image embeddings; analyze a model of a method that "
                            "has them (mae, simclr, dino, cutpaste, deepsvdd) or leave out -p to use the "
                            "pretrained backbone")
        images = self.check_images(images)
        if not len(images):
            return np.zeros((0, self.image_embedding_dim), np.float32)
        return self.in_batches(self._batch_image_embeddings, images).astype(np.float32)

    def _batch_image_embeddings(self, images):
        """(n, image_embedding_dim) numpy embeddings of one batch of checked images."""
        raise NotImplementedError

    def graph_maps(self, images):
        """(n, H, W) maps of float images in [0, 1], keras.ops only, so that export.py can trace them."""
        raise NotImplementedError(f"{self.method_name} computes its maps outside keras.ops")

    def map_and_score_graph(self, images):
        """Traceable (maps, scores), equal to maps_and_scores; override where the score is not the default."""
        maps = self.graph_maps(images)
        return maps, self.score_from_maps_graph(maps)

    def _batch_maps(self, images):
        return ops.convert_to_numpy(self.graph_maps(images))

    # ---- the shared contract
    def check_images(self, images):
        images = np.asarray(images, np.float32)
        expected = (self.input_size, self.input_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise UserError(f"images have shape {images.shape[1:]} but the model expects {expected}; "
                            "use the --size and -c the model was trained with")
        return images

    def anomaly_map(self, images):
        """(N, H, W) float32, same H, W as the input, higher = more anomalous."""
        images = self.check_images(images)
        if not len(images):
            return np.zeros(images.shape[:3], np.float32)
        return self.in_batches(self._batch_maps, images).astype(np.float32)

    def in_batches(self, function, images):
        """Apply `function` to `inference_batch_size` images at a time and concatenate (bounded memory)."""
        step = self.inference_batch_size
        return np.concatenate([np.asarray(function(images[i:i + step])) for i in range(0, len(images), step)])

    def score_from_maps(self, maps):
        smoothed = ndimage.gaussian_filter(maps, sigma=(0, self.score_sigma, self.score_sigma), mode="nearest")
        return smoothed.reshape(len(maps), -1).max(axis=1).astype(np.float32)

    def score_from_maps_graph(self, maps):
        """score_from_maps in keras.ops: the blur is linear and separable, one fixed matrix per axis."""
        rows = ops.convert_to_tensor(score_smoothing_matrix(maps.shape[1], self.score_sigma))
        columns = ops.convert_to_tensor(score_smoothing_matrix(maps.shape[2], self.score_sigma))
        return ops.max(ops.matmul(ops.matmul(rows, maps), ops.transpose(columns)), axis=(1, 2))

    def score(self, images):
        """(N,) float32 image score, higher = more anomalous."""
        return self.maps_and_scores(images)[1]

    def maps_and_scores(self, images):
        """Both in one pass, for the CLIs."""
        maps = self.anomaly_map(images)
        return maps, self.score_from_maps(maps)


@functools.lru_cache(maxsize=8)
def score_smoothing_matrix(size, sigma):
    """(size, size) float32 matrix M with M @ x == gaussian_filter1d(x, sigma, mode="nearest"): column j
    is the filtered j-th basis vector, so the matrix is scipy's own filter, edge handling included."""
    return ndimage.gaussian_filter1d(np.eye(size), sigma, axis=0, mode="nearest").astype(np.float32)
