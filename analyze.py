"""Study the image embeddings of a model, or of the plain pretrained backbone, over categories.

    python3 analyze.py --data-root ../shared/data -d mvtec_ad/bottle lookout_cookies/cookie --out results/analysis
    python3 analyze.py -p saved_models/.../model.keras --out results/analysis/mae   # the model's embeddings
    python3 analyze.py --data-root ../shared/data --leave-one-out                  # every category of the root

The study: PCA to 100 dimensions, t-SNE maps by category and by defect, a k-means elbow plot, GMM
outlier removal, per-category detector score histograms (normal vs defective) with their AUROC, and
with -p the confusion matrix at the model's finetuned threshold. --leave-one-out instead treats each
category as a class: a detector fitted on the normal training images of all the others scores the
held-out class's test images (anomalous) against the other classes' test/good images (normal); one
ROC AUC per held-out class. See processing/embedding_analysis.py for the details.
"""
import argparse
from dataclasses import dataclass

import processing.environment  # noqa: F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)
from processing.errors import CommandLineParser, UserError, cli_entry

DEFAULT_SIZE = 224  # the backbone's ImageNet size; with -p the model's own size is used


@dataclass
class AnalyzeConfig:
    datasets: list
    data_root: str | None
    model_path: str | None
    backbone: str
    size: int | None
    out: str
    detector: str
    clusters: int
    outlier_fraction: float
    leave_one_out: bool
    batch_size: int
    seed: int


def parse_args(argv=None):
    from selfsup.embedding_scoring import DETECTOR_PARAMS

    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--datasets", nargs="+", default=None,
                        help="categories: folders in MVTec layout or names under --data-root "
                             "(default: the model's dataset with -p, else every category under --data-root)")
    parser.add_argument("--data-root", default=None, help="where -d names are looked up (default: $ANOMALY_DATA_ROOT or datasets/)")
    parser.add_argument("-p", "--model-path", default=None,
                        help="model.keras (or its run folder) whose embeddings to study; default: the pretrained backbone")
    parser.add_argument("--backbone", choices=("lite0", "lite1", "lite2"), default="lite0",
                        help="pretrained EfficientNet-Lite used without -p")
    parser.add_argument("--size", type=int, default=None,
                        help=f"every image is resized to size x size (default {DEFAULT_SIZE}; with -p the model's size)")
    parser.add_argument("--out", default="results/analysis", help="folder for the PNGs and CSVs (files are replaced)")
    parser.add_argument("--detector", choices=tuple(DETECTOR_PARAMS), default="knn",
                        help="scorer fitted on normal embeddings (knn: k=5, cosine)")
    parser.add_argument("--clusters", type=int, default=10, help="k-means is run for k = 1..this")
    parser.add_argument("--outlier-fraction", type=float, default=0.05,
                        help="share of training images the GMM flags as outliers and leaves out")
    parser.add_argument("--leave-one-out", action="store_true", help="run the leave-one-class-out protocol instead")
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seeds PCA, t-SNE, k-means and the GMM")
    config = AnalyzeConfig(**vars(parser.parse_args(argv)))
    if config.model_path is None and config.size is None:
        config.size = DEFAULT_SIZE
    if config.size is not None and config.size < 32:
        raise UserError(f"--size must be at least 32 pixels, got {config.size}")
    for name in ("clusters", "batch_size"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= config.outlier_fraction < 1:
        raise UserError(f"--outlier-fraction must be in [0, 1), got {config.outlier_fraction}")
    return config


@cli_entry
def main(argv=None):
    import keras

    from processing import embedding_analysis

    config = parse_args(argv)
    keras.utils.set_random_seed(config.seed)
    if config.leave_one_out:
        return embedding_analysis.analyze_leave_one_out(config)
    return embedding_analysis.analyze(config)


if __name__ == "__main__":
    main()
