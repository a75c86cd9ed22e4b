"""One bench command: every method variant on every category of a data root -> one table.

    python3 bench/run.py --data-root ../shared/data                       # everything not yet measured
    python3 bench/run.py --methods patchcore padim --categories mvtec_ad/bottle
    python3 bench/run.py --list                                           # the variants and their flags

Each row is the same train -> finetune -> test calls users make (bench/common.run_one), in a process
of its own, so that rows share no TensorFlow state and peak_mem_mb is that row's. After every
row the table is rewritten: bench/results/results.{csv,md} (with machine and versions), a PNG chart
(methods x categories: image AUROC, pixel AUROC, AUPRO, inference images/s) and the results table
in README.md between its bench-table markers. A rerun skips rows already measured (resume after an
interruption); `--rerun` measures the selected rows again and replaces them. The runs are written
under bench/out/<variant>/, without their model.keras unless `--keep-models`.

The schedules below are what fits a 2-core CPU (see each comment); pass `--extra-args` to change
them for every selected variant, e.g. `--extra-args="--size 256 -e 50"`.
"""
import argparse
import logging
import multiprocessing
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import processing.environment  # noqa: E402,F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)

from bench.chart import save_chart  # noqa: E402
from bench.common import SHARED_DATA, categories, previous_rows, run_one, write_table  # noqa: E402
from bench.published import published_table  # noqa: E402
from bench.readme import update_readme  # noqa: E402
from processing.errors import UserError  # noqa: E402

OUT_STEM = ROOT / "bench" / "results" / "results"
WORKDIR = ROOT / "bench" / "out"
README = ROOT / "README.md"

# The best PaDiM's flags, which its variants below extend.
PADIM_DEEP6X30 = "--backbone lite0 --feature-stages 1 2 4 6 --padim-deep-features 30"
PADIM_DEEP6X30_S384 = f"{PADIM_DEEP6X30} --size 384"

