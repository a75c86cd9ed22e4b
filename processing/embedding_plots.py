"""Pictures of embeddings: a 2-D t-SNE map coloured by class (normal, pretext classes, defect types).

PCA to at most 50 dimensions first (the usual t-SNE recipe: it removes noise and makes t-SNE fast).
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
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for name in sorted(set(labels.tolist())):
        chosen = labels == name
        ax.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=10, alpha=0.7, label=f"{name} ({chosen.sum()})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=1.5, loc="best")
    ax.set_title(title or "t-SNE of embeddings")
    fig.tight_layout()
    _save_figure(fig, path)
    return coordinates
