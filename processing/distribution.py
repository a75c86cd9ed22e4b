"""`train.py --distribute`: the tf.distribute strategy the model is built, compiled and trained under.

    none         one device (TensorFlow's default placement)
    mirrored     MirroredStrategy: one replica per local GPU (per logical CPU device on a machine without
                 GPUs), variables mirrored, gradients all-reduced every step
    multiworker  MultiWorkerMirroredStrategy: the same across machines; each machine runs the same
                 train.py command with its own TF_CONFIG (cluster addresses + its task index)

Two machines, each running (index 0 on the first, 1 on the second; index 0 is the chief, which alone
writes checkpoints and the model, so keep saved_models/ on a folder both can read for --resume):

    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, "task": {"type": "worker", "index": 0}}' \
        python3 train.py -d mvtec_ad/bottle -a mvtecCAE --distribute multiworker -b 32

-b is the global batch: Keras fit splits every batch of the tf.data pipeline across the replicas, and
AnomalyModel divides each replica's loss by the replica count, so that the summed update equals a
single-device step on the whole batch (up to BatchNorm, whose statistics stay per replica).
"""
import json
import os

from processing.errors import UserError

STRATEGIES = ("none", "mirrored", "multiworker")


def make_strategy(name):
    """The strategy for a --distribute value (one of STRATEGIES; "none": TensorFlow's default strategy)."""
    import tensorflow as tf

    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
    if name == "multiworker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if raw is None:
        return  # a single worker: the strategy runs on this machine alone
    try:
        cluster = json.loads(raw)
        cluster["cluster"], cluster["task"]["type"], cluster["task"]["index"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        f'"task": {{"type": "worker", "index": 0}}}} ({type(error).__name__}: {error})') from error


def writes_files(strategy):
    """Only one worker (the chief) writes checkpoints and the trained model; every worker reads them."""
    return strategy.extended.should_checkpoint

