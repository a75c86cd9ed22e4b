"""What SimCLR and DINO share: a trainable pretrained EfficientNet-Lite embedder and the training defaults.

The embedder maps RGB images of any size (a multiple of 16) to a grid of patch embeddings at stride 8:
the stride-8 and stride-16 stages of the backbone, each averaged over its 3x3 neighbourhood (so a patch
also describes its surroundings, as in PatchCore), the coarser one upsampled x2 and the two concatenated
(40 + 112 = 152 channels for Lite0). The image embedding is the mean of that grid, so the vector the
pretext task trains is exactly what the detectors score.

Every convolution of the backbone is fine-tuned; its BatchNormalizations stay frozen at the ImageNet
statistics, because batch statistics of a few CPU-sized batches of one product would be noisier than
the pretrained ones (and a frozen BatchNormalization behaves the same in training and inference).

Training: Adam with the warm-up + cosine schedule of selfsup/schedules.py, no early stopping (a pretext
loss says little about anomaly detection) and no validation split by default (every normal image
trains and calibrates).
"""
import keras
from keras import layers, ops

from backbones.pretrained import feature_extractor
from processing.errors import UserError
from selfsup.embedding_scoring import EmbeddingScoredModel
from selfsup.schedules import warmup_cosine

EMBEDDER_STRIDES = (8, 16)
SIZE_MULTIPLE = EMBEDDER_STRIDES[-1]


def backbone_embedder(variant, name="embedder"):
    """Functional model: (N, S, S, 3) RGB images in [0, 1], any S divisible by 16 -> (N, S/8, S/8, D)."""
    images = keras.Input(shape=(None, None, 3), name="images")
    backbone = feature_extractor(variant, strides=EMBEDDER_STRIDES, trainable=True)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    fine, coarse = backbone(images)
    fine = layers.AveragePooling2D(pool_size=3, strides=1, padding="same")(fine)
    coarse = layers.AveragePooling2D(pool_size=3, strides=1, padding="same")(coarse)
    coarse = layers.UpSampling2D(size=2, interpolation="bilinear")(coarse)
    return keras.Model(images, layers.Concatenate()([fine, coarse]), name=name)


class PretrainedSelfSupervised(EmbeddingScoredModel):
    """Base of SimCLR and DINO: `self.embedder` is trained by the subclass's pretext task and scored."""

    default_learning_rate = 3e-4
    default_validation_fraction = 0.0
    early_stopping = False

    def __init__(self, backbone="lite0", **kwargs):
        super().__init__(**kwargs)
        if self.input_size % SIZE_MULTIPLE:
            raise UserError(f"{self.method_name} needs an input size divisible by {SIZE_MULTIPLE}, got "
                            f"{self.input_size}; pass e.g. --size {max(1, self.input_size // SIZE_MULTIPLE) * SIZE_MULTIPLE}")
        self.backbone = backbone
        self.embedder = backbone_embedder(backbone)
        self.embedding_dim = self.embedder.output.shape[-1]

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}

    def make_optimizer(self, learning_rate, steps_per_epoch, epochs):
        return keras.optimizers.Adam(warmup_cosine(learning_rate, steps_per_epoch, epochs))

    def rgb(self, images):
        """The backbone takes RGB: grayscale images are replicated to three channels."""
        return ops.repeat(images, 3, axis=-1) if self.channels == 1 else images

    @property
    def scoring_embedder(self):
        """The network whose embeddings are scored (DINO scores its teacher)."""
        return self.embedder

    def embeddings(self, images):
        patches = self.scoring_embedder.predict_on_batch(self.rgb(ops.convert_to_tensor(images)))
        return patches, patches.mean(axis=(1, 2))

    @property
    def image_embedding_dim(self):
        return self.embedding_dim

    def _batch_image_embeddings(self, images):
        return self.embeddings(images)[1]

    def graph_embeddings(self, images):
        patches = self.scoring_embedder(self.rgb(images))
        return patches, ops.mean(patches, axis=(1, 2))
