"""resnetCAE: residual blocks (strided ones downsample) in encoder and decoder.

Half the widths of baselineCAE: with two 3x3 convolutions per block, 32..256 channels trained at
about 3 images/s on 2 CPU cores (35 minutes for 10 epochs of magnetic_tile); 16..128 trains about
2.5x faster, which keeps one category under 15 minutes."""
from autoencoder import blocks

DOWNSAMPLING = 16
STAGES = (16, 32, 64, 128)


def downsample(x, filters):
    return blocks.residual(x, filters, strides=2)


def build(input_size, channels, latent_dim=16):
    return blocks.hourglass("resnetCAE", input_size, channels, latent_dim, STAGES, downsample, blocks.residual)
