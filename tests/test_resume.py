"""Checkpoint / --resume / NaN stop of train.py (processing/checkpoints.py), on a tiny CAE."""
import json

import keras
import numpy as np
import pytest

import train
from autoencoder.model import AutoencoderDetector
from processing import data

FLAGS = ["-a", "mvtecCAE", "--size", "64", "-e", "3", "-b", "8", "--seed", "4"]


def checkpoint_of(dataset):
    return f"saved_models/{data.resolve_dataset(str(dataset))[1]}/mvtecCAE/checkpoint"


def run_cli(argv, capsys):
    try:
        result, code = train.main(argv), 0
    except SystemExit as exit_:
        result, code = None, exit_.code
    return result, code, capsys.readouterr().err


class StopAtEpoch(keras.callbacks.Callback):
    """Ctrl-C as the given epoch begins, i.e. right after the previous epoch's checkpoint was written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _model_and_run(run_dir):
    return keras.saving.load_model(run_dir / "model.keras", compile=False), json.loads((run_dir / "run.json").read_text())


def test_resumed_run_equals_an_uninterrupted_one(workdir, small_synthetic, monkeypatch, capsys):
    dataset = ["-d", str(small_synthetic)]
    checkpoint = workdir / checkpoint_of(small_synthetic)
    uninterrupted_dir = train.main(dataset + FLAGS)
    assert not checkpoint.exists()  # a finished run removes its checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(AutoencoderDetector, "training_callbacks", lambda self: [StopAtEpoch(2)])
        _, code, err = run_cli(dataset + FLAGS, capsys)
    assert code == 130 and "interrupted" in err
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    assert info["epoch"] == 2 and len(info["history"]["loss"]) == 2
    assert [p.name for p in checkpoint.glob("state-*.npz")] == ["state-0002.npz"]

    # Different flags are refused, naming each one, and leave the checkpoint as it was.
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    _, code, err = run_cli(dataset + FLAGS + ["-b", "4", "--learning-rate", "0.01", "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--batch-size 8 -> 4" in err and "--learning-rate 0.001 -> 0.01" in err
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before

    resumed_dir = train.main(dataset + FLAGS + ["--resume"])
    assert not checkpoint.exists()
    (uninterrupted, run), (resumed, resumed_run) = _model_and_run(uninterrupted_dir), _model_and_run(resumed_dir)
    assert len(resumed_run["history"]["loss"]) == 3
    np.testing.assert_allclose(resumed_run["history"]["loss"], run["history"]["loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed_run["history"]["val_loss"], run["history"]["val_loss"], rtol=1e-6)
    for a, b in zip(uninterrupted.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    images, _ = data.load_arrays(data.scan_dataset(small_synthetic), data.scan_dataset(small_synthetic).test[:4], 64, 3)
    np.testing.assert_allclose(uninterrupted.anomaly_map(images), resumed.anomaly_map(images), atol=1e-5)


def test_checkpoints_every_n_epochs_and_resume_accepts_another_n(workdir, small_synthetic, monkeypatch, capsys):
    dataset = ["-d", str(small_synthetic)]
    info_file = workdir / checkpoint_of(small_synthetic) / "checkpoint.json"
    seen = []

    class WatchCheckpoint(StopAtEpoch):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(json.loads(info_file.read_text())["epoch"] if info_file.exists() else None)
            super().on_epoch_begin(epoch, logs)

    with monkeypatch.context() as patch:
        patch.setattr(AutoencoderDetector, "training_callbacks", lambda self: [WatchCheckpoint(2)])
        _, code, _ = run_cli(dataset + FLAGS + ["--checkpoint-every", "2"], capsys)
    assert code == 130 and seen == [None, None, 2]  # nothing after epoch 1, the checkpoint after epoch 2
    resumed_dir = train.main(dataset + FLAGS + ["--checkpoint-every", "1", "--resume"])
    assert len(_model_and_run(resumed_dir)[1]["history"]["loss"]) == 3
    _, code, err = run_cli(dataset + FLAGS + ["--checkpoint-every", "0"], capsys)
    assert code == 2 and "--checkpoint-every must be at least 1" in err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(workdir, small_synthetic, monkeypatch, capsys):
    built = []
    original = AutoencoderDetector.training_data

    def poison_second_epoch(self, batches):
        built.append(len(built))
        batches = original(self, batches)
        return batches.map(lambda x: x * np.float32("nan")) if len(built) == 2 else batches

    monkeypatch.setattr(AutoencoderDetector, "training_data", poison_second_epoch)
    _, code, err = run_cli(["-d", str(small_synthetic)] + FLAGS, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "loss became NaN/inf in epoch 2" in err and "checkpoint of epoch 1 is kept" in err
    checkpoint = workdir / checkpoint_of(small_synthetic)
    assert json.loads((checkpoint / "checkpoint.json").read_text())["epoch"] == 1
    assert not list(workdir.glob("saved_models/**/model.keras"))  # no model with NaN weights


def test_resume_without_a_checkpoint_is_a_clear_error(workdir, small_synthetic, capsys):
    _, code, err = run_cli(["-d", str(small_synthetic)] + FLAGS + ["--resume"], capsys)
    assert code == 2 and err.startswith("error: nothing to resume") and len(err.strip().splitlines()) == 1
