"""The one sampling loop: warmup with the kernel's adaptation, then kept draws, for every kernel.

``run(kernel, density, z0, ...)`` owns what every kernel shares: the random stream, the progress bar, the timers,
recording each kept draw (position, the density's by-products such as class probabilities, and the kernel's
per-draw statistics) into preallocated buffers, the count of density evaluations, chains that fail, and what is
kept when the run stops early. Kernels (``bayestrex.kernels``) only ``init`` and ``step``.

A kernel whose warmup is not an iteration loop (tempered SMC moves particles from the prior to the posterior in a
number of stages it chooses) provides ``warmup(density, state, num_warmup, rng)``: a generator that yields
``(info, postfix)`` per density-evaluating step and returns a :class:`~bayestrex.kernels.base.Warmed`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .kernels.base import Warmed

__all__ = ["Draws", "Warmed", "run", "SamplingStopped", "adaptive_warmup"]  # Warmed: from kernels.base


class SamplingStopped(RuntimeWarning):
    """A run stopped before its last draw (an error or an interrupt); what it drew is kept and marked partial."""


@dataclass
class Draws:
    """What a run hands back: kept draws, what the density computed at them, and the sampler's statistics."""

    z: torch.Tensor  #: [chains, draws, latent_dim], CPU
    aux: dict[str, torch.Tensor]  #: name -> [chains, draws, ...] (probs, u, log_likelihood), CPU
    stats: dict[str, torch.Tensor]  #: name -> [chains, draws], CPU
    failed: dict[int, str] = field(default_factory=dict)  #: chain index -> why it failed (NaN draws from then on)
    info: dict = field(default_factory=dict)  #: kernel settings and totals (density evaluations, seconds)
    groups: dict[str, dict] = field(default_factory=dict)  #: extra DataTree groups from warmup (e.g. ``smc``)
    stopped: str | None = None  #: why the run stopped early (None: it finished)


def adaptive_warmup(kernel, density, state, num_warmup: int, rng: torch.Generator):
    """The usual warmup: ``num_warmup`` transitions, each followed by the adaptation's ``update``. A generator that
    yields ``(info, None)`` per iteration and returns a :class:`~bayestrex.kernels.base.Warmed`."""
    adaptation = kernel.adaptation(density, state.z, num_warmup)
    astate = adaptation.init(state, num_warmup)
    for it in range(num_warmup):
        params = adaptation.parameters(astate, it, rng)
        new, info = kernel.step(density, state, params, rng)
        astate = adaptation.update(astate, it, state, new, info, params)
        state = new
        yield info, None
    return Warmed(state, adaptation, adaptation.final(astate))


class _Recorder:
    """Kept draws written into buffers ``[C, S, ...]`` allocated at the first draw (CPU, NaN-filled)."""

    def __init__(self, num_chains: int, num_samples: int, fields: tuple[str, ...]):
        self.C, self.S, self.fields, self.n = num_chains, num_samples, fields, 0
        self.z = self.aux = self.stats = None

    @staticmethod
    def _buffer(shape, like: torch.Tensor):
        if like.dtype == torch.bool:
            return torch.zeros(shape, dtype=torch.bool)
        if not like.is_floating_point():
            return torch.zeros(shape, dtype=like.dtype)
        return torch.full(shape, math.nan, dtype=like.dtype)

    def record(self, state, info):
        if self.z is None:
            self.z = self._buffer((self.C, self.S, *state.z.shape[1:]), state.z)
            self.aux = {k: self._buffer((self.C, self.S, *v.shape[1:]), v) for k, v in state.aux.items()}
            self.stats = {k: self._buffer((self.C, self.S), getattr(info, k)) for k in self.fields}
        t = self.n
        self.z[:, t] = state.z.detach().cpu()
        for k, v in state.aux.items():
            if k in self.aux:
                self.aux[k][:, t] = v.detach().cpu()
        for k in self.fields:
            self.stats[k][:, t] = getattr(info, k).detach().cpu()
        self.n += 1

    def kept(self) -> tuple[torch.Tensor, dict, dict]:
        n = self.n
        return self.z[:, :n], {k: v[:, :n] for k, v in self.aux.items()}, {k: v[:, :n] for k, v in self.stats.items()}


