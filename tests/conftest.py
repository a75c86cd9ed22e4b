import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    """A small synthetic MVTec-layout dataset (64 px) shared by the slower tests."""
    from processing.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "small", seed=3, image_size=64,
                                      n_train=40, n_test_good=10, n_test_per_defect=5)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
