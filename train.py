"""Train an anomaly-detection method on the normal images (train/good) of a dataset.

    python3 train.py                                   # built-in synthetic dataset, patchcore
    python3 train.py -d mvtec_ad/bottle --data-root ../shared/data -a resnetCAE -l l2 -c grayscale
    python3 train.py -a mvtecCAE --resume              # continue a stopped run from its last checkpoint

Methods trained by gradient checkpoint after every epoch (processing/checkpoints.py); NaN/inf losses
stop the run, keeping the last good checkpoint; --distribute trains on several devices or machines.
"""
import argparse
import contextlib
import functools
import time
import uuid
from dataclasses import asdict, dataclass, field, fields

import processing.environment  # noqa: F401  (first: sets what numpy, TensorFlow and Keras read, loads TensorFlow quietly)
from processing.errors import CommandLineParser, UserError, cli_entry

INSPECTED_NORMAL_IMAGES = 64  # training images behind the -i plots of a method (e.g. a t-SNE)
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
    center_crop: float | None  # --center-crop: the part of each image side kept (data.CenterCrop)
    tile: int | None  # --tile: the model trains on tiles of this size of the images at their own resolution
    overlap: int | None
    seed: int
    inspect: bool
    learning_rate: float | None
    patience: int
    validation_fraction: float | None
    finetune_fraction: float
    latent_dim: int | None
    backbone: str
    distribute: str = "none"  # processing/distribution.py
    resume: bool = False
    checkpoint_every: int = 1  # epochs between checkpoints (processing/checkpoints.py)
    options: dict = field(default_factory=dict)  # the method family's own flags (registry.ARGUMENT_GROUPS)

    @property
    def channels(self):
        return 3 if self.color == "rgb" else 1


def parse_args(argv=None):
    from processing.distribution import STRATEGIES
    from registry import add_method_arguments, method_names

    parser = CommandLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", default="synthetic",
                        help="folder in MVTec layout, a name under --data-root, or 'synthetic' (default)")
    parser.add_argument("--data-root", default=None, help="where -d names are looked up (default: $ANOMALY_DATA_ROOT or datasets/)")
    parser.add_argument("-a", "--method", default=DEFAULT_METHOD, help=f"one of: {', '.join(method_names())}")
    parser.add_argument("-c", "--color", choices=("rgb", "grayscale"), default="rgb")
    parser.add_argument("-l", "--loss", choices=("ssim", "mssim", "l2"), default="ssim", help="autoencoder loss")
    parser.add_argument("-b", "--batch-size", type=int, default=None, help="default: the method's (16 for autoencoders)")
    parser.add_argument("-e", "--epochs", type=int, default=None,
                        help="maximum epochs (early stopping may end sooner); default: the method's (50 for autoencoders)")
    parser.add_argument("--size", type=int, default=None,
                        help="input size in pixels (default: the images' own size, times --center-crop)")
    parser.add_argument("--center-crop", type=float, default=None, metavar="FRACTION",
                        help="keep only the central FRACTION of each image side, for training and evaluation "
                             "(0.875 = anomalib's 256 -> 224 crop); defects in the cut border go unseen")
    parser.add_argument("--tile", type=int, default=None,
                        help="train on overlapping tiles of this size (the input size) of the full-size images")
    parser.add_argument("--overlap", type=int, default=None, help="overlap of neighbouring tiles in pixels (default: tile / 4)")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and splits")
    parser.add_argument("-i", "--inspect", action="store_true",
                        help="save PNGs of what the model does: validation maps (and reconstructions), "
                             "t-SNE of embeddings for cutpaste and mae")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the method's (1e-3 for autoencoders)")
    parser.add_argument("--patience", type=int, default=8, help="early stopping patience on validation loss")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="part of train/good held out for validation; default: the method's (0.1 for autoencoders)")
    parser.add_argument("--finetune-fraction", type=float, default=0.3,
                        help="part of the test set used to choose the threshold (the rest evaluates it)")
    parser.add_argument("--latent-dim", type=int, default=None, help="autoencoder code size (default per architecture)")
    parser.add_argument("--backbone", choices=("lite0", "lite1", "lite2"), default="lite0",
                        help="pretrained EfficientNet-Lite for the methods built on one")
    parser.add_argument("--distribute", choices=STRATEGIES, default="none",
                        help="mirrored: all local GPUs; multiworker: several machines via TF_CONFIG (-b is the global batch)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stopped run of this dataset and method from its last checkpoint (same flags)")
    parser.add_argument("--checkpoint-every", type=int, default=1,
                        help="write the resume checkpoint every N epochs (and when training stops)")
    add_method_arguments(parser)
    args = vars(parser.parse_args(argv))
    for name in ("batch_size", "epochs", "checkpoint_every"):
        if args[name] is not None and args[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("validation_fraction", "finetune_fraction"):
        if args[name] is not None and not 0 <= args[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1)")
    common = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in common},
                       options={k: v for k, v in args.items() if k not in common})


