"""The PNGs users look at: ROC curves, score histograms, the fine-tuning search, training curves,
per-image overlays and reconstruction grids.

Every file is written atomically, so an interrupted run never leaves a half-written picture.
"""
import matplotlib
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries

from processing.atomic import atomic_path

matplotlib.use("Agg")  # files only: no display needed, and no GUI toolkit imported
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)

DPI = 100
# Inferno has no cyan or green, so the outlines drawn over it stay unambiguous.
HEAT_COLORMAP = "inferno"
# Opacity grows with the score: normal areas stay readable, anomalous ones stand out.
HEAT_OPACITY = (0.25, 0.75)
PREDICTED_COLOR = (0, 255, 255)  # cyan
GROUND_TRUTH_COLOR = (0, 255, 0)  # green
OVERLAY_GAP = 4  # pixels between the image and its overlay
GAP_COLOR = 255


def plot_roc_curve(path, fpr, tpr, auroc, title):
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    _save_figure(fig, path)


def plot_pr_curve(path, recall, precision, positive_rate, title):
    """Image-level precision-recall curve; chance is the fraction of defective images."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.step(recall, precision, where="post", lw=2, label="image scores")
    ax.axhline(positive_rate, ls="--", color="gray", lw=1, label=f"chance ({positive_rate:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower left")
    _save_figure(fig, path)


def plot_score_histogram(path, scores, labels, threshold=None, title=""):
    """Overlaid histograms of the image scores of good (label 0) and defective (label 1) images."""
    scores = np.asarray(scores, dtype=float)
    defective = np.asarray(labels).astype(bool)
    bins = np.histogram_bin_edges(scores[np.isfinite(scores)], bins=30)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, selected, color in (("good", ~defective, "tab:blue"),
                                  ("defective", defective, "tab:red")):
        ax.hist(scores[selected & np.isfinite(scores)], bins=bins, alpha=0.6, color=color,
                label=f"{name} ({selected.sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="image anomaly score", ylabel="images", title=title)
    ax.legend()
    _save_figure(fig, path)


def plot_finetune_search(path, thresholds, min_areas, f1_grid, best_threshold, best_min_area,
                         title=""):
    """Heat map of image F1 over f1_grid[i, j] = F1(thresholds[i], min_areas[j])."""
    thresholds, min_areas = np.asarray(thresholds), np.asarray(min_areas)
    f1_grid = np.asarray(f1_grid, dtype=float)
    if f1_grid.shape != (len(thresholds), len(min_areas)):
        raise ValueError(f"f1_grid has shape {f1_grid.shape}, "
                         f"expected {(len(thresholds), len(min_areas))}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    image = ax.imshow(f1_grid.T, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="image F1")
    # Cells are indexed; the nearest cell stands for the chosen pair.
    best_column = np.abs(thresholds - best_threshold).argmin()
    best_row = np.abs(min_areas - best_min_area).argmin()
    ax.plot(best_column, best_row, marker="o", ms=12, mfc="none", mec="red", mew=2,
            label=f"chosen: threshold {best_threshold:.4g}, min area {best_min_area:g}")
    _label_ticks(ax.xaxis, thresholds)
    _label_ticks(ax.yaxis, min_areas)
    ax.set(xlabel="threshold", ylabel="minimum area (pixels)", title=title)
    ax.legend(loc="upper right", fontsize="small")
    _save_figure(fig, path)


def plot_training_curves(path, history, title=""):
    """One line per metric and epoch; losses on the left axis, anything else on the right."""
    losses = {name: values for name, values in history.items() if "loss" in name}
    others = {name: values for name, values in history.items() if "loss" not in name}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in losses.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    finite = np.array([v for values in losses.values() for v in values], dtype=float)
    finite = finite[np.isfinite(finite)]
    # Losses often fall by orders of magnitude: a log scale keeps the late epochs readable.
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    handles, names = ax.get_legend_handles_labels()
    if others:
        right = ax.twinx()
        for number, (name, values) in enumerate(others.items(), start=len(losses)):
            right.plot(np.arange(1, len(values) + 1), values, ls=":", color=f"C{number % 10}",
                       label=name)
        more_handles, more_names = right.get_legend_handles_labels()
        handles, names = handles + more_handles, names + more_names
    if handles:
        ax.legend(handles, names)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _save_figure(fig, path)


def overlay_image(image, anomaly_map, predicted_mask=None, gt_mask=None, map_range=None):
    """The image, then beside it the image under its anomaly map with the region outlines.

    image: float in [0, 1], (H, W) or (H, W, 3). anomaly_map: (H, W). map_range: (low, high) to
    colour every image on the same scale; by default the map's own range. Predicted regions are
    outlined in cyan, ground truth in green. Returns uint8 (H, 2 W + OVERLAY_GAP, 3).
    """
    picture = _to_rgb(image)
    height, width = picture.shape[:2]
    anomaly_map = np.asarray(anomaly_map, dtype=float)
    for name, array in (("anomaly_map", anomaly_map), ("predicted_mask", predicted_mask),
                        ("gt_mask", gt_mask)):
        if array is not None and np.shape(array) != (height, width):
            raise ValueError(f"{name} has shape {np.shape(array)}, expected {(height, width)}")

    levels = _scale_to_bytes(anomaly_map, map_range)
    opacity = np.interp(levels, (0, 255), HEAT_OPACITY)[..., None]
    blended = (1 - opacity) * picture + opacity * _colormap_lut()[levels]
    overlay = np.round(blended).astype(np.uint8)
    thickness = max(1, round(max(height, width) / 256))
    # Ground truth first: where both outlines meet, the prediction is drawn on top.
    for mask, color in ((gt_mask, GROUND_TRUTH_COLOR), (predicted_mask, PREDICTED_COLOR)):
        if mask is not None:
            overlay[_outline(mask, thickness)] = color

    gap = np.full((height, OVERLAY_GAP, 3), GAP_COLOR, dtype=np.uint8)
    return np.concatenate([np.round(picture).astype(np.uint8), gap, overlay], axis=1)


def save_overlay(path, image, anomaly_map, predicted_mask=None, gt_mask=None, map_range=None):
    picture = overlay_image(image, anomaly_map, predicted_mask, gt_mask, map_range)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")


def save_image_grid(path, rows, titles=None):
    """A grid of pictures, e.g. one row per image: input, reconstruction, residual map.

    (H, W, 3) and (H, W, 1) arrays are pictures (float in [0, 1] or uint8); (H, W) arrays are maps,
    shown in colour on their own scale with a colour bar. `titles` name the columns.
    """
    n_rows, n_columns = len(rows), max((len(row) for row in rows), default=0)
    if n_rows == 0 or n_columns == 0:
        raise ValueError("save_image_grid needs at least one image")
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(2.2 * n_columns, 2.2 * n_rows),
                             squeeze=False)
    for axes_row, row in zip(axes, rows):
        for column, ax in enumerate(axes_row):
            ax.axis("off")
            if column >= len(row):
                continue
            array = np.asarray(row[column])
            if array.ndim == 2:
                shown = ax.imshow(array, cmap=HEAT_COLORMAP)
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            else:
                ax.imshow(_displayable(array), cmap="gray" if array.shape[-1] == 1 else None,
                          vmin=0, vmax=1)
    for ax, title in zip(axes[0], titles or ()):
        ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path):
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _label_ticks(axis, values, most=8):
    """Label at most `most` evenly spread cells of a heat-map axis with their values."""
    spread = np.linspace(0, len(values) - 1, min(most, len(values)))
    positions = np.unique(spread.round().astype(int))
    axis.set_ticks(positions, labels=[f"{values[i]:.3g}" for i in positions])


def _to_rgb(image):
    """Float [0, 1] grayscale or RGB image -> float RGB in [0, 255]."""
    image = np.asarray(image, dtype=float)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
    return np.clip(image, 0, 1) * 255


def _scale_to_bytes(values, value_range):
    """Map values linearly onto 0..255, clipping outside `value_range` (default: their range)."""
    finite = values[np.isfinite(values)]
    if value_range is None:
        value_range = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    low, high = value_range
    scaled = (np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _colormap_lut():
    """The heat colour map as a (256, 3) table of 0..255 floats: indexing beats calling it."""
    return matplotlib.colormaps[HEAT_COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255


def _outline(mask, thickness):
    """The mask's boundary pixels, `thickness` pixels wide, inside the mask."""
    mask = np.asarray(mask, dtype=bool)
    boundary = find_boundaries(mask, mode="inner")
    if thickness > 1:
        # Thicker on large images, so that the outline stays visible when the PNG is shrunk.
        boundary = ndimage.binary_dilation(boundary, iterations=thickness - 1) & mask
    return boundary


def _displayable(picture):
    """uint8 or float pictures -> float in [0, 1], as imshow expects."""
    if picture.dtype == np.uint8:
        return picture / 255
    return np.clip(picture, 0, 1)
