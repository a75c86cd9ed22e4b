"""Export a trained model for deployment: raw images in, anomaly map and image score out.

The exported graph takes uint8 images of shape (N, S, S, C), any N, at the model's input size S and
channels C, and returns `anomaly_map` (N, S, S) float32 and `score` (N,) float32, equal to the Keras
model's `anomaly_map` and `score` (the score's smoothing is inside the graph). Resizing is the
caller's job: resize to S x S as processing/data does (bilinear, antialiased; for a model trained with
--center-crop, resize larger and keep the centre, as metadata.json says) before calling, so the
exported model sees what the Keras model saw when it was finetuned and tested. The threshold and
min-area are not in the graph (DESIGN.md: thresholds never go inside the model); they are written to
`metadata.json` beside the exported file.

Formats, each made by the converter built for it:
  savedmodel  keras.export.ExportArchive (a TF SavedModel, signature `serving_default`)
  tflite      tf.lite.TFLiteConverter from that SavedModel, built-in TFLite ops only (no TF-ops delegate)
  onnx        tf2onnx from the same serving function, run with onnxruntime

A method is exportable when it provides `map_and_score_graph(images)` in keras.ops (the default
builds it from `graph_maps`, see processing/anomaly_model.py).
"""
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from processing import atomic, runs
from processing.errors import UserError

FORMATS = ("savedmodel", "tflite", "onnx")
EXPORTED_FILE = {"savedmodel": "saved_model.pb", "tflite": "model.tflite", "onnx": "model.onnx"}
METADATA_FILE = "metadata.json"
INPUT_NAME, MAP_OUTPUT, SCORE_OUTPUT = "images", "anomaly_map", "score"
ONNX_OPSET = 17


def serving_function(model):
    """tf.function: uint8 images (N, S, S, C) -> {"anomaly_map": (N, S, S), "score": (N,)}, float32."""
    import tensorflow as tf

    _check_graph_scoring(model)
    spec = tf.TensorSpec((None, model.input_size, model.input_size, model.channels), tf.uint8, name=INPUT_NAME)

    # autograph=False: the methods' graph code is plain keras.ops, and autograph's rewriting breaks
    # zero-argument super() in Keras internals reached while tracing.
    @tf.function(input_signature=[spec], autograph=False)
    def serve(images):
        # The same scaling as tf.io.decode_image(dtype=float32) in processing/data.
        maps, scores = model.map_and_score_graph(tf.cast(images, tf.float32) * (1.0 / 255.0))
        return {MAP_OUTPUT: tf.identity(maps, name=MAP_OUTPUT), SCORE_OUTPUT: tf.identity(scores, name=SCORE_OUTPUT)}

    try:
        serve.get_concrete_function()
    except NotImplementedError as error:
        raise UserError(f"method {model.method_name} cannot be exported: {error}; it needs a keras.ops "
                        "map_and_score_graph (see processing/export.py)") from error
    return serve


def _check_graph_scoring(model):
    """A method that scores its own way must say so in graph form too, or the export would score wrongly."""
    graph_owner = _defining_class(model, "map_and_score_graph")
    for name in ("score", "maps_and_scores"):
        owner = _defining_class(model, name)
        if not issubclass(graph_owner, owner):
            raise UserError(f"method {model.method_name} cannot be exported: {owner.__name__}.{name} scores images "
                            "its own way and has no map_and_score_graph to match it in keras.ops")


def _defining_class(model, attribute):
    return next(cls for cls in type(model).__mro__ if attribute in vars(cls))


