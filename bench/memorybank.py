"""PatchCore and PaDiM on every category: train (feature extraction + calibrate) -> finetune -> test.

    python3 bench/memorybank.py                                   # patchcore + padim, Lite0, all categories
    python3 bench/memorybank.py --data-root ../shared/data --categories mvtec_ad/bottle \\
        --methods patchcore padim --backbones lite0 lite2

Writes bench/results/memorybank.{csv,md} after every run, with anomalib's published figures
appended for comparison; a rerun skips the (method-backbone, category) rows already there, so delete
the table to rerun with another --coreset-ratio. The method
column names the backbone (`patchcore-lite0`); train_s is the fit time (features + coreset or
Gaussians + saving). PatchCore keeps 1% of the patch features by default here, as anomalib's figures
below, not train.py's 10%: on 2 CPU cores 10% makes the coreset selection and the nearest-neighbour
search about 10x slower.
"""
import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SHARED_DATA, categories, previous_rows, run_one, write_table  # noqa: E402

OUT_STEM = ROOT / "bench" / "results" / "memorybank"
WORKDIR = ROOT / "bench" / "out" / "memorybank"

# anomalib's image AUROC / pixel AUROC / AUPRO@0.3 on these categories (coreset 1% for PatchCore).
ANOMALIB = {
    "patchcore": {"mvtec_ad/bottle": (1.000, 0.983, 0.936), "mvtec_loco/juice_bottle": (0.972, 0.895, 0.834),
                  "kolektorsdd/kolektorsdd": (0.827, 0.855, 0.436), "lookout_cookies/cookie": (1.000, 0.973, 0.910),
                  "sdu_glassfiber/glass_fiber": (0.939, 0.866, 0.749),
                  "magnetic_tile/magnetic_tile": (0.946, 0.813, 0.713)},
    "padim": {"mvtec_ad/bottle": (0.995, 0.980, 0.922), "mvtec_loco/juice_bottle": (0.896, 0.830, 0.766),
              "kolektorsdd/kolektorsdd": (0.804, 0.886, 0.483), "lookout_cookies/cookie": (1.000, 0.946, 0.822),
              "sdu_glassfiber/glass_fiber": (0.958, 0.754, 0.636),
              "magnetic_tile/magnetic_tile": (0.949, 0.740, 0.750)},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(SHARED_DATA))
    parser.add_argument("--categories", nargs="*", default=None, help="dataset/category names (default: all)")
    parser.add_argument("--methods", nargs="+", choices=("patchcore", "padim"), default=["patchcore", "padim"])
    parser.add_argument("--backbones", nargs="+", choices=("lite0", "lite1", "lite2"), default=["lite0"])
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    return parser.parse_args(argv)


def anomalib_table(rows):
    lines = ["\n## anomalib, for comparison\n\n| method | category | image_auroc | pixel_auroc | aupro |\n",
             "|---|---|---|---|---|\n"]
    for method, category in sorted({(row["method"].split("-")[0], row["category"]) for row in rows}):
        figures = ANOMALIB[method].get(category)
        if figures:
            lines.append(f"| {method} | {category} | " + " | ".join(f"{value:.3f}" for value in figures) + " |\n")
    return "".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: every run builds new models
    names = categories(args.data_root, args.categories)
    if not names:
        sys.exit(f"no categories with train/good under {args.data_root}")
    rows = previous_rows(OUT_STEM)
    done = {(row["method"], row["category"]) for row in rows}
    title = f"PatchCore (coreset {args.coreset_ratio:g}) and PaDiM on EfficientNet-Lite features"
    for backbone in args.backbones:
        for method in args.methods:
            for category in names:
                label = f"{method}-{backbone}"
                if (label, category) in done:
                    continue
                print(f"== {label} on {category}", flush=True)
                row = run_one(method, category, args.data_root, WORKDIR / label,
                              ["--backbone", backbone, "--coreset-ratio", str(args.coreset_ratio)])
                rows.append({**row, "method": label})
                write_table(rows, OUT_STEM, title)
                with OUT_STEM.with_suffix(".md").open("a") as md:
                    md.write(anomalib_table(rows))


if __name__ == "__main__":
    main()
