"""Export of CutPaste, SimCLR and DINO (processing/export.py): the keras.ops detectors equal the numpy
ones, every --detector traces into the serving graph with the eager maps and scores, and the exported
files give the Keras maps and scores in their own runtimes.

The models are untrained but calibrated (export does not depend on what the weights learnt), 64 px.
"""
import numpy as np
import pytest
import tensorflow as tf

from detectors import make_detector
from processing import export
from processing.errors import UserError
from selfsup.cutpaste import CutPaste
from selfsup.dino import DINO
from selfsup.embedding_scoring import detector_params
from selfsup.graph_detectors import detector_scores
from selfsup.simclr import SimCLR
from tests.test_export import RUNTIMES, TOLERANCE
from tests.test_patchcore import SIZE, as_dataset, synthetic_images

DETECTOR_SETTINGS = [("knn", "shrinkage"), ("mahalanobis", "shrinkage"), ("mahalanobis", "pinv"),
                     ("cosine", "shrinkage"), ("gmm", "shrinkage")]


@pytest.fixture(scope="module")
def images(small_synthetic):
    """(16 normal images to calibrate on, 3 others as a camera gives them: uint8)."""
    train, held_out = synthetic_images(small_synthetic)
    return train[:16], np.round(held_out[:3] * 255).astype(np.uint8)


def calibrated(model, images):
    model.calibrate(as_dataset(images[0]))
    return model


@pytest.fixture(scope="module")
def simclr_by_detector(images):
    return {(detector, covariance): calibrated(SimCLR(detector=detector, covariance=covariance, input_size=SIZE),
                                               images)
            for detector, covariance in DETECTOR_SETTINGS}


@pytest.fixture(scope="module")
def exportable(images, simclr_by_detector):
    """The models whose exported files are run: one per method."""
    return {"cutpaste": calibrated(CutPaste(input_size=SIZE, patch_size=32, patch_stride=16, head_layers=(8,)), images),
            "simclr": simclr_by_detector[("knn", "shrinkage")],
            "dino": calibrated(DINO(detector="mahalanobis", local_crops=0, input_size=SIZE), images)}


@pytest.mark.parametrize("detector, covariance", DETECTOR_SETTINGS)
def test_keras_ops_detectors_score_as_the_numpy_detectors(detector, covariance):
    rng = np.random.default_rng(0)
    # Correlated, offset vectors with unequal scales, so every term of each formula matters.
    mixing = rng.normal(size=(12, 12)) * np.linspace(0.2, 3, 12)
    train, queries = (rng.normal(size=(n, 12)) @ mixing + 5 for n in (120, 40))
    params = detector_params(detector, covariance)
    fitted = make_detector(detector, **params).fit(train)
    expected = fitted.score_samples(np.concatenate([queries, np.zeros((1, 12))]))
    scores = detector_scores(detector, fitted.state(), params, np.concatenate([queries, np.zeros((1, 12))]))
    # float32 against the detectors' float64: a precision matrix amplifies rounding to about 2e-5 relative.
    np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-4, atol=1e-5)


def test_a_detector_without_ops_scoring_is_refused():
    vectors = np.random.default_rng(0).normal(size=(50, 3))
    full = make_detector("gmm", n_components=2, covariance_type="full").fit(vectors)
    with pytest.raises(UserError, match="'full' covariances cannot be exported"):
        detector_scores("gmm", full.state(), {"covariance_type": "full"}, np.zeros((1, 3)))


@pytest.mark.parametrize("detector, covariance", DETECTOR_SETTINGS)
def test_every_detector_traces_to_the_eager_maps_and_scores(simclr_by_detector, images, detector, covariance):
    model = simclr_by_detector[(detector, covariance)]
    raw = images[1]
    outputs = export.serving_function(model)(tf.constant(raw))
    maps, scores = model.maps_and_scores(raw / np.float32(255))
    np.testing.assert_allclose(outputs[export.MAP_OUTPUT].numpy(), maps, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(outputs[export.SCORE_OUTPUT].numpy(), scores, atol=TOLERANCE, rtol=0)
    assert maps.std() > 0 and np.ptp(scores) > 0  # the check compares real maps, not constants


def tolerance(expected):
    """1e-4, or 1e-5 of the largest value: float32 keeps about 7 digits, and a GDE score (CutPaste) is a
    difference of terms in the hundreds, which runtimes summing in another order round apart by ~1e-4."""
    return TOLERANCE * max(1.0, float(np.abs(expected).max()) / 10)


@pytest.mark.parametrize("method, format_name", [("cutpaste", "onnx"), ("cutpaste", "tflite"),
                                                 ("simclr", "savedmodel"), ("simclr", "onnx"), ("dino", "onnx")])
def test_exported_file_gives_the_keras_maps_and_scores(exportable, images, tmp_path, method, format_name):
    model, raw = exportable[method], images[1]
    export.WRITERS[format_name](model, export.serving_function(model), tmp_path)
    maps, scores = RUNTIMES[format_name](tmp_path, raw)
    expected_maps, expected_scores = model.maps_and_scores(raw / np.float32(255))
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,)
    np.testing.assert_allclose(maps, expected_maps, atol=tolerance(expected_maps), rtol=0)
    np.testing.assert_allclose(scores, expected_scores, atol=tolerance(expected_scores), rtol=0)
