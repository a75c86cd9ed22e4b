"""Locally aware patch features of a frozen pretrained backbone, shared by PatchCore and PaDiM.

Two middle stages of EfficientNet-Lite (by default stages 2 and 4, the last at stride 8 and 16: 40 +
112 = 152 channels for Lite0; `--feature-strides` picks others by stride, `--feature-stages` by index,
which also reaches stages 3 and 5, those that end earlier at stride 16 and 32) are each averaged over
their 3x3 neighbourhood, so a patch feature also describes its surroundings (PatchCore, Roth et al.
2022, section 3.1). The deeper maps are upsampled (bilinear) to the grid of the finest and all are
concatenated: (N, S, S, C) images -> (N, S/s, S/s, D) features, s the finest stride. `--grid-stride`
sets s instead: stages finer than it are average-pooled onto that grid (each grid patch then gets the
mean of the finer patches it covers), coarser ones upsampled. So the 24-channel stride-4 stage can add
its detail to a stride-8 grid without quadrupling the patches to search. Deeper stages
(16 and 32) see larger regions, which suits textures and large defects; the stride-32 stages cost more
than the coarser grid saves (about 15 % slower on CPU).

The 3x3 average counts the zero padding at the border, as the PyTorch reference implementations
(AvgPool2d(3, 1, 1), padding included) do: the outermost ring of each stage map shrinks towards zero
(edges to 6/9, corners to 4/9), and with it the distances there. That matters far more than it looks:
image borders are where normal images vary most (the part's outline, the frame), and on the bench
categories the padded average raised PatchCore's mean image AUROC from 0.891 to 0.938 (kolektorsdd
0.710 -> 0.827) over one that excludes the padding (Keras "same" pooling).

The frozen backbone runs with its BatchNormalizations folded into the convolutions before them
(`fold_batch_norms`: same features, about 25% faster on CPU).

`PatchFeatureModel` is the base of both methods: feature extraction with progress, and the step
from a grid of patch scores to a full-size anomaly map (bilinear upsampling + Gaussian blur, sigma
4 as in both papers).
"""
import functools
import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from backbones.pretrained import STAGE_STRIDES, stage_extractor, stages_at
from processing.anomaly_model import AnomalyModel
from processing.errors import UserError
from processing.progress import report

FEATURE_STAGES = (2, 4)  # the last stages at stride 8 and 16
STRIDE_CHOICES = (4, 8, 16, 32)
STAGE_CHOICES = tuple(stage for stage, stride in enumerate(STAGE_STRIDES) if stride in STRIDE_CHOICES)  # 1-6
MAP_SIGMA = 4.0
PROGRESS_EVERY_SECONDS = 5.0


def patch_feature_model(variant, input_size, channels, stages=FEATURE_STAGES, score_stages=None, grid_stride=None,
                        input_normalization="lite"):
    """Functional model: (N, S, S, channels) images in [0, 1] -> (N, h, w, D) patch features, on the
    grid of `grid_stride` (default: the finest of `stages`).

    With `score_stages`, a second output: the features of those stages on their own grid (the same
    `grid_stride`, else their finest), from the same backbone pass (PatchCore's image-score bank).
    Grayscale is replicated to RGB inside the model, so callers pass images as they are.
    `input_normalization` is the backbone's (backbones.pretrained.stage_extractor).
    """
    images = keras.Input(shape=(input_size, input_size, channels), name="images")
    rgb = layers.Concatenate(name="to_rgb")([images] * 3) if channels == 1 else images
    needed = tuple(sorted(set(stages) | set(score_stages or ())))
    backbone = fold_batch_norms(stage_extractor(variant, needed, input_normalization=input_normalization))
    stage_maps = backbone(rgb)
    stage_maps = stage_maps if isinstance(stage_maps, list) else [stage_maps]  # one stage: a bare tensor
    local_means = {}
    for stage, stage_map in zip(needed, stage_maps):
        padded = layers.ZeroPadding2D(1, name=f"zero_border_stage{stage}")(stage_map)
        local_means[stage] = layers.AveragePooling2D(pool_size=3, strides=1, padding="valid",
                                                     name=f"local_mean_stage{stage}")(padded)
    outputs = [_on_one_grid(local_means, stages, grid_stride, prefix="")]
    if score_stages:
        outputs.append(_on_one_grid(local_means, score_stages, grid_stride, prefix="score_"))
    return keras.Model(images, outputs if score_stages else outputs[0], name=f"patch_features_{variant}")