def run(kernel, density, z0: torch.Tensor, *, num_samples: int, warmup: int, seed: int,
        progress: bool = True) -> Draws:
    """Run ``kernel`` on ``density`` from ``z0 [C, d]``: ``warmup`` adaptation iterations, then ``num_samples``
    kept draws per chain. Same seed, same draws (on CPU).

    A chain that fails (an exception inside a kernel that isolates chains, e.g. ``nuts``) is reported in
    ``Draws.failed`` and holds NaN draws from then on. When the whole step fails or the user interrupts, the run
    stops, keeps the draws made so far, marks them (``Draws.stopped``) and warns with :class:`SamplingStopped`;
    an interrupt or error before the first kept draw is raised.
    """
    C = z0.shape[0]
    rng = torch.Generator(device=z0.device).manual_seed(seed)
    batched = getattr(kernel, "batched", True)
    gradients = bool(getattr(kernel, "needs_gradients", True))
    fields = tuple(kernel.recorded)
    recorder = _Recorder(C, num_samples, fields)
    failed: dict[int, str] = {}
    calls = evals = 0
    stopped = None
    t0 = time.perf_counter()
    warmup_seconds = 0.0
    state = kernel.init(density, z0, rng)
    own_warmup = getattr(kernel, "warmup", None)
    bar = tqdm(total=None if own_warmup else warmup + num_samples, desc=kernel.name, disable=not progress, unit="it")

    def account(info, it, extra=None):
        nonlocal calls, evals
        n = info.n_steps
        c = int(n.max()) if batched else int(n.sum())
        calls, evals = calls + c, evals + (c * C if batched else c)
        for chain, msg in getattr(info, "errors", {}).items():
            if chain not in failed:
                failed[chain] = msg
                warnings.warn(f"{kernel.name}: chain {chain} failed and holds NaN draws from iteration {it}: {msg}",
                              RuntimeWarning, stacklevel=3)
        bar.update()
        if it % 10 == 0:
            bar.set_postfix(_postfix(info) | (extra or {}), refresh=False)

    try:
        steps = (own_warmup(density, state, warmup, rng) if own_warmup is not None
                 else adaptive_warmup(kernel, density, state, warmup, rng))
        it = 0
        while True:
            try:
                info, extra = next(steps)
            except StopIteration as done:
                warmed = done.value
                break
            account(info, it, extra)
            it += 1
        state, adaptation, astate = warmed.state, warmed.adaptation, warmed.astate
        warmup_seconds = time.perf_counter() - t0
        if bar.total != it + num_samples:  # a kernel whose warmup ran a number of stages of its own choosing
            bar.total = it + num_samples
            bar.refresh()
        for s in range(num_samples):
            params = adaptation.parameters(astate, warmup + s, rng)
            try:
                state, info = kernel.step(density, state, params, rng)
            except KeyboardInterrupt:
                if recorder.n == 0:
                    raise  # nothing kept yet: the interrupt itself
                stopped = "interrupted"
                break
            except Exception as e:  # noqa: BLE001 - the draws so far are kept, the error reported
                if recorder.n == 0:
                    raise
                stopped = f"{type(e).__name__}: {e}"
                break
            recorder.record(state, info)
            account(info, warmup + s)
    finally:
        bar.close()
    if stopped is not None:
        warnings.warn(f"{kernel.name}: sampling stopped after {recorder.n} of {num_samples} draws ({stopped}); "
                      "the draws so far are kept and marked partial", SamplingStopped, stacklevel=2)
    z, aux, stats = recorder.kept()
    seconds = time.perf_counter() - t0
    info = dict(kernel=kernel.name, **adaptation.describe(astate), sampling_seconds=seconds,
                warmup_seconds=warmup_seconds, draws_done=recorder.n)
    if gradients:
        info.update(grad_calls=calls, grad_evals=evals)
    else:
        info.update(likelihood_calls=calls, likelihood_evals=evals, grad_evals=0)
    return Draws(z=z, aux=aux, stats=stats, failed=failed, info=info, groups=dict(warmed.groups), stopped=stopped)


def _postfix(info) -> dict:
    out = {}
    if hasattr(info, "step_size"):
        out["step"] = f"{float(torch.nanmedian(info.step_size.float())):.3g}"
    out["steps"] = int(info.n_steps.max())
    if hasattr(info, "acceptance_rate"):
        out["acc"] = f"{float(info.acceptance_rate.float().mean()):.2f}"
    return out
