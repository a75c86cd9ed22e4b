"""Golden-sample mode: train from only N good images, expanded by batched augmentation.

For production lines where only one or a few reference parts ("golden samples") exist. The N images
are the first N of the (seeded, shuffled) training dataset; nothing else from it is used. Each epoch
repeats them to GOLDEN_EPOCH_IMAGES images (about one MVTec AD category's train/good), in batches as
large as the training dataset's (its first batch: `-b`, or the whole train split when that is smaller),
and augments every batch with Keras core layers: flips, rotations of up to 10 degrees (reflect fill),
brightness and contrast within +-10 %. All of it is seeded and runs on whole batches in the tf.data
pipeline. Flips assume the part may appear mirrored; they make little difference for symmetric parts.
"""
import keras
import numpy as np
import tensorflow as tf
from keras import layers

from processing.errors import UserError

GOLDEN_EPOCH_IMAGES = 256
MAX_ROTATION_DEGREES = 10
BRIGHTNESS = CONTRAST = 0.1


def golden_augmentation(seed):
    """Batched augmentation of images in [0, 1] (the outputs stay in [0, 1])."""
    return keras.Sequential([
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
        layers.RandomRotation(MAX_ROTATION_DEGREES / 360, fill_mode="reflect", seed=seed + 1),
        layers.RandomBrightness(BRIGHTNESS, value_range=(0, 1), seed=seed + 2),
        layers.RandomContrast(CONTRAST, value_range=(0, 1), seed=seed + 3),
    ], name="golden_augmentation")


def golden_samples(train_ds, n_images):
    """The first `n_images` images of a batched dataset, and the size of its first batch."""
    batches, taken = [], 0
    for batch in train_ds:
        batches.append(np.asarray(batch, np.float32))
        taken += len(batch)
        if taken >= n_images:
            break
    if taken < n_images:
        raise UserError(f"--golden {n_images} needs at least {n_images} training images, the train split has "
                        f"{taken}; lower --golden or add images to train/good")
    return np.concatenate(batches)[:n_images], len(batches[0])


def golden_repeats(n_images, epoch_images=None):
    """How often each golden image appears per epoch: enough for at least `epoch_images` images."""
    return -(-(epoch_images or GOLDEN_EPOCH_IMAGES) // n_images)


def golden_epoch_size(n_images, epoch_images=None):
    return golden_repeats(n_images, epoch_images) * n_images


def expand_golden(train_ds, n_images, seed, epoch_images=None):
    """tf.data of augmented batches drawn from the first `n_images` images of `train_ds` only; an epoch
    holds golden_epoch_size() images."""
    images, batch_size = golden_samples(train_ds, n_images)
    repeats = golden_repeats(n_images, epoch_images)
    augment = golden_augmentation(seed)
    expanded = tf.data.Dataset.from_tensor_slices(images).repeat(repeats)
    expanded = expanded.shuffle(golden_epoch_size(n_images, epoch_images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return expanded.map(lambda batch: augment(batch, training=True)).prefetch(tf.data.AUTOTUNE)
