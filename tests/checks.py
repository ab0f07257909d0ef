"""Correctness checks against the truth, shared by the kernel tests.

Tolerances come from the true variance and a *required* effective sample size, never from the sampler's own error
estimate: a broken sampler inflates its own MCSE (or hides a bias inside it), but it cannot change the truth or the
ESS the test demands. A sampler too inefficient to reach ``min_ess`` fails as well.
"""

from __future__ import annotations

import math

import arviz_stats as azs
import numpy as np
import torch
from arviz_base import from_dict


def ess_and_rhat(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bulk ESS, tail ESS and R-hat per coordinate of draws ``x [C, S, k]``."""
    dt = from_dict({"posterior": {"x": x.double().numpy()}})
    s = azs.summary(dt, round_to="none")
    return s["ess_bulk"].to_numpy(), s["ess_tail"].to_numpy(), s["r_hat"].to_numpy()


def check_mean(x: torch.Tensor, mean, var, *, min_ess: float, max_rhat: float = 1.01) -> None:
    """Draws ``x [C, S, k]`` of quantities with known mean and variance ``[k]``: ESS ≥ ``min_ess`` per coordinate,
    R-hat ≤ ``max_rhat``, and each sample mean within ``4 sqrt(var / min_ess)`` of the truth."""
    mean, var = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(var, dtype=torch.float64)
    bulk, _, rhat = ess_and_rhat(x)
    assert bulk.min() >= min_ess, f"ESS {bulk.min():.0f} < required {min_ess}"
    assert rhat.max() <= max_rhat, f"R-hat {rhat.max():.4f} > {max_rhat}"
    got = x.double().reshape(-1, x.shape[-1]).mean(0)
    tol = 4 * (var / min_ess).sqrt()
    assert ((got - mean).abs() <= tol).all(), f"means {got.tolist()} vs truth {mean.tolist()} (tol {tol.tolist()})"


def check_gaussian(z: torch.Tensor, mean, cov, *, min_ess: float, max_rhat: float = 1.01) -> None:
    """Draws ``z [C, S, d]`` of ``N(mean, cov)``. Whitened, ``w = L⁻¹ (z - mean)`` must be ``N(0, I)``: each
    coordinate's mean within ``4 / sqrt(min_ess)`` of 0, and the average of ``E[w_j²]`` over the ``d`` coordinates
    within ``4 sqrt(2 / (d · min_ess))`` of 1 (a 5% error in the variance fails at ``d · min_ess ≥ 13 000``). Bulk
    ESS of ``w`` and of ``w²`` must reach ``min_ess``."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    cov = torch.diag(cov) if cov.dim() == 1 else cov
    chol = torch.linalg.cholesky(cov)
    w = torch.linalg.solve_triangular(chol, (z.double() - mean).reshape(-1, len(mean)).T, upper=False).T
    w = w.reshape(z.shape)
    d = z.shape[-1]
    bulk, _, rhat = ess_and_rhat(w)
    bulk2, _, _ = ess_and_rhat(w.square())
    assert min(bulk.min(), bulk2.min()) >= min_ess, f"ESS {bulk.min():.0f} (of w²: {bulk2.min():.0f}) < {min_ess}"
    assert rhat.max() <= max_rhat, f"R-hat {rhat.max():.4f} > {max_rhat}"
    m = w.reshape(-1, d).mean(0)
    assert (m.abs() <= 4 / math.sqrt(min_ess)).all(), f"whitened means {m.tolist()}"
    second = float(w.square().mean())
    tol = 4 * math.sqrt(2 / (d * min_ess))
    assert abs(second - 1) <= tol, f"whitened E[w²] = {second:.4f}, not 1 ± {tol:.4f}"
