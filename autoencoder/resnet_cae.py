"""resnetCAE: residual blocks (strided ones downsample) in encoder and decoder."""
import keras

from autoencoder import blocks

DOWNSAMPLING = 16
STAGES = (32, 64, 128, 256)


def _down(x, filters):
    return blocks.residual(x, filters, strides=2)


def build(input_size, channels, latent_dim=16):
    inputs = blocks.image_input(input_size, channels)
    x = blocks.encode(inputs, STAGES, _down)[-1]
    x = blocks.spatial_bottleneck(x, latent_dim)
    x = blocks.decode(x, STAGES[::-1], blocks.residual)
    return keras.Model(inputs, blocks.output_image(x, channels), name="resnetCAE")
