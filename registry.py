"""`-a` names -> builders. An unknown name is an error that lists the valid names.

Each builder takes the train.py options (a TrainConfig) and returns an AnomalyModel.
"""
from processing.errors import UserError


def _autoencoder(architecture):
    def build(config):
        from autoencoder.model import AutoencoderDetector

        return AutoencoderDetector(architecture=architecture, loss_name=config.loss, input_size=config.size,
                                   channels=config.channels, latent_dim=config.latent_dim)

    return build


def _patchcore(config):
    from memorybank.patchcore import PatchCore

    return PatchCore(backbone=config.backbone, coreset_ratio=config.coreset_ratio, input_size=config.size,
                     channels=config.channels)


def _padim(config):
    from memorybank.padim import PaDiM

    return PaDiM(backbone=config.backbone, padim_features=config.padim_features, seed=config.seed,
                 input_size=config.size, channels=config.channels)


BUILDERS = {name: _autoencoder(name) for name in ("mvtecCAE", "baselineCAE", "inceptionCAE", "resnetCAE", "skipCAE")}
AUTOENCODERS = tuple(BUILDERS)
BUILDERS.update(patchcore=_patchcore, padim=_padim)


def method_names():
    return tuple(BUILDERS)


def build_method(name, config):
    if name not in BUILDERS:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(method_names())}")
    return BUILDERS[name](config)


def register_all():
    """Import every method class so keras.saving.load_model can find it."""
    import autoencoder.model  # noqa: F401
    import memorybank.padim  # noqa: F401
    import memorybank.patchcore  # noqa: F401
