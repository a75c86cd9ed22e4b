import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from processing import synthetic
from processing.errors import UserError
from processing.synthetic import (DEFECT_TYPES, MAX_DEFECT_AREA, MIN_DEFECT_AREA,
                                  generate_synthetic_dataset, render_sample)

SMALL = dict(image_size=64, n_train=4, n_test_good=2, n_test_per_defect=2)


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "dataset")


def relative_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def load(path):
    return np.asarray(Image.open(path))


def test_layout_and_counts(default_dataset):
    root = default_dataset
    assert len(list((root / "train" / "good").glob("*.png"))) == 96
    assert len(list((root / "test" / "good").glob("*.png"))) == 24
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(("good",) + DEFECT_TYPES)
    for defect in DEFECT_TYPES:
        images = sorted(p.stem for p in (root / "test" / defect).glob("*.png"))
        masks = sorted(p.stem for p in (root / "ground_truth" / defect).glob("*.png"))
        assert images == [f"{i:03d}" for i in range(12)]
        assert masks == [f"{name}_mask" for name in images]
    metadata = json.loads((root / "synthetic.json").read_text())
    assert metadata["seed"] == 0 and metadata["image_size"] == 128
    assert metadata["version"] == synthetic.GENERATOR_VERSION


def test_images_are_rgb_uint8_png(default_dataset):
    image = Image.open(default_dataset / "train" / "good" / "000.png")
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (128, 128)


def test_masks_are_binary_same_size_and_small(default_dataset):
    for defect in DEFECT_TYPES:
        for path in (default_dataset / "ground_truth" / defect).glob("*.png"):
            mask = Image.open(path)
            assert mask.mode == "L" and mask.size == (128, 128)
            values = np.unique(np.asarray(mask))
            assert set(values.tolist()) == {0, 255}
            area = (np.asarray(mask) == 255).mean()
            assert MIN_DEFECT_AREA <= area <= MAX_DEFECT_AREA, (path, area)


def test_files_match_render_sample(default_dataset):
    sample = render_sample(0, "test", "blob", 3)
    assert np.array_equal(load(default_dataset / "test" / "blob" / "003.png"), sample.image)
    assert np.array_equal(load(default_dataset / "ground_truth" / "blob" / "003_mask.png") == 255,
                          sample.mask)


def test_good_images_vary(default_dataset):
    paths = sorted((default_dataset / "train" / "good").glob("*.png"))[:5]
    images = [load(path).astype(float) for path in paths]
    for a, b in zip(images, images[1:]):
        assert np.abs(a - b).mean() > 2


def test_defects_are_learnable(default_dataset):
    """A per-pixel Gaussian model of the good images tells defects apart, though not perfectly."""
    def read(folder):
        return np.stack([load(p) / 255 for p in sorted(folder.glob("*.png"))])

    train = read(default_dataset / "train" / "good")
    mean, spread = train.mean(0), train.std(0) + 0.02

    def scores(images):
        z = (np.abs(images - mean) / spread).mean(-1)
        return ndimage.uniform_filter(z, (1, 5, 5)).max(axis=(1, 2))

    good = scores(read(default_dataset / "test" / "good"))
    for defect in DEFECT_TYPES:
        bad = scores(read(default_dataset / "test" / defect))
        auroc = (bad[:, None] > good[None, :]).mean()
        assert auroc > 0.85, (defect, auroc)


@pytest.mark.parametrize("defect", DEFECT_TYPES)
@pytest.mark.parametrize("color", [True, False])
def test_defect_changes_exactly_the_masked_pixels(defect, color):
    for index in range(8):
        sample = render_sample(5, "test", defect, index, image_size=96, color=color)
        changed = sample.image != sample.clean
        if changed.ndim == 3:
            changed = changed.any(-1)
        assert not (changed & ~sample.mask).any()
        assert changed[sample.mask].mean() > 0.85
        assert MIN_DEFECT_AREA <= sample.mask.mean() <= MAX_DEFECT_AREA


def test_good_sample_has_empty_mask():
    sample = render_sample(0, "test", "good", 0)
    assert not sample.mask.any() and np.array_equal(sample.image, sample.clean)


def test_grayscale_images(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "gray", color=False, **SMALL)
    image = Image.open(root / "test" / "scratch" / "000.png")
    assert image.mode == "L" and image.size == (64, 64)


def test_same_seed_gives_identical_files(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", seed=3, **SMALL)
    second = generate_synthetic_dataset(tmp_path / "b", seed=3, **SMALL)
    files = relative_files(first)
    assert files == relative_files(second)
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_different_seed_gives_different_images(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", seed=3, **SMALL)
    second = generate_synthetic_dataset(tmp_path / "b", seed=4, **SMALL)
    for name in ("train/good/000.png", "test/missing/001.png"):
        assert not np.array_equal(load(first / name), load(second / name))


def test_second_call_reuses_the_dataset(tmp_path, monkeypatch):
    root = generate_synthetic_dataset(tmp_path / "data", **SMALL)
    image = root / "train" / "good" / "000.png"
    before = image.stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    assert generate_synthetic_dataset(tmp_path / "data", **SMALL) == root
    assert image.stat().st_mtime_ns == before


def test_other_parameters_replace_the_dataset(tmp_path):
    generate_synthetic_dataset(tmp_path / "data", seed=1, **SMALL)
    root = generate_synthetic_dataset(tmp_path / "data", seed=2, **{**SMALL, "n_train": 3})
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 2
    assert len(list((root / "train" / "good").glob("*.png"))) == 3
    assert os.listdir(tmp_path) == ["data"]


def test_crash_leaves_no_dataset(tmp_path, monkeypatch):
    calls = []
    real_save = synthetic._save_png

    def save_then_crash(path, array):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real_save(path, array)

    monkeypatch.setattr(synthetic, "_save_png", save_then_crash)
    with pytest.raises(UserError, match="No space left"):
        generate_synthetic_dataset(tmp_path / "data", **SMALL)
    assert os.listdir(tmp_path) == []


def test_crash_keeps_the_earlier_dataset(tmp_path, monkeypatch):
    root = generate_synthetic_dataset(tmp_path / "data", seed=1, **SMALL)

    def crash(path, array):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synthetic, "_save_png", crash)
    with pytest.raises(UserError, match="No space left"):
        generate_synthetic_dataset(tmp_path / "data", seed=2, **SMALL)
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1
    assert os.listdir(tmp_path) == ["data"]


def test_fills_an_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    root = generate_synthetic_dataset(tmp_path / "data", **SMALL)
    assert (root / "synthetic.json").exists()
    assert os.listdir(tmp_path) == ["data"]


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a synthetic dataset"):
        generate_synthetic_dataset(folder, **SMALL)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_rejects_bad_parameters(tmp_path):
    with pytest.raises(UserError, match="image size"):
        generate_synthetic_dataset(tmp_path / "data", image_size=8)
    with pytest.raises(UserError, match="n_train"):
        generate_synthetic_dataset(tmp_path / "data", n_train=0)
