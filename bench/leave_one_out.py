"""Leave-one-class-out benchmark: analyze.py's --leave-one-out protocol for several embedders and
detectors, on every category of a data root, as one table.

    python3 bench/leave_one_out.py --data-root ../shared/data
    python3 bench/leave_one_out.py --embedders backbone-lite0 simclr-lite0 --detectors knn mahalanobis

Each category is a class; for each held-out class a detector fitted on the train/good embeddings of
all the others scores the held-out class's test images (anomalous) against the other classes'
test/good images (normal); see processing/embedding_analysis.py. Embedders:

* `backbone-lite0`, `backbone-lite2`: the frozen pretrained EfficientNet-Lite at --size (224, as
  analyze.py), the mean of its locally aware patch features;
* `simclr-lite0`, `dino-lite0`, `mae-128`: the bench variants of bench/run.py, trained with its flags on
  --train-category (default: the category with the fewest training images) and then used to embed
  every category at their own input size. The training category's train/good images are normal
  training data in every fold but its own, as for any other category.

Every embedder embeds all images once; each detector then runs the protocol on those embeddings.
Writes bench/results/leave_one_out.{csv,md} (with machine and versions) after every embedder, keeping
the rows of embedders not selected this time.
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import processing.environment  # noqa: E402,F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)

from bench.common import SHARED_DATA, categories, inside, previous_rows, train_timed, write_table  # noqa: E402
from bench.run import VARIANTS  # noqa: E402
from processing.errors import CommandLineParser, cli_entry  # noqa: E402

OUT_STEM = ROOT / "bench" / "results" / "leave_one_out"
WORKDIR = ROOT / "bench" / "out" / "leave_one_out"
BACKBONES = {"backbone-lite0": "lite0", "backbone-lite2": "lite2"}
TRAINED = ("simclr-lite0", "dino-lite0", "mae-128")
DETECTORS = ("knn", "mahalanobis", "cosine", "gmm")
NOTE = ("Leave-one-class-out ROC AUC per held-out category (its test images, anomalous, against the other "
        "categories' test/good images, normal; the detector fitted on the other categories' train/good "
        "embeddings). embed_s: wall time to embed every train and test image once, shared by an embedder's "
        "rows; train_s: training the embedder on train_category (trained embedders only).")


def parse_args(argv=None):
    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(SHARED_DATA))
    parser.add_argument("--embedders", nargs="+", default=[*BACKBONES, *TRAINED], choices=[*BACKBONES, *TRAINED])
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--categories", nargs="+", default=None, help="dataset/category names (default: all)")
    parser.add_argument("--train-category", default=None,
                        help="where the trained embedders learn (default: the category with the fewest train images)")
    parser.add_argument("--train-args", default="", help="train.py flags appended to the trained embedders' own")
    parser.add_argument("--size", type=int, default=224, help="image size for the backbone embedders")
    parser.add_argument("--out", default=str(OUT_STEM), help="output stem: <out>.csv and <out>.md")
    parser.add_argument("--workdir", default=str(WORKDIR), help="where the trained embedders' runs are written")
    return parser.parse_args(argv)


def trained_embedder(variant, config):
    """Train bench/run.py's `variant` on config.train_category (in config.workdir); its ModelEmbedder, seconds."""
    from processing import runs
    from processing.embedding_analysis import ModelEmbedder

    method, flags = VARIANTS[variant]
    data_root = Path(config.data_root).resolve()  # a relative root must survive the change of folder
    with inside(Path(config.workdir) / variant):
        model_path, seconds = train_timed(method, config.train_category, data_root,
                                          [*shlex.split(flags), *shlex.split(config.train_args)])
        model = runs.Run(runs.resolve_model_path(model_path)).load_model()
    return ModelEmbedder(model), seconds


def embedder_rows(name, embedder, train_seconds, names, config):
    """One row per detector: the held-out AUROCs of one embedder's embeddings of every category."""
    from processing.embedding_analysis import embed_categories, leave_one_out

    started = time.perf_counter()
    images = embed_categories(embedder, names, config.data_root)
    embed_seconds = time.perf_counter() - started
    rows = []
    for detector in config.detectors:
        aurocs = {row["held_out"]: row["auroc"] for row in leave_one_out(images, detector)}
        rows.append({"embedder": name, "detector": detector, **aurocs,
                     "mean_auroc": float(sum(aurocs.values()) / len(aurocs)), "size": embedder.size,
                     "embed_s": embed_seconds, "embed_img_s": len(images.path) / embed_seconds,
                     "train_s": train_seconds,
                     "train_category": config.train_category if name in TRAINED else None})
    return rows


def run(config):
    import keras

    from processing.embedding_analysis import BackboneEmbedder
    from processing.errors import UserError

    names = categories(config.data_root, config.categories)
    if len(names) < 2:
        raise UserError(f"leave-one-class-out needs at least two categories with train/good under "
                        f"{config.data_root}, found {len(names)}; pass --data-root (and --categories)")
    config.train_category = config.train_category or names[0]
    columns = ["embedder", "detector", *names, "mean_auroc", "size", "embed_s", "embed_img_s", "train_s",
               "train_category"]
    # Rows of other embedders from an earlier run stay, so embedders can be (re)measured one at a time.
    rows = [row for row in previous_rows(config.out) if row["embedder"] not in config.embedders]
    for name in config.embedders:
        keras.utils.clear_session(free_memory=True)
        print(f"== {name}", flush=True)
        if name in BACKBONES:
            embedder, train_seconds = BackboneEmbedder(BACKBONES[name], config.size), None
        else:
            embedder, train_seconds = trained_embedder(name, config)
        rows += embedder_rows(name, embedder, train_seconds, names, config)
        write_table(rows, config.out, "Benchmark: leave-one-class-out over the categories", columns=columns,
                    note=NOTE)
    return rows


@cli_entry
def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
