"""Bad input to every command: one clear 'error: ...' line on stderr, exit code 2, earlier files unharmed.

One tiny model (trained, finetuned and tested once for the module) is the 'earlier run' every case must
leave byte-identical. Images that are unusual but valid (16-bit, RGBA, palette, grey+alpha, TIFF,
mixed sizes) are not errors: they load, as the last tests check.
"""
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import analyze
import export
import finetune
import predict
import test as test_cli
import train
from processing import data

CAE = ["-a", "mvtecCAE", "--size", "64", "-b", "8", "-e", "1"]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, small_synthetic):
    """A finished run (model, finetune.json, metrics.json) and the bytes of its files."""
    workdir = tmp_path_factory.mktemp("bad_inputs")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        run_dir = train.main(["-d", str(small_synthetic), *CAE]).resolve()
        finetune.main(["-t", "uint8", "--n-thresholds", "20", "--n-min-areas", "5"])
        results = test_cli.main([]).resolve()
    finally:
        os.chdir(previous)
    files = [run_dir / name for name in ("model.keras", "run.json", "finetune.json")] + [results / "metrics.json"]
    return workdir, run_dir, {path: path.read_bytes() for path in files}


@pytest.fixture
def run_dir(earlier_run, monkeypatch):
    workdir, run_dir, snapshot = earlier_run
    monkeypatch.chdir(workdir)
    yield run_dir
    for path, content in snapshot.items():
        assert path.read_bytes() == content, f"{path} changed"


def fails(module, argv, capsys, *expected):
    """Run a CLI in-process; assert exit 2 and one 'error: ...' line containing every expected fragment."""
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in expected:
        assert fragment in lines[0], err
    return lines[0]


@pytest.fixture
def dataset_copy(tmp_path, small_synthetic):
    """A copy of the small synthetic dataset, to damage."""
    return Path(shutil.copytree(small_synthetic, tmp_path / "copy"))


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A copy of the earlier run's folder, to damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _as_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------- train.py: data

def test_missing_dataset(run_dir, capsys):
    fails(train, ["-d", "no/such/folder"], capsys, "dataset folder not found")


def test_folder_without_train_good(run_dir, tmp_path, capsys):
    fails(train, ["-d", str(tmp_path)], capsys, "has no train/good folder")


def test_empty_train_folder(run_dir, tmp_path, capsys):
    (tmp_path / "train" / "good").mkdir(parents=True)
    fails(train, ["-d", str(tmp_path)], capsys, "holds no images")


def test_only_non_image_files(run_dir, tmp_path, capsys):
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "train" / "good" / "notes.txt").write_text("not an image")
    fails(train, ["-d", str(tmp_path)], capsys, "holds no images")


def test_text_file_named_png(run_dir, dataset_copy, capsys):
    (dataset_copy / "train" / "good" / "000.png").write_text("not an image")
    fails(train, ["-d", str(dataset_copy), *CAE], capsys, "cannot decode image", "000.png")


def test_truncated_png(run_dir, dataset_copy, capsys):
    path = dataset_copy / "train" / "good" / "001.png"
    path.write_bytes(path.read_bytes()[:200])
    fails(train, ["-d", str(dataset_copy), *CAE], capsys, "cannot decode image", "001.png")


def test_truncated_test_image(run_dir, dataset_copy, capsys):
    path = sorted((dataset_copy / "test" / "good").iterdir())[0]
    path.write_bytes(path.read_bytes()[:100])
    fails(train, ["-d", str(dataset_copy), *CAE], capsys, "cannot decode image", path.name)


@pytest.mark.skipif(_as_root(), reason="root reads folders whatever their permissions")
def test_unreadable_train_folder(run_dir, dataset_copy, capsys):
    folder = dataset_copy / "train" / "good"
    folder.chmod(0)
    try:
        fails(train, ["-d", str(dataset_copy), *CAE], capsys, "cannot read", "readable")
    finally:
        folder.chmod(0o755)


def _first_mask(dataset):
    return sorted((dataset / "ground_truth").rglob("*_mask.png"))[0]


def test_mask_missing(run_dir, dataset_copy, capsys):
    mask = _first_mask(dataset_copy)
    mask.unlink()
    fails(train, ["-d", str(dataset_copy), *CAE], capsys, "mask missing", mask.name)


