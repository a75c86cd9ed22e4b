"""The built-in synthetic dataset: brass flanges on brushed steel, in the MVTec AD folder layout.

It lets the whole pipeline run on a fresh machine without a download. Every image is drawn from
its own random stream (seed, split, class, index), so a dataset is byte-identical for a given seed
and any single image can be re-rendered on its own, with or without its defect.

A scene is kept as layers (background, part, part coverage, sensor noise) and composed per pixel.
Defects repaint the part layer or its coverage through an alpha array; the ground-truth mask is
that alpha's footprint, so it holds exactly the pixels a defect can change.
"""
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from processing.errors import UserError

DEFECT_TYPES = ("scratch", "blob", "missing", "discolouration")
SPLITS = ("train", "test")
METADATA_FILE = "synthetic.json"
# Bump whenever the rendering changes, so that stale datasets are regenerated.
GENERATOR_VERSION = 1

# Defect area as a fraction of the image: small, but clearly visible.
MIN_DEFECT_AREA = 0.003
MAX_DEFECT_AREA = 0.04
# Faint anti-aliased fringes are cut off so that every mask pixel is visibly changed.
MIN_ALPHA = 0.25

# Layers are float32: twice as fast as float64 and far more precise than the 8-bit output.
STEEL_TINT = np.array([0.93, 0.97, 1.03], dtype=np.float32)
BRASS_TINT = np.array([1.0, 0.80, 0.50], dtype=np.float32)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclasses.dataclass
class Scene:
    """Layers of one image; float RGB in [0, 1] unless noted."""
    background: np.ndarray  # (H, W, 3), shadow of the part included
    part: np.ndarray        # (H, W, 3)
    coverage: np.ndarray    # (H, W) in [0, 1]: how much of each pixel the part covers
    noise: np.ndarray       # (H, W, 3) sensor noise, added last
    center: np.ndarray      # (2,) part centre (y, x) in pixels
    outer_radius: float
    inner_radius: float


@dataclasses.dataclass
class Sample:
    clean: np.ndarray  # uint8 image rendered without the defect
    image: np.ndarray  # uint8 image as written to disk
    mask: np.ndarray   # bool (H, W): pixels the defect changed; all False for good images


