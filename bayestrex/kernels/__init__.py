"""Kernels: one transition of every chain at once, over a density (see :mod:`bayestrex.kernels.base` for the contract).

A kernel is ``init(density, z0, rng) -> state``, ``step(density, state, params, rng) -> (state, info)`` and
``adaptation(density, z0, num_warmup)``; :func:`bayestrex.driver.run` runs any of them. Adding one is one module here
with a ``@register("name")`` on its class; ``sample(kernel="name")``, the CLI and the docs then list it.

Per-draw sample statistics use ArviZ's names where one exists: ``diverging``, ``acceptance_rate``, ``step_size``,
``tree_depth``, ``n_steps`` (density evaluations in the draw), ``energy``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..density import Density, GaussianPrior
from .base import Adaptation, Fixed, Kernel

__all__ = ["Kernel", "Adaptation", "Fixed", "Density", "GaussianPrior", "register", "get", "KERNELS", "describe"]

#: kernel name -> factory returning a default-configured kernel (filled by ``register``)
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
    missing = [m for m in ("init", "step", "adaptation") if not callable(getattr(kernel, m, None))]
    if missing or not isinstance(getattr(kernel, "name", None), str):
        raise TypeError(f"kernel must be a name in {sorted(KERNELS)} or an object with a name and init(), step() "
                        f"and adaptation() methods, got {type(kernel).__name__}")
    return kernel


def describe() -> dict[str, str]:
    """Registered kernel name -> its one-line summary (what the CLI help and ``sample``'s docstring list)."""
    return {name: getattr(make(), "summary", "") for name, make in KERNELS.items()}


from . import chees, constrained, elliptical, hmc, mh, mmala, pyro_nuts, smc  # noqa: E402,F401  (registers their kernels)
