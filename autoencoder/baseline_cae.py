"""baselineCAE: plain conv + max-pool encoder, a narrow spatial code at 1/16 resolution, conv decoder."""
from keras import layers

from autoencoder import blocks

DOWNSAMPLING = 16
STAGES = (32, 64, 128, 256)


def downsample(x, filters):
    return layers.MaxPooling2D(2)(blocks.conv(x, filters))


def build(input_size, channels, latent_dim=16):
    return blocks.hourglass("baselineCAE", input_size, channels, latent_dim, STAGES, downsample, blocks.conv)
