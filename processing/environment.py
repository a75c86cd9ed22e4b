"""Process settings read once, when numpy, TensorFlow and Keras are first imported: every entry
point (the CLI scripts, bench/, tests/conftest.py) imports this module before anything else.

NUMPY_MADVISE_HUGEPAGE=0: numpy asks Linux for transparent huge pages for every array of 4 MiB or
more, and the kernel then has to find and zero 2 MiB pages (compacting memory when it is
fragmented) each time such an array is allocated. Inference allocates tens of MiB of patch features
and distance blocks per batch, and on a 2-core VM that kernel time made PatchCore's nearest-neighbour
search up to 2.5x slower (magnetic_tile, image-score bank: 21 -> 29 images/s end to end without it).

TensorFlow is imported here, quietly: its C++ library prints an informational notice ("oneDNN
custom operations are on", each after "All log messages before absl::InitializeLog() ...") straight
to the stderr file descriptor while it loads, before TF_CPP_MIN_LOG_LEVEL takes effect, so every
command used to open with four lines of noise. They are held back unless TF_CPP_MIN_LOG_LEVEL is 0
(asking for every log line); anything else TensorFlow writes while loading is passed on.
"""
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

LOADING_NOTICES = ("All log messages before absl::InitializeLog() is called are written to STDERR",
                   "oneDNN custom operations are on")


def without_loading_notices(text):
    """`text` less the lines that carry one of TensorFlow's LOADING_NOTICES."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(notice in line for notice in LOADING_NOTICES))


def _import_tensorflow_quietly():
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved_stderr = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  (loaded for its side effect: the notices go to `captured`)
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            sys.stderr.write(without_loading_notices(captured.read().decode(errors="replace")))


if "tensorflow" not in sys.modules and os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("", "0"):
    _import_tensorflow_quietly()
