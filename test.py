"""Evaluate a trained (and finetuned) model on the test set.

    python3 test.py --save                        # latest model; --save writes one overlay per test image
    python3 test.py -p saved_models/.../model.keras
    python3 test.py --report                      # also report.html: one self-contained page, opens offline

Threshold-free metrics (image AUROC, pixel AUROC, AUPRO to FPR 0.3, image F1-max) use the full test
set so they compare with published tables. Metrics at the finetuned threshold / min-area use the
evaluation part only: the images the threshold was chosen on are never used to judge it.
"""
import argparse
import time
from dataclasses import dataclass

import processing.environment  # noqa: F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)
from processing.errors import CommandLineParser, UserError, cli_entry


@dataclass
class TestConfig:
    model_path: str | None
    save: bool
    report: bool
    tile: int | None
    overlap: int | None


def parse_args(argv=None):
    from processing import tiling

    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--model-path", default=None, help="model.keras or its run folder (default: latest)")
    parser.add_argument("--save", action="store_true", help="save a segmentation overlay PNG per test image")
    parser.add_argument("--report", action="store_true",
                        help="write report.html: metrics, curves, the worst false positives and negatives (offline)")
    tiling.add_arguments(parser)
    return TestConfig(**vars(parser.parse_args(argv)))


def threshold_free_metrics(labels, scores, masks, maps):
    from processing import metrics

    result = {}
    if len(set(labels.tolist())) == 2:
        result["image_auroc"] = metrics.image_auroc(labels, scores)
        result["image_f1_max"] = metrics.image_f1_max(labels, scores)[0]
    if masks.any():
        result["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
        result["aupro_0.3"] = metrics.aupro(masks, maps, max_fpr=0.3)
    return result


def evaluate(config):
    import numpy as np

    from processing import data, metrics, plots, runs, segmentation
    from processing.progress import report
    from processing.tiling import tiled_maps_and_scores

    started = time.perf_counter()
    run = runs.Run(runs.resolve_model_path(config.model_path))
    model = run.load_model()
    tuned = run.finetune()
    if tuned:
        model.configure_maps(**tuned.get("map_options", {}))
    else:
        report("no finetune.json beside the model: threshold metrics are skipped (run finetune.py first)")

    samples = run.finetune_samples + run.evaluation_samples
    if not samples:
        raise UserError(f"{run.dataset.name} has no test images; add test/good and test/<defect> folders")
    in_evaluation = np.array([False] * len(run.finetune_samples) + [True] * len(run.evaluation_samples))
    labels = np.array([s.label for s in samples])
    tiling = run.tiling_for(config.tile, config.overlap)
    images, masks = data.load_arrays(run.dataset, samples, run.working_size(tiling), run.channels)
    report(f"testing {run.method} on {len(samples)} test images of {run.dataset.name}")
    map_started = time.perf_counter()
    maps, scores = tiled_maps_and_scores(model, images, tiling)
    images_per_second = len(samples) / (time.perf_counter() - map_started)

    results = {"method": run.method, "dataset": run.dataset.name, "model": str(run.model_path),
               "n_test_images": len(samples), "n_evaluation_images": int(in_evaluation.sum()),
               "tiling": tiling.to_json() if tiling else None,
               "full_test_set": threshold_free_metrics(labels, scores, masks, maps),
               "inference_images_per_second": images_per_second}
    predictions = np.full(len(samples), -1)
    predicted_masks = np.zeros_like(masks)
    if tuned:
        predicted_masks, predictions, _ = segmentation.segment(maps, tuned["threshold"], tuned["min_area"])
        ev = in_evaluation
        results["threshold"] = {"threshold": tuned["threshold"], "min_area": tuned["min_area"]}
        results["evaluation_set"] = metrics.threshold_metrics(labels[ev], predictions[ev].astype(int),
                                                              masks[ev], predicted_masks[ev])

    results_dir = runs.new_folder(runs.RESULTS, run.dataset.name, run.method)
    if len(set(labels.tolist())) == 2:
        fpr, tpr = metrics.roc_curve_points(labels, scores)
        plots.plot_roc_curve(results_dir / "roc_curve.png", fpr, tpr, results["full_test_set"]["image_auroc"],
                             title=f"{run.method} on {run.dataset.name}")
        recall, precision = metrics.pr_curve_points(labels, scores)
        plots.plot_pr_curve(results_dir / "pr_curve.png", recall, precision, labels.mean(),
                            title=f"{run.method} on {run.dataset.name}")
    plots.plot_score_histogram(results_dir / "score_histogram.png", scores, labels,
                               title=f"{run.method} on {run.dataset.name}: image scores")
    map_range = (float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9)))  # one colour scale for all overlays
    if config.save:
        for i, sample in enumerate(samples):
            name = sample.path.replace("/", "_").rsplit(".", 1)[0] + ".png"
            plots.save_overlay(results_dir / "segmentation" / name, images[i], maps[i],
                               predicted_masks[i] if tuned else None, masks[i] if sample.mask else None, map_range)
    rows = [{"path": s.path, "defect": s.defect, "label": int(labels[i]), "split": "evaluation" if in_evaluation[i] else "finetune",
             "score": float(scores[i]), "prediction": int(predictions[i]) if tuned else ""} for i, s in enumerate(samples)]
    runs.atomic.write_csv(results_dir / "per_image.csv", rows)
    results["wall_seconds"] = time.perf_counter() - started
    runs.atomic.write_json(results_dir / "metrics.json", results)
    if config.report:
        from processing.report import write_report

        page = write_report(results_dir, samples, images, maps, masks, predicted_masks if tuned else None, scores,
                            in_evaluation, map_range)
        report(f"report: {page}")
    print_table(results)
    report(f"results in {results_dir}")
    return results_dir


def print_table(results):
    lines = [f"{'metric':<28}{'value':>10}"]
    for key, value in results["full_test_set"].items():
        lines.append(f"{key + ' (full test)':<28}{value:>10.4f}")
    for key, value in results.get("evaluation_set", {}).items():
        if isinstance(value, float):
            lines.append(f"{key + ' (evaluation)':<28}{value:>10.4f}")
    if "evaluation_set" in results:
        lines.append(f"confusion [[tn fp] [fn tp]]   {results['evaluation_set']['confusion_matrix']}")
    lines.append(f"{'inference images/s':<28}{results['inference_images_per_second']:>10.1f}")
    print("\n".join(lines), flush=True)


@cli_entry
def main(argv=None):
    return evaluate(parse_args(argv))


if __name__ == "__main__":
    main()
