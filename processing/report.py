"""report.html for one test run (test.py --report): the page a quality engineer opens first.

It shows the metrics of metrics.json, the ROC and precision-recall curves, the image score histogram,
and the worst false positives (good images with the highest scores) and false negatives (defective
images with the lowest scores) of the evaluation images at the finetuned threshold, each as its
segmentation overlay (predicted regions cyan, ground truth green).

Every figure is embedded as a base64 PNG data URI and the page has no script and no external style
sheet, so report.html opens offline and can be mailed on its own. Each number in the metrics tables
carries its metrics.json key in `data-key`, so a test can check it against the file.
"""
import base64
import html
import io
import json

import numpy as np
from PIL import Image

from processing import atomic, plots

REPORT_FILE = "report.html"
FIGURES = (("roc_curve.png", "ROC curve (image level, full test set)"),
           ("pr_curve.png", "Precision-recall curve (image level, full test set)"),
           ("score_histogram.png", "Image scores"))
WORST_SHOWN = 4  # examples per error kind: enough to see a pattern, small enough to stay one page

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }
td.number { text-align: right; font-family: monospace; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figcaption { font-size: 0.85em; max-width: 520px; word-break: break-all; }
img { max-width: 520px; image-rendering: pixelated; }
"""


def write_report(results_dir, samples, images, maps, masks, predicted_masks, scores, in_evaluation, map_range):
    """Write results_dir/report.html from metrics.json and the figures test.py wrote there.

    predicted_masks is None when the model has no finetune.json: the page then has no error examples.
    Returns the path of the page.
    """
    metrics = json.loads((results_dir / "metrics.json").read_text())
    title = f"{metrics['method']} on {metrics['dataset']}"
    sections = [f"<h1>{html.escape(title)}</h1>", _run_summary(metrics), _metrics_tables(metrics), "<h2>Curves</h2>"]
    sections += [_figure(_data_uri((results_dir / name).read_bytes()), caption)
                 for name, caption in FIGURES if (results_dir / name).is_file()]
    if predicted_masks is None:
        sections.append("<p>No finetune.json beside the model: no threshold, so no false positives or false "
                        "negatives to show. Run finetune.py, then test.py --report again.</p>")
    else:
        examples = ExampleOverlays(samples, images, maps, masks, predicted_masks, map_range)
        labels = np.array([sample.label for sample in samples])
        predictions = predicted_masks.any(axis=(1, 2))
        false_positives = np.flatnonzero(in_evaluation & (labels == 0) & predictions)
        false_negatives = np.flatnonzero(in_evaluation & (labels == 1) & ~predictions)
        sections.append(examples.section("Worst false positives", "good images with the highest scores",
                                         false_positives[np.argsort(-scores[false_positives], kind="stable")], scores))
        sections.append(examples.section("Worst false negatives", "defective images with the lowest scores",
                                         false_negatives[np.argsort(scores[false_negatives], kind="stable")], scores))
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n")
    path = results_dir / REPORT_FILE
    atomic.write_text(path, page)
    return path


class ExampleOverlays:
    """Overlay figures of chosen test images, drawn as test.py --save draws them."""

    def __init__(self, samples, images, maps, masks, predicted_masks, map_range):
        self.samples, self.images, self.maps = samples, images, maps
        self.masks, self.predicted_masks, self.map_range = masks, predicted_masks, map_range

    def section(self, heading, description, indices, scores):
        shown = indices[:WORST_SHOWN]
        parts = [f"<h2>{heading}</h2>",
                 f"<p>{description}, evaluation images only: {len(shown)} of {len(indices)} shown. "
                 "Left: the image; right: its anomaly map, predicted regions in cyan, ground truth in green.</p>"]
        parts += [self._figure(i, scores[i]) for i in shown]
        if not len(indices):
            parts.append("<p>None.</p>")
        return "\n".join(parts)

    def _figure(self, index, score):
        sample = self.samples[index]
        picture = plots.overlay_image(self.images[index], self.maps[index], self.predicted_masks[index],
                                      self.masks[index], self.map_range)
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        return _figure(_data_uri(buffer.getvalue()), f"{sample.path} ({sample.defect}), score {score:.4g}")


def _run_summary(metrics):
    rows = [("model", metrics["model"]), ("test images", metrics["n_test_images"]),
            ("evaluation images", metrics["n_evaluation_images"]),
            ("inference images/s", f"{metrics['inference_images_per_second']:.1f}")]
    if "threshold" in metrics:
        rows += [("threshold", f"{metrics['threshold']['threshold']:.6g}"),
                 ("min area (pixels)", metrics["threshold"]["min_area"])]
    return _table(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>" for name, value in rows)


def _metrics_tables(metrics):
    parts = ["<h2>Threshold-free metrics, full test set</h2>", _number_table(metrics["full_test_set"], "full_test_set")]
    evaluation = metrics.get("evaluation_set")
    if evaluation:
        parts += ["<h2>At the finetuned threshold, evaluation images</h2>", _number_table(evaluation, "evaluation_set")]
        (tn, fp), (fn, tp) = evaluation["confusion_matrix"]
        parts.append(_table([
            "<tr><th></th><th>predicted good</th><th>predicted defective</th></tr>",
            f"<tr><th>good</th><td class=\"number\">{tn}</td><td class=\"number\">{fp}</td></tr>",
            f"<tr><th>defective</th><td class=\"number\">{fn}</td><td class=\"number\">{tp}</td></tr>"]))
    return "\n".join(parts)


def _number_table(values, group):
    return _table(f"<tr><th>{html.escape(name)}</th><td class=\"number\" data-key=\"{group}.{html.escape(name)}\">"
                  f"{value:.4f}</td></tr>" for name, value in values.items() if isinstance(value, float))


def _table(rows):
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _figure(source, caption):
    caption = html.escape(caption)
    return f"<figure><img src=\"{source}\" alt=\"{caption}\"><figcaption>{caption}</figcaption></figure>"


def _data_uri(png_bytes):
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")
