"""Batched HMC: C chains advance together, one batched gradient per leapfrog step for all of them.

Each chain has its own step size, mass matrix and accept/reject decision; only the gradient evaluation is shared.
``init`` and ``step`` work over explicit tensors with a leading chain dimension; the per-chain tuning
(:class:`ChainwiseAdaptation`) is kept apart, and ``chees.py`` reuses ``step`` with a tuning shared across chains.

Trajectory length is jittered: at every iteration each chain integrates for ``u * trajectory_length`` with
``u ~ Uniform(0, 1]``, in units of its own mass-matrix-scaled coordinates (``L_c = ceil(u T / eps_c)`` leapfrog
steps, at most ``max_steps``). A fixed length can resonate with the posterior (bulk ESS looks fine while tail ESS and
R-hat are bad). Chains with shorter trajectories idle (masked) while the longest one finishes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import register
from .base import positive, positive_int, probability, select
from .integrators import Metric, leapfrog, log_accept
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

__all__ = ["HMCState", "HMCInfo", "HMCParams", "init", "step", "ChainwiseAdaptation", "BatchedHMC", "DENSE_UP_TO"]

#: latent dimension up to which the mass matrix is dense by default (O(d^2) per leapfrog step, O(d^3) per window)
DENSE_UP_TO = 32
#: Stan's default target acceptance for per-chain dual averaging (Stan Reference Manual, ``adapt_delta``)
TARGET_ACCEPT = 0.8


class HMCState(NamedTuple):
    z: torch.Tensor  #: [C, d]
    potential: torch.Tensor  #: [C], -log density
    grad: torch.Tensor  #: [C, d], gradient of the potential
    aux: dict  #: the density's by-products at z (probs, u, log_likelihood), [C, ...] each


class HMCParams(NamedTuple):
    step_size: torch.Tensor  #: [C]
    num_steps: torch.Tensor  #: [C] int, leapfrog steps this iteration
    metric: Metric
    jitter: float = 1.0  #: the fraction of the trajectory length this iteration integrates (ChEES uses it)


class HMCInfo(NamedTuple):
    acceptance_rate: torch.Tensor  #: [C], min(1, exp(-ΔH))
    accepted: torch.Tensor  #: [C] bool
    diverging: torch.Tensor  #: [C] bool: energy error above the threshold, or non-finite, along the trajectory
    energy: torch.Tensor  #: [C], Hamiltonian at the start of the transition
    n_steps: torch.Tensor  #: [C], leapfrog steps (gradient evaluations) of each chain
    step_size: torch.Tensor  #: [C]
    proposal: torch.Tensor  #: [C, d], end of the trajectory before the accept/reject test
    proposal_momentum: torch.Tensor  #: [C, d], its momentum (not flipped)


#: the ``HMCInfo`` fields a driver records per draw (the others are [C, d] tensors for adaptation)
RECORDED = ("acceptance_rate", "accepted", "diverging", "energy", "n_steps", "step_size")


def init(density, z: torch.Tensor) -> HMCState:
    """The state at ``z [C, d]``; every chain must start where the log density and its gradient are finite."""
    pe, g, aux = density.potential_and_grad(z)
    bad = ~(torch.isfinite(pe) & torch.isfinite(g).all(-1))
    if bad.any():
        chains = [int(c) for c in torch.nonzero(bad).flatten()]
        raise ValueError(f"init: the log density or its gradient is not finite at the starting points of chains "
                         f"{chains}; start them where the density is positive")
    return HMCState(z, pe, g, aux)


def step(density, state: HMCState, params: HMCParams, rng: torch.Generator) -> tuple[HMCState, HMCInfo]:
    """One HMC transition per chain: fresh momentum, ``params.num_steps`` leapfrog steps, Metropolis test."""
    z0, pe0, g0, aux0 = state
    metric = params.metric
    p = metric.momentum(z0, rng)
    h0 = pe0 + metric.kinetic(p)
    end = leapfrog(density, z0, p, pe0, g0, aux0, params.step_size, metric, params.num_steps, h0)
    h1 = end.potential + metric.kinetic(end.p)
    accept_prob = torch.nan_to_num(log_accept(h0, h1, end.diverging).exp(), nan=0.0)
    u = torch.rand(accept_prob.shape, generator=rng, device=z0.device, dtype=z0.dtype)
    accepted = u < accept_prob
    new = select(accepted, HMCState(end.z, end.potential, end.grad, end.aux), state)
    return new, HMCInfo(accept_prob, accepted, end.diverging, h0, params.num_steps.clone(), params.step_size,
                        end.z, end.p)


class ChainwiseState(NamedTuple):
    step_size: torch.Tensor  #: [C]
    metric: Metric
    da: DualAveraging  #: per-chain log step sizes (tensors [C])
    welford: Welford
    slow_start: int
    window_ends: frozenset


class ChainwiseAdaptation:
    """Every chain tuned on its own: dual averaging of its step size toward ``target_accept``, its own mass matrix
    from Stan's windows, and a trajectory jittered as ``u * trajectory_length`` with ``u ~ Uniform(0, 1]``."""

    def __init__(self, *, trajectory_length: float, target_accept: float, max_steps: int, dense: bool,
                 initial_step_size: float):
        self.trajectory_length, self.target_accept, self.max_steps, self.dense = (trajectory_length, target_accept,
                                                                                  max_steps, dense)
        self.initial_step_size = initial_step_size

    def init(self, state: HMCState, num_warmup: int) -> ChainwiseState:
        C, d = state.z.shape
        opts = dict(device=state.z.device, dtype=state.z.dtype)
        step_size = torch.full((C,), self.initial_step_size, **opts)
        metric = Metric.of(torch.eye(d, **opts).expand(C, d, d).clone() if self.dense else torch.ones(C, d, **opts))
        windows = warmup_schedule(num_warmup)
        return ChainwiseState(step_size, metric, _restart(step_size), welford_init(self.dense),
                              windows[0][0] if windows else num_warmup, frozenset(end for _, end in windows))

    def parameters(self, a: ChainwiseState, it: int, rng: torch.Generator) -> HMCParams:
        u = 1.0 - torch.rand(a.step_size.shape, generator=rng, device=a.step_size.device, dtype=a.step_size.dtype)
        n = torch.ceil(u * self.trajectory_length / a.step_size).clamp(1, self.max_steps).long()
        return HMCParams(a.step_size, n, a.metric)

    def update(self, a: ChainwiseState, it, previous, state, info: HMCInfo, params) -> ChainwiseState:
        da = da_update(a.da, self.target_accept - info.acceptance_rate)
        step_size, metric, welford = da.x.exp(), a.metric, a.welford
        if it >= a.slow_start:
            welford = welford_update(welford, state.z)
        if it + 1 in a.window_ends:
            metric = Metric.of(welford_covariance(welford))
            welford, da = welford_init(self.dense), _restart(step_size)
        return a._replace(step_size=step_size, metric=metric, da=da, welford=welford)

    def final(self, a: ChainwiseState) -> ChainwiseState:
        return a._replace(step_size=a.da.x_avg.exp()) if a.da.t > 0 else a

    def describe(self, a) -> dict:
        return dict(trajectory_length=self.trajectory_length, target_accept=self.target_accept,
                    dense_mass=self.dense)


