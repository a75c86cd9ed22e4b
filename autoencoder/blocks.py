"""Building blocks shared by every CAE architecture (functional Keras)."""
import keras
from keras import layers

LEAK = 0.2
# Short CPU schedules take only a few hundred steps: with Keras's default momentum 0.99 the
# inference-time BatchNorm statistics would still be mostly their initial values.
BN_MOMENTUM = 0.9


def conv(x, filters, kernel=3, strides=1, batchnorm=True):
    """Conv -> (BatchNorm) -> LeakyReLU."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=not batchnorm)(x)
    if batchnorm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.LeakyReLU(LEAK)(x)


def up_conv(x, filters, kernel=4):
    """Transposed convolution that doubles the resolution."""
    x = layers.Conv2DTranspose(filters, kernel, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.LeakyReLU(LEAK)(x)


def residual(x, filters, strides=1):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""
    shortcut = x
    if strides != 1:
        # Subsampling then a 1x1 conv is the strided 1x1 conv, without it: training a Conv2D with a 1x1
        # kernel and stride 2 crashes TensorFlow 2.21's oneDNN kernels on AVX-512 CPUs (segfault/abort).
        shortcut = layers.MaxPooling2D(pool_size=1, strides=strides, padding="same")(shortcut)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
    y = conv(x, filters, 3, strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    return layers.LeakyReLU(LEAK)(layers.Add()([shortcut, y]))


def inception(x, filters):
    """Parallel 1x1, 3x3, 5x5 (as two 3x3) and pooled branches, concatenated to `filters` channels."""
    branch = filters // 4
    one = conv(x, branch, 1)
    three = conv(conv(x, branch, 1), branch, 3)
    five = conv(conv(conv(x, branch, 1), branch, 3), branch, 3)
    pooled = conv(layers.MaxPooling2D(3, strides=1, padding="same")(x), filters - 3 * branch, 1)
    return layers.Concatenate()([one, three, five, pooled])


def output_image(x, channels):
    """Final 3x3 conv to image channels with a sigmoid, since images are in [0, 1]."""
    return layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(x)


def dense_bottleneck(x, latent_dim):
    """Squeeze the whole feature map into a `latent_dim` vector and back (a true bottleneck)."""
    side, channels = x.shape[1], x.shape[-1]
    code = layers.Conv2D(latent_dim, side, padding="valid")(x)  # (1, 1, latent_dim)
    x = layers.Conv2DTranspose(channels, side, padding="valid", use_bias=False)(code)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.LeakyReLU(LEAK)(x)


def spatial_bottleneck(x, latent_channels):
    """1x1 conv down to a few channels at 1/16 resolution: a narrow code that keeps its layout."""
    return conv(x, latent_channels, 1)


def encode(x, stage_filters, downsample):
    """Apply `downsample(x, filters)` per stage; return every stage's output (for optional skips)."""
    features = []
    for filters in stage_filters:
        x = downsample(x, filters)
        features.append(x)
    return features


def decode(x, stage_filters, refine, skips=None):
    """Upsample once per stage, concatenate a skip where one is given for that stage, then refine."""
    skips = skips or {}
    for stage, filters in enumerate(stage_filters):
        x = up_conv(x, filters)
        if stage in skips:
            x = layers.Concatenate()([x, skips[stage]])
        x = refine(x, filters)
    return x


def image_input(input_size, channels):
    return layers.Input((input_size, input_size, channels))


def hourglass(name, input_size, channels, latent_channels, stages, downsample, refine, skip_channels=0):
    """Encoder stages -> narrow spatial code -> mirrored decoder -> image.

    With `skip_channels`, the second-deepest encoder stage, squeezed to that many channels, joins
    the decoder after its first upsampling (a coarse U-Net skip that cannot copy fine detail).
    """
    inputs = image_input(input_size, channels)
    features = encode(inputs, stages, downsample)
    x = spatial_bottleneck(features[-1], latent_channels)
    skips = {0: conv(features[-2], skip_channels, 1)} if skip_channels else None
    x = decode(x, stages[::-1], refine, skips)
    return keras.Model(inputs, output_image(x, channels), name=name)