def test_mask_of_another_size(run_dir, dataset_copy, capsys):
    mask = _first_mask(dataset_copy)
    Image.new("L", (32, 48)).save(mask)
    fails(train, ["-d", str(dataset_copy), *CAE], capsys, "masks must match their images", "32x48")


def test_truncated_mask(run_dir, dataset_copy, capsys):
    mask = _first_mask(dataset_copy)
    mask.write_bytes(mask.read_bytes()[:60])
    fails(train, ["-d", str(dataset_copy), *CAE], capsys, "cannot decode image", mask.name)


# ---------------------------------------------------------------- train.py: flags

@pytest.mark.parametrize("flags, expected", [
    (["-a", "nosuch"], "unknown method 'nosuch'"),
    (["-b", "0"], "--batch-size must be at least 1"),
    (["-e", "0"], "--epochs must be at least 1"),
    (["-b", "many"], "invalid int value: 'many'"),
    (["--validation-fraction", "1.5"], "--validation-fraction must be in [0, 1)"),
    (["--finetune-fraction", "-0.1"], "--finetune-fraction must be in [0, 1)"),
    (["-c", "cmyk"], "invalid choice: 'cmyk'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--distribute", "everywhere"], "invalid choice: 'everywhere'"),
])
def test_bad_train_flags(run_dir, small_synthetic, capsys, flags, expected):
    fails(train, ["-d", str(small_synthetic), *flags], capsys, expected)


def test_size_the_architecture_cannot_take(run_dir, small_synthetic, capsys):
    fails(train, ["-d", str(small_synthetic), "-a", "mvtecCAE", "--size", "50"], capsys, "divisible by")


def test_resume_with_nothing_to_resume(run_dir, small_synthetic, capsys):
    fails(train, ["-d", str(small_synthetic), *CAE, "--resume"], capsys, "nothing to resume")


def test_resume_for_a_method_without_epochs(run_dir, small_synthetic, capsys):
    fails(train, ["-d", str(small_synthetic), "-a", "patchcore", "--size", "64", "--resume"], capsys,
          "has no training epochs")


def test_malformed_tf_config(run_dir, small_synthetic, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    fails(train, ["-d", str(small_synthetic), *CAE, "--distribute", "multiworker"], capsys, "TF_CONFIG must be JSON")


def test_out_of_memory_suggests_a_smaller_batch(run_dir, small_synthetic, capsys, monkeypatch):
    import tensorflow as tf

    from autoencoder.model import AutoencoderDetector

    def out_of_memory(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(AutoencoderDetector, "fit", out_of_memory)
    fails(train, ["-d", str(small_synthetic), *CAE], capsys, "out of memory with batch size 8", "-b 4")


# ---------------------------------------------------------------- finetune.py / test.py: run files

def test_model_path_that_does_not_exist(run_dir, capsys):
    fails(finetune, ["-p", "nowhere/model.keras"], capsys, "model file not found")


def test_corrupt_model_file(run_dir, run_copy, capsys):
    (run_copy / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    fails(test_cli, ["-p", str(run_copy)], capsys, "cannot load")


def test_run_json_missing(run_dir, run_copy, capsys):
    (run_copy / "run.json").unlink()
    fails(finetune, ["-p", str(run_copy)], capsys, "run file", "not found")


def test_run_json_not_json(run_dir, run_copy, capsys):
    (run_copy / "run.json").write_text("{truncated")
    fails(test_cli, ["-p", str(run_copy)], capsys, "not valid JSON")


def _edit_run_json(run_copy, **changes):
    info = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**info, **changes}))


def test_model_written_by_a_newer_version(run_dir, run_copy, capsys):
    _edit_run_json(run_copy, format_version=99)
    fails(finetune, ["-p", str(run_copy)], capsys, "newer version", "format 99")


def test_model_from_another_method(run_dir, run_copy, capsys):
    _edit_run_json(run_copy, method="patchcore")
    fails(finetune, ["-p", str(run_copy)], capsys, "holds a mvtecCAE model but its run.json says patchcore")


def test_dataset_of_the_model_is_gone(run_dir, run_copy, capsys):
    info = json.loads((run_copy / "run.json").read_text())
    _edit_run_json(run_copy, dataset={**info["dataset"], "root": "/no/such/dataset"})
    fails(test_cli, ["-p", str(run_copy)], capsys, "is gone")


