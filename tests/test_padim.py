"""PaDiM (memorybank/padim.py) on 64 px synthetic images: the fitted Gaussians against numpy, map
shapes, a pasted defect, save/reload, grayscale, user errors, the CLIs."""
import json

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import finetune
import test as test_cli
import train
import memorybank.padim as padim_module
from memorybank.padim import RIDGE, PaDiM, RunningGaussians, inverses, random_channels, semi_orthogonal
from processing.errors import UserError
from tests.test_patchcore import (SIZE, as_dataset, pasted_square_aurocs, patch_scores, synthetic_images,
                                  with_pasted_squares)


@pytest.fixture(scope="module")
def images(small_synthetic):
    return synthetic_images(small_synthetic)


def calibrated(images, **options):
    """A 20-dim PaDiM (unless options say otherwise) calibrated on the normal images of `images`."""
    model = PaDiM(input_size=SIZE, channels=3, **{"padim_features": 20, **options})
    model.calibrate(as_dataset(images[0]))
    return model


@pytest.fixture(scope="module")
def padim(images):
    return calibrated(images)


@pytest.mark.parametrize("chunk_images", [1, 4, 100])  # every batch merged alone, chunks across batches, one chunk
def test_running_gaussians_match_numpy_over_uneven_batches(chunk_images, monkeypatch):
    monkeypatch.setattr(padim_module, "POSITION_BLOCK", 2)  # the 5 positions' products in blocks of 2, 2, 1
    # Far from zero, as features can be: a scatter from raw sums of x x^T would lose digits here.
    features = np.random.default_rng(0).normal(1e4, 2.0, (23, 5, 4))  # (images, positions, dims)
    gaussians = RunningGaussians(chunk_bytes=chunk_images * 5 * 4 * 8)
    for start, stop in ((0, 1), (1, 9), (9, 23)):
        gaussians.update(features[start:stop])
    assert gaussians.count == 23
    mean, scatter = gaussians.finish()
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-12)
    for position in range(5):
        np.testing.assert_allclose(scatter[position] / 22, np.cov(features[:, position], rowvar=False), rtol=1e-9)


def test_inverses_in_blocks_match_numpy(monkeypatch):
    monkeypatch.setattr(padim_module, "POSITION_BLOCK", 2)
    factors = np.random.default_rng(0).normal(size=(5, 4, 4))
    matrices = factors @ factors.transpose(0, 2, 1) + np.eye(4)
    inverted = inverses(matrices)
    assert inverted.dtype == np.float32
    np.testing.assert_allclose(inverted, np.linalg.inv(matrices), rtol=1e-5, atol=1e-6)


def test_patch_scores_are_mahalanobis_distances_to_each_positions_gaussian(padim, images):
    chosen = padim.reductions[0].numpy()
    assert len(set(chosen)) == 20 and chosen.max() < padim.feature_dim
    train_features = padim.extract(images[0])[..., chosen].reshape(30, -1, 20)
    test_features = padim.extract(images[1][:2])[..., chosen].reshape(2, -1, 20)
    scores = patch_scores(padim, padim.extract(images[1][:2])).reshape(2, -1)
    for position in (0, 27, 63):
        samples = train_features[:, position].astype(np.float64)
        precision = np.linalg.inv(np.cov(samples, rowvar=False) + RIDGE * np.eye(20))
        centred = test_features[:, position] - samples.mean(axis=0)
        expected = np.sqrt(np.einsum("nd,de,ne->n", centred, precision, centred))
        np.testing.assert_allclose(scores[:, position], expected, rtol=1e-3)


def test_maps_and_scores_shapes_and_contract(padim, images):
    maps, scores = padim.maps_and_scores(images[1])
    assert maps.shape == (10, SIZE, SIZE) and maps.dtype == np.float32 and np.isfinite(maps).all()
    np.testing.assert_array_equal(scores, maps.reshape(10, -1).max(axis=1))  # PaDiM: the max of the map
    assert not padim.trainable_weights


def test_pasted_square_scores_higher_and_lights_up_its_place(padim, images):
    image_auroc, pixel_auroc = pasted_square_aurocs(padim, images[1])
    assert image_auroc >= 0.9 and pixel_auroc >= 0.8


def test_saved_model_reloads_with_identical_maps(padim, images, tmp_path):
    path = tmp_path / "model.keras"
    padim.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(reloaded.reductions[0].numpy(), padim.reductions[0].numpy())
    np.testing.assert_array_equal(reloaded.anomaly_map(images[1]), padim.anomaly_map(images[1]))


