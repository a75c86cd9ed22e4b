"""Pictures of embeddings and of the embedding study (analyze.py): t-SNE maps coloured by class
(normal, pretext classes, categories, defect types), PCA explained variance, the k-means elbow, a
confusion matrix and a bar chart of per-class AUROC.

t-SNE runs on at most 50 PCA dimensions (the usual recipe: it removes noise and makes t-SNE fast).
Every file is written atomically (processing/plots.py).
"""
import numpy as np

from processing.plots import _save_figure, plt

PCA_DIMENSIONS = 50


def tsne_coordinates(embeddings, seed=0):
    """(N, D) embeddings -> (N, 2) t-SNE coordinates (scikit-learn), perplexity capped for small N."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    embeddings = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
    if len(embeddings) < 3:
        raise ValueError(f"t-SNE needs at least 3 embeddings, got {len(embeddings)}")
    n_components = min(PCA_DIMENSIONS, *embeddings.shape)
    reduced = PCA(n_components=n_components, random_state=seed).fit_transform(embeddings)
    perplexity = min(30.0, (len(embeddings) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def save_tsne(path, embeddings, labels, title="", seed=0):
    """Scatter of the t-SNE map, one colour per distinct label (strings such as 'good', 'cutpaste', 'crack')."""
    coordinates = tsne_coordinates(embeddings, seed)
    plot_embedding_map(path, coordinates, labels, title or "t-SNE of embeddings")
    return coordinates


def plot_embedding_map(path, coordinates, labels, title):
    """Scatter of (N, 2) coordinates, one colour per distinct label, with its count in the legend."""
    labels = np.asarray(labels)
    names = sorted(set(labels.tolist()))
    fig, ax = plt.subplots(figsize=(6.5 + 0.8 * (len(names) > 12), 5.5))
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for number, name in enumerate(names):
        chosen = labels == name
        ax.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=10, alpha=0.7, color=colours(number % 20),
                   label=f"{name} ({chosen.sum()})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7 if len(names) > 12 else 8, markerscale=1.5, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_explained_variance(path, ratios, title=""):
    """Explained variance per principal component (bars) and its running total (line)."""
    ratios = np.asarray(ratios, float)
    components = np.arange(1, len(ratios) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(components, ratios, color="tab:blue", alpha=0.6, label="per component")
    ax.plot(components, np.cumsum(ratios), color="tab:red", label=f"cumulative ({ratios.sum():.2f})")
    ax.set(xlabel="principal component", ylabel="share of variance", ylim=(0, 1.01), title=title or "PCA")
    ax.legend(loc="center right")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_elbow(path, ks, inertias, chosen_k, title=""):
    """k-means inertia against the number of clusters, the chosen elbow marked."""
    ks, inertias = np.asarray(ks), np.asarray(inertias, float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, inertias, marker="o")
    ax.plot([chosen_k], inertias[ks == chosen_k], marker="o", ms=12, mfc="none", mec="red", mew=2,
            ls="none", label=f"elbow: k = {chosen_k}")
    ax.set(xlabel="clusters k", ylabel="inertia (sum of squared distances)", title=title or "k-means elbow")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def plot_confusion_matrix(path, matrix, title=""):
    """2 x 2 image-level confusion matrix [[tn, fp], [fn, tp]] with the counts written in the cells."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues", vmin=0)
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center", fontsize=14,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], labels=["good", "defective"])
    ax.set_yticks([0, 1], labels=["good", "defective"])
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_auroc_bars(path, names, aurocs, title=""):
    """One horizontal bar per class with its AUROC; the dashed line is chance (0.5)."""
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.5))
    positions = np.arange(len(names))
    ax.barh(positions, aurocs, color="tab:blue", alpha=0.7)
    for position, auroc in zip(positions, aurocs):
        ax.text(min(auroc, 0.98), position, f"{auroc:.3f}", va="center", ha="right", fontsize=8, color="white")
    ax.axvline(0.5, ls="--", color="gray", lw=1)
    ax.set_yticks(positions, labels=names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="ROC AUC", title=title)
    fig.tight_layout()
    _save_figure(fig, path)
