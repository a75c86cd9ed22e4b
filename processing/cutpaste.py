"""Batched CutPaste augmentation (Li et al. 2021, "CutPaste: Self-Supervised Learning for Anomaly
Detection and Localization"): the pretext images of `-a cutpaste`.

* CutPaste: a rectangle of area ratio [0.02, 0.15] of the image and aspect ratio log-uniform in
  (0.3, 3.3) is cut at one place and pasted at another.
* CutPaste-Scar: a thin rectangle (width 2-16 px, height 10-25 px) rotated by -45..45 degrees.
* The pasted patch gets a colour jitter of 0.1 (brightness, contrast, saturation, hue), and whole
  images (normal ones included) a random multiple of 90 degrees of rotation.

Everything runs on whole batches with TF / keras.ops (no per-image Python), so the same code works
in a tf.data map on CPU and inside `train_step` on an accelerator.

Seeding: every random number of an image is looked up by the image's fingerprint (tf.fingerprint of
its pixels) in a table drawn from `seed` (two integers, e.g. (run seed, generation)). An image's
pretext versions therefore depend on (seed, the image) only, not on the batch it lands in: with the
same seed, a reshuffled epoch meets exactly the same generated set. Two images that share a table row
(1 in TABLE_ROWS) only share their augmentation parameters.
"""
import math

import numpy as np
import tensorflow as tf
from keras import ops

AREA_RATIO = (0.02, 0.15)
ASPECT_RATIO = (0.3, 1 / 0.3)  # log-uniform, as the reference code: (0.3, 1) or (1, 3.3) equally often
SCAR_WIDTH = (2, 16)
SCAR_HEIGHT = (10, 25)
SCAR_MAX_DEGREES = 45.0
JITTER = 0.1
TABLE_ROWS = 1 << 14

NORMAL, CUTPASTE, SCAR = 0, 1, 2
# variant -> the classes of its pretext task after "normal"; binary pastes a CutPaste or a scar
# (one each, chosen per image) and calls both "anomalous".
VARIANTS = {"3way": ("cutpaste", "scar"), "binary": ("cutpaste or scar",), "cutpaste": ("cutpaste",)}

# Independent random streams (folded into the seed) and the number of uniforms each draws per image.
_ROTATION_STREAM, _CHOICE_STREAM, _CUTPASTE_STREAM, _SCAR_STREAM = range(4)
_GEOMETRY_DRAWS = 7  # size (2), angle, source corner (2), destination corner (2)
_JITTER_DRAWS = 4


def num_classes(variant):
    return 1 + len(VARIANTS[variant])


