"""`-a` names -> builders, and the train.py flags that belong to one method family.

Each builder takes the train.py options (a TrainConfig) and returns an AnomalyModel. Flags shared by
several families (backbone, latent size) are TrainConfig fields; a family's own flags are added by
its entry in ARGUMENT_GROUPS and reach the builder as `config.options[...]`. An unknown name is an
error that lists the valid names.
"""
from processing.errors import UserError

AUTOENCODERS = ("mvtecCAE", "baselineCAE", "inceptionCAE", "resnetCAE", "skipCAE")


def _autoencoder(architecture):
    def build(config):
        from autoencoder.model import AutoencoderDetector

        return AutoencoderDetector(architecture=architecture, loss_name=config.loss, input_size=config.size,
                                   channels=config.channels, latent_dim=config.latent_dim)

    return build


def _patchcore(config):
    from memorybank.patchcore import PatchCore

    return PatchCore(backbone=config.backbone, coreset_ratio=config.options["coreset_ratio"],
                     input_size=config.size, channels=config.channels)


def _padim(config):
    from memorybank.padim import PaDiM

    return PaDiM(backbone=config.backbone, padim_features=config.options["padim_features"], seed=config.seed,
                 input_size=config.size, channels=config.channels)


def _memorybank_arguments(parser):
    group = parser.add_argument_group("patchcore / padim")
    group.add_argument("--coreset-ratio", type=float, default=0.1, help="patchcore: fraction of patch features kept")
    group.add_argument("--padim-features", type=int, default=100, help="padim: random feature channels kept")


BUILDERS = {name: _autoencoder(name) for name in AUTOENCODERS}
BUILDERS.update(patchcore=_patchcore, padim=_padim)
ARGUMENT_GROUPS = [_memorybank_arguments]


def method_names():
    return tuple(BUILDERS)


def add_method_arguments(parser):
    for add_group in ARGUMENT_GROUPS:
        add_group(parser)


def build_method(name, config):
    if name not in BUILDERS:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(method_names())}")
    return BUILDERS[name](config)


def register_all():
    """Import every method class so keras.saving.load_model can find it."""
    import autoencoder.model  # noqa: F401
    import memorybank.padim  # noqa: F401
    import memorybank.patchcore  # noqa: F401
