"""Run folders: saved_models/<dataset>/<method>/<timestamp>/{model.keras, run.json, finetune.json}.

`saved_models/latest` points at the last finished run so finetune.py and test.py work without -p.
"""
import functools
import json
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

from processing import atomic
from processing.data import PROJECT_ROOT, CenterCrop, Dataset, native_shape, samples_from_json
from processing.errors import UserError
from processing.tiling import Tiling

SAVED_MODELS = Path("saved_models")
RESULTS = Path("results")
MODEL_FILE, RUN_FILE, FINETUNE_FILE = "model.keras", "run.json", "finetune.json"
FORMAT_VERSION = 1  # of run folders (run.json + model.keras); raise it when older code could not read them


def timestamp():
    return time.strftime("%Y%m%d-%H%M%S")


def new_folder(base, dataset_name, method):
    """A fresh timestamped folder; a suffix keeps two runs in the same second apart."""
    folder = Path(base) / dataset_name / method / timestamp()
    candidate, n = folder, 1
    while candidate.exists():
        candidate, n = folder.with_name(f"{folder.name}-{n}"), n + 1
    try:
        candidate.mkdir(parents=True)
    except OSError as error:
        raise UserError(f"cannot create {candidate}: {error.strerror}; choose a writable folder") from error
    return candidate


def point_latest(run_dir, base=SAVED_MODELS):
    """Atomically repoint saved_models/latest at run_dir (relative link, so the tree can move)."""
    latest = Path(base) / "latest"
    tmp = latest.with_name(f".latest.{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(os.path.relpath(run_dir, latest.parent), tmp)
    os.replace(tmp, latest)


def resolve_model_path(path=None, base=SAVED_MODELS):
    """-p may name model.keras or its run folder; no -p means saved_models/latest."""
    if path is None:
        latest = Path(base) / "latest"
        if not latest.exists():
            raise UserError(f"no trained model found at {latest}; run train.py first or pass -p path/to/model.keras")
        path = latest
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise UserError(f"model file not found: {path}; pass -p with a model.keras written by train.py")
    return path


def versions():
    import keras
    import numpy
    import tensorflow

    return {"python": platform.python_version(), "tensorflow": tensorflow.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__, "machine": machine()}


def machine():
    return (f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} CPU cores, "
            f"{platform.system()} {platform.release()}")


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The processor's name and widest vector extension (e.g. "AMD EPYC, AVX-512"): speeds measured on
    different machines can then be told apart, and virtual machines often report only a family name."""
    try:
        with open(cpuinfo) as handle:
            info = handle.read()
    except OSError:
        return platform.processor() or "unknown processor"
    pairs = (line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}
    name = fields.get("model name", "unknown processor")
    flags = fields.get("flags", "").split()
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return f"{name}, {vectors}" if vectors else name


def command_line():
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def save_model(model, run_dir):
    with atomic.atomic_path(Path(run_dir) / MODEL_FILE) as tmp:
        model.save(tmp)


def read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise UserError(f"{what} not found: {path}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what} {path} is not valid JSON ({error}); re-run the step that writes it") from error


class Run:
    """A trained model with its run.json (and finetune.json, once finetuned)."""

    def __init__(self, model_path):
        self.model_path = Path(model_path)
        self.folder = self.model_path.parent
        self.info = read_json(self.folder / RUN_FILE, "run file (written by train.py beside model.keras)")
        if self.info.get("format_version", 1) > FORMAT_VERSION:
            raise UserError(f"{self.folder} was written by a newer version of this project (format "
                            f"{self.info['format_version']}, this code reads up to {FORMAT_VERSION}); update the code")
        splits = self.info["splits"]
        self.finetune_samples = samples_from_json(splits["finetune"])
        self.evaluation_samples = samples_from_json(splits["evaluation"])
        self.size, self.channels = self.info["input_size"], self.info["channels"]
        self.tiling = Tiling.from_json(self.info.get("tiling"))  # None: trained on whole resized images
        self.center_crop = self.info.get("config", {}).get("center_crop")  # None: whole images

    @functools.cached_property
    def dataset(self):
        """The training dataset, looked up on first use: predict.py runs without it."""
        return Dataset(root=self._dataset_root(), name=self.info["dataset"]["name"],
                       train=samples_from_json(self.info["splits"]["train"]))

    def tiling_for(self, tile=None, overlap=None):
        """The tiling to apply the model with: the run's, unless --tile/--overlap say otherwise (--tile 0: none)."""
        if tile is None and overlap is None:
            return self.tiling
        if tile is None and self.tiling:
            tile = self.tiling.tile
        if tile and tile != self.size:
            raise UserError(f"--tile {tile} does not match the model, which takes {self.size} px tiles; "
                            f"pass --tile {self.size} (or --tile 0 for whole images)")
        if tile and overlap is None and self.tiling:
            overlap = self.tiling.overlap
        return Tiling.from_flags(tile, overlap)

    def working_size(self, tiling):
        """Size test images load at: the input size (a CenterCrop to it if trained so), or with tiling the
        training images' (height, width)."""
        if tiling is None:
            return CenterCrop.keeping(self.center_crop, self.size) if self.center_crop else self.size
        if self.tiling:
            return tuple(self.info["tiling"]["image_size"])
        return native_shape(self.dataset)

    def _dataset_root(self):
        root = Path(self.info["dataset"]["root"])
        if not root.is_absolute():
            root = PROJECT_ROOT / root
        if not root.is_dir():
            raise UserError(f"the dataset this model was trained on is gone: {root}; restore it or retrain")
        return root

    @property
    def method(self):
        return self.info["method"]

    def load_model(self):
        import keras

        from registry import register_all

        register_all()
        try:
            model = keras.saving.load_model(self.model_path, compile=False)
        except (zipfile.BadZipFile, ValueError, KeyError, TypeError, OSError) as error:
            raise UserError(f"cannot load {self.model_path}: it is not a model.keras written by train.py "
                            f"({type(error).__name__}); retrain or pass the right -p") from error
        if getattr(model, "method_name", None) != self.method:
            raise UserError(f"{self.model_path} holds a {getattr(model, 'method_name', type(model).__name__)} model "
                            f"but its run.json says {self.method}; the files come from different runs")
        return model

    def finetune(self):
        path = self.folder / FINETUNE_FILE
        if not path.is_file():
            return None
        info = read_json(path, "finetune file")
        if info.get("model_run") != self.info.get("run_id"):
            raise UserError(f"{path} was written for another model (run {info.get('model_run')}, "
                            f"this model is run {self.info.get('run_id')}); run finetune.py -p {self.model_path} again")
        return info
