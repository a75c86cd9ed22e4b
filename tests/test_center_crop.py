"""--center-crop: images and masks keep their central part, in training, finetuning, testing and prediction."""
import json

import numpy as np
import pytest
from PIL import Image

import finetune
import predict
import test as test_cli
import train
from processing import data, export, prediction, runs
from processing.errors import UserError
from tests.tables import read_csv_rows
from tests.test_cli import run_cli


def test_center_crop_keeps_the_middle_of_images_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:14, 20:26] = 255
    (tmp_path / "train/good").mkdir(parents=True)
    (tmp_path / "ground_truth/crack").mkdir(parents=True)
    (tmp_path / "test/crack").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "train/good/000.png")
    Image.fromarray(image).save(tmp_path / "test/crack/000.png")
    Image.fromarray(mask).save(tmp_path / "ground_truth/crack/000_mask.png")
    dataset = data.scan_dataset(tmp_path)

    crop = data.CenterCrop.keeping(0.5, 16)  # resize to 32 (no change), keep rows and columns 8..23
    assert crop == data.CenterCrop((32, 32), (16, 16)) and data.pixel_shape(crop) == (16, 16)
    images, masks = data.load_arrays(dataset, dataset.test, crop, 3)
    np.testing.assert_allclose(images[0], image[8:24, 8:24] / 255, atol=1e-6)
    expected = np.zeros((16, 16), bool)
    expected[2:6, 12:16] = True  # columns 20..23 of 20..25 remain
    np.testing.assert_array_equal(masks[0], expected)


def test_center_crop_box_in_original_pixels_and_bad_fraction():
    crop = data.CenterCrop.keeping(0.875, 224)
    assert crop.resize == (256, 256) and crop.offset == (16, 16)
    assert crop.box(512, 1024) == (32, 64, 480, 960)  # the same 1/16 border in the original's pixels
    for fraction in (0, -0.5, 1.5):
        with pytest.raises(UserError, match="--center-crop must be in"):
            data.CenterCrop.keeping(fraction, 224)


def test_regions_of_a_cropped_map_are_offset_into_the_original_image():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    # The map covers rows 2..9 and columns 4..11 of a 12 x 16 image: its pixel (0, 0) is 2 x 2 there.
    assert prediction.regions_in_original_pixels(mask, 12, 16, seen_box=(2, 4, 10, 12)) == [
        {"x_min": 4, "y_min": 2, "x_max": 6, "y_max": 4, "area": 4}]


@pytest.fixture(scope="module")
def cropped_run(small_synthetic, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("center_crop")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        run_dir = train.main(["-d", str(small_synthetic), "-a", "padim", "--center-crop", "0.75"])
        finetune.main(["-p", str(run_dir)])
        results_dir = test_cli.main(["-p", str(run_dir), "--save"])
    return workdir / run_dir, workdir / results_dir


def test_a_center_cropped_run_trains_finetunes_and_tests_on_the_crop(cropped_run, small_synthetic):
    run_dir, results_dir = cropped_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["input_size"] == 48 and info["config"]["center_crop"] == 0.75  # 0.75 of the 64 px images
    run = runs.Run(run_dir / "model.keras")
    assert run.working_size(None) == data.CenterCrop((64, 64), (48, 48))
    metrics = json.loads((results_dir / "metrics.json").read_text())
    assert metrics["full_test_set"]["image_auroc"] > 0.7
    overlay = np.asarray(Image.open(next((results_dir / "segmentation").glob("*.png"))))
    assert overlay.shape[0] == 48  # images, maps and masks at the crop's size

    model = run.load_model()
    images, masks = data.load_arrays(run.dataset, run.evaluation_samples, run.working_size(None), run.channels)
    whole, _ = data.load_arrays(run.dataset, run.evaluation_samples, 64, run.channels)
    np.testing.assert_allclose(images, whole[:, 8:56, 8:56], atol=1e-6)
    assert masks.shape[1:] == (48, 48)
    assert model.anomaly_map(images[:2]).shape == (2, 48, 48)


def test_predict_applies_the_runs_crop_and_reports_boxes_inside_it(cropped_run, small_synthetic, tmp_path):
    run_dir, _ = cropped_run
    source = sorted((small_synthetic / "test" / "scratch").glob("*.png"))[0]
    large = np.asarray(Image.open(source).resize((128, 128), Image.BILINEAR))
    Image.fromarray(large).save(tmp_path / "large.png")
    out = predict.main([str(tmp_path / "large.png"), "-p", str(run_dir), "-o", str(tmp_path / "out")])
    header = json.loads((out / prediction.JSON_FILE).read_text())
    assert header["center_crop"] == 0.75
    row = read_csv_rows(out / prediction.CSV_FILE)[0]
    boxes = json.loads(row["boxes"])
    assert boxes, "the scratch should be found"
    for x_min, y_min, x_max, y_max in boxes:  # the 128 px image's central 96 px: 16..112
        assert 16 <= x_min < x_max <= 112 and 16 <= y_min < y_max <= 112


def test_export_metadata_tells_the_caller_to_crop(cropped_run):
    run_dir, _ = cropped_run
    run = runs.Run(run_dir / "model.keras")
    info = export.metadata(run, run.load_model(), run.finetune(), "savedmodel")
    assert "resizes images to 64x64" in info["input"]["preprocessing"]
    assert "keeps the central 48x48" in info["input"]["preprocessing"]


def test_center_crop_with_tiles_is_refused(small_synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(train, ["-d", str(small_synthetic), "-a", "padim", "--center-crop", "0.5", "--tile", "32"],
                        capsys)
    assert code == 2 and "--center-crop and --tile exclude each other" in err
    code, err = run_cli(train, ["-d", str(small_synthetic), "-a", "padim", "--center-crop", "1.5"], capsys)
    assert code == 2 and "--center-crop must be in (0, 1]" in err
