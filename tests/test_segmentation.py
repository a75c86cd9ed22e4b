import numpy as np
import pytest

from processing.segmentation import segment


def test_segment_keeps_regions_of_min_area_and_removes_smaller_ones():
    min_area = 4
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 1:3, 1:3] = 1.0      # area 4 = min_area: kept
    maps[0, 6, 4:7] = 1.0        # area 3 = min_area - 1: removed
    maps[1, 5, 5:8] = 1.0        # area 3: removed, so image 1 is good
    predicted_masks, is_defective, regions = segment(maps, threshold=0.5, min_area=min_area)
    expected = np.zeros((2, 8, 8), bool)
    expected[0, 1:3, 1:3] = True
    np.testing.assert_array_equal(predicted_masks, expected)
    np.testing.assert_array_equal(is_defective, [True, False])
    assert regions == [[{"area": 4, "bbox": (1, 1, 3, 3)}], []]


def test_segment_joins_diagonal_neighbours_and_thresholds_strictly():
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = maps[0, 1, 1] = 1.0  # diagonal: one region of area 2 (8-connectivity)
    maps[0, 3, 3] = 0.5                  # equal to the threshold: not above it
    predicted_masks, is_defective, regions = segment(maps, threshold=0.5, min_area=2)
    assert regions == [[{"area": 2, "bbox": (0, 0, 2, 2)}]]
    assert predicted_masks.sum() == 2 and is_defective[0]


def test_segment_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape \\(N, H, W\\)"):
        segment(np.zeros((4, 4)), 0.5, 1)
    with pytest.raises(ValueError, match="at least 1"):
        segment(np.zeros((1, 4, 4)), 0.5, 0)
