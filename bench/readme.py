"""Regenerate README.md's results tables from the benchmark rows (each between its markers).

The results table: one row per method variant, one column per category, cells "image AUROC / pixel
AUROC / AUPRO", plus the median inference speed. The anomalib table: per category, anomalib's
PatchCore and PaDiM figures beside ours. The rest of the README is left untouched; the file is
replaced atomically.
"""
from pathlib import Path

import numpy as np

from bench.published import ANOMALIB
from processing import atomic, runs

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
ANOMALIB_START, ANOMALIB_END = "<!-- anomalib-table:start -->", "<!-- anomalib-table:end -->"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
# Our variants shown beside anomalib's figures: on anomalib's 224 px centre crop, then on whole images
# (PatchCore also with the image-score bank, the configuration that meets the speed target most accurately;
# PaDiM also on the stride-4 grid, the one closest to anomalib's localisation, on that grid at 384 px,
# with 30 channels of the stride-32 stage 6 added there, and that beside a principal-axes member and a
# member without stage 6).
BESIDE_ANOMALIB = {"patchcore": ("patchcore-lite0-crop", "patchcore-lite0", "patchcore-lite0-score-st245",
                                 "patchcore-lite0-st124-k3"),
                   "padim": ("padim-lite0-crop", "padim-lite0", "padim-lite0-st124", "padim-lite0-st124-s384",
                             "padim-lite0-st124-deep6x30-s384", "padim-lite0-st124-deep6x30-s384-pca-subset-subset0")}


def _metrics(row):
    return tuple(row.get(k) for k in METRICS)


def _cell(row):
    return "-" if row is None else _figures(_metrics(row))


def _figures(values):
    """'image / pixel / AUPRO' with three decimals, '-' for a missing value; '-' alone for no values."""
    return "-" if values is None else " / ".join("-" if v is None else f"{v:.3f}" for v in values)


def results_markdown(rows):
    methods = list(dict.fromkeys(row["method"] for row in rows))
    categories = sorted({row["category"] for row in rows})
    by_key = {(row["method"], row["category"]): row for row in rows}
    lines = ["| method | " + " | ".join(categories) + " | mean image AUROC | inference img/s (median) |",
             "|---" * (len(categories) + 3) + "|"]
    for method in methods:
        measured = [by_key[(method, c)] for c in categories if (method, c) in by_key]
        aurocs = [r["image_auroc"] for r in measured if r.get("image_auroc") is not None]
        rates = [r["infer_img_s"] for r in measured if r.get("infer_img_s") is not None]
        mean = f"{np.mean(aurocs):.3f} ({len(aurocs)}/{len(categories)})" if aurocs else "-"
        rate = f"{np.median(rates):.1f}" if rates else "-"
        lines.append(f"| {method} | " + " | ".join(_cell(by_key.get((method, c))) for c in categories)
                     + f" | {mean} | {rate} |")
    versions = runs.versions()
    machine = versions.pop("machine")
    stack = ", ".join(f"{name} {version}" for name, version in versions.items())
    return ("Image AUROC / pixel AUROC / AUPRO@0.3 on the full test sets; table written by `python3 bench/run.py` "
            f"on {machine} with {stack}; rows measured over several sessions, each row's processor in the "
            "full table's cpu column (`bench/results/results.md`; chart: `bench/results/results.png`).\n\n"
            + "\n".join(lines) + "\n")


def anomalib_markdown(rows):
    """Per category: anomalib's PatchCore and PaDiM figures, each followed by our Lite0 variants
    (BESIDE_ANOMALIB), then the means over the categories all of them have."""
    columns = []  # (header, {category: (image AUROC, pixel AUROC, AUPRO)})
    for method, ours in BESIDE_ANOMALIB.items():
        columns.append((f"anomalib {method}", ANOMALIB[method]))
        for variant in ours:
            columns.append((variant, {row["category"]: _metrics(row) for row in rows if row["method"] == variant}))
    categories = sorted(ANOMALIB["patchcore"])
    lines = ["| category | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for category in categories:
        lines.append(f"| {category} | " + " | ".join(_figures(figures.get(category)) for _, figures in columns) + " |")
    complete = [c for c in categories if all(None not in figures.get(c, (None,)) for _, figures in columns)]
    means = [tuple(np.mean([figures[c][i] for c in complete]) for i in range(3)) if complete else None
             for _, figures in columns]
    lines.append(f"| mean of {len(complete)} | " + " | ".join(_figures(m) for m in means) + " |")
    return "\n".join(lines) + "\n"


def update_readme(readme, rows):
    readme = Path(readme)
    text = readme.read_text()
    text = replace_between(text, START, END, results_markdown(rows), readme)
    text = replace_between(text, ANOMALIB_START, ANOMALIB_END, anomalib_markdown(rows), readme)
    atomic.write_text(readme, text)


def replace_between(text, start, end, body, readme):
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the {start} / {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"
