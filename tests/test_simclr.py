"""SimCLR (selfsup/simclr.py) on the 64 px synthetic set: NT-Xent against a hand computation, the loss
falls, the trained embeddings detect defects, save/reload, grayscale, schedule, flags and user errors."""
import keras
import numpy as np
import pytest
from keras import ops
from sklearn.metrics import roc_auc_score

import train
from processing import data
from processing.errors import UserError
from registry import build_method
from selfsup.schedules import warmup_cosine
from selfsup.simclr import SimCLR, nt_xent
from selfsup.views import ViewAugmenter
from tests.test_patchcore import SIZE, as_dataset

EPOCHS = 6
BATCH = 20
LEARNING_RATE = 1e-3  # above the default 3e-4, so that a dozen steps show the loss falling


def test_nt_xent_matches_a_hand_computed_case():
    projections = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.5]], np.float32)  # pairs (0, 2), (1, 3)
    temperature = 0.5
    unit = projections / np.linalg.norm(projections, axis=1, keepdims=True)
    losses = []
    for i, partner in enumerate([2, 3, 0, 1]):
        logits = {j: unit[i] @ unit[j] / temperature for j in range(4) if j != i}
        losses.append(-np.log(np.exp(logits[partner]) / sum(np.exp(value) for value in logits.values())))
    assert float(nt_xent(projections, temperature)) == pytest.approx(np.mean(losses), rel=1e-5)


def test_warmup_cosine_schedule_rises_then_decays_to_zero():
    schedule = warmup_cosine(3e-4, steps_per_epoch=10, epochs=10)  # 100 steps, 10 of warm-up
    rates = np.array([float(schedule(step)) for step in (0, 5, 10, 55, 100)])
    np.testing.assert_allclose(rates, [0, 1.5e-4, 3e-4, 1.5e-4, 0], atol=1e-9)


@pytest.fixture(scope="module")
def splits(small_synthetic):
    dataset = data.scan_dataset(small_synthetic)
    train_images, _ = data.load_arrays(dataset, dataset.train, SIZE, 3)
    test_images, _ = data.load_arrays(dataset, dataset.test, SIZE, 3)
    return train_images, test_images, np.array([sample.label for sample in dataset.test])


@pytest.fixture(scope="module")
def trained(splits):
    """SimCLR after EPOCHS x 2 steps, and its NT-Xent loss on one fixed set of views before and after.

    Fixed views and inference mode (no dropout) take the augmentation noise out of the comparison,
    which the few steps a test can afford would otherwise drown.
    """
    keras.utils.set_random_seed(0)
    model = SimCLR(input_size=SIZE, channels=3, seed=0)
    train_images = splits[0]
    fixed_views = ViewAugmenter(SIZE, seed=123)(np.concatenate([train_images, train_images]))

    def fixed_views_loss():
        embeddings = ops.mean(model.embedder(fixed_views), axis=(1, 2))
        return float(nt_xent(model.projector(embeddings), model.temperature))

    loss_before = fixed_views_loss()
    model.compile(optimizer=model.make_optimizer(LEARNING_RATE, -(-len(train_images) // BATCH), EPOCHS))
    model.fit(as_dataset(train_images, BATCH), epochs=EPOCHS, shuffle=False, verbose=0)
    loss_after = fixed_views_loss()
    model.calibrate(as_dataset(train_images))
    return model, loss_before, loss_after


def test_contrastive_loss_falls(trained):
    _, loss_before, loss_after = trained
    assert loss_after < loss_before - 0.1, (loss_before, loss_after)


def test_trained_embeddings_detect_synthetic_defects(trained, splits):
    model = trained[0]
    _, test_images, labels = splits
    maps, scores = model.maps_and_scores(test_images)
    assert maps.shape == (len(test_images), SIZE, SIZE) and np.isfinite(maps).all()
    assert roc_auc_score(labels, scores) > 0.75


def test_save_reload_gives_identical_maps_and_scores(trained, splits, tmp_path):
    model = trained[0]
    test_images = splits[1][:6]
    maps, scores = model.maps_and_scores(test_images)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert reloaded.temperature == model.temperature and reloaded.detector == "knn"
    reloaded_maps, reloaded_scores = reloaded.maps_and_scores(test_images)
    np.testing.assert_array_equal(reloaded_maps, maps)
    np.testing.assert_array_equal(reloaded_scores, scores)


def test_grayscale_images_are_replicated_for_the_backbone(splits):
    gray = splits[0][:8].mean(axis=-1, keepdims=True)
    model = SimCLR(input_size=SIZE, channels=1, detector="cosine")
    model.calibrate(as_dataset(gray))
    maps, scores = model.maps_and_scores(gray[:2])
    assert maps.shape == (2, SIZE, SIZE) and scores.shape == (2,)


def test_flags_reach_the_model():
    config = train.parse_args(["-a", "simclr", "--size", "64", "--detector", "gmm", "--temperature", "0.2"])
    model = build_method("simclr", config)
    train.apply_method_defaults(config, model)
    assert (model.detector, model.temperature) == ("gmm", 0.2)
    assert (config.batch_size, config.learning_rate, config.validation_fraction) == (256, 3e-4, 0.0)
    assert not model.early_stopping and model.min_train_images == 4  # GMM components


def test_user_errors():
    with pytest.raises(UserError, match="--temperature must be positive"):
        SimCLR(temperature=0, input_size=SIZE)
    with pytest.raises(UserError, match="divisible by 16, got 72; pass e.g. --size 64"):
        SimCLR(input_size=72)
