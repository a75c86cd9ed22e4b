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

    options = config.options
    return PatchCore(backbone=config.backbone, feature_strides=options["feature_strides"],
                     feature_stages=options["feature_stages"], score_strides=options["score_strides"],
                     score_stages=options["score_stages"], coreset_ratio=options["coreset_ratio"],
                     coreset_projection=options["coreset_projection"],
                     score_neighbours=options["score_neighbours"], patch_neighbours=options["patch_neighbours"],
                     score_candidates=options["score_candidates"], grid_stride=options["grid_stride"], seed=config.seed,
                     input_normalization=options["input_normalization"], input_size=config.size,
                     channels=config.channels)


def _padim(config):
    from memorybank.padim import PaDiM

    return PaDiM(backbone=config.backbone, feature_strides=config.options["feature_strides"],
                 feature_stages=config.options["feature_stages"], grid_stride=config.options["grid_stride"],
                 padim_features=config.options["padim_features"], deep_features=config.options["padim_deep_features"],
                 embedding=config.options["padim_embedding"], shrinkage=config.options["padim_shrinkage"],
                 input_normalization=config.options["input_normalization"],
                 seed=config.seed, input_size=config.size, channels=config.channels)


def _memorybank_arguments(parser):
    from backbones.efficientnet_lite import INPUT_NORMALIZATIONS
    from memorybank.padim import EMBEDDINGS

    group = parser.add_argument_group("patchcore / padim")
    group.add_argument("--feature-strides", type=int, nargs="+", default=None,
                       help="patchcore, padim: backbone stages (by stride: 4 8 16 32; default 8 16) whose features "
                            "are concatenated; 16 32 sees larger regions (textures, large defects) and runs about "
                            "15 %% slower")
    group.add_argument("--feature-stages", type=int, nargs="+", default=None,
                       help="patchcore, padim: the same stages by index instead (1-6, timm's blocks.N; Lite0: 24, "
                            "40, 80, 112, 192, 320 channels at stride 4, 8, 16, 16, 32, 32; default 2 4); a stride "
                            "names the last stage at it, an index also reaches stages 3 and 5")
    group.add_argument("--grid-stride", type=int, default=None,
                       help="patchcore, padim: stride of the patch grid (4 8 16 32; default the finest chosen "
                            "stage's): finer stages are average-pooled onto it, coarser ones upsampled; e.g. "
                            "--feature-stages 1 2 4 --grid-stride 8 adds the stride-4 stage's detail to the "
                            "stride-8 grid")
    group.add_argument("--input-normalization", choices=tuple(INPUT_NORMALIZATIONS), default="lite",
                       help="patchcore, padim: how the backbone normalises [0, 1] pixels: lite, (255 x - 127) / 128 "
                            "as the weights were trained; imagenet, (x - mean) / std with ImageNet's statistics, as "
                            "anomalib feeds every backbone (about 2.2x the contrast)")
    group.add_argument("--coreset-ratio", type=float, default=0.1, help="patchcore: fraction of patch features kept")
    group.add_argument("--coreset-projection", type=int, default=128,
                       help="patchcore: the map bank's coreset is picked on features randomly projected to this "
                            "many dims (faster; features with no more are kept as they are); 0: always as they are")
    group.add_argument("--score-neighbours", type=int, default=1,
                       help="patchcore: reweight the image score by the b bank features nearest to the worst patch's "
                            "match (the paper's eq. 7 uses 9); 1 keeps the plain max patch score")
    group.add_argument("--patch-neighbours", type=int, default=1,
                       help="patchcore: a patch's score is its mean distance to the k nearest bank features "
                            "(default 1: the nearest, as in the paper)")
    group.add_argument("--score-strides", type=int, nargs="+", default=None,
                       help="patchcore: a second bank of these stages' features (e.g. 8 16 32) for the image score "
                            "only, from the same backbone pass; maps keep --feature-strides. Must include the finest "
                            "of --feature-strides")
    group.add_argument("--score-stages", type=int, nargs="+", default=None,
                       help="patchcore: the image-score bank's stages by index instead (as --feature-stages), "
                            "e.g. 2 4 5 for the 192-channel stride-32 stage")
    group.add_argument("--score-candidates", type=float, default=0.25,
                       help="patchcore with --score-strides or --score-stages: share of patches, those with the "
                            "highest map scores, searched in the image-score bank")
    group.add_argument("--padim-features", type=int, default=100,
                       help="padim: random feature channels kept (directions with --padim-embedding orthogonal "
                            "or pca)")
    group.add_argument("--padim-deep-features", type=int, nargs="+", default=0,
                       help="padim: this many more random channels, drawn apart from the last of --feature-stages "
                            "(--padim-features then come from the others): a stride-32 stage's context without "
                            "its 192-320 channels filling the draw, e.g. --feature-stages 1 2 4 6 "
                            "--padim-deep-features 30; one count per --padim-embedding member gives each its own "
                            "(0: none); default 0: one draw over all stages")
    group.add_argument("--padim-embedding", choices=EMBEDDINGS, nargs="+", default="subset",
                       help="padim: how each draw reduces the features: subset keeps the drawn channels (the "
                            "paper's), orthogonal projects onto as many seeded orthonormal directions (Kim et al. "
                            "2021's semi-orthogonal embedding), pca onto the leading principal axes of the "
                            "training features (no seed; one more pass over the training images). Several "
                            "(e.g. pca subset) fit one set of Gaussians each, the next seeded one drawing with "
                            "seed + 2, and average their distance maps")
    group.add_argument("--padim-shrinkage", type=float, default=0.0,
                       help="padim: shrink each position's covariance towards the covariance pooled over all "
                            "positions by this share (0-1; Friedman's regularised discriminant analysis), e.g. 0.1: "
                            "sharper maps, at times a weaker image score; default 0, each position's own")


