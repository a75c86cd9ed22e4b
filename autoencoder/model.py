"""AutoencoderDetector: any CAE architecture + a reconstruction loss, behind the method contract.

The anomaly map is the residual map between an image and its reconstruction.
"""
import keras
from keras import ops

from autoencoder import baseline_cae, inception_cae, losses, mvtec_cae, resnet_cae, skip_cae
from processing.anomaly_model import AnomalyModel
from processing.errors import UserError

ARCHITECTURES = {
    "mvtecCAE": mvtec_cae,
    "baselineCAE": baseline_cae,
    "inceptionCAE": inception_cae,
    "resnetCAE": resnet_cae,
    "skipCAE": skip_cae,
}
DEFAULT_LATENT = {"mvtecCAE": 100}  # latent vector size; the others use a 16-channel spatial code
SPATIAL_LATENT_CHANNELS = 16


@keras.saving.register_keras_serializable(package="autoencoder")
class AutoencoderDetector(AnomalyModel):
    def __init__(self, architecture="mvtecCAE", loss_name="ssim", residual=None, latent_dim=None, **kwargs):
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise UserError(f"unknown autoencoder '{architecture}'; choose one of {', '.join(ARCHITECTURES)}")
        if loss_name not in losses.LOSSES:
            raise UserError(f"unknown loss '{loss_name}'; choose one of {', '.join(losses.LOSSES)}")
        module = ARCHITECTURES[architecture]
        if self.input_size % module.DOWNSAMPLING:
            raise UserError(f"{architecture} needs an input size divisible by {module.DOWNSAMPLING}, "
                            f"got {self.input_size}; pass e.g. --size {self.input_size // module.DOWNSAMPLING * module.DOWNSAMPLING or module.DOWNSAMPLING}")
        self.architecture = architecture
        self.loss_name = loss_name
        self.residual = residual or ("l2" if loss_name == "l2" else "ssim")
        self.latent_dim = int(latent_dim or DEFAULT_LATENT.get(architecture, SPATIAL_LATENT_CHANNELS))
        self.autoencoder = module.build(self.input_size, self.channels, self.latent_dim)

    @property
    def method_name(self):
        return self.architecture

    def get_config(self):
        return {**super().get_config(), "architecture": self.architecture, "loss_name": self.loss_name,
                "residual": self.residual, "latent_dim": self.latent_dim}

    def call(self, images, training=False):
        return self.autoencoder(images, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # The target is the input itself, so datasets yield images only.
        return losses.reconstruction_loss(self.loss_name, x, y_pred)

    def configure_maps(self, residual=None, **options):
        super().configure_maps(**options)
        if residual is not None:
            if residual not in losses.RESIDUALS:
                raise UserError(f"unknown residual map '{residual}'; choose one of {', '.join(losses.RESIDUALS)}")
            self.residual = residual

    def map_options(self):
        return {"residual": self.residual}

    def reconstruct(self, images):
        return self.in_batches(lambda batch: ops.convert_to_numpy(self(batch)), images)

    def graph_maps(self, images):
        return losses.residual_map(self.residual, images, self(images))

    def inspection_rows(self, images):
        images = self.check_images(images)
        reconstructions = self.reconstruct(images)
        maps = self.anomaly_map(images)
        return [list(row) for row in zip(images, reconstructions, maps)]
