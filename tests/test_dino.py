"""DINO (selfsup/dino.py) on 64 px synthetic images: the loss against a hand computation, the teacher
is an EMA of the student after each step, the centre follows the teacher outputs, multi-crop shapes,
save/reload (teacher and centre included), flags and user errors."""
import keras
import numpy as np
import pytest
from keras import ops

import train
from processing.errors import UserError
from registry import build_method
from selfsup.dino import CENTRE_MOMENTUM, PROTOTYPES, DINO, dino_loss
from tests.test_patchcore import SIZE, as_dataset, synthetic_images

MOMENTUM = 0.9  # far from 1, so one step moves the teacher measurably


def test_dino_loss_matches_a_hand_computed_case():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(3, 2, 4)).astype(np.float32)  # 2 global + 1 local view, 2 images, 4 prototypes
    teacher = rng.normal(size=(2, 2, 4)).astype(np.float32)
    centre = rng.normal(size=4).astype(np.float32)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    terms = [-(softmax((teacher[g, n] - centre) / 0.04) * np.log(softmax(student[v, n] / 0.1))).sum()
             for g in range(2) for v in range(3) if v != g for n in range(2)]
    assert float(dino_loss(student, teacher, centre, 0.1, 0.04)) == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.fixture(scope="module")
def images(small_synthetic):
    return synthetic_images(small_synthetic)


@pytest.fixture(scope="module")
def stepped(images):
    """A DINO model before (weights copied) and after one training step on 16 images."""
    keras.utils.set_random_seed(0)
    model = DINO(local_crops=1, teacher_momentum=MOMENTUM, input_size=SIZE, channels=3, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = {"teacher": [w.numpy().copy() for w in model.teacher_embedder.weights + model.teacher_head.weights],
              "student": [w.numpy().copy() for w in model.embedder.weights + model.student_head.weights]}
    model.train_on_batch(images[0][:16])
    model.calibrate(as_dataset(images[0]))
    return model, before


def test_teacher_is_an_ema_of_the_student_after_each_step(stepped):
    model, before = stepped
    teacher_after = [w.numpy() for w in model.teacher_embedder.weights + model.teacher_head.weights]
    student_after = [w.numpy() for w in model.embedder.weights + model.student_head.weights]
    moved = 0
    for old, new, student in zip(before["teacher"], teacher_after, student_after):
        np.testing.assert_allclose(new, MOMENTUM * old + (1 - MOMENTUM) * student, rtol=1e-5, atol=1e-6)
        moved += not np.allclose(new, old)
    assert moved > 10  # the step changed the student, and the teacher followed a tenth of the way
    assert not any(w.trainable for w in model.teacher_embedder.weights + model.teacher_head.weights)
    changed = [not np.allclose(old, new) for old, new in zip(before["student"], student_after)]
    assert any(changed)


def test_centre_is_a_running_mean_of_the_teacher_outputs(stepped):
    model, _ = stepped
    centre = model.centre.numpy().copy()
    assert np.abs(centre).max() > 0  # the training step moved it from zeros
    teacher = np.random.default_rng(1).normal(size=(2, 3, PROTOTYPES)).astype(np.float32)
    student = np.zeros((3, 3, PROTOTYPES), np.float32)
    model.compute_loss(y_pred=(student, teacher), training=True)
    expected = CENTRE_MOMENTUM * centre + (1 - CENTRE_MOMENTUM) * teacher.reshape(-1, PROTOTYPES).mean(axis=0)
    np.testing.assert_allclose(model.centre.numpy(), expected, rtol=1e-5, atol=1e-7)
    model.compute_loss(y_pred=(student, teacher), training=False)  # a validation loss leaves it alone
    np.testing.assert_allclose(model.centre.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_multi_crop_outputs(stepped, images):
    model, _ = stepped
    student, teacher = model(images[1][:3])
    assert tuple(student.shape) == (3, 3, PROTOTYPES)  # 2 global + 1 local views of 3 images
    assert tuple(teacher.shape) == (2, 3, PROTOTYPES)
    assert model.local_views.output_size == 32  # 3/8 of 64, rounded to a multiple of 16


def test_save_reload_keeps_teacher_centre_and_maps(stepped, images, tmp_path):
    model, _ = stepped
    held_out = images[1][:4]
    maps, scores = model.maps_and_scores(held_out)
    assert maps.shape == (4, SIZE, SIZE) and np.isfinite(maps).all() and scores.shape == (4,)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(reloaded.centre.numpy(), model.centre.numpy())
    for saved, loaded in zip(model.teacher_embedder.weights, reloaded.teacher_embedder.weights):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    reloaded_maps, reloaded_scores = reloaded.maps_and_scores(held_out)
    np.testing.assert_array_equal(reloaded_maps, maps)
    np.testing.assert_array_equal(reloaded_scores, scores)


def test_the_teacher_embedder_is_scored(stepped, images):
    model, _ = stepped
    patches, pooled = model.embeddings(images[1][:2])
    teacher = ops.convert_to_numpy(model.teacher_embedder(images[1][:2]))
    np.testing.assert_allclose(patches, teacher, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled, teacher.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_flags_reach_the_model():
    config = train.parse_args(["-a", "dino", "--size", "64", "--dino-local-crops", "2", "--teacher-momentum", "0.99",
                               "--teacher-temperature", "0.06", "--detector", "mahalanobis", "--covariance", "pinv"])
    model = build_method("dino", config)
    assert (model.local_crops, model.teacher_momentum, model.teacher_temperature) == (2, 0.99, 0.06)
    assert model.patch_detector.params == {"covariance": "pinv"}


@pytest.mark.parametrize("options, message", [
    ({"local_crops": -1}, "--dino-local-crops must be 0 or more"),
    ({"teacher_momentum": 1.5}, r"--teacher-momentum must be in \[0, 1\]"),
    ({"teacher_temperature": 0}, "--teacher-temperature must be positive"),
])
def test_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        DINO(input_size=SIZE, **options)
