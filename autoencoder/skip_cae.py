"""skipCAE: baselineCAE with a U-Net style skip connection from the 1/8-resolution encoder stage.

Only that coarse stage is skipped, squeezed to a few channels: fine skips would let the decoder
copy the input, defects included, and the residual map would go blank.
"""
from autoencoder import blocks
from autoencoder.baseline_cae import STAGES, downsample

DOWNSAMPLING = 16
SKIP_CHANNELS = 8


def build(input_size, channels, latent_dim=16):
    return blocks.hourglass("skipCAE", input_size, channels, latent_dim, STAGES, downsample, blocks.conv,
                            skip_channels=SKIP_CHANNELS)
