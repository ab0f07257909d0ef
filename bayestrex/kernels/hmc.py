"""Batched HMC: C chains advance together, one batched gradient per leapfrog step for all of them.

Each chain has its own step size, diagonal mass matrix and accept/reject decision; only the gradient evaluation is
shared. Written like BlackJAX: ``init`` and ``step(state) -> (state, info)`` over explicit tensors with a leading
chain dimension, with the adaptation (``warmup``) kept apart from the kernel and the driver (``BatchedHMC.run``)
separate from both.

Trajectory length is jittered: at every iteration each chain integrates for ``u * trajectory_length`` with
``u ~ Uniform(0, 1]``, in units of its own mass-matrix-scaled coordinates (``L_c = ceil(u T / eps_c)`` leapfrog
steps, at most ``max_steps``). A fixed length can resonate with the posterior (bulk ESS looks fine while tail ESS and
R-hat are bad). Chains with shorter trajectories idle (masked) while the longest one finishes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from pyro.ops.dual_averaging import DualAveraging
from tqdm.auto import tqdm

from . import Draws, register

#: latent dimension up to which the mass matrix is dense by default (O(d^2) per leapfrog step, O(d^3) per window)
DENSE_UP_TO = 32

PotentialAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class HMCState(NamedTuple):
    z: torch.Tensor  #: [C, d]
    potential: torch.Tensor  #: [C], -log density
    grad: torch.Tensor  #: [C, d], gradient of the potential


class HMCInfo(NamedTuple):
    acceptance_rate: torch.Tensor  #: [C], min(1, exp(-ΔH))
    accepted: torch.Tensor  #: [C] bool
    diverging: torch.Tensor  #: [C] bool: energy error above the threshold, or non-finite, along the trajectory
    energy: torch.Tensor  #: [C], Hamiltonian at the start of the transition
    n_steps: torch.Tensor  #: [C], leapfrog steps (gradient evaluations) of each chain
    proposal: torch.Tensor  #: [C, d], end of the trajectory before the accept/reject test
    proposal_momentum: torch.Tensor  #: [C, d], its momentum (not flipped)


#: the ``HMCInfo`` fields a driver records per draw (the others are [C, d] tensors for adaptation)
RECORDED = ("acceptance_rate", "accepted", "diverging", "energy", "n_steps")


class Metric(NamedTuple):
    """Per-chain inverse mass matrix: diagonal ``[C, d]`` or dense ``[C, d, d]`` (with its Cholesky factor)."""

    inv_mass: torch.Tensor
    chol: torch.Tensor | None = None

    @classmethod
    def of(cls, inv_mass: torch.Tensor) -> Metric:
        return cls(inv_mass, torch.linalg.cholesky(inv_mass) if inv_mass.dim() == 3 else None)

    def velocity(self, p):
        return self.inv_mass * p if self.chol is None else (self.inv_mass @ p.unsqueeze(-1)).squeeze(-1)

    def kinetic(self, p):
        return 0.5 * (p * self.velocity(p)).sum(-1)

    def momentum(self, like: torch.Tensor, generator: torch.Generator):
        """``p ~ N(0, M)`` with ``M = inv_mass^-1``."""
        e = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        if self.chol is None:
            return e / self.inv_mass.sqrt()
        return torch.linalg.solve_triangular(self.chol.mT, e.unsqueeze(-1), upper=True).squeeze(-1)


class Welford:
    """Running mean and (co)variance per chain of draws ``[C, d]``; Stan's regularisation toward 1e-3 I."""

    def __init__(self, dense: bool):
        self.dense, self.n, self.mean, self.m2 = dense, 0, 0.0, 0.0

    def update(self, z):
        self.n += 1
        delta = z - self.mean
        self.mean = self.mean + delta / self.n
        post = z - self.mean
        self.m2 = self.m2 + (delta.unsqueeze(-1) * post.unsqueeze(-2) if self.dense else delta * post)

    def covariance(self):
        n = self.n
        cov = (n / (n + 5.0)) * self.m2 / (n - 1)
        shrink = 1e-3 * 5.0 / (n + 5.0)
        if not self.dense:
            return cov + shrink
        return cov + shrink * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def init(z: torch.Tensor, potential_and_grad: PotentialAndGrad) -> HMCState:
    """The state at ``z [C, d]``; every chain must start where the log density and its gradient are finite."""
    pe, g = potential_and_grad(z)
    bad = ~(torch.isfinite(pe) & torch.isfinite(g).all(-1))
    if bad.any():
        chains = [int(c) for c in torch.nonzero(bad).flatten()]
        raise ValueError(f"init: the log density or its gradient is not finite at the starting points of chains "
                         f"{chains}; start them where the density is positive")
    return HMCState(z, pe, g)


