"""Train an anomaly-detection method on the normal images (train/good) of a dataset.

    python3 train.py                                   # built-in synthetic dataset, patchcore
    python3 train.py -d mvtec_ad/bottle --data-root ../shared/data -a resnetCAE -l l2 -c grayscale
"""
import argparse
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from processing.errors import UserError, cli_entry  # noqa: E402

DEFAULT_METHOD = "patchcore"  # the most accurate method here, and it trains in seconds


@dataclass
class TrainConfig:
    dataset: str
    data_root: str | None
    method: str
    color: str
    loss: str
    batch_size: int | None  # None: the method's default (AnomalyModel.default_*), filled in by train()
    epochs: int | None
    size: int | None
    seed: int
    inspect: bool
    learning_rate: float | None
    patience: int
    validation_fraction: float | None
    finetune_fraction: float
    latent_dim: int | None
    backbone: str
    options: dict = field(default_factory=dict)  # the method family's own flags (registry.ARGUMENT_GROUPS)

    @property
    def channels(self):
        return 3 if self.color == "rgb" else 1


def parse_args(argv=None):
    from registry import add_method_arguments, method_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", default="synthetic",
                        help="folder in MVTec layout, a name under --data-root, or 'synthetic' (default)")
    parser.add_argument("--data-root", default=None, help="where -d names are looked up (default: $ANOMALY_DATA_ROOT or datasets/)")
    parser.add_argument("-a", "--method", default=DEFAULT_METHOD, help=f"one of: {', '.join(method_names())}")
    parser.add_argument("-c", "--color", choices=("rgb", "grayscale"), default="rgb")
    parser.add_argument("-l", "--loss", choices=("ssim", "mssim", "l2"), default="ssim", help="autoencoder loss")
    parser.add_argument("-b", "--batch-size", type=int, default=None, help="default: the method's (16 for autoencoders)")
    parser.add_argument("-e", "--epochs", type=int, default=None,
                        help="maximum epochs (early stopping may end sooner); default: the method's (50 for autoencoders)")
    parser.add_argument("--size", type=int, default=None, help="input size in pixels (default: the images' own size)")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and splits")
    parser.add_argument("-i", "--inspect", action="store_true", help="save validation reconstructions/maps as PNG")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the method's (1e-3 for autoencoders)")
    parser.add_argument("--patience", type=int, default=8, help="early stopping patience on validation loss")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="part of train/good held out for validation; default: the method's (0.1 for autoencoders)")
    parser.add_argument("--finetune-fraction", type=float, default=0.3,
                        help="part of the test set used to choose the threshold (the rest evaluates it)")
    parser.add_argument("--latent-dim", type=int, default=None, help="autoencoder code size (default per architecture)")
    parser.add_argument("--backbone", choices=("lite0", "lite1", "lite2"), default="lite0",
                        help="pretrained EfficientNet-Lite for the methods built on one")
    add_method_arguments(parser)
    args = vars(parser.parse_args(argv))
    for name in ("batch_size", "epochs"):
        if args[name] is not None and args[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("validation_fraction", "finetune_fraction"):
        if args[name] is not None and not 0 <= args[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1)")
    common = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in common},
                       options={k: v for k, v in args.items() if k not in common})


def apply_method_defaults(config, model):
    """Fill the flags left unset with the method's own defaults (recorded in run.json as used)."""
    for name in ("epochs", "batch_size", "learning_rate", "validation_fraction"):
        if getattr(config, name) is None:
            setattr(config, name, getattr(model, f"default_{name}"))