# variant name -> (-a method, train.py flags)
VARIANTS = {
    # The CAEs at 128 px and at most 10 epochs: the schedule that fits all categories into hours
    # (resnetCAE's 16..128 widths keep magnetic_tile's 762 images under 15 minutes).
    "mvtecCAE-ssim": ("mvtecCAE", "-l ssim --size 128 -e 10"),
    "mvtecCAE-l2": ("mvtecCAE", "-l l2 --size 128 -e 10"),
    "resnetCAE-ssim": ("resnetCAE", "-l ssim --size 128 -e 10"),
    "resnetCAE-l2": ("resnetCAE", "-l l2 --size 128 -e 10"),
    # The schedule that reaches the MVTec AD paper's CAE figures on bottle (about 14 min on idle 2 cores).
    "mvtecCAE-ssim-60": ("mvtecCAE", "-l ssim --size 128 -e 60 --patience 15"),
    "mvtecCAE-l2-60": ("mvtecCAE", "-l l2 --size 128 -e 60 --patience 15"),
    # Coreset 1% as in anomalib's published figures; 10% is ten times slower on CPU.
    "patchcore-lite0": ("patchcore", "--backbone lite0 --coreset-ratio 0.01"),
    "patchcore-lite2": ("patchcore", "--backbone lite2 --coreset-ratio 0.01"),
    "padim-lite0": ("padim", "--backbone lite0"),
    "padim-lite2": ("padim", "--backbone lite2"),
    # The deeper stride-16/32 features: larger receptive fields for textures and large defects.
    "patchcore-lite0-s16-32": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --feature-strides 16 32"),
    "padim-lite0-s16-32": ("padim", "--backbone lite0 --feature-strides 16 32"),
    # PaDiM on a stride-4 grid: the 24-channel stage 1 added (as the paper's ResNet layer1-3), 64x64 Gaussians.
    "padim-lite0-st124": ("padim", "--backbone lite0 --feature-stages 1 2 4"),
    # The same on images upsampled to 384 px: one Gaussian per 4x4 of those pixels (2.7x2.7 of the 256 px
    # originals); maps, masks and pixel metrics at 384 px.
    "padim-lite0-st124-s384": ("padim", "--backbone lite0 --feature-stages 1 2 4 --size 384"),
    # And 10 (30) more channels from the stride-32 stage 6, drawn apart (memorybank/padim.py): its context
    # without its 320 channels filling the draw.
    "padim-lite0-st124-deep6-s384": ("padim", "--backbone lite0 --feature-stages 1 2 4 6 --padim-deep-features 10 "
                                              "--size 384"),
    "padim-lite0-st124-deep6x30-s384": ("padim", PADIM_DEEP6X30_S384),
    # The same at 448 px: sharper maps for thin defects (magnetic_tile) at 1.4 times the positions.
    "padim-lite0-st124-deep6x30-s448": ("padim", f"{PADIM_DEEP6X30} --size 448"),
    # The same with semi-orthogonal projections (Kim et al. 2021) in place of the two channel subsets.
    "padim-lite0-st124-deep6x30-s384-orthogonal": ("padim", f"{PADIM_DEEP6X30_S384} --padim-embedding orthogonal"),
    # The same with each covariance shrunk 10 % towards the one pooled over positions (memorybank/padim.py).
    "padim-lite0-st124-deep6x30-s384-shrink10": ("padim", f"{PADIM_DEEP6X30_S384} --padim-shrinkage 0.1"),
    # The same with anomalib's input preprocessing: (x - mean) / std with ImageNet's statistics.
    "padim-lite0-st124-deep6x30-s384-imagenet-norm": ("padim", f"{PADIM_DEEP6X30_S384} --input-normalization imagenet"),
    # The same with each block projected onto the training features' leading principal axes (no seed).
    "padim-lite0-st124-deep6x30-s384-pca": ("padim", f"{PADIM_DEEP6X30_S384} --padim-embedding pca"),
    # Two members, those Gaussians and the random subsets' (seed 0), their distance maps averaged.
    "padim-lite0-st124-deep6x30-s384-pca-subset": ("padim", f"{PADIM_DEEP6X30_S384} --padim-embedding pca subset"),
    # And a third member without stage 6 (stages 1 2 4, seed 2): sharper on magnetic_tile's small blowholes.
    "padim-lite0-st124-deep6x30-s384-pca-subset-subset0": (
        "padim", f"{PADIM_DEEP6X30_S384} --padim-embedding pca subset subset --padim-deep-features 30 30 0"),
    # All three depths in one bank: the stride-32 context for image decisions, the stride-8 grid for maps.
    "patchcore-lite0-s8-16-32": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --feature-strides 8 16 32"),
    # Maps from the default stride 8/16 bank, image scores from a second, stride 8/16/32 bank (one backbone pass).
    "patchcore-lite0-score32": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --score-strides 8 16 32"),
    # The same with the 192-channel stride-32 stage (5) in the image-score bank instead of the 320-channel one (6).
    "patchcore-lite0-score-st245": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --score-stages 2 4 5"),
    # Maps from stages 1, 2 and 4 on the stride-8 grid (stage 1's 3x3 means pooled 2x2), each patch scored by
    # its 3 nearest bank features, the map coreset picked on the 176-dim features unprojected; image scores
    # from the -score-st245 bank.
    "patchcore-lite0-st124-k3": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --feature-stages 1 2 4 "
                                              "--grid-stride 8 --patch-neighbours 3 --coreset-projection 0 "
                                              "--score-stages 2 4 5"),
    "patchcore-lite0-st124-k3-imagenet-norm": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 "
                                                            "--feature-stages 1 2 4 --grid-stride 8 "
                                                            "--patch-neighbours 3 --coreset-projection 0 "
                                                            "--score-stages 2 4 5 --input-normalization imagenet"),
    # The paper's image-score reweighting over 9 bank neighbours (anomalib's default), on both feature depths.
    "patchcore-lite0-nb9": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --score-neighbours 9"),
    "patchcore-lite0-s16-32-nb9": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --feature-strides 16 32 "
                                                "--score-neighbours 9"),
    # Patch score = mean distance to the 3 nearest bank features (the reference code's anomaly_scorer_num_nn).
    "patchcore-lite0-k3": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --patch-neighbours 3"),
    # anomalib's protocol: images resized to 256, the central 224 kept (model input, masks and metrics alike).
    "patchcore-lite0-crop": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --center-crop 0.875"),
    "padim-lite0-crop": ("padim", "--backbone lite0 --center-crop 0.875"),
    "patchcore-lite0-s16-32-crop": ("patchcore", "--backbone lite0 --coreset-ratio 0.01 --feature-strides 16 32 "
                                                 "--center-crop 0.875"),
    # CutPaste at 256 px with its default schedule (10 epochs, cut to about 25 min of training on a slow 2-core CPU).
    "cutpaste-3way": ("cutpaste", "--size 256 --cutpaste-variant 3way"),
    "cutpaste-binary": ("cutpaste", "--size 256 --cutpaste-variant binary"),
    # SimCLR and DINO fine-tune the Lite0 embedder for 5 epochs at batch 32 (about 1 s per image per epoch).
    "simclr-lite0": ("simclr", "--size 256 -b 32 -e 5"),
    "dino-lite0": ("dino", "--size 256 -b 32 -e 5"),
    # Deep SVDD at 128 px, 10 epochs; the backbone variants train only a small head on frozen features.
    "deepsvdd-one-class": ("deepsvdd", "--size 128 -e 10 --svdd-objective one-class"),
    "deepsvdd-soft-boundary": ("deepsvdd", "--size 128 -e 10 --svdd-objective soft-boundary --nu 0.1 --radius-every 5"),
    "deepsvdd-backbone": ("deepsvdd", "--size 128 -e 10 --svdd-backbone --backbone lite0"),
    "deepsvdd-golden1": ("deepsvdd", "--size 128 -e 10 --svdd-backbone --golden 1"),
    "deepsvdd-golden10": ("deepsvdd", "--size 128 -e 10 --svdd-backbone --golden 10"),
    # MAE from scratch at 128 px (8x8 patch grid): about 50 img/s training on 2 cores.
    "mae-128": ("mae", "--size 128 -e 100"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(SHARED_DATA))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="variant names or -a methods (a method selects all its variants); default: all")
    parser.add_argument("--categories", nargs="+", default=None, help="dataset/category names (default: all)")
    parser.add_argument("--extra-args", default="", help="train.py flags appended to every selected variant's")
    parser.add_argument("--rerun", action="store_true", help="measure selected rows again, replacing old ones")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep each run's model.keras under bench/out (deleted once measured by default)")
    return parser.parse_args(argv)