def test_finetune_json_of_another_model(run_dir, run_copy, capsys):
    tuned = json.loads((run_copy / "finetune.json").read_text())
    (run_copy / "finetune.json").write_text(json.dumps({**tuned, "model_run": "another"}))
    fails(test_cli, ["-p", str(run_copy)], capsys, "written for another model")


def test_finetune_json_not_json(run_dir, run_copy, capsys):
    (run_copy / "finetune.json").write_text("")
    fails(test_cli, ["-p", str(run_copy)], capsys, "not valid JSON")


def test_residual_option_unknown(run_dir, capsys):
    fails(finetune, ["-m", "l3"], capsys, "invalid choice: 'l3'")


def test_results_folder_cannot_be_created(run_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh results/ here, but it is a file, so no run folder fits in it
    Path("results").write_text("")
    fails(test_cli, ["-p", str(run_dir)], capsys, "cannot create")


def test_full_disk_while_writing_results(run_dir, capsys, monkeypatch):
    """ENOSPC on the rename that publishes a file (works as root too, unlike a read-only folder)."""
    from processing import atomic

    def no_space(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "replace", no_space)
    fails(finetune, ["-p", str(run_dir)], capsys, "No space left on device", "earlier files were kept")


# ---------------------------------------------------------------- predict.py / export.py / analyze.py

def test_predict_on_nothing(run_dir, capsys):
    fails(predict, ["-p", str(run_dir), "no/such/images"], capsys, "no such file or folder")


def test_predict_bad_batch(run_dir, tmp_path, capsys):
    fails(predict, ["-p", str(run_dir), "-b", "0", str(tmp_path)], capsys, "--batch-size must be at least 1")


def test_export_unknown_format(run_dir, capsys):
    fails(export, ["-p", str(run_dir), "--format", "pickle"], capsys, "invalid choice: 'pickle'")


def test_analyze_missing_dataset(run_dir, capsys):
    fails(analyze, ["-d", "no/such/folder"], capsys, "not found")


# ---------------------------------------------------------------- unusual images that must load

def _save_variants(folder, rgb):
    """The same picture as 8-bit RGB, RGBA, grey+alpha, 16-bit grey, palette and TIFF files."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("LA").save(folder / "grey_alpha.png")
    grey16 = (np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(rgb).save(folder / "rgb.tif")
    Image.fromarray(grey16).save(folder / "grey16.tif")


def test_16bit_rgba_palette_and_tiff_images_load_as_their_colours(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    _save_variants(tmp_path / "train" / "good", rgb)
    dataset = data.scan_dataset(tmp_path)
    data.check_images(dataset, dataset.train)
    images, _ = data.load_arrays(dataset, dataset.train, 24, 3)
    grey, _ = data.load_arrays(dataset, dataset.train, 24, 1)
    by_name = {Path(s.path).name: i for i, s in enumerate(dataset.train)}
    for name in ("rgba.png", "rgb.tif"):
        np.testing.assert_allclose(images[by_name[name]], rgb / 255, atol=1e-6)
    palette = np.asarray(Image.open(tmp_path / "train/good/palette.png").convert("RGB")) / 255
    np.testing.assert_allclose(images[by_name["palette.png"]], palette, atol=1e-6)  # the palette's colours
    luminance = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255
    for name in ("grey16.png", "grey16.tif", "grey_alpha.png"):
        np.testing.assert_allclose(grey[by_name[name], ..., 0], luminance, atol=1e-6)  # 16-bit scaled by 65535
        np.testing.assert_allclose(images[by_name[name]], np.repeat(luminance[..., None], 3, -1), atol=1e-6)


def test_train_on_mixed_formats_and_sizes(run_dir, tmp_path, small_synthetic, capsys):
    """Unusual formats and sizes in one dataset: train resizes them all and finishes."""
    rgb = np.asarray(Image.open(next((small_synthetic / "train" / "good").iterdir())).convert("RGB"))
    dataset = Path(shutil.copytree(small_synthetic, tmp_path / "mixed"))
    _save_variants(dataset / "train" / "good", rgb)
    Image.fromarray(rgb).resize((80, 96)).save(dataset / "train" / "good" / "larger.png")
    new_run = train.main(["-d", str(dataset), *CAE])
    assert len(json.loads((new_run / "run.json").read_text())["splits"]["train"]) + \
        len(json.loads((new_run / "run.json").read_text())["splits"]["validation"]) == 48
    assert capsys.readouterr().err == ""