def _mae(config):
    from selfsup.mae import MaskedAutoencoder

    options = config.options
    return MaskedAutoencoder(patch_size=options["mae_patch"], mask_ratio=options["mask_ratio"],
                             encoder_dim=options["mae_dim"], encoder_depth=options["mae_depth"],
                             map_maskings=options["mae_maskings"], norm_pix_loss=options["mae_norm_pix"],
                             detector=options["detector"], covariance=options["covariance"], seed=config.seed,
                             input_size=config.size, channels=config.channels)


def _mae_arguments(parser):
    group = parser.add_argument_group("mae")
    group.add_argument("--mask-ratio", type=float, default=0.75, help="mae: share of patches hidden from the encoder")
    group.add_argument("--mae-patch", type=int, default=16, help="mae: patch side in pixels (must divide --size)")
    group.add_argument("--mae-dim", type=int, default=128, help="mae: encoder width (a multiple of 32)")
    group.add_argument("--mae-depth", type=int, default=4, help="mae: encoder transformer blocks")
    group.add_argument("--mae-maskings", type=int, default=4,
                       help="mae: maskings averaged in the anomaly map (together they hide every patch)")
    group.add_argument("--mae-norm-pix", action="store_true", help="mae: loss on per-patch normalised pixels")


def _deepsvdd(config):
    from selfsup.deep_svdd import DeepSVDD

    options = config.options
    return DeepSVDD(objective=options["svdd_objective"], nu=options["nu"], radius_every=options["radius_every"],
                    pretrain_epochs=options["pretrain_epochs"],
                    backbone=config.backbone if options["svdd_backbone"] else None, golden=options["golden"],
                    patch_size=options["svdd_patch_size"], patch_stride=options["svdd_patch_stride"],
                    latent_dim=config.latent_dim, seed=config.seed, input_size=config.size, channels=config.channels)


def _deepsvdd_arguments(parser):
    group = parser.add_argument_group("deepsvdd")
    group.add_argument("--svdd-objective", choices=("one-class", "soft-boundary"), default="one-class",
                       help="deepsvdd: mean distance to the centre, or radius R + outliers beyond it")
    group.add_argument("--nu", type=float, default=0.1,
                       help="deepsvdd: share of normal training images allowed outside the sphere (score > 0)")
    group.add_argument("--radius-every", type=int, default=5, help="deepsvdd soft-boundary: refit R every k epochs")
    group.add_argument("--pretrain-epochs", type=int, default=0,
                       help="deepsvdd: first pretrain the encoder as an autoencoder of the patches for N epochs")
    group.add_argument("--svdd-backbone", action="store_true",
                       help="deepsvdd: frozen pretrained EfficientNet-Lite features (--backbone) + a small head")
    group.add_argument("--golden", type=int, default=0,
                       help="deepsvdd: train from only N good images, expanded by augmentation (0: all)")
    group.add_argument("--svdd-patch-size", type=int, default=None, help="deepsvdd: patch side (default size / 4)")
    group.add_argument("--svdd-patch-stride", type=int, default=None,
                       help="deepsvdd: pixels between patches (default patch size / 2)")


