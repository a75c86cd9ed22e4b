import matplotlib.figure
import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import find_boundaries

from processing import plots
from processing.plots import (GROUND_TRUTH_COLOR, OVERLAY_GAP, PREDICTED_COLOR, overlay_image,
                              plot_finetune_search, plot_roc_curve, plot_score_histogram,
                              plot_training_curves, save_image_grid, save_overlay)


def assert_png(path, min_size=100):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_size
        image.load()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def colour_pixels(picture, colour):
    return np.all(picture == colour, axis=-1)


def square_mask(top, left, size, shape=(64, 64)):
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_roc_curve(tmp_path):
    plot_roc_curve(tmp_path / "roc.png", [0, 0.1, 0.5, 1], [0, 0.7, 0.9, 1], 0.87, "bottle")
    assert_png(tmp_path / "roc.png")


def test_score_histogram(tmp_path):
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1, 0.2, 30), rng.normal(2, 0.3, 20), [np.nan]])
    labels = np.array([0] * 30 + [1] * 21)
    plot_score_histogram(tmp_path / "hist.png", scores, labels, threshold=1.5, title="scores")
    assert_png(tmp_path / "hist.png")


def test_score_histogram_with_equal_scores_and_no_threshold(tmp_path):
    plot_score_histogram(tmp_path / "hist.png", [0.5, 0.5, 0.5], [0, 1, 1])
    assert_png(tmp_path / "hist.png")


def test_finetune_search(tmp_path):
    thresholds, min_areas = np.linspace(0.1, 0.9, 40), np.array([0, 5, 10, 20, 50])
    f1 = np.random.default_rng(0).random((40, 5))
    plot_finetune_search(tmp_path / "search.png", thresholds, min_areas, f1, 0.5, 10, "search")
    assert_png(tmp_path / "search.png")


def test_finetune_search_rejects_a_mismatched_grid(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_finetune_search(tmp_path / "search.png", [0.1, 0.2], [0, 5], np.zeros((2, 3)), 0.1, 0)


def test_training_curves(tmp_path):
    history = {"loss": [1.0, 0.1, 0.01], "val_loss": [1.2, 0.2, 0.05], "learning_rate": [1e-3] * 3}
    plot_training_curves(tmp_path / "curves.png", history, title="training")
    assert_png(tmp_path / "curves.png")


def test_training_curves_with_empty_history(tmp_path):
    plot_training_curves(tmp_path / "curves.png", {})
    assert_png(tmp_path / "curves.png")


@pytest.mark.parametrize("image", [np.full((64, 64), 0.5), np.full((64, 64, 3), 0.5)])
def test_overlay_shape_and_left_half(image):
    anomaly_map = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    picture = overlay_image(image, anomaly_map)
    assert picture.dtype == np.uint8 and picture.shape == (64, 2 * 64 + OVERLAY_GAP, 3)
    assert np.all(picture[:, :64] == 128)  # the image itself, unchanged
    assert not np.all(picture[:, -64:] == 128)  # the heat map shows


def test_overlay_outlines_follow_the_masks():
    image = np.random.default_rng(0).random((64, 64, 3))
    anomaly_map = np.random.default_rng(1).random((64, 64))
    predicted, truth = square_mask(10, 10, 12), square_mask(40, 30, 15)
    right = overlay_image(image, anomaly_map, predicted, truth)[:, 64 + OVERLAY_GAP:]
    assert np.array_equal(colour_pixels(right, PREDICTED_COLOR),
                          find_boundaries(predicted, mode="inner"))
    assert np.array_equal(colour_pixels(right, GROUND_TRUTH_COLOR),
                          find_boundaries(truth, mode="inner"))


def test_overlay_prediction_is_drawn_over_ground_truth():
    mask = square_mask(20, 20, 10)
    right = overlay_image(np.zeros((64, 64)), np.zeros((64, 64)), mask, mask)[:, 64 + OVERLAY_GAP:]
    assert colour_pixels(right, PREDICTED_COLOR).any()
    assert not colour_pixels(right, GROUND_TRUTH_COLOR).any()


def test_overlay_without_regions_has_no_outline_colours():
    image = np.random.default_rng(0).random((64, 64))
    anomaly_map = np.random.default_rng(1).random((64, 64))
    empty = np.zeros((64, 64), dtype=bool)
    for masks in ((None, None), (empty, empty)):
        picture = overlay_image(image, anomaly_map, *masks)
        for colour in (PREDICTED_COLOR, GROUND_TRUTH_COLOR):
            assert not colour_pixels(picture, colour).any()


def test_overlay_outlines_thicken_on_large_images():
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[200:400, 200:400] = True
    right = overlay_image(np.zeros((1024, 1024)), np.zeros((1024, 1024)), mask)[:, 1024 + OVERLAY_GAP:]
    assert colour_pixels(right, PREDICTED_COLOR)[300, 200:210].sum() == 4


def test_overlay_map_range_gives_comparable_colours():
    image = np.zeros((8, 8))
    low, high = np.full((8, 8), 0.2), np.full((8, 8), 0.8)
    same_range = (0.0, 1.0)
    # Without a common range each constant map would take the same colour.
    assert np.array_equal(overlay_image(image, low), overlay_image(image, high))
    assert not np.array_equal(overlay_image(image, low, map_range=same_range),
                              overlay_image(image, high, map_range=same_range))


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="anomaly_map"):
        overlay_image(np.zeros((64, 64)), np.zeros((32, 32)))


def test_save_overlay(tmp_path):
    save_overlay(tmp_path / "overlay.png", np.zeros((64, 64)), np.ones((64, 64)),
                 square_mask(5, 5, 10), square_mask(30, 30, 10), map_range=(0, 2))
    assert_png(tmp_path / "overlay.png", min_size=64)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "overlay.png")),
                          overlay_image(np.zeros((64, 64)), np.ones((64, 64)), square_mask(5, 5, 10),
                                        square_mask(30, 30, 10), map_range=(0, 2)))


def test_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[rng.random((32, 32, 3)), rng.random((32, 32, 3)), rng.random((32, 32))],
            [rng.random((32, 32, 1)), (rng.random((32, 32, 1)) * 255).astype(np.uint8)]]
    save_image_grid(tmp_path / "grid.png", rows, titles=["input", "reconstruction", "residual"])
    assert_png(tmp_path / "grid.png")


def test_failed_savefig_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "roc.png"
    plot_roc_curve(path, [0, 1], [0, 1], 0.5, "first")
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_roc_curve(path, [0, 0.5, 1], [0, 0.9, 1], 0.9, "second")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]
    assert plots.plt.get_fignums() == []  # the figure was closed all the same
