import numpy as np
import pytest
from skimage.measure import label
from sklearn.metrics import roc_auc_score

from processing.metrics import (aupro, image_auroc, image_f1_max, pixel_auroc, roc_curve_points,
                                threshold_metrics)


def test_image_auroc_hand_case():
    # Positive/negative pairs: (0.35 vs 0.1) won, (0.35 vs 0.4) lost, 0.8 wins both -> 3/4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_image_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both good and defective"):
        image_auroc([1, 1, 1], [0.2, 0.5, 0.9])


def test_image_auroc_rejects_mismatched_lengths_and_nan():
    with pytest.raises(ValueError, match="shape"):
        image_auroc([0, 1, 1], [0.2, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.2, np.nan])


def test_roc_curve_points():
    fpr, tpr = roc_curve_points([0, 1], [0.2, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 1, 1])


def test_pixel_auroc_two_by_two_with_a_tie():
    masks = np.array([[[True, False], [False, False]]])
    maps = np.array([[[0.9, 0.2], [0.5, 0.9]]])
    # The anomalous 0.9 beats 0.2 and 0.5 and ties 0.9 (counts half): (1 + 1 + 0.5) / 3.
    assert pixel_auroc(masks, maps) == pytest.approx(2.5 / 3)


def test_pixel_auroc_equals_sklearn_on_random_maps_with_ties():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 10, size=(4, 16, 16)).astype(np.float32)
    masks = rng.random((4, 16, 16)) < 0.2
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_rejects_shape_mismatch_and_empty_masks():
    with pytest.raises(ValueError, match="does not match"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="anomalous and normal"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))


def test_aupro_of_a_perfect_map_is_one():
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 5:8, 5:8] = True
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)


def test_aupro_hand_case_two_regions_of_different_sizes():
    # One 1x8 image: region A = column 0 (area 1), region B = columns 3-4 (area 2),
    # 5 normal pixels. Each region weighs 1/2, so an A pixel adds 1/2 to PRO, a B pixel 1/4.
    #   columns:  0(A) 1(n) 2(n) 3(B) 4(B) 5(n) 6(n) 7(n)
    #   values:   0.7  0.8  0.6  0.9  0.6  0.4  0.3  0.2
    # Lowering the threshold: 0.9 -> (fpr 0, pro 1/4); 0.8 -> (1/5, 1/4); 0.7 -> (1/5, 3/4);
    # 0.6 (a normal pixel and a B pixel tie) -> (2/5, 1); then (3/5, 1), (4/5, 1), (1, 1).
    # max_fpr 0.3: [0, 0.2] at 1/4 gives 0.05; [0.2, 0.3] rises linearly from 0.75 towards
    # 1.0 at 0.4, reaching 0.875 at 0.3: 0.1 * (0.75 + 0.875) / 2 = 0.08125.
    # (0.05 + 0.08125) / 0.3 = 0.4375.
    # max_fpr 1: 0.05 + 0.2 * (0.75 + 1) / 2 + 0.6 * 1 = 0.825.
    masks = np.array([[[1, 0, 0, 1, 1, 0, 0, 0]]], bool)
    maps = np.array([[[0.7, 0.8, 0.6, 0.9, 0.6, 0.4, 0.3, 0.2]]])
    assert aupro(masks, maps, max_fpr=0.3) == pytest.approx(0.4375)
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.825)


def reference_aupro(masks, maps, max_fpr):
    """Slow, direct AUPRO: one operating point per distinct map value."""
    regions = [(index, labelled == region)
               for index, mask in enumerate(masks)
               for labelled in [label(mask, connectivity=2)]
               for region in range(1, labelled.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        pro = np.mean([above[index][region].mean() for index, region in regions])
        points.append((above[normal].mean(), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 > max_fpr:
            y_cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_cut) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
def test_aupro_equals_slow_reference(seed, max_fpr):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 1:4, 2:6] = True
    masks[0, 7:9, 7:8] = True
    masks[1, rng.integers(0, 5):8, rng.integers(0, 5):7] = True
    # Coarse values so that many pixels tie; anomalous pixels a little brighter.
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1)
    assert aupro(masks, maps, max_fpr) == pytest.approx(reference_aupro(masks, maps, max_fpr),
                                                        abs=1e-9)


def test_aupro_needs_regions():
    with pytest.raises(ValueError, match="anomalous regions"):
        aupro(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))


def test_image_f1_max_hand_case():
    # Threshold 0.35 flags 0.4, 0.35 and 0.8: precision 2/3, recall 1, F1 0.8 (the best).
    f1, threshold = image_f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert f1 == pytest.approx(0.8)
    assert threshold == pytest.approx(0.35)


def test_threshold_metrics_hand_case():
    labels = [0, 0, 1, 1, 1]
    predictions = [0, 1, 1, 1, 0]
    masks = np.zeros((5, 2, 2), bool)
    predicted_masks = np.zeros((5, 2, 2), bool)
    masks[2, 0, :] = True        # 2 pixels
    predicted_masks[2, :, 0] = True  # 2 pixels, 1 shared with the mask
    predicted_masks[1, 1, 1] = True  # a false alarm on a good image
    metrics = threshold_metrics(labels, predictions, masks, predicted_masks)
    assert metrics["confusion_matrix"] == [[1, 1], [1, 2]]
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    # Intersection 1; union 2 + 2 - 1 + 1 (false alarm) = 4.
    assert metrics["pixel_iou"] == pytest.approx(1 / 4)


def test_threshold_metrics_iou_is_one_when_nothing_to_find_and_nothing_found():
    empty = np.zeros((2, 3, 3), bool)
    assert threshold_metrics([0, 0], [0, 0], empty, empty)["pixel_iou"] == 1.0


def test_threshold_metrics_rejects_bad_inputs():
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        threshold_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="both masks and predicted_masks"):
        threshold_metrics([0, 1], [0, 1], masks=np.zeros((2, 3, 3), bool))
    with pytest.raises(ValueError, match="does not match"):
        threshold_metrics([0, 1], [0, 1], np.zeros((2, 3, 3), bool), np.zeros((2, 3, 4), bool))
