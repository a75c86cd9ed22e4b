"""DINO-style self-distillation (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers") on the pretrained EfficientNet-Lite embedder, at a scale that trains on a CPU: `-a dino`.

Student and teacher are the same network: the embedder of selfsup/pretrained_ssl.py, mean-pooled, and a
small head (MLP 512-512-128, then cosine logits against 1024 learned prototypes, i.e. DINO's
weight-normalised last layer with its norm fixed to 1). Multi-crop: every image gives 2 global views at
the input size (crops of 40-100 % of the area) and `local_crops` small views (5-40 %, at 3/8 of the
input size). The teacher sees only the global views; the student sees all of them and, for each pair
of a teacher view and a different student view, learns to predict the teacher's distribution:

    loss = mean over pairs of  -sum_k softmax((t - c) / tau_t)_k * log softmax(s / tau_s)_k

Centring (subtracting c, a running mean of the teacher outputs, momentum 0.9) keeps one prototype
from dominating; sharpening (teacher temperature 0.04 < student temperature 0.1) keeps the targets
from becoming uniform. Together they prevent collapse without negatives.

The teacher is not trained by gradients: after every optimizer step its weights become an
exponential moving average of the student's, teacher <- m * teacher + (1 - m) * student, with
m = `teacher_momentum` (0.996, kept constant: CPU schedules are a few hundred steps, too short for
the paper's ramp to 1). Teacher, centre and student are all weights of the model, so model.keras
carries the whole training state. The teacher embedder is the one scored (selfsup/embedding_scoring.py),
as the paper evaluates its teacher. The EMA step extends Keras' TensorFlow `train_step`; training is
supported on the TensorFlow backend (inference on any).
"""
import keras
from keras import layers, ops

from processing.errors import UserError
from selfsup.pretrained_ssl import SIZE_MULTIPLE, PretrainedSelfSupervised, backbone_embedder
from selfsup.views import ViewAugmenter

HEAD_WIDTHS = (512, 512)
BOTTLENECK_DIM = 128
PROTOTYPES = 1024
STUDENT_TEMPERATURE = 0.1
CENTRE_MOMENTUM = 0.9
GLOBAL_CROP_SCALE = (0.4, 1.0)
LOCAL_CROP_SCALE = (0.05, 0.4)
LOCAL_CROP_FRACTION = 3 / 8  # of the input size: 96 px local crops for 256 px images (DINO: 96 / 224)
GLOBAL_VIEWS = 2


