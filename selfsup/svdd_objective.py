"""The Deep SVDD objective (Ruff et al. 2018, "Deep One-Class Classification"): the hypersphere centre,
the soft-boundary radius, both losses, and the callback that refits the radius during training.

Distances here are *squared* Euclidean distances ||phi(x) - c||^2 of an image's embedding(s) to c.

* one-class:      mean over images of d(x)                         (weight decay comes from the optimizer)
* soft-boundary:  R^2 + 1/nu * mean over images of max(0, d(x) - R^2)

R is not learned by gradient: as in the paper it is set to the (1 - nu) quantile of the training
distances (the value that minimises the soft-boundary loss for fixed weights), so that a fraction
nu of the normal training images lies outside the sphere.
"""
import keras
import numpy as np
from keras import ops

ONE_CLASS = "one-class"
SOFT_BOUNDARY = "soft-boundary"
OBJECTIVES = (ONE_CLASS, SOFT_BOUNDARY)

# A centre coordinate near 0 can be matched trivially by zeroing the last layer's weights for it
# (Ruff et al., section 3.3); 0.1 is the reference implementation's eps.
CENTRE_EPS = 0.1


def centre_from_mean(mean_embedding, eps=CENTRE_EPS):
    """c from the mean initial embedding: components with |c_i| < eps become -eps or +eps by their sign
    (an exact 0 becomes +eps, where the reference code would leave it at 0)."""
    mean_embedding = np.asarray(mean_embedding, np.float32)
    pushed = np.where(mean_embedding < 0, -eps, eps)
    return np.where(np.abs(mean_embedding) < eps, pushed, mean_embedding).astype(np.float32)


def radius_from_distances(squared_distances, nu):
    """R such that R^2 is the (1 - nu) quantile (linear interpolation) of the squared distances."""
    return float(np.sqrt(np.quantile(np.asarray(squared_distances, np.float64), 1 - nu)))


def svdd_loss(objective, squared_distances, radius, nu):
    """Mean loss of a batch of per-image squared distances under `objective` (see the module docstring)."""
    if objective == ONE_CLASS:
        return ops.mean(squared_distances)
    radius_squared = ops.square(radius)
    return radius_squared + ops.mean(ops.relu(squared_distances - radius_squared)) / nu


class RadiusUpdate(keras.callbacks.Callback):
    """Calls `update()` after every `every`-th epoch (none when `every` is None) and once when training
    ends, so that the stored R always belongs to the final weights."""

    def __init__(self, update, every=None):
        super().__init__()
        self.update, self.every = update, every

    def on_epoch_end(self, epoch, logs=None):
        if self.every and (epoch + 1) % self.every == 0:
            self.update()

    def on_train_end(self, logs=None):
        self.update()