def _restart(step_size: torch.Tensor) -> DualAveraging:
    """Dual averaging of log step size, restarted toward 10x the current one (as Stan does after each window)."""
    return da_init(torch.log(10 * step_size))


@register("hmc")
class BatchedHMC:
    """Batched HMC with per-chain step sizes (dual averaging), per-chain mass matrices (Stan's windows; dense up
    to ``DENSE_UP_TO`` latent dimensions, else diagonal) and jittered trajectory lengths.

    Parameters
    ----------
    trajectory_length : float
        Upper end of the jittered integration time, in mass-scaled units (default π: mean π/2, a quarter period
        of a standard normal).
    target_accept : float
        Dual-averaging target for each chain's acceptance probability.
    max_steps : int
        Cap on leapfrog steps per transition.
    dense_mass : bool, optional
        Dense or diagonal mass matrices; default dense when ``latent_dim <= DENSE_UP_TO``. A thin, tilted level
        set (as for ``ambiguous`` targets) needs the dense one: on the digits ``ambiguous:3,8`` posterior it gave
        about 2.5x the step size of a diagonal one.
    initial_step_size : float
        Where dual averaging starts.
    """

    name = "hmc"
    summary = "batched HMC, per-chain step size and mass matrix (chains idle until the longest trajectory ends)"
    needs_gradients = True
    recorded = RECORDED

    def __init__(self, *, trajectory_length: float = math.pi, target_accept: float = TARGET_ACCEPT,
                 max_steps: int = 1024, dense_mass: bool | None = None, initial_step_size: float = 0.1):
        self.trajectory_length = positive("trajectory_length", trajectory_length)
        self.target_accept = probability("target_accept", target_accept)
        self.max_steps = positive_int("max_steps", max_steps)
        self.initial_step_size = positive("initial_step_size", initial_step_size)
        self.dense_mass = dense_mass

    def init(self, density, z0, rng):
        return init(density, z0)

    def step(self, density, state, params, rng):
        return step(density, state, params, rng)

    def adaptation(self, density, z0, num_warmup) -> ChainwiseAdaptation:
        dense = self.dense_mass if self.dense_mass is not None else z0.shape[1] <= DENSE_UP_TO
        return ChainwiseAdaptation(trajectory_length=self.trajectory_length, target_accept=self.target_accept,
                                   max_steps=self.max_steps, dense=dense, initial_step_size=self.initial_step_size)
