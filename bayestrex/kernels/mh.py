"""Metropolis-Hastings over C chains at once, with user-supplied moves: for latents that are partly discrete (a scene's
shapes and colours next to positions and angles) and for models without gradients (renderers, black boxes).

A move is ``propose(z [C, d], generator) -> (z' [C, d], log_q_ratio [C])`` with
``log_q_ratio = log q(z | z') - log q(z' | z)`` (0 for a symmetric move). The posterior's prior may be any object
with ``log_prob`` and ``sample`` (see :class:`bayestrex.posterior.Posterior`), or its own prior's ``propose`` is
used when it has one. Without a move, a Gaussian random walk whose scale is tuned in warmup toward an acceptance
rate of 0.234 (Robbins-Monro on its log) is used.

Per-draw statistics: ``acceptance_rate`` (the MH acceptance probability), ``accepted``, ``diverging`` (always False),
``n_steps`` (1 likelihood evaluation).
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from . import Draws, register

__all__ = ["MetropolisHastings", "random_walk"]


def random_walk(scale):
    """A symmetric Gaussian move ``z + scale · ε`` (``scale`` a number, ``[d]`` or ``[C, 1]``)."""

    def propose(z, g):
        eps = torch.randn(z.shape, generator=g, device=z.device, dtype=z.dtype)
        return z + eps * scale, torch.zeros(len(z), dtype=z.dtype, device=z.device)

    return propose


@register("mh")
class MetropolisHastings:
    """MH with ``propose`` (default: the prior's ``propose`` if it has one, else a tuned Gaussian random walk)."""

    name = "mh"
    needs_gradients = False

    def __init__(self, propose=None, *, initial_scale: float = 0.5, target_accept: float = 0.234):
        if propose is not None and not callable(propose):
            raise TypeError("propose must be callable (z, generator) -> (z', log_q_ratio), got "
                            f"{type(propose).__name__}")
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        self.propose, self.initial_scale, self.target_accept = propose, float(initial_scale), float(target_accept)

    def run(self, posterior, z0, *, num_samples, warmup, seed, progress=True) -> Draws:
        C = z0.shape[0]
        g = torch.Generator(device=z0.device).manual_seed(seed)
        prior = getattr(posterior, "prior", None)
        propose = self.propose or getattr(prior, "propose", None)
        tune = propose is None
        log_scale = torch.full((C, 1), math.log(self.initial_scale), dtype=z0.dtype, device=z0.device)

        def logp(z):
            with torch.no_grad():
                v = posterior.log_density(z)
            return torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v)

        z, lp = z0.clone(), logp(z0)
        if not torch.isfinite(lp).any():
            raise ValueError("no chain starts where the posterior has positive density: check init / the prior")
        zs, rows, t0 = [], [], time.perf_counter()
        with tqdm(total=warmup + num_samples, desc=self.name, disable=not progress, unit="it") as bar:
            for it in range(warmup + num_samples):
                move = random_walk(log_scale.exp()) if tune else propose
                prop, log_q = move(z, g)
                lp_prop = logp(prop)
                log_alpha = torch.nan_to_num(lp_prop - lp + log_q, nan=-math.inf).clamp(max=0.0)
                accept = torch.log(torch.rand(C, generator=g, device=z.device, dtype=z.dtype)) < log_alpha
                z = torch.where(accept[:, None], prop, z)
                lp = torch.where(accept, lp_prop, lp)
                if tune and it < warmup:  # Robbins-Monro on the log scale, per chain
                    log_scale += (log_alpha.exp() - self.target_accept)[:, None] / math.sqrt(it + 1)
                if it >= warmup:
                    zs.append(z.detach().cpu())
                    rows.append((log_alpha.exp().cpu(), accept.cpu()))
                bar.update()
        acc = torch.stack([r[0] for r in rows], dim=1)
        accepted = torch.stack([r[1] for r in rows], dim=1)
        stats = dict(acceptance_rate=acc, accepted=accepted, diverging=torch.zeros_like(accepted),
                     n_steps=torch.ones_like(accepted, dtype=torch.long))
        info = dict(kernel=self.name, likelihood_evals=C * (warmup + num_samples), grad_evals=0,
                    move="random walk (tuned)" if tune else getattr(propose, "__name__", "user"),
                    sampling_seconds=time.perf_counter() - t0)
        return Draws(z=torch.stack(zs, dim=1), stats=stats, info=info)
