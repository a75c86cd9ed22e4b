import numpy as np
import pytest
from PIL import Image

from processing import data
from processing.errors import UserError


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        _write(tmp_path / "train/good" / f"{i:03d}.png", rng.integers(0, 255, (32, 32, 3), np.uint8))
    for i in range(4):
        _write(tmp_path / "test/good" / f"{i:03d}.png", rng.integers(0, 255, (32, 32, 3), np.uint8))
    for defect in ("crack", "hole"):
        for i in range(4):
            _write(tmp_path / "test" / defect / f"{i:03d}.png", rng.integers(0, 255, (32, 32, 3), np.uint8))
            mask = np.zeros((32, 32), np.uint8)
            mask[4:8 + i, 10:14] = 255
            _write(tmp_path / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return tmp_path


def test_scan_finds_images_and_masks(tiny_dataset):
    dataset = data.scan_dataset(tiny_dataset)
    assert len(dataset.train) == 6 and len(dataset.test) == 12
    crack = [s for s in dataset.test if s.defect == "crack"]
    assert crack[0].mask == "ground_truth/crack/000_mask.png" and crack[0].label == 1
    assert all(s.mask is None and s.label == 0 for s in dataset.test if s.defect == "good")


def test_load_arrays_aligns_masks_with_images(tiny_dataset):
    dataset = data.scan_dataset(tiny_dataset)
    samples = [s for s in dataset.test if s.defect == "crack"]
    images, masks = data.load_arrays(dataset, samples, 32, 1)
    assert images.shape == (4, 32, 32, 1) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert [int(m.sum()) for m in masks] == [16, 20, 24, 28]  # mask i is (4 + i) x 4 pixels
    resized, masks_16 = data.load_arrays(dataset, samples, 16, 3)
    assert resized.shape == (4, 16, 16, 3) and masks_16.shape == (4, 16, 16)


def test_splits_are_seeded_disjoint_and_stratified(tiny_dataset):
    dataset = data.scan_dataset(tiny_dataset)
    finetune, evaluation = data.split_finetune_evaluation(dataset.test, 0.5, seed=1)
    assert not {s.path for s in finetune} & {s.path for s in evaluation}
    assert len(finetune) + len(evaluation) == len(dataset.test)
    for defect in ("good", "crack", "hole"):
        assert sum(s.defect == defect for s in finetune) == 2
        assert sum(s.defect == defect for s in evaluation) == 2
    assert data.split_finetune_evaluation(dataset.test, 0.5, seed=1) == (finetune, evaluation)
    assert data.split_finetune_evaluation(dataset.test, 0.5, seed=2) != (finetune, evaluation)
    train, val = data.split_train_validation(dataset.train, 0.2, seed=0)
    assert len(val) == 1 and len(train) == 5 and not set(train) & set(val)


def test_tf_dataset_batches_images(tiny_dataset):
    dataset = data.scan_dataset(tiny_dataset)
    ds = data.image_dataset(dataset, dataset.train, 16, 3, batch_size=4, shuffle=True, seed=0)
    batches = [b.numpy() for b in ds]
    assert [b.shape for b in batches] == [(4, 16, 16, 3), (2, 16, 16, 3)]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.resolve_dataset("no/such/category", tmp_path)
    with pytest.raises(UserError, match="train/good"):
        data.scan_dataset(tmp_path)


def test_empty_train_folder_is_a_clear_error(tmp_path):
    (tmp_path / "train/good").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        data.scan_dataset(tmp_path)


def test_missing_mask_is_a_clear_error(tiny_dataset):
    (tiny_dataset / "ground_truth/hole/002_mask.png").unlink()
    with pytest.raises(UserError, match="mask missing for test/hole/002.png"):
        data.scan_dataset(tiny_dataset)


def test_undecodable_image_names_the_file(tiny_dataset):
    bad = tiny_dataset / "train/good/003.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    dataset = data.scan_dataset(tiny_dataset)
    with pytest.raises(UserError, match="cannot decode image .*003.png"):
        data.check_images(dataset, dataset.train)


def test_mask_of_another_size_is_a_clear_error(tiny_dataset):
    _write(tiny_dataset / "ground_truth/crack/001_mask.png", np.zeros((16, 16), np.uint8))
    dataset = data.scan_dataset(tiny_dataset)
    with pytest.raises(UserError, match="mask ground_truth/crack/001_mask.png is 16x16 but its image"):
        data.check_images(dataset, dataset.test)


def test_name_resolves_under_data_root(tiny_dataset):
    root, name = data.resolve_dataset(tiny_dataset.name, tiny_dataset.parent)
    assert root == tiny_dataset.resolve() and name == tiny_dataset.name


def test_real_category_loads(shared_data):
    root, name = data.resolve_dataset("mvtec_ad/bottle", shared_data)
    dataset = data.scan_dataset(root, name)
    assert name == "mvtec_ad/bottle" and len(dataset.train) == 209 and len(dataset.test) == 83
    assert data.native_size(dataset) == 256
    defect = next(s for s in dataset.test if s.mask)
    _, masks = data.load_arrays(dataset, [defect], 256, 3)
    assert masks.any()


def test_grayscale_folder_loads_as_rgb_or_grayscale(tmp_path):
    gray = np.tile(np.arange(32, dtype=np.uint8)[None, :] * 8, (32, 1))
    for i in range(3):
        _write(tmp_path / "train/good" / f"{i:03d}.png", gray)
    dataset = data.scan_dataset(tmp_path)
    as_rgb, _ = data.load_arrays(dataset, dataset.train, 32, 3)
    as_gray, _ = data.load_arrays(dataset, dataset.train, 32, 1)
    assert as_rgb.shape == (3, 32, 32, 3) and as_gray.shape == (3, 32, 32, 1)
    np.testing.assert_allclose(as_rgb[..., 0], as_rgb[..., 2])
    np.testing.assert_allclose(as_gray[0, 0, :, 0], gray[0] / 255, atol=1e-6)


def test_rgb_folder_loads_as_grayscale(tiny_dataset):
    dataset = data.scan_dataset(tiny_dataset)
    images, _ = data.load_arrays(dataset, dataset.train[:1], 32, 1)
    rgb = np.asarray(Image.open(tiny_dataset / dataset.train[0].path), np.float32) / 255
    luma = rgb @ np.array([0.2989, 0.587, 0.114], np.float32)  # ITU-R 601, as tf.image.rgb_to_grayscale
    np.testing.assert_allclose(images[0, ..., 0], luma, atol=2 / 255)
