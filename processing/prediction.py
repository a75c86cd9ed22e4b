"""Scoring new images with a finetuned model: the library behind predict.py.

Inputs are files, folders (searched recursively, hidden files skipped) and glob patterns. Images
are decoded one chunk at a time, the next chunk in a background thread while the model scores the
current one, so a folder of 100,000 images never sits in memory. A file that is not an image or
does not decode becomes an error row instead of stopping the run.

Without tiling an image is resized to the model's input size (as in training) and segmented there
with the finetuned threshold and min-area; its regions are then mapped back to the image's own
pixels (nearest neighbour). With tiling the map is stitched at the image's own size and segmented
there. Either way areas and bounding boxes are in pixels of the original image; boxes follow
numpy slicing: x_min, y_min inclusive, x_max, y_max exclusive, so `image[y_min:y_max, x_min:x_max]`
cuts a region out.
"""
import contextlib
import csv
import functools
import glob
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.measure import regionprops

from processing import data
from processing.atomic import atomic_path
from processing.errors import UserError
from processing.segmentation import label_regions, segment
from processing.tiling import tiled_maps_and_scores

CSV_FILE, JSON_FILE = "predictions.csv", "predictions.json"
CSV_COLUMNS = ("path", "width", "height", "score", "anomalous", "defect_area_px", "regions", "boxes", "error")
BOX_CONVENTION = "pixels of the original image; x_min, y_min inclusive, x_max, y_max exclusive"
GLOB_CHARACTERS = frozenset("*?[")


# ---------------------------------------------------------------- inputs

def expand_inputs(arguments):
    """Files named by `arguments` (files, folders, glob patterns), in order, each once."""
    found = []
    for argument in arguments:
        if GLOB_CHARACTERS & set(argument):
            for match in sorted(glob.glob(argument, recursive=True)):
                found += _files_under(Path(match)) if os.path.isdir(match) else [Path(match)]
        elif os.path.isdir(argument):
            found += _files_under(Path(argument))
        elif os.path.isfile(argument):
            found.append(Path(argument))
        else:
            raise UserError(f"no such file or folder: {argument}; pass image files, folders or glob patterns")
    files = list(dict.fromkeys(found))
    if not files:
        raise UserError(f"no files matched {' '.join(arguments)}; pass image files, folders or glob patterns")
    return files


def _files_under(folder):
    """Every non-hidden file below `folder`, sorted, so that a run is repeatable."""
    files = []
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        files += [Path(root) / name for name in sorted(names) if not name.startswith(".")]
    return files


class UnreadableFile(Exception):
    """A file to report and skip: not an image, or an image that does not decode."""


def read_image(path, channels):
    """float32 (H, W, channels) in [0, 1] at the file's own size, decoded as training decodes."""
    import tensorflow as tf

    if path.suffix.lower() not in data.IMAGE_SUFFIXES:
        raise UnreadableFile(f"not an image file (expected {', '.join(data.IMAGE_SUFFIXES)})")
    try:
        return _decoder(channels)(str(path)).numpy()
    except tf.errors.OpError as error:
        raise UnreadableFile(f"cannot decode image: {_one_line(error)}") from error


@functools.cache
def _decoder(channels):
    """data.decode_image as a graph, as tf.data runs it in training (its PIL branch expects graph inputs)."""
    import tensorflow as tf

    return tf.function(lambda path: data.decode_image(path, channels), input_signature=[tf.TensorSpec([], tf.string)])


def _one_line(error):
    """The first line of TensorFlow's message, without its node prefix, op name or a Python traceback."""
    message = error.message.split("}}", 1)[-1].strip()
    first_line = message.splitlines()[0].split(" [Op:")[0].strip() if message else ""
    return first_line or type(error).__name__


def read_chunks(paths, channels, chunk_size):
    """Yield lists of (path, image or None, error or None), `chunk_size` files at a time, reading the
    next chunk in a thread while the caller scores the current one (at most two chunks in memory)."""
    def read(chunk):
        items = []
        for path in chunk:
            try:
                items.append((path, read_image(path, channels), None))
            except UnreadableFile as error:
                items.append((path, None, str(error)))
        return items

    remaining = iter(paths)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        while chunk := list(itertools.islice(remaining, chunk_size)):
            upcoming = pool.submit(read, chunk)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


# ---------------------------------------------------------------- scoring

@dataclass
class Prediction:
    score: float
    anomaly_map: np.ndarray  # at the working resolution: the input size, or the image's own size when tiled
    predicted_mask: np.ndarray  # same resolution as the map
    regions: list  # dicts x_min, y_min, x_max, y_max, area in the original image's pixels

    @property
    def anomalous(self):
        return bool(self.predicted_mask.any())

    @property
    def defect_area(self):
        return sum(region["area"] for region in self.regions)