def generate_synthetic_dataset(out_dir, seed=0, image_size=128, n_train=96, n_test_good=24,
                               n_test_per_defect=12, color=True):
    """Write the dataset to `out_dir` (MVTec layout) and return its Path.

    Reuses an existing dataset generated with the same parameters. The files are generated in a
    temporary folder beside `out_dir` that is renamed into place only when complete.
    """
    out_dir = Path(out_dir)
    params = _parameters(seed, image_size, n_train, n_test_good, n_test_per_defect, color)
    if _read_metadata(out_dir) == params:
        return out_dir
    _check_replaceable(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    except OSError as error:
        raise UserError(f"cannot write the synthetic dataset to {out_dir.parent}: "
                        f"{error.strerror}; choose a writable folder") from error
    try:
        _write_dataset(staging, params)
        _move_into_place(staging, out_dir, params)
    except OSError as error:
        raise UserError(f"cannot write the synthetic dataset to {out_dir}: {error.strerror}; "
                        "free some space or choose another folder") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def render_sample(seed, split, defect, index, image_size=128, color=True):
    """Render one image of the dataset, along with its defect-free version and its mask.

    `defect` is "good" or one of DEFECT_TYPES. The clean version comes from the same random draw,
    so `image` and `clean` differ only inside `mask`.
    """
    scene_seed, defect_seed = _sample_seed(seed, split, defect, index).spawn(2)
    scene = _render_scene(np.random.default_rng(scene_seed), image_size)
    clean = _compose(scene, color)
    if defect == "good":
        return Sample(clean, clean, np.zeros((image_size, image_size), dtype=bool))
    defective, mask = _apply_defect(scene, defect, np.random.default_rng(defect_seed))
    return Sample(clean, _compose(defective, color), mask)


def _parameters(seed, image_size, n_train, n_test_good, n_test_per_defect, color):
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    if image_size < 32:
        raise UserError(f"synthetic image size must be at least 32 pixels, got {image_size}")
    counts = {"n_train": n_train, "n_test_good": n_test_good,
              "n_test_per_defect": n_test_per_defect}
    for name, count in counts.items():
        if count < 1:
            raise UserError(f"synthetic {name} must be at least 1, got {count}")
    return {"generator": "synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
            "image_size": int(image_size), **{k: int(v) for k, v in counts.items()},
            "color": bool(color), "defect_types": list(DEFECT_TYPES)}


def _read_metadata(out_dir):
    try:
        return json.loads((out_dir / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None


def _check_replaceable(out_dir):
    """Only an earlier synthetic dataset or an empty folder may be replaced: never user data."""
    if not out_dir.exists() or _read_metadata(out_dir) is not None:
        return
    if not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise UserError(f"{out_dir} exists and is not a synthetic dataset; "
                        "remove it or choose another folder")


def _write_dataset(root, params):
    size, color, seed = params["image_size"], params["color"], params["seed"]
    jobs = [("train", "good", params["n_train"]), ("test", "good", params["n_test_good"])]
    jobs += [("test", defect, params["n_test_per_defect"]) for defect in DEFECT_TYPES]
    for split, defect, count in jobs:
        for index in range(count):
            sample = render_sample(seed, split, defect, index, size, color)
            _save_png(root / split / defect / f"{index:03d}.png", sample.image)
            if defect != "good":
                mask = sample.mask.astype(np.uint8) * 255
                _save_png(root / "ground_truth" / defect / f"{index:03d}_mask.png", mask)
    # Written last: its presence marks a complete dataset.
    (root / METADATA_FILE).write_text(json.dumps(params, indent=2) + "\n")


def _save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    # The fastest compression: the sensor noise barely compresses anyway.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _move_into_place(staging, out_dir, params):
    """Rename the finished dataset to `out_dir`, replacing an outdated one or an empty folder."""
    trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    try:
        if out_dir.exists():
            os.replace(out_dir, trash / "dataset")
        try:
            os.replace(staging, out_dir)
        except OSError:
            # Another process finished the same dataset first: keep theirs.
            if _read_metadata(out_dir) != params:
                raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _sample_seed(seed, split, defect, index):
    classes = ("good",) + DEFECT_TYPES
    if split not in SPLITS or defect not in classes:
        raise ValueError(f"unknown split/class {split}/{defect}")
    key = (SPLITS.index(split), classes.index(defect), index)
    return np.random.SeedSequence(seed, spawn_key=key)


def _compose(scene, color):
    coverage = scene.coverage[..., None]
    rgb = scene.background * (1 - coverage) + scene.part * coverage + scene.noise
    if not color:
        rgb = rgb @ LUMA
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


# --- the normal scene ---------------------------------------------------------------------------

def _render_scene(rng, size):
    """Brushed-steel background and a brass flange whose pose and lighting vary slightly."""
    yy, xx = _pixel_centres(size)
    center = (size / 2 + rng.uniform(-0.025, 0.025, 2) * size).astype(np.float32)
    angle = rng.uniform(-0.15, 0.15)  # radians: about +-9 degrees
    light = rng.uniform(-0.5, 0.5) - np.pi / 4  # light from the upper left
    exposure = rng.uniform(0.92, 1.08)
    outer_radius = size * rng.uniform(0.29, 0.31)
    inner_radius = size * 0.11

    dy, dx = yy - center[0], xx - center[1]
    radius = np.hypot(dy, dx)
    coverage = _flange_coverage(yy, xx, center, radius, angle, outer_radius, inner_radius, size)

    background = _brushed_steel(rng, size, yy, exposure)
    # A soft shadow cast away from the light.
    offset = -_direction(light) * size * 0.02
    shadow = ndimage.gaussian_filter(ndimage.shift(coverage, offset, order=1), size * 0.02)
    background = background * (1 - 0.45 * shadow)[..., None]

    part = _brass(rng, size, dy, dx, radius, light, outer_radius, inner_radius, exposure)
    noise = 0.01 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return Scene(background, part, coverage, noise, center, outer_radius, inner_radius)


def _flange_coverage(yy, xx, center, radius, angle, outer_radius, inner_radius, size):
    """Anti-aliased disc with a centre hole, four bolt holes and a key notch that shows rotation."""
    coverage = _inside(outer_radius - radius) * _inside(radius - inner_radius)
    for k in range(4):
        hole = center + 0.2 * size * _direction(angle + k * np.pi / 2)
        coverage *= _inside(np.hypot(yy - hole[0], xx - hole[1]) - 0.032 * size)
    notch = center + outer_radius * _direction(angle + np.pi / 4)
    coverage *= _inside(np.hypot(yy - notch[0], xx - notch[1]) - 0.04 * size)
    return coverage


def _brushed_steel(rng, size, yy, exposure):
    # Noise smeared along x gives the brushing; coarse noise gives uneven wear.
    streaks = ndimage.gaussian_filter1d(rng.standard_normal((size, size), dtype=np.float32), 0.5,
                                        axis=0, mode="wrap")
    streaks = _normalised(_smooth(streaks, size / 10, axis=1))
    mottling = rng.standard_normal((size, size), dtype=np.float32)
    mottling = _smooth(_smooth(mottling, size / 8, axis=0), size / 8, axis=1)
    mottling = _normalised(mottling)
    gradient = rng.uniform(-0.05, 0.05) * (yy / size - 0.5)
    gray = exposure * (0.42 + 0.03 * streaks + 0.025 * mottling + gradient)
    return gray[..., None] * STEEL_TINT


def _brass(rng, size, dy, dx, radius, light, outer_radius, inner_radius, exposure):
    # Concentric turning marks: 1-D noise along the radius.
    profile = rng.standard_normal(size, dtype=np.float32)
    profile = _normalised(ndimage.gaussian_filter1d(profile, 0.8))
    turning = np.interp(radius, np.arange(size) * 0.5, profile).astype(np.float32)
    light_y, light_x = _direction(light)
    towards_light = (dy * light_y + dx * light_x) / outer_radius
    # The chamfered edges catch less light.
    edges = (np.exp(-(outer_radius - radius) / (0.02 * size))
             + np.exp(-(radius - inner_radius) / (0.015 * size)))
    gray = exposure * (0.72 + 0.12 * towards_light + 0.03 * turning - 0.18 * np.clip(edges, 0, 1))
    return gray[..., None] * BRASS_TINT


# --- defects ------------------------------------------------------------------------------------

def _apply_defect(scene, defect, rng):
    """Return a copy of the scene with one defect, and the defect's mask.

    Shapes are redrawn until the visible area falls inside the stated range.
    """
    size = scene.coverage.shape[0]
    for _ in range(50):
        alpha = _DEFECT_SHAPES[defect](scene, rng, size)
        # float32 like the layers: a zero alpha must leave a pixel's value bit-identical.
        alpha = np.where(alpha >= MIN_ALPHA, np.minimum(alpha, 1), 0).astype(np.float32)
        mask = (alpha > 0) & (scene.coverage > 0)
        if MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA:
            return _DEFECT_PAINTERS[defect](scene, alpha, rng), mask
    raise RuntimeError(f"could not draw a {defect} of the required size")


def _scratch_shape(scene, rng, size):
    """A thin curved line (quadratic Bezier) starting on the part."""
    start = _point_on_part(scene, rng)
    heading = rng.uniform(0, 2 * np.pi)
    length = size * rng.uniform(0.18, 0.32)
    end = start + length * _direction(heading)
    bend = start / 2 + end / 2 + length * rng.uniform(-0.25, 0.25) * _direction(heading + np.pi / 2)
    t = np.linspace(0, 1, int(4 * length))[:, None]
    points = (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t ** 2 * end
    points = np.round(points).astype(int)
    points = points[np.all((points >= 0) & (points < size), axis=1)]
    line = np.ones((size, size), dtype=bool)
    line[points[:, 0], points[:, 1]] = False
    half_width = size * rng.uniform(0.008, 0.014)
    return np.clip(half_width + 0.5 - ndimage.distance_transform_edt(line), 0, 1)


def _blob_shape(scene, rng, size):
    """A stain with an irregular outline."""
    center = _point_on_part(scene, rng)
    return _irregular_disc(center, size * rng.uniform(0.035, 0.065), rng, size, wobble=0.25)


def _missing_shape(scene, rng, size):
    """A chipped-off piece at the outer rim or at the centre hole."""
    rim = scene.outer_radius if rng.random() < 0.7 else scene.inner_radius
    center = scene.center + rim * _direction(rng.uniform(0, 2 * np.pi))
    return _irregular_disc(center, size * rng.uniform(0.06, 0.1), rng, size, wobble=0.3)


def _discolouration_shape(scene, rng, size):
    """A soft-edged elliptical patch."""
    center = _point_on_part(scene, rng)
    yy, xx = _pixel_centres(size)
    axes = size * rng.uniform(0.05, 0.09, 2)
    tilt = rng.uniform(0, np.pi)
    along = (yy - center[0]) * np.sin(tilt) + (xx - center[1]) * np.cos(tilt)
    across = (yy - center[0]) * np.cos(tilt) - (xx - center[1]) * np.sin(tilt)
    distance = np.hypot(along / axes[0], across / axes[1])
    return np.clip(1.6 * (1 - distance ** 2), 0, 1)


def _paint_scratch(scene, alpha, rng):
    a = alpha[..., None]
    if rng.random() < 0.5:
        part = scene.part * (1 - rng.uniform(0.45, 0.6) * a)  # a dark groove
    else:
        part = scene.part + rng.uniform(0.5, 0.7) * a * (1 - scene.part)  # bright bare metal
    return dataclasses.replace(scene, part=part)


def _paint_blob(scene, alpha, rng):
    stains = ((0.20, 0.17, 0.12), (0.50, 0.25, 0.10))  # oil, rust
    stain = np.array(stains[rng.integers(len(stains))], dtype=np.float32)
    a = alpha[..., None] * rng.uniform(0.7, 0.85)
    grain = 1 + 0.1 * rng.standard_normal(alpha.shape, dtype=np.float32)[..., None]
    return dataclasses.replace(scene, part=scene.part * (1 - a) + stain * grain * a)


def _paint_missing(scene, alpha, rng):
    return dataclasses.replace(scene, coverage=scene.coverage * (1 - alpha))


def _paint_discolouration(scene, alpha, rng):
    tints = ((0.75, 0.6, 0.55),   # heat tint
             (0.65, 0.8, 1.05),   # bluish oxidation
             (1.25, 1.25, 1.25))  # polished spot
    tint = np.array(tints[rng.integers(len(tints))], dtype=np.float32)
    factor = 1 + alpha[..., None] * (tint - 1)
    return dataclasses.replace(scene, part=scene.part * factor)


_DEFECT_SHAPES = {"scratch": _scratch_shape, "blob": _blob_shape,
                  "missing": _missing_shape, "discolouration": _discolouration_shape}
_DEFECT_PAINTERS = {"scratch": _paint_scratch, "blob": _paint_blob,
                    "missing": _paint_missing, "discolouration": _paint_discolouration}


# --- geometry helpers ---------------------------------------------------------------------------

def _pixel_centres(size):
    return np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)


def _inside(signed_distance):
    """Anti-aliased coverage of a shape, given the distance to its edge (positive inside)."""
    return np.clip(signed_distance + 0.5, 0, 1)


def _direction(angle):
    """Unit vector (y, x) at `angle` radians from the x axis."""
    return np.array([np.sin(angle), np.cos(angle)], dtype=np.float32)


def _smooth(array, sigma, axis):
    """A wide Gaussian blur, approximated by three box blurs: much faster than the exact one."""
    width = max(1, round(np.sqrt(4 * sigma ** 2 + 1)))
    for _ in range(3):
        array = ndimage.uniform_filter1d(array, width, axis=axis, mode="wrap")
    return array


def _normalised(array):
    return (array - array.mean()) / (array.std() + 1e-12)


def _point_on_part(scene, rng, margin=0.03):
    """A random pixel centre inside the part, at least `margin` * size from its edges."""
    depth = ndimage.distance_transform_edt(scene.coverage > 0.99)
    candidates = np.argwhere(depth > margin * scene.coverage.shape[0])
    return candidates[rng.integers(len(candidates))] + 0.5


def _irregular_disc(center, radius, rng, size, wobble):
    """A disc whose radius varies with angle through a few random harmonics."""
    yy, xx = _pixel_centres(size)
    dy, dx = yy - center[0], xx - center[1]
    harmonics = np.arange(2, 6)
    amplitudes = rng.normal(0, wobble, harmonics.size) / harmonics
    phases = rng.uniform(0, 2 * np.pi, harmonics.size)
    # The outline is tabulated over angle, then looked up per pixel: cheaper than cosines per pixel.
    angles = np.linspace(-np.pi, np.pi, 361)
    outline = radius * (1 + np.cos(np.outer(angles, harmonics) + phases) @ amplitudes)
    return _inside(np.interp(np.arctan2(dy, dx), angles, outline) - np.hypot(dy, dx))

