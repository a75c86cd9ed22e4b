"""The three commands end to end, as a user runs them, on small data."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import finetune
import test as test_cli
import train
from processing.environment import LOADING_NOTICES, without_loading_notices


def run_cli(module, argv, capsys):
    """Run a CLI in-process; return (exit code, stderr)."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train(dataset, *extra):
    return train.main(["-d", str(dataset), "-a", "mvtecCAE", "--size", "64", "-e", "2", "-b", "8", *extra])


def test_train_finetune_test_end_to_end(workdir, small_synthetic):
    run_dir = _train(small_synthetic, "-i")
    assert (workdir / "saved_models/latest").resolve() == run_dir.resolve()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["method"] == "mvtecCAE" and run["seed"] == 0 and len(run["history"]["loss"]) == 2
    assert {"train", "validation", "finetune", "evaluation"} <= set(run["splits"])
    finetune_paths = {s["path"] for s in run["splits"]["finetune"]}
    assert not finetune_paths & {s["path"] for s in run["splits"]["evaluation"]}
    assert (run_dir / "inspect_validation.png").is_file() and (run_dir / "training_curves.png").is_file()

    tuned_path = finetune.main(["-t", "uint8"])
    tuned = json.loads(tuned_path.read_text())
    assert tuned["model_run"] == run["run_id"] and tuned["min_area"] >= 1
    assert (run_dir / "finetune_search.png").is_file()

    results = test_cli.main(["--save"])
    metrics = json.loads((results / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro_0.3", "image_f1_max"):
        assert 0 <= metrics["full_test_set"][key] <= 1
    rows = list(csv.DictReader((results / "per_image.csv").open()))
    evaluation = [r for r in rows if r["split"] == "evaluation"]
    assert len(rows) == 30 and metrics["n_evaluation_images"] == len(evaluation)
    matrix = np.array(metrics["evaluation_set"]["confusion_matrix"])
    assert matrix.sum() == len(evaluation)  # threshold metrics use evaluation images only
    predicted_defective = sum(int(r["prediction"]) for r in evaluation)
    assert matrix[:, 1].sum() == predicted_defective
    assert len(list((results / "segmentation").glob("*.png"))) == len(rows)
    assert (results / "roc_curve.png").is_file() and (results / "score_histogram.png").is_file()


def test_training_is_reproducible_with_seed(workdir, small_synthetic):
    first = json.loads((_train(small_synthetic, "--seed", "5") / "run.json").read_text())
    second = json.loads((_train(small_synthetic, "--seed", "5") / "run.json").read_text())
    assert first["history"] == second["history"] and first["splits"] == second["splits"]


def test_unknown_method_lists_valid_names(workdir, small_synthetic, capsys):
    code, err = run_cli(train, ["-d", str(small_synthetic), "-a", "nosuch"], capsys)
    assert code == 2 and "unknown method 'nosuch'" in err and "mvtecCAE" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_dataset_is_one_clear_line(workdir, capsys):
    code, err = run_cli(train, ["-d", "does/not/exist"], capsys)
    assert code == 2 and err.startswith("error: dataset folder not found") and len(err.strip().splitlines()) == 1


def test_finetune_without_a_model_says_train_first(workdir, capsys):
    code, err = run_cli(finetune, [], capsys)
    assert code == 2 and "run train.py first" in err


def test_corrupt_model_file_is_a_clear_error_and_keeps_earlier_results(workdir, small_synthetic, capsys):
    run_dir = _train(small_synthetic, "-e", "1")
    finetune.main([])
    before = (run_dir / "finetune.json").read_bytes()
    (run_dir / "model.keras").write_bytes(b"not a zip file")
    code, err = run_cli(finetune, [], capsys)
    assert code == 2 and "cannot load" in err and "Traceback" not in err
    assert (run_dir / "finetune.json").read_bytes() == before


def test_finetune_json_from_another_model_is_refused(workdir, small_synthetic, capsys):
    first = _train(small_synthetic, "-e", "1")
    finetune.main([])
    second = _train(small_synthetic, "-e", "1")
    (second / "finetune.json").write_bytes((first / "finetune.json").read_bytes())
    code, err = run_cli(test_cli, ["-p", str(second)], capsys)
    assert code == 2 and "written for another model" in err


def test_residual_option_is_recorded_and_reused(workdir, small_synthetic):
    run_dir = _train(small_synthetic, "-e", "1", "-l", "ssim")
    tuned = json.loads(finetune.main(["-p", str(run_dir / "model.keras"), "-m", "l2"]).read_text())
    assert tuned["map_options"] == {"residual": "l2"}


def test_real_category_smoke(workdir, shared_data):
    """mvtec_ad/bottle from ../shared/data through all three commands (grayscale, small size, one epoch)."""
    run_dir = train.main(["--data-root", str(shared_data), "-d", "mvtec_ad/bottle", "-a", "resnetCAE", "-l", "l2",
                          "-c", "grayscale", "--size", "64", "-e", "1", "-b", "16"])
    assert json.loads((run_dir / "run.json").read_text())["dataset"]["name"] == "mvtec_ad/bottle"
    finetune.main([])
    metrics = json.loads((test_cli.main([]) / "metrics.json").read_text())
    assert metrics["n_test_images"] == 83 and 0 <= metrics["full_test_set"]["aupro_0.3"] <= 1


def test_model_path_that_does_not_exist_or_is_not_ours(workdir, capsys):
    code, err = run_cli(test_cli, ["-p", "nowhere/model.keras"], capsys)
    assert code == 2 and "model file not found: nowhere/model.keras" in err
    stray = workdir / "stray" / "model.keras"
    stray.parent.mkdir()
    stray.write_bytes(b"PK")
    code, err = run_cli(finetune, ["-p", str(stray)], capsys)
    assert code == 2 and "run file" in err and "not found" in err


def test_empty_train_folder_via_cli(workdir, capsys):
    (workdir / "part/train/good").mkdir(parents=True)
    code, err = run_cli(train, ["-d", str(workdir / "part")], capsys)
    assert code == 2 and "holds no images" in err
    assert not (workdir / "saved_models").exists()


def test_synthetic_run_beats_chance_by_a_margin(workdir):
    """The README's main job with a CAE: the built-in dataset, train -> finetune -> test."""
    run_dir = train.main(["-a", "mvtecCAE", "-l", "l2", "-e", "15", "--patience", "15"])
    finetune.main(["-p", str(run_dir)])
    metrics = json.loads((test_cli.main(["-p", str(run_dir)]) / "metrics.json").read_text())
    assert metrics["full_test_set"]["image_auroc"] > 0.8
    assert metrics["full_test_set"]["pixel_auroc"] > 0.85


def test_residual_option_is_an_error_for_other_methods(workdir, small_synthetic, capsys):
    run_dir = train.main(["-d", str(small_synthetic), "-a", "patchcore", "--size", "64"])
    code, err = run_cli(finetune, ["-p", str(run_dir), "-m", "l2"], capsys)
    assert code == 2 and "apply to autoencoders only" in err and not (run_dir / "finetune.json").exists()


@pytest.mark.parametrize("script", ["train", "finetune", "test", "predict", "export", "analyze"])
def test_each_command_sets_up_numpy_and_tensorflow_before_they_load(script):
    # numpy reads NUMPY_MADVISE_HUGEPAGE once, on import: the command must set it before anything imports numpy.
    # TensorFlow (loaded by every command) prints its loading notices to the stderr file descriptor: none may
    # reach the user.
    code = f"import sys, {script}, numpy; print(numpy._core.multiarray._get_madvise_hugepage(), 'tensorflow' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMPY_MADVISE_HUGEPAGE", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, env=env,
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False True"
    assert not any(notice in result.stderr for notice in LOADING_NOTICES), result.stderr


def test_only_tensorflows_loading_notices_are_held_back():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:17.1 20 port.cc:153] oneDNN custom operations are on. You may see slightly different\n"
            "W0000 real warning from a kernel\n"
            "Traceback: something broke")
    assert without_loading_notices(text) == "W0000 real warning from a kernel\nTraceback: something broke"
