"""inceptionCAE: inception modules (parallel 1x1 / 3x3 / 5x5 / pooled branches) in encoder and decoder."""
import keras
from keras import layers

from autoencoder import blocks

DOWNSAMPLING = 16
STAGES = (32, 64, 128, 128)


def _down(x, filters):
    return layers.MaxPooling2D(2)(blocks.inception(x, filters))


def build(input_size, channels, latent_dim=16):
    inputs = blocks.image_input(input_size, channels)
    x = blocks.encode(inputs, STAGES, _down)[-1]
    x = blocks.spatial_bottleneck(x, latent_dim)
    x = blocks.decode(x, STAGES[::-1], blocks.inception)
    return keras.Model(inputs, blocks.output_image(x, channels), name="inceptionCAE")
