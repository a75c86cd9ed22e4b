import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from processing.finetuning import (_best_pair, dequantise_threshold, min_area_candidates,
                                   quantise_maps, search, threshold_candidates)
from processing.metrics import threshold_metrics
from processing.segmentation import segment

SQUARE_AREA = 25  # 5x5 defects
SPECK_AREA = 2    # bright noise specks, brighter than the defects


def squares_and_specks():
    """Background in [0, 0.3), 5x5 defects at 0.8 in the first 4 of 8 images, and two
    2-pixel specks at 0.9 in every image."""
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 0.3, size=(8, 32, 32)).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    for index in range(4):
        masks[index, 4 + index:9 + index, 10:15] = True
    maps[masks] = 0.8
    maps[:, 20, 3:5] = 0.9
    maps[:, 28, 25:27] = 0.9
    return maps, labels, masks


MIN_AREAS = [1, 2, 3, 5, 8, 13, 21, 34]


def test_search_finds_the_defects_and_a_min_area_that_removes_the_specks():
    maps, labels, masks = squares_and_specks()
    result = search(maps, labels, masks, np.linspace(0, 1, 21), MIN_AREAS)
    assert result.f1 == 1.0 and result.pixel_iou == 1.0
    # Ties are broken by the smallest threshold above the background, then the smallest
    # min-area above the speck area.
    assert result.threshold == pytest.approx(0.3)
    assert result.min_area == 3
    assert SPECK_AREA < result.min_area <= SQUARE_AREA
    json.dumps(result.to_dict())  # plain values only


def test_uint8_search_finds_an_equivalent_pair():
    maps, labels, masks = squares_and_specks()
    float_result = search(maps, labels, masks, np.linspace(0, 1, 21), MIN_AREAS)
    low, high = 0.0, 1.0
    levels = np.arange(0, 255, 4)  # 64 levels
    result = search(quantise_maps(maps, low, high), labels, masks, levels, MIN_AREAS)
    assert (result.f1, result.pixel_iou, result.min_area) == (1.0, 1.0, float_result.min_area)
    threshold = dequantise_threshold(result.threshold, low, high)
    assert 0.3 <= threshold < 0.8
    np.testing.assert_array_equal(segment(maps, threshold, result.min_area)[0],
                                  segment(maps, float_result.threshold, float_result.min_area)[0])


def random_case(dtype):
    rng = np.random.default_rng(1)
    maps = gaussian_filter(rng.random((5, 12, 12)), (0, 1, 1)).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 7:11, 1:4] = True
    masks[1, 0:2, 9:12] = True
    labels = np.array([1, 1, 0, 0, 0])
    maps += 0.05 * masks
    if dtype == "uint8":
        low, high = float(maps.min()), float(maps.max())
        maps = quantise_maps(maps, low, high)
    return maps, labels, masks


@pytest.mark.parametrize("dtype", ["float64", "uint8"])
def test_search_grids_equal_brute_force_segmentation(dtype):
    maps, labels, masks = random_case(dtype)
    thresholds = threshold_candidates(maps, n=15, dtype=dtype)
    min_areas = [1, 2, 3, 4, 6, 9, 14]
    result = search(maps, labels, masks, thresholds, min_areas)
    for row, threshold in enumerate(result.thresholds):
        for column, min_area in enumerate(min_areas):
            predicted_masks, is_defective, _ = segment(maps, threshold.item(), min_area)
            expected = threshold_metrics(labels, is_defective, masks, predicted_masks)
            assert result.f1_grid[row, column] == pytest.approx(expected["f1"])
            assert result.iou_grid[row, column] == pytest.approx(expected["pixel_iou"])


def test_best_pair_breaks_ties_by_iou_then_smallest_threshold_then_smallest_min_area():
    f1_grid = np.array([[0.5, 0.9, 0.9],
                        [0.9, 0.9, 0.9],
                        [0.9, 0.2, 0.9]])
    iou_grid = np.array([[0.9, 0.4, 0.6],
                         [0.6, 0.6, 0.1],
                         [0.6, 0.9, 0.6]])
    assert _best_pair(f1_grid, iou_grid) == (0, 2)
    iou_grid[0, 2] = 0.1
    assert _best_pair(f1_grid, iou_grid) == (1, 0)


def test_threshold_candidates():
    maps = np.random.default_rng(2).random((4, 16, 16)).astype(np.float32)
    thresholds = threshold_candidates(maps, n=50)
    assert thresholds.dtype == np.float64 and thresholds.size == 50
    assert np.all(np.diff(thresholds) > 0)
    assert np.median(maps) <= thresholds[0] and thresholds[-1] <= maps.max()
    levels = threshold_candidates(quantise_maps(maps, 0.0, 1.0), n=300, dtype="uint8")
    assert np.all(np.diff(levels) > 0) and 0 <= levels[0] and levels[-1] <= 254
    with pytest.raises(ValueError, match="quantise_maps"):
        threshold_candidates(maps, dtype="uint8")


def test_dequantised_threshold_selects_the_same_pixels():
    maps = np.random.default_rng(3).normal(size=(2, 32, 32))
    low, high = -1.0, 2.0
    quantised = quantise_maps(maps, low, high)
    assert quantised.dtype == np.uint8
    for level in [0, 17, 100, 254]:
        np.testing.assert_array_equal(quantised > level,
                                      maps > dequantise_threshold(level, low, high))


def test_min_area_candidates():
    min_areas = min_area_candidates((256, 256), n=40)
    assert min_areas.size == 40 and min_areas[0] == 1
    assert np.all(np.diff(min_areas) > 0)
    assert min_areas[-1] == round(0.02 * 256 * 256)


def test_search_rejects_bad_inputs():
    maps, labels, masks = squares_and_specks()
    with pytest.raises(ValueError, match="does not match"):
        search(maps, labels, masks[:, :16], [0.5], [1])
    with pytest.raises(ValueError, match="8 images"):
        search(maps, labels[:5], masks, [0.5], [1])
    with pytest.raises(ValueError, match="strictly increasing"):
        search(maps, labels, masks, [0.5, 0.4], [1])
    with pytest.raises(ValueError, match="at least 1"):
        search(maps, labels, masks, [0.5], [0, 1])
    with pytest.raises(ValueError, match="integer levels"):
        search(quantise_maps(maps, 0, 1), labels, masks, [10.5], [1])
