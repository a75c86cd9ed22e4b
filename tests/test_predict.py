"""predict.py: scoring a folder of new images with a finetuned model, bad files, tiling, user errors."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import finetune
import predict
import train
from processing import prediction, runs
from processing.errors import UserError
from processing.segmentation import segment
from processing.tiling import Tiling
from tests.tables import read_csv_rows
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def finetuned_run(small_synthetic, tmp_path_factory):
    """A patchcore model on the 64 px synthetic images, finetuned: trained once for the whole module."""
    workdir = tmp_path_factory.mktemp("predict_run")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        run_dir = workdir / train.main(["-d", str(small_synthetic), "-a", "patchcore", "--size", "64"])
        finetune.main(["-p", str(run_dir)])
    finally:
        os.chdir(previous)
    return run_dir


@pytest.fixture(scope="module")
def loaded(finetuned_run):
    run = runs.Run(finetuned_run / "model.keras")
    return run, run.load_model(), run.finetune()


@pytest.fixture
def inbox(small_synthetic, tmp_path):
    """Two good and two defective test images, a text file and a truncated PNG."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for kind in ("good", "scratch", "blob"):
        for source in sorted((small_synthetic / "test" / kind).glob("*.png"))[:2 if kind == "good" else 1]:
            shutil.copy(source, folder / f"{kind}_{source.name}")
    (folder / "notes.txt").write_text("not an image")
    whole = (folder / "good_000.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[:len(whole) // 2])
    return folder


def read_rows(folder):
    return {os.path.basename(row["path"]): row for row in read_csv_rows(folder / prediction.CSV_FILE)}


def test_a_folder_is_scored_and_bad_files_are_skipped(finetuned_run, loaded, inbox, tmp_path, capsys):
    out = predict.main([str(inbox), "-p", str(finetuned_run), "-o", str(tmp_path / "out"), "--overlays"])
    stdout = capsys.readouterr().out
    rows = read_rows(out)
    assert set(rows) == {"good_000.png", "good_001.png", "scratch_000.png", "blob_000.png", "notes.txt", "truncated.png"}
    assert "not an image file" in rows["notes.txt"]["error"] and rows["notes.txt"]["score"] == ""
    assert "cannot decode image" in rows["truncated.png"]["error"]
    assert sum(line.startswith("skipped ") for line in stdout.splitlines()) == 2
    assert "4 images scored" in stdout and "images/s" in stdout

    report = json.loads((out / prediction.JSON_FILE).read_text())
    assert report["summary"]["scored"] == 4 and report["summary"]["skipped"] == 2
    assert len(report["images"]) == 6 and report["threshold"] == loaded[2]["threshold"]
    run, model, tuned = loaded
    for record in report["images"]:
        if "error" in record:
            continue
        row = rows[os.path.basename(record["path"])]
        assert row["anomalous"] == ("yes" if record["anomalous"] else "no")
        assert json.loads(row["boxes"]) == [[r["x_min"], r["y_min"], r["x_max"], r["y_max"]] for r in record["regions"]]
        for region in record["regions"]:
            assert 0 <= region["x_min"] < region["x_max"] <= 64 and 0 <= region["y_min"] < region["y_max"] <= 64
        # The same image through the model and the segmentation test.py uses: same score, same area.
        image = prediction.read_image(inbox / os.path.basename(record["path"]), run.channels)
        maps, scores = model.maps_and_scores(image[None])
        masks, defective, _ = segment(maps, tuned["threshold"], tuned["min_area"])
        assert record["score"] == pytest.approx(float(scores[0]), rel=1e-5)
        assert record["defect_area_px"] == int(masks.sum()) and record["anomalous"] == bool(defective[0])
    assert len(list((out / "overlays").glob("*.png"))) == 4


def test_regions_are_reported_in_pixels_of_the_original_image():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 0:1] = True  # 2 x 1 pixels in the model's 4 px map
    regions = prediction.regions_in_original_pixels(mask, 8, 12)
    assert regions == [{"x_min": 0, "y_min": 2, "x_max": 3, "y_max": 6, "area": 12}]


def test_a_small_region_survives_when_the_original_image_is_smaller_than_the_map():
    mask = np.zeros((64, 64), bool)
    mask[10, 21] = True  # one map pixel; the 16 px original covers it with pixel (2, 5)
    mask[40:48, 0:64] = True  # a band: rows 10-11 of the original, its whole width
    regions = prediction.regions_in_original_pixels(mask, 16, 16)
    assert regions == [{"x_min": 5, "y_min": 2, "x_max": 6, "y_max": 3, "area": 1},
                       {"x_min": 0, "y_min": 10, "x_max": 16, "y_max": 12, "area": 32}]


def test_a_large_image_is_tiled_at_full_size(finetuned_run, loaded, small_synthetic, tmp_path):
    run, model, tuned = loaded
    tiles = [np.asarray(Image.open(path)) for path in sorted((small_synthetic / "test" / "good").glob("*.png"))[:4]]
    large = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)])  # 128 x 128
    Image.fromarray(large).save(tmp_path / "large.png")

    tiling = run.tiling_for(tile=64, overlap=16)
    image = prediction.read_image(tmp_path / "large.png", run.channels)
    result = prediction.Predictor(model, tuned["threshold"], tuned["min_area"], tiling).predict([image])[0]
    assert result.anomaly_map.shape == (128, 128)
    # Tiles start at 0, 48 and 64: the top-left 48 x 48 pixels lie in the first tile only.
    first_tile_map = model.anomaly_map(image[None, :64, :64])[0]
    np.testing.assert_allclose(result.anomaly_map[:48, :48], first_tile_map[:48, :48], rtol=1e-5)

    out = predict.main([str(tmp_path / "large.png"), "-p", str(finetuned_run), "-o", str(tmp_path / "out"),
                        "--tile", "64", "--overlap", "16", "--overlays"])
    row = read_rows(out)["large.png"]
    assert (row["width"], row["height"]) == ("128", "128") and row["error"] == ""
    overlay = np.asarray(Image.open(next((out / "overlays").glob("*.png"))))
    assert overlay.shape[:2] == (128, 2 * 128 + 4)


def test_user_errors_are_one_line_and_exit_2(finetuned_run, inbox, tmp_path, capsys):
    untuned = tmp_path / "untuned"
    untuned.mkdir()
    for name in ("model.keras", "run.json"):
        shutil.copy(finetuned_run / name, untuned / name)
    cases = [
        ([str(inbox), "-p", str(untuned)], "no finetune.json beside"),
        ([str(tmp_path / "nothing_*.png"), "-p", str(finetuned_run)], "no files matched"),
        ([str(tmp_path / "missing.png"), "-p", str(finetuned_run)], "no such file or folder"),
        ([str(inbox), "-p", str(finetuned_run), "--tile", "48"], "does not match the model, which takes 64 px tiles"),
    ]
    for argv, message in cases:
        code, err = run_cli(predict, argv + ["-o", str(tmp_path / "out")], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "out" / prediction.CSV_FILE).exists()

    out = predict.main([str(inbox / "good_000.png"), "-p", str(untuned), "--threshold", "1e9", "-o", str(tmp_path / "t")])
    assert read_rows(out)["good_000.png"]["anomalous"] == "no"


def test_overlap_without_a_tile_is_refused(loaded):
    run = loaded[0]
    assert run.tiling is None and run.tiling_for(tile=64) == Tiling(64, 16) and run.tiling_for(tile=0) is None
    with pytest.raises(UserError, match="--overlap needs --tile"):
        run.tiling_for(overlap=8)
