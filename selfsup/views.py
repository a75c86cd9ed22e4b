"""Random augmented views of a batch of images, for contrastive (SimCLR) and self-distillation (DINO) training.

One `ViewAugmenter` call turns (N, S, S, 3) RGB images in [0, 1] into N new views, each drawn independently:
random resized crop -> flips -> small rotation -> colour jitter (p 0.8) -> grayscale (p 0.2) -> Gaussian
blur (p 0.5), the SimCLR recipe (Chen et al. 2020) with milder colour changes, since colour itself can be
the defect in industrial images. Every step works on the whole batch with `keras.random` and `keras.ops`
(no per-image Python), so the same layer runs inside `train_step` or in a `tf.data` map. Keras core has
the flip, rotation, jitter, grayscale and blur layers; it lacks a random resized crop and a "random apply",
which are the two small pieces written here.

Views are seeded: two augmenters built with the same seed produce the same sequence of views, and
successive calls of one augmenter produce different views.

Keras' colour layers read a single float f as "sample in [0, f]", which for saturation always
desaturates (0.5 means no change): every range below is therefore a (low, high) tuple.
"""
import math

import keras
from keras import layers, ops

CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of the crop box, sampled log-uniformly (as torchvision)
ROTATION_TURNS = 0.05  # up to +-18 degrees
JITTER_PROBABILITY = 0.8
BRIGHTNESS = (-0.2, 0.2)  # added, as a fraction of the value range
CONTRAST = (0.3, 0.3)  # contrast factor in [0.7, 1.3]
SATURATION = (0.35, 0.65)  # 0.5 = unchanged
HUE = (0.0, 0.1)  # shift of up to +-0.05 of the hue circle
GRAYSCALE_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.1, 1.0)  # Keras' RandomGaussianBlur accepts sigma in [0, 1] only
BLUR_KERNEL = 5  # covers +-2 sigma at the largest sigma


@keras.saving.register_keras_serializable(package="selfsup")
class RandomResizedCrop(layers.Layer):
    """Crop a random box of `scale` (fraction of the image area) and CROP_RATIO aspect, resized to `output_size`.

    All boxes of a batch become one batched affine transform (`ops.image.affine_transform` maps each
    output pixel to its place in the box, bilinear), followed by a resize when `output_size` differs
    from the input size.
    """

    def __init__(self, output_size, scale=(0.2, 1.0), seed=None, **kwargs):
        super().__init__(**kwargs)
        self.output_size = int(output_size)
        self.scale = tuple(scale)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "scale": self.scale, "seed": self.seed}

    def call(self, images):
        shape = ops.shape(images)
        n, height, width = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
        area = keras.random.uniform((n,), *self.scale, seed=self.seed_generator)
        log_ratio = keras.random.uniform((n,), math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]),
                                         seed=self.seed_generator)
        box_width = ops.minimum(ops.sqrt(area * ops.exp(log_ratio)), 1.0) * width
        box_height = ops.minimum(ops.sqrt(area / ops.exp(log_ratio)), 1.0) * height
        left = keras.random.uniform((n,), seed=self.seed_generator) * (width - box_width)
        top = keras.random.uniform((n,), seed=self.seed_generator) * (height - box_height)
        zeros = ops.zeros_like(left)
        # Rows [a0, a1, a2, b0, b1, b2, c0, c1]: output (x, y) samples the input at (a0 x + a2, b1 y + b2).
        transform = ops.stack([box_width / width, zeros, left, zeros, box_height / height, top, zeros, zeros], axis=1)
        crops = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")
        if images.shape[1] == self.output_size and images.shape[2] == self.output_size:
            return crops
        return ops.image.resize(crops, (self.output_size, self.output_size), interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, input_shape[3])


@keras.saving.register_keras_serializable(package="selfsup")
class ViewAugmenter(layers.Layer):
    """(N, S, S, 3) RGB images in [0, 1] -> (N, output_size, output_size, 3) random views in [0, 1].

    Always augments (also outside training): a view is what the pretext task is about, so validation
    losses are measured on views too.
    """

    def __init__(self, output_size, crop_scale=(0.2, 1.0), seed=None, **kwargs):
        super().__init__(**kwargs)
        self.output_size = int(output_size)
        self.crop_scale = tuple(crop_scale)
        self.seed = seed
        # Each random layer gets its own seed, so no two draw the same numbers.
        seeds = [None] * 6 if seed is None else [seed + offset for offset in range(6)]
        self.crop = RandomResizedCrop(output_size, crop_scale, seed=seeds[0])
        self.flip = layers.RandomFlip("horizontal_and_vertical", seed=seeds[1])
        self.rotation = layers.RandomRotation(ROTATION_TURNS, fill_mode="reflect", seed=seeds[2])
        self.jitter = layers.RandomColorJitter(value_range=(0, 1), brightness_factor=BRIGHTNESS,
                                               contrast_factor=CONTRAST, saturation_factor=SATURATION,
                                               hue_factor=HUE, seed=seeds[3])
        self.grayscale = layers.RandomGrayscale(GRAYSCALE_PROBABILITY, seed=seeds[4])
        self.blur = layers.RandomGaussianBlur((BLUR_PROBABILITY, BLUR_PROBABILITY), kernel_size=BLUR_KERNEL,
                                              sigma=BLUR_SIGMA, value_range=(0, 1), seed=seeds[5])
        self.jitter_choice = keras.random.SeedGenerator(None if seed is None else seed + len(seeds))

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "crop_scale": self.crop_scale,
                "seed": self.seed}

    def call(self, images):
        views = self.crop(images)
        views = self.flip(views, training=True)
        views = self.rotation(views, training=True)
        views = apply_randomly(self.jitter(views, training=True), views, JITTER_PROBABILITY, self.jitter_choice)
        views = self.grayscale(views, training=True)
        views = self.blur(views, training=True)
        return ops.clip(views, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, input_shape[3])


def apply_randomly(augmented, original, probability, seed_generator):
    """Per image, `augmented` with the given probability, else `original` (Keras core has no RandomApply)."""
    chosen = keras.random.uniform((ops.shape(original)[0], 1, 1, 1), seed=seed_generator) < probability
    return ops.where(chosen, augmented, original)
