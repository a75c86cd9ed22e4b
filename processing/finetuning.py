"""Search of the segmentation parameters (threshold, min_area) on labelled validation maps.

For every pair the segmentation of processing.segmentation is scored: image F1 (an image is
defective iff a connected region of `map > threshold` has at least `min_area` pixels) and
pixel IoU of the kept regions against the ground truth, pooled over all images.

Each image is labelled once per threshold; all min-areas are then scored together from the
per-region areas and ground-truth overlaps, with sorting and cumulative sums.

Maps may be float or uint8. For uint8 maps (see quantise_maps) thresholds are integer
levels: at most 255 useful ones, a quarter of the memory of float32 maps, and a search over
~64 levels runs ~4x faster than one over 200 float thresholds; dequantise_threshold gives
the float threshold back.
"""
from dataclasses import dataclass

import numpy as np

from processing.metrics import as_labels, as_masks_and_maps, f1_from_counts, pooled_iou
from processing.segmentation import label_regions

SELECTION_RULE = ("highest image F1, then highest pixel IoU, "
                  "then smallest threshold, then smallest min_area")

# Thresholds are quantiles of the pooled map values in this range, so they are dense where
# the pixels are. A threshold below the median would flag half of all pixels, which no
# useful segmentation does; above the 99.99 % quantile only a few hundred pixels of a
# typical validation set remain.
CANDIDATE_QUANTILES = (0.5, 0.9999)

# The largest min-area candidate as a fraction of the image area: a larger noise region
# than this is not noise.
LARGEST_MIN_AREA_FRACTION = 0.02

TOP_LEVEL = 255  # quantised maps use the levels 0..255


@dataclass
class SearchResult:
    """The chosen pair with its scores, and the full grids (rows: thresholds, columns: min_areas)."""
    threshold: float | int  # int: a level of uint8 maps
    min_area: int
    f1: float
    pixel_iou: float
    thresholds: np.ndarray
    min_areas: np.ndarray
    f1_grid: np.ndarray
    iou_grid: np.ndarray

    def to_dict(self):
        return {
            "threshold": self.threshold,
            "min_area": self.min_area,
            "f1": self.f1,
            "pixel_iou": self.pixel_iou,
            "selection_rule": SELECTION_RULE,
            "thresholds": self.thresholds.tolist(),
            "min_areas": self.min_areas.tolist(),
            "f1_grid": self.f1_grid.tolist(),
            "iou_grid": self.iou_grid.tolist(),
        }


def search(maps, labels, masks, thresholds, min_areas):
    """Score every (threshold, min_area) pair and choose the best by SELECTION_RULE.

    maps (N, H, W) float or uint8; labels (N,) 0/1; masks (N, H, W) bool; thresholds 1-D
    strictly increasing (integers for uint8 maps); min_areas 1-D strictly increasing ints >= 1.
    """
    masks, maps = as_masks_and_maps(masks, maps)
    labels = as_labels(labels, n=maps.shape[0])
    thresholds = _as_thresholds(thresholds, maps.dtype)
    min_areas = _as_min_areas(min_areas)

    is_defective = labels.astype(bool)[:, None]
    gt_pixel_indices = [np.flatnonzero(mask) for mask in masks]
    gt_pixels = sum(indices.size for indices in gt_pixel_indices)
    f1_grid = np.empty((thresholds.size, min_areas.size))
    iou_grid = np.empty((thresholds.size, min_areas.size))
    for row, threshold in enumerate(thresholds):
        largest_area, kept_overlap, kept_area = _score_min_areas(maps, gt_pixel_indices,
                                                                 threshold, min_areas)
        predicted = largest_area[:, None] >= min_areas  # (N, A)
        true_positives = np.count_nonzero(predicted & is_defective, axis=0)
        false_positives = np.count_nonzero(predicted & ~is_defective, axis=0)
        false_negatives = np.count_nonzero(is_defective) - true_positives
        f1_grid[row] = f1_from_counts(true_positives, false_positives, false_negatives)
        iou_grid[row] = pooled_iou(kept_overlap, kept_area + gt_pixels - kept_overlap)

    row, column = _best_pair(f1_grid, iou_grid)
    return SearchResult(threshold=thresholds[row].item(), min_area=int(min_areas[column]),
                        f1=float(f1_grid[row, column]), pixel_iou=float(iou_grid[row, column]),
                        thresholds=thresholds, min_areas=min_areas,
                        f1_grid=f1_grid, iou_grid=iou_grid)


def _score_min_areas(maps, gt_pixel_indices, threshold, min_areas):
    """At one threshold, for all min-areas at once: the largest region area per image (N,),
    and, over the regions kept by each min-area (A,), their ground-truth overlap and area."""
    largest_area = np.zeros(maps.shape[0], dtype=np.int64)
    areas, overlaps = [], []
    binary = np.empty(maps.shape[1:], dtype=bool)
    for index, anomaly_map in enumerate(maps):
        np.greater(anomaly_map, threshold, out=binary)
        if not binary.any():
            continue
        labelled = label_regions(binary)
        region_areas = np.bincount(labelled[binary])[1:]  # index 0 (background) is empty
        region_overlaps = np.bincount(labelled.ravel()[gt_pixel_indices[index]],
                                      minlength=region_areas.size + 1)[1:]
        largest_area[index] = region_areas.max()
        areas.append(region_areas)
        overlaps.append(region_overlaps)
    if not areas:
        return largest_area, np.zeros(min_areas.size), np.zeros(min_areas.size)

    # A min-area keeps exactly the regions at or after its position in the sorted areas,
    # so the kept sums are suffix sums.
    areas, overlaps = np.concatenate(areas), np.concatenate(overlaps)
    order = np.argsort(areas, kind="stable")
    sorted_areas = areas[order]
    area_before = np.concatenate(([0], np.cumsum(sorted_areas)))
    overlap_before = np.concatenate(([0], np.cumsum(overlaps[order])))
    first_kept = np.searchsorted(sorted_areas, min_areas, side="left")
    kept_area = area_before[-1] - area_before[first_kept]
    kept_overlap = overlap_before[-1] - overlap_before[first_kept]
    return largest_area, kept_overlap, kept_area


