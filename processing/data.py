"""MVTec-layout folders -> file lists, seeded splits and tf.data pipelines.

Layout: train/good/*.png, test/<defect or good>/*.png, ground_truth/<defect>/<stem>_mask.png.
Images load as float32 in [0, 1] at the method's input size, in RGB or grayscale.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from processing.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DATA_ROOT_ENV = "ANOMALY_DATA_ROOT"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = "datasets"
SYNTHETIC = "synthetic"
GOOD = "good"


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset root, so run files stay valid if the root moves
    defect: str  # "good" or the defect type
    mask: str | None = None

    @property
    def label(self):
        return int(self.defect != GOOD)


@dataclass
class Dataset:
    root: Path
    name: str
    train: list = field(default_factory=list)
    test: list = field(default_factory=list)

    def absolute(self, relative):
        return str(self.root / relative)


def default_data_root():
    return os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)


def resolve_dataset(name_or_path, data_root=None):
    """Return (root folder, dataset name) for `-d`: the built-in synthetic set, a path, or a name under the data root."""
    if name_or_path == SYNTHETIC:
        from processing.synthetic import generate_synthetic_dataset

        return generate_synthetic_dataset(PROJECT_ROOT / DEFAULT_DATA_ROOT / SYNTHETIC), SYNTHETIC
    data_root = Path(data_root or default_data_root())
    candidate = Path(name_or_path)
    for root in (candidate, data_root / candidate):
        if root.is_dir():
            return root.resolve(), _dataset_name(root.resolve(), data_root)
    raise UserError(f"dataset folder not found: '{name_or_path}' (also looked in '{data_root / candidate}'); "
                    f"pass a folder in MVTec layout with -d, or a name under --data-root")


def _dataset_name(root, data_root):
    try:
        return str(root.relative_to(data_root.resolve()))
    except ValueError:
        return f"{root.parent.name}/{root.name}" if root.parent.name else root.name


def _images_in(folder):
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as error:
        raise UserError(f"cannot read {folder}: {error.strerror}; check that the folder is readable") from error


def scan_dataset(root, name=None):
    """List train and test samples of an MVTec-layout folder, checking masks exist."""
    root = Path(root)
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        raise UserError(f"{root} has no train/good folder; expected MVTec layout "
                        "(train/good, test/<defect>, ground_truth/<defect>)")
    train = [Sample(str(p.relative_to(root)), GOOD) for p in _images_in(train_dir)]
    if not train:
        raise UserError(f"{train_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                        "put the normal training images there")
    test = []
    test_dir = root / "test"
    if test_dir.is_dir():
        for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
            for path in _images_in(defect_dir):
                test.append(_test_sample(root, defect_dir.name, path))
    return Dataset(root=root, name=name or root.name, train=train, test=test)


def _test_sample(root, defect, path):
    if defect == GOOD:
        return Sample(str(path.relative_to(root)), GOOD)
    mask = root / "ground_truth" / defect / f"{path.stem}_mask.png"
    if not mask.is_file():
        raise UserError(f"mask missing for {path.relative_to(root)}: expected {mask.relative_to(root)}")
    return Sample(str(path.relative_to(root)), defect, str(mask.relative_to(root)))


def check_images(dataset, samples):
    """Fail early with the file's name if an image or mask does not decode or sizes differ."""
    for sample in samples:
        size = _decoded_size(dataset.root / sample.path)
        if sample.mask is not None:
            mask_size = _decoded_size(dataset.root / sample.mask)
            if mask_size != size:
                raise UserError(f"mask {sample.mask} is {mask_size[0]}x{mask_size[1]} but its image "
                                f"{sample.path} is {size[0]}x{size[1]}; masks must match their images")


def _decoded_size(path):
    try:
        with Image.open(path) as image:
            image.load()  # load() decodes everything, so truncated files fail here, not in tf.data
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UserError(f"cannot decode image {path}: {error}; remove or replace the file") from error


def native_size(dataset):
    """Side of the first training image: the default input size, so nothing is resized by default."""
    return min(native_shape(dataset))


def native_shape(dataset):
    """(height, width) of the first training image: the working resolution of tiled runs."""
    width, height = _decoded_size(dataset.root / dataset.train[0].path)
    return height, width


# ---------------------------------------------------------------- splits

def split_train_validation(samples, validation_fraction, seed):
    """Seeded split of train/good into train and validation (at least one of each when possible)."""
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = int(round(validation_fraction * len(samples)))
    n_val = min(max(n_val, 1 if len(samples) > 1 and validation_fraction > 0 else 0), len(samples) - 1)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    return train, [s for i, s in enumerate(samples) if i in val_idx]


def split_finetune_evaluation(samples, finetune_fraction, seed):
    """Disjoint finetune/evaluation split of the test set, stratified by defect type and seeded."""
    rng = np.random.default_rng(seed)
    finetune, evaluation = [], []
    for defect in sorted({s.defect for s in samples}):
        group = [s for s in samples if s.defect == defect]
        order = rng.permutation(len(group))
        n_finetune = int(round(finetune_fraction * len(group)))
        if len(group) >= 2:  # keep every defect type on both sides when it has two images
            n_finetune = min(max(n_finetune, 1), len(group) - 1)
        chosen = set(order[:n_finetune].tolist())
        finetune += [s for i, s in enumerate(group) if i in chosen]
        evaluation += [s for i, s in enumerate(group) if i not in chosen]
    return finetune, evaluation


def samples_to_json(samples):
    return [{"path": s.path, "defect": s.defect, "mask": s.mask} for s in samples]


def samples_from_json(items):
    return [Sample(item["path"], item["defect"], item["mask"]) for item in items]


# ---------------------------------------------------------------- tf.data