def pretext_batch(images, seed, variant="3way", rotate=True, jitter=JITTER):
    """(B, H, W, C) normal images in [0, 1] -> (images, masks, labels) of the pretext task.

    3way: the normal images, their CutPaste and their scar versions, labels 0 / 1 / 2 (3B images).
    binary: the normal images and, per image, a CutPaste or a scar version, labels 0 / 1 (2B images).
    cutpaste: the normal images and their CutPaste versions, labels 0 / 1 (2B images).
    masks (bool, (n, H, W)) mark the pasted pixels; all False for the normal images.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown CutPaste variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    images = ops.convert_to_tensor(images, "float32")
    keys = image_keys(images)
    if rotate:
        images = random_rot90(images, per_image_uniforms(keys, seed, _ROTATION_STREAM, 1)[:, 0])
    batch = ops.shape(images)[0]
    pasted, pasted_masks = cutpaste(images, seed, jitter, keys)
    if variant != "cutpaste":
        scarred, scar_masks = scar(images, seed, jitter, keys)
    if variant == "binary":
        use_scar = per_image_uniforms(keys, seed, _CHOICE_STREAM, 1)[:, 0] < 0.5
        pasted = ops.where(use_scar[:, None, None, None], scarred, pasted)
        pasted_masks = ops.where(use_scar[:, None, None], scar_masks, pasted_masks)
    outputs = [(images, ops.zeros(ops.shape(images)[:3], "bool")), (pasted, pasted_masks)]
    if variant == "3way":
        outputs.append((scarred, scar_masks))
    labels = ops.repeat(ops.arange(len(outputs), dtype="int32"), batch)
    return (ops.concatenate([image for image, _ in outputs]), ops.concatenate([mask for _, mask in outputs]),
            labels)


def cutpaste(images, seed, jitter=JITTER, keys=None):
    """CutPaste on every image: (images with one pasted rectangle, bool masks of the pasted pixels)."""
    height, width = images.shape[1], images.shape[2]
    u = per_image_uniforms(_keys(images, keys), seed, _CUTPASTE_STREAM, _GEOMETRY_DRAWS + _JITTER_DRAWS)
    area = (AREA_RATIO[0] + u[:, 0] * (AREA_RATIO[1] - AREA_RATIO[0])) * height * width
    log_low, log_high = math.log(ASPECT_RATIO[0]), math.log(ASPECT_RATIO[1])
    aspect = ops.exp(log_low + u[:, 1] * (log_high - log_low))  # width / height
    patch_width = ops.clip(ops.round(ops.sqrt(area * aspect)), 1, width)
    patch_height = ops.clip(ops.round(ops.sqrt(area / aspect)), 1, height)
    return _cut_and_paste(images, u, patch_height, patch_width, ops.zeros_like(area), jitter)


def scar(images, seed, jitter=JITTER, keys=None):
    """CutPaste-Scar on every image: (images with one pasted rotated thin rectangle, bool masks)."""
    height, width = images.shape[1], images.shape[2]
    u = per_image_uniforms(_keys(images, keys), seed, _SCAR_STREAM, _GEOMETRY_DRAWS + _JITTER_DRAWS)
    scar_width = ops.minimum(ops.floor(SCAR_WIDTH[0] + u[:, 0] * (SCAR_WIDTH[1] - SCAR_WIDTH[0] + 1)), width)
    scar_height = ops.minimum(ops.floor(SCAR_HEIGHT[0] + u[:, 1] * (SCAR_HEIGHT[1] - SCAR_HEIGHT[0] + 1)), height)
    angle = (2 * u[:, 2] - 1) * math.radians(SCAR_MAX_DEGREES)
    return _cut_and_paste(images, u, scar_height, scar_width, angle, jitter)


def _cut_and_paste(images, u, patch_height, patch_width, angle, jitter):
    """Cut a (patch_height, patch_width) rectangle at a uniform place, rotate it by `angle`, colour-jitter
    it and paste it at a uniform place where it fits. u[:, 3:7] place it, u[:, 7:11] jitter it."""
    height, width = images.shape[1], images.shape[2]
    # Centres: the source rectangle is unrotated; the target is kept inside by the rotated bounding box.
    # Unrotated, both centres have the same half-pixel offset, so the copy is exact (no resampling).
    cos, sin = ops.abs(ops.cos(angle)), ops.abs(ops.sin(angle))
    box_height = ops.minimum(ops.ceil(patch_height * cos + patch_width * sin), height)
    box_width = ops.minimum(ops.ceil(patch_width * cos + patch_height * sin), width)
    source_y = ops.floor(u[:, 3] * (height - patch_height + 1)) + (patch_height - 1) / 2
    source_x = ops.floor(u[:, 4] * (width - patch_width + 1)) + (patch_width - 1) / 2
    target_y = ops.floor(u[:, 5] * (height - box_height + 1)) + (box_height - 1) / 2
    target_x = ops.floor(u[:, 6] * (width - box_width + 1)) + (box_width - 1) / 2

    # Each target pixel, in the patch's own (rotated) frame, and the source pixel it copies.
    rows = ops.arange(height, dtype="float32")[None, :, None] - target_y[:, None, None]
    cols = ops.arange(width, dtype="float32")[None, None, :] - target_x[:, None, None]
    cos, sin = ops.cos(angle)[:, None, None], ops.sin(angle)[:, None, None]
    along_y = cos * rows - sin * cols
    along_x = sin * rows + cos * cols
    masks = (ops.abs(along_y) < patch_height[:, None, None] / 2) & (ops.abs(along_x) < patch_width[:, None, None] / 2)
    from_y = ops.clip(ops.round(source_y[:, None, None] + along_y), 0, height - 1)
    from_x = ops.clip(ops.round(source_x[:, None, None] + along_x), 0, width - 1)
    index = ops.cast(ops.reshape(from_y * width + from_x, (-1, height * width)), "int32")
    patch = ops.reshape(_gather_pixels(images, index), ops.shape(images))
    patch = color_jitter(patch, images, u[:, 7:11], jitter)
    return ops.where(masks[..., None], patch, images), masks


def color_jitter(pixels, images, u, strength=JITTER):
    """Colour-jitter `pixels` (B, H, W, C) with per-image brightness, contrast and saturation factors
    1 +- strength and a hue shift of +- strength of the colour circle (u: (B, 4) uniforms).

    The four steps are linear per image, so they are composed into one affine map and clipped once
    (torchvision clips after each step; the difference is at saturated pixels only). Hue turns the
    chroma plane of YIQ, the linear stand-in for the HSV hue shift. Contrast blends towards the mean
    gray of the whole `images` the pixels come from. Grayscale: brightness and contrast only.
    """
    if not strength:
        return pixels
    channels = images.shape[-1]
    brightness, contrast, saturation = (1 + strength * (2 * u[:, i] - 1) for i in range(3))
    gray_weights = _GRAY_WEIGHTS if channels == 3 else np.ones(1, np.float32)
    mean_gray = ops.mean(ops.sum(images * gray_weights, axis=-1), axis=(1, 2))
    offset = (1 - contrast) * brightness * mean_gray  # the blend towards the mean, after brightness
    linear = (brightness * contrast)[:, None, None] * ops.eye(channels)[None]
    if channels == 3:
        desaturate = saturation[:, None, None] * ops.eye(3) + (1 - saturation)[:, None, None] * gray_weights[None]
        linear = ops.matmul(ops.matmul(_hue_rotation(2 * math.pi * strength * (2 * u[:, 3] - 1)), desaturate), linear)
    jittered = ops.matmul(pixels, ops.transpose(linear, (0, 2, 1))[:, None]) + offset[:, None, None, None]
    return ops.clip(jittered, 0, 1)


_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as rgb_to_grayscale
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _hue_rotation(radians):
    """(B, 3, 3) RGB -> RGB maps that turn the I/Q chroma plane of YIQ by `radians` (gray stays gray)."""
    cos, sin, zero, one = ops.cos(radians), ops.sin(radians), ops.zeros_like(radians), ops.ones_like(radians)
    turn = ops.stack([ops.stack([one, zero, zero], -1), ops.stack([zero, cos, -sin], -1),
                      ops.stack([zero, sin, cos], -1)], axis=1)
    return ops.matmul(ops.matmul(_YIQ_TO_RGB[None], turn), _RGB_TO_YIQ[None])


def random_rot90(images, u):
    """Rotate each square image by k * 90 degrees, k = floor(4 u) per image (u: (B,) uniforms), as one
    gather of pixel indices per image."""
    height, width, channels = images.shape[1:]
    if height != width:
        raise ValueError(f"90-degree rotations need square images, got {height}x{width}")
    pixel_index = np.arange(height * width, dtype=np.int32).reshape(height, width)
    rotations = ops.convert_to_tensor(np.stack([np.rot90(pixel_index, k).ravel() for k in range(4)]))
    index = ops.take(rotations, ops.cast(ops.floor(4 * u), "int32"), axis=0)
    return ops.reshape(_gather_pixels(images, index), ops.shape(images))


def _gather_pixels(images, index):
    """(B, H, W, C) images, (B, n) flat pixel indices -> (B, n, C) those pixels."""
    flat = ops.reshape(images, (-1, images.shape[1] * images.shape[2], images.shape[3]))
    return tf.gather(flat, index, batch_dims=1)  # ~8x faster than ops.take_along_axis on CPU


def image_keys(images):
    """(B,) int32 key per image from a fingerprint of its pixels: the same image always gets the same key."""
    fingerprints = tf.bitcast(tf.fingerprint(tf.reshape(images, (tf.shape(images)[0], -1))), tf.int64)
    return tf.cast(fingerprints % TABLE_ROWS, tf.int32)


def per_image_uniforms(keys, seed, stream, count):
    """(B, count) float32 uniforms in [0, 1): row `key` of a table drawn from (seed, stream)."""
    stream_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), stream)
    table = tf.random.stateless_uniform((TABLE_ROWS, count), seed=stream_seed)
    return tf.gather(table, keys)


def _keys(images, keys):
    return image_keys(images) if keys is None else keys
