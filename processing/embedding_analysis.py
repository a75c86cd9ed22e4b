"""The embedding study behind analyze.py: what image embeddings say about categories, defects and outliers.

Embeddings come from a trained model (`-p`: its `image_embeddings(images)`, which MAE, CutPaste, Deep
SVDD, SimCLR and DINO implement) or from the plain pretrained backbone
(the mean over the image of PatchCore's locally aware EfficientNet-Lite patch features, which is also what
SimCLR and DINO start from). Every image of every category is resized to one size.

The study (`analyze`), on the train/good and test images of the chosen categories:

1. PCA to 100 dimensions (fewer when there are fewer images or dimensions); steps 2-4 work on it.
2. t-SNE maps coloured by category and by category/defect.
3. k-means for k = 1..K with an elbow plot; the elbow (the k farthest below the straight line from the
   first to the last inertia) is reported with each cluster's make-up.
4. GMM outlier removal: a diagonal Gaussian mixture, one component per category, on the training
   embeddings; the `outlier_fraction` of training images it finds least likely are flagged and left out.
5. Per category, a detector (`--detector`, as the self-supervised methods' scoring: kNN k=5 cosine by
   default) fitted on the category's remaining training embeddings scores its test images: score
   histograms normal vs defective and the image AUROC.
6. With a model that has been finetuned: its own anomaly maps on the evaluation split of its dataset,
   segmented at the finetuned threshold and min-area (finetune.json), give the confusion matrix.

The leave-one-class-out protocol (`leave_one_out`): each category is a class. For each held-out class h,
the detector is fitted on the train/good embeddings of every other class; it then scores every test
image of h, good and defective alike, labelled anomalous (the whole class is new), and the test/good
images of the other classes, labelled normal. The ROC AUC of those scores is h's entry. Defective test
images of the other classes take no part: they are neither a new class nor normal. An AUROC near 1
means the embeddings tell an unseen product apart from the known ones.

Outputs (PNG + CSV, written atomically) are listed in README.md under analyze.py.
"""
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from processing import atomic, data, embedding_plots, metrics, runs, segmentation
from processing.errors import UserError
from processing.plots import plot_score_histogram
from processing.progress import report

PCA_DIMENSIONS = 100


@dataclass
class EmbeddedImages:
    """Image embeddings (n, D) and, aligned with them, what each image is."""
    embeddings: np.ndarray
    category: np.ndarray  # dataset name, e.g. "mvtec_ad/bottle"
    split: np.ndarray  # "train" (train/good) or "test"
    defect: np.ndarray  # "good" or the defect type
    path: np.ndarray  # relative to the category's folder

    @property
    def labels(self):
        return (self.defect != data.GOOD).astype(int)

    def where(self, chosen):
        return EmbeddedImages(**{item.name: getattr(self, item.name)[chosen] for item in fields(self)})

    @staticmethod
    def concatenate(parts):
        return EmbeddedImages(**{item.name: np.concatenate([getattr(part, item.name) for part in parts])
                                 for item in fields(EmbeddedImages)})


# ---------------------------------------------------------------- embeddings

class BackboneEmbedder:
    """Image embeddings of the frozen pretrained backbone: the mean of its locally aware patch features."""

    def __init__(self, variant, size, channels=3):
        from memorybank.features import patch_feature_model

        self.size, self.channels = size, channels
        self.features = patch_feature_model(variant, size, channels)

    def __call__(self, images):
        return self.features.predict_on_batch(images).mean(axis=(1, 2))


class ModelEmbedder:
    """Image embeddings of a trained model (see the module docstring for which methods have them)."""

    def __init__(self, model):
        self.model, self.size, self.channels = model, model.input_size, model.channels
        model.image_embeddings(np.zeros((0, self.size, self.size, self.channels), np.float32))  # UserError if none

    def __call__(self, images):
        return self.model.image_embeddings(images)


def discover_categories(data_root):
    """Every MVTec-layout folder (one holding train/good) one or two levels under `data_root`, as paths
    (a folder named like a built-in dataset, e.g. 'synthetic', is still read from disk)."""
    root = Path(data_root)
    if not root.is_dir():
        raise UserError(f"data root not found: {root}; pass --data-root with the folder that holds the categories")
    found = sorted(str(folder) for pattern in ("*", "*/*") for folder in root.glob(pattern)
                   if (folder / "train" / data.GOOD).is_dir())
    if not found:
        raise UserError(f"no category (a folder with train/good) under {root}; pass the data root in MVTec layout")
    return found