def fit(model, train_ds, val_ds, config, n_train):
    """Gradient training with the method's optimizer and hooks; returns (history, images/s per epoch)."""
    import keras

    from processing.progress import EpochProgress

    steps_per_epoch = -(-n_train // config.batch_size)
    model.compile(optimizer=model.make_optimizer(config.learning_rate, steps_per_epoch, config.epochs))
    train_ds = model.training_data(train_ds)
    model.prepare_training(train_ds)
    progress = EpochProgress(n_train, config.epochs)
    callbacks = [progress, *model.training_callbacks()]
    if model.early_stopping:
        monitor = "val_loss" if val_ds is not None else "loss"
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience,
                                                       restore_best_weights=True))
    result = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                       shuffle=False, verbose=0)  # tf.data already shuffles
    history = {key: [float(v) for v in values] for key, values in result.history.items()}
    return history, progress.images_per_second


def train(config):
    import keras
    import tensorflow as tf

    from processing import data, runs
    from processing.plots import plot_training_curves, save_image_grid
    from processing.progress import report
    from registry import build_method

    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    root, name = data.resolve_dataset(config.dataset, config.data_root)
    dataset = data.scan_dataset(root, name)
    data.check_images(dataset, dataset.train + dataset.test)
    config.size = config.size or data.native_size(dataset)
    model = build_method(config.method, config)
    apply_method_defaults(config, model)
    if len(dataset.train) < model.min_train_images:
        raise UserError(f"{config.method} needs at least {model.min_train_images} training images, "
                        f"{dataset.root / 'train' / 'good'} has {len(dataset.train)}; add more normal images")
    train_samples, val_samples = data.split_train_validation(dataset.train, config.validation_fraction, config.seed)
    finetune_samples, evaluation_samples = data.split_finetune_evaluation(dataset.test, config.finetune_fraction, config.seed)
    report(f"dataset {name}: {len(train_samples)} train, {len(val_samples)} validation, "
           f"{len(finetune_samples)} finetune, {len(evaluation_samples)} evaluation images at {config.size}px {config.color}")

    train_ds = data.image_dataset(dataset, train_samples, config.size, config.channels, config.batch_size,
                                  shuffle=True, seed=config.seed)
    val_ds = data.image_dataset(dataset, val_samples, config.size, config.channels, config.batch_size) if val_samples else None

    history, images_per_second = {}, []
    if model.trains_by_gradient:
        history, images_per_second = fit(model, train_ds, val_ds, config, len(train_samples))
    train_seconds = time.perf_counter() - started

    calibrate_started = time.perf_counter()
    model.calibrate(data.image_dataset(dataset, train_samples, config.size, config.channels, config.batch_size))
    calibrate_seconds = time.perf_counter() - calibrate_started

    # Created only now, so a run that fails never leaves a half-filled folder behind.
    run_dir = runs.new_folder(runs.SAVED_MODELS, name, config.method)
    if history:
        plot_training_curves(run_dir / "training_curves.png", history, title=f"{config.method} on {name}")
    if config.inspect:
        images, _ = data.load_arrays(dataset, val_samples or train_samples[:8], config.size, config.channels)
        save_image_grid(run_dir / "inspect_validation.png", model.inspection_rows(images[:8]))

    runs.save_model(model, run_dir)
    runs.atomic.write_json(run_dir / runs.RUN_FILE, {
        "run_id": uuid.uuid4().hex,
        "method": config.method,
        "command": runs.command_line(),
        "config": asdict(config),
        "input_size": config.size,
        "channels": config.channels,
        "dataset": {"name": name, "root": str(dataset.root)},
        "seed": config.seed,
        "versions": runs.versions(),
        "splits": {key: data.samples_to_json(value) for key, value in (
            ("train", train_samples), ("validation", val_samples),
            ("finetune", finetune_samples), ("evaluation", evaluation_samples))},
        "history": history,
        "train_images_per_second": images_per_second,
        "wall_seconds": {"train": train_seconds, "calibrate": calibrate_seconds,
                         "total": time.perf_counter() - started},
    })
    runs.point_latest(run_dir)
    report(f"saved {run_dir / runs.MODEL_FILE} ({time.perf_counter() - started:.0f} s); next: python3 finetune.py")
    return run_dir


@cli_entry
def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
