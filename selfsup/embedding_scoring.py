"""Anomaly maps and image scores from learned embeddings, for the self-supervised methods (SimCLR, DINO;
MAE uses StoredDetector for its image score only).

A method that subclasses `EmbeddingScoredModel` only says how it embeds images: `embeddings(images)`
returns (n, h, w, D) patch embeddings and (n, D') image embeddings. `calibrate()` then fits two
detectors of the same kind (`--detector`, see DETECTOR_PARAMS) on the normal training images:

* an image detector on the image embeddings: it gives the image score;
* a patch detector on patch embeddings pooled over all positions: each patch of a test image gets its
  score, and the grid of patch scores, upsampled and blurred (sigma 4, as PatchCore), is the anomaly map.

The patch detector is fitted on at most MAX_PATCH_VECTORS patch embeddings drawn at random (seeded):
256 px images give a thousand patches each, and a kNN search against all of them would make inference
as slow as an uncompressed PatchCore.

Both detectors keep their learned arrays in non-trainable weights (`StoredDetector`), so model.keras
carries them. Their shapes are known only after fitting (a kNN memory grows with the data), so they are
recorded in the model config (`detector_shapes`) and a reloaded model creates weights of those shapes.

Export (processing/export.py): `map_and_score_graph` scores a subclass's `graph_embeddings` with the
detectors written in keras.ops (selfsup/graph_detectors.py). Eager inference runs that same ops code,
except kNN, which keeps the numpy detector's blocked search so memory stays bounded for any bank size.
"""
import keras
import numpy as np
from keras import layers, ops

from detectors import DETECTORS, make_detector
from memorybank.features import upsample_and_blur, upsample_and_blur_graph
from processing.anomaly_model import AnomalyModel
from processing.errors import UserError
from processing.progress import report
from selfsup.graph_detectors import detector_scores

# The --detector choices and how each is set up for embeddings. GMM components use diagonal
# covariances: with a few hundred training images and 100-300 dimensions a full covariance per
# component would be singular.
DETECTOR_PARAMS = {
    "knn": {"k": 5, "metric": "cosine"},
    "mahalanobis": {},  # covariance: --covariance (Ledoit-Wolf shrinkage or pseudo-inverse)
    "cosine": {},
    "gmm": {"n_components": 4, "covariance_type": "diag"},
}
COVARIANCES = ("shrinkage", "pinv")
MAX_PATCH_VECTORS = 10000


def detector_params(detector, covariance="shrinkage"):
    """Constructor parameters of an embedding detector chosen by name; UserError for an unknown name."""
    if detector not in DETECTOR_PARAMS:
        raise UserError(f"unknown detector {detector!r}; choose one of: {', '.join(DETECTOR_PARAMS)}")
    if covariance not in COVARIANCES:
        raise UserError(f"unknown covariance {covariance!r}; choose one of: {', '.join(COVARIANCES)}")
    return {**DETECTOR_PARAMS[detector], **({"covariance": covariance} if detector == "mahalanobis" else {})}


@keras.saving.register_keras_serializable(package="selfsup")
class StoredDetector(layers.Layer):
    """A detector (detectors.make_detector) whose learned arrays live in this layer's non-trainable weights.

    `state_shapes` ({array name: shape}) is None until the first `fit_vectors`; a layer rebuilt from a
    saved config gets it back and creates its weights at once, ready for the saved values.
    """

    def __init__(self, detector="knn", params=None, state_shapes=None, **kwargs):
        super().__init__(**kwargs)
        self.detector = detector
        self.params = dict(params or {})
        make_detector(detector, **self.params)  # a bad name or parameter fails now, not after training
        self.state_shapes = None
        self.state_weights = {}
        if state_shapes:
            self._create_state(state_shapes)
        self.built = True

    def get_config(self):
        return {**super().get_config(), "detector": self.detector, "params": self.params,
                "state_shapes": self.state_shapes}

    def _create_state(self, shapes):
        self.state_shapes = {name: list(shape) for name, shape in shapes.items()}
        self.state_weights = {name: self.add_weight(shape=tuple(shape), initializer="zeros", trainable=False,
                                                    name=name) for name, shape in self.state_shapes.items()}

    @property
    def fitted(self):
        return self.state_shapes is not None

    def fit_vectors(self, vectors):
        state = make_detector(self.detector, **self.params).fit(vectors).state()
        shapes = {name: list(array.shape) for name, array in state.items()}
        if not self.fitted:
            self._create_state(shapes)
        elif shapes != self.state_shapes:
            # A Keras weight cannot be dropped once tracked, so state of another shape needs a new model.
            raise UserError(f"this model's {self.name} holds arrays of shapes {self.state_shapes}; calibrating "
                            f"again on this data would need {shapes}: train a new model instead")
        for name, array in state.items():
            self.state_weights[name].assign(array)

    def score_vectors(self, vectors):
        """(n,) float32 numpy anomaly scores of (n, D) vectors: by the numpy detector for kNN, whose blocked
        search bounds memory for any number of queries; by `score_graph` (the code export.py traces) else."""
        self._require_fitted()
        if self.detector != "knn":
            return ops.convert_to_numpy(self.score_graph(vectors))
        state = {name: ops.convert_to_numpy(weight) for name, weight in self.state_weights.items()}
        return DETECTORS[self.detector].from_state(state, **self.params).score_samples(vectors)

    def score_graph(self, vectors):
        """The same scores in keras.ops, from the weights (selfsup/graph_detectors.py)."""
        self._require_fitted()
        state = {name: ops.convert_to_tensor(weight) for name, weight in self.state_weights.items()}
        return detector_scores(self.detector, state, self.params, vectors)

    def _require_fitted(self):
        if not self.fitted:
            raise UserError(f"{self.name} is not fitted yet: calibrate the model on normal images (train.py) first")


