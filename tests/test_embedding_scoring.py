"""Embedding scoring (selfsup/embedding_scoring.py), on a model whose embeddings are pooled pixels (no
training, so every detector choice is cheap to check): each detector finds pasted squares, maps and
scores survive save/reload, the state shapes travel in the config, user errors."""
import keras
import numpy as np
import pytest
from keras import ops
from sklearn.metrics import roc_auc_score

from processing.errors import UserError
from selfsup.embedding_scoring import MAX_PATCH_VECTORS, EmbeddingScoredModel, StoredDetector
from tests.test_patchcore import SIZE, as_dataset, synthetic_images, with_pasted_squares

POOL = 8


@keras.saving.register_keras_serializable(package="tests")
class PooledPixels(EmbeddingScoredModel):
    """Patch embedding: mean and mean square of each colour over an 8x8 cell; image embedding: their mean."""

    method_name = "pooled-pixels"

    def embeddings(self, images):
        x = ops.convert_to_tensor(images)
        pooled = ops.concatenate([ops.average_pool(x, POOL, POOL), ops.average_pool(x * x, POOL, POOL)], axis=-1)
        patches = ops.convert_to_numpy(pooled)
        return patches, patches.mean(axis=(1, 2))


@pytest.fixture(scope="module")
def images(small_synthetic):
    return synthetic_images(small_synthetic)


@pytest.mark.parametrize("detector", ["knn", "mahalanobis", "cosine", "gmm"])
def test_each_detector_finds_pasted_squares_and_reloads_identically(detector, images, tmp_path):
    train, normal = images
    defective, masks = with_pasted_squares(normal)
    model = PooledPixels(detector=detector, input_size=SIZE, channels=3)
    model.calibrate(as_dataset(train))
    maps, scores = model.maps_and_scores(np.concatenate([normal, defective]))
    assert maps.shape == (20, SIZE, SIZE) and maps.dtype == np.float32 and scores.dtype == np.float32
    labels = np.r_[np.zeros(10), np.ones(10)]
    map_maxima = maps.reshape(20, -1).max(axis=1)
    assert roc_auc_score(labels, map_maxima) > 0.9
    # A white square shifts the image mean a little; the image detector still ranks most of them higher.
    assert roc_auc_score(labels, scores) > 0.7
    # Inside the square the map is higher than elsewhere in the same image.
    inside = [m[mask].mean() for m, mask in zip(maps[10:], masks)]
    outside = [m[~mask].mean() for m, mask in zip(maps[10:], masks)]
    assert np.mean(np.array(inside) > np.array(outside)) >= 0.9

    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    reloaded_maps, reloaded_scores = reloaded.maps_and_scores(np.concatenate([normal, defective]))
    np.testing.assert_array_equal(reloaded_maps, maps)
    np.testing.assert_array_equal(reloaded_scores, scores)


def test_knn_state_shapes_and_patch_subsampling(images):
    model = PooledPixels(detector="knn", input_size=SIZE, channels=3)
    model.calibrate(as_dataset(images[0]))
    shapes = model.get_config()["detector_shapes"]
    assert shapes["image"] == {"train_features": [30, 6]}
    assert shapes["patch"] == {"train_features": [min(30 * (SIZE // POOL) ** 2, MAX_PATCH_VECTORS), 6]}
    assert model.min_train_images == 5  # k of the kNN detector


def test_mahalanobis_covariance_choice_reaches_the_detector(images):
    pinv = PooledPixels(detector="mahalanobis", covariance="pinv", input_size=SIZE, channels=3)
    shrunk = PooledPixels(detector="mahalanobis", input_size=SIZE, channels=3)
    for model in (pinv, shrunk):
        model.calibrate(as_dataset(images[0]))
    assert pinv.image_detector.params == {"covariance": "pinv"}
    assert not np.allclose(pinv.score(images[1]), shrunk.score(images[1]))


def test_user_errors():
    with pytest.raises(UserError, match="unknown detector 'lof'; choose one of: knn, mahalanobis, cosine, gmm"):
        PooledPixels(detector="lof", input_size=SIZE, channels=3)
    with pytest.raises(UserError, match="unknown covariance"):
        PooledPixels(detector="mahalanobis", covariance="full", input_size=SIZE, channels=3)
    uncalibrated = PooledPixels(input_size=SIZE, channels=3)
    with pytest.raises(UserError, match="not fitted yet: calibrate"):
        uncalibrated.score(np.zeros((1, SIZE, SIZE, 3), np.float32))
    with pytest.raises(UserError, match="needs normal training images"):
        uncalibrated.calibrate(as_dataset(np.zeros((0, SIZE, SIZE, 3), np.float32)))


def test_calibrating_again_on_data_of_another_size_is_refused(images):
    detector = StoredDetector("knn", {"k": 2}, name="image_detector")
    detector.fit_vectors(np.eye(4, dtype=np.float32))
    detector.fit_vectors(np.eye(4, dtype=np.float32)[::-1])  # same shapes: refitted in place
    with pytest.raises(UserError, match="train a new model instead"):
        detector.fit_vectors(np.eye(5, 4, dtype=np.float32))
