"""Choose the segmentation threshold and minimum defect area on the finetune part of the test set.

    python3 finetune.py                          # latest trained model
    python3 finetune.py -p saved_models/.../model.keras -m ssim -t float64

Binarise each anomaly map at threshold t, drop connected regions smaller than min-area a, call an
image defective if a region survives. Every (t, a) pair on a grid is scored on the finetune images
only; the best image-level F1 wins, ties broken by pixel IoU. Writes finetune.json beside the model.
"""
import argparse
import time
from dataclasses import dataclass

import processing.environment  # noqa: F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)
from processing.errors import CommandLineParser, UserError, cli_entry


@dataclass
class FinetuneConfig:
    model_path: str | None
    residual: str | None
    dtype: str
    n_thresholds: int
    n_min_areas: int
    tile: int | None
    overlap: int | None


def parse_args(argv=None):
    from processing import tiling

    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--model-path", default=None, help="model.keras or its run folder (default: latest)")
    parser.add_argument("-m", "--residual", choices=("ssim", "l2"), default=None,
                        help="residual map kind (autoencoders only; default: the training loss's)")
    parser.add_argument("-t", "--dtype", choices=("float64", "uint8"), default="float64",
                        help="uint8 quantises maps to 256 levels for a faster search")
    parser.add_argument("--n-thresholds", type=int, default=100)
    parser.add_argument("--n-min-areas", type=int, default=40)
    tiling.add_arguments(parser)
    return FinetuneConfig(**vars(parser.parse_args(argv)))


def finetune(config):
    import numpy as np

    from processing import data, finetuning, runs
    from processing.plots import plot_finetune_search, plot_score_histogram
    from processing.progress import report
    from processing.tiling import tiled_maps_and_scores

    started = time.perf_counter()
    run = runs.Run(runs.resolve_model_path(config.model_path))
    model = run.load_model()
    if config.residual is not None:
        model.configure_maps(residual=config.residual)
    samples = run.finetune_samples
    labels = np.array([s.label for s in samples])
    if len(set(labels.tolist())) < 2:
        raise UserError(f"the finetune split of {run.dataset.name} needs good and defective images, "
                        f"it has {len(samples)} images of one kind; add test images or raise --finetune-fraction in train.py")
    tiling = run.tiling_for(config.tile, config.overlap)
    images, masks = data.load_arrays(run.dataset, samples, run.working_size(tiling), run.channels)
    report(f"finetuning {run.method} on {len(samples)} finetune images of {run.dataset.name}")
    map_started = time.perf_counter()
    maps, scores = tiled_maps_and_scores(model, images, tiling)
    map_seconds = time.perf_counter() - map_started

    search_started = time.perf_counter()
    low, high = float(maps.min()), float(maps.max())
    if config.dtype == "uint8":
        search_maps = finetuning.quantise_maps(maps, low, high)
        thresholds = np.unique(np.linspace(0, 254, min(config.n_thresholds, 255)).round().astype(np.uint8))
    else:
        search_maps = maps
        thresholds = finetuning.threshold_candidates(maps, n=config.n_thresholds)
    min_areas = finetuning.min_area_candidates(maps.shape[1:], n=config.n_min_areas)
    result = finetuning.search(search_maps, labels, masks, thresholds, min_areas)
    threshold = (finetuning.dequantise_threshold(result.threshold, low, high)
                 if config.dtype == "uint8" else float(result.threshold))
    search_seconds = time.perf_counter() - search_started

    plot_finetune_search(run.folder / "finetune_search.png", result.thresholds, result.min_areas, result.f1_grid,
                         result.threshold, result.min_area, title=f"{run.method} on {run.dataset.name}: image F1")
    plot_score_histogram(run.folder / "finetune_scores.png", scores, labels, title="finetune images: image scores")
    runs.atomic.write_json(run.folder / runs.FINETUNE_FILE, {
        "model_run": run.info["run_id"],
        "threshold": threshold,
        "min_area": int(result.min_area),
        "criterion": "image F1 on the finetune split, ties broken by pixel IoU",
        "finetune_f1": float(result.f1),
        "finetune_pixel_iou": float(result.pixel_iou),
        "map_options": model.map_options(),
        "tiling": tiling.to_json() if tiling else None,
        "dtype": config.dtype,
        "n_images": len(samples),
        "grid": {"thresholds": len(thresholds), "min_areas": len(min_areas)},
        "search": result.to_dict(),
        "wall_seconds": {"maps": map_seconds, "search": search_seconds, "total": time.perf_counter() - started},
        "command": runs.command_line(),
    })
    report(f"threshold {threshold:.5g}, min-area {int(result.min_area)} px: finetune F1 {result.f1:.3f}, "
           f"pixel IoU {result.pixel_iou:.3f} (search {search_seconds:.1f} s); next: python3 test.py --save")
    return run.folder / runs.FINETUNE_FILE


@cli_entry
def main(argv=None):
    return finetune(parse_args(argv))


if __name__ == "__main__":
    main()