def detector_min_samples(stored_detector):
    """The training images a detector needs: k for kNN, the components of a GMM, 2 for a covariance."""
    return make_detector(stored_detector.detector, **stored_detector.params)._min_samples()[0]


class EmbeddingScoredModel(AnomalyModel):
    """Base of the methods scored by detectors on their embeddings; subclasses implement `embeddings`."""

    def __init__(self, detector="knn", covariance="shrinkage", detector_shapes=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        params = detector_params(detector, covariance)
        self.detector = detector
        self.covariance = covariance
        self.seed = int(seed)
        shapes = detector_shapes or {}
        self.image_detector = StoredDetector(detector, params, shapes.get("image"), name="image_detector")
        self.patch_detector = StoredDetector(detector, params, shapes.get("patch"), name="patch_detector")
        self.built = True  # every part is built when created; nothing waits for a first call

    def get_config(self):
        return {**super().get_config(), "detector": self.detector, "covariance": self.covariance,
                "seed": self.seed, "detector_shapes": {"image": self.image_detector.state_shapes,
                                                       "patch": self.patch_detector.state_shapes}}

    @property
    def min_train_images(self):
        return detector_min_samples(self.image_detector)

    def embeddings(self, images):
        """(patch (n, h, w, D), image (n, D')) float32 numpy embeddings of a batch of images."""
        raise NotImplementedError

    def calibrate(self, normal_images):
        patch_batches, image_batches = [], []
        for batch in normal_images:
            patches, images = self.embeddings(self.check_images(batch))
            patch_batches.append(patches.reshape(-1, patches.shape[-1]))
            image_batches.append(images)
        if not image_batches:
            raise UserError(f"{self.method_name} needs normal training images to calibrate; train/good gave none")
        image_vectors, patch_vectors = np.concatenate(image_batches), np.concatenate(patch_batches)
        if len(patch_vectors) > MAX_PATCH_VECTORS:
            chosen = np.random.default_rng(self.seed).choice(len(patch_vectors), MAX_PATCH_VECTORS, replace=False)
            patch_vectors = patch_vectors[np.sort(chosen)]
        self.image_detector.fit_vectors(image_vectors)
        self.patch_detector.fit_vectors(patch_vectors)
        report(f"{self.method_name}: {self.detector} detectors fitted on {len(image_vectors)} image and "
               f"{len(patch_vectors)} patch embeddings")

    def graph_embeddings(self, images):
        """`embeddings` as keras.ops tensors, for export.py; a method without it cannot be exported."""
        raise NotImplementedError(f"{self.method_name} computes its embeddings outside keras.ops")

    def _batch_maps_and_scores(self, images):
        patches, image_embeddings = self.embeddings(images)
        n, height, width, dims = patches.shape
        patch_scores = self.patch_detector.score_vectors(patches.reshape(-1, dims)).reshape(n, height, width)
        return upsample_and_blur(patch_scores, self.input_size), self.image_detector.score_vectors(image_embeddings)

    def map_and_score_graph(self, images):
        patches, image_embeddings = self.graph_embeddings(images)
        _, height, width, dims = patches.shape
        patch_scores = self.patch_detector.score_graph(ops.reshape(patches, (-1, dims)))
        maps = upsample_and_blur_graph(ops.reshape(patch_scores, (-1, height, width)), self.input_size)
        return maps, self.image_detector.score_graph(image_embeddings)

    def _batch_maps(self, images):
        return self._batch_maps_and_scores(images)[0]

    def maps_and_scores(self, images):
        """Maps from the patch detector, scores from the image detector, `inference_batch_size` images at a time."""
        images = self.check_images(images)
        maps, scores = np.zeros(images.shape[:3], np.float32), np.zeros(len(images), np.float32)
        for start in range(0, len(images), self.inference_batch_size):
            batch = slice(start, start + self.inference_batch_size)
            maps[batch], scores[batch] = self._batch_maps_and_scores(images[batch])
        return maps, scores
