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

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, decode, encode
from .kernels.base import Warmed

__all__ = ["Draws", "Warmed", "run", "SamplingStopped", "progress_bar"]  # Warmed: from kernels.base


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

    def restore(self, z: torch.Tensor, aux: dict, stats: dict) -> None:
        """Put back draws kept before a checkpoint: ``z [C, n, ...]`` and dicts of ``[C, n, ...]``."""
        self.n = n = z.shape[1]
        if n == 0:
            return
        self.z = self._buffer((self.C, self.S, *z.shape[2:]), z)
        self.aux = {k: self._buffer((self.C, self.S, *v.shape[2:]), v) for k, v in aux.items()}
        self.stats = {k: self._buffer((self.C, self.S), v) for k, v in stats.items()}
        self.z[:, :n] = z
        for k, v in aux.items():
            self.aux[k][:, :n] = v
        for k, v in stats.items():
            self.stats[k][:, :n] = v

    def kept(self, n: int | None = None) -> tuple[torch.Tensor, dict, dict]:
        """The first ``n`` kept draws (default: all so far); empty tensors before the first draw."""
        n = self.n if n is None else n
        if self.z is None:
            empty = torch.zeros(self.C, 0)
            return empty, {}, {}
        return self.z[:, :n], {k: v[:, :n] for k, v in self.aux.items()}, {k: v[:, :n] for k, v in self.stats.items()}