class Predictor:
    """A model with its finetuned threshold and min-area (and tiling): images of any size -> Predictions.

    Untiled images are resized to `size`: the model's input size unless given (a data.CenterCrop for a
    model trained with --center-crop).
    """

    def __init__(self, model, threshold, min_area, tiling=None, size=None):
        self.model, self.threshold, self.min_area, self.tiling = model, threshold, min_area, tiling
        self.size = model.input_size if size is None else size

    def working_image(self, image):
        """The image as the model is applied to it: resized (and cropped) to the input size, or as it is when tiled."""
        if self.tiling is not None:
            return image
        return data.resize_image(image, self.size).numpy()

    def predict(self, images):
        """Predictions for a list of (H, W, C) images, sizes may differ."""
        working = [self.working_image(image) for image in images]
        maps, scores = [None] * len(images), np.zeros(len(images), np.float32)
        # Consecutive images of one size are scored together, so their tiles (or resized images) share batches.
        for _, group in itertools.groupby(range(len(working)), key=lambda i: working[i].shape):
            group = list(group)
            group_maps, scores[group] = tiled_maps_and_scores(self.model, np.stack([working[i] for i in group]),
                                                              self.tiling)
            for index, anomaly_map in zip(group, group_maps):
                maps[index] = anomaly_map
        predictions = []
        for image, anomaly_map, score in zip(images, maps, scores):
            predicted_masks, _, _ = segment(anomaly_map[None], self.threshold, self.min_area)
            regions = regions_in_original_pixels(predicted_masks[0], *image.shape[:2], self._seen_box(image))
            predictions.append(Prediction(float(score), anomaly_map, predicted_masks[0], regions))
        return predictions

    def _seen_box(self, image):
        """(top, left, bottom, right) of the part of `image` the model saw, in its pixels."""
        height, width = image.shape[:2]
        if self.tiling is None and isinstance(self.size, data.CenterCrop):
            return self.size.box(height, width)
        return 0, 0, height, width


def resample_labels(labelled, height, width):
    """A label image resized to (height, width), per axis: enlarged by nearest neighbour on pixel
    centres; shrunk by taking the largest label in the block of mask pixels each original pixel
    covers, so that no region vanishes (two regions within one original pixel become the larger label)."""
    for axis, size in ((0, height), (1, width)):
        mask_size = labelled.shape[axis]
        if size < mask_size:
            labelled = np.maximum.reduceat(labelled, np.arange(size) * mask_size // size, axis=axis)
        elif size > mask_size:
            labelled = np.take(labelled, ((np.arange(size) + 0.5) * mask_size / size).astype(int), axis=axis)
    return labelled


def regions_in_original_pixels(predicted_mask, height, width, seen_box=None):
    """Connected regions of a (h, w) mask as boxes and areas in pixels of an image of (height, width).

    The mask covers `seen_box` (top, left, bottom, right) of the image: all of it unless given.
    """
    top, left, bottom, right = seen_box or (0, 0, height, width)
    labelled = resample_labels(label_regions(predicted_mask), bottom - top, right - left)
    return [{"x_min": left + int(region.bbox[1]), "y_min": top + int(region.bbox[0]),
             "x_max": left + int(region.bbox[3]), "y_max": top + int(region.bbox[2]), "area": int(region.area)}
            for region in regionprops(labelled)]


# ---------------------------------------------------------------- results

def image_record(path, image=None, prediction=None, error=None):
    """One JSON entry: the prediction of an image, or the reason it was skipped."""
    if error is not None:
        return {"path": str(path), "error": error}
    height, width = image.shape[:2]
    return {"path": str(path), "width": width, "height": height, "score": prediction.score,
            "anomalous": prediction.anomalous, "defect_area_px": prediction.defect_area,
            "regions": prediction.regions}


def csv_row(record):
    """The CSV columns of a JSON entry; boxes as a JSON list of [x_min, y_min, x_max, y_max]."""
    if "error" in record:
        return {**dict.fromkeys(CSV_COLUMNS, ""), "path": record["path"], "error": record["error"]}
    boxes = [[r["x_min"], r["y_min"], r["x_max"], r["y_max"]] for r in record["regions"]]
    return {**{key: record[key] for key in ("path", "width", "height", "score", "defect_area_px")},
            "anomalous": "yes" if record["anomalous"] else "no", "regions": len(boxes),
            "boxes": json.dumps(boxes), "error": ""}


class PredictionWriter:
    """predictions.csv and predictions.json, written row by row into temporary files that replace the
    final ones only when the run completes (processing.atomic): rows never pile up in memory, and an
    interrupted run leaves no half-written results."""

    def __init__(self, folder, header):
        self.folder, self.header = Path(folder), header
        self.n_rows = 0

    def __enter__(self):
        self._files = contextlib.ExitStack()
        csv_path = self._files.enter_context(atomic_path(self.folder / CSV_FILE))
        json_path = self._files.enter_context(atomic_path(self.folder / JSON_FILE))
        self._csv = csv.DictWriter(self._files.enter_context(open(csv_path, "w", newline="")), CSV_COLUMNS)
        self._json = self._files.enter_context(open(json_path, "w"))
        self._csv.writeheader()
        # The header's closing brace is cut off so that the image entries can follow inside the object.
        self._json.write(json.dumps(self.header, indent=1)[:-2] + ',\n "images": [')
        return self

    def write(self, record):
        self._csv.writerow(csv_row(record))
        self._json.write(("," if self.n_rows else "") + "\n  " + json.dumps(record))
        self.n_rows += 1

    def finish(self, summary):
        self._json.write('\n ],\n "summary": ' + json.dumps(summary) + "\n}\n")

    def __exit__(self, *exception):
        return self._files.__exit__(*exception)
