"""Hamiltonian dynamics shared by the HMC-family kernels: the Euclidean metric and the masked, batched leapfrog.

Other integrators (a generalised leapfrog for a position-dependent metric, RATTLE for constrained dynamics) go
beside :func:`leapfrog` with the same shape: they advance ``[C, d]`` positions and momenta, chain by chain for as many
steps as each chain asks, and stop a chain whose energy error explodes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import select

__all__ = ["Metric", "Trajectory", "leapfrog", "MAX_ENERGY_ERROR"]

#: energy error above which a trajectory counts as divergent (Stan's and Pyro's threshold)
MAX_ENERGY_ERROR = 1000.0


class Metric(NamedTuple):
    """Per-chain inverse mass matrix: diagonal ``[C, d]`` or dense ``[C, d, d]`` (with its Cholesky factor)."""

    inv_mass: torch.Tensor
    chol: torch.Tensor | None = None

    @classmethod
    def of(cls, inv_mass: torch.Tensor) -> Metric:
        return cls(inv_mass, torch.linalg.cholesky(inv_mass) if inv_mass.dim() == 3 else None)

    def velocity(self, p):
        """``M⁻¹ p`` ``[C, d]``."""
        return self.inv_mass * p if self.chol is None else (self.inv_mass @ p.unsqueeze(-1)).squeeze(-1)

    def kinetic(self, p):
        """``p·M⁻¹p / 2`` ``[C]``."""
        return 0.5 * (p * self.velocity(p)).sum(-1)

    def momentum(self, like: torch.Tensor, rng: torch.Generator):
        """``p ~ N(0, M)`` ``[C, d]`` with ``M = inv_mass⁻¹``."""
        e = torch.randn(like.shape, generator=rng, device=like.device, dtype=like.dtype)
        if self.chol is None:
            return e / self.inv_mass.sqrt()
        return torch.linalg.solve_triangular(self.chol.mT, e.unsqueeze(-1), upper=True).squeeze(-1)


class Trajectory(NamedTuple):
    """The end of each chain's trajectory."""

    z: torch.Tensor  #: [C, d]
    p: torch.Tensor  #: [C, d], momentum (not flipped)
    potential: torch.Tensor  #: [C]
    grad: torch.Tensor  #: [C, d]
    aux: dict  #: density by-products at z
    diverging: torch.Tensor  #: [C] bool


def leapfrog(density, z, p, potential, grad, aux, step_size, metric: Metric, num_steps, h0,
             max_energy_error: float = MAX_ENERGY_ERROR) -> Trajectory:
    """Integrate every chain ``num_steps [C]`` leapfrog steps of size ``step_size [C]`` from ``(z, p)``.

    Chains with fewer steps than the longest idle (masked) while it finishes: one batched
    ``density.potential_and_grad`` call per step serves every chain. A chain whose energy (relative to ``h0 [C]``)
    rises by more than ``max_energy_error`` or turns non-finite stops where it was and is marked diverging.
    """
    eps = step_size.unsqueeze(-1)
    active = num_steps > 0
    diverging = torch.zeros_like(active)
    for i in range(int(num_steps.max())):
        a = active & (i < num_steps)
        p_half = p - 0.5 * eps * grad
        z_new = z + eps * metric.velocity(p_half)
        pe_new, g_new, aux_new = density.potential_and_grad(torch.where(a.unsqueeze(-1), z_new, z))
        p_new = p_half - 0.5 * eps * g_new
        h = pe_new + metric.kinetic(p_new)
        bad = a & (~torch.isfinite(h) | (h - h0 > max_energy_error))
        diverging |= bad
        active &= ~bad  # a divergent chain stops integrating; it will be rejected
        keep = a & active
        z, p, grad = select(keep, z_new, z), select(keep, p_new, p), select(keep, g_new, grad)
        potential, aux = select(keep, pe_new, potential), select(keep, aux_new, aux)
    return Trajectory(z, p, potential, grad, aux, diverging)


def log_accept(h0: torch.Tensor, h1: torch.Tensor, diverging: torch.Tensor) -> torch.Tensor:
    """``min(0, h0 - h1)`` ``[C]``; ``-inf`` for divergent or non-finite chains."""
    return torch.where(diverging | ~torch.isfinite(h1), torch.full_like(h1, -math.inf), h0 - h1).clamp(max=0.0)