def embed_categories(embedder, names, data_root, batch_size=32):
    """EmbeddedImages of the train/good and test images of each named category, at the embedder's size."""
    parts = []
    for name in names:
        dataset = data.scan_dataset(*data.resolve_dataset(name, data_root))
        for split, samples in (("train", dataset.train), ("test", dataset.test)):
            if not samples:
                continue
            batches = data.image_dataset(dataset, samples, embedder.size, embedder.channels, batch_size)
            parts.append(EmbeddedImages(
                np.concatenate([embedder(np.asarray(batch)) for batch in batches]),
                np.array([dataset.name] * len(samples)), np.array([split] * len(samples)),
                np.array([s.defect for s in samples]), np.array([s.path for s in samples])))
        report(f"embedded {dataset.name}: {len(dataset.train)} train, {len(dataset.test)} test images")
    return EmbeddedImages.concatenate(parts)


# ---------------------------------------------------------------- the steps

def pca(embeddings, dimensions=PCA_DIMENSIONS, seed=0):
    """(n, d) projections on the first d = min(dimensions, n, D) principal axes, and their variance shares."""
    from sklearn.decomposition import PCA

    fitted = PCA(n_components=min(dimensions, *embeddings.shape), random_state=seed)
    return fitted.fit_transform(embeddings).astype(np.float32), fitted.explained_variance_ratio_


def kmeans_elbow(vectors, max_clusters, seed=0):
    """k-means for k = 1..min(max_clusters, n): (ks, inertias, cluster labels per k)."""
    from sklearn.cluster import KMeans

    ks = np.arange(1, min(max_clusters, len(vectors)) + 1)
    fits = [KMeans(n_clusters=k, n_init=4, random_state=seed).fit(vectors) for k in ks]
    return ks, np.array([fit.inertia_ for fit in fits]), [fit.labels_ for fit in fits]


def elbow(ks, inertias):
    """The k whose inertia lies farthest below the chord from the first to the last point (both axes
    scaled to [0, 1]): where adding clusters stops paying off."""
    if len(ks) < 3:
        return int(ks[-1])
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (inertias - inertias[-1]) / max(inertias[0] - inertias[-1], 1e-12)
    return int(ks[np.argmax((1 - x) - y)])


def gmm_outliers(vectors, n_components, fraction, seed=0):
    """(n,) bool, True for the round(fraction * n) vectors least likely under a diagonal Gaussian mixture."""
    from detectors import GMMDetector

    n_outliers = int(round(fraction * len(vectors)))
    flagged = np.zeros(len(vectors), bool)
    if n_outliers:
        mixture = GMMDetector(n_components=min(n_components, len(vectors)), covariance_type="diag",
                              random_state=seed).fit(vectors)
        flagged[np.argsort(mixture.score_samples(vectors))[-n_outliers:]] = True
    return flagged


def confusion_at_threshold(maps, labels, threshold, min_area):
    """[[tn, fp], [fn, tp]]: an image is called defective when a region of its map above `threshold`
    has at least `min_area` pixels (the rule finetune.py tunes)."""
    _, defective, _ = segmentation.segment(maps, threshold, min_area)
    return np.array(metrics.threshold_metrics(labels, defective.astype(int))["confusion_matrix"])


def make_detector(name):
    """An unfitted detector set up for image embeddings, as the self-supervised methods' --detector."""
    from detectors import make_detector as detector_from_params
    from selfsup.embedding_scoring import detector_params

    return detector_from_params(name, **detector_params(name))


