"""Building blocks of adaptation, as values: dual averaging, Welford (co)variance, Stan's warmup windows.

Each is a NamedTuple state with pure ``*_init`` / ``*_update`` functions (BlackJAX's
``optimizers/dual_averaging.py`` and ``adaptation/mass_matrix.py``), so an adaptation's state is a value that can be
copied, compared and checkpointed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["DualAveraging", "da_init", "da_update", "Welford", "welford_init", "welford_update", "welford_covariance",
           "warmup_schedule", "DA_T0", "DA_GAMMA", "DA_KAPPA"]

# Dual averaging of the log step size: Hoffman & Gelman (2014), "The No-U-Turn Sampler", section 3.2 (Stan's values)
DA_T0 = 10  #: stabilises the first iterations
DA_GAMMA = 0.05  #: shrinkage toward the proximal centre
DA_KAPPA = 0.75  #: decay of the averaging weights t^-kappa

# Stan's warmup windows (Stan Reference Manual, "HMC algorithm parameters": adaptation)
INIT_BUFFER, TERM_BUFFER, BASE_WINDOW = 75, 50, 25
# Regularisation of the windowed (co)variance toward 1e-3 I with weight 5 / (n + 5) (Stan's ``covar_adaptation``)
WELFORD_SHRINK, WELFORD_PRIOR_N = 1e-3, 5.0


class DualAveraging(NamedTuple):
    """Nesterov's dual averaging of ``x`` (a float or a tensor of them) driven by gradients ``g``."""

    x: object  #: the current iterate x_t
    x_avg: object  #: its weighted average (the value to use after warmup)
    g_avg: object  #: the running mean of the gradients
    t: int  #: updates so far
    prox_center: object  #: mu, where x is pulled (log of 10x the initial step size in Stan)


def da_init(prox_center) -> DualAveraging:
    return DualAveraging(x=prox_center, x_avg=0, g_avg=0, t=0, prox_center=prox_center)


def da_update(s: DualAveraging, g) -> DualAveraging:
    """One step with gradient ``g`` (for step sizes: target acceptance minus the acceptance seen)."""
    t = s.t + 1
    g_avg = (1 - 1 / (t + DA_T0)) * s.g_avg + g / (t + DA_T0)
    x = s.prox_center - (t**0.5) / DA_GAMMA * g_avg
    w = t ** (-DA_KAPPA)
    return DualAveraging(x, (1 - w) * s.x_avg + w * x, g_avg, t, s.prox_center)


class Welford(NamedTuple):
    """Running mean and (co)variance, per chain, of draws ``[C, d]``."""

    n: int
    mean: object
    m2: object
    dense: bool


def welford_init(dense: bool) -> Welford:
    return Welford(0, 0.0, 0.0, dense)


def welford_update(s: Welford, z: torch.Tensor) -> Welford:
    n = s.n + 1
    delta = z - s.mean
    mean = s.mean + delta / n
    post = z - mean
    return Welford(n, mean, s.m2 + (delta.unsqueeze(-1) * post.unsqueeze(-2) if s.dense else delta * post), s.dense)


def welford_covariance(s: Welford) -> torch.Tensor:
    """``[C, d]`` variances or ``[C, d, d]`` covariances, shrunk toward ``1e-3 I`` as Stan does."""
    n = s.n
    cov = (n / (n + WELFORD_PRIOR_N)) * s.m2 / (n - 1)
    shrink = WELFORD_SHRINK * WELFORD_PRIOR_N / (n + WELFORD_PRIOR_N)
    if not s.dense:
        return cov + shrink
    return cov + shrink * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def warmup_schedule(num_warmup: int, init_buffer: int = INIT_BUFFER, term_buffer: int = TERM_BUFFER,
                    base_window: int = BASE_WINDOW) -> list[tuple[int, int]]:
    """Stan's slow windows ``[(start, end), ...]`` (end exclusive) in which the mass matrix is estimated."""
    if num_warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > num_warmup:  # Stan's fallback for short warmup
        init_buffer, term_buffer = int(0.15 * num_warmup), int(0.1 * num_warmup)
        base_window = num_warmup - init_buffer - term_buffer
    ends, start, size = [], init_buffer, base_window
    last = num_warmup - term_buffer
    while start < last:
        end = start + size
        if end + 2 * size > last:  # stretch the last window to the terminal buffer
            end = last
        ends.append((start, end))
        start, size = end, 2 * size
    return ends
