"""Published figures on the same categories, printed under the benchmark table for comparison.

anomalib's image AUROC / pixel AUROC / AUPRO@0.3 (PatchCore with a 1% coreset), as measured by
anomalib on these datasets with its default preprocessing for both methods (resize to 256, centre
crop 224: the `-crop` variants measure ours the same way). The papers of the self-supervised methods
report only MVTec AD means, listed as notes.
"""
ANOMALIB = {
    "patchcore": {"mvtec_ad/bottle": (1.000, 0.983, 0.936), "mvtec_loco/juice_bottle": (0.972, 0.895, 0.834),
                  "kolektorsdd/kolektorsdd": (0.827, 0.855, 0.436), "lookout_cookies/cookie": (1.000, 0.973, 0.910),
                  "sdu_glassfiber/glass_fiber": (0.939, 0.866, 0.749),
                  "magnetic_tile/magnetic_tile": (0.946, 0.813, 0.713)},
    "padim": {"mvtec_ad/bottle": (0.995, 0.980, 0.922), "mvtec_loco/juice_bottle": (0.896, 0.830, 0.766),
              "kolektorsdd/kolektorsdd": (0.804, 0.886, 0.483), "lookout_cookies/cookie": (1.000, 0.946, 0.822),
              "sdu_glassfiber/glass_fiber": (0.958, 0.754, 0.636),
              "magnetic_tile/magnetic_tile": (0.949, 0.740, 0.750)},
}

PAPER_NOTES = (
    "MVTec AD paper (Bergmann et al. 2019), CAE (SSIM) on bottle: pixel AUROC about 0.87 (L2: 0.82).",
    "PatchCore paper (Roth et al. 2022), WideResNet-50 backbone at full resolution, MVTec AD mean: image AUROC "
    "0.991, pixel AUROC 0.981.",
    "CutPaste paper (Li et al. 2021), MVTec AD mean: image AUROC 0.952 (3-way), pixel AUROC 0.960.",
    "Contrastive (SimCLR-style) baselines on MVTec AD: image AUROC about 0.86-0.90.",
    "Deep SVDD on MVTec AD (as reported by later papers): image AUROC about 0.6.",
)


def published_table(rows):
    """Markdown: anomalib's figures for the (method, category) pairs present in `rows`, then the notes."""
    lines = ["\n## Published figures, for comparison\n\nanomalib's on its 224 px centre crop of the 256 px images.\n\n"
             "| method | category | image_auroc | pixel_auroc | aupro |\n",
             "|---|---|---|---|---|\n"]
    pairs = sorted({(row["method"].split("-")[0], row["category"]) for row in rows})
    for method, category in pairs:
        figures = ANOMALIB.get(method, {}).get(category)
        if figures:
            lines.append(f"| anomalib {method} | {category} | " + " | ".join(f"{v:.3f}" for v in figures) + " |\n")
    lines.append("\n" + "".join(f"* {note}\n" for note in PAPER_NOTES))
    return "".join(lines)