@keras.saving.register_keras_serializable(package="selfsup")
class CosineLogits(layers.Layer):
    """(N, d) -> (N, units): cosine similarities between the inputs and `units` learned prototypes."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.prototypes = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform",
                                          name="prototypes")

    def call(self, vectors):
        return ops.matmul(_unit(vectors, axis=-1), _unit(self.prototypes, axis=0))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _unit(x, axis):
    return x / ops.maximum(ops.norm(x, axis=axis, keepdims=True), 1e-12)


def dino_head(input_dim, name):
    """(N, input_dim) embeddings -> (N, PROTOTYPES) logits: GELU MLP, L2-normalised bottleneck, cosine logits."""
    vectors = keras.Input(shape=(input_dim,), name="embedding")
    x = vectors
    for width in HEAD_WIDTHS:
        x = layers.Dense(width, activation="gelu")(x)
    x = layers.Dense(BOTTLENECK_DIM)(x)
    return keras.Model(vectors, CosineLogits(PROTOTYPES)(x), name=name)


def dino_loss(student_logits, teacher_logits, centre, student_temperature, teacher_temperature):
    """Mean cross-entropy from centred, sharpened teacher views to the student's other views.

    student_logits: (V, N, K), views first-global; teacher_logits: (G, N, K) for the G global views,
    in the same order, so pair (g, v) with g == v is the same view and is left out.
    """
    targets = ops.softmax((teacher_logits - centre) / teacher_temperature, axis=-1)
    log_probabilities = ops.log_softmax(student_logits / student_temperature, axis=-1)
    cross_entropy = -ops.mean(ops.einsum("gnk,vnk->gvn", targets, log_probabilities), axis=-1)
    pairs = 1.0 - ops.eye(ops.shape(teacher_logits)[0], ops.shape(student_logits)[0])
    return ops.sum(cross_entropy * pairs) / ops.sum(pairs)


@keras.saving.register_keras_serializable(package="selfsup")
class DINO(PretrainedSelfSupervised):
    method_name = "dino"
    default_epochs = 30
    default_batch_size = 32

    def __init__(self, local_crops=4, teacher_momentum=0.996, teacher_temperature=0.04, **kwargs):
        super().__init__(**kwargs)
        if local_crops < 0:
            raise UserError(f"--dino-local-crops must be 0 or more, got {local_crops}")
        if not 0 <= teacher_momentum <= 1:
            raise UserError(f"--teacher-momentum must be in [0, 1], got {teacher_momentum}")
        if teacher_temperature <= 0:
            raise UserError(f"--teacher-temperature must be positive, got {teacher_temperature}")
        self.local_crops = int(local_crops)
        self.teacher_momentum = float(teacher_momentum)
        self.teacher_temperature = float(teacher_temperature)
        self.student_head = dino_head(self.embedding_dim, "student_head")
        self.teacher_embedder = backbone_embedder(self.backbone, name="teacher_embedder")
        self.teacher_head = dino_head(self.embedding_dim, "teacher_head")
        for teacher, student in ((self.teacher_embedder, self.embedder), (self.teacher_head, self.student_head)):
            teacher.set_weights(student.get_weights())
            teacher.trainable = False
        self.centre = self.add_weight(shape=(PROTOTYPES,), initializer="zeros", trainable=False, name="centre")
        local_size = max(SIZE_MULTIPLE, round(self.input_size * LOCAL_CROP_FRACTION / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        self.global_views = ViewAugmenter(self.input_size, GLOBAL_CROP_SCALE, seed=self.seed)
        self.local_views = ViewAugmenter(local_size, LOCAL_CROP_SCALE, seed=self.seed + 100)

    def get_config(self):
        return {**super().get_config(), "local_crops": self.local_crops, "teacher_momentum": self.teacher_momentum,
                "teacher_temperature": self.teacher_temperature}

    @property
    def scoring_embedder(self):
        return self.teacher_embedder

    def _student(self, views, training):
        return self.student_head(ops.mean(self.embedder(views, training=training), axis=(1, 2)), training=training)

    def call(self, images, training=False):
        """(student logits (V, N, K) of all views, teacher logits (2, N, K) of the global views)."""
        rgb = self.rgb(images)
        n = ops.shape(rgb)[0]
        # One batched augmenter call per crop kind: each copy of an image gets its own random draws.
        global_views = self.global_views(ops.tile(rgb, (GLOBAL_VIEWS, 1, 1, 1)))
        student = [self._student(global_views, training)]
        if self.local_crops:
            student.append(self._student(self.local_views(ops.tile(rgb, (self.local_crops, 1, 1, 1))), training))
        teacher = self.teacher_head(ops.mean(self.teacher_embedder(global_views), axis=(1, 2)))
        return (ops.reshape(ops.concatenate(student, axis=0), (GLOBAL_VIEWS + self.local_crops, n, PROTOTYPES)),
                ops.stop_gradient(ops.reshape(teacher, (GLOBAL_VIEWS, n, PROTOTYPES))))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        student, teacher = y_pred
        loss = dino_loss(student, teacher, self.centre, STUDENT_TEMPERATURE, self.teacher_temperature)
        if training:
            batch_centre = ops.mean(ops.reshape(teacher, (-1, PROTOTYPES)), axis=0)
            self.centre.assign(CENTRE_MOMENTUM * self.centre + (1 - CENTRE_MOMENTUM) * batch_centre)
        return loss

    def train_step(self, data):
        logs = super().train_step(data)
        self.update_teacher()
        return logs

    def update_teacher(self):
        """teacher <- m * teacher + (1 - m) * student, weight by weight."""
        momentum = self.teacher_momentum
        for teacher, student in ((self.teacher_embedder, self.embedder), (self.teacher_head, self.student_head)):
            for teacher_weight, student_weight in zip(teacher.weights, student.weights):
                teacher_weight.assign(momentum * teacher_weight + (1 - momentum) * student_weight)