def export(run, format_name, out_dir=None):
    """Export the model of `run` (a runs.Run) as `format_name` into `out_dir` (default:
    <run folder>/export/<format>); returns the folder. The folder is built aside and renamed into
    place, so an interrupted export never leaves a half-written model."""
    if format_name not in FORMATS:
        raise UserError(f"unknown export format '{format_name}'; choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir) if out_dir else run.folder / "export" / format_name
    model = run.load_model()
    tuned = run.finetune()
    if tuned:
        model.configure_maps(**tuned.get("map_options", {}))
    serve = serving_function(model)
    with _folder_aside(out_dir) as building:
        WRITERS[format_name](model, serve, building)
        atomic.write_json(building / METADATA_FILE, metadata(run, model, tuned, format_name))
    return out_dir


def metadata(run, model, tuned, format_name):
    """What a deployment needs beside the graph: how to feed it, what it returns, how to threshold it."""
    size, channels = model.input_size, model.channels
    resizing = f"the caller resizes images to {size}x{size} (bilinear, antialiased)"
    if run.center_crop:
        crop = run.working_size(None)
        resizing = (f"the caller resizes images to {crop.resize[0]}x{crop.resize[1]} (bilinear, antialiased) and "
                    f"keeps the central {size}x{size} (the model was trained with --center-crop {run.center_crop:g})")
    info = {
        "method": model.method_name, "format": format_name, "file": EXPORTED_FILE[format_name],
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, size, size, channels],
                  "preprocessing": f"{resizing}; the graph scales uint8 to [0, 1]"},
        "outputs": {MAP_OUTPUT: "(N, H, W) float32, higher = more anomalous", SCORE_OUTPUT: "(N,) float32"},
        "input_size": size, "channels": channels, "map_options": model.map_options(),
        "threshold": tuned["threshold"] if tuned else None, "min_area": tuned["min_area"] if tuned else None,
        # Finetuned on tiles: the caller splits images as processing/tiling does and stitches the maps.
        "tiling": tuned.get("tiling") if tuned else None,
        "source_run_id": run.info.get("run_id"), "source_model": str(run.model_path),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {**runs.versions(), **_converter_versions(format_name)},
    }
    if not tuned:
        info["threshold_note"] = "no finetune.json beside the model: run finetune.py, then export again"
    return info


def _converter_versions(format_name):
    if format_name != "onnx":
        return {}
    import onnx
    import tf2onnx

    return {"tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__, "onnx_opset": ONNX_OPSET}


def _write_savedmodel(model, serve, folder):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(folder), verbose=False)


def _write_tflite(model, serve, folder):
    import tensorflow as tf

    with tempfile.TemporaryDirectory(dir=folder) as saved_model:
        _write_savedmodel(model, serve, saved_model)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises ConverterError and others, with a long op list
            raise UserError(f"method {model.method_name} cannot be exported as tflite: the converter failed "
                            f"({_first_line(error)}); export as savedmodel or onnx instead") from error
    (folder / EXPORTED_FILE["tflite"]).write_bytes(flatbuffer)


def _write_onnx(model, serve, folder):
    import tf2onnx

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET)
    except Exception as error:  # tf2onnx raises plain ValueError/RuntimeError for unsupported ops
        raise UserError(f"method {model.method_name} cannot be exported as onnx: tf2onnx failed "
                        f"({_first_line(error)}); export as savedmodel or tflite instead") from error
    _name_outputs(proto)
    (folder / EXPORTED_FILE["onnx"]).write_bytes(proto.SerializeToString())


def _name_outputs(proto):
    """tf2onnx names outputs after TF tensors (e.g. "Identity:0"); rename them after what they hold."""
    renamed = {output.name: MAP_OUTPUT if len(output.type.tensor_type.shape.dim) == 3 else SCORE_OUTPUT
               for output in proto.graph.output}
    for node in proto.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for output in proto.graph.output:
        output.name = renamed[output.name]


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


WRITERS = {"savedmodel": _write_savedmodel, "tflite": _write_tflite, "onnx": _write_onnx}


@contextlib.contextmanager
def _folder_aside(target):
    """Yield a temporary folder beside `target`; on success it replaces `target` (an old one is removed)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError as error:
        raise UserError(f"cannot write to {target.parent}: {error.strerror}; choose a writable --out") from error
    try:
        yield building
        _swap_in(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _swap_in(building, target):
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        if target.exists():
            os.replace(target, old)
        os.replace(building, target)
    except OSError as error:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise UserError(f"cannot write {target}: {error.strerror}; earlier files were kept") from error
    shutil.rmtree(old, ignore_errors=True)
