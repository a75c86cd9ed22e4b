"""Threshold + min-area segmentation of anomaly maps (the classic CAE pipeline).

A map is binarised at `map > threshold`; connected regions smaller than `min_area`
pixels are dropped as noise; an image is defective iff at least one region survives.
"""
import numpy as np
from skimage.measure import label, regionprops

# 8-connectivity in 2-D (diagonal neighbours join a region). Every place that splits
# a binary image into regions (segmentation, the fine-tuning search, AUPRO's ground-truth
# regions) uses this one value so that they all count the same regions.
CONNECTIVITY = 2


def label_regions(binary_image):
    """Label the connected regions of one 2-D binary image: 0 = background, 1..n = regions."""
    return label(binary_image, connectivity=CONNECTIVITY)


def segment(maps, threshold, min_area):
    """Binarise `maps` (N, H, W) at `map > threshold` and keep regions of >= `min_area` pixels.

    Returns (predicted_masks bool (N, H, W), is_defective bool (N,), regions) where
    regions[i] lists the surviving regions of image i as {"area": int, "bbox":
    (min_row, min_col, max_row, max_col)}, max bounds exclusive (skimage convention).
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W); got shape {maps.shape}")
    if min_area < 1:
        raise ValueError(f"min_area must be at least 1 pixel; got {min_area}")
    predicted_masks = np.zeros(maps.shape, dtype=bool)
    regions = []
    for index, anomaly_map in enumerate(maps):
        labelled = label_regions(anomaly_map > threshold)
        keep_label = np.bincount(labelled.ravel()) >= min_area
        keep_label[0] = False  # background
        predicted_masks[index] = keep_label[labelled]
        kept_regions = regionprops(np.where(predicted_masks[index], labelled, 0))
        regions.append([{"area": int(region.area), "bbox": tuple(int(v) for v in region.bbox)}
                        for region in kept_regions])
    is_defective = predicted_masks.any(axis=(1, 2))
    return predicted_masks, is_defective, regions
