"""Deep SVDD (selfsup/deep_svdd.py, svdd_objective.py, svdd_encoders.py) and golden-sample mode
(processing/golden.py) on 64 px synthetic images: the centre, both objectives, the radius, the score's
sign, save/reload, the patch grid, the backbone head, pretraining, golden mode and the CLIs.

Models use 16 px patches on a 16 px stride (a 4x4 grid) and a 32-d code to stay fast on a CPU.
"""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import finetune
import test as test_cli
import train
from processing import data, golden
from processing.errors import UserError
from selfsup.deep_svdd import DeepSVDD
from selfsup.svdd_encoders import grid_size, overlapping_patches
from selfsup.svdd_objective import CENTRE_EPS, RadiusUpdate, centre_from_mean, svdd_loss

SIZE = 64
SMALL = dict(input_size=SIZE, channels=3, latent_dim=32, patch_size=16, patch_stride=16)


@pytest.fixture(scope="module")
def images(small_synthetic):
    dataset = data.scan_dataset(small_synthetic)
    return data.load_arrays(dataset, dataset.train[:32], SIZE, 3)[0]


def as_dataset(images, batch_size=8):
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


def trained(train_images, epochs, learning_rate=1e-3, **options):
    """A DeepSVDD trained as train.fit does (hooks, callbacks), seeded; returns (model, loss history)."""
    keras.utils.set_random_seed(0)
    model = DeepSVDD(**{**SMALL, **options})
    model.compile(optimizer=model.make_optimizer(learning_rate, 1, epochs))
    train_ds = model.training_data(as_dataset(train_images))
    model.prepare_training(train_ds)
    history = model.fit(train_ds, epochs=epochs, callbacks=model.training_callbacks(), shuffle=False, verbose=0)
    return model, history.history["loss"]


@pytest.fixture(scope="module")
def soft_boundary(images):
    return trained(images[:16], epochs=2, objective="soft-boundary", nu=0.25, radius_every=1)[0]


def test_centre_pushes_small_components_to_eps_and_never_holds_zeros(images):
    mean = np.array([0.0, 0.05, -0.05, -0.0, 0.3, -2.0], np.float32)
    expected = np.array([CENTRE_EPS, CENTRE_EPS, -CENTRE_EPS, CENTRE_EPS, 0.3, -2.0], np.float32)
    np.testing.assert_array_equal(centre_from_mean(mean), expected)
    model = DeepSVDD(**SMALL)
    model.prepare_training(as_dataset(images[:8]))
    centre = ops.convert_to_numpy(model.centre)
    assert (np.abs(centre) >= CENTRE_EPS - 1e-7).all() and centre.shape == (32,)


def test_objectives_by_hand():
    distances = ops.convert_to_tensor([1.0, 2.0, 5.0])
    assert float(svdd_loss("one-class", distances, 0.0, 0.5)) == pytest.approx(8 / 3)
    # R^2 = 4; only 5 lies outside, by 1: 4 + (1 / 3) / 0.5
    assert float(svdd_loss("soft-boundary", distances, 2.0, 0.5)) == pytest.approx(4 + 2 / 3)


def test_one_class_loss_falls(images):
    _, losses = trained(images[:16], epochs=3)
    assert losses[-1] < 0.5 * losses[0]


def test_radius_refits_every_k_epochs_and_at_the_end():
    calls = []
    callback = RadiusUpdate(lambda: calls.append(True), every=2)
    for epoch in range(5):
        callback.on_epoch_end(epoch)
    callback.on_train_end()
    assert len(calls) == 3  # after epochs 2 and 4, and at the end
    one_class = RadiusUpdate(lambda: calls.append(True))
    one_class.on_epoch_end(1)
    assert len(calls) == 3


def test_radius_is_the_stated_quantile_and_the_score_sign_means_outside(soft_boundary, images):
    train_images = images[:16]
    distances = soft_boundary.image_distances(as_dataset(train_images))
    radius = float(ops.convert_to_numpy(soft_boundary.radius))
    assert radius ** 2 == pytest.approx(np.quantile(distances, 1 - 0.25), rel=1e-5)
    _, scores = soft_boundary.maps_and_scores(train_images)
    np.testing.assert_allclose(scores, distances - radius ** 2, rtol=1e-4, atol=1e-6)
    assert (scores > 0).mean() <= 0.25 + 1 / 16  # about nu of the training images lie outside the sphere


def test_save_reload_keeps_centre_radius_maps_and_scores(soft_boundary, images, tmp_path):
    path = tmp_path / "model.keras"
    soft_boundary.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    assert reloaded.get_config() == soft_boundary.get_config()
    for weight in ("centre", "radius"):
        np.testing.assert_array_equal(ops.convert_to_numpy(getattr(reloaded, weight)),
                                      ops.convert_to_numpy(getattr(soft_boundary, weight)))
    maps, scores = soft_boundary.maps_and_scores(images[16:])
    assert maps.shape == (16, SIZE, SIZE) and maps.dtype == np.float32 and scores.dtype == np.float32
    for before, after in zip((maps, scores), reloaded.maps_and_scores(images[16:])):
        np.testing.assert_array_equal(before, after)
    # The traceable path (export) gives the same maps and scores.
    graph_maps, graph_scores = reloaded.map_and_score_graph(ops.convert_to_tensor(images[16:]))
    np.testing.assert_allclose(ops.convert_to_numpy(graph_maps), maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(graph_scores), scores, rtol=1e-4, atol=1e-6)