def localises_and_reloads(model, held_out, tmp_path):
    """Assert that the calibrated model finds pasted squares and that a saved copy gives the same maps;
    return the copy."""
    image_auroc, pixel_auroc = pasted_square_aurocs(model, held_out)
    assert image_auroc >= 0.9 and pixel_auroc >= 0.8
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_array_equal(reloaded.anomaly_map(held_out), model.anomaly_map(held_out))
    return reloaded


def test_stride_4_grid_from_stage_1_localises_and_reloads(images, tmp_path):
    """--feature-stages 1 2 4 (the bench's padim-lite0-st124): one Gaussian per 4x4 pixels."""
    model = calibrated(images, feature_stages=(1, 2, 4))
    assert (model.grid_height, model.grid_width, model.feature_dim) == (SIZE // 4, SIZE // 4, 24 + 40 + 112)
    reloaded = localises_and_reloads(model, images[1], tmp_path)
    assert reloaded.feature_stages == (1, 2, 4)


def test_deep_features_come_from_the_last_stage_and_reload(images, tmp_path):
    """--feature-stages 1 2 4 6 --padim-deep-features 5: 20 channels drawn from stages 1 2 4 (176 of
    them), 5 from stage 6 (its 320), and the Gaussians model all 25."""
    model = PaDiM(input_size=SIZE, channels=3, padim_features=20, deep_features=5, feature_stages=(1, 2, 4, 6))
    chosen = model.reductions[0].numpy()
    assert model.feature_dim == 176 + 320 and len(set(chosen)) == 25
    np.testing.assert_array_equal(chosen[:20], random_channels(176, 20, seed=0))
    assert (chosen[20:] >= 176).all() and (chosen[20:] < 496).all()
    model.calibrate(as_dataset(images[0]))
    assert model.means[0].shape == (SIZE // 4 * SIZE // 4, 25) and model.precisions[0].shape[1:] == (25, 25)
    reloaded = localises_and_reloads(model, images[1], tmp_path)
    assert reloaded.deep_features == 5


def test_without_deep_features_one_draw_covers_every_stage():
    model = PaDiM(input_size=SIZE, channels=3, padim_features=20, feature_stages=(1, 2, 4, 6))
    np.testing.assert_array_equal(model.reductions[0].numpy(), random_channels(496, 20, seed=0))


@pytest.mark.parametrize("options, message", [
    (dict(feature_stages=(4,), deep_features=3), "needs two or more --feature-stages"),
    (dict(feature_stages=(1, 2, 4, 6), deep_features=321), "--padim-deep-features must be between 0 and 320"),
    (dict(feature_stages=(1, 2, 4, 6), deep_features=3, padim_features=177),
     "--padim-features must be between 1 and 176"),
    (dict(feature_stages=(1, 2, 4, 6), embedding=("pca", "subset"), deep_features=(3, 2, 1)),
     r"--padim-deep-features takes one count, or one per --padim-embedding member \(2\), got 3"),
    (dict(feature_stages=(1, 2, 4, 6), embedding=("pca", "subset"), deep_features=(3, -1)),
     "--padim-deep-features must be between 0 and 320 .* got 3 -1"),
])
def test_bad_deep_features_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        PaDiM(input_size=SIZE, channels=3, **options)


def test_channel_subset_follows_the_seed():
    np.testing.assert_array_equal(random_channels(152, 20, seed=1), random_channels(152, 20, seed=1))
    assert not np.array_equal(random_channels(152, 20, seed=1), random_channels(152, 20, seed=2))
    assert len(set(random_channels(152, 152, seed=1))) == 152


def test_semi_orthogonal_has_orthonormal_columns_and_follows_the_seed():
    projection = semi_orthogonal(176, 20, seed=3)
    assert projection.shape == (176, 20) and projection.dtype == np.float32
    np.testing.assert_allclose(projection.T @ projection, np.eye(20), atol=1e-5)
    np.testing.assert_array_equal(projection, semi_orthogonal(176, 20, seed=3))
    assert not np.allclose(projection, semi_orthogonal(176, 20, seed=4))
    assert semi_orthogonal(320, 0, seed=1).shape == (320, 0)  # no deep draw


def test_orthogonal_embedding_models_projected_features_and_reloads(images, tmp_path):
    """--padim-embedding orthogonal with deep features: block-diagonal projection (stages 1 2 4 onto 20
    directions, stage 6 onto 5), Gaussians of the projected features, same maps after a reload."""
    model = PaDiM(input_size=SIZE, channels=3, padim_features=20, deep_features=5, feature_stages=(1, 2, 4, 6),
                  embedding="orthogonal", seed=2)
    projection = model.reductions[0].numpy()
    np.testing.assert_array_equal(projection[:176, :20], semi_orthogonal(176, 20, seed=2))
    np.testing.assert_array_equal(projection[176:, 20:], semi_orthogonal(320, 5, seed=3))
    assert not projection[176:, :20].any() and not projection[:176, 20:].any()
    model.calibrate(as_dataset(images[0]))
    train_features = (model.extract(images[0]) @ projection).reshape(30, -1, 25).astype(np.float64)
    position = 40
    np.testing.assert_allclose(model.means[0].numpy()[position], train_features[:, position].mean(axis=0),
                               rtol=1e-4, atol=1e-4)
    covariance = np.cov(train_features[:, position], rowvar=False) + RIDGE * np.eye(25)
    np.testing.assert_allclose(model.precisions[0].numpy()[position], np.linalg.inv(covariance), rtol=2e-3, atol=2e-3)
    reloaded = localises_and_reloads(model, images[1], tmp_path)
    assert reloaded.embeddings == ("orthogonal",)


def test_pca_embedding_projects_onto_the_leading_principal_axes_and_reloads(images, tmp_path):
    """--padim-embedding pca with deep features: stages 1 2 4 onto the 20 leading principal axes of their
    training features pooled over all positions, stage 6 onto its own 5; no seed in it."""
    def pca_calibrated(seed):
        return calibrated(images, deep_features=5, feature_stages=(1, 2, 4, 6), embedding="pca", seed=seed)

    model = pca_calibrated(seed=2)
    projection = model.reductions[0].numpy()
    assert not projection[176:, :20].any() and not projection[:176, 20:].any()
    pooled = model.extract(images[0]).reshape(-1, 496).astype(np.float64)
    for block, columns in ((slice(0, 176), slice(0, 20)), (slice(176, 496), slice(20, 25))):
        axes = projection[block, columns]
        np.testing.assert_allclose(axes.T @ axes, np.eye(axes.shape[1]), atol=1e-5)
        _, eigenvectors = np.linalg.eigh(np.cov(pooled[:, block], rowvar=False))
        leading = eigenvectors[:, ::-1][:, :axes.shape[1]]
        # The same subspace (eigenvectors are unique only up to sign): equal orthogonal projectors.
        np.testing.assert_allclose(axes @ axes.T, leading @ leading.T, atol=1e-4)
    np.testing.assert_allclose(pca_calibrated(seed=7).anomaly_map(images[1]), model.anomaly_map(images[1]), rtol=1e-5)
    reloaded = localises_and_reloads(model, images[1], tmp_path)
    assert reloaded.embeddings == ("pca",)


def test_shrinkage_pulls_each_covariance_towards_the_pooled_one_and_reloads(images, tmp_path):
    """--padim-shrinkage 0.3: each position's covariance is 0.7 of its own plus 0.3 of the mean over
    positions, then the ridge."""
    model = calibrated(images, shrinkage=0.3)
    chosen = model.reductions[0].numpy()
    train_features = model.extract(images[0])[..., chosen].reshape(30, -1, 20).astype(np.float64)
    own = np.stack([np.cov(train_features[:, position], rowvar=False) for position in range(train_features.shape[1])])
    for position in (0, 27, 63):
        covariance = 0.7 * own[position] + 0.3 * own.mean(axis=0) + RIDGE * np.eye(20)
        np.testing.assert_allclose(model.precisions[0].numpy()[position], np.linalg.inv(covariance),
                                   rtol=2e-3, atol=2e-3)
    reloaded = localises_and_reloads(model, images[1], tmp_path)
    assert reloaded.shrinkage == 0.3


@pytest.mark.parametrize("shrinkage", [-0.1, 1.5])
def test_shrinkage_outside_0_1_is_a_user_error(shrinkage):
    with pytest.raises(UserError, match=f"--padim-shrinkage must be between 0 and 1, got {shrinkage}"):
        PaDiM(input_size=SIZE, channels=3, shrinkage=shrinkage)


def test_members_average_their_distance_maps_and_reload(images, tmp_path):
    """--padim-embedding pca subset subset: three sets of Gaussians, the subsets drawn with seed and
    seed + 2; the map is the mean of the three one-member models' maps."""
    model = calibrated(images, embedding=("pca", "subset", "subset"), seed=3)
    np.testing.assert_array_equal(model.reductions[1].numpy(), random_channels(152, 20, seed=3))
    np.testing.assert_array_equal(model.reductions[2].numpy(), random_channels(152, 20, seed=5))
    alone = [calibrated(images, embedding="pca"), calibrated(images, seed=3), calibrated(images, seed=5)]
    mean_map = np.mean([member.anomaly_map(images[1]) for member in alone], axis=0)
    np.testing.assert_allclose(model.anomaly_map(images[1]), mean_map, rtol=1e-4, atol=1e-4)
    reloaded = localises_and_reloads(model, images[1], tmp_path)
    assert reloaded.embeddings == ("pca", "subset", "subset")


def test_members_take_their_own_deep_features(images, tmp_path):
    """--feature-stages 1 2 4 6 --padim-embedding pca subset pca --padim-deep-features 5 0 0: the members
    without deep channels model stages 1 2 4 alone (the two pca members differ), and the map is the mean of
    the maps of the one-member models of those stages."""
    model = calibrated(images, embedding=("pca", "subset", "pca"), deep_features=(5, 0, 0),
                       feature_stages=(1, 2, 4, 6), seed=3)
    assert model.member_dims == [25, 20, 20] and model.precisions[1].shape[1:] == (20, 20)
    np.testing.assert_array_equal(model.reductions[1].numpy(), random_channels(176, 20, seed=3))
    assert not model.reductions[2].numpy()[176:].any() and model.reductions[0].numpy()[176:].any()
    alone = [calibrated(images, embedding="pca", deep_features=5, feature_stages=(1, 2, 4, 6)),
             calibrated(images, feature_stages=(1, 2, 4), seed=3),
             calibrated(images, embedding="pca", feature_stages=(1, 2, 4))]
    mean_map = np.mean([member.anomaly_map(images[1]) for member in alone], axis=0)
    np.testing.assert_allclose(model.anomaly_map(images[1]), mean_map, rtol=1e-4, atol=1e-4)
    reloaded = localises_and_reloads(model, images[1], tmp_path)
    assert reloaded.deep_features == [5, 0, 0] and reloaded.member_deep_features == [5, 0, 0]


@pytest.mark.parametrize("embedding, message", [
    ("random", "--padim-embedding takes one or more of subset, orthogonal, pca, got random"),
    (("pca", "subset", "pca"), "--padim-embedding names pca more than once with the same --padim-deep-features"),
    ((), "--padim-embedding takes one or more of subset, orthogonal, pca, got none")])
def test_bad_embeddings_are_user_errors(embedding, message):
    with pytest.raises(UserError, match=message):
        PaDiM(input_size=SIZE, channels=3, embedding=embedding)


def test_grayscale_works(small_synthetic):
    gray, held_out = synthetic_images(small_synthetic, channels=1)
    model = PaDiM(input_size=SIZE, channels=1, padim_features=20)
    model.calibrate(as_dataset(gray))
    defective, _ = with_pasted_squares(held_out)
    maps, scores = model.maps_and_scores(np.concatenate([held_out, defective]))
    assert maps.shape == (20, SIZE, SIZE)
    assert roc_auc_score(np.r_[np.zeros(10), np.ones(10)], scores) >= 0.9


# ---- user errors


def test_one_training_image_is_a_user_error():
    with pytest.raises(UserError, match="at least 2 training images"):
        PaDiM(input_size=SIZE).calibrate(as_dataset(np.zeros((1, SIZE, SIZE, 3), np.float32)))


def test_images_of_another_size_are_refused(padim):
    with pytest.raises(UserError, match="use the --size and -c the model was trained with"):
        padim.anomaly_map(np.zeros((1, SIZE, SIZE, 1), np.float32))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_too_many_padim_features_is_one_line(workdir, small_synthetic, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["-d", str(small_synthetic), "-a", "padim", "--padim-features", "500"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--padim-features must be between 1 and 152" in err


def test_train_finetune_test_end_to_end(workdir, small_synthetic):
    run_dir = train.main(["-d", str(small_synthetic), "-a", "padim", "--size", "64", "-c", "grayscale",
                          "--input-normalization", "imagenet", "--padim-embedding", "orthogonal",
                          "--padim-shrinkage", "0.1", "--feature-stages", "1", "2", "4", "6",
                          "--padim-deep-features", "10"])
    options = json.loads((run_dir / "run.json").read_text())["config"]["options"]
    assert options["padim_features"] == 100 and options["input_normalization"] == "imagenet"
    assert options["padim_embedding"] == ["orthogonal"] and options["padim_shrinkage"] == 0.1
    assert options["padim_deep_features"] == [10]
    reloaded = keras.saving.load_model(run_dir / "model.keras", compile=False)
    backbone = next(layer for layer in reloaded.patch_features.layers if isinstance(layer, keras.Model))
    assert reloaded.input_normalization == "imagenet" and reloaded.embeddings == ("orthogonal",)
    assert reloaded.shrinkage == 0.1 and reloaded.deep_features == 10
    np.testing.assert_allclose(backbone.get_layer("normalize").scale, [1 / 0.229, 1 / 0.224, 1 / 0.225])
    finetune.main([])
    metrics = json.loads((test_cli.main([]) / "metrics.json").read_text())
    assert metrics["full_test_set"]["image_auroc"] > 0.5
