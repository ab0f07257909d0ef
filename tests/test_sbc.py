"""Simulation-based calibration: the band has its stated false-alarm rate, a too-narrow sampler fails it, and the
whole loop (prior draw, noisy target, sampling, ranks) passes for an exact kernel."""

import numpy as np
import pytest
import torch
from test_sampling import Identity, logistic

from bayestrex.sbc import simulate, uniformity


def test_the_simultaneous_band_has_its_false_alarm_rate_and_catches_a_narrow_sampler():
    rng = np.random.default_rng(0)
    L, R, Q = 15, 100, 3
    # exact: the truth is one more draw from the same distribution, so its rank is uniform on {0..L}
    exact = [all(v["passed"] for v in uniformity(rng.integers(0, L + 1, (R, Q)), L).values()) for _ in range(200)]
    assert 0.88 <= np.mean(exact) <= 0.995  # alpha = 0.05 over all Q quantities together
    # too narrow: draws N(0, 0.7²) for a truth N(0, 1): ranks pile up at 0 and L
    truth, draws = rng.normal(size=(200, R, Q)), 0.7 * rng.normal(size=(200, R, Q, L))
    ranks = (draws < truth[..., None]).sum(-1)
    narrow = [all(v["passed"] for v in uniformity(r, L).values()) for r in ranks]
    assert np.mean(narrow) <= 0.1


def _sbc(kernel="slice"):
    # z ~ N(0, I) in 2-d, p1 = sigmoid(3 z0 - 1), statistic p1 ("high:1"), sigma 0.05: 60 replicates, 8 chains each
    return simulate(Identity(), logistic, "high:1", kernel=kernel, sigma=0.05, replicates=60, num_chains=8,
                    num_samples=20, warmup=20, seed=0, jobs=1, progress=False,
                    init=torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))  # prior draws: no search


def test_an_exact_kernel_passes_sbc():
    """The whole loop on a 2-d logistic posterior with elliptical slice. (Its power against a planted slice-height
    bug is low at this size: 60 replicates of 8 draws pass even a slice that hill-climbs, so the bug is caught by the
    kernel tests; SBC's power is tested on synthetic ranks above.)"""
    res = _sbc()
    assert res.ranks.shape == (60, 3) and res.num_draws == 8 and res.names == ["z[0]", "z[1]", "u[p1]"]
    assert all(v["passed"] for v in res.verdicts().values()), res.verdicts()
    assert all(d["failed_chains"] == 0 for d in res.diagnostics) and len(res.diagnostics) == 60


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="replicates must be an integer >= 1"):
        simulate(Identity(), logistic, "high:1", replicates=0)
    with pytest.raises(ValueError, match=r"draws \(100\) cannot exceed num_chains x num_samples \(8\)"):
        simulate(Identity(), logistic, "high:1", num_chains=4, num_samples=2, draws=100)
