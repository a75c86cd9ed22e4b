"""Augmented views (selfsup/views.py): seeded, different from call to call, batched, usable in tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from selfsup.views import RandomResizedCrop, ViewAugmenter

SIZE = 32


@pytest.fixture(scope="module")
def images():
    """Smooth random RGB images (a gradient plus a bright square), so crops and flips change pixels."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    batch = np.stack([np.stack([ramp[None, :] * np.ones((SIZE, 1), np.float32)] * 3, axis=-1)] * 6)
    for image in batch:
        top, left = rng.integers(0, SIZE - 8, size=2)
        image[top:top + 8, left:left + 8] = rng.random(3)
    return batch


def test_same_seed_gives_the_same_views_and_calls_differ(images):
    first, second = ViewAugmenter(SIZE, seed=7), ViewAugmenter(SIZE, seed=7)
    views = np.asarray(first(images))
    np.testing.assert_array_equal(views, np.asarray(second(images)))
    assert views.shape == images.shape and views.min() >= 0 and views.max() <= 1
    # The next call draws new views, and the views of one call differ from image to image and from the input.
    again = np.asarray(first(images))
    assert np.abs(again - views).mean() > 0.02
    assert np.abs(views - images).mean() > 0.02
    doubled = np.asarray(ViewAugmenter(SIZE, seed=7)(np.concatenate([images, images])))
    assert np.abs(doubled[:len(images)] - doubled[len(images):]).mean() > 0.02


def test_random_resized_crop_zooms_into_a_box_of_the_requested_area():
    # A horizontal ramp: a crop of a fraction w of the width spans a w-wide range of values.
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], (64, 1, 3))[None].repeat(16, axis=0)
    crops = np.asarray(RandomResizedCrop(16, scale=(0.25, 0.25), seed=0)(ramp))
    assert crops.shape == (16, 16, 16, 3)
    spans = crops[:, 8, -1, 0] - crops[:, 8, 0, 0]
    # area 1/4 with aspect in [3/4, 4/3]: the width fraction is in [0.43, 0.58], minus one output pixel.
    assert (spans > 0.35).all() and (spans < 0.6).all()
    whole = np.asarray(RandomResizedCrop(64, scale=(1.0, 1.0), seed=0)(ramp[:, :, :, :]))
    assert np.abs(whole - ramp).max() < 0.15  # aspect jitter only: still close to the image itself


def test_views_run_in_a_tf_data_map(images):
    augmenter = ViewAugmenter(16, crop_scale=(0.05, 0.4), seed=1)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(3).map(augmenter)
    batches = [batch.numpy() for batch in dataset]
    assert [batch.shape for batch in batches] == [(3, 16, 16, 3)] * 2
    assert all(np.isfinite(batch).all() for batch in batches)
