"""Kernels: turn a posterior and starting points into draws.

A kernel is an object with ``name`` and ``run(posterior, z0, *, num_samples, warmup, seed, progress) -> Draws``.
Adding one is one module here and one ``register`` decorator on it; ``sample(kernel="name")`` then finds it.

Per-draw sample statistics use ArviZ's names where one exists: ``diverging``, ``acceptance_rate``, ``step_size``,
``tree_depth``, ``n_steps`` (gradient evaluations in the draw), ``energy``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

__all__ = ["Draws", "Kernel", "Density", "register", "get", "KERNELS"]


@dataclass
class Draws:
    """What a kernel hands back: draws after warmup, and what happened along the way."""

    z: torch.Tensor  #: [chains, draws, latent_dim], CPU
    stats: dict[str, torch.Tensor]  #: name -> [chains, draws], CPU
    failed: dict[int, str] = field(default_factory=dict)  #: chain index -> why it failed (its draws are NaN)
    info: dict = field(default_factory=dict)  #: kernel settings and totals (e.g. gradient evaluations, seconds)


class Kernel(Protocol):
    name: str

    def run(self, posterior, z0: torch.Tensor, *, num_samples: int, warmup: int, seed: int,
            progress: bool) -> Draws: ...


class Density:
    """Any log density over ``R^d`` for the batched kernels (``hmc``, ``chees``), e.g. to test them on known targets.

    ``log_density`` maps ``z [C, d]`` to ``[C]`` (differentiable with torch); ``kernel.run(Density(f, d), z0, ...)``.
    """

    def __init__(self, log_density: Callable[[torch.Tensor], torch.Tensor], latent_dim: int):
        self.log_density, self.latent_dim = log_density, int(latent_dim)

    def potential_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            pe = -self.log_density(z)
            (grad,) = torch.autograd.grad(pe.sum(), z)
        pe = pe.detach()
        return torch.where(torch.isnan(pe), torch.full_like(pe, math.inf), pe), grad


#: kernel name -> factory returning a default-configured kernel.
KERNELS: dict[str, Callable[[], Kernel]] = {}


def register(name: str, **defaults):
    """Class decorator: make ``sample(kernel=name)`` build ``cls(**defaults)``."""

    def deco(cls):
        KERNELS[name] = lambda: cls(**defaults)
        return cls

    return deco


def get(kernel) -> Kernel:
    """A kernel instance from a name (see ``KERNELS``) or an already-built kernel."""
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(KERNELS)} or a kernel object")
        return KERNELS[kernel]()
    if not callable(getattr(kernel, "run", None)):
        raise TypeError(f"kernel must be a name in {sorted(KERNELS)} or an object with a run() method, "
                        f"got {type(kernel).__name__}")
    return kernel


from . import chees, elliptical, hmc, mh, pyro_nuts  # noqa: E402,F401  (registers their kernels)