def leave_one_out(images, detector):
    """One row per class: the held-out class's AUROC (protocol in the module docstring)."""
    classes = sorted(set(images.category.tolist()))
    if len(classes) < 2:
        raise UserError(f"leave-one-class-out needs at least two categories, got {len(classes)}; "
                        "name more with -d or point --data-root at a folder with several")
    rows = []
    for held_out in classes:
        others = images.category != held_out
        training = images.where(others & (images.split == "train"))
        anomalous = images.where(~others & (images.split == "test"))
        normal = images.where(others & (images.split == "test") & (images.defect == data.GOOD))
        if not len(anomalous.path) or not len(normal.path):
            raise UserError(f"leave-one-class-out needs test images of {held_out} and test/good images of the "
                            "other categories; add test folders")
        fitted = make_detector(detector).fit(training.embeddings)
        scores = fitted.score_samples(np.concatenate([anomalous.embeddings, normal.embeddings]))
        labels = np.r_[np.ones(len(anomalous.path)), np.zeros(len(normal.path))].astype(int)
        rows.append({"held_out": held_out, "n_train": len(training.path), "n_anomalous": len(anomalous.path),
                     "n_normal": len(normal.path), "auroc": metrics.image_auroc(labels, scores)})
        report(f"leave out {held_out}: AUROC {rows[-1]['auroc']:.3f}")
    return rows


# ---------------------------------------------------------------- what analyze.py runs

def embedder_for(config):
    """The model's embedder with -p (at the model's size), else the pretrained backbone's at --size."""
    if config.model_path is None:
        return BackboneEmbedder(config.backbone, config.size), None
    run = runs.Run(runs.resolve_model_path(config.model_path))
    if config.size is not None and config.size != run.size:
        raise UserError(f"--size {config.size} differs from the model's input size {run.size}; leave --size out "
                        "with -p (images are resized to the model's size)")
    return ModelEmbedder(run.load_model()), run


def analyze(config):
    """The study of the module docstring, writing into config.out; returns the output folder."""
    out = Path(config.out)
    embedder, run = embedder_for(config)
    # Without -d: the model's own dataset (its folder is a valid -d), else every category of the data root.
    names = config.datasets or ([str(run.dataset.root)] if run else discover_categories(config.data_root))
    images = embed_categories(embedder, names, config.data_root, config.batch_size)
    report(f"{len(images.path)} images, {images.embeddings.shape[1]}-d embeddings")
    reduced, variance = pca(images.embeddings, seed=config.seed)
    embedding_plots.plot_explained_variance(out / "pca_variance.png", variance,
                                            f"PCA of {images.embeddings.shape[1]}-d embeddings")
    coordinates = _tsne_maps(out, reduced, images, config.seed)
    clusters = _clusters(out, reduced, images, config)
    train = images.split == "train"
    outliers = np.zeros(len(images.path), bool)
    outliers[train] = gmm_outliers(reduced[train], len(set(images.category.tolist())), config.outlier_fraction,
                                   config.seed)
    report(f"GMM: {outliers.sum()} of {train.sum()} training images flagged as outliers and left out")
    scores = _category_scores(out, images, outliers, config.detector)
    atomic.write_csv(out / "images.csv", [{
        "category": images.category[i], "split": images.split[i], "defect": images.defect[i],
        "label": int(images.labels[i]), "path": images.path[i],
        **{f"pc{axis + 1}": float(reduced[i, axis]) for axis in range(min(2, reduced.shape[1]))},
        **({"tsne_x": float(coordinates[i, 0]), "tsne_y": float(coordinates[i, 1])} if coordinates is not None else {}),
        "cluster": int(clusters[i]), "gmm_outlier": int(outliers[i]),
        "detector_score": float(scores[i]) if np.isfinite(scores[i]) else ""} for i in range(len(images.path))])
    if run is not None:
        _finetuned_confusion(out, run, embedder.model)
    report(f"analysis in {out}")
    return out


def analyze_leave_one_out(config):
    """The leave-one-class-out table (CSV + bar chart) in config.out; returns its rows."""
    out = Path(config.out)
    embedder, _ = embedder_for(config)
    names = config.datasets or discover_categories(config.data_root)
    rows = leave_one_out(embed_categories(embedder, names, config.data_root, config.batch_size), config.detector)
    aurocs = [row["auroc"] for row in rows]
    atomic.write_csv(out / "leave_one_class_out.csv", rows)
    embedding_plots.plot_auroc_bars(out / "leave_one_class_out.png", [row["held_out"] for row in rows], aurocs,
                                    f"leave-one-class-out AUROC ({config.detector}), mean {np.mean(aurocs):.3f}")
    print("\n".join(f"{row['held_out']:<32}{row['auroc']:>8.3f}" for row in rows), flush=True)
    report(f"mean AUROC {np.mean(aurocs):.3f}; table in {out / 'leave_one_class_out.csv'}")
    return rows


