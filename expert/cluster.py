"""Partitioning the data into K clusters (DDM / Paris step 1) and reporting what the clusters mean.

Small data: one k-means. Large data (more than `two_stage_min` clips): DDM's two stages — a fine
MiniBatchKMeans with up to 1024 centroids, then a coarse k-means over the fine centroids weighted by
their sizes; each clip takes the coarse cluster nearest to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import normalized_mutual_info_score

from protocol.data import AttributeSpec
from protocol.errors import ParisError
from protocol.run import BalanceReport, ClusterStats


@dataclass(frozen=True)
class Clustering:
    assignments: np.ndarray  # N int
    centroids: np.ndarray  # K×D, in standardised space
    mean: np.ndarray
    scale: np.ndarray
    fine: int | None  # number of fine centroids when two-stage


def standardise(x: np.ndarray, groups: tuple[tuple[int, int], ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-dimension z-scores; each feature group [a, b) is further divided by sqrt(b - a) so that every
    group weighs the same in the distance, however many dimensions it has."""
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale < 1e-6, 1.0, scale)
    for a, b in groups:
        scale[a:b] *= np.sqrt(b - a)
    return (x - mean) / scale, mean, scale


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1, keepdims=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
    return d.argmin(1)


def cluster(embeddings: np.ndarray, k: int, *, seed: int = 0, groups: tuple[tuple[int, int], ...] = (),
            two_stage_min: int = 20000, fine_max: int = 1024) -> Clustering:
    n = len(embeddings)
    if k < 1:
        raise ParisError("--clusters must be at least 1")
    if n < k:
        raise ParisError(f"cannot make {k} clusters from {n} clips: use fewer clusters or more data")
    x, mean, scale = standardise(embeddings.astype(np.float64), groups)
    fine = None
    if n >= two_stage_min and min(fine_max, n // 8) > k:
        fine = min(fine_max, n // 8)
        fine_km = MiniBatchKMeans(n_clusters=fine, random_state=seed, n_init=3, batch_size=4096).fit(x)
        weights = np.bincount(fine_km.labels_, minlength=fine).astype(np.float64)
        coarse = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(fine_km.cluster_centers_, sample_weight=weights)
        centroids = coarse.cluster_centers_
    else:
        centroids = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(x).cluster_centers_
    assignments = nearest(x, centroids)
    if len(np.unique(assignments)) < k:
        raise ParisError(f"k-means left a cluster empty: the data do not support {k} clusters")
    return Clustering(assignments.astype(np.int64), centroids, mean, scale, fine)


def _purity(labels: np.ndarray, assignments: np.ndarray, k: int) -> float:
    return float(sum(np.bincount(labels[assignments == c]).max() for c in range(k) if (assignments == c).any())
                 / len(labels))


def balance_report(assignments: np.ndarray, k: int, attributes: np.ndarray | None = None,
                   specs: tuple[AttributeSpec, ...] = (), *, seed: int = 0) -> BalanceReport:
    """Cluster sizes, and where the generator's attributes are known: purity (share of clips matching
    their cluster's majority value), the same for a random partition of equal sizes, and NMI."""
    sizes = np.bincount(assignments, minlength=k)
    purity, chance, nmi, majority = {}, {}, {}, [dict() for _ in range(k)]
    if attributes is not None and specs:
        rng = np.random.default_rng(seed)
        for j, spec in enumerate(specs):
            labels = attributes[:, j]
            purity[spec.name] = round(_purity(labels, assignments, k), 4)
            chance[spec.name] = round(float(np.mean([_purity(labels, rng.permutation(assignments), k)
                                                    for _ in range(5)])), 4)
            nmi[spec.name] = round(float(normalized_mutual_info_score(labels, assignments)), 4)
            for c in range(k):
                members = labels[assignments == c]
                if len(members):
                    majority[c][spec.name] = spec.values[int(np.bincount(members).argmax())]
    return BalanceReport(
        sizes=tuple(int(s) for s in sizes), largest=int(sizes.max()), smallest=int(sizes.min()),
        ratio=round(float(sizes.max() / max(sizes.min(), 1)), 3),
        clusters=tuple(ClusterStats(cluster=c, size=int(sizes[c]), majority=majority[c]) for c in range(k)),
        purity=purity, purity_chance=chance, nmi=nmi,
    )
