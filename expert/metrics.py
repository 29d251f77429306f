"""Distribution metrics: the Fréchet distance between two feature sets (FID / FVD / FVD-synth).

FD = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½), in float64. Tr((Σ₁ Σ₂)^½) is computed as the sum of the square
roots of the eigenvalues of the symmetric matrix Σ₁^½ Σ₂ Σ₁^½ (the same eigenvalues as Σ₁ Σ₂), with round-off
negatives clipped to zero. Unlike a general matrix square root of Σ₁ Σ₂ (the reference FID code), this
stays real and stable when the covariances are singular, which they are whenever there are fewer videos
than feature dimensions (40 videos, 128 judge features): scipy's `sqrtm` then returned large imaginary parts.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from protocol.errors import ParisError


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ParisError("a Fréchet distance needs at least two feature vectors per set")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ParisError("the two feature sets have different dimensions")
    diff = mu1 - mu2
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = float(np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))
