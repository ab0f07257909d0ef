"""Pyro's NUTS as a kernel of this package: a thin adapter on Pyro's public kernel API.

Two ways to run C chains (Pyro's own ``MCMC(num_chains=C)`` runs them one after another on a 2-core machine,
in separate processes only when ``C <= cpu_count - 1``):

``chains="independent"`` (kernel ``"nuts"``)
    C separate NUTS chains, each with its own step size, mass matrix and tree depth, each a batch of one. One
    ``step`` advances each chain by one iteration, in turn, each with its own random stream (seed + chain index),
    so a chain's draws do not depend on how many chains run beside it. Statistically the reference.
``chains="plate"`` (kernel ``"nuts-plate"``)
    one NUTS chain over the stacked codes ``[C, d]`` (the chains are a ``pyro.plate``): every gradient is one
    batched pass, but the C chains share one step size, one mass matrix, one tree depth and one accept/reject
    decision: the hardest chain sets the pace. Per-draw statistics are the same for every chain, and the energy
    is the joint one.

Pyro's kernels are stateful objects; the adapter's state holds them, and ``step`` calls only their public methods
(``setup``, ``sample``, ``diagnostics``, ``step_size``). Per-draw statistics come from what is public:
``step_size``; ``diverging`` from ``diagnostics()["divergences"]``; ``n_steps`` by counting calls of the potential
(every gradient evaluation: the tree's leapfrog steps); ``tree_depth`` from the number of tree doublings, read from
the trace of the iteration's ``pyro.sample`` statements (one ``direction`` site per doubling), and ``energy`` from
the momentum site of the same trace. The mean Metropolis acceptance probability of the tree is not public in Pyro,
so NUTS draws have no ``acceptance_rate`` statistic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pyro.infer.mcmc import NUTS
from pyro.poutine.messenger import Messenger

from . import register
from .base import Fixed, positive_int, probability

__all__ = ["PyroNUTS", "NUTSState", "NUTSInfo"]


class _Chain:
    """One Pyro NUTS kernel (a chain, or the plate of all chains) with its own random stream and potential."""

    def __init__(self, density, rows: list[int], z0: torch.Tensor, seed: int, options: dict):
        self.density, self.rows, self.calls = density, rows, 0
        self.cache: dict[int, tuple] = {}  # id(z tensor) -> (tensor, potential [len(rows)], aux), this iteration's
        self.kernel = NUTS(potential_fn=self._potential, **options)
        self.kernel.initial_params = {"z": z0.detach().clone()}
        self.params = self.kernel.initial_params
        self.last = None  # (potential [len(rows)], aux) at self.params["z"]
        device = z0.device
        self._cuda = device if device.type == "cuda" else None
        with torch.random.fork_rng(devices=[device] if self._cuda else []):
            torch.manual_seed(seed)
            self.rng_state = self._get_rng()

    def _get_rng(self):
        return (torch.get_rng_state(), torch.cuda.get_rng_state(self._cuda) if self._cuda else None)

    def _set_rng(self, state):
        torch.set_rng_state(state[0])
        if self._cuda:
            torch.cuda.set_rng_state(state[1], self._cuda)

    def _potential(self, params):
        z = params["z"]
        self.calls += 1
        lp, aux = self.density.evaluate(z.view(-1, z.shape[-1]), differentiable=True)
        self.cache[id(z)] = (z, -lp.detach(), aux)
        return -lp.sum()

    def run(self, fn):
        """Call ``fn()`` in this chain's random stream (the global torch RNG, which Pyro uses, is restored after)."""
        with torch.random.fork_rng(devices=[self._cuda] if self._cuda else []):
            self._set_rng(self.rng_state)
            out = fn()
            self.rng_state = self._get_rng()
        return out

    def at(self, z: torch.Tensor):
        """``(potential, aux)`` at a tensor the potential was evaluated at (else evaluated now, counted)."""
        hit = self.cache.get(id(z))
        if hit is not None and hit[0] is z:
            return hit[1], hit[2]
        self.calls += 1
        lp, aux = self.density.evaluate(z.view(-1, z.shape[-1]))
        return -lp, aux


class _Sites(Messenger):
    """Watches the ``pyro.sample`` statements of one NUTS iteration: the momentum draw (its kinetic energy,
    ``r·r / 2`` for the unscaled momentum) and one ``direction`` draw per tree doubling."""

    def __init__(self):
        super().__init__()
        self.doublings, self.kinetic = 0, 0.0

    def _postprocess_message(self, msg):
        name = str(msg["name"])
        if name.startswith("direction_t="):
            self.doublings += 1
        elif name.startswith("r_t="):
            self.kinetic = self.kinetic + 0.5 * msg["value"].dot(msg["value"])


class NUTSState(NamedTuple):
    z: torch.Tensor  #: [C, d]; NaN rows for failed chains
    aux: dict  #: by-products at z
    chains: tuple  #: the Pyro kernels (stateful objects), one per group of rows
    failed: dict  #: chain index -> error message


class NUTSInfo(NamedTuple):
    diverging: torch.Tensor  #: [C] bool
    step_size: torch.Tensor  #: [C]
    tree_depth: torch.Tensor  #: [C] tree doublings
    n_steps: torch.Tensor  #: [C] gradient evaluations
    energy: torch.Tensor  #: [C] Hamiltonian at the start of the transition (joint, for the plate)
    errors: dict  #: chain index -> error, for chains that failed in this step


