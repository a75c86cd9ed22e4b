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


def _gaussian_window(channels):
    offsets = np.arange(WINDOW) - (WINDOW - 1) / 2
    g = np.exp(-(offsets ** 2) / (2 * SIGMA ** 2))
    g /= g.sum()
    window = np.outer(g, g).astype(np.float32)[:, :, None, None]
    return np.tile(window, (1, 1, channels, 1))


def _local_mean(x, window):
    pad = WINDOW // 2
    x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="symmetric")
    return ops.depthwise_conv(x, window, strides=1, padding="valid")


def _ssim_terms(x, y):
    """Per-pixel, per-channel luminance and contrast-structure terms."""
    window = _gaussian_window(x.shape[-1])
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_x, mu_y = _local_mean(x, window), _local_mean(y, window)
    var_x = _local_mean(x * x, window) - mu_x ** 2
    var_y = _local_mean(y * y, window) - mu_y ** 2
    cov_xy = _local_mean(x * y, window) - mu_x * mu_y
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
