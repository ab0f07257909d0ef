"""Metropolis-Hastings over C chains at once, with user-supplied moves: for latents that are partly discrete (a scene's
shapes and colours next to positions and angles) and for models without gradients (renderers, black boxes).

A move is ``propose(z [C, d], rng) -> (z' [C, d], log_q_ratio [C])`` (``rng`` a ``torch.Generator``) with
``log_q_ratio = log q(z | z') - log q(z' | z)`` (0 for a symmetric move). The density's prior may be any object
with ``log_prob`` and ``sample`` (see :class:`bayestrex.posterior.Posterior`); its ``propose`` is used when it has
one and no move is given. Without a move, a Gaussian random walk whose scale is tuned in warmup toward an acceptance
rate of 0.234 (Robbins-Monro on its log) is used.

Per-draw statistics: ``acceptance_rate`` (the MH acceptance probability), ``accepted``, ``diverging`` (always False),
``n_steps`` (1 likelihood evaluation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import register
from .base import Evaluated, Fixed, probability

__all__ = ["MetropolisHastings", "random_walk", "MHInfo"]

#: optimal acceptance of a random-walk Metropolis in many dimensions (Roberts, Gelman & Gilks 1997)
OPTIMAL_RW_ACCEPTANCE = 0.234


def metropolis(log_alpha: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """The Metropolis test: ``[C]`` bool, accept with probability ``exp(log_alpha)`` (``log_alpha <= 0``)."""
    return torch.log(torch.rand(log_alpha.shape, generator=rng, device=log_alpha.device,
                                dtype=log_alpha.dtype)) < log_alpha


def random_walk(scale):
    """A symmetric Gaussian move ``z + scale · ε`` (``scale`` a number, ``[d]`` or ``[C, 1]``)."""

    def propose(z, rng):
        eps = torch.randn(z.shape, generator=rng, device=z.device, dtype=z.dtype)
        return z + eps * scale, torch.zeros(len(z), dtype=z.dtype, device=z.device)

    return propose



class MHInfo(NamedTuple):
    acceptance_rate: torch.Tensor  #: [C] MH acceptance probability
    accepted: torch.Tensor  #: [C] bool
    diverging: torch.Tensor  #: [C] bool, always False
    n_steps: torch.Tensor  #: [C] likelihood evaluations (1)


@register("mh")
class MetropolisHastings:
    """MH with ``propose`` (default: the prior's ``propose`` if it has one, else a tuned Gaussian random walk)."""

    name = "mh"
    summary = "Metropolis-Hastings with user moves (discrete or structured latents; tuned random walk by default)"
    needs_gradients = False
    recorded = ("acceptance_rate", "accepted", "diverging", "n_steps")

    def __init__(self, propose=None, *, initial_scale: float = 0.5, target_accept: float = OPTIMAL_RW_ACCEPTANCE):
        if propose is not None and not callable(propose):
            raise TypeError("propose must be callable (z, rng) -> (z', log_q_ratio), got "
                            f"{type(propose).__name__}")
        self.propose, self.initial_scale = propose, float(initial_scale)
        self.target_accept = probability("target_accept", target_accept)

    def init(self, density, z0, rng) -> Evaluated:
        lp, aux = density.evaluate(z0)
        if not torch.isfinite(lp).any():
            raise ValueError("no chain starts where the posterior has positive density: check init / the prior")
        return Evaluated(z0.clone(), lp, aux)

    def step(self, density, state: Evaluated, params: dict, rng) -> tuple[Evaluated, MHInfo]:
        z, lp = state.z, state.log_density
        prop, log_q = params["move"](z, rng)
        lp_prop, aux_prop = density.evaluate(prop)
        log_alpha = torch.nan_to_num(lp_prop - lp + log_q, nan=-math.inf).clamp(max=0.0)
        accept = metropolis(log_alpha, rng)
        new = Evaluated(torch.where(accept[:, None], prop, z), torch.where(accept, lp_prop, lp),
                        {k: torch.where(accept.view(-1, *([1] * (v.dim() - 1))), v, state.aux[k])
                         for k, v in aux_prop.items()})
        return new, MHInfo(log_alpha.exp(), accept, torch.zeros_like(accept), torch.ones_like(accept, dtype=torch.long))

    def adaptation(self, density, z0, num_warmup):
        move = self.propose or getattr(density.prior, "propose", None)
        if move is not None:
            return Fixed(describe=dict(move=getattr(move, "__name__", "user")), move=move)
        return _RandomWalkTuning(self.initial_scale, self.target_accept)


class _RandomWalkTuning:
    """A Gaussian random walk whose per-chain scale follows Robbins-Monro on its log toward ``target_accept``."""

    def __init__(self, initial_scale: float, target_accept: float):
        self.initial_scale, self.target_accept = initial_scale, target_accept

    def init(self, state, num_warmup) -> torch.Tensor:
        return torch.full((len(state.z), 1), math.log(self.initial_scale), dtype=state.z.dtype, device=state.z.device)

    def parameters(self, log_scale, it, rng) -> dict:
        return {"move": random_walk(log_scale.exp())}

    def update(self, log_scale, it, previous, state, info: MHInfo, params) -> torch.Tensor:
        return log_scale + (info.acceptance_rate - self.target_accept)[:, None] / math.sqrt(it + 1)

    def final(self, log_scale):
        return log_scale

    def describe(self, log_scale) -> dict:
        return dict(move="random walk (tuned)")
