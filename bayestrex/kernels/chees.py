"""ChEES-HMC: many chains share one step size and one jittered trajectory length, both tuned across the chains.

Hoffman, Radul & Sountsov (AISTATS 2021), "An Adaptive MCMC Scheme for Setting Trajectory Lengths in Hamiltonian
Monte Carlo". Every chain integrates the same number of leapfrog steps at every iteration, so no chain idles while
another finishes (unlike per-chain step sizes or NUTS trees): one batched gradient advances all of them. This is the
kernel for hundreds to thousands of chains, on CPU or GPU.

Warmup tunes, from all chains at once:

* the step size, by dual averaging of the *harmonic* mean of the chains' acceptance probabilities (the worst chains
  weigh most, so none is left stuck);
* the trajectory length ``T``, by Adam (β1 = 0, β2 = 0.95) on ``log T`` ascending the ChEES criterion
  ``E[(||q' - E q||² - ||q - E q||²)²] / 4`` with cross-chain means; each iteration integrates for ``h_t · T``, ``h_t``
  the base-2 Halton value of ``t + 1`` (jitter, against resonance);
* the mass matrix, in Stan's windows: the chains' within-chain (co)variances, averaged over the chains (``pooled``,
  one metric for all) or kept per chain.

The kernel itself is :func:`bayestrex.kernels.hmc.step`; this module holds only the adaptation (its state a value,
:class:`ChEESState`) and the kernel object registered as ``"chees"``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import register
from .base import positive, positive_int, probability
from .hmc import DENSE_UP_TO, RECORDED, HMCInfo, HMCParams, HMCState, init, step
from .integrators import Metric
from .tuning import (
    DualAveraging,
    Welford,
    da_init,
    da_update,
    warmup_schedule,
    welford_covariance,
    welford_init,
    welford_update,
)

__all__ = ["ChEES", "ChEESAdaptation", "chees_gradient", "halton"]

#: target of the harmonic-mean acceptance probability (BlackJAX's ``chees_adaptation`` default)
OPTIMAL_ACCEPTANCE = 0.651
#: Adam on log T: beta1 = 0, beta2 = 0.95 (Hoffman, Radul & Sountsov 2021, section 3; TFP's implementation)
ADAM_BETA2, ADAM_1_MINUS_BETA2 = 0.95, 0.05
#: each Adam update of log T is clipped to this magnitude (TFP's ``GradientBasedTrajectoryLengthAdaptation``)
MAX_LOG_T_UPDATE = 0.35
#: chains whose acceptance probability is at most this carry no weight in the criterion's gradient (paper, eq. 6)
MIN_ACCEPT_WEIGHT = 1e-4


def halton(n: int, base: int = 2) -> float:
    """The ``n``-th (n ≥ 1) van der Corput value in ``base``, in (0, 1)."""
    out, f = 0.0, 1.0 / base
    while n > 0:
        n, r = divmod(n, base)
        out += f * r
        f /= base
    return out


def chees_gradient(q, q_prop, v_prop, accept, jitter):
    """Acceptance-weighted gradient of the ChEES criterion with respect to the trajectory length.

    ``q``: current states ``[C, d]``; ``q_prop``, ``v_prop``: proposals and their velocities ``M⁻¹ p'``;
    ``accept``: acceptance probabilities ``[C]``; ``jitter``: this iteration's fraction of ``T``. Chains with
    acceptance ≤ 1e-4 or a non-finite term get weight 0. Returns a 0-dim tensor (NaN when no chain counts).
    """
    ok = accept > MIN_ACCEPT_WEIGHT
    ok &= torch.isfinite(q_prop).all(-1) & torch.isfinite(v_prop).all(-1)
    w = torch.where(ok, accept, torch.zeros_like(accept))
    q_prop = torch.where(ok.unsqueeze(-1), q_prop, q)
    v_prop = torch.where(ok.unsqueeze(-1), v_prop, torch.zeros_like(v_prop))
    mean_q = q.mean(0)
    mean_prop = (w.unsqueeze(-1) * q_prop).sum(0) / (w.sum() + 1e-20)
    centred = q_prop - mean_prop
    diff = centred.square().sum(-1) - (q - mean_q).square().sum(-1)
    g = jitter * diff * (centred * v_prop).sum(-1)
    g = torch.where(ok & torch.isfinite(g), g, torch.zeros_like(g))
    if not ok.any():
        return torch.tensor(float("nan"))
    return (w * g).sum() / (w.sum() + 1e-20)


class ChEESState(NamedTuple):
    log_eps: float  #: log step size (shared)
    log_T: float  #: log trajectory length (shared)
    avg_log_T: float  #: its running average (weight t^-0.5), used after warmup
    adam_v: float  #: Adam's second moment
    adam_t: int  #: Adam updates so far
    da: DualAveraging
    metric: Metric
    welford: Welford
    slow_start: int
    window_ends: frozenset
    adapted: int  #: warmup iterations seen


class ChEESAdaptation:
    """Shared step size (dual averaging on the harmonic-mean acceptance), shared trajectory length (Adam on the
    ChEES criterion), mass matrices from Stan's windows (pooled over chains or per chain)."""

    def __init__(self, *, target_accept: float, learning_rate: float, max_steps: int, mass: str, pooled: bool,
                 initial_step_size: float, initial_trajectory_length: float | None, jitter: float = 1.0):
        self.target_accept, self.lr, self.max_steps, self.jitter = target_accept, learning_rate, max_steps, jitter
        self.mass, self.pooled = mass, pooled
        self.initial_step_size, self.initial_trajectory_length = initial_step_size, initial_trajectory_length

    def init(self, state: HMCState, num_warmup: int) -> ChEESState:
        C, d = state.z.shape
        if C < 2:
            raise ValueError(f"num_chains must be >= 2 for ChEES (it adapts across chains), got {C}")
        opts = dict(device=state.z.device, dtype=state.z.dtype)
        log_eps = math.log(self.initial_step_size)
        log_T = math.log(self.initial_trajectory_length or self.initial_step_size)
        dense = self.mass == "dense"
        metric = Metric.of(torch.eye(d, **opts).expand(C, d, d).clone() if dense else torch.ones(C, d, **opts))
        windows = warmup_schedule(num_warmup) if self.mass != "identity" else []
        return ChEESState(log_eps, log_T, log_T, 0.0, 0, _restart(log_eps), metric, welford_init(dense),
                          windows[0][0] if windows else num_warmup, frozenset(end for _, end in windows), 0)

    def parameters(self, a: ChEESState, it: int, rng) -> HMCParams:
        u = self.jitter * halton(it + 1) + (1.0 - self.jitter)
        eps, T = math.exp(a.log_eps), math.exp(a.log_T)
        n = min(self.max_steps, max(1, math.ceil(u * T / eps)))
        C, z = a.metric.inv_mass.shape[0], a.metric.inv_mass
        return HMCParams(torch.full((C,), eps, device=z.device, dtype=z.dtype),
                         torch.full((C,), n, dtype=torch.long, device=z.device), a.metric, u)

    def update(self, a: ChEESState, it: int, previous: HMCState, state: HMCState, info: HMCInfo,
               params: HMCParams) -> ChEESState:
        log_T, adam_v, adam_t = a.log_T, a.adam_v, a.adam_t
        # trajectory length: one Adam step (beta1 = 0, beta2 = 0.95) up the ChEES criterion, clipped to ±0.35
        g = float(chees_gradient(previous.z, info.proposal, a.metric.velocity(info.proposal_momentum),
                                 info.acceptance_rate, params.jitter))
        if math.isfinite(g):
            adam_t += 1
            adam_v = ADAM_BETA2 * adam_v + ADAM_1_MINUS_BETA2 * g * g
            v_hat = adam_v / (1 - ADAM_BETA2**adam_t)
            delta = max(-MAX_LOG_T_UPDATE, min(MAX_LOG_T_UPDATE, self.lr * g / (math.sqrt(v_hat) + 1e-8)))
            if math.isfinite(delta):
                log_T += delta
        # step size: dual averaging on the harmonic mean of the non-divergent chains' acceptance probabilities
        acc = info.acceptance_rate[~info.diverging]
        harmonic = 0.0 if len(acc) == 0 else float(1.0 / (1.0 / acc.clamp_min(1e-10)).mean())
        da = da_update(a.da, self.target_accept - harmonic)
        log_eps = float(da.x)
        # log T itself is not clipped to the step size: early dual-averaging swings of the step size (and its
        # restarts at 10x after each mass window) would ratchet T up for good. Only the number of leapfrog steps is
        # clamped to [1, max_steps] (in ``parameters``), and the final T in ``final``. Averaged with weight t^-0.5.
        w = (it + 1) ** -0.5
        avg_log_T = (1 - w) * a.avg_log_T + w * log_T
        metric, welford = a.metric, a.welford
        if it >= a.slow_start:
            welford = welford_update(welford, state.z)
        if it + 1 in a.window_ends:
            cov = welford_covariance(welford)
            if self.pooled:
                cov = cov.mean(0, keepdim=True).expand_as(cov).clone()
            metric = Metric.of(cov)
            welford, da = welford_init(self.mass == "dense"), _restart(log_eps)
        return ChEESState(log_eps, log_T, avg_log_T, adam_v, adam_t, da, metric, welford, a.slow_start,
                          a.window_ends, a.adapted + 1)

    def final(self, a: ChEESState) -> ChEESState:
        log_eps = float(a.da.x_avg) if a.da.t > 0 else a.log_eps
        log_T = a.log_T
        if a.adapted:
            log_T = min(max(a.avg_log_T, log_eps), log_eps + math.log(self.max_steps))
        return a._replace(log_eps=log_eps, log_T=log_T)

    def describe(self, a: ChEESState) -> dict:
        eps, T = math.exp(a.log_eps), math.exp(a.log_T)
        return dict(step_size=eps, trajectory_length=T,
                    max_leapfrog_steps=min(self.max_steps, max(1, math.ceil(T / eps))),
                    target_accept=self.target_accept, mass=self.mass, pooled_mass=self.pooled)


