"""k-means detector: the score is the Euclidean distance to the nearest sklearn KMeans centroid."""
import numpy as np
from sklearn.cluster import KMeans

from detectors._validation import check_positive_int
from detectors.base import Detector
from detectors.nearest import nearest_distances


class KMeansDetector(Detector):
    _learned = ("cluster_centers",)

    def __init__(self, n_clusters=8, random_state=0):
        self.n_clusters = n_clusters
        self.random_state = random_state

    def _check_params(self):
        check_positive_int("n_clusters", self.n_clusters)

    def _min_samples(self):
        return self.n_clusters, f"for n_clusters={self.n_clusters}"

    def _fit(self, X):
        kmeans = KMeans(n_clusters=self.n_clusters, random_state=self.random_state).fit(X)
        self.cluster_centers_ = kmeans.cluster_centers_.astype(np.float32)

    def _score(self, X):
        return nearest_distances(X, self.cluster_centers_)[:, 0]
