"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"): `-a simclr`.

Two random views of every training image (selfsup/views.py) go through the pretrained EfficientNet-Lite
embedder (selfsup/pretrained_ssl.py, mean-pooled to one vector per view) and a projector MLP
512-512-256-128 with BatchNorm, ReLU and dropout. The NT-Xent loss pulls the two projections of an
image together and pushes them away from the 2N - 2 projections of the other images of the batch,
at temperature 0.07 (`--temperature`).

The projector only serves the pretext task; the embedder's patch and image embeddings are scored by
the detectors of selfsup/embedding_scoring.py (`--detector`, kNN cosine k=5 by default).

The contrastive task needs many negatives, hence the default batch of 256 images (512 views). At
256 px that needs several GB of memory: on a CPU pass a smaller batch (e.g. `-b 32`) or `--size 128`.
"""
import keras
from keras import layers, ops

from processing.errors import UserError
from selfsup.pretrained_ssl import PretrainedSelfSupervised
from selfsup.views import ViewAugmenter

PROJECTOR_WIDTHS = (512, 512, 256)
PROJECTION_DIM = 128
PROJECTOR_DROPOUT = 0.1


def projector(input_dim):
    """(N, input_dim) -> (N, 128): Dense-BatchNorm-ReLU-Dropout blocks, then a linear projection."""
    vectors = keras.Input(shape=(input_dim,), name="embedding")
    x = vectors
    for width in PROJECTOR_WIDTHS:
        x = layers.Dense(width, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Dropout(PROJECTOR_DROPOUT)(x)
    return keras.Model(vectors, layers.Dense(PROJECTION_DIM)(x), name="projector")


def nt_xent(projections, temperature):
    """NT-Xent loss of (2N, d) projections whose rows i and i + N are the two views of image i.

    Each row's cosine similarities to the other 2N - 1 rows, divided by the temperature, are the logits
    of a softmax whose target is the row's partner; the loss is the mean cross-entropy over all 2N rows.
    """
    z = projections / ops.maximum(ops.norm(projections, axis=1, keepdims=True), 1e-12)
    count = ops.shape(z)[0]
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    logits = ops.where(ops.eye(count, dtype="bool"), -1e9, logits)  # a row is not its own candidate
    partners = (ops.arange(count) + count // 2) % count
    return ops.mean(keras.losses.sparse_categorical_crossentropy(partners, logits, from_logits=True))


@keras.saving.register_keras_serializable(package="selfsup")
class SimCLR(PretrainedSelfSupervised):
    method_name = "simclr"
    default_epochs = 30
    default_batch_size = 256

    def __init__(self, temperature=0.07, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise UserError(f"--temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.projector = projector(self.embedding_dim)
        self.views = ViewAugmenter(self.input_size, seed=self.seed)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}

    def call(self, images, training=False):
        """(2N, 128) projections of two random views of each image: views i and i + N come from image i."""
        rgb = self.rgb(images)
        views = self.views(ops.concatenate([rgb, rgb], axis=0))  # one batched call: each copy gets its own draws
        embeddings = ops.mean(self.embedder(views, training=training), axis=(1, 2))
        return self.projector(embeddings, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return nt_xent(y_pred, self.temperature)
