"""Export a trained model for deployment: uint8 images in, anomaly map and image score out.

    python3 export.py --format onnx                       # latest model -> <run>/export/onnx/
    python3 export.py -p saved_models/.../model.keras --format tflite --out deploy/line3

Formats: savedmodel (TensorFlow SavedModel, signature serving_default), tflite (LiteRT / TFLite
interpreter) and onnx (onnxruntime). Input `images`: uint8 (N, S, S, C) at the model's input size and
channels; resizing to S x S is the caller's job. Outputs `anomaly_map` (N, S, S) and `score` (N,),
float32, equal to the Keras model's. metadata.json beside the exported file holds the finetuned
threshold and min-area (null when the model was not finetuned), the map options, the input size and
channels, versions and the source run.
"""
import argparse
from dataclasses import dataclass

import processing.environment  # noqa: F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)
from processing.errors import CommandLineParser, cli_entry
from processing.export import FORMATS


@dataclass
class ExportConfig:
    model_path: str | None
    format: str
    out: str | None


def parse_args(argv=None):
    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--model-path", default=None, help="model.keras or its run folder (default: latest)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", default=None, help="folder to write (default: <run folder>/export/<format>)")
    return ExportConfig(**vars(parser.parse_args(argv)))


def export_model(config):
    from processing import export, runs
    from processing.progress import report

    run = runs.Run(runs.resolve_model_path(config.model_path))
    report(f"exporting {run.method} ({run.model_path}) as {config.format}")
    folder = export.export(run, config.format, config.out)
    metadata = runs.read_json(folder / export.METADATA_FILE, "export metadata")
    if metadata["threshold"] is None:
        report("no finetune.json beside the model: metadata.json has threshold null "
               "(run finetune.py, then export again)")
    report(f"wrote {folder / metadata['file']} and {folder / export.METADATA_FILE}")
    return folder


@cli_entry
def main(argv=None):
    return export_model(parse_args(argv))


if __name__ == "__main__":
    main()