def run(kernel, density, z0: torch.Tensor, *, num_samples: int, warmup: int, seed: int,
        progress: bool = True, checkpoint: Checkpoint | None = None, resume: dict | None = None) -> Draws:
    """Run ``kernel`` on ``density`` from ``z0 [C, d]``: ``warmup`` adaptation iterations, then ``num_samples``
    kept draws per chain. Same seed, same draws (on CPU).

    A chain that fails (an exception inside a kernel that isolates chains, e.g. ``nuts``) is reported in
    ``Draws.failed`` and holds NaN draws from then on. When the whole step fails or the user interrupts, the run
    stops, keeps the draws made so far, marks them (``Draws.stopped``) and warns with :class:`SamplingStopped`;
    an interrupt or error before the first kept draw is raised.

    ``checkpoint`` (a :class:`~bayestrex.checkpoint.Checkpoint`) saves the run every ``checkpoint.every`` seconds,
    when warmup ends, and when it stops early (SIGTERM is then handled as an interrupt); ``resume`` (a snapshot from
    :func:`bayestrex.checkpoint.load`) continues such a run: the draws are those of an uninterrupted run.
    """
    C = z0.shape[0]
    rng = torch.Generator(device=z0.device).manual_seed(seed)
    own_warmup = getattr(kernel, "warmup", None)
    if (checkpoint is not None or resume is not None) and own_warmup is not None:
        raise ValueError(f"checkpoint: kernel {kernel.name!r} runs its own warmup, which cannot be checkpointed; "
                         "run it without checkpoint/resume")
    batched = getattr(kernel, "batched", True)
    gradients = bool(getattr(kernel, "needs_gradients", True))
    fields = tuple(kernel.recorded)
    recorder = _Recorder(C, num_samples, fields)
    failed: dict[int, str] = {}
    counts = [0, 0]  # density calls, density evaluations (calls x chains for batched kernels)
    stopped = error = None
    t0 = time.perf_counter()
    warmup_seconds = 0.0
    state = kernel.init(density, z0, rng)
    total = None if own_warmup else warmup + num_samples
    bar = tqdm(total=total, desc=kernel.name, disable=not progress, unit="it")

    def account(info, it, extra=None):
        n = info.n_steps
        c = int(n.max()) if batched else int(n.sum())
        counts[0] += c
        counts[1] += c * C if batched else c
        for chain, msg in getattr(info, "errors", {}).items():
            if chain not in failed:
                failed[chain] = msg
                warnings.warn(f"{kernel.name}: chain {chain} failed and holds NaN draws from iteration {it}: {msg}",
                              RuntimeWarning, stacklevel=3)
        bar.update()
        if it % 10 == 0:
            bar.set_postfix(_postfix(info) | (extra or {}), refresh=False)

    try:
        if own_warmup is not None:  # e.g. tempered SMC: stages of its own choosing, then the sampling iterations
            steps, it = own_warmup(density, state, warmup, rng), 0
            while True:
                try:
                    info, extra = next(steps)
                except StopIteration as done:
                    warmed = done.value
                    break
                account(info, it, extra)
                it += 1
            state, adaptation, astate, groups = warmed.state, warmed.adaptation, warmed.astate, dict(warmed.groups)
            warmup_seconds = time.perf_counter() - t0
            bar.total = it + num_samples
            bar.refresh()
            start, end = warmup, warmup + num_samples
        else:
            adaptation = kernel.adaptation(density, state.z, warmup)
            astate, groups, start, end = adaptation.init(state, warmup), {}, 0, warmup + num_samples
            if resume is not None:
                start, state, astate = _restore(resume, rng, recorder, failed, counts, state, astate, z0.device)
                t0 -= resume["seconds"]
                warmup_seconds = resume["warmup_seconds"]
                bar.update(start)
        with _interrupts_at_iteration_end(checkpoint is not None) as interrupted:
            for it in range(start, end):
                boundary = astate  # the adaptation before `final`: what a snapshot at iteration `warmup` holds
                if it == warmup and own_warmup is None:
                    warmup_seconds = time.perf_counter() - t0
                    if checkpoint is not None and it > start:  # before `final`, which the resumed run applies
                        _write(checkpoint, _snapshot(it, state, astate, rng.get_state(), recorder, failed, counts,
                                                     time.perf_counter() - t0, warmup_seconds, warmup))
                    astate = adaptation.final(astate)
                rng_before = rng.get_state() if checkpoint is not None else None
                try:
                    params = adaptation.parameters(astate, it, rng)
                    new, info = kernel.step(density, state, params, rng)
                    new_astate = adaptation.update(astate, it, state, new, info, params) if it < warmup else astate
                    if it >= warmup:
                        recorder.record(new, info)
                except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - the draws so far are kept, the error named
                    error, resume_at, rng_state = e, it, rng_before
                    if it == warmup and own_warmup is None:
                        astate = boundary
                else:
                    state, astate = new, new_astate
                    try:
                        account(info, it)
                        if interrupted() and it + 1 < end:
                            error, resume_at, rng_state = KeyboardInterrupt(), it + 1, rng.get_state()
                        elif checkpoint is not None and checkpoint.due() and it + 1 < end:
                            _write(checkpoint, _snapshot(it + 1, state, astate, rng.get_state(), recorder, failed,
                                                         counts, time.perf_counter() - t0, warmup_seconds, warmup))
                    except KeyboardInterrupt as e:  # a second Ctrl-C after this iteration was kept
                        error, resume_at, rng_state = e, it + 1, rng.get_state()
                if error is not None:
                    if checkpoint is not None and resume_at < end:
                        try:
                            _write(checkpoint, _snapshot(resume_at, state, astate, rng_state, recorder, failed,
                                                         counts, time.perf_counter() - t0, warmup_seconds, warmup))
                        except KeyboardInterrupt:  # the previous checkpoint stays, complete
                            pass
                    if recorder.n == 0:  # nothing kept yet: the interrupt or error itself
                        raise error
                    stopped = ("interrupted" if isinstance(error, KeyboardInterrupt)
                               else f"{type(error).__name__}: {error}")
                    break
    finally:
        bar.close()
    if stopped is not None:
        warnings.warn(f"{kernel.name}: sampling stopped after {recorder.n} of {num_samples} draws ({stopped}); "
                      "the draws so far are kept and marked partial", SamplingStopped, stacklevel=2)
    z, aux, stats = recorder.kept()
    seconds = time.perf_counter() - t0
    info = dict(kernel=kernel.name, **adaptation.describe(astate), sampling_seconds=seconds,
                warmup_seconds=warmup_seconds, draws_done=recorder.n)
    calls, evals = counts
    if gradients:
        info.update(grad_calls=calls, grad_evals=evals)
    else:
        info.update(likelihood_calls=calls, likelihood_evals=evals, grad_evals=0)
    if resume is not None:
        info.update(resumed_at_iteration=int(resume["iteration"]))
    return Draws(z=z, aux=aux, stats=stats, failed=failed, info=info, groups=groups, stopped=stopped)


