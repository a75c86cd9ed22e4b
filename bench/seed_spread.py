"""Seed spread: bench/run.py's memory-bank variants trained with several --seed values on every
category, so that a gap to a published single-run figure can be told apart from seed luck.

    python3 bench/seed_spread.py --data-root ../shared/data           # patchcore-lite0, padim-lite0, seeds 0-4
    python3 bench/seed_spread.py --variants patchcore-lite0-crop --seeds 0 1 2

The seed draws PatchCore's coreset (its random start and projection) and PaDiM's channel subset;
the backbone features themselves do not depend on it. Each run is the same train -> finetune -> test
as a bench/run.py row, in a process of its own. Writes bench/results/seed_spread.{csv,md} (with
machine and versions) after every run: one row per run, then per variant and category the mean,
standard deviation and range of each figure over the seeds beside anomalib's single-run figure, with
where anomalib's figure falls: at or below our mean ("met"), inside our range ("in range") or above
every seed ("above"). The summary also goes into README.md between its seed-table markers. A rerun
skips runs already measured; `--rerun` measures them again.
"""
import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import processing.environment  # noqa: E402,F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)

import numpy as np  # noqa: E402

from bench.common import SHARED_DATA, categories, previous_rows, write_table  # noqa: E402
from bench.published import ANOMALIB  # noqa: E402
from bench.readme import METRICS, replace_between  # noqa: E402
from bench.run import README, VARIANTS, run_in_own_process  # noqa: E402
from processing import atomic  # noqa: E402
from processing.errors import CommandLineParser, UserError, cli_entry  # noqa: E402

OUT_STEM = ROOT / "bench" / "results" / "seed_spread"
WORKDIR = ROOT / "bench" / "out" / "seed_spread"
DEFAULT_VARIANTS = ("patchcore-lite0", "padim-lite0")
COLUMNS = ("method", "category", "seed", *METRICS, "train_s", "infer_img_s", "cpu")
START, END = "<!-- seed-table:start -->", "<!-- seed-table:end -->"
NOTE = ("One row per run (train.py --seed); threshold-free metrics on the full test set. cpu is the processor "
        "the row ran on (the Machine line above is the one that wrote the table); train_s and infer_img_s are "
        "only comparable between rows on the same cpu. The summary below gives mean ± standard deviation "
        "[lowest, highest] over the seeds.")


def parse_args(argv=None):
    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    memory_bank = [name for name, (method, _) in VARIANTS.items() if method in ANOMALIB]
    parser.add_argument("--data-root", default=str(SHARED_DATA))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=memory_bank)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(5)))
    parser.add_argument("--categories", nargs="+", default=None, help="dataset/category names (default: all)")
    parser.add_argument("--extra-args", default="", help="train.py flags appended to every selected variant's")
    parser.add_argument("--rerun", action="store_true", help="measure selected runs again, replacing old ones")
    parser.add_argument("--out", default=str(OUT_STEM), help="output stem: <out>.csv and <out>.md")
    parser.add_argument("--readme", default=str(README), help="the README whose seed-table markers get the summary")
    parser.add_argument("--workdir", default=str(WORKDIR), help="where the runs are written")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's model.keras (deleted once measured "
                                                                      "by default)")
    return parser.parse_args(argv)


def where_published_falls(values, published, decimals=3):
    """'met' when the published figure is at most our mean, 'in range' when it is no higher than our
    best seed, 'above' when it beats every seed; ours rounded as the published figures are (3 decimals),
    so that a mean of 0.9996 meets a published 1.000."""
    if published <= round(float(np.mean(values)), decimals):
        return "met"
    return "in range" if published <= round(max(values), decimals) else "above"


def summary(rows):
    """Per (variant, category): each figure's spread over the seeds and where anomalib's figure falls."""
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["category"]), []).append(row)
    out = []
    for (variant, category), runs in sorted(groups.items()):
        published = ANOMALIB[VARIANTS[variant][0]].get(category)
        entry = {"variant": variant, "category": category, "seeds": len(runs)}
        for i, metric in enumerate(METRICS):
            values = [run[metric] for run in runs]
            entry[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                             else 0.0, "low": min(values), "high": max(values),
                             "anomalib": published[i] if published else None,
                             "falls": where_published_falls(values, published[i]) if published else None}
        out.append(entry)
    return out


def summary_markdown(entries):
    lines = ["| variant | category | seeds | image AUROC | pixel AUROC | AUPRO@0.3 |", "|---|---|---|---|---|---|"]
    for entry in entries:
        cells = []
        for metric in METRICS:
            m = entry[metric]
            cell = f"{m['mean']:.3f} ± {m['std']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
            if m["anomalib"] is not None:
                cell += f"; anomalib {m['anomalib']:.3f}: {m['falls']}"
            cells.append(cell)
        lines.append(f"| {entry['variant']} | {entry['category']} | {entry['seeds']} | " + " | ".join(cells) + " |")
    counts = []
    for variant in dict.fromkeys(entry["variant"] for entry in entries):
        falls = [entry[m]["falls"] for entry in entries if entry["variant"] == variant for m in METRICS
                 if entry[m]["falls"]]
        if falls:
            tally = ", ".join(f"{falls.count(kind)} {kind}" for kind in ("met", "in range", "above"))
            counts.append(f"{variant} {tally} (of {len(falls)})")
    table = "\n".join(lines) + "\n"
    return table + f"\nanomalib's figures against our seed spread: {'; '.join(counts)}.\n" if counts else table


def write_all(rows, config):
    rows = sorted(rows, key=lambda row: (row["method"], row["category"], row["seed"]))
    table = summary_markdown(summary(rows))
    write_table(rows, config.out, "Benchmark: seed spread of the memory-bank methods", columns=COLUMNS, note=NOTE,
                appendix="\n## Spread over the seeds, beside anomalib\n\n" + table)
    readme = Path(config.readme)
    atomic.write_text(readme, replace_between(readme.read_text(), START, END, table, readme))


def run(config):
    names = categories(config.data_root, config.categories)
    if not names:
        raise UserError(f"no categories with train/good under {config.data_root}; pass --data-root")
    rows = previous_rows(config.out)
    for variant in config.variants:
        method, flags = VARIANTS[variant]
        for category in names:
            for seed in config.seeds:
                key = (variant, category, seed)
                done = [row for row in rows if (row["method"], row["category"], row["seed"]) == key]
                if done and not config.rerun:
                    continue
                print(f"== {variant} on {category}, seed {seed}", flush=True)
                row = run_in_own_process(method, category, config.data_root, Path(config.workdir) / variant,
                                         [*shlex.split(flags), *shlex.split(config.extra_args), "--seed", str(seed)],
                                         config.keep_models)
                rows = [r for r in rows if r not in done] + [{**row, "method": variant, "seed": seed}]
                write_all(rows, config)
    return rows


@cli_entry
def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
