"""Score new images with a trained, finetuned model: is each part defective, and where.

    python3 predict.py incoming/                         # latest model; a folder, searched recursively
    python3 predict.py -p saved_models/.../model.keras 'line3/**/*.png' part_17.jpg --overlays

Every image (any size) gets a score, a yes/no from the finetuned threshold and min-area, its defect
area and the bounding box of each defect region, both in the image's own pixels. Results go to
predictions.csv and predictions.json in --out, written when the run completes; --overlays adds a
picture per image. Files that are not images or do not decode are listed with their error and
skipped. Images are read and scored in batches, so any number of them fits in memory.
"""
import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import processing.environment  # noqa: F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)
from processing.errors import CommandLineParser, UserError, cli_entry

PROGRESS_EVERY_SECONDS = 5.0


@dataclass
class PredictConfig:
    inputs: list
    model_path: str | None
    out: str | None
    threshold: float | None
    min_area: int | None
    batch_size: int | None
    overlays: bool
    tile: int | None
    overlap: int | None


def parse_args(argv=None):
    from processing import tiling

    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    parser.add_argument("-p", "--model-path", default=None, help="model.keras or its run folder (default: latest)")
    parser.add_argument("-o", "--out", default=None, help="results folder (default: results/predict/<timestamp>)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="anomaly-map threshold (default: finetune.json's; required without finetune.json)")
    parser.add_argument("--min-area", type=int, default=None,
                        help="smallest defect region, in pixels of the maps (default: finetune.json's, else 1)")
    parser.add_argument("-b", "--batch-size", type=int, default=None,
                        help="images read and scored together (default: 16, or 1 when tiling)")
    parser.add_argument("--overlays", action="store_true", help="save the image beside its heat map and regions")
    tiling.add_arguments(parser)
    config = PredictConfig(**vars(parser.parse_args(argv)))
    if config.batch_size is not None and config.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if config.min_area is not None and config.min_area < 1:
        raise UserError("--min-area must be at least 1 pixel")
    return config


def segmentation_parameters(config, run):
    """(threshold, min_area, finetune.json or None): the flags win over what finetune.py chose."""
    tuned = run.finetune()
    if tuned is None and config.threshold is None:
        raise UserError(f"no finetune.json beside {run.model_path}: run finetune.py first, or pass --threshold "
                        "(and --min-area)")
    threshold = config.threshold if config.threshold is not None else tuned["threshold"]
    min_area = config.min_area or (tuned["min_area"] if tuned else 1)
    return threshold, min_area, tuned


def output_folder(config):
    from processing import runs

    folder = Path(config.out) if config.out else runs.RESULTS / "predict" / runs.timestamp()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {folder}: {error.strerror}; choose a writable folder with --out") from error
    return folder


def predict(config):
    from processing import plots, prediction, runs
    from processing.progress import report

    paths = prediction.expand_inputs(config.inputs)
    run = runs.Run(runs.resolve_model_path(config.model_path))
    threshold, min_area, tuned = segmentation_parameters(config, run)
    tiling = run.tiling_for(config.tile, config.overlap)
    model = run.load_model()  # after the checks above: loading takes seconds
    if tuned:
        model.configure_maps(**tuned.get("map_options", {}))
    whole_image_size = None if tiling else run.working_size(None)  # a CenterCrop when trained with --center-crop
    predictor = prediction.Predictor(model, threshold, min_area, tiling, whole_image_size)
    out = output_folder(config)
    header = {"model": str(run.model_path), "method": run.method, "threshold": threshold, "min_area": min_area,
              "tiling": tiling.to_json() if tiling else None, "center_crop": None if tiling else run.center_crop,
              "boxes": prediction.BOX_CONVENTION}
    applied = f" in {tiling.tile} px tiles (overlap {tiling.overlap})" if tiling else ""
    if run.center_crop and not tiling:
        applied = f" to the central {run.center_crop:g} of each image side (trained with --center-crop)"
    report(f"predicting {len(paths)} files with {run.method}{applied}, threshold {threshold:.5g}, min-area {min_area} px")

    counts = {"files": len(paths), "scored": 0, "anomalous": 0, "skipped": 0}
    scoring_started = last_report = time.perf_counter()
    with prediction.PredictionWriter(out, header) as writer:
        chunk_size = config.batch_size or (1 if tiling else 16)
        for chunk in prediction.read_chunks(paths, run.channels, chunk_size):
            decoded = [(path, image) for path, image, error in chunk if error is None]
            results = dict(zip((path for path, _ in decoded), predictor.predict([image for _, image in decoded])))
            for path, image, error in chunk:
                if error is not None:
                    report(f"skipped {path}: {error}")
                    counts["skipped"] += 1
                    writer.write(prediction.image_record(path, error=error))
                    continue
                result = results[path]
                counts["scored"] += 1
                counts["anomalous"] += result.anomalous
                if config.overlays:  # numbered by row, so that equal names from two folders stay apart
                    # Colours run up to the threshold (or the map's max above it): only defects reach the top.
                    map_range = (float(result.anomaly_map.min()), max(threshold, float(result.anomaly_map.max())))
                    plots.save_overlay(out / "overlays" / f"{writer.n_rows + 1:06d}_{path.stem}.png",
                                       predictor.working_image(image), result.anomaly_map, result.predicted_mask,
                                       map_range=map_range)
                writer.write(prediction.image_record(path, image, result))
            now = time.perf_counter()
            if now - last_report >= PROGRESS_EVERY_SECONDS:
                last_report = now
                report(f"{writer.n_rows}/{len(paths)} files, {counts['scored'] / (now - scoring_started):.1f} images/s")
        seconds = time.perf_counter() - scoring_started
        counts.update(seconds=seconds, images_per_second=counts["scored"] / seconds)
        writer.finish(counts)
    report(f"{counts['scored']} images scored ({counts['anomalous']} anomalous), {counts['skipped']} files skipped, "
           f"{counts['images_per_second']:.1f} images/s; results in {out}")
    return out


@cli_entry
def main(argv=None):
    return predict(parse_args(argv))


if __name__ == "__main__":
    main()
