"""Process settings read once, when numpy, TensorFlow and Keras are first imported: every entry
point (the CLI scripts, bench/, tests/conftest.py) imports this module before anything else.

NUMPY_MADVISE_HUGEPAGE=0: numpy asks Linux for transparent huge pages for every array of 4 MiB or
more, and the kernel then has to find and zero 2 MiB pages (compacting memory when it is
fragmented) each time such an array is allocated. Inference allocates tens of MiB of patch features
and distance blocks per batch, and on a 2-core VM that kernel time made PatchCore's nearest-neighbour
search up to 2.5x slower (magnetic_tile, image-score bank: 21 -> 29 images/s end to end without it).
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
