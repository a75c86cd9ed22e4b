"""EfficientNet-Lite0/1/2 in Keras, laid out like the reference TF model so ImageNet weights map 1:1.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, and the stem (32
channels), head (1280 channels) and the repeats of the first and last stage are not scaled.
Convolutions use TF 'same' padding and BatchNorm epsilon 1e-3, as in the checkpoints.

The model takes RGB float images in [0, 1] of any size (multiples of 32 keep every stage aligned)
and normalises them itself: by default to (255 x - 127) / 128, the Lite training preprocessing;
`input_normalization="imagenet"` gives (x - mean) / std with ImageNet's channel statistics instead,
what anomalib feeds every pretrained backbone (INPUT_NORMALIZATIONS). Grayscale images must be
replicated to 3 channels by the caller.

Layer names (stem_*, block{i}_*, head_*, logits) are stable: the weight converter keys on them.
"""
import math
from collections import namedtuple

import keras
from keras import layers

Scaling = namedtuple("Scaling", "width depth resolution")
Stage = namedtuple("Stage", "repeats kernel stride expand filters")

SCALING = {
    "lite0": Scaling(width=1.0, depth=1.0, resolution=224),
    "lite1": Scaling(width=1.0, depth=1.1, resolution=240),
    "lite2": Scaling(width=1.1, depth=1.2, resolution=260),
}

# EfficientNet-B0 stages, before width/depth scaling.
STAGES = (
    Stage(repeats=1, kernel=3, stride=1, expand=1, filters=16),
    Stage(repeats=2, kernel=3, stride=2, expand=6, filters=24),
    Stage(repeats=2, kernel=5, stride=2, expand=6, filters=40),
    Stage(repeats=3, kernel=3, stride=2, expand=6, filters=80),
    Stage(repeats=3, kernel=5, stride=1, expand=6, filters=112),
    Stage(repeats=4, kernel=5, stride=2, expand=6, filters=192),
    Stage(repeats=1, kernel=3, stride=1, expand=6, filters=320),
)
STEM_FILTERS = 32
STEM_STRIDE = 2
HEAD_FILTERS = 1280
IMAGENET_CLASSES = 1000
BN_EPSILON = 1e-3
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# [0, 1] RGB -> network input, per channel: x * scale + offset.
INPUT_NORMALIZATIONS = {
    "lite": {"scale": 255 / 128, "offset": -127 / 128},
    "imagenet": {"scale": [1 / std for std in IMAGENET_STD],
                 "offset": [-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD)]},
}


def stage_strides():
    """Total stride of the feature map at the end of each stage: (2, 4, 8, 16, 16, 32, 32)."""
    strides, total = [], STEM_STRIDE
    for stage in STAGES:
        total *= stage.stride
        strides.append(total)
    return tuple(strides)


def round_filters(filters, width, divisor=8):
    """Scale a channel count by `width`, rounded to a multiple of `divisor` (reference TF rule)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stage_repeats(stage_index, depth):
    """Number of blocks in a stage; Lite keeps the first and last stage at one block."""
    repeats = STAGES[stage_index].repeats
    if stage_index in (0, len(STAGES) - 1):
        return repeats
    return int(math.ceil(depth * repeats))


def classifier_model(variant):
    """The full ImageNet classifier: [0, 1] RGB images -> logits over 1000 classes."""
    inputs = keras.Input(shape=(None, None, 3), dtype="float32", name="image")
    x = _stages(inputs, variant, last_stage=len(STAGES) - 1)[-1]
    x = _conv_bn_relu6(x, HEAD_FILTERS, kernel=1, stride=1, name="head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    # Dropout of the reference model is left out: it only matters for training the classifier.
    logits = layers.Dense(IMAGENET_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name=f"efficientnet_{variant}")


def features_model(variant, stage_indices, input_normalization="lite"):
    """[0, 1] RGB images -> outputs of the last block of each stage in `stage_indices` (in that order).

    Only the stages up to the deepest requested one are built.
    """
    inputs = keras.Input(shape=(None, None, 3), dtype="float32", name="image")
    stage_outputs = _stages(inputs, variant, last_stage=max(stage_indices), input_normalization=input_normalization)
    outputs = [stage_outputs[index] for index in stage_indices]
    return keras.Model(inputs, outputs, name=f"efficientnet_{variant}_features")


def _stages(inputs, variant, last_stage, input_normalization="lite"):
    """Normalise, stem, then stages 0..last_stage; return the output of every built stage."""
    width = SCALING[variant].width
    x = layers.Rescaling(**INPUT_NORMALIZATIONS[input_normalization], name="normalize")(inputs)
    x = _conv_bn_relu6(x, STEM_FILTERS, kernel=3, stride=STEM_STRIDE, name="stem")
    stage_outputs, block_index = [], 0
    for stage_index, stage in enumerate(STAGES[:last_stage + 1]):
        filters = round_filters(stage.filters, width)
        for repeat in range(stage_repeats(stage_index, SCALING[variant].depth)):
            stride = stage.stride if repeat == 0 else 1
            x = _inverted_residual(x, filters, stage.kernel, stride, stage.expand, name=f"block{block_index}")
            block_index += 1
        stage_outputs.append(x)
    return stage_outputs


def _inverted_residual(x, filters, kernel, stride, expand, name):
    """MBConv without squeeze-excitation: 1x1 expand, depthwise, 1x1 linear projection, skip if shapes match."""
    inputs, in_filters = x, x.shape[-1]
    if expand != 1:
        x = _conv_bn_relu6(x, in_filters * expand, kernel=1, stride=1, name=f"{name}_expand")
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"{name}_dw_relu6")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_project_bn")(x)
    if stride == 1 and in_filters == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _conv_bn_relu6(x, filters, kernel, stride, name):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
