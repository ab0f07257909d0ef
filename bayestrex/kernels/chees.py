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

The kernel itself is :func:`bayestrex.kernels.hmc.step`; this module holds only the adaptation and the kernel
object registered as ``"chees"``.
"""

from __future__ import annotations

import math

import torch
from pyro.ops.dual_averaging import DualAveraging

from . import Draws, register
from .hmc import (
    DENSE_UP_TO,
    HMCInfo,
    HMCState,
    Metric,
    Welford,
    _positive,
    _positive_int,
    _probability,
    run,
    warmup_schedule,
)


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
    ok = accept > 1e-4
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


class ChEESAdaptation:
    """Shared step size (dual averaging on the harmonic-mean acceptance), shared trajectory length (Adam on the
    ChEES criterion), mass matrices from Stan's windows (pooled over chains or per chain)."""

    def __init__(self, z0: torch.Tensor, warmup: int, *, target_accept: float, learning_rate: float, max_steps: int,
                 mass: str, pooled: bool, initial_step_size: float, initial_trajectory_length: float | None,
                 jitter: float = 1.0):
        C, d = z0.shape
        opts = dict(device=z0.device, dtype=z0.dtype)
        if C < 2:
            raise ValueError(f"num_chains must be >= 2 for ChEES (it adapts across chains), got {C}")
        self.C, self.target_accept, self.lr, self.max_steps, self.jitter = C, target_accept, learning_rate, \
            max_steps, jitter
        self.mass, self.pooled = mass, pooled
        self.log_eps = math.log(initial_step_size)
        self.log_T = math.log(initial_trajectory_length or initial_step_size)
        self.avg_log_T, self.adam_v, self.adam_t = self.log_T, 0.0, 0
        dense = mass == "dense"
        self.metric = Metric.of(torch.eye(d, **opts).expand(C, d, d).clone() if dense else torch.ones(C, d, **opts))
        windows = warmup_schedule(warmup) if mass != "identity" else []
        self.slow_start = windows[0][0] if windows else warmup
        self.window_ends = {end for _, end in windows}
        self.welford, self.da = Welford(dense), self._dual_averaging()
        self.opts, self._u = opts, 1.0
        self.adapted_iterations = 0

    def _dual_averaging(self):
        return DualAveraging(prox_center=math.log(10) + self.log_eps)

    @property
    def step_size(self) -> float:
        return math.exp(self.log_eps)

    @property
    def trajectory_length(self) -> float:
        return math.exp(self.log_T)

    def parameters(self, it, generator):
        self._u = self.jitter * halton(it + 1) + (1.0 - self.jitter)
        n = min(self.max_steps, max(1, math.ceil(self._u * self.trajectory_length / self.step_size)))
        return (torch.full((self.C,), self.step_size, **self.opts),
                torch.full((self.C,), n, dtype=torch.long, device=self.opts["device"]), self.metric)

    def update(self, it: int, previous: HMCState, state: HMCState, info: HMCInfo) -> None:
        self.adapted_iterations += 1
        # trajectory length: one Adam step (beta1 = 0, beta2 = 0.95) up the ChEES criterion, clipped to ±0.35
        g = float(chees_gradient(previous.z, info.proposal, self.metric.velocity(info.proposal_momentum),
                                 info.acceptance_rate, self._u))
        if math.isfinite(g):
            self.adam_t += 1
            self.adam_v = 0.95 * self.adam_v + 0.05 * g * g
            v_hat = self.adam_v / (1 - 0.95**self.adam_t)
            delta = max(-0.35, min(0.35, self.lr * g / (math.sqrt(v_hat) + 1e-8)))
            if math.isfinite(delta):
                self.log_T += delta
        # step size: dual averaging on the harmonic mean of the non-divergent chains' acceptance probabilities
        acc = info.acceptance_rate[~info.diverging]
        harmonic = 0.0 if len(acc) == 0 else float(1.0 / (1.0 / acc.clamp_min(1e-10)).mean())
        self.da.step(self.target_accept - harmonic)
        self.log_eps = float(self.da.get_state()[0])
        # log T itself is not clipped to the step size: early dual-averaging swings of the step size (and its
        # restarts at 10x after each mass window) would ratchet T up for good. Only the number of leapfrog steps is
        # clamped to [1, max_steps] (in ``parameters``), and the final T in ``finish``. Averaged with weight t^-0.5.
        w = (it + 1) ** -0.5
        self.avg_log_T = (1 - w) * self.avg_log_T + w * self.log_T
        if it >= self.slow_start:
            self.welford.update(state.z)
        if it + 1 in self.window_ends:
            cov = self.welford.covariance()
            if self.pooled:
                cov = cov.mean(0, keepdim=True).expand_as(cov).clone()
            self.metric = Metric.of(cov)
            self.welford, self.da = Welford(self.mass == "dense"), self._dual_averaging()

    def finish(self) -> None:
        if self.da._t > 0:
            self.log_eps = float(self.da.get_state()[1])
        if self.adapted_iterations:
            self.log_T = min(max(self.avg_log_T, self.log_eps), self.log_eps + math.log(self.max_steps))

    def describe(self) -> dict:
        return dict(step_size=self.step_size, trajectory_length=self.trajectory_length,
                    max_leapfrog_steps=min(self.max_steps, max(1, math.ceil(self.trajectory_length / self.step_size))),
                    target_accept=self.target_accept, mass=self.mass, pooled_mass=self.pooled)


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
    """

    name = "chees"

    def __init__(self, *, target_accept: float = 0.651, learning_rate: float = 0.05, max_steps: int = 1000,
                 mass: str | None = None, pooled: bool = True, initial_step_size: float = 0.1,
                 initial_trajectory_length: float | None = None, jitter: float = 1.0):
        self.target_accept = _probability("target_accept", target_accept)
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.max_steps = _positive_int("max_steps", max_steps)
        if mass not in (None, "diag", "dense", "identity"):
            raise ValueError(f"mass must be 'diag', 'dense', 'identity' or None, got {mass!r}")
        self.mass, self.pooled = mass, bool(pooled)
        self.initial_step_size = _positive("initial_step_size", initial_step_size)
        self.initial_trajectory_length = (None if initial_trajectory_length is None
                                          else _positive("initial_trajectory_length", initial_trajectory_length))
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
        self.jitter = float(jitter)

    def run(self, posterior, z0, *, num_samples, warmup, seed, progress=True) -> Draws:
        mass = self.mass or ("dense" if z0.shape[1] <= DENSE_UP_TO else "diag")
        adapt = ChEESAdaptation(z0, warmup, target_accept=self.target_accept, learning_rate=self.learning_rate,
                                max_steps=self.max_steps, mass=mass, pooled=self.pooled,
                                initial_step_size=self.initial_step_size,
                                initial_trajectory_length=self.initial_trajectory_length, jitter=self.jitter)
        return run(self.name, posterior, z0, adapt, num_samples=num_samples, warmup=warmup, seed=seed,
                   progress=progress)
