"""Pyro's NUTS on the posterior's Pyro model, with per-draw sample statistics.

Two ways to run C chains (Pyro's own ``MCMC(num_chains=C)`` runs them one after another on a 2-core machine,
in separate processes only when ``C <= cpu_count - 1``):

``chains="independent"`` (kernel ``"nuts"``)
    C separate NUTS chains run in turn, each with its own step size, mass matrix and tree depth. Statistically the
    reference; wall time grows linearly in C and every gradient is a batch of one.
``chains="plate"`` (kernel ``"nuts-plate"``)
    one NUTS chain over the stacked codes ``[C, d]`` (the chains are a ``pyro.plate``): every gradient is one
    batched pass, so it is much faster per draw, but the C chains share one step size, one mass matrix, one
    tree depth and one accept/reject decision: the hardest chain sets the pace, and R-hat compares chains that are
    not independent *transitions* (they are still independent *posteriors*: the joint density factorises).
    Per-draw statistics are then the same for every chain, and the energy is the joint one.
"""

from __future__ import annotations

import time
import warnings

import torch
from pyro.infer.mcmc import NUTS
from tqdm.auto import tqdm

from . import Draws, register

STATS = ("diverging", "acceptance_rate", "step_size", "tree_depth", "n_steps", "energy")


class _RecordingNUTS(NUTS):
    """Pyro's NUTS, unchanged, plus a record of each iteration's statistics (hooks on its tree building)."""

    def sample(self, params):
        self._record = dict(diverging=False, accept_sum=0.0, proposals=0, tree_depth=0, n_steps=0, kinetic=None)
        potential = self._potential_energy_last
        step_size = self.step_size
        params = super().sample(params)
        r = self._record
        r["step_size"] = step_size
        r["acceptance_rate"] = r.pop("accept_sum") / max(r.pop("proposals"), 1)
        kinetic = r.pop("kinetic")
        r["energy"] = float(potential + kinetic) if kinetic is not None and potential is not None else float("nan")
        return params

    def _sample_r(self, name):
        r, r_unscaled = super()._sample_r(name)
        if getattr(self, "_record", None) is not None:
            self._record["kinetic"] = float(self._kinetic_energy(r_unscaled))
        return r, r_unscaled

    def _build_basetree(self, *args, **kwargs):
        tree = super()._build_basetree(*args, **kwargs)
        if getattr(self, "_record", None) is not None:
            r = self._record
            r["n_steps"] += 1
            r["diverging"] |= bool(tree.diverging)
            r["accept_sum"] += float(tree.sum_accept_probs)
            r["proposals"] += int(tree.num_proposals)
        return tree

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        if getattr(self, "_record", None) is not None:
            self._record["tree_depth"] = max(self._record["tree_depth"], tree_depth + 1)
        return super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)


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

    def __init__(self, chains: str = "independent", *, target_accept: float = 0.8, max_tree_depth: int = 10,
                 adapt_mass_matrix: bool = True, full_mass: bool = False, jit_compile: bool = False,
                 use_pyro_model: bool = False):
        if chains not in ("independent", "plate"):
            raise ValueError(f"chains must be 'independent' or 'plate', got {chains!r}")
        if isinstance(max_tree_depth, bool) or not isinstance(max_tree_depth, int) or max_tree_depth < 1:
            raise ValueError(f"max_tree_depth must be an integer >= 1, got {max_tree_depth!r}")
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        self.chains, self.use_pyro_model = chains, use_pyro_model
        self.options = dict(target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                            adapt_mass_matrix=adapt_mass_matrix, full_mass=full_mass, jit_compile=jit_compile,
                            ignore_jit_warnings=True)

    @property
    def name(self) -> str:
        return "nuts" if self.chains == "independent" else "nuts-plate"

    def run(self, posterior, z0, *, num_samples, warmup, seed, progress=True) -> Draws:
        num_chains, d = z0.shape
        groups = [[c] for c in range(num_chains)] if self.chains == "independent" else [list(range(num_chains))]
        z = torch.full((num_chains, num_samples, d), float("nan"))
        stats = {k: torch.full((num_chains, num_samples), float("nan")) for k in STATS}
        failed, grad_calls, grad_evals, t0 = {}, 0, 0, time.perf_counter()
        with tqdm(total=len(groups) * (warmup + num_samples), desc=self.name, disable=not progress,
                  unit="it") as bar:
            for i, chains in enumerate(groups):
                if len(groups) > 1:
                    bar.set_description(f"{self.name} chain {i + 1}/{len(groups)}")
                start = bar.n
                try:
                    zs, st, n = self._run_group(posterior, z0[chains], num_samples, warmup, seed + i, bar)
                except Exception as e:  # noqa: BLE001 - reported per chain below, never dropped silently
                    for c in chains:
                        failed[c] = f"{type(e).__name__}: {e}"
                    warnings.warn(f"{self.name}: chain(s) {chains} failed and hold NaN draws: {e}", RuntimeWarning,
                                  stacklevel=2)
                    bar.update(start + warmup + num_samples - bar.n)
                    continue
                grad_calls, grad_evals = grad_calls + n, grad_evals + n * len(chains)
                z[chains] = zs
                for k in STATS:
                    stats[k][chains] = st[k]
        if len(failed) == num_chains:
            raise RuntimeError(f"every chain failed; first error: {next(iter(failed.values()))}")
        stats["diverging"] = stats["diverging"] == 1
        info = dict(kernel=self.name, chains=self.chains, grad_calls=grad_calls, grad_evals=grad_evals,
                    sampling_seconds=time.perf_counter() - t0, **self.options)
        return Draws(z=z, stats=stats, failed=failed, info=info)

    def _run_group(self, posterior, z0, num_samples, warmup, seed, bar):
        if self.use_pyro_model:
            kernel = _RecordingNUTS(posterior.pyro_model(len(z0)), **self.options)
        else:
            kernel = _RecordingNUTS(potential_fn=lambda p: -posterior.log_density(p["z"]).sum(), **self.options)
        kernel.initial_params = {"z": z0.detach().clone()}
        zs, rows, n_steps = [], [], 0
        with torch.random.fork_rng(devices=[z0.device] if z0.device.type == "cuda" else []):
            torch.manual_seed(seed)
            kernel.setup(warmup)
            params = kernel.initial_params
            for it in range(warmup + num_samples):
                params = kernel.sample(params)
                rec = kernel._record
                n_steps += rec["n_steps"]
                if it >= warmup:
                    zs.append(params["z"].detach().cpu())
                    rows.append(rec)
                bar.update()
                if it % 10 == 0:
                    bar.set_postfix(step=f"{rec['step_size']:.3g}", depth=rec["tree_depth"],
                                    acc=f"{rec['acceptance_rate']:.2f}")
            kernel.cleanup()
        st = {k: torch.tensor([float(r[k]) for r in rows]).expand(len(z0), -1) for k in STATS}
        return torch.stack(zs, dim=1), st, n_steps
