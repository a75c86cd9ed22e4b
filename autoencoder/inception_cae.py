"""inceptionCAE: inception modules (parallel 1x1 / 3x3 / 5x5 / pooled branches) in encoder and decoder."""
from keras import layers

from autoencoder import blocks

DOWNSAMPLING = 16
STAGES = (32, 64, 128, 128)


def downsample(x, filters):
    return layers.MaxPooling2D(2)(blocks.inception(x, filters))


def build(input_size, channels, latent_dim=16):
    return blocks.hourglass("inceptionCAE", input_size, channels, latent_dim, STAGES, downsample, blocks.inception)
