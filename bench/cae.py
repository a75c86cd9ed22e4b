"""Benchmark the CAE family on the real categories of ../shared/data.

    python3 bench/cae.py [--data-root ../shared/data] [--configs mvtecCAE:ssim ...] [--categories mvtec_ad/bottle ...]

Writes bench/results/cae.{csv,md} after every run; a rerun skips the rows already there. The default schedule (128 px, at most 10
epochs) is what fits all four configurations on every category into about an hour and a half
of a 2-core CPU; pass --size 256 --epochs 50 for the CLI's full schedule.
"""
import argparse
import tempfile

from common import ROOT, SHARED_DATA, categories, previous_rows, run_one, write_table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(SHARED_DATA))
    parser.add_argument("--configs", nargs="+", default=["mvtecCAE:ssim", "mvtecCAE:l2", "resnetCAE:ssim", "resnetCAE:l2"],
                        help="method:loss pairs")
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cae"))
    args = parser.parse_args()
    rows = previous_rows(args.out)
    done = {(row["method"], row["category"]) for row in rows}
    with tempfile.TemporaryDirectory() as workdir:
        for category in categories(args.data_root, args.categories):
            for method, loss in (config.split(":") for config in args.configs):
                if (f"{method}-{loss}", category) in done:
                    continue
                print(f"== {method} ({loss}) on {category}", flush=True)
                row = run_one(method, category, args.data_root, workdir,
                              ["-l", loss, "--size", str(args.size), "-e", str(args.epochs)])
                rows.append({**row, "method": f"{method}-{loss}"})
                write_table(rows, args.out, f"CAE benchmark ({args.epochs} epochs max, {args.size} px)")


if __name__ == "__main__":
    main()
