"""Simplified manifold MALA with the Gauss-Newton metric: Langevin proposals preconditioned by the local geometry.

Girolami & Calderhead (2011), "Riemann manifold Langevin and Hamiltonian Monte Carlo", simplified mMALA (their
eq. 10 without the metric's derivative terms, which keeps the proposal a Gaussian and the kernel exact by Metropolis-
Hastings). In prior-standardised coordinates ``x`` (``z = loc + scale · x``, prior ``N(0, I)``) the Bayes-TrEx
potential is ``U(x) = |x|²/2 + |r(x)|²/(2σ²)``, ``r = u - u*``, and its Gauss-Newton (Fisher) metric is

    G(x) = I + Jᵀ J / σ²,    J = ∂r/∂x  [m, d]

(the prior's precision plus the likelihood's Fisher information; no second derivatives of the network). With the thin
SVD ``J = Uₛ diag(s) Vᵀ`` (``m`` small) everything the proposal needs is ``O(m² d)`` per chain (the Woodbury
identity in SVD form): ``G⁻¹ v = v + V (1/(1+λ) - 1) Vᵀ v``, ``G^{-1/2} ξ = ξ + V ((1+λ)^{-1/2} - 1) Vᵀ ξ`` and
``log det G = Σ log(1 + λ)``, ``λ = s²/σ²``. The gradient comes with the Jacobian: ``∇U = x + Jᵀ r / σ²``.

Proposal: ``x' = x - (h/2) G⁻¹ ∇U + √h G^{-1/2} ξ``. Across the level set ``{u = u*}`` the metric's ``1/σ²`` scales
the move to the tube's width σ and the drift is a damped Gauss-Newton step back onto it (``h = 2`` would be the full
step), so the step does not shrink with σ for straight level sets (a linear statistic: any σ at the same ``h``). A
*curved* level set turns its normal along the move: the reverse proposal, under the metric at the far end, must
find the move's component along the turned normal within ``√h`` tube widths (the width is ∝ σ), so ``h`` shrinks
like ``σ²`` there (README, "Small σ on a network"; ``analyses/bench_sigma.py``).

Cost, counted in gradient-equivalents (``n_steps``; one forward + one backward pass = 1): each proposal is one forward
pass and ``m`` backward passes, ``(1 + m) / 2``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..density import GaussianPrior, residual_jacobian
from . import register
from .base import positive, positive_int, probability, select
from .tuning import DualAveraging, da_init, da_update

__all__ = ["MMALA", "MMALAState", "MMALAInfo", "Geometry", "geometry"]

#: optimal MALA acceptance in high dimensions (Roberts & Rosenthal 1998, "Optimal scaling of discrete approximations to
#: Langevin diffusions")
TARGET_ACCEPT = 0.574


class Geometry(NamedTuple):
    """The Gauss-Newton geometry at ``x`` (float64): enough for the proposal from ``x`` and its density."""

    grad: torch.Tensor  #: [C, d] ∇U
    V: torch.Tensor  #: [C, k, d] right singular vectors of J (k = min(m, d))
    lam: torch.Tensor  #: [C, k] s² / σ²


class MMALAState(NamedTuple):
    x: torch.Tensor  #: [C, d] prior-standardised position, float64
    z: torch.Tensor  #: [C, d] latent codes (what is recorded)
    potential: torch.Tensor  #: [C] U(x)
    geometry: Geometry
    aux: dict


class MMALAInfo(NamedTuple):
    acceptance_rate: torch.Tensor  #: [C] mean Metropolis-Hastings acceptance probability of the draw's proposals
    accepted: torch.Tensor  #: [C] bool: at least one proposal of the draw accepted
    diverging: torch.Tensor  #: [C] bool: a non-finite proposal
    n_steps: torch.Tensor  #: [C] gradient-equivalent evaluations of the draw
    step_size: torch.Tensor  #: [C] h


def geometry(density, x: torch.Tensor):
    """``(U [C], Geometry, aux)`` at ``x [C, d]`` (float64): one forward pass and ``m`` backward passes."""
    sigma = float(density.sigma)
    r, J, aux = residual_jacobian(density, x)
    m = r.shape[-1]
    broken = ~(torch.isfinite(J).all(-1).all(-1) & torch.isfinite(r).all(-1))  # rejected, not passed to the SVD
    J = torch.where(broken[:, None, None], torch.zeros_like(J), J)
    grad = x + (J.mT @ r.unsqueeze(-1)).squeeze(-1) / sigma**2
    _, s, Vh = torch.linalg.svd(J, full_matrices=False)
    U = 0.5 * x.square().sum(-1) + 0.5 * (r / sigma).square().sum(-1)
    lik = -0.5 * (r / sigma).square().sum(-1) - m * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    aux = aux | {"log_likelihood": lik.to(density.dtype)}
    bad = broken | ~(torch.isfinite(U) & torch.isfinite(grad).all(-1) & torch.isfinite(s).all(-1))
    U = torch.where(bad, torch.full_like(U, math.inf), U)
    return U, Geometry(grad, Vh, (s / sigma).square()), aux, (1 + m) / 2


def _apply(g: Geometry, v: torch.Tensor, power: float) -> torch.Tensor:
    """``G^power v`` for ``v [C, d]`` (``power`` -1 or -1/2): ``v + V ((1+λ)^power - 1) Vᵀ v``."""
    coef = (1 + g.lam).pow(power) - 1
    return v + (g.V.mT @ (coef * (g.V @ v.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)


def _mean(x, g: Geometry, h):
    return x - 0.5 * h.unsqueeze(-1) * _apply(g, g.grad, -1.0)


def _log_q(to: torch.Tensor, frm: torch.Tensor, g: Geometry, h: torch.Tensor) -> torch.Tensor:
    """``log N(to; mean(frm), h G(frm)⁻¹)`` up to the constant shared by both directions, ``[C]``."""
    delta = to - _mean(frm, g, h)
    quad = delta.square().sum(-1) + (g.lam * (g.V @ delta.unsqueeze(-1)).squeeze(-1).square()).sum(-1)
    return 0.5 * torch.log1p(g.lam).sum(-1) - quad / (2 * h)


def acceptance(U0, U1, log_q_back, log_q_fwd) -> torch.Tensor:
    """Metropolis-Hastings ``min(1, π(x') q(x | x') / (π(x) q(x' | x)))`` ``[C]``; 0 where it is not finite."""
    log_a = U0 - U1 + log_q_back - log_q_fwd
    return torch.where(torch.isfinite(log_a), log_a, torch.full_like(log_a, -math.inf)).clamp(max=0.0).exp()


def _check(density):
    if not density.untempered:
        raise ValueError("kernel 'mmala' samples the posterior itself (beta = 1), not a tempered density")
    if not isinstance(density.prior, GaussianPrior):
        raise ValueError("kernel 'mmala' needs the Gaussian prior; a custom prior is sampled with kernel='mh'")
    if not callable(getattr(density, "residual", None)) or getattr(density, "sigma", None) is None:
        raise ValueError("kernel 'mmala' needs a density with a Gaussian likelihood of statistics: residual(z) -> "
                         "u(z) - u* and sigma (a Posterior, or Density(residual=..., sigma=...))")
    if not float(density.sigma) > 0:
        raise ValueError("kernel 'mmala' needs sigma > 0 (its metric has 1/sigma²); sigma = 0, the level set itself, "
                         "is sampled with kernel='constrained'")


@register("mmala")
class MMALA:
    """Simplified manifold MALA with the Gauss-Newton metric (see the module docstring).

    Parameters
    ----------
    proposals_per_draw : int
        Metropolis-Hastings proposals between two recorded draws (a Langevin step moves ~√h; several make a draw).
    target_accept : float
        Per-chain dual averaging of ``log h`` toward this mean acceptance during warmup.
    initial_step_size : float
        ``h`` where dual averaging starts.
    """

    name = "mmala"
    summary = ("simplified manifold MALA with the Gauss-Newton metric I + JᵀJ/σ² (Woodbury/SVD, O(m²d)): "
               "proposals scaled to the level set's width")
    needs_gradients = True
    recorded = ("acceptance_rate", "accepted", "diverging", "n_steps", "step_size")

    def __init__(self, *, proposals_per_draw: int = 8, target_accept: float = TARGET_ACCEPT,
                 initial_step_size: float = 0.5):
        self.proposals_per_draw = positive_int("proposals_per_draw", proposals_per_draw)
        self.target_accept = probability("target_accept", target_accept)
        self.initial_step_size = positive("initial_step_size", initial_step_size)

    def init(self, density, z0, rng) -> MMALAState:
        _check(density)
        x = ((z0 - density.prior.loc) / density.prior.scale).double()
        U, g, aux, _ = geometry(density, x)
        bad = ~torch.isfinite(U)
        if bad.any():
            raise ValueError(f"init: the log density or its gradient is not finite at the starting points of chains "
                             f"{torch.nonzero(bad).flatten().tolist()}; start them where the density is positive")
        return MMALAState(x, z0, U, g, aux)

    def _z(self, density, x):
        return (density.prior.loc + density.prior.scale * x.to(density.prior.scale.dtype)).to(density.dtype)

    def step(self, density, state: MMALAState, params: dict, rng) -> tuple[MMALAState, MMALAInfo]:
        C = len(state.x)
        h = params["step_size"].to(state.x)
        acc_sum = torch.zeros(C, dtype=torch.float64, device=state.x.device)
        any_acc = torch.zeros(C, dtype=torch.bool, device=state.x.device)
        diverging = torch.zeros_like(any_acc)
        cost = 0.0
        x, U, g, aux = state.x, state.potential, state.geometry, state.aux
        for _ in range(self.proposals_per_draw):
            xi = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)
            x1 = _mean(x, g, h) + h.sqrt().unsqueeze(-1) * _apply(g, xi, -0.5)
            U1, g1, aux1, c = geometry(density, x1)
            cost += c
            a = acceptance(U, U1, _log_q(x, x1, g1, h), _log_q(x1, x, g, h))
            diverging |= ~torch.isfinite(U1)
            acc_sum += a
            accept = torch.rand(C, generator=rng, dtype=x.dtype, device=x.device) < a
            any_acc |= accept
            x, U, g, aux = (select(accept, new, old) for new, old in ((x1, x), (U1, U), (g1, g), (aux1, aux)))
        n = self.proposals_per_draw
        info = MMALAInfo((acc_sum / n).float(), any_acc, diverging,
                         torch.full((C,), round(cost), dtype=torch.long), h.float())
        return MMALAState(x, self._z(density, x), U, g, aux), info

    def adaptation(self, density, z0, num_warmup):
        return _StepSize(self, len(z0), z0.device)


class _StepState(NamedTuple):
    log_h: torch.Tensor  #: [C]
    da: DualAveraging


class _StepSize:
    """Per-chain dual averaging of ``log h`` on the draw's mean acceptance (Hoffman & Gelman 2014's constants)."""

    def __init__(self, kernel: MMALA, chains: int, device):
        self.k, self.C, self.device = kernel, chains, device

    def init(self, state, num_warmup):
        log_h = torch.full((self.C,), math.log(self.k.initial_step_size), dtype=torch.float64, device=self.device)
        return _StepState(log_h, da_init(math.log(10) + log_h))

    def parameters(self, a: _StepState, it, rng):
        return {"step_size": a.log_h.exp()}

    def update(self, a: _StepState, it, previous, state, info: MMALAInfo, params):
        da = da_update(a.da, self.k.target_accept - info.acceptance_rate.double())
        return _StepState(da.x, da)

    def final(self, a: _StepState):
        return a._replace(log_h=a.da.x_avg) if a.da.t > 0 else a

    def describe(self, a: _StepState) -> dict:
        h = a.log_h.exp()
        return dict(step_size=float(h.median()), step_size_min=float(h.min()), step_size_max=float(h.max()),
                    proposals_per_draw=self.k.proposals_per_draw)