def _tsne_maps(out, reduced, images, seed):
    if len(reduced) < 3:
        report("t-SNE skipped: it needs at least 3 images")
        return None
    coordinates = embedding_plots.tsne_coordinates(reduced, seed)
    embedding_plots.plot_embedding_map(out / "tsne_categories.png", coordinates, images.category,
                                       "t-SNE by category")
    kinds = [f"{category}: {'train' if split == 'train' else defect}"
             for category, split, defect in zip(images.category, images.split, images.defect)]
    embedding_plots.plot_embedding_map(out / "tsne_defects.png", coordinates, kinds, "t-SNE by category and defect")
    return coordinates


def _clusters(out, reduced, images, config):
    """k-means elbow plot and tables; returns each image's cluster at the elbow."""
    ks, inertias, labels = kmeans_elbow(reduced, config.clusters, config.seed)
    chosen = elbow(ks, inertias)
    embedding_plots.plot_elbow(out / "kmeans_elbow.png", ks, inertias, chosen)
    atomic.write_csv(out / "kmeans_elbow.csv", [{"k": int(k), "inertia": float(v)} for k, v in zip(ks, inertias)])
    clusters = labels[chosen - 1]
    make_up = Counter(zip(clusters.tolist(), images.category.tolist(), images.defect.tolist()))
    atomic.write_csv(out / "kmeans_clusters.csv", [{"cluster": cluster, "category": category, "defect": defect,
                                                    "images": count}
                                                   for (cluster, category, defect), count in sorted(make_up.items())])
    report(f"k-means: elbow at k = {chosen}")
    return clusters


def _category_scores(out, images, outliers, detector):
    """Per category: detector scores of its test images (NaN for training images), histograms, AUROC table."""
    scores = np.full(len(images.path), np.nan)
    rows = []
    for category in sorted(set(images.category.tolist())):
        mine = images.category == category
        fit_on, test = mine & (images.split == "train") & ~outliers, mine & (images.split == "test")
        if not test.any():
            continue
        scores[test] = make_detector(detector).fit(images.embeddings[fit_on]).score_samples(images.embeddings[test])
        labels = images.labels[test]
        plot_score_histogram(out / f"scores_{category.replace('/', '_')}.png", scores[test], labels,
                             title=f"{category}: {detector} scores of test images")
        rows.append({"category": category, "n_train": int(fit_on.sum()),
                     "n_train_outliers": int((mine & outliers).sum()), "n_test_good": int((labels == 0).sum()),
                     "n_test_defective": int(labels.sum()), "detector": detector,
                     "image_auroc": metrics.image_auroc(labels, scores[test]) if 0 < labels.sum() < len(labels) else ""})
    if rows:
        atomic.write_csv(out / "categories.csv", rows)
    return scores


def _finetuned_confusion(out, run, model):
    """Confusion matrix and score histogram of the model itself on the evaluation split of its dataset."""
    from processing.tiling import tiled_maps_and_scores

    tuned = run.finetune()
    if tuned is None:
        report("no finetune.json beside the model: confusion matrix skipped (run finetune.py first)")
        return
    model.configure_maps(**tuned.get("map_options", {}))
    samples = run.evaluation_samples
    tiling = run.tiling_for()
    images, _ = data.load_arrays(run.dataset, samples, run.working_size(tiling), run.channels)
    maps, scores = tiled_maps_and_scores(model, images, tiling)
    labels = np.array([s.label for s in samples])
    matrix = confusion_at_threshold(maps, labels, tuned["threshold"], tuned["min_area"])
    embedding_plots.plot_confusion_matrix(
        out / "confusion_matrix.png", matrix,
        f"{run.method}: evaluation split, threshold {tuned['threshold']:.4g}, min-area {tuned['min_area']}")
    atomic.write_csv(out / "confusion_matrix.csv", [
        {"true": name, "predicted_good": int(row[0]), "predicted_defective": int(row[1])}
        for name, row in zip(("good", "defective"), matrix)])
    plot_score_histogram(out / "model_scores.png", scores, labels,
                         title=f"{run.method} on {run.dataset.name}: evaluation image scores")
    report(f"confusion at the finetuned threshold [[tn fp] [fn tp]]: {matrix.tolist()}")
