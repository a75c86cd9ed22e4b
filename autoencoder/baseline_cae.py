"""baselineCAE: plain conv + max-pool encoder, a narrow spatial code at 1/16 resolution, conv decoder."""
import keras
from keras import layers

from autoencoder import blocks

DOWNSAMPLING = 16
STAGES = (32, 64, 128, 256)


def _down(x, filters):
    return layers.MaxPooling2D(2)(blocks.conv(x, filters))


def build(input_size, channels, latent_dim=16):
    inputs = blocks.image_input(input_size, channels)
    x = blocks.encode(inputs, STAGES, _down)[-1]
    x = blocks.spatial_bottleneck(x, latent_dim)
    x = blocks.decode(x, STAGES[::-1], blocks.conv)
    return keras.Model(inputs, blocks.output_image(x, channels), name="baselineCAE")