def apply_method_defaults(config, model):
    """Fill the flags left unset with the method's own defaults (recorded in run.json as used); the
    epochs come later, from default_epochs_for(the number of training images)."""
    for name in ("batch_size", "learning_rate", "validation_fraction"):
        if getattr(config, name) is None:
            setattr(config, name, getattr(model, f"default_{name}"))


def resolve_sizes(config, dataset, tiling):
    """Set the model's input size (and the overlap used) in `config`; return the size images load at:
    the input size, a data.CenterCrop to it, or with tiling the first training image's own (height, width)."""
    from processing import data

    if tiling is None and config.center_crop is not None:
        config.size = config.size or int(round(data.native_size(dataset) * config.center_crop))
        return data.CenterCrop.keeping(config.center_crop, config.size)
    if tiling is None:
        config.size = config.size or data.native_size(dataset)
        return config.size
    if config.size is not None:
        raise UserError("--size and --tile exclude each other: with --tile the model's input size is the tile size")
    if config.center_crop is not None:
        raise UserError("--center-crop and --tile exclude each other: tiles cover the whole image; drop one")
    image_size = data.native_shape(dataset)
    if min(image_size) < tiling.tile:
        raise UserError(f"--tile {tiling.tile} is larger than the training images ({image_size[0]}x{image_size[1]} px); "
                        "choose a smaller tile")
    config.size, config.overlap = tiling.tile, tiling.overlap
    return image_size


def epoch_pipelines(model, items, n_items, config, first_epoch):
    """Batches of epochs first_epoch..epochs-1, one pass each, built by the method's training_data hook.

    Epoch e is shuffled with data.epoch_seed(seed, e), and the hook runs right after
    keras.utils.set_random_seed of that seed, so the order and any randomness created in the hook depend
    on (seed, e) only, not on how many epochs ran in this process: a resumed run sees the same batches.
    Returns (first epoch's pipeline, all of them in a row).
    """
    import keras
    import tensorflow as tf

    from processing import data

    def one_epoch(epoch):
        seed = data.epoch_seed(config.seed, epoch)
        keras.utils.set_random_seed(seed)
        order = items.shuffle(n_items, seed=seed, reshuffle_each_iteration=False)
        return model.training_data(order.batch(config.batch_size))

    epochs = [one_epoch(epoch) for epoch in range(first_epoch, config.epochs)]
    return epochs[0], functools.reduce(tf.data.Dataset.concatenate, epochs).prefetch(tf.data.AUTOTUNE)


def number_of_batches(pipeline):
    count = int(pipeline.cardinality())
    return count if count >= 0 else int(pipeline.reduce(0, lambda n, _: n + 1))  # a hook that hides the count