@register("nuts")
@register("nuts-plate", chains="plate")
class PyroNUTS:
    """Pyro NUTS (multinomial, diagonal mass matrix adapted with Stan's windows, dual-averaging step size).

    Parameters
    ----------
    chains : {"independent", "plate"}
        How C chains run; see the module docstring for the trade-off.
    target_accept, max_tree_depth, adapt_mass_matrix, full_mass, jit_compile
        Passed to ``pyro.infer.mcmc.NUTS``.
    """

    needs_gradients = True
    checkpoints = False  #: Pyro's kernel keeps its adaptation inside objects we do not own: no resumable runs
    recorded = ("diverging", "step_size", "tree_depth", "n_steps", "energy")

    def __init__(self, chains: str = "independent", *, target_accept: float = 0.8, max_tree_depth: int = 10,
                 adapt_mass_matrix: bool = True, full_mass: bool = False, jit_compile: bool = False):
        if chains not in ("independent", "plate"):
            raise ValueError(f"chains must be 'independent' or 'plate', got {chains!r}")
        max_tree_depth = positive_int("max_tree_depth", max_tree_depth)
        self.chains = chains
        self.options = dict(target_accept_prob=probability("target_accept", target_accept),
                            max_tree_depth=max_tree_depth, adapt_mass_matrix=adapt_mass_matrix, full_mass=full_mass,
                            jit_compile=jit_compile, ignore_jit_warnings=True)

    @property
    def name(self) -> str:
        return "nuts" if self.chains == "independent" else "nuts-plate"

    @property
    def summary(self) -> str:
        if self.chains == "independent":
            return "Pyro NUTS, chains one after another (the reference; each gradient a batch of one)"
        return "Pyro NUTS over all chains as one plate (one step size, tree and accept decision for all)"

    @property
    def batched(self) -> bool:
        return self.chains == "plate"

    def init(self, density, z0, rng) -> NUTSState:
        if density.per_chain and self.chains == "independent":
            raise ValueError("kernel 'nuts' runs each chain alone and cannot use a per-chain prior or model; "
                             "use 'nuts-plate', 'hmc' or 'chees'")
        C = z0.shape[0]
        groups = [[c] for c in range(C)] if self.chains == "independent" else [list(range(C))]
        seed = rng.initial_seed()
        chains = tuple(_Chain(density, rows, z0[rows], seed + i, self.options)
                       for i, rows in enumerate(groups))
        return NUTSState(z0.clone(), {}, chains, {})

    def adaptation(self, density, z0, num_warmup):
        return _PyroSetup(self.options)

    def step(self, density, state: NUTSState, params, rng) -> tuple[NUTSState, NUTSInfo]:
        C = state.z.shape[0]
        nan = torch.full((C,), math.nan)
        diverging, n_steps = torch.zeros(C, dtype=torch.bool), torch.zeros(C, dtype=torch.long)
        step_size, tree_depth, energy = nan.clone(), nan.clone(), nan.clone()
        z, aux, failed, errors = state.z.clone(), dict(state.aux), dict(state.failed), {}
        for ch in state.chains:
            if ch.rows[0] in failed:
                continue
            try:
                row = self._advance(ch)
            except Exception as e:  # noqa: BLE001 - a failing chain is reported, never dropped silently
                msg = f"{type(e).__name__}: {e}"
                for c in ch.rows:
                    failed[c] = errors[c] = msg
                z[ch.rows] = math.nan
                for v in aux.values():
                    v[ch.rows] = math.nan
                continue
            zc, start_potential, aux_c, eps, depth, div, n, kinetic = row
            z[ch.rows] = zc.view(len(ch.rows), -1).to(z.dtype)
            for k, v in aux_c.items():
                if k not in aux:
                    aux[k] = torch.full((C, *v.shape[1:]), math.nan, dtype=v.dtype, device=v.device)
                aux[k][ch.rows] = v
            step_size[ch.rows], tree_depth[ch.rows], n_steps[ch.rows] = eps, depth, n
            diverging[ch.rows] = div
            energy[ch.rows] = float(start_potential.sum() + kinetic)
        if len(failed) == C:
            raise RuntimeError(f"every chain failed; first error: {next(iter(failed.values()))}")
        return (NUTSState(z, aux, state.chains, failed),
                NUTSInfo(diverging, step_size, tree_depth, n_steps, energy, errors))

    @staticmethod
    def _advance(ch: _Chain):
        """One NUTS iteration of one group, through Pyro's public API; its statistics."""
        kernel = ch.kernel
        start_potential = ch.last[0] if ch.last is not None else ch.at(ch.params["z"])[0]
        eps, calls0 = float(kernel.step_size), ch.calls
        divergences = _divergences(kernel)
        sites = _Sites()

        def sample():
            with sites:
                return kernel.sample(ch.params)

        ch.cache = {k: v for k, v in ch.cache.items() if v[0] is ch.params["z"]}  # keep only the current point
        params = ch.run(sample)
        depth, kinetic = sites.doublings, sites.kinetic
        potential, aux = ch.at(params["z"])
        ch.params, ch.last = params, (potential, aux)
        diverged = _divergences(kernel) > divergences
        return params["z"].detach(), start_potential, aux, eps, depth, diverged, ch.calls - calls0, kinetic


def _divergences(kernel) -> int:
    """Divergent transitions after warmup so far (Pyro's ``diagnostics()``; its acceptance-rate entry divides by
    the post-warmup iterations, zero right at the end of warmup)."""
    try:
        return len(kernel.diagnostics()["divergences"])
    except ZeroDivisionError:
        return 0


class _PyroSetup(Fixed):
    """Pyro's NUTS adapts itself (dual averaging, Stan's mass windows): here its ``setup`` is called once."""

    def __init__(self, options: dict):
        super().__init__(describe={k: v for k, v in options.items() if k != "ignore_jit_warnings"})

    def init(self, state: NUTSState, num_warmup: int):
        for ch in state.chains:
            ch.run(lambda ch=ch: ch.kernel.setup(num_warmup))
        return None
