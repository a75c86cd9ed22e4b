"""Reconstruction losses and residual maps with keras.ops (SSIM, multi-scale SSIM, L2).

Images are in [0, 1], so the SSIM data range is 1. SSIM uses an 11x11 Gaussian window with
sigma 1.5 and K1=0.01, K2=0.03 (Wang et al. 2004), the same as tf.image.ssim; inputs are
symmetric-padded (as scipy.ndimage and skimage) so the SSIM map has the image's own height and width.
"""
import numpy as np
from keras import ops

from processing.errors import UserError

LOSSES = ("ssim", "mssim", "l2")
RESIDUALS = ("ssim", "l2")
DATA_RANGE = 1.0
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_1d():
    offsets = np.arange(WINDOW) - (WINDOW - 1) / 2
    g = np.exp(-(offsets ** 2) / (2 * SIGMA ** 2))
    return (g / g.sum()).astype(np.float32)


def _local_means(*tensors):
    """Gaussian-weighted local means of several tensors in one pass.

    The Gaussian is separable, so two 1-D passes (2 x 11 taps) replace the 11 x 11 window: about
    5x less work, which matters most for the gradient during training.
    """
    stacked = ops.concatenate(tensors, axis=-1)
    channels = stacked.shape[-1]
    g = _gaussian_1d()
    vertical = np.tile(g[:, None, None, None], (1, 1, channels, 1))
    horizontal = np.tile(g[None, :, None, None], (1, 1, channels, 1))
    pad = WINDOW // 2
    stacked = ops.pad(stacked, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="symmetric")
    means = ops.depthwise_conv(ops.depthwise_conv(stacked, vertical, padding="valid"), horizontal, padding="valid")
    return ops.split(means, len(tensors), axis=-1)


def _ssim_terms(x, y):
    """Per-pixel, per-channel luminance and contrast-structure terms."""
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_x, mu_y, mean_xx, mean_yy, mean_xy = _local_means(x, y, x * x, y * y, x * y)
    var_x = mean_xx - mu_x ** 2
    var_y = mean_yy - mu_y ** 2
    cov_xy = mean_xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    contrast_structure = (2 * cov_xy + c2) / (var_x + var_y + c2)
    return luminance, contrast_structure


def ssim_map(x, y):
    """(N, H, W) SSIM, averaged over channels."""
    luminance, contrast_structure = _ssim_terms(x, y)
    return ops.mean(luminance * contrast_structure, axis=-1)


def ms_ssim(x, y):
    """(N,) multi-scale SSIM; uses as many of the 5 standard scales as the image size allows."""
    scales = max(1, min(len(MS_SSIM_WEIGHTS), int(np.log2(x.shape[1] / WINDOW)) + 1))
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / np.sum(MS_SSIM_WEIGHTS[:scales])
    value = 1.0
    for scale, weight in enumerate(weights):
        luminance, contrast_structure = _ssim_terms(x, y)
        last = scale == scales - 1
        term = luminance * contrast_structure if last else contrast_structure
        # relu: a negative mean term raised to a fractional power would give NaN
        value = value * ops.relu(ops.mean(term, axis=(1, 2, 3))) ** float(weight)
        if not last:
            x = ops.average_pool(x, 2, strides=2)
            y = ops.average_pool(y, 2, strides=2)
    return value


def l2_map(x, y):
    """(N, H, W) squared error, averaged over channels."""
    return ops.mean(ops.square(x - y), axis=-1)


def reconstruction_loss(name, x, reconstruction):
    if name == "ssim":
        return 1.0 - ops.mean(ssim_map(x, reconstruction))
    if name == "mssim":
        return 1.0 - ops.mean(ms_ssim(x, reconstruction))
    if name == "l2":
        return ops.mean(l2_map(x, reconstruction))  # per-pixel mean, as the loss's scale then matches the residual maps
    raise UserError(f"unknown loss '{name}'; choose one of {', '.join(LOSSES)}")


def residual_map(kind, x, reconstruction):
    """(N, H, W) residual, higher = more anomalous: 1 - SSIM map, or squared L2 per pixel."""
    if kind == "ssim":
        return 1.0 - ssim_map(x, reconstruction)
    if kind == "l2":
        return l2_map(x, reconstruction)
    raise UserError(f"unknown residual map '{kind}'; choose one of {', '.join(RESIDUALS)}")
