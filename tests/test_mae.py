"""The masked autoencoder (selfsup/mae.py) on 64 px images: masking ratio and coverage, the map as the
mean error of hidden patches, training lowers the loss, the image score from the --detector on the
embeddings, save/reload, export, user errors, train.py.
"""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from detectors import make_detector
from processing import data, export
from processing.errors import UserError
from selfsup.mae import MaskedAutoencoder
from tests.test_export import RUNTIMES, TOLERANCE

SIZE = 64
SMALL = dict(input_size=SIZE, channels=3, patch_size=8, encoder_dim=64, encoder_depth=1, decoder_depth=1)


@pytest.fixture(scope="module")
def train_images(small_synthetic):
    dataset = data.scan_dataset(small_synthetic)
    return data.load_arrays(dataset, dataset.train, SIZE, 3)[0]


@pytest.fixture(scope="module")
def trained(train_images):
    """A small MAE trained for 4 epochs and calibrated, and its loss on the training images before and after."""
    keras.utils.set_random_seed(0)
    model = MaskedAutoencoder(**SMALL)
    batches = tf.data.Dataset.from_tensor_slices(train_images).batch(8)
    model.compile(optimizer=model.make_optimizer(2e-3, steps_per_epoch=len(batches), epochs=4))
    before = model.evaluate(batches, verbose=0)
    model.fit(batches, epochs=4, verbose=0, shuffle=False)
    model.calibrate(batches)
    return model, before, model.evaluate(batches, verbose=0)


def test_training_masks_hide_the_stated_ratio_at_random(train_images):
    model = MaskedAutoencoder(**SMALL, mask_ratio=0.75)
    predictions, hidden = model(train_images[:6])
    hidden = np.asarray(hidden)
    assert predictions.shape == (6, 64, 8 * 8 * 3)
    np.testing.assert_array_equal(hidden.sum(axis=1), [48] * 6)  # 0.75 of the 8 x 8 patches
    assert len({row.tobytes() for row in hidden}) == 6  # a different masking per image
    assert not np.array_equal(np.asarray(model(train_images[:6])[1]), hidden)  # and per call


@pytest.mark.parametrize("ratio, maskings", [(0.75, 4), (0.75, 2), (0.5, 2), (0.9, 10)])
def test_map_maskings_hide_the_ratio_and_together_every_patch(ratio, maskings):
    masks = MaskedAutoencoder(**SMALL, mask_ratio=ratio, map_maskings=maskings).map_masks()
    assert masks.shape == (maskings, 64)
    np.testing.assert_array_equal(masks.sum(axis=1), round(ratio * 64))
    assert masks.any(axis=0).all()
    if ratio * maskings == 1:  # complementary maskings: each patch hidden exactly once
        np.testing.assert_array_equal(masks.sum(axis=0), 1)


def test_too_few_maskings_to_cover_every_patch_is_a_user_error():
    with pytest.raises(UserError, match="--mae-maskings 2 or more"):
        MaskedAutoencoder(**SMALL, mask_ratio=0.75, map_maskings=1)


def test_patch_that_does_not_divide_the_size_is_a_user_error():
    with pytest.raises(UserError, match="--mae-patch 12 does not divide the input size 64"):
        MaskedAutoencoder(**{**SMALL, "patch_size": 12})


def test_loss_falls_with_training(trained):
    _, before, after = trained
    assert after < 0.6 * before


def test_map_is_the_mean_error_of_each_patch_over_the_maskings_that_hide_it(trained, train_images):
    model, images = trained[0], train_images[:3]
    maps = model.anomaly_map(images)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    total, times_hidden = np.zeros((3, SIZE, SIZE)), np.zeros((SIZE, SIZE))
    for mask in model.map_masks():
        # reconstruct() keeps visible patches as they are, so the error lives on hidden patches only.
        error = ((model.reconstruct(images, mask) - images) ** 2).mean(axis=-1)
        total += error
        times_hidden += np.kron(mask.reshape(8, 8), np.ones((8, 8)))
    np.testing.assert_allclose(maps, total / times_hidden, rtol=1e-3, atol=1e-3)


def test_saved_model_reloads_with_identical_maps_and_embeddings(trained, train_images, tmp_path):
    model, images = trained[0], train_images[:4]
    model.save(tmp_path / "mae.keras")
    reloaded = keras.saving.load_model(tmp_path / "mae.keras", compile=False)
    np.testing.assert_array_equal(reloaded.anomaly_map(images), model.anomaly_map(images))
    embeddings = model.image_embeddings(images)
    assert embeddings.shape == (4, 64) and embeddings.dtype == np.float32
    np.testing.assert_array_equal(reloaded.image_embeddings(images), embeddings)
    np.testing.assert_array_equal(reloaded.score(images), model.score(images))


def test_image_score_is_the_detector_on_the_embeddings(trained, train_images, small_synthetic):
    model = trained[0]
    dataset = data.scan_dataset(small_synthetic)
    test_images = data.load_arrays(dataset, dataset.test[:6], SIZE, 3)[0]
    knn = make_detector("knn", k=5, metric="cosine").fit(model.image_embeddings(train_images))
    maps, scores = model.maps_and_scores(test_images)
    np.testing.assert_allclose(scores, knn.score_samples(model.image_embeddings(test_images)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(maps, model.anomaly_map(test_images))
    # The training images are the kNN memory, so they score lower than test images.
    assert model.score(train_images[:6]).mean() < scores.mean()


def test_uncalibrated_model_refuses_to_score(train_images):
    with pytest.raises(UserError, match="image_detector is not fitted yet"):
        MaskedAutoencoder(**SMALL).score(train_images[:2])


@pytest.mark.parametrize("format_name", ["savedmodel", "onnx"])
def test_exported_file_gives_the_keras_maps_and_scores(trained, train_images, tmp_path, format_name):
    model, raw = trained[0], np.round(train_images[:3] * 255).astype(np.uint8)
    export.WRITERS[format_name](model, export.serving_function(model), tmp_path)
    maps, scores = RUNTIMES[format_name](tmp_path, raw)
    expected_maps, expected_scores = model.maps_and_scores(raw / np.float32(255))
    np.testing.assert_allclose(maps, expected_maps, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores, expected_scores, atol=TOLERANCE, rtol=0)
    assert expected_maps.std() > 0 and np.ptp(expected_scores) > 0


def test_train_cli_passes_the_mae_flags_and_saves_inspection_pictures(tmp_path, monkeypatch, small_synthetic):
    """finetune.py and test.py on an MAE run: tests/test_analyze.py (its confusion matrix is test.py's)."""
    monkeypatch.chdir(tmp_path)
    run_dir = train.main(["-d", str(small_synthetic), "-a", "mae", "--size", "64", "-e", "2", "-b", "16",
                          "--mae-patch", "8", "--mae-dim", "64", "--mae-depth", "1", "--mask-ratio", "0.5",
                          "--mae-maskings", "2", "-i"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["method"] == "mae" and len(run["history"]["loss"]) == 2
    for picture in ("inspect_validation.png", "tsne_embeddings.png", "training_curves.png"):
        assert (run_dir / picture).stat().st_size > 0
    assert run["config"]["options"]["mask_ratio"] == 0.5
