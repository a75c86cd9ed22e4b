"""test.py --report (processing/report.py): one self-contained report.html per results folder whose
figures all decode, whose numbers equal metrics.json and whose error examples are the right images.

PatchCore on the 64 px synthetic set: it only calibrates, so the model is ready in seconds.
"""
import base64
import csv
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import finetune
import test as test_cli
import train
from processing import report, runs


class ReportPage(HTMLParser):
    """The figures, captions and keyed numbers of a report page."""

    def __init__(self, text):
        super().__init__()
        self.sources, self.captions, self.numbers, self.resources = [], [], {}, []
        self._key, self._in_caption = None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag in ("script", "link", "iframe"):
            self.resources.append(tag)
        self._key = attrs.get("data-key")
        self._in_caption = tag == "figcaption"

    def handle_data(self, data):
        if self._key:
            self.numbers[self._key] = data
        if self._in_caption:
            self.captions.append(data)
        self._key, self._in_caption = None, False


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory, small_synthetic):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("report"))
        run_dir = train.main(["-d", str(small_synthetic), "-a", "patchcore", "--size", "64"])
        finetune.main([])
        yield run_dir


def decode_figure(source, folder):
    if source.startswith("data:image/png;base64,"):
        return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1], validate=True)))
    return Image.open(folder / source)  # a relative file must exist beside the page


def test_report_shows_metrics_json_and_figures_that_decode(finetuned_run):
    results = test_cli.main(["--report"])
    page_text = (results / report.REPORT_FILE).read_text()
    page = ReportPage(page_text)
    metrics = json.loads((results / "metrics.json").read_text())

    assert not page.resources and not re.search(r"(src|href)=\"(https?:)?//", page_text)  # opens offline
    figures = [decode_figure(source, results) for source in page.sources]
    assert all(figure.size[0] > 0 for figure in figures)
    assert (results / "pr_curve.png").is_file() and (results / "roc_curve.png").is_file()

    expected = {f"{group}.{name}": value for group in ("full_test_set", "evaluation_set")
                for name, value in metrics[group].items() if isinstance(value, float)}
    assert set(page.numbers) == set(expected) and "full_test_set.image_auroc" in expected
    for key, shown in page.numbers.items():
        assert float(shown) == pytest.approx(expected[key], abs=5e-5), key

    # The examples are the evaluation images the threshold got wrong, worst first, as in per_image.csv.
    rows = [row for row in csv.DictReader((results / "per_image.csv").open()) if row["split"] == "evaluation"]
    score = lambda row: float(row["score"])  # noqa: E731
    false_positives = sorted((r for r in rows if r["label"] == "0" and r["prediction"] == "1"), key=score, reverse=True)
    false_negatives = sorted((r for r in rows if r["label"] == "1" and r["prediction"] == "0"), key=score)
    wanted = [r["path"] for r in false_positives[:report.WORST_SHOWN] + false_negatives[:report.WORST_SHOWN]]
    assert wanted  # the tiny model errs on some evaluation images, so the example sections are exercised
    n_curves = len(report.FIGURES)
    assert [caption.split(" (")[0] for caption in page.captions[n_curves:]] == wanted
    assert len(figures) == n_curves + len(wanted)
    assert all(figure.size == (2 * 64 + 4, 64) for figure in figures[n_curves:])  # image | gap | overlay


def test_report_without_finetune_json_says_there_is_no_threshold(finetuned_run, tmp_path):
    untuned = tmp_path / "untuned"
    untuned.mkdir()
    for name in (runs.MODEL_FILE, runs.RUN_FILE):
        shutil.copy(Path(finetuned_run) / name, untuned / name)
    results = test_cli.main(["-p", str(untuned), "--report"])
    page = ReportPage((results / report.REPORT_FILE).read_text())
    assert "No finetune.json" in (results / report.REPORT_FILE).read_text()
    assert all(key.startswith("full_test_set.") for key in page.numbers)
    assert len(page.sources) == len(report.FIGURES)  # the curves, no error examples