def _cutpaste(config):
    from selfsup.cutpaste import CutPaste

    options = config.options
    return CutPaste(backbone=config.backbone, variant=options["cutpaste_variant"],
                    regenerate_every=options["regenerate_every"], freeze_backbone_epochs=options["freeze_backbone_epochs"],
                    patch_size=options["cutpaste_patch_size"], patch_stride=options["cutpaste_patch_stride"],
                    patch_fit_images=options["cutpaste_patch_fit_images"], rotate90=not options["no_rot90"],
                    seed=config.seed, input_size=config.size, channels=config.channels)


def _cutpaste_arguments(parser):
    group = parser.add_argument_group("cutpaste")
    group.add_argument("--cutpaste-variant", choices=("3way", "binary", "cutpaste"), default="3way",
                       help="cutpaste: normal / CutPaste / scar, normal / (CutPaste or scar), or normal / CutPaste")
    group.add_argument("--regenerate-every", type=int, default=1,
                       help="cutpaste: draw the generated pretext set anew every N epochs")
    group.add_argument("--freeze-backbone-epochs", type=int, default=0,
                       help="cutpaste: train only the head for the first K epochs")
    group.add_argument("--cutpaste-patch-size", type=int, default=None,
                       help="cutpaste: side of the patches scored for the anomaly map (default size / 4, at least 32)")
    group.add_argument("--cutpaste-patch-stride", type=int, default=None,
                       help="cutpaste: pixels between those patches (default patch size / 4)")
    group.add_argument("--cutpaste-patch-fit-images", type=int, default=None,
                       help="cutpaste: at most this many normal images (evenly spread) fit the patch density "
                            "(default 100)")
    group.add_argument("--no-rot90", action="store_true",
                       help="cutpaste: no random 90-degree rotations of the training images (for parts whose orientation matters)")


def _embedding_options(config):
    """Constructor arguments shared by the methods scored by selfsup/embedding_scoring.py."""
    return dict(backbone=config.backbone, detector=config.options["detector"],
                covariance=config.options["covariance"], seed=config.seed, input_size=config.size,
                channels=config.channels)


def _simclr(config):
    from selfsup.simclr import SimCLR

    return SimCLR(temperature=config.options["temperature"], **_embedding_options(config))


def _dino(config):
    from selfsup.dino import DINO

    options = config.options
    return DINO(local_crops=options["dino_local_crops"], teacher_momentum=options["teacher_momentum"],
                teacher_temperature=options["teacher_temperature"], **_embedding_options(config))


def _embedding_arguments(parser):
    group = parser.add_argument_group("simclr / dino / mae")
    group.add_argument("--detector", choices=("knn", "mahalanobis", "cosine", "gmm"), default="knn",
                       help="simclr, dino: scorer of image and patch embeddings; mae: of image embeddings; "
                            "fitted on the normal images (knn: mean cosine distance to the 5 nearest; gmm: 4 diagonal components)")
    group.add_argument("--covariance", choices=("shrinkage", "pinv"), default="shrinkage",
                       help="--detector mahalanobis: Ledoit-Wolf shrinkage or the pseudo-inverse")
    group.add_argument("--temperature", type=float, default=0.07, help="simclr: NT-Xent temperature")
    group.add_argument("--dino-local-crops", type=int, default=4, help="dino: small crops per image for the student")
    group.add_argument("--teacher-momentum", type=float, default=0.996, help="dino: EMA momentum of the teacher")
    group.add_argument("--teacher-temperature", type=float, default=0.04,
                       help="dino: teacher softmax temperature (sharpening; the student's is 0.1)")


BUILDERS = {name: _autoencoder(name) for name in AUTOENCODERS}
BUILDERS.update(patchcore=_patchcore, padim=_padim, mae=_mae, deepsvdd=_deepsvdd, cutpaste=_cutpaste,
                simclr=_simclr, dino=_dino)
ARGUMENT_GROUPS = [_memorybank_arguments, _mae_arguments, _deepsvdd_arguments, _cutpaste_arguments,
                   _embedding_arguments]


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
    import selfsup.mae  # noqa: F401
    import selfsup.deep_svdd  # noqa: F401
    import selfsup.cutpaste  # noqa: F401
    import selfsup.dino  # noqa: F401
    import selfsup.simclr  # noqa: F401
