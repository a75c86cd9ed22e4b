"""Tiling: tile positions, stitching (round trip, averaging), batching across images, tiled training data,
and train -> finetune -> test on tiles."""
import json

import numpy as np
import pytest
from PIL import Image

from processing import data
from processing.errors import UserError
from processing.tiling import Stitcher, Tiling, stitch, tiled_maps_and_scores


def crops(image, tiling):
    positions = tiling.positions(*image.shape[:2])
    return np.stack([image[top:top + tiling.tile, left:left + tiling.tile] for top, left in positions]), positions


@pytest.mark.parametrize("length, expected", [(64, [0, 24, 32]), (100, [0, 24, 48, 68]), (32, [0]), (20, [0]),
                                              (56, [0, 24])])
def test_tiles_start_every_stride_and_the_last_is_flush_with_the_border(length, expected):
    assert Tiling(32, 8).starts(length) == expected


@pytest.mark.parametrize("height, width", [(100, 77), (64, 64), (33, 95), (32, 32)])
def test_stitching_the_tiles_of_a_map_gives_the_map_back(height, width):
    tiling = Tiling(32, 8)
    original = np.random.default_rng(0).random((height, width)).astype(np.float32)
    tiles, positions = crops(original, tiling)
    np.testing.assert_allclose(stitch(tiles, positions, height, width), original, rtol=1e-6)
    stitcher = Stitcher(height, width, tiling.tile)
    stitcher.add(tiles, positions)
    assert stitcher.covered.min() >= 1  # every pixel lies in some tile


def test_overlaps_are_averaged():
    # Width 3, tiles of 2 with overlap 1: tiles start at 0 and 1 and share the middle column.
    tiling = Tiling(2, 1)
    positions = tiling.positions(2, 3)
    assert positions == [(0, 0), (0, 1)]
    tile_maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])
    np.testing.assert_array_equal(stitch(tile_maps, positions, 2, 3), [[1, 2, 3], [1, 2, 3]])


def test_an_image_smaller_than_a_tile_is_padded_and_its_map_cut_back():
    tiling = Tiling(32, 8)
    image = np.random.default_rng(1).random((20, 40, 1)).astype(np.float32)
    padded = tiling.pad(image)
    assert padded.shape == (32, 40, 1) and np.array_equal(padded[:20], image)
    assert np.array_equal(padded[20:], np.repeat(image[-1:], 12, axis=0))
    maps, scores = tiled_maps_and_scores(ChannelZeroModel(), image[None], tiling)
    np.testing.assert_allclose(maps[0], image[..., 0], rtol=1e-6)


class ChannelZeroModel:
    """Stands in for an AnomalyModel: the map is the first channel, the score its max; records batch sizes."""

    inference_batch_size = 4

    def __init__(self):
        self.batch_sizes = []

    def maps_and_scores(self, images):
        self.batch_sizes.append(len(images))
        maps = images[..., 0]
        return maps, maps.reshape(len(maps), -1).max(axis=1)


def test_tiles_of_several_images_share_batches_and_come_back_to_their_image():
    tiling = Tiling(16, 4)
    images = np.random.default_rng(2).random((3, 30, 41, 2)).astype(np.float32)
    model = ChannelZeroModel()
    maps, scores = tiled_maps_and_scores(model, images, tiling)
    np.testing.assert_allclose(maps, images[..., 0], rtol=1e-6)
    np.testing.assert_allclose(scores, images[..., 0].reshape(3, -1).max(axis=1))
    n_tiles = 3 * tiling.count(30, 41)
    assert sum(model.batch_sizes) == n_tiles and max(model.batch_sizes) == 4 and len(model.batch_sizes) == -(-n_tiles // 4)


def test_without_tiling_the_model_scores_whole_images():
    images = np.random.default_rng(3).random((2, 8, 8, 1)).astype(np.float32)
    model = ChannelZeroModel()
    maps, _ = tiled_maps_and_scores(model, images, None)
    assert model.batch_sizes == [2] and np.array_equal(maps, images[..., 0])


def test_tiling_flags_are_checked():
    assert Tiling.from_flags(None, None) is None and Tiling.from_flags(0, None) is None
    assert Tiling.from_flags(64, None) == Tiling(64, 16)
    with pytest.raises(UserError, match="smaller than the tile"):
        Tiling(32, 32)
    with pytest.raises(UserError, match="--overlap needs --tile"):
        Tiling.from_flags(None, 8)


def test_tiled_training_data_holds_the_tiles_of_each_image(small_synthetic):
    dataset = data.scan_dataset(small_synthetic)
    tiling = Tiling(32, 8)
    tiles = np.concatenate(list(data.image_dataset(dataset, dataset.train[:2], (64, 64), 3, 100, tiling=tiling)))
    images, _ = data.load_arrays(dataset, dataset.train[:2], 64, 3)
    expected = np.concatenate([crops(image, tiling)[0] for image in images])
    assert tiles.shape == (2 * 9, 32, 32, 3)
    np.testing.assert_allclose(tiles, expected, atol=1e-6)


def test_train_finetune_test_on_tiles(tmp_path, monkeypatch, small_synthetic):
    import finetune
    import test as test_cli
    import train

    monkeypatch.chdir(tmp_path)
    run_dir = train.main(["-d", str(small_synthetic), "-a", "patchcore", "--tile", "32", "--overlap", "8"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["input_size"] == 32 and run["tiling"] == {"tile": 32, "overlap": 8, "image_size": [64, 64]}
    tuned = json.loads(finetune.main(["-p", str(run_dir)]).read_text())
    assert tuned["tiling"] == {"tile": 32, "overlap": 8}
    assert tuned["search"]["min_areas"][-1] == round(0.02 * 64 * 64)  # searched in pixels of the full 64 px image
    results = test_cli.main(["-p", str(run_dir), "--save"])
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["tiling"] == {"tile": 32, "overlap": 8} and metrics["full_test_set"]["image_auroc"] > 0.7
    overlay = np.asarray(Image.open(next((results / "segmentation").glob("*.png"))))
    assert overlay.shape[:2] == (64, 2 * 64 + 4)  # the map is stitched at the full 64 px, not the 32 px tile


def test_tile_flags_are_user_errors(tmp_path, monkeypatch, small_synthetic, capsys):
    import train
    from tests.test_cli import run_cli

    monkeypatch.chdir(tmp_path)
    code, err = run_cli(train, ["-d", str(small_synthetic), "--tile", "128"], capsys)
    assert code == 2 and "larger than the training images (64x64 px)" in err
    code, err = run_cli(train, ["-d", str(small_synthetic), "--tile", "32", "--size", "64"], capsys)
    assert code == 2 and "exclude each other" in err and len(err.strip().splitlines()) == 1


def test_tiled_training_counts_images_not_tiles_per_second(tmp_path, monkeypatch, small_synthetic):
    import train
    from processing.progress import EpochProgress

    counted = []
    original = EpochProgress.__init__
    monkeypatch.setattr(EpochProgress, "__init__",
                        lambda self, n_images, epochs: counted.append(n_images) or original(self, n_images, epochs))
    monkeypatch.chdir(tmp_path)
    train.main(["-d", str(small_synthetic), "-a", "mvtecCAE", "--tile", "32", "--overlap", "8", "-e", "1", "-b", "32"])
    assert counted == [36]  # the 36 training images (40 less 10 % validation), not their 9 x 36 tiles