def select_variants(names):
    if not names:
        return list(VARIANTS)
    chosen = [v for v in VARIANTS if v in names or VARIANTS[v][0] in names]
    unknown = [n for n in names if n not in VARIANTS and n not in {m for m, _ in VARIANTS.values()}]
    if unknown:
        sys.exit(f"error: unknown variant or method {', '.join(unknown)}; see python3 bench/run.py --list")
    return chosen


def run_in_own_process(*run_one_args):
    """run_one in a fresh (spawned) process; its exceptions, UserError included, come back here."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_one, *run_one_args).result()


def write_all(rows):
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows = sorted(rows, key=lambda row: (order.get(row["method"], len(order)), row["category"]))
    title = "Benchmark: every method on every category"
    write_table(rows, OUT_STEM, title, appendix=published_table(rows))
    save_chart(rows, OUT_STEM.with_suffix(".png"))
    update_readme(README, rows)


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for name, (method, flags) in VARIANTS.items():
            print(f"{name:20s} -a {method} {flags}")
        return
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: every run builds new models
    names = categories(args.data_root, args.categories)
    if not names:
        sys.exit(f"error: no categories with train/good under {args.data_root}; pass --data-root")
    variants = select_variants(args.methods)
    rows = previous_rows(OUT_STEM)
    for variant in variants:
        method, flags = VARIANTS[variant]
        for category in names:
            done = [row for row in rows if (row["method"], row["category"]) == (variant, category)]
            if done and not args.rerun:
                continue
            print(f"== {variant} on {category}", flush=True)
            try:
                row = run_in_own_process(method, category, args.data_root, WORKDIR / variant,
                                         shlex.split(flags) + shlex.split(args.extra_args), args.keep_models)
            except UserError as error:
                sys.exit(f"error: {variant} on {category}: {error}")
            rows = [r for r in rows if r not in done] + [{**row, "method": variant}]
            write_all(rows)


if __name__ == "__main__":
    main()
