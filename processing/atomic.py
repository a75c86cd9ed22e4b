"""Atomic file writes: write to a temporary file beside the target, then rename.

A crash or a full disk never leaves a half-written result in place of an earlier one.
"""
import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path

from processing.errors import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; rename it over `path` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        os.close(handle)
    except OSError as error:
        raise UserError(f"cannot write to {path.parent}: {error.strerror}; "
                        "choose a writable folder or free some space") from error
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}; earlier files were kept") from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_to_builtin) + "\n")


def write_csv(path, rows):
    """A list of dicts with the same keys -> a CSV file with a header row (the keys of the first)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _to_builtin(value):
    """JSON fallback for numpy scalars and arrays and paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
