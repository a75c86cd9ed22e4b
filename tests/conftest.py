import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import processing.environment  # noqa: E402,F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)
SHARED_DATA = ROOT.parent / "shared" / "data"
SMALL_SIZE = 64  # the small synthetic set's image size

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    """A small synthetic MVTec-layout dataset (64 px) shared by the slower tests."""
    from processing.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "small", seed=3, image_size=SMALL_SIZE,
                                      n_train=40, n_test_good=10, n_test_per_defect=5)


@pytest.fixture(scope="session")
def two_product_root(small_synthetic, tmp_path_factory):
    """Two categories side by side: the synthetic flanges, and plain grey gradients (a trivially different
    product, 20 train and 8 test/good images at the synthetic set's size)."""
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("categories")
    shutil.copytree(small_synthetic, root / "flanges")
    ramp = np.linspace(60, 200, SMALL_SIZE, dtype=np.float32)
    for split, count in (("train", 20), ("test", 8)):
        folder = root / "gradients" / split / "good"
        folder.mkdir(parents=True)
        for i in range(count):
            grey = np.clip(ramp[None, :] + 3 * i + np.zeros((SMALL_SIZE, 1)), 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
