"""Locally aware patch features of a frozen pretrained backbone, shared by PatchCore and PaDiM.

Two middle stages of EfficientNet-Lite (stride 8 and 16: 40 + 112 = 152 channels for Lite0) are
each averaged over their 3x3 neighbourhood, so a patch feature also describes its surroundings
(PatchCore, Roth et al. 2022, section 3.1). The deeper map is upsampled (bilinear) to the stride-8
grid and the two are concatenated: (N, S, S, C) images -> (N, S/8, S/8, D) features.

The 3x3 average excludes the zero padding at the border (Keras "same" average pooling), where the
PyTorch reference averages padding zeros in; only the outermost ring of patches differs.

`PatchFeatureModel` is the base of both methods: feature extraction with progress, and the step
from a grid of patch scores to a full-size anomaly map (bilinear upsampling + Gaussian blur, sigma
4 as in both papers).
"""
import time

import keras
import numpy as np
from keras import layers, ops

from backbones.pretrained import feature_extractor
from processing.anomaly_model import AnomalyModel
from processing.errors import UserError
from processing.progress import report

FEATURE_STRIDES = (8, 16)
MAP_SIGMA = 4.0
PROGRESS_EVERY_SECONDS = 5.0


def patch_feature_model(variant, input_size, channels, strides=FEATURE_STRIDES):
    """Functional model: (N, S, S, channels) images in [0, 1] -> (N, h, w, D) patch features.

    Grayscale is replicated to RGB inside the model, so callers pass images as they are.
    """
    images = keras.Input(shape=(input_size, input_size, channels), name="images")
    rgb = layers.Concatenate(name="to_rgb")([images] * 3) if channels == 1 else images
    backbone = feature_extractor(variant, strides=strides)
    stage_maps = backbone(rgb)
    stage_maps = stage_maps if isinstance(stage_maps, list) else [stage_maps]  # one stride: a bare tensor
    grid = stage_maps[0].shape[1:3]
    aggregated = []
    for stride, stage_map in zip(strides, stage_maps):
        x = layers.AveragePooling2D(pool_size=3, strides=1, padding="same", name=f"local_mean_s{stride}")(stage_map)
        if tuple(x.shape[1:3]) != tuple(grid):
            x = layers.Resizing(*grid, interpolation="bilinear", name=f"upsample_s{stride}")(x)
        aggregated.append(x)
    features = layers.Concatenate(name="patch_features")(aggregated) if len(aggregated) > 1 else aggregated[0]
    return keras.Model(images, features, name=f"patch_features_{variant}")


def upsample_and_blur(patch_scores, size, sigma=MAP_SIGMA):
    """(n, h, w) patch scores -> (n, size, size) float32 map: bilinear upsampling, then a Gaussian blur.

    The blur is separable with radius round(4 sigma) and reflect padding, as anomalib's GaussianBlur2d.
    """
    maps = ops.image.resize(ops.expand_dims(ops.convert_to_tensor(patch_scores, "float32"), -1),
                            (size, size), interpolation="bilinear")
    radius = min(int(4 * sigma + 0.5), size - 1)  # reflect padding needs radius < size
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    maps = ops.pad(maps, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="reflect")
    maps = ops.conv(maps, kernel.reshape(-1, 1, 1, 1), padding="valid")
    maps = ops.conv(maps, kernel.reshape(1, -1, 1, 1), padding="valid")
    return ops.convert_to_numpy(maps[..., 0])


class PatchFeatureModel(AnomalyModel):
    """Base for methods that fit statistics of patch features of normal images (no gradient training).

    Subclasses implement `_patch_scores(features) -> (n, h, w)` and may override `_image_scores`.
    """

    trains_by_gradient = False

    def __init__(self, backbone="lite0", **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.patch_features = patch_feature_model(backbone, self.input_size, self.channels)
        _, self.grid_height, self.grid_width, self.feature_dim = self.patch_features.outputs[0].shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}

    # ---- what subclasses implement
    def _patch_scores(self, features):
        raise NotImplementedError

    def _image_scores(self, features, patch_scores, maps):
        """(n,) image scores; default: the max of the anomaly map (PaDiM's rule)."""
        return maps.reshape(len(maps), -1).max(axis=1)

    # ---- features
    def extract(self, images):
        """(n, h, w, D) float32 numpy features of one batch, by the compiled predict function
        (about 2x faster than an eager call)."""
        return self.patch_features.predict_on_batch(images)

    def dataset_features(self, normal_images):
        """Yield the features of each batch of a tf.data dataset of images, printing progress."""
        total_batches = int(normal_images.cardinality())
        started = last_report = time.perf_counter()
        n_images = 0
        for n_batches, batch in enumerate(normal_images, start=1):
            features = self.extract(np.asarray(batch, np.float32))
            n_images += len(features)
            yield features
            now = time.perf_counter()
            if now - last_report >= PROGRESS_EVERY_SECONDS or n_batches == total_batches:
                last_report = now
                of_total = f"/{total_batches}" if total_batches > 0 else ""
                report(f"{self.method_name} features: batch {n_batches}{of_total}, {n_images} images, "
                       f"{n_images / (now - started):.1f} img/s")
        if not n_images:
            raise UserError(f"{self.method_name} needs normal training images to calibrate; train/good gave none")

    # ---- maps and scores
    def _batch_maps_and_scores(self, images):
        features = self.extract(images)
        patch_scores = self._patch_scores(features)
        maps = upsample_and_blur(patch_scores, self.input_size)
        return maps, np.asarray(self._image_scores(features, patch_scores, maps), np.float32)

    def _batch_maps(self, images):
        return self._batch_maps_and_scores(images)[0]

    def maps_and_scores(self, images):
        images = self.check_images(images)
        step = self.inference_batch_size
        parts = [self._batch_maps_and_scores(images[i:i + step]) for i in range(0, len(images), step)]
        if not parts:
            return np.zeros(images.shape[:3], np.float32), np.zeros(0, np.float32)
        return np.concatenate([maps for maps, _ in parts]), np.concatenate([scores for _, scores in parts])