def _restart(log_eps: float) -> DualAveraging:
    return da_init(math.log(10) + log_eps)


@register("chees")
class ChEES:
    """ChEES-HMC over many chains (see the module docstring).

    Parameters
    ----------
    target_accept : float
        Target of the harmonic mean of the chains' acceptance probabilities (0.651 as in BlackJAX).
    learning_rate : float
        Adam's learning rate on ``log T`` (0.025 in TFP for 1000-iteration warmups; 0.05 suits our shorter ones).
    max_steps : int
        Cap on leapfrog steps per iteration.
    mass : {"diag", "dense", "identity"}, optional
        Mass matrix; default dense when ``latent_dim <= DENSE_UP_TO``, else diagonal. "identity" is the paper's.
    pooled : bool
        One mass matrix for all chains (the average of their within-chain covariances) or one per chain. Per chain
        suits a thin level set whose orientation changes along it (as ``ambiguous`` targets), given a warmup long
        enough for each chain's estimate.
    initial_step_size, initial_trajectory_length : float
        Starting values (the trajectory length defaults to one step, as in the paper).
    jitter : float
        Weight of the Halton jitter of the trajectory length (1: ``u_t = h(t)``; 0: no jitter).
    """

    name = "chees"
    summary = "ChEES-HMC: one step size and trajectory length tuned across chains; no chain idles (many chains, GPU)"
    needs_gradients = True
    recorded = RECORDED

    def __init__(self, *, target_accept: float = OPTIMAL_ACCEPTANCE, learning_rate: float = 0.05,
                 max_steps: int = 1000, mass: str | None = None, pooled: bool = True, initial_step_size: float = 0.1,
                 initial_trajectory_length: float | None = None, jitter: float = 1.0):
        self.target_accept = probability("target_accept", target_accept)
        self.learning_rate = positive("learning_rate", learning_rate)
        self.max_steps = positive_int("max_steps", max_steps)
        if mass not in (None, "diag", "dense", "identity"):
            raise ValueError(f"mass must be 'diag', 'dense', 'identity' or None, got {mass!r}")
        self.mass, self.pooled = mass, bool(pooled)
        self.initial_step_size = positive("initial_step_size", initial_step_size)
        self.initial_trajectory_length = (None if initial_trajectory_length is None
                                          else positive("initial_trajectory_length", initial_trajectory_length))
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
        self.jitter = float(jitter)

    def init(self, density, z0, rng):
        return init(density, z0)

    def step(self, density, state, params, rng):
        return step(density, state, params, rng)

    def adaptation(self, density, z0, num_warmup) -> ChEESAdaptation:
        mass = self.mass or ("dense" if z0.shape[1] <= DENSE_UP_TO else "diag")
        return ChEESAdaptation(target_accept=self.target_accept, learning_rate=self.learning_rate,
                               max_steps=self.max_steps, mass=mass, pooled=self.pooled,
                               initial_step_size=self.initial_step_size,
                               initial_trajectory_length=self.initial_trajectory_length, jitter=self.jitter)
