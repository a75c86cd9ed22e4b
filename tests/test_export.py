"""export.py / processing/export.py: each exported file, run in its own runtime (TensorFlow, the TFLite
interpreter, onnxruntime), gives the Keras model's maps and scores; metadata.json carries the finetuned
threshold; models without a graph path or without finetune.json are handled as documented.

Tiny models on the 64 px synthetic set: mvtecCAE trained 1 epoch, PatchCore calibrated (no training),
also with its image-score bank (--score-strides), and PaDiM with two members, a projection and a channel
subset (--padim-embedding orthogonal subset).
"""
import json
import shutil

import numpy as np
import pytest
from keras import ops
from scipy import ndimage

import export as export_cli
import finetune
import train
from processing import data, export, runs
from processing.anomaly_model import AnomalyModel
from processing.errors import UserError

SIZE = 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("export")
        patch.chdir(folder)
        yield folder


# label -> (-a method, train.py flags)
TRAINED = {"mvtecCAE": ("mvtecCAE", ["-e", "1"]), "patchcore": ("patchcore", []),
           "patchcore-score-bank": ("patchcore", ["--score-strides", "8", "16", "32"]),
           "padim-members": ("padim", ["--padim-features", "20", "--padim-embedding", "orthogonal", "subset"])}


@pytest.fixture(scope="module")
def runs_by_method(workdir, small_synthetic):
    """label of TRAINED -> a trained and finetuned runs.Run."""
    trained = {}
    for label, (method, extra) in TRAINED.items():
        run_dir = train.main(["-d", str(small_synthetic), "-a", method, "--size", str(SIZE), "-b", "8", *extra])
        finetune.main(["-p", str(run_dir)])
        trained[label] = runs.Run(run_dir / runs.MODEL_FILE)
    return trained


@pytest.fixture(scope="module")
def raw_images(runs_by_method):
    """Three test images as the uint8 arrays a camera would give (batch size 3: not the traced one)."""
    run = runs_by_method["patchcore"]
    images, _ = data.load_arrays(run.dataset, run.evaluation_samples[:3], SIZE, 3)
    return np.round(images * 255).astype(np.uint8)


def keras_maps_and_scores(run, raw):
    model = run.load_model()
    model.configure_maps(**run.finetune()["map_options"])
    return model.anomaly_map(raw / np.float32(255)), model.score(raw / np.float32(255))


def run_savedmodel(folder, raw):
    import tensorflow as tf

    outputs = tf.saved_model.load(str(folder)).signatures["serving_default"](images=tf.constant(raw))
    return outputs["anomaly_map"].numpy(), outputs["score"].numpy()


def run_tflite(folder, raw):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(folder / "model.tflite"))
    outputs = interpreter.get_signature_runner("serving_default")(images=raw)
    return outputs["anomaly_map"], outputs["score"]


def run_onnx(folder, raw):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return tuple(session.run(["anomaly_map", "score"], {"images": raw}))


RUNTIMES = {"savedmodel": run_savedmodel, "tflite": run_tflite, "onnx": run_onnx}


@pytest.mark.parametrize("format_name", export.FORMATS)
@pytest.mark.parametrize("label", list(TRAINED))
def test_exported_model_gives_the_keras_maps_and_scores(runs_by_method, raw_images, label, format_name):
    run = runs_by_method[label]
    folder = export_cli.main(["-p", str(run.model_path), "--format", format_name])
    assert folder == run.folder / "export" / format_name

    maps, scores = RUNTIMES[format_name](folder, raw_images)
    expected_maps, expected_scores = keras_maps_and_scores(run, raw_images)
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,)
    np.testing.assert_allclose(maps, expected_maps, atol=TOLERANCE)
    # Scores are distances of about 20 for the 472-d image-score features: float32 rounding scales with them.
    np.testing.assert_allclose(scores, expected_scores, rtol=TOLERANCE, atol=TOLERANCE)

    metadata = json.loads((folder / export.METADATA_FILE).read_text())
    tuned = run.finetune()
    assert (folder / metadata["file"]).is_file()
    assert (metadata["threshold"], metadata["min_area"], metadata["map_options"]) == \
        (tuned["threshold"], tuned["min_area"], tuned["map_options"])
    assert (metadata["method"], metadata["input_size"], metadata["channels"]) == (TRAINED[label][0], SIZE, 3)
    assert metadata["source_run_id"] == run.info["run_id"] == tuned["model_run"]
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")]  # no leftovers


def test_a_model_without_finetune_json_exports_with_threshold_null(runs_by_method, workdir, capsys):
    source = runs_by_method["mvtecCAE"].folder
    untuned = workdir / "untuned"
    untuned.mkdir()
    for name in (runs.MODEL_FILE, runs.RUN_FILE):
        shutil.copy(source / name, untuned / name)
    out = workdir / "deploy"
    (out / "stale.txt").parent.mkdir()
    (out / "stale.txt").write_text("an earlier export")

    folder = export_cli.main(["-p", str(untuned), "--format", "onnx", "--out", str(out)])
    metadata = json.loads((folder / export.METADATA_FILE).read_text())
    assert folder == out and metadata["threshold"] is None and metadata["min_area"] is None
    assert "finetune.py" in metadata["threshold_note"] and "threshold null" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == ["metadata.json", "model.onnx"]  # the stale file went


class NumpyMaps(AnomalyModel):
    """A method whose maps need numpy: it works in Python but has no graph to export."""
    method_name = "numpy-maps"

    def _batch_maps(self, images):
        return np.asarray(images).mean(axis=-1)


class OwnScore(AnomalyModel):
    """Graph maps, but a score that is not the default smoothed max, with no graph version of it."""
    method_name = "own-score"

    def graph_maps(self, images):
        return ops.mean(images, axis=-1)

    def score(self, images):
        return self.anomaly_map(images).mean(axis=(1, 2))


def test_a_method_without_a_graph_path_cannot_be_exported():
    model = NumpyMaps(input_size=8, channels=1)
    assert model.anomaly_map(np.zeros((1, 8, 8, 1))).shape == (1, 8, 8)
    with pytest.raises(UserError, match="method numpy-maps cannot be exported"):
        export.serving_function(model)
    with pytest.raises(UserError, match="method own-score cannot be exported: OwnScore.score"):
        export.serving_function(OwnScore(input_size=8, channels=1))


def test_graph_score_smoothing_equals_scipy_including_the_borders():
    model = AnomalyModel(input_size=40, channels=1)
    maps = np.random.default_rng(0).random((3, 40, 40), dtype=np.float32)
    maps[0, 0, 0] = maps[1, 39, 20] = maps[2, 17, 23] = 30.0  # hot pixels at a corner, an edge, inside
    np.testing.assert_allclose(model.score_from_maps_graph(maps), model.score_from_maps(maps), atol=TOLERANCE)
    smoothed = ndimage.gaussian_filter(maps[0], model.score_sigma, mode="nearest")
    assert abs(float(model.score_from_maps_graph(maps[:1])[0]) - smoothed.max()) < TOLERANCE


def test_an_unwritable_out_folder_is_one_clear_error(runs_by_method, workdir, capsys):
    blocker = workdir / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        export_cli.main(["-p", str(runs_by_method["mvtecCAE"].model_path), "--format", "onnx",
                         "--out", str(blocker / "onnx")])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.startswith("error: cannot write to") and len(error.splitlines()) == 1
