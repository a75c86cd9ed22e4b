"""mvtecCAE: the convolutional autoencoder of Bergmann et al. (2019), "Improving Unsupervised Defect
Segmentation by Applying Structural Similarity to Autoencoders": strided 4x4 / 3x3 convolutions down to
1/16 resolution, a latent vector (100-d by default) and a mirrored decoder."""
import keras

from autoencoder import blocks

DOWNSAMPLING = 16


def build(input_size, channels, latent_dim=100):
    inputs = blocks.image_input(input_size, channels)
    x = blocks.conv(inputs, 32, 4, 2)
    x = blocks.conv(x, 32, 4, 2)
    x = blocks.conv(x, 32, 3)
    x = blocks.conv(x, 64, 4, 2)
    x = blocks.conv(x, 64, 3)
    x = blocks.conv(x, 128, 4, 2)
    x = blocks.conv(x, 64, 3)
    x = blocks.conv(x, 32, 3)
    x = blocks.dense_bottleneck(x, latent_dim)
    x = blocks.conv(x, 64, 3)
    x = blocks.conv(x, 128, 3)
    x = blocks.up_conv(x, 64)
    x = blocks.conv(x, 64, 3)
    x = blocks.up_conv(x, 32)
    x = blocks.conv(x, 32, 3)
    x = blocks.up_conv(x, 32)
    x = blocks.up_conv(x, 32)
    return keras.Model(inputs, blocks.output_image(x, channels), name="mvtecCAE")
