"""The benchmark as one PNG: four heat maps (image AUROC, pixel AUROC, AUPRO, inference images/s),
methods down, categories across, each cell labelled with its value."""
import numpy as np

from processing.plots import _save_figure, plt

PANELS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3"),
          ("infer_img_s", "inference images/s"))


def _grid(rows, column, methods, categories):
    grid = np.full((len(methods), len(categories)), np.nan)
    for row in rows:
        value = row.get(column)
        if value is not None:
            grid[methods.index(row["method"]), categories.index(row["category"])] = value
    return grid


def save_chart(rows, path):
    methods = list(dict.fromkeys(row["method"] for row in rows))
    categories = sorted({row["category"] for row in rows})
    fig, axes = plt.subplots(2, 2, figsize=(4 + 1.6 * len(categories), 2.5 + 0.8 * len(methods)))
    for ax, (column, title) in zip(axes.flat, PANELS):
        grid = _grid(rows, column, methods, categories)
        is_rate = column == "infer_img_s"
        ax.imshow(grid, cmap="viridis", vmin=None if is_rate else 0.5, vmax=None if is_rate else 1.0, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0f}" if is_rate else f"{value:.2f}", ha="center", va="center",
                        fontsize=7, color="white")
        ax.set_title(title)
        ax.set_xticks(range(len(categories)), [c.split("/")[-1] for c in categories], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
