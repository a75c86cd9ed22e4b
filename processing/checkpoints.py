"""Per-epoch training checkpoints, so that `train.py --resume` continues a stopped run to the same result.

saved_models/<dataset>/<method>/checkpoint/ holds, after every epoch whose losses are finite (every
`--checkpoint-every` N-th epoch, and the epoch where training stops):

    state-NNNN.npz    every model variable (weights, BatchNorm statistics, random-seed states), every
                      optimizer variable (step count, moments) and early stopping's best weights
    checkpoint.json   epochs done, history so far, early stopping's counters, images/s, the run's flags and
                      the name of its state file; written after the state file, so it always names a
                      complete one

Both are written atomically (temporary file + rename). A run that finishes removes the folder; a run
stopped by Ctrl-C, a crash or a NaN loss keeps its last good checkpoint. One folder per dataset and
method: a fresh run (no --resume) replaces an earlier unfinished run's checkpoint.

A resumed run equals an uninterrupted one because everything that differs between them is restored
here and the data of each epoch depends only on (seed, epoch) (train.py). The method hooks' side of
this contract is in processing/anomaly_model.py.
"""
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np

from processing import atomic
from processing.errors import UserError
from processing.progress import report

FOLDER_NAME = "checkpoint"
INFO_FILE = "checkpoint.json"
FLAGS_THAT_DO_NOT_CHANGE_TRAINING = ("resume", "inspect", "checkpoint_every")


def checkpoint_folder(base, dataset_name, method):
    return Path(base) / dataset_name / method / FOLDER_NAME


def flag_differences(saved, current):
    """'--flag saved -> current' for each train.py flag (a method family's own flags included) that differs."""
    def flat(config):
        config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
        return {**{k: v for k, v in config.items() if k != "options"}, **config.get("options", {})}

    old, new = flat(saved), flat(current)
    return [f"--{name.replace('_', '-')} {old.get(name)} -> {new.get(name)}"
            for name in sorted(old.keys() | new.keys())
            if name not in FLAGS_THAT_DO_NOT_CHANGE_TRAINING and old.get(name) != new.get(name)]


class Checkpoint:
    """The checkpoint folder of one dataset/method."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.info_path = self.folder / INFO_FILE

    def load(self, config):
        """The saved info for --resume, after checking it was written with the same flags as `config`."""
        if not self.info_path.is_file():
            raise UserError(f"nothing to resume: no checkpoint in {self.folder}; train without --resume")
        try:
            info = json.loads(self.info_path.read_text())
            self.state_path(info).stat()
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise UserError(f"the checkpoint in {self.folder} is unreadable ({error}); "
                            "delete the folder and train without --resume") from error
        differences = flag_differences(info["config"], config)
        if differences:
            raise UserError(f"--resume needs the flags of the interrupted run; these differ (checkpoint -> now): "
                            f"{'; '.join(differences)}")
        return info

    def state_path(self, info):
        return self.folder / info["state_file"]

    def save(self, info, arrays):
        """Write the state file, then the info that names it, then drop older state files."""
        state_file = f"state-{info['epoch']:04d}.npz"
        with atomic.atomic_path(self.folder / state_file) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        atomic.write_json(self.info_path, {**info, "state_file": state_file})
        for old in self.folder.glob("state-*.npz"):
            if old.name != state_file:
                old.unlink()

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def _finite(logs):
    return all(math.isfinite(float(value)) for value in logs.values())


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes a checkpoint after every `every`-th epoch with finite losses and after the last one; stops
    training at the first NaN/inf loss.

    Goes last in the callback list, so the state it saves includes what the other callbacks did in the
    epoch (early stopping's counters) and what it restores is not reset by their on_train_begin.
    """

    def __init__(self, checkpoint, config, progress, early_stopping=None, resumed=None, write=True, every=1):
        super().__init__()
        self.every = every
        self.checkpoint, self.config, self.progress = checkpoint, config, progress
        self.early_stopping, self.resumed, self.write = early_stopping, resumed, write
        self.history = {key: list(values) for key, values in (resumed or {}).get("history", {}).items()}
        self.non_finite_epoch = None  # the epoch whose loss became NaN/inf, if one did
        self._epoch, self._best_weights = 0, None
        if resumed:
            progress.images_per_second[:0] = resumed["images_per_second"]

    # ---- state <-> arrays
    def _state_arrays(self):
        arrays = {f"model/{i}": np.asarray(v.numpy()) for i, v in enumerate(self.model.variables)}
        arrays.update({f"optimizer/{i}": np.asarray(v.numpy()) for i, v in enumerate(self.model.optimizer.variables)})
        best = self.early_stopping.best_weights if self.early_stopping else None
        arrays.update({f"best/{i}": np.asarray(w) for i, w in enumerate(best or [])})
        return arrays

    def restore_variables(self):
        """Put the checkpoint's model and optimizer variables back (called before fit, once both exist)."""
        with np.load(self.checkpoint.state_path(self.resumed)) as arrays:
            for prefix, variables in (("model", self.model.variables), ("optimizer", self.model.optimizer.variables)):
                saved = sorted((k for k in arrays.files if k.startswith(prefix + "/")), key=lambda k: int(k.split("/")[1]))
                if len(saved) != len(variables) or any(arrays[k].shape != tuple(v.shape) for k, v in zip(saved, variables)):
                    raise UserError(f"the checkpoint in {self.checkpoint.folder} does not fit this {self.config['method']} "
                                    "model (the code changed since it was written); train without --resume")
                for key, variable in zip(saved, variables):
                    variable.assign(arrays[key])
            n_best = sum(key.startswith("best/") for key in arrays.files)
            self._best_weights = [arrays[f"best/{i}"] for i in range(n_best)] or None

    def on_train_begin(self, logs=None):
        if self.resumed and self.early_stopping:
            state = self.resumed["early_stopping"]
            es = self.early_stopping
            es.wait, es.best, es.best_epoch, es.stopped_epoch = state["wait"], state["best"], state["best_epoch"], state["stopped_epoch"]
            es.best_weights = self._best_weights

    # ---- per batch / epoch
    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.non_finite_epoch = self._epoch
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.non_finite_epoch is not None or not _finite(logs):
            self.non_finite_epoch = epoch
            self.model.stop_training = True
            return
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        last = self.model.stop_training or epoch + 1 == self.params.get("epochs")
        if not self.write or ((epoch + 1) % self.every and not last):
            return
        es = self.early_stopping
        self.checkpoint.save({
            "epoch": epoch + 1,
            "stopped": bool(self.model.stop_training),  # early stopping ended the run here
            "config": self.config,
            "history": self.history,
            "images_per_second": self.progress.images_per_second,
            "early_stopping": es and {"wait": es.wait, "best": es.best, "best_epoch": es.best_epoch,
                                      "stopped_epoch": es.stopped_epoch},
        }, self._state_arrays())

    @property
    def last_good_epoch(self):
        return len(next(iter(self.history.values()), []))


def announce(checkpoint, resumed):
    if resumed:
        report(f"resuming from {checkpoint.folder} after epoch {resumed['epoch']}")
    elif checkpoint.info_path.is_file():
        report(f"an unfinished run's checkpoint in {checkpoint.folder} will be replaced (pass --resume to continue it)")