def _on_one_grid(local_means, stages, grid_stride, prefix):
    """The local means of `stages` on the grid of `grid_stride` (default: the finest stage's), finer
    ones average-pooled and coarser ones upsampled (bilinear) onto it, concatenated."""
    stages = sorted(stages)  # stages never get finer, so the first has the finest grid
    finest = STAGE_STRIDES[stages[0]]
    side = local_means[stages[0]].shape[1] * finest // (grid_stride or finest)
    aggregated = []
    for stage in stages:
        x = local_means[stage]
        if x.shape[1] > side:
            x = layers.AveragePooling2D(x.shape[1] // side, name=f"{prefix}pool_stage{stage}")(x)
        elif x.shape[1] < side:
            x = layers.Resizing(side, side, interpolation="bilinear", name=f"{prefix}upsample_stage{stage}")(x)
        aggregated.append(x)
    return layers.Concatenate(name=f"{prefix}patch_features")(aggregated) if len(aggregated) > 1 else aggregated[0]


def fold_batch_norms(model):
    """A copy of a frozen functional model in which every BatchNormalization fed by a convolution is
    merged into that convolution (kernel scaled per output channel, bias added).

    The outputs are the same up to float rounding; inference is about 25% faster on CPU because
    TensorFlow then fuses convolution, bias and ReLU6 into one op. Assumes, as in EfficientNet-Lite,
    that such a convolution feeds nothing but its BatchNormalization.
    """
    convolutions = [layer for layer in model.layers if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D))]
    norm_after = {}  # convolution name -> the BatchNormalization it feeds
    for norm in (layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)):
        feeding = [conv for conv in convolutions if conv.output is norm.input]
        if feeding:
            norm_after[feeding[0].name] = norm
    folded_norms = {norm.name for norm in norm_after.values()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in norm_after:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        # A folded BatchNormalization is left out of the graph: every layer there costs time to trace.
        return args[0] if layer.name in folded_norms else layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in folded.layers:
        if layer.name in norm_after:
            layer.set_weights(_folded_weights(model.get_layer(layer.name), norm_after[layer.name]))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    folded.trainable = False
    return folded


def _folded_weights(conv, norm):
    gamma, beta, mean, variance = norm.get_weights()
    scale = gamma / np.sqrt(variance + norm.epsilon)
    kernel, *bias = conv.get_weights()
    bias = bias[0] if bias else np.zeros_like(mean)
    # Output channels are the last kernel axis; a depthwise kernel (kh, kw, C, M) flattens them as C * M.
    kernel = (kernel.reshape(*kernel.shape[:-2], -1) * scale).reshape(kernel.shape) \
        if isinstance(conv, layers.DepthwiseConv2D) else kernel * scale
    return [kernel, (bias - mean) * scale + beta]


def upsample_and_blur(patch_scores, size, sigma=MAP_SIGMA):
    """(n, h, h) patch scores -> (n, size, size) float32 map: bilinear upsampling, then a Gaussian blur.

    The blur has radius round(4 sigma) and reflect padding, as anomalib's GaussianBlur2d. Both steps
    are linear and separable, so they are applied as one (size, h) matrix A: map = A @ scores @ A.T.
    That is about 50x faster on CPU than resizing and convolving with a 33-tap kernel.
    """
    return ops.convert_to_numpy(upsample_and_blur_graph(patch_scores, size, sigma))


def upsample_and_blur_graph(patch_scores, size, sigma=MAP_SIGMA):
    """upsample_and_blur as a keras.ops tensor, traceable into an exported graph."""
    operator = ops.convert_to_tensor(_upsample_blur_operator(patch_scores.shape[1], size, float(sigma)))
    return ops.matmul(ops.matmul(operator, ops.convert_to_tensor(patch_scores, "float32")), ops.transpose(operator))


@functools.lru_cache(maxsize=8)
def _upsample_blur_operator(grid, size, sigma):
    """(size, grid) float32 matrix: 1-D bilinear resize (half-pixel centres) followed by the blur."""
    # The resize weights are read off by resizing each basis vector, as (grid x 1)-pixel images.
    basis = np.eye(grid, dtype=np.float32)[:, :, None, None]
    with tf.init_scope():  # eagerly, also when export.py's trace is the first to ask for this operator
        upsample = ops.convert_to_numpy(ops.image.resize(basis, (size, 1), interpolation="bilinear"))[:, :, 0, 0].T
    radius = min(int(4 * sigma + 0.5), size - 1)  # reflect padding needs radius < size
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    padded_identity = np.pad(np.eye(size, dtype=np.float32), ((radius, radius), (0, 0)), mode="reflect")
    blur = sum(weight * padded_identity[offset:offset + size] for offset, weight in enumerate(kernel))
    return (blur @ upsample).astype(np.float32)


def chosen_stages(strides, stages, which):
    """The backbone stages `--{which}-strides` or `--{which}-stages` pick (not both), distinct and in
    increasing order; None when neither is given. UserError naming the flag for a bad value."""
    if strides is not None and stages is not None:
        raise UserError(f"give --{which}-strides or --{which}-stages, not both")
    if strides is None and stages is None:
        return None
    by_index = stages is not None
    flag, values, choices = ((f"--{which}-stages", stages, STAGE_CHOICES) if by_index
                             else (f"--{which}-strides", strides, STRIDE_CHOICES))
    checked = tuple(sorted(set(int(value) for value in values)))
    if not checked or not set(checked) <= set(choices):
        raise UserError(f"{flag} must be one or more of {', '.join(map(str, choices))}, "
                        f"got {' '.join(map(str, values)) or 'none'}")
    return checked if by_index else stages_at(checked)


class PatchFeatureModel(AnomalyModel):
    """Base for methods that fit statistics of patch features of normal images (no gradient training).

    Subclasses implement `_graph_patch_scores(features) -> (n, h, w)` in keras.ops and may override
    `_image_scores` (keras.ops too). Inference runs them, with the backbone, as one compiled function:
    the graph export.py traces, so both give the same maps. With `score_stages` the features they get
    are a pair: (map features, image-score features).
    """

    trains_by_gradient = False
    default_validation_fraction = 0.0  # no epochs to validate: every normal image goes into the statistics

    def __init__(self, backbone="lite0", feature_strides=None, feature_stages=None, score_strides=None,
                 score_stages=None, grid_stride=None, input_normalization="lite", **kwargs):
        super().__init__(**kwargs)
        if grid_stride is not None and grid_stride not in STRIDE_CHOICES:
            raise UserError(f"--grid-stride must be one of {', '.join(map(str, STRIDE_CHOICES))}, got {grid_stride}")
        self.backbone = backbone
        self.grid_stride = grid_stride
        self.input_normalization = input_normalization
        self.feature_stages = chosen_stages(feature_strides, feature_stages, "feature") or FEATURE_STAGES
        self.score_stages = chosen_stages(score_strides, score_stages, "score")
        if self.score_stages == self.feature_stages:
            self.score_stages = None  # the same features: one set serves maps and image scores
        self.patch_features = patch_feature_model(backbone, self.input_size, self.channels, self.feature_stages,
                                                  self.score_stages, grid_stride, input_normalization)
        outputs = self.patch_features.outputs
        _, self.grid_height, self.grid_width, self.feature_dim = outputs[0].shape
        self.score_dim = outputs[1].shape[-1] if self.score_stages else None

    def get_config(self):
        # Models saved before stages could be named carry feature_strides / score_strides: still accepted.
        return {**super().get_config(), "backbone": self.backbone, "feature_stages": list(self.feature_stages),
                "score_stages": list(self.score_stages) if self.score_stages else None,
                "grid_stride": self.grid_stride, "input_normalization": self.input_normalization}

    # ---- what subclasses implement
    def _graph_patch_scores(self, features):
        raise NotImplementedError

    def _image_scores(self, features, patch_scores, maps):
        """(n,) image scores, keras.ops, shared by inference and export; default: the map's max (PaDiM's rule)."""
        return ops.max(maps, axis=(1, 2))

    # ---- features
    def extract(self, images):
        """(n, h, w, D) float32 numpy features of one batch (a pair of them with `score_stages`), by a
        compiled function (about 2x faster than an eager call)."""
        features = self._compiled_features(images)
        return tuple(ops.convert_to_numpy(f) for f in features) if self.score_stages else ops.convert_to_numpy(features)

    @functools.cached_property
    def _compiled_features(self):
        return self._compiled(self.patch_features)

    @functools.cached_property
    def _compiled_maps_and_scores(self):
        return self._compiled(self.map_and_score_graph)

    def _compiled(self, function):
        # Traced once for any batch size. predict_on_batch traces again for the first batch of another
        # size (a test set's last batch), which cost 0.5 s on 2 cores: a third of glass_fiber's test.
        # autograph=False: the graph code is plain keras.ops with Python branches on settings only, and
        # autograph's rewriting of its source took 1 s of a 1.4 s trace, more than glass_fiber's 38
        # test images take to score.
        images = tf.TensorSpec((None, self.input_size, self.input_size, self.channels), tf.float32)
        return tf.function(function, input_signature=[images], autograph=False)

    def calibration_features(self, images):
        """What calibrate() gets per batch from dataset_features: by default `extract`."""
        return self.extract(images)

    def dataset_features(self, normal_images, extract=None):
        """Yield the calibration features (or `extract`'s) of each batch of a tf.data dataset of images,
        printing progress."""
        total_batches = int(normal_images.cardinality())
        started = last_report = time.perf_counter()
        n_images = 0
        for n_batches, batch in enumerate(normal_images, start=1):
            batch = np.asarray(batch, np.float32)
            features = (extract or self.calibration_features)(batch)
            n_images += len(batch)
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
        # One graph from images to scores: the search then runs on TensorFlow's threads right after the
        # backbone, with no copies out to numpy in between (magnetic_tile with the image-score bank:
        # 31-33 -> 29-30 ms per image on 2 cores, measured alternately).
        maps, scores = self._compiled_maps_and_scores(images)
        return ops.convert_to_numpy(maps), ops.convert_to_numpy(scores).astype(np.float32)

    def map_and_score_graph(self, images):
        features = self.patch_features(images)
        patch_scores = self._graph_patch_scores(features)
        maps = upsample_and_blur_graph(patch_scores, self.input_size)
        return maps, self._image_scores(features, patch_scores, maps)

    def _batch_maps(self, images):
        return self._batch_maps_and_scores(images)[0]

    def maps_and_scores(self, images):
        images = self.check_images(images)
        step = self.inference_batch_size
        parts = [self._batch_maps_and_scores(images[i:i + step]) for i in range(0, len(images), step)]
        if not parts:
            return np.zeros(images.shape[:3], np.float32), np.zeros(0, np.float32)
        return np.concatenate([maps for maps, _ in parts]), np.concatenate([scores for _, scores in parts])
