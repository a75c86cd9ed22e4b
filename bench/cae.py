"""Benchmark the CAE family on the real categories of ../shared/data.

    python3 bench/cae.py [--data-root ../shared/data] [--methods mvtecCAE ...] [--categories mvtec_ad/bottle ...]

Writes bench/results/cae.{csv,md}. The default schedule (128 px, 15 epochs) is what fits a
2-core CPU for every category; pass --size 256 --epochs 50 for the full training schedule.
"""
import argparse
import tempfile

from common import SHARED_DATA, categories, run_one, write_table, ROOT


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(SHARED_DATA))
    parser.add_argument("--methods", nargs="+", default=["mvtecCAE"])
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--loss", default="ssim")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cae"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for category in categories(args.data_root, args.categories):
            for method in args.methods:
                print(f"== {method} on {category}", flush=True)
                row = run_one(method, category, args.data_root, workdir,
                              ["-l", args.loss, "--size", str(args.size), "-e", str(args.epochs)])
                rows.append({**row, "method": f"{method}-{args.loss}-{args.size}px"})
                write_table(rows, args.out, f"CAE benchmark ({args.epochs} epochs max, {args.size} px, {args.loss} loss)")


if __name__ == "__main__":
    main()