@contextlib.contextmanager
def out_of_memory_hint(config):
    """Out of memory in training or calibration -> one line that suggests a smaller batch."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.ResourceExhaustedError, MemoryError) as error:
        raise UserError(f"out of memory with batch size {config.batch_size} at {config.size} px; "
                        f"pass a smaller -b (e.g. -b {max(1, config.batch_size // 2)})") from error


def fit(model, items, n_items, val_ds, config, checkpoint, resumed=None, write_checkpoints=True, tiles_per_image=1):
    """Gradient training with the method's optimizer and hooks, checkpointed after every epoch.

    `items` are the cached training images (or tiles, `tiles_per_image` of each image: images/s counts
    images). A resumed run restores the checkpoint instead of running prepare_training. Returns (history, images/s per epoch) of all epochs, resumed ones included.
    """
    import keras

    from processing.checkpoints import EpochCheckpoint
    from processing.progress import EpochProgress

    first_epoch = (config.epochs if resumed["stopped"] else resumed["epoch"]) if resumed else 0
    # With no epoch left (stopped after the last checkpoint), fit runs no epoch but still ends training
    # as before: early stopping puts its best weights back.
    first_pipeline, train_ds = epoch_pipelines(model, items, n_items, config, min(first_epoch, config.epochs - 1))
    steps_per_epoch = number_of_batches(first_pipeline)
    model.compile(optimizer=model.make_optimizer(config.learning_rate, steps_per_epoch, config.epochs))
    if not model.built:
        model.build((None, config.size, config.size, config.channels))
    model.optimizer.build(model.trainable_variables)  # its variables must exist to be restored
    progress = EpochProgress(model.images_per_epoch(n_items) / tiles_per_image, config.epochs)
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss" if val_ds is not None else "loss",
                                                   patience=config.patience, restore_best_weights=True) \
        if model.early_stopping else None
    saver = EpochCheckpoint(checkpoint, asdict(config), progress, early_stopping, resumed, write_checkpoints,
                            every=config.checkpoint_every)
    saver.set_model(model)
    if resumed:
        saver.restore_variables()
    else:
        model.prepare_training(first_pipeline)
    callbacks = [progress, *model.training_callbacks(), *filter(None, [early_stopping]), saver]
    with out_of_memory_hint(config):
        model.fit(train_ds, validation_data=val_ds, initial_epoch=first_epoch, epochs=config.epochs,
                  steps_per_epoch=steps_per_epoch, callbacks=callbacks, shuffle=False, verbose=0)
    if saver.non_finite_epoch is not None:
        kept = (f"the checkpoint of epoch {saver.last_good_epoch} is kept in {checkpoint.folder}"
                if saver.last_good_epoch else "no epoch finished")
        raise UserError(f"the loss became NaN/inf in epoch {saver.non_finite_epoch + 1}: training stopped and no "
                        f"model was saved ({kept}); lower --learning-rate (now {config.learning_rate:g}) and train again")
    return saver.history, progress.images_per_second


def train(config):
    import keras
    import tensorflow as tf

    from processing import checkpoints, data, distribution, runs
    from processing.plots import plot_training_curves, save_image_grid
    from processing.progress import report
    from processing.tiling import Tiling
    from registry import build_method

    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    root, name = data.resolve_dataset(config.dataset, config.data_root)
    dataset = data.scan_dataset(root, name)
    data.check_images(dataset, dataset.train + dataset.test)
    tiling = Tiling.from_flags(config.tile, config.overlap)
    image_size = resolve_sizes(config, dataset, tiling)
    strategy = distribution.make_strategy(config.distribute)
    with strategy.scope():  # variables created in the scope are mirrored across the replicas
        model = build_method(config.method, config)
    apply_method_defaults(config, model)
    if not model.trains_by_gradient and (config.distribute != "none" or config.resume):
        raise UserError(f"{config.method} has no training epochs: --distribute and --resume apply to methods "
                        "trained by gradient; drop them")
    if config.batch_size < strategy.num_replicas_in_sync:
        raise UserError(f"-b {config.batch_size} is smaller than the {strategy.num_replicas_in_sync} replicas of "
                        f"--distribute {config.distribute}; -b is the global batch, pass at least that many")
    if len(dataset.train) < model.min_train_images:
        raise UserError(f"{config.method} needs at least {model.min_train_images} training images, "
                        f"{dataset.root / 'train' / 'good'} has {len(dataset.train)}; add more normal images")
    train_samples, val_samples = data.split_train_validation(dataset.train, config.validation_fraction, config.seed)
    if config.epochs is None:
        config.epochs = model.default_epochs_for(len(train_samples))
    checkpoint = checkpoints.Checkpoint(checkpoints.checkpoint_folder(runs.SAVED_MODELS, name, config.method))
    resumed = checkpoint.load(asdict(config)) if config.resume else None
    finetune_samples, evaluation_samples = data.split_finetune_evaluation(dataset.test, config.finetune_fraction, config.seed)
    tiles_per_image = tiling.count(*image_size) if tiling else 1
    resolution = f"{image_size[0]}x{image_size[1]}px in {tiles_per_image} tiles of {config.size}px" if tiling \
        else f"{config.size}px"
    if config.center_crop is not None:
        resolution += f" (the central {config.center_crop:g} of {image_size.resize[0]}px images)"
    report(f"dataset {name}: {len(train_samples)} train, {len(val_samples)} validation, "
           f"{len(finetune_samples)} finetune, {len(evaluation_samples)} evaluation images at {resolution} {config.color}")

    val_ds = data.image_dataset(dataset, val_samples, image_size, config.channels, config.batch_size,
                                tiling=tiling) if val_samples else None

    history, images_per_second = {}, []
    if model.trains_by_gradient:
        checkpoints.announce(checkpoint, resumed)
        items, n_items = data.cached_items(dataset, train_samples, image_size, config.channels, tiling)
        with strategy.scope():
            history, images_per_second = fit(model, items, n_items, val_ds, config, checkpoint, resumed,
                                             write_checkpoints=distribution.writes_files(strategy),
                                             tiles_per_image=tiles_per_image)
    train_seconds = time.perf_counter() - started
    if not distribution.writes_files(strategy):
        report("this worker is done; the chief worker calibrates and saves the model")
        return None

    calibrate_started = time.perf_counter()
    with out_of_memory_hint(config):
        model.calibrate(data.image_dataset(dataset, train_samples, image_size, config.channels, config.batch_size,
                                           tiling=tiling))
    calibrate_seconds = time.perf_counter() - calibrate_started

    # Created only now, so a run that fails never leaves a half-filled folder behind.
    run_dir = runs.new_folder(runs.SAVED_MODELS, name, config.method)
    if history:
        plot_training_curves(run_dir / "training_curves.png", history, title=f"{config.method} on {name}")
    if config.inspect:
        first_batch = next(iter(data.image_dataset(dataset, val_samples or train_samples[:8], image_size,
                                                   config.channels, 8, tiling=tiling)))
        save_image_grid(run_dir / "inspect_validation.png", model.inspection_rows(first_batch.numpy()))
        if tiling is None:  # whole images, so that every picture has one label
            normal_images, _ = data.load_arrays(dataset, train_samples[:INSPECTED_NORMAL_IMAGES], image_size,
                                                config.channels)
            test_images, _ = data.load_arrays(dataset, finetune_samples, image_size, config.channels)
            model.inspection_plots(run_dir, normal_images, test_images, [s.defect for s in finetune_samples])

    runs.save_model(model, run_dir)
    runs.atomic.write_json(run_dir / runs.RUN_FILE, {
        "run_id": uuid.uuid4().hex,
        "format_version": runs.FORMAT_VERSION,
        "method": config.method,
        "command": runs.command_line(),
        "config": asdict(config),
        "input_size": config.size,
        "tiling": {**tiling.to_json(), "image_size": list(image_size)} if tiling else None,
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
    checkpoint.remove()
    report(f"saved {run_dir / runs.MODEL_FILE} ({time.perf_counter() - started:.0f} s); next: python3 finetune.py")
    return run_dir


@cli_entry
def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
