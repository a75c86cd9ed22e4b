"""Checks shared by all detectors; each raises UserError with a message the user can act on."""
import numbers

import numpy as np

from processing.errors import UserError


def check_features(X, what="features"):
    """Return X as a finite, non-empty (n_samples, n_features) float32 array."""
    try:
        X = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise UserError(f"{what} must be a numeric array: {error}") from None
    if X.ndim != 2 or 0 in X.shape:
        raise UserError(f"{what} must be a non-empty (n_samples, n_features) array; got shape {X.shape}")
    finite = np.isfinite(X)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise UserError(
            f"{what} contain NaN or infinite values in {len(bad_rows)} of {len(X)} rows "
            f"(first: row {bad_rows[0]})"
        )
    return X


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"{name} must be a positive integer; got {value!r}")


def check_choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise UserError(f"{name} must be a number in (0, 1]; got {value!r}")
