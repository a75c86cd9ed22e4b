"""CutPaste (selfsup/cutpaste.py) on the 64 px synthetic set with tiny settings: the pretext task is
learnt, the backbone freeze and the regeneration schedule, maps and scores, save/reload, user
errors and the train -> finetune -> test CLIs."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

import finetune
import selfsup.cutpaste
import test as test_cli
import train
from detectors import GaussianDensityDetector
from processing import data
from processing.errors import UserError
from processing.synthetic import generate_synthetic_dataset
from selfsup.cutpaste import CutPaste, PretextSchedule, patch_positions

SIZE = 64
TINY = {"input_size": SIZE, "channels": 3, "patch_size": 32, "head_layers": (64, 32)}


class BackboneSnapshots(keras.callbacks.Callback):
    """A copy of the stem convolution kernel before training and after every epoch."""

    def on_train_begin(self, logs=None):
        self.kernels = [self._kernel()]

    def on_epoch_end(self, epoch, logs=None):
        self.kernels.append(self._kernel())

    def _kernel(self):
        backbone = self.model.encoder.get_layer(index=-2)  # the layer before the pooling
        return backbone.get_layer("stem_conv").get_weights()[0].copy()


@pytest.fixture(scope="module")
def synthetic(small_synthetic):
    dataset = data.scan_dataset(small_synthetic)
    train_images, _ = data.load_arrays(dataset, dataset.train, SIZE, 3)
    test_images, test_masks = data.load_arrays(dataset, dataset.test, SIZE, 3)
    return train_images, test_images, test_masks, np.array([sample.label for sample in dataset.test])


@pytest.fixture(scope="module")
def trained(synthetic):
    train_images = synthetic[0]
    keras.utils.set_random_seed(0)
    model = CutPaste(freeze_backbone_epochs=1, **TINY)
    model.compile(optimizer=model.make_optimizer(0.03, steps_per_epoch=4, epochs=4))  # the reference code's lr
    model.prepare_training(None)
    snapshots = BackboneSnapshots()
    # No validation here (the CLI test has it): every traced step function costs seconds.
    history = model.fit(tf.data.Dataset.from_tensor_slices(train_images[:32]).shuffle(32, seed=0).batch(8), epochs=4,
                        callbacks=[*model.training_callbacks(), snapshots], shuffle=False, verbose=0).history
    model.calibrate(tf.data.Dataset.from_tensor_slices(train_images[:32]).batch(8))
    return model, history, snapshots.kernels


def test_pretext_loss_falls_and_accuracy_beats_chance(trained):
    _, history, _ = trained
    assert np.mean(history["loss"][-2:]) < history["loss"][0]
    assert max(history["accuracy"][-2:]) > 0.45  # chance is 1/3 for the 3-way task


def test_backbone_is_frozen_for_the_first_epochs_then_trained(trained):
    _, _, kernels = trained
    np.testing.assert_array_equal(kernels[1], kernels[0])  # epoch 1: head only
    assert not np.array_equal(kernels[2], kernels[1])  # epoch 2 on: the backbone learns too


def test_generation_changes_every_n_epochs(trained):
    model = trained[0]
    schedule = PretextSchedule()
    schedule.set_model(model)
    model.regenerate_every = 3
    try:
        generations = []
        for epoch in (0, 2, 3, 7):
            schedule.on_epoch_begin(epoch)
            generations.append(int(model.generation.numpy()))
    finally:
        model.regenerate_every = 1
    assert generations == [0, 0, 1, 2]


def test_maps_and_scores(trained, synthetic):
    model = trained[0]
    test_images = synthetic[1]
    maps, scores = model.maps_and_scores(test_images)
    assert maps.shape == (len(test_images), SIZE, SIZE) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert scores.shape == (len(test_images),) and scores.dtype == np.float32
    # The image score is the density of the whole-image embedding, not the map's maximum.
    # float32 ops (the exported path) against the float64 numpy detector: the rounding error scales with
    # the terms summed (scores up to ~200), not with the score, so a score near 0 needs an absolute bound.
    expected = model.density("image").score_samples(model.image_embeddings(test_images))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_patch_density_maps_localise_defects(synthetic):
    # On the calibrated pretrained features, which are deterministic: the tiny 4-epoch model above moves
    # its pixel AUROC between 0.45 and 0.75 with thread scheduling, too much to assert on.
    train_images, test_images, test_masks, labels = synthetic
    model = CutPaste(**TINY)
    model.calibrate(tf.data.Dataset.from_tensor_slices(train_images[:32]).batch(8))
    maps, scores = model.maps_and_scores(test_images)
    assert roc_auc_score(test_masks[labels == 1].ravel(), maps[labels == 1].ravel()) > 0.65  # measured 0.70
    assert roc_auc_score(labels, scores) > 0.75  # measured 0.86


def test_patch_density_is_fitted_on_evenly_spread_images(synthetic):
    images = synthetic[0][:10]
    model = CutPaste(patch_fit_images=4, **TINY)  # every ceil(10 / 4) = 3rd image: 0, 3, 6, 9
    model.calibrate(tf.data.Dataset.from_tensor_slices(images).batch(4))  # the choice spans batches
    expected = GaussianDensityDetector().fit(model._patch_embeddings(images[[0, 3, 6, 9]]))
    np.testing.assert_allclose(model.density("patch").mean_, expected.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.density("image").mean_, model.embed(images).mean(axis=0), rtol=1e-5, atol=1e-6)


def test_patch_grid_covers_the_image():
    np.testing.assert_array_equal(patch_positions(64, 32, 8), [0, 8, 16, 24, 32])
    np.testing.assert_array_equal(patch_positions(70, 32, 16), [0, 16, 32, 38])  # the last one flush with the edge


def test_saved_model_reloads_with_identical_maps_and_scores(trained, synthetic, tmp_path):
    model, images = trained[0], synthetic[1][:6]
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert reloaded.get_config() == model.get_config()
    for before, after in zip(model.maps_and_scores(images), reloaded.maps_and_scores(images)):
        np.testing.assert_array_equal(before, after)


def test_bad_inputs_are_user_errors(trained):
    with pytest.raises(UserError, match="patch size is 96 px"):
        CutPaste(input_size=SIZE, patch_size=96)
    with pytest.raises(UserError, match="--cutpaste-patch-fit-images must be at least 1"):
        CutPaste(input_size=SIZE, patch_fit_images=0)
    model = CutPaste.from_config(trained[0].get_config())  # not calibrated
    with pytest.raises(UserError, match="calibrate it on normal images"):
        model.score(np.zeros((1, SIZE, SIZE, 3), np.float32))
    with pytest.raises(UserError, match="at least 2 normal training images"):
        model.calibrate(tf.data.Dataset.from_tensor_slices(np.zeros((1, SIZE, SIZE, 3), np.float32)).batch(1))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_one_training_image_is_a_clear_cli_error(workdir, capsys):
    root = generate_synthetic_dataset(workdir / "one", seed=1, image_size=SIZE, n_train=1, n_test_good=1,
                                      n_test_per_defect=1)
    with pytest.raises(SystemExit) as exit_:
        train.main(["-d", str(root), "-a", "cutpaste", "--size", str(SIZE)])
    assert exit_.value.code == 2
    assert "cutpaste needs at least 2 training images" in capsys.readouterr().err


def test_default_epochs_keep_to_the_cpu_budget():
    assert CutPaste(input_size=256).default_epochs_for(25) == 10  # small categories: the full default
    assert CutPaste(input_size=256).default_epochs_for(610) == 2  # 5000 // (610 images x 3 pretext images)
    assert CutPaste(input_size=256, variant="binary").default_epochs_for(610) == 4  # 2 pretext images each
    assert CutPaste(input_size=128).default_epochs_for(610) == 10  # a quarter of the pixels
    assert CutPaste(input_size=256).default_epochs_for(100_000) == 1


def test_train_finetune_test_end_to_end(workdir, small_synthetic, monkeypatch, capsys):
    monkeypatch.setattr(selfsup.cutpaste, "PRETEXT_PIXEL_BUDGET", 1)  # without -e, train.py takes the budget's 1 epoch
    run_dir = train.main(["-d", str(small_synthetic), "-a", "cutpaste", "-b", "8", "--size", str(SIZE),
                          "--cutpaste-variant", "binary", "-i"])
    assert "default schedule cut to 1 of 10 epochs" in capsys.readouterr().out
    run = json.loads((run_dir / "run.json").read_text())
    assert run["config"]["epochs"] == 1 and len(run["history"]["loss"]) == 1
    assert run["config"]["options"]["cutpaste_variant"] == "binary" and run["config"]["validation_fraction"] == 0.2
    assert set(run["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    for picture in ("training_curves.png", "tsne_embeddings.png", "inspect_validation.png"):
        assert (run_dir / picture).stat().st_size > 0
    finetune.main([])
    metrics = json.loads((test_cli.main([]) / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro_0.3"):
        assert 0 <= metrics["full_test_set"][key] <= 1
