import keras
import numpy as np
import pytest
from keras import ops
from skimage.metrics import structural_similarity

from autoencoder import losses
from autoencoder.model import ARCHITECTURES, AutoencoderDetector
from processing.errors import UserError


def _pair(seed=0, channels=3, size=32):
    rng = np.random.default_rng(seed)
    x = rng.random((2, size, size, channels)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    return x, y


def test_ssim_map_matches_skimage():
    x, y = _pair(channels=1)
    ours = ops.convert_to_numpy(losses.ssim_map(x, y))
    _, reference = structural_similarity(x[0, ..., 0], y[0, ..., 0], full=True, data_range=1.0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    np.testing.assert_allclose(ours[0], reference, atol=1e-4)


def test_residual_maps_are_zero_for_a_perfect_reconstruction_and_l2_is_per_pixel():
    x, y = _pair()
    assert np.abs(ops.convert_to_numpy(losses.residual_map("ssim", x, x))).max() < 1e-4
    l2 = ops.convert_to_numpy(losses.residual_map("l2", x, y))
    np.testing.assert_allclose(l2, ((x - y) ** 2).mean(axis=-1), rtol=1e-5)
    assert float(losses.reconstruction_loss("l2", x, y)) == pytest.approx(((x - y) ** 2).mean(), rel=1e-5)


def test_ms_ssim_is_one_for_identical_images_and_matches_tensorflow():
    import tensorflow as tf

    x, y = _pair(size=64)  # 64 px allows 3 of the 5 scales
    np.testing.assert_allclose(ops.convert_to_numpy(losses.ms_ssim(x, x)), 1.0, atol=1e-5)
    weights = np.array(losses.MS_SSIM_WEIGHTS[:3]) / np.sum(losses.MS_SSIM_WEIGHTS[:3])
    reference = tf.image.ssim_multiscale(x, y, 1.0, power_factors=weights).numpy()
    # TensorFlow crops borders ('valid') where we pad them, hence the small tolerance
    np.testing.assert_allclose(ops.convert_to_numpy(losses.ms_ssim(x, y)), reference, atol=0.01)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("channels", [3, 1])
def test_save_reload_gives_the_same_map(tmp_path, architecture, channels):
    model = AutoencoderDetector(architecture=architecture, input_size=32, channels=channels, loss_name="mssim")
    x, _ = _pair(channels=channels)
    maps = model.anomaly_map(x)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_allclose(reloaded.anomaly_map(x), maps, atol=1e-6)


def test_loss_falls_when_training(small_synthetic):
    from processing import data

    keras.utils.set_random_seed(0)
    dataset = data.scan_dataset(small_synthetic)
    ds = data.image_dataset(dataset, dataset.train, 64, 3, batch_size=8, shuffle=True)
    model = AutoencoderDetector(architecture="mvtecCAE", input_size=64, channels=3, loss_name="ssim")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(ds, epochs=6, shuffle=False, verbose=0).history["loss"]  # tf.data shuffles
    assert history[-1] < 0.8 * history[0]


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_trains_a_few_steps(architecture):
    keras.utils.set_random_seed(0)
    model = AutoencoderDetector(architecture=architecture, input_size=32, channels=1, loss_name="l2")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = np.random.default_rng(0).random((32, 32, 32, 1)).astype(np.float32)
    history = model.fit(x, x, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]


def test_a_strided_residual_block_trains_without_crashing():
    """Training a 1x1 stride-2 Conv2D crashes TensorFlow's oneDNN kernels on AVX-512 CPUs (segfault or
    abort, the whole process); resnetCAE's downsampling blocks must avoid it."""
    from autoencoder import blocks

    keras.utils.set_random_seed(0)
    images = keras.Input((64, 64, 1))
    model = keras.Model(images, keras.layers.Conv2D(1, 1)(blocks.residual(images, 16, strides=2)))
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).random((192, 64, 64, 1)).astype(np.float32)
    target = x[:, ::2, ::2]
    history = model.fit(x, target, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0]


def test_strided_residual_shortcut_equals_a_strided_1x1_convolution():
    from autoencoder import blocks

    images = keras.Input((8, 8, 3))
    block = keras.Model(images, blocks.residual(images, 4, strides=2))
    subsample = next(layer for layer in block.layers if isinstance(layer, keras.layers.MaxPooling2D))
    projection = next(layer for layer in block.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1))
    x = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    expected = np.einsum("nhwc,cf->nhwf", x[:, ::2, ::2], ops.convert_to_numpy(projection.kernel)[0, 0])
    np.testing.assert_allclose(ops.convert_to_numpy(projection(subsample(x))), expected, rtol=1e-5, atol=1e-6)


def test_residual_kind_can_be_switched_but_not_to_unknown():
    model = AutoencoderDetector(architecture="baselineCAE", input_size=32, channels=1, loss_name="ssim")
    assert model.map_options() == {"residual": "ssim"}
    model.configure_maps(residual="l2")
    assert model.map_options() == {"residual": "l2"}
    with pytest.raises(UserError, match="unknown residual"):
        model.configure_maps(residual="l1")


def test_bad_construction_is_a_clear_error():
    with pytest.raises(UserError, match="divisible by 16"):
        AutoencoderDetector(architecture="mvtecCAE", input_size=40)
    with pytest.raises(UserError, match="unknown loss"):
        AutoencoderDetector(loss_name="l1", input_size=32)
    model = AutoencoderDetector(architecture="baselineCAE", input_size=32, channels=3)
    with pytest.raises(UserError, match="expects"):
        model.anomaly_map(np.zeros((1, 64, 64, 3), np.float32))
