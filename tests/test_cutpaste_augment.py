"""The batched CutPaste augmentation (processing/cutpaste.py): what is pasted where, labels, seeding,
tf.data and graph use, rotations and colour jitter. Small random tensors only."""
import numpy as np
import pytest
import tensorflow as tf

from processing import cutpaste as augment

SIZE = 32


def random_images(n=6, channels=3, seed=0):
    return np.random.default_rng(seed).random((n, SIZE, SIZE, channels), dtype=np.float32)


def copy_offset(image, pasted, mask):
    """The (dy, dx) such that pasted[mask] == image shifted by (dy, dx), or None."""
    ys, xs = np.nonzero(mask)
    for dy in range(-SIZE + 1, SIZE):
        for dx in range(-SIZE + 1, SIZE):
            source_y, source_x = ys - dy, xs - dx
            if source_y.min() < 0 or source_x.min() < 0 or source_y.max() >= SIZE or source_x.max() >= SIZE:
                continue
            if np.array_equal(pasted[ys, xs], image[source_y, source_x]):
                return dy, dx
    return None


def test_cutpaste_copies_a_rectangle_of_the_image_only_where_the_mask_says():
    images = random_images()
    pasted, masks = (np.asarray(t) for t in augment.cutpaste(images, (0, 0), jitter=0.0))
    for image, result, mask in zip(images, pasted, masks):
        np.testing.assert_array_equal(result[~mask], image[~mask])
        ys, xs = np.nonzero(mask)
        height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
        assert mask.sum() == height * width  # a full rectangle
        assert 0.02 * SIZE**2 * 0.7 <= mask.sum() <= 0.15 * SIZE**2 * 1.3  # area ratio, up to rounding of sides
        assert 0.3 * 0.7 <= width / height <= 3.3 / 0.7
        assert copy_offset(image, result, mask) not in (None, (0, 0))  # moved, and copied pixel for pixel


def test_scar_is_a_thin_rotated_patch_and_jitter_changes_only_the_pasted_pixels():
    images = random_images()
    scarred, masks = (np.asarray(t) for t in augment.scar(images, (0, 0)))
    for image, result, mask in zip(images, scarred, masks):
        np.testing.assert_array_equal(result[~mask], image[~mask])
        assert 2 * 10 * 0.5 <= mask.sum() <= 16 * 25 * 1.3
        assert (np.abs(result - image).max(axis=-1)[mask] > 0).mean() > 0.9


@pytest.mark.parametrize("variant, classes", [("3way", 3), ("binary", 2), ("cutpaste", 2)])
def test_pretext_labels_match_the_pasted_images(variant, classes):
    images = random_images()
    pretext, masks, labels = (np.asarray(t) for t in augment.pretext_batch(images, (1, 2), variant, rotate=False))
    assert pretext.shape == (classes * 6, SIZE, SIZE, 3) and masks.shape == (classes * 6, SIZE, SIZE)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(classes), 6))
    assert augment.num_classes(variant) == classes
    originals = np.tile(images, (classes, 1, 1, 1))
    changed = np.abs(pretext - originals).max(axis=-1) > 0
    assert not changed[labels == 0].any() and not masks[labels == 0].any()
    assert masks[labels > 0].reshape(-1, SIZE * SIZE).any(axis=1).all()
    assert not (changed & ~masks).any()  # every change lies inside the mask


def test_binary_variant_mixes_cutpaste_and_scar():
    images = random_images(16)
    pasted, _ = augment.cutpaste(images, (1, 2))
    pretext, _, _ = augment.pretext_batch(images, (1, 2), "binary", rotate=False)
    is_cutpaste = [np.array_equal(a, b) for a, b in zip(np.asarray(pretext)[16:], np.asarray(pasted))]
    assert 0 < sum(is_cutpaste) < 16


def test_same_seed_same_set_whatever_the_batch_order():
    images = random_images(8)
    first = augment.pretext_batch(images, (3, 1))
    again = augment.pretext_batch(images, (3, 1))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    reversed_images, *_ = augment.pretext_batch(images[::-1].copy(), (3, 1))
    per_class = np.asarray(first[0]).reshape(3, 8, SIZE, SIZE, 3)
    np.testing.assert_array_equal(np.asarray(reversed_images).reshape(3, 8, SIZE, SIZE, 3)[:, ::-1], per_class)
    other_generation, *_ = augment.pretext_batch(images, (3, 2))
    assert not np.array_equal(np.asarray(other_generation), np.asarray(first[0]))


def test_works_in_a_tf_data_map_and_in_a_graph_with_unknown_batch():
    images = random_images(8)
    eager = augment.pretext_batch(images, (0, 5))
    mapped = tf.data.Dataset.from_tensor_slices(images).batch(4).map(lambda batch: augment.pretext_batch(batch, (0, 5)))
    halves = list(mapped)
    assert [tuple(part.shape) for part in halves[0]] == [(12, SIZE, SIZE, 3), (12, SIZE, SIZE), (12,)]
    # Per-image seeding: the two half-batches hold exactly the eager batch's pretext images.
    mapped_images = np.concatenate([np.asarray(part[0]).reshape(3, 4, SIZE, SIZE, 3) for part in halves], axis=1)
    # (Up to float rounding: the colour jitter's matrix products are batched differently.)
    np.testing.assert_allclose(mapped_images.reshape(-1, SIZE, SIZE, 3), np.asarray(eager[0]), atol=1e-6)
    graph = tf.function(lambda batch: augment.pretext_batch(batch, tf.constant([0, 5])),
                        input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
    np.testing.assert_allclose(np.asarray(graph(images)[0]), np.asarray(eager[0]), atol=1e-6)


def test_grayscale_images_are_supported():
    pretext, masks, labels = augment.pretext_batch(random_images(4, channels=1), (0, 0))
    assert pretext.shape == (12, SIZE, SIZE, 1) and masks.shape == (12, SIZE, SIZE) and labels.shape == (12,)


def test_random_rot90_applies_each_quarter_turn():
    images = random_images(4)
    rotated = np.asarray(augment.random_rot90(images, np.array([0.1, 0.3, 0.6, 0.9], np.float32)))
    for k, (image, result) in enumerate(zip(images, rotated)):
        np.testing.assert_array_equal(result, np.rot90(image, k))


def test_color_jitter_is_identity_at_zero_strength_or_factors_and_keeps_gray_gray():
    images = random_images(4)
    uniforms = np.random.default_rng(1).random((4, 4), dtype=np.float32)
    np.testing.assert_array_equal(augment.color_jitter(images, images, uniforms, strength=0.0), images)
    np.testing.assert_allclose(augment.color_jitter(images, images, np.full((4, 4), 0.5, np.float32)), images, atol=1e-5)
    gray = np.repeat(random_images(4, channels=1) * 0.5 + 0.25, 3, axis=-1)
    jittered = np.asarray(augment.color_jitter(gray, gray, np.full((4, 4), 0.9, np.float32), strength=0.1))
    np.testing.assert_allclose(jittered, jittered[..., :1].repeat(3, axis=-1), atol=1e-5)  # hue and saturation leave gray alone
    assert not np.allclose(jittered, gray)  # brightness and contrast still act