def _write(checkpoint: Checkpoint, snapshot: dict) -> None:
    """Write a checkpoint; a failure to write (a full disk, a lost folder) warns and the run goes on."""
    try:
        checkpoint.write(snapshot)
    except OSError as e:
        warnings.warn(f"could not write the checkpoint {checkpoint.path}: {e}; the run goes on without it",
                      RuntimeWarning, stacklevel=3)


def _snapshot(it, state, astate, rng_state, recorder, failed, counts, seconds, warmup_seconds, warmup) -> dict:
    """Everything needed to continue before iteration ``it``: the draws kept in iterations ``< it`` only (an
    interrupt may land after a draw was recorded but before its iteration ended)."""
    kept = max(0, it - warmup)
    z, aux, stats = recorder.kept(kept)
    return dict(iteration=it, state=encode(state), astate=encode(astate), rng=rng_state.clone(),
                z=z.clone(), aux={k: v.clone() for k, v in aux.items()}, stats={k: v.clone() for k, v in stats.items()},
                failed={int(k): str(v) for k, v in failed.items()}, counts=list(counts), seconds=float(seconds),
                warmup_seconds=float(warmup_seconds))


def _restore(snapshot, rng, recorder, failed, counts, state, astate, device):
    """Put a snapshot back: the random stream, the kept draws, failed chains, counters; returns the iteration to
    continue from and the kernel and adaptation states (rebuilt against fresh ones of the same kernel)."""
    rng.set_state(snapshot["rng"])
    recorder.restore(snapshot["z"], snapshot["aux"], snapshot["stats"])
    failed.update({int(k): v for k, v in snapshot["failed"].items()})
    counts[:] = snapshot["counts"]
    return (int(snapshot["iteration"]), decode(state, snapshot["state"], device),
            decode(astate, snapshot["astate"], device))


@contextlib.contextmanager
def _interrupts_at_iteration_end(sigterm: bool):
    """Ctrl-C (and SIGTERM when ``sigterm``, a checkpointed run) ends the run at the end of the iteration in
    progress: yields a function telling whether one arrived. A second Ctrl-C raises ``KeyboardInterrupt`` at once.
    Handlers are installed in the main thread only (elsewhere Python delivers no signals) and put back after."""
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        with contextlib.suppress(RuntimeError):  # a reentrant write if the signal interrupted one
            sys.stderr.write("\nstopping at the end of this iteration (again to stop at once)\n")

    names = [signal.SIGINT] + ([signal.SIGTERM] if sigterm else [])
    # an ignored signal (a background job, a worker) stays ignored; a handler installed from C (None) is left alone
    names = [n for n in names if signal.getsignal(n) not in (signal.SIG_IGN, None)]
    previous = {name: signal.signal(name, handler) for name in names}
    try:
        yield lambda: bool(caught)
    finally:
        for name, old in previous.items():
            signal.signal(name, old)


@contextlib.contextmanager
def progress_bar(desc: str, enabled: bool = True):
    """A progress bar for set-up work before the run (e.g. starting points): yields ``update(done, total)``. Kept
    here so that every progress bar of a run is the driver's."""
    bar = tqdm(total=None, desc=desc, disable=not enabled, unit="step", leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        if done == total or done % 10 == 0:
            bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _postfix(info) -> dict:
    out = {}
    if hasattr(info, "step_size"):
        out["step"] = f"{float(torch.nanmedian(info.step_size.float())):.3g}"
    out["steps"] = int(info.n_steps.max())
    if hasattr(info, "acceptance_rate"):
        out["acc"] = f"{float(info.acceptance_rate.float().mean()):.2f}"
    return out
