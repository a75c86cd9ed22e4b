"""resnetCAE: residual blocks (strided ones downsample) in encoder and decoder."""
from autoencoder import blocks

DOWNSAMPLING = 16
STAGES = (32, 64, 128, 256)


def downsample(x, filters):
    return blocks.residual(x, filters, strides=2)


def build(input_size, channels, latent_dim=16):
    return blocks.hourglass("resnetCAE", input_size, channels, latent_dim, STAGES, downsample, blocks.residual)
