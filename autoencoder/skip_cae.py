"""skipCAE: baselineCAE with a U-Net style skip connection from the 1/8-resolution encoder stage.

Only that coarse stage is skipped, squeezed to a few channels: fine skips would let the decoder
copy the input, defects included, and the residual map would go blank.
"""
import keras

from autoencoder import blocks
from autoencoder.baseline_cae import STAGES, _down

DOWNSAMPLING = 16
SKIP_CHANNELS = 8


def build(input_size, channels, latent_dim=16):
    inputs = blocks.image_input(input_size, channels)
    features = blocks.encode(inputs, STAGES, _down)
    x = blocks.spatial_bottleneck(features[-1], latent_dim)
    skip = blocks.conv(features[-2], SKIP_CHANNELS, 1)  # 1/8 resolution, joins after the first upsampling
    x = blocks.decode(x, STAGES[::-1], blocks.conv, skips={0: skip})
    return keras.Model(inputs, blocks.output_image(x, channels), name="skipCAE")
