"""The kernel contract: what a kernel and its adaptation are, and the small helpers every kernel shares.

A kernel (NumPyro's ``MCMCKernel``, BlackJAX's ``init``/``step``) is an object with

- ``name`` and ``needs_gradients``; ``batched`` (default True: one batched density call serves every chain);
- ``recorded``: the names of its ``Info`` fields that the driver keeps per draw (each ``[C]``);
- ``init(density, z0, rng) -> state``: the state at ``z0 [C, d]``; a NamedTuple with at least ``z [C, d]`` and
  ``aux`` (the density's by-products at ``z``, see :mod:`bayestrex.density`);
- ``step(density, state, params, rng) -> (state, info)``: one transition of every chain. ``params`` come from the
  adaptation; ``info`` is a NamedTuple with ``n_steps [C]`` (density evaluations of each chain) and the recorded
  fields. Kernels print nothing and keep nothing between calls: everything is in ``state`` and ``params``;
- ``adaptation(density, z0, num_warmup) -> Adaptation``: how its parameters are tuned during warmup;
- optionally ``warmup(density, state, num_warmup, rng)``: a warmup that is not an iteration loop (tempered SMC): a
  generator yielding ``(info, postfix or None)`` per density-evaluating step and returning a :class:`Warmed`.

An adaptation (BlackJAX's ``window_adaptation``, kept apart from the kernel) is an object with value state:

- ``init(state, num_warmup) -> astate``; ``parameters(astate, it, rng) -> params``;
- ``update(astate, it, previous, state, info, params) -> astate`` after each warmup transition;
- ``final(astate) -> astate`` when warmup ends (freeze averaged values); ``describe(astate) -> dict``.

``bayestrex.driver.run`` runs any such kernel. A new kernel is one module in this package with a ``@register``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch

__all__ = ["Kernel", "Adaptation", "Fixed", "Warmed", "Evaluated", "select", "positive", "probability", "positive_int"]


class Kernel(Protocol):
    name: str
    needs_gradients: bool
    recorded: tuple[str, ...]

    def init(self, density, z0: torch.Tensor, rng: torch.Generator) -> Any: ...

    def step(self, density, state, params, rng: torch.Generator) -> tuple[Any, Any]: ...

    def adaptation(self, density, z0: torch.Tensor, num_warmup: int) -> Adaptation: ...


class Adaptation(Protocol):
    def init(self, state, num_warmup: int) -> Any: ...

    def parameters(self, astate, it: int, rng: torch.Generator) -> Any: ...

    def update(self, astate, it: int, previous, state, info, params) -> Any: ...

    def final(self, astate) -> Any: ...

    def describe(self, astate) -> dict: ...


class Fixed:
    """The adaptation of a kernel with nothing to tune: the same ``params`` at every iteration."""

    def __init__(self, describe: dict | None = None, **params):
        self.params, self._describe = params, dict(describe or {})

    def init(self, state, num_warmup):
        return None

    def parameters(self, astate, it, rng):
        return self.params

    def update(self, astate, it, previous, state, info, params):
        return astate

    def final(self, astate):
        return astate

    def describe(self, astate):
        return self._describe or {k: v for k, v in self.params.items() if isinstance(v, (int, float, str, bool))}


def select(mask: torch.Tensor, new, old):
    """Per chain, ``new`` where ``mask [C]`` holds, else ``old``: for tensors ``[C, ...]``, dicts of them and
    NamedTuples of them (other fields are taken from ``new``)."""
    if isinstance(new, torch.Tensor):
        return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)
    if isinstance(new, dict):
        return {k: select(mask, v, old[k]) for k, v in new.items()}
    if isinstance(new, tuple) and hasattr(new, "_fields"):
        return type(new)(*(select(mask, a, b) if isinstance(a, (torch.Tensor, dict)) else a
                           for a, b in zip(new, old)))
    return new


class Warmed(NamedTuple):
    """The end of warmup: the state, and the adaptation (and its state) that give the sampling parameters; ``groups``
    are extra records for the result's DataTree (e.g. ``{"smc": {...}}``)."""

    state: Any
    adaptation: Any
    astate: Any
    groups: dict = {}  #: never mutated (the driver copies it)


class Evaluated(NamedTuple):
    """A gradient-free state: position, log density there, and the by-products of that evaluation."""

    z: torch.Tensor  #: [C, d]
    log_density: torch.Tensor  #: [C]
    aux: dict  #: name -> [C, ...]


def positive(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def probability(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
