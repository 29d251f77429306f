import numpy as np
import pytest
from scipy import linalg

from expert.metrics import frechet_distance, frechet_distance_features
from protocol.errors import ParisError


def _direct(a, b):
    """The textbook formula with scipy, term by term."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_direct_scipy_computation(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(500, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.5
    assert frechet_distance_features(a, b) == pytest.approx(_direct(a, b), rel=1e-6)


def test_known_values():
    # two Gaussians with equal covariance: FD = |μ1 − μ2|²; FD(x, x) = 0
    assert frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3)) == pytest.approx(3.0)
    # isotropic: Tr(Σ1 + Σ2 − 2√(Σ1Σ2)) = d (σ1 − σ2)²
    assert frechet_distance(np.zeros(4), 4 * np.eye(4), np.zeros(4), np.eye(4)) == pytest.approx(4.0)
    x = np.random.default_rng(0).normal(size=(300, 8))
    assert abs(frechet_distance_features(x, x)) < 1e-6


def test_singular_covariances_are_handled():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 32))  # fewer samples than dimensions: rank-deficient covariance
    b = rng.normal(size=(10, 32))
    value = frechet_distance_features(a, b)
    assert np.isfinite(value) and value > 0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ParisError, match="at least two"):
        frechet_distance_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ParisError, match="different dimensions"):
        frechet_distance_features(np.zeros((5, 3)), np.ones((5, 4)))


def test_fewer_videos_than_features_stay_real_and_exact():
    """40 videos × 128 judge features (as ddm_vs_monolith --quick): scipy's sqrtm of Σ₁Σ₂ returned large
    imaginary parts here; the symmetric form is real, FD(x, x) = 0 and FD grows with a shift."""
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(128, 128))
    a = (rng.normal(size=(40, 128)) @ mix) * 20
    b = (rng.normal(size=(40, 128)) @ mix) * 20
    assert abs(frechet_distance_features(a, a)) < 1e-6 * np.trace(np.cov(a, rowvar=False))
    same_law, shifted = frechet_distance_features(a, b), frechet_distance_features(a, b + 50)
    assert 0 < same_law < shifted
    d = a.mean(0) - b.mean(0)
    assert shifted - same_law == pytest.approx(((d - 50) ** 2).sum() - (d**2).sum(), rel=1e-6)  # covariances unchanged