def step(state: HMCState, potential_and_grad: PotentialAndGrad, step_size: torch.Tensor, metric: Metric,
         num_steps: torch.Tensor, generator: torch.Generator, max_energy_error: float = 1000.0):
    """One HMC transition per chain. ``step_size [C]``, ``num_steps [C]`` (int), leapfrog integration.

    Chains with fewer steps than the longest idle (masked) while it finishes; a chain whose energy error exceeds
    ``max_energy_error`` or turns non-finite stops, is marked diverging, and rejects the transition.
    """
    z0, pe0, g0 = state
    eps = step_size.unsqueeze(-1)
    p = metric.momentum(z0, generator)
    h0 = pe0 + metric.kinetic(p)
    z, pe, g = z0, pe0, g0
    active = num_steps > 0
    diverging = torch.zeros_like(active)
    for i in range(int(num_steps.max())):
        a = (active & (i < num_steps)).unsqueeze(-1)
        p_half = p - 0.5 * eps * g
        z_new = z + eps * metric.velocity(p_half)
        pe_new, g_new = potential_and_grad(torch.where(a, z_new, z))
        p_new = p_half - 0.5 * eps * g_new
        h = pe_new + metric.kinetic(p_new)
        bad = a.squeeze(-1) & (~torch.isfinite(h) | (h - h0 > max_energy_error))
        diverging |= bad
        active &= ~bad  # a divergent chain stops integrating; it will be rejected
        keep = a & active.unsqueeze(-1)
        z, p, g = torch.where(keep, z_new, z), torch.where(keep, p_new, p), torch.where(keep, g_new, g)
        pe = torch.where(keep.squeeze(-1), pe_new, pe)
    h1 = pe + metric.kinetic(p)
    log_accept = torch.where(diverging | ~torch.isfinite(h1), torch.full_like(h1, -math.inf), h0 - h1)
    accept_prob = torch.nan_to_num(log_accept.clamp(max=0.0).exp(), nan=0.0)
    u = torch.rand(accept_prob.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    accepted = u < accept_prob
    a = accepted.unsqueeze(-1)
    new = HMCState(torch.where(a, z, z0), torch.where(accepted, pe, pe0), torch.where(a, g, g0))
    return new, HMCInfo(accept_prob, accepted, diverging, h0, num_steps.clone(), z, p)


def warmup_schedule(num_warmup: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25):
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


class Adaptation(Protocol):
    """Tuning of a batched HMC kernel, kept apart from it (BlackJAX's split): what ``step`` needs next, and how
    a warmup transition updates it. ``parameters`` is called every iteration, ``update`` only during warmup,
    ``finish`` once when warmup ends (freeze the averaged values)."""

    def parameters(self, it: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Metric]: ...

    def update(self, it: int, previous: HMCState, state: HMCState, info: HMCInfo) -> None: ...

    def finish(self) -> None: ...

    def describe(self) -> dict: ...


def run(name: str, posterior, z0: torch.Tensor, adaptation: Adaptation, *, num_samples: int, warmup: int, seed: int,
        progress: bool = True) -> Draws:
    """The driver shared by the batched kernels: warmup with ``adaptation``, then ``num_samples`` kept draws."""
    C = z0.shape[0]
    g = torch.Generator(device=z0.device).manual_seed(seed)
    pg = posterior.potential_and_grad
    state = init(z0, pg)
    zs, rows, grad_calls, t0 = [], [], 0, time.perf_counter()
    if warmup == 0:
        adaptation.finish()
    with tqdm(total=warmup + num_samples, desc=name, disable=not progress, unit="it") as bar:
        for it in range(warmup + num_samples):
            step_size, n, metric = adaptation.parameters(it, g)
            previous = state
            state, info = step(state, pg, step_size, metric, n, g)
            grad_calls += int(n.max())
            if it < warmup:
                adaptation.update(it, previous, state, info)
                if it + 1 == warmup:
                    adaptation.finish()
            else:
                zs.append(state.z.detach().cpu())
                rows.append({k: getattr(info, k).detach().cpu() for k in RECORDED} | {"step_size": step_size.cpu()})
            bar.update()
            if it % 10 == 0:
                bar.set_postfix(step=f"{step_size.median():.3g}", steps=int(n.max()),
                                acc=f"{info.acceptance_rate.mean():.2f}")
    stats = {k: torch.stack([r[k] for r in rows], dim=1) for k in rows[0]}
    stats["diverging"], stats["accepted"] = stats["diverging"].bool(), stats["accepted"].bool()
    info = dict(kernel=name, grad_calls=grad_calls, grad_evals=grad_calls * C,
                sampling_seconds=time.perf_counter() - t0, **adaptation.describe())
    return Draws(z=torch.stack(zs, dim=1), stats=stats, info=info)


class ChainwiseAdaptation:
    """Every chain tuned on its own: dual averaging of its step size toward ``target_accept``, its own mass matrix
    from Stan's windows, and a trajectory jittered as ``u * trajectory_length`` with ``u ~ Uniform(0, 1]``."""

    def __init__(self, z0: torch.Tensor, warmup: int, *, trajectory_length: float, target_accept: float,
                 max_steps: int, dense: bool, initial_step_size: float):
        C, d = z0.shape
        opts = dict(device=z0.device, dtype=z0.dtype)
        self.trajectory_length, self.target_accept, self.max_steps, self.dense = (trajectory_length, target_accept,
                                                                                  max_steps, dense)
        self.step_size = torch.full((C,), initial_step_size, **opts)
        self.metric = Metric.of(torch.eye(d, **opts).expand(C, d, d).clone() if dense else torch.ones(C, d, **opts))
        windows = warmup_schedule(warmup)
        self.slow_start = windows[0][0] if windows else warmup
        self.window_ends = {end for _, end in windows}
        self.da, self.welford = _dual_averaging(self.step_size), Welford(dense)

    def parameters(self, it, generator):
        u = 1.0 - torch.rand(self.step_size.shape, generator=generator, device=self.step_size.device,
                             dtype=self.step_size.dtype)
        n = torch.ceil(u * self.trajectory_length / self.step_size).clamp(1, self.max_steps).long()
        return self.step_size, n, self.metric

    def update(self, it, previous, state, info):
        self.da.step(self.target_accept - info.acceptance_rate)
        self.step_size = self.da.get_state()[0].exp()
        if it >= self.slow_start:
            self.welford.update(state.z)
        if it + 1 in self.window_ends:
            self.metric = Metric.of(self.welford.covariance())
            self.welford, self.da = Welford(self.dense), _dual_averaging(self.step_size)

    def finish(self):
        if self.da._t > 0:
            self.step_size = self.da.get_state()[1].exp()

    def describe(self):
        return dict(trajectory_length=self.trajectory_length, target_accept=self.target_accept,
                    dense_mass=self.dense)


def _dual_averaging(step_size):
    """Dual averaging of log step size, restarted toward 10x the current one (as Stan does after each window)."""
    return DualAveraging(prox_center=torch.log(10 * step_size))


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

    def __init__(self, *, trajectory_length: float = math.pi, target_accept: float = 0.8, max_steps: int = 1024,
                 dense_mass: bool | None = None, initial_step_size: float = 0.1):
        self.trajectory_length = _positive("trajectory_length", trajectory_length)
        self.target_accept = _probability("target_accept", target_accept)
        self.max_steps = _positive_int("max_steps", max_steps)
        self.initial_step_size = _positive("initial_step_size", initial_step_size)
        self.dense_mass = dense_mass

    def run(self, posterior, z0, *, num_samples, warmup, seed, progress=True) -> Draws:
        dense = self.dense_mass if self.dense_mass is not None else z0.shape[1] <= DENSE_UP_TO
        adapt = ChainwiseAdaptation(z0, warmup, trajectory_length=self.trajectory_length,
                                    target_accept=self.target_accept, max_steps=self.max_steps, dense=dense,
                                    initial_step_size=self.initial_step_size)
        return run(self.name, posterior, z0, adapt, num_samples=num_samples, warmup=warmup, seed=seed,
                   progress=progress)


def _positive(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _probability(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
