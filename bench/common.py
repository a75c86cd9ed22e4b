"""Shared benchmark machinery: run train -> finetune -> test for one method on one category and
collect a row; write the table as CSV + markdown with the machine and versions.

Each run uses the same three library calls as the CLIs, in a scratch folder, so a benchmark
measures exactly what users run.
"""
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import processing.environment  # noqa: E402,F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)

SHARED_DATA = ROOT.parent / "shared" / "data"
COLUMNS = ("method", "category", "image_auroc", "pixel_auroc", "aupro", "image_f1_max", "eval_f1",
           "train_s", "train_img_s", "infer_img_s", "peak_mem_mb", "cpu")


def categories(data_root, selected=None):
    """`dataset/category` names under data_root that have train/good, smallest training set first
    (so an interrupted benchmark has covered as many categories as possible)."""
    folders = sorted(Path(data_root).glob("*/*/train/good"), key=lambda p: (len(list(p.iterdir())), str(p)))
    found = [str(p.parent.parent.relative_to(data_root)) for p in folders]
    return [c for c in found if not selected or c in selected]


@contextlib.contextmanager
def inside(workdir):
    """Run a block with `workdir` (created if missing) as the current folder, where the CLIs' library
    calls write saved_models/ and results/; the previous folder is restored afterwards."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(previous)


def train_timed(method, category, data_root, train_args=()):
    """train.py's library call for `method` on `category`; (the model path it returns, wall seconds).
    `data_root` must be absolute when the caller has changed folder (see `inside`)."""
    import train

    started = time.perf_counter()
    model_path = train.train(train.parse_args(["--data-root", str(data_root), "-d", category, "-a", method,
                                               *train_args]))
    return model_path, time.perf_counter() - started


def run_one(method, category, data_root, workdir, train_args=(), keep_model=True):
    """Train, finetune and test `method` on `category`; return one row of COLUMNS. Without `keep_model`
    the run's model.keras is deleted once measured: a 384 px PaDiM's is 640 MB, and the bench's runs
    (55 GB in bench/out, most of it such PaDiMs) filled the disk during a seed spread."""
    import finetune
    import test as test_cli

    data_root = Path(data_root).resolve()  # a relative root must survive the change of folder
    with inside(workdir):
        run_dir, train_seconds = train_timed(method, category, data_root, train_args)
        finetune.finetune(finetune.parse_args(["-p", str(run_dir)]))
        results_dir = test_cli.evaluate(test_cli.parse_args(["-p", str(run_dir)]))
        run_dir, results_dir = run_dir.resolve(), results_dir.resolve()
    row = row_from_run(method, category, run_dir, results_dir, train_seconds)
    if not keep_model:
        (run_dir / "model.keras").unlink()
    return row


def row_from_run(method, category, run_dir, results_dir, train_seconds):
    """One row of COLUMNS from a finished run folder and its test results folder."""
    from processing import runs

    run = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((results_dir / "metrics.json").read_text())
    full, evaluation = metrics["full_test_set"], metrics.get("evaluation_set", {})
    rates = run.get("train_images_per_second") or []
    return {
        "method": method, "category": category,
        "image_auroc": full.get("image_auroc"), "pixel_auroc": full.get("pixel_auroc"),
        "aupro": full.get("aupro_0.3"), "image_f1_max": full.get("image_f1_max"), "eval_f1": evaluation.get("f1"),
        "train_s": train_seconds, "train_img_s": max(rates) if rates else None,
        "infer_img_s": metrics["inference_images_per_second"],
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu": runs.cpu_model(),  # rows gathered over time on different machines keep their own
    }


def previous_rows(out_stem):
    """Rows of an earlier (possibly interrupted) run of the same benchmark, so a rerun resumes it."""
    import pandas as pd

    path = Path(out_stem).with_suffix(".csv")
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _cell(value):
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) and value <= 1.0 else (f"{value:.1f}" if isinstance(value, float) else str(value))


RUN_NOTE = ("Threshold-free metrics on the full test set; eval_f1 at the finetuned threshold on the evaluation "
            "split. peak_mem_mb is the peak resident memory of the row's own process (train + finetune + test; "
            "'-' for rows measured before rows had a process each). cpu is the processor the row ran on ('-' for rows "
            "measured before it was recorded); the Machine line above is the one that wrote the table.")


def write_table(rows, out_stem, title, appendix="", columns=COLUMNS, note=RUN_NOTE):
    """Print the table and write <out_stem>.csv and <out_stem>.md (title, machine, versions, date and `note`,
    the table, then `appendix`)."""
    import pandas as pd

    from processing import atomic, runs

    out_stem = Path(out_stem)
    frame = pd.DataFrame(rows, columns=list(columns))
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |\n" for row in rows)
    versions = runs.versions()
    preamble = (f"# {title}\n\nMachine: {versions.pop('machine')}. Versions: "
                + ", ".join(f"{k} {v}" for k, v in versions.items())
                + f". Date: {time.strftime('%Y-%m-%d')}. {note}\n\n")
    atomic.write_text(out_stem.with_suffix(".csv"), frame.to_csv(index=False))
    atomic.write_text(out_stem.with_suffix(".md"), preamble + header + body + appendix)
    print(header + body, flush=True)
