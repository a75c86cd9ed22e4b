"""Encoders phi for Deep SVDD, all without bias terms, and the patch grid they are applied to.

Ruff et al. (2018, Proposition 2) show that a bias term lets the network map every input to the
centre c with zero weights (the trivial "hypersphere collapse"), and a bounded last activation would
let it saturate to c. So every convolution and dense layer here has `use_bias=False`, the hidden
activations are leaky ReLUs, the last layer is linear, and there is no BatchNormalization (its beta
is a bias, and its batch statistics would make training and inference embeddings differ).

* `patch_encoder`: the paper's LeNet-style CNN (2x2 max pooling, 32 / 64 / 128 channels, a dense
  layer to the latent size; 3x3 instead of 5x5 convolutions, see KERNEL) on one `patch_size` x
  `patch_size` patch. Deep SVDD runs it on every patch of `overlapping_patches` (Patch SVDD, Yi and
  Yoon 2020).
* `patch_decoder`: its mirror image, only for the optional autoencoder pretraining of the paper.
* `backbone_encoder`: the frozen pretrained EfficientNet-Lite patch features (memorybank/features.py,
  stride 8) with a trainable bias-free 1x1-convolution head; each grid cell is a patch.
"""
import keras
import numpy as np
from keras import layers, ops

from autoencoder import blocks
from memorybank.features import patch_feature_model

KERNEL = 3  # the paper uses 5x5; 3x3 costs 2.8x less on the overlapping patches, a CPU budget choice
MIN_CODE_SIDE = 4  # halve the patch until its side is 4 (32 px -> 4 px: the paper's CIFAR-10 net)
STAGE_FILTERS = (32, 64, 128)


def grid_size(input_size, stride):
    """Patches per side: one per `stride` pixels, so the grid cells tile the image like the map's pixels."""
    return -(-input_size // stride)


def overlapping_patches(images, patch_size, stride):
    """(n, S, S, C) -> (n, g, g, patch_size, patch_size, C), g = grid_size(S, stride).

    The image is reflect-padded so that patch (i, j) is centred on grid cell (i, j) of an S / g grid:
    bilinear upsampling of the (g, g) patch scores then puts each score on its patch. Gathers rather
    than keras.ops.image.extract_patches, which is an identity-kernel convolution as costly as the
    encoder itself.
    """
    side, channels = images.shape[1], images.shape[-1]
    grid = grid_size(side, stride)
    pad = (grid - 1) * stride + patch_size - side
    before, after = pad // 2, pad - pad // 2
    padded = ops.pad(images, [[0, 0], [before, after], [before, after], [0, 0]], mode="reflect")
    index = (np.arange(grid)[:, None] * stride + np.arange(patch_size)[None, :]).reshape(-1)
    rows = ops.take(ops.take(padded, index, axis=1), index, axis=2)  # (n, g * P, g * P, C)
    rows = ops.reshape(rows, (-1, grid, patch_size, grid, patch_size, channels))
    return ops.transpose(rows, (0, 1, 3, 2, 4, 5))


def stage_filters(patch_size):
    """Channels of each conv + pool stage: one stage per halving of the patch down to MIN_CODE_SIDE."""
    stages, side = 0, patch_size
    while side % 2 == 0 and side // 2 >= MIN_CODE_SIDE:
        side //= 2
        stages += 1
    return [STAGE_FILTERS[min(i, len(STAGE_FILTERS) - 1)] for i in range(stages)]


def patch_encoder(patch_size, channels, latent_dim):
    """(m, P, P, C) patches in [0, 1] -> (m, latent_dim) embeddings."""
    inputs = keras.Input((patch_size, patch_size, channels), name="patches")
    x = inputs
    for filters in stage_filters(patch_size):
        x = layers.Conv2D(filters, KERNEL, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D(2)(layers.LeakyReLU(blocks.LEAK)(x))
    codes = layers.Dense(latent_dim, use_bias=False, name="code")(layers.Flatten()(x))
    return keras.Model(inputs, codes, name="svdd_patch_encoder")


def patch_decoder(patch_size, channels, latent_dim):
    """(m, latent_dim) -> (m, P, P, C): patch_encoder mirrored with the CAE blocks (pretraining only)."""
    filters = stage_filters(patch_size)
    side = patch_size // 2 ** len(filters)
    codes = keras.Input((latent_dim,), name="codes")
    x = layers.Dense(side * side * filters[-1], use_bias=False)(codes)
    x = layers.LeakyReLU(blocks.LEAK)(layers.Reshape((side, side, filters[-1]))(x))
    for width in reversed(filters):
        x = blocks.up_conv(x, width)
    return keras.Model(codes, blocks.output_image(x, channels), name="svdd_patch_decoder")


def backbone_encoder(variant, input_size, channels, latent_dim):
    """(n, S, S, C) images -> (n, S/8, S/8, latent_dim): frozen pretrained features + bias-free head."""
    features = patch_feature_model(variant, input_size, channels)
    x = layers.Conv2D(latent_dim, 1, use_bias=False, name="head_hidden")(features.output)
    x = layers.Conv2D(latent_dim, 1, use_bias=False, name="head_code")(layers.LeakyReLU(blocks.LEAK)(x))
    return keras.Model(features.input, x, name=f"svdd_{variant}_encoder")