@dataclass(frozen=True)
class CenterCrop:
    """Images resized to `resize` (height, width), then only their central `crop` (height, width) kept:
    anomalib's Resize + CenterCrop (256 -> 224 for PatchCore and PaDiM). Masks are cropped alike, so
    the outer ring of every image is neither seen by the model nor evaluated."""
    resize: tuple
    crop: tuple

    @classmethod
    def keeping(cls, fraction, crop_side):
        """The central `fraction` of each side, resized so that it is `crop_side` px square."""
        if not 0 < fraction <= 1:
            raise UserError(f"--center-crop must be in (0, 1], the part of each side kept; got {fraction:g}")
        side = int(round(crop_side / fraction))
        return cls((side, side), (crop_side, crop_side))

    @property
    def offset(self):
        """(top, left) of the kept part in the resized image."""
        return (self.resize[0] - self.crop[0]) // 2, (self.resize[1] - self.crop[1]) // 2

    def box(self, height, width):
        """(top, left, bottom, right) of the kept part in the pixels of an image of (height, width)."""
        scale_y, scale_x = height / self.resize[0], width / self.resize[1]
        top, left = self.offset
        return (round(top * scale_y), round(left * scale_x),
                round((top + self.crop[0]) * scale_y), round((left + self.crop[1]) * scale_x))

    def apply(self, image):
        """Crop an (H, W, ...) tensor or array already resized to `resize`."""
        top, left = self.offset
        return image[top:top + self.crop[0], left:left + self.crop[1]]


def pixel_shape(size):
    """(height, width) of a size given as one side (square), as (height, width) or as a CenterCrop (its crop)."""
    if isinstance(size, CenterCrop):
        return size.crop
    return (size, size) if np.ndim(size) == 0 else tuple(size)


def decode_image(path, channels):
    """float32 (H, W, channels) in [0, 1] at the file's own size. 8- and 16-bit, palette, grey+alpha and RGBA
    files all load (alpha is dropped; 16-bit values are scaled by 65535); TIFF goes through PIL."""
    import tensorflow as tf

    def with_tf():
        return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False, dtype=tf.float32)

    def with_pil():
        image = tf.numpy_function(lambda p: _pil_decode(p, channels), [path], tf.float32, stateful=False)
        image.set_shape((None, None, channels))
        return image

    return tf.cond(tf.strings.regex_full_match(tf.strings.lower(path), r".*\.tiff?"), with_pil, with_tf)


def _pil_decode(path, channels):
    path = np.asarray(path).item()  # bytes from tf.data, str in eager calls
    with Image.open(path.decode() if isinstance(path, bytes) else path) as image:
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: PIL's convert("L") would clip, not scale
            grey = np.asarray(image, np.float32)[..., None] / 65535
            return np.repeat(grey, channels, axis=-1)
        return np.asarray(image.convert("RGB" if channels == 3 else "L"), np.float32).reshape(
            image.height, image.width, channels) / 255


def resize_image(image, size):
    """Resize to `size` (a side, (height, width) or a CenterCrop): bilinear, antialiased, clipped to [0, 1]."""
    import tensorflow as tf

    if isinstance(size, CenterCrop):
        return size.apply(resize_image(image, size.resize))
    height, width = pixel_shape(size)
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    image.set_shape((height, width, image.shape[-1]))
    return tf.clip_by_value(image, 0.0, 1.0)


def _decode(path, channels, size):
    return resize_image(decode_image(path, channels), size)


def _decode_mask(path, size):
    import tensorflow as tf

    if isinstance(size, CenterCrop):
        return size.apply(_decode_mask(path, size.resize))
    height, width = pixel_shape(size)
    mask = tf.image.resize(decode_image(path, 1), (height, width), method="nearest")
    mask.set_shape((height, width, 1))
    return mask[..., 0] > 0.5


def cached_items(dataset, samples, size, channels, tiling=None):
    """(tf.data of decoded images, or of their tiles with a `tiling`, cached in memory; number of items)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices([dataset.absolute(s.path) for s in samples])
    ds = ds.map(lambda p: _decode(p, channels, size), num_parallel_calls=tf.data.AUTOTUNE)
    n_items = len(samples)
    if tiling is not None:
        ds = ds.map(tiling.split_tensor, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        n_items *= tiling.count(*pixel_shape(size))
    return ds.cache(), n_items


def epoch_seed(seed, epoch):
    """The seed of one training epoch: a function of (seed, epoch) only, so a resumed run repeats its epochs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def image_dataset(dataset, samples, size, channels, batch_size, shuffle=False, seed=0, repeat_as_target=False,
                  tiling=None):
    """tf.data of float32 images in [0, 1]; `repeat_as_target` yields (x, x) pairs for autoencoders.

    `size` is a side or (height, width). With a `tiling` the images are cut into its tiles (at `size`)
    and the dataset yields tiles instead of whole images.
    """
    import tensorflow as tf

    ds, n_items = cached_items(dataset, samples, size, channels, tiling)
    if shuffle:
        ds = ds.shuffle(n_items, seed=seed, reshuffle_each_iteration=True)
    if repeat_as_target:
        ds = ds.map(lambda x: (x, x))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_arrays(dataset, samples, size, channels):
    """Images (N, H, W, C) float32 and masks (N, H, W) bool, aligned with `samples`; `size` as in pixel_shape."""
    import tensorflow as tf

    images = np.stack([_decode(dataset.absolute(s.path), channels, size).numpy() for s in samples]) \
        if samples else np.zeros((0, *pixel_shape(size), channels), np.float32)
    masks = np.zeros((len(samples), *pixel_shape(size)), bool)
    for i, sample in enumerate(samples):
        if sample.mask is not None:
            masks[i] = _decode_mask(tf.constant(dataset.absolute(sample.mask)), size).numpy()
    return images, masks