def _best_pair(f1_grid, iou_grid):
    """(row, column) of the best pair by SELECTION_RULE; rows and columns run from the
    smallest threshold and min-area, and np.argwhere lists cells in row-major order."""
    candidates = f1_grid == f1_grid.max()
    candidates &= iou_grid == iou_grid[candidates].max()
    row, column = np.argwhere(candidates)[0]
    return int(row), int(column)


def _as_thresholds(thresholds, maps_dtype):
    """Thresholds in the maps' dtype, so that the search and segment() compare a map with
    its threshold at the same precision and select the same pixels."""
    thresholds = np.asarray(thresholds)
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D array; got shape {thresholds.shape}")
    if np.any(thresholds[1:] <= thresholds[:-1]):
        raise ValueError("thresholds must be strictly increasing")
    if maps_dtype == np.uint8:
        if np.any(thresholds != np.round(thresholds)) or thresholds[0] < 0 or thresholds[-1] > 255:
            raise ValueError("thresholds of uint8 maps must be integer levels in 0..255")
        return thresholds.astype(np.uint8)
    if np.issubdtype(maps_dtype, np.floating):
        return thresholds.astype(maps_dtype)
    raise ValueError(f"maps must be float or uint8; got {maps_dtype}")


def _as_min_areas(min_areas):
    min_areas = np.asarray(min_areas)
    if min_areas.ndim != 1 or min_areas.size == 0:
        raise ValueError(f"min_areas must be a non-empty 1-D array; got shape {min_areas.shape}")
    if np.any(min_areas != np.round(min_areas)) or min_areas[0] < 1:
        raise ValueError("min_areas must be whole numbers of pixels, at least 1")
    if np.any(min_areas[1:] <= min_areas[:-1]):
        raise ValueError("min_areas must be strictly increasing")
    return min_areas.astype(np.int64)


# --- candidate grids -------------------------------------------------------------------

def threshold_candidates(maps, n=200, dtype="float64"):
    """Up to n increasing thresholds: quantiles CANDIDATE_QUANTILES of the pooled map values,
    so that thresholds are dense where the pixels are, duplicates removed.

    dtype "float64": float thresholds (rounded to the maps' precision) for float maps;
    "uint8": integer levels for maps quantised with quantise_maps.
    """
    maps = np.asarray(maps)
    quantiles = np.quantile(maps, np.linspace(*CANDIDATE_QUANTILES, n))
    if dtype == "uint8":
        if maps.dtype != np.uint8:
            raise ValueError(f"uint8 thresholds need uint8 maps (see quantise_maps); got {maps.dtype}")
        # `level > floor(q)` selects the same pixels as `level > q`; no level exceeds 255.
        return np.unique(np.clip(np.floor(quantiles), 0, TOP_LEVEL - 1)).astype(np.int64)
    if dtype == "float64":
        if not np.issubdtype(maps.dtype, np.floating):
            raise ValueError(f"float thresholds need float maps; got {maps.dtype}")
        return np.unique(quantiles.astype(maps.dtype)).astype(np.float64)
    raise ValueError(f"dtype must be 'float64' or 'uint8'; got {dtype!r}")


def quantise_maps(maps, low, high):
    """uint8 maps: level L holds the values in [low + L*step, low + (L+1)*step), step =
    (high - low) / 255; values below low are 0, values at or above high are 255.

    A good range is the first and last of threshold_candidates(maps).
    """
    if not high > low:
        raise ValueError(f"quantisation needs high > low; got low={low}, high={high}")
    levels = np.floor((np.asarray(maps, dtype=np.float64) - low) * TOP_LEVEL / (high - low))
    return np.clip(levels, 0, TOP_LEVEL).astype(np.uint8)


def dequantise_threshold(level, low, high):
    """The float threshold t such that `map > t` selects the pixels whose quantised level is
    above `level` (up to pixels that lie exactly on the bin edge)."""
    return float(low + (int(level) + 1) * (high - low) / TOP_LEVEL)


def min_area_candidates(image_shape, n=40):
    """n distinct increasing min-areas: 1 (no filtering), then geometric steps up to
    LARGEST_MIN_AREA_FRACTION of the image area of image_shape (H, W)."""
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    height, width = image_shape[-2:]
    largest = max(LARGEST_MIN_AREA_FRACTION * height * width, 1.0)
    geometric = np.round(np.geomspace(1.0, largest, n)).astype(np.int64)
    # Rounding merges the small values; lift each to at least one above its predecessor.
    steps = np.arange(n)
    return np.maximum.accumulate(geometric - steps) + steps
