"""The boundary posterior around inputs: its MAP (the sigma -> 0 limit is CDeepEx) and its draws."""

from __future__ import annotations

import torch

from ..posterior import Posterior
from ..targets import Boundary
from .descent import descend
from .inversion import Residual, check_images, invert

__all__ = ["posterior_map", "boundary_samples", "chain_images"]


def posterior_map(post: Posterior, z_init: torch.Tensor, *, steps: int = 2000, lr: float = 0.01) -> torch.Tensor:
    """The posterior's mode reached by Adam from ``z_init [N, d]`` (one row per prior centre or chain)."""
    z_path, _, _ = descend(post, z_init, steps=steps, lr=lr)
    return z_path[-1]


def boundary_samples(generator, classifier, x: torch.Tensor, true: int, probe: int, *, encoder=None, z0=None,
                     delta=None, margin: float = 0.0, prior_scale: float = 0.5, sigma: float = 0.05,
                     chains_per_input: int = 4, init=None, **sample_options):
    """Boundary examples around each input: draws of the :class:`~bayestrex.targets.Boundary` posterior with a
    prior ``N(z0, prior_scale²)`` per input (the sampled CDeepEx). Inputs ``x [N, ...]`` give ``N × chains_per_input``
    chains, chain ``i`` belonging to input ``i // chains_per_input``. ``init`` (``[N, d]``, e.g. CDeepEx's ``z``)
    starts each input's chains; default ``z0``. Returns the :class:`~bayestrex.result.Result` and ``delta``."""
    from ..sampling import sample

    x = check_images(x)
    if z0 is None:
        z0, delta = invert(generator, x, encoder=encoder)
    elif delta is None:
        raise ValueError("delta is required with z0 (the residual G(z0) - x from invert)")
    r = int(chains_per_input)
    loc = z0.repeat_interleave(r, 0)
    start = (z0 if init is None else init).repeat_interleave(r, 0)
    gen = Residual(generator, delta.repeat_interleave(r, 0))
    result = sample(gen, classifier, Boundary(true, probe, margin=margin), num_chains=len(loc), sigma=sigma,
                    prior_loc=loc, prior_scale=prior_scale, init=start, **sample_options)
    result.generator = None  # its residual differs per chain: decode with chain_images(result, generator, delta)
    return result, delta


def chain_images(result, generator, delta: torch.Tensor) -> torch.Tensor:
    """Decoded draws ``[C, D, ...]`` of :func:`boundary_samples`: ``G(z) - Δ`` with each chain's input residual
    (``delta [N, ...]`` for ``C = N × chains_per_input`` chains)."""
    c, d = result.z.shape[:2]
    per = c // len(delta)
    with torch.no_grad():
        x = generator(result.z.reshape(c * d, -1).to(delta)).reshape(c, d, *delta.shape[1:])
    return x - delta.repeat_interleave(per, 0)[:, None]