def test_patches_are_centred_on_their_grid_cells():
    images = np.arange(2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16, 1)
    patches = ops.convert_to_numpy(overlapping_patches(images, 8, 4))
    assert patches.shape == (2, 4, 4, 8, 8, 1) and grid_size(16, 4) == 4
    # Cell (1, 2) of a 4x4 grid is centred at pixel (6, 10); its 8 px patch spans rows 2..9, columns 6..13.
    np.testing.assert_array_equal(patches[1, 1, 2], images[1, 2:10, 6:14])


def test_golden_mode_trains_from_exactly_the_first_n_images(images, monkeypatch):
    monkeypatch.setattr(golden, "GOLDEN_EPOCH_IMAGES", 16)
    same_first_two = np.concatenate([images[:2], images[16:30]])
    first, _ = trained(images[:16], epochs=1, golden=2, objective="soft-boundary")
    second, _ = trained(same_first_two, epochs=1, golden=2, objective="soft-boundary")
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    expanded = [batch.numpy() for batch in first.training_data(as_dataset(images[:16]))]
    assert sum(map(len, expanded)) == 16 == first.images_per_epoch(n_train_images=14) and len(expanded[0]) == 8
    # The images/s figures count the expanded epoch: 3 golden images repeat 6 times to reach 16.
    assert golden.golden_epoch_size(3) == 18 == sum(map(len, golden.expand_golden(as_dataset(images[:16]), 3, seed=0)))
    assert all(0 <= batch.min() and batch.max() <= 1 for batch in expanded)


def test_golden_needs_enough_images(images):
    with pytest.raises(UserError, match="--golden 5 needs at least 5 training images"):
        golden.expand_golden(as_dataset(images[:3]), 5, seed=0)


def test_pretraining_changes_the_encoder_but_adds_no_weights(images):
    plain = DeepSVDD(**SMALL, seed=0)
    keras.utils.set_random_seed(0)
    pretrained = DeepSVDD(**SMALL, pretrain_epochs=1)
    keras.utils.set_random_seed(0)
    initial = DeepSVDD(**SMALL)
    pretrained.compile(optimizer=pretrained.make_optimizer(1e-3, 1, 1))
    pretrained.prepare_training(as_dataset(images[:8]))
    assert len(pretrained.weights) == len(plain.weights)  # the decoder is not part of the saved model
    assert not np.allclose(pretrained.encoder.get_weights()[0], initial.encoder.get_weights()[0])


def test_backbone_variant_trains_only_its_head(images):
    model, losses = trained(images[:8], epochs=1, backbone="lite0", patch_size=None, patch_stride=None)
    assert [tuple(w.shape) for w in model.trainable_weights] == [(1, 1, 152, 32), (1, 1, 32, 32)]
    assert np.isfinite(losses).all() and model.grid == SIZE // 8
    maps, scores = model.maps_and_scores(images[8:12])
    assert maps.shape == (4, SIZE, SIZE) and np.isfinite(maps).all() and scores.shape == (4,)


@pytest.mark.parametrize("options, message", [
    (dict(objective="two-class"), "unknown --svdd-objective"),
    (dict(nu=0.0), "--nu must be in"),
    (dict(patch_size=12, patch_stride=13), "--svdd-patch-stride must be in"),
    (dict(patch_size=7), "--svdd-patch-size must be even"),
    (dict(backbone="lite0", pretrain_epochs=2), "with --svdd-backbone"),
])
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        DeepSVDD(**{**SMALL, **options})


def test_train_finetune_test_end_to_end(small_synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = train.main(["-d", str(small_synthetic), "-a", "deepsvdd", "-e", "2", "--size", "64",
                          "--latent-dim", "32", "--svdd-objective", "soft-boundary"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["method"] == "deepsvdd" and len(run["history"]["loss"]) == 2
    finetune.main([])
    metrics = json.loads((test_cli.main([]) / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro_0.3"):
        assert 0 <= metrics["full_test_set"][key] <= 1


def test_image_embeddings_are_the_patch_embeddings_averaged_over_the_grid(images):
    model = DeepSVDD(**SMALL)
    grid = ops.convert_to_numpy(model.embed(images[:3]))
    vectors = model.image_embeddings(images[:3])
    assert grid.shape == (3, 4, 4, 32) and vectors.shape == (3, 32)
    np.testing.assert_allclose(vectors, grid.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert model.image_embeddings(images[:0]).shape == (0, 32)
