"""Small vector helpers shared by the cosine-based detectors."""
import numpy as np


def l2_normalize(X):
    """Rows of X scaled to unit length; all-zero rows stay zero (they have no direction)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.finfo(X.dtype).tiny)
