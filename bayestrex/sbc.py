"""Simulation-based calibration: is a kernel's posterior right on the digits (or any) generator and classifier?

Talts, Betancourt, Simpson, Vehtari & Gelman (2018); Modrák et al. (2023). Repeat R times: draw ``z̃`` from the prior,
set the target to the statistics of ``G(z̃)`` plus ``N(0, σ²)`` noise (a :class:`~bayestrex.targets.Custom` target
with the statistic of any target form, so any value is allowed), sample that posterior exactly as a user would
(``bt.sample``: default starting points, the kernel's own tuning), thin to ``L`` nearly independent draws (spread
over the chains: the last draw of each chain when there are at least ``L`` chains), and record the rank of ``z̃``
(and of ``u(G(z̃))``) among them. An exact sampler gives ranks uniform on ``{0, …, L}``; a sampler that keeps the
piece of a multimodal level set its chains start in does not.

Uniformity is judged with simultaneous bands for the ECDF of the ranks (Säilynoja, Bürkner & Vehtari 2022, the
simulation variant): at every point the band is a binomial interval whose level is adjusted by simulation so that the
whole ECDF of uniform ranks stays inside with probability ``1 - α``; ``α = 0.05`` is split over the quantities
(Bonferroni), so the overall verdict has a 5% false-alarm rate.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["SBCResult", "simulate", "ecdf_bands", "uniformity", "plot"]

#: offset of the seeds that draw the true codes, apart from the seeds the sampler uses for its starting points
TRUTH_STREAM = 2**31


@dataclass
class SBCResult:
    """Ranks ``[R, Q]`` of the true values among ``L`` draws for ``Q`` quantities (``z[j]`` and ``u[name]``)."""

    ranks: np.ndarray
    names: list[str]
    num_draws: int  #: L: ranks are in {0, ..., L}
    settings: dict = field(default_factory=dict)
    diagnostics: list[dict] = field(default_factory=list)  #: per replicate: R-hat, attainment, seconds, ...

    def verdicts(self, alpha: float = 0.05) -> dict:
        """Per quantity: whether its rank ECDF stays inside the simultaneous band at level ``alpha / Q``."""
        return uniformity(self.ranks, self.num_draws, alpha=alpha)


def _thin(z: torch.Tensor, u: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``L`` draws spread over the chains ``[C, S, ...]``: the last draw of each chain first (the most nearly
    independent of its start), then draws spaced ``S // ceil(L / C)`` apart back through the chains."""
    C, S = z.shape[:2]
    per = math.ceil(L / C)
    picks = [(c, S - 1 - k * (S // per)) for k in range(per) for c in range(C)][:L]
    cs, ts = torch.tensor([p[0] for p in picks]), torch.tensor([p[1] for p in picks])
    return z[cs, ts], u[cs, ts]


def _one_replicate(args: tuple) -> tuple[np.ndarray, dict]:
    """Replicate ``r``: prior draw, noisy statistics, posterior draws, ranks. Runs in a worker process or inline."""
    (generator, classifier, spec, kernel, sigma, chains, samples, warmup, L, seed, threads, options) = args
    from .sampling import sample
    from .targets import Custom, parse

    if threads:
        torch.set_num_threads(threads)
    form = parse(spec)
    # the truth from its own stream: with ``seed`` itself it would be the first of the sampler's own starting draws
    g = torch.Generator().manual_seed(seed + TRUTH_STREAM)
    d = generator.latent_dim
    z_true = torch.randn(1, d, generator=g)
    with torch.no_grad():
        p = torch.softmax(classifier(generator(z_true)), -1)
    u_true = form.statistic(p)[0]
    value = u_true + sigma * torch.randn(u_true.shape, generator=g)
    target = Custom(form.statistic, value, names=form.names(p.shape[-1]), tolerance=form.tolerance)
    result = sample(generator, classifier, target, num_chains=chains, num_samples=samples, warmup=warmup,
                    sigma=sigma, kernel=kernel, seed=seed, progress=False, **options)
    healthy = result.healthy_chains
    z, u = _thin(result.z[healthy], result.u[healthy], L)
    ranks = np.concatenate([(z < z_true[0]).sum(0).numpy(), (u < u_true).sum(0).numpy()])
    from .diagnostics import overview

    o = overview(result)
    return ranks, dict(seed=seed, max_r_hat=o["max_r_hat"], nested_r_hat=o.get("nested_r_hat"),
                       attainment=o["attainment"], grad_evals=o["grad_evals"], seconds=o["seconds"],
                       failed_chains=o["failed_chains"])


def simulate(generator, classifier, statistic: str, *, kernel="chees", sigma: float = 0.05, replicates: int = 100,
             num_chains: int = 16, num_samples: int = 100, warmup: int | None = None, draws: int | None = None,
             seed: int = 0, jobs: int = 1, progress: bool = True, **options) -> SBCResult:
    """Run SBC for ``kernel`` on the posterior of ``statistic`` (any target's string form, e.g. ``"ambiguous:3,8"``:
    its statistic, with a target value drawn as above) at width ``sigma``.

    ``draws`` (``L``, default ``num_chains``) draws per replicate are ranked; ``jobs`` replicates run in parallel
    processes (each with one torch thread); ``options`` go to :func:`bayestrex.sample` (e.g. ``init``).
    Returns an :class:`SBCResult` (ranks ``[replicates, d + m]``)."""
    from .targets import parse

    form = parse(statistic)
    for name, v in (("replicates", replicates), ("num_chains", num_chains), ("num_samples", num_samples),
                    ("jobs", jobs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    L = draws or num_chains
    if L > num_chains * num_samples:
        raise ValueError(f"draws ({L}) cannot exceed num_chains x num_samples ({num_chains * num_samples})")
    kname = kernel if isinstance(kernel, str) else kernel.name
    tasks = [(generator, classifier, statistic, kernel, sigma, num_chains, num_samples, warmup, L, seed + r,
              1 if jobs > 1 else 0, options) for r in range(replicates)]
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=replicates, desc=f"sbc {kname}", disable=not progress, unit="replicate") as bar:
        if jobs == 1:
            for t in tasks:
                out.append(_one_replicate(t))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                for res in pool.map(_one_replicate, tasks):
                    out.append(res)
                    bar.update()
    d = generator.latent_dim
    with torch.no_grad():
        K = classifier(generator(torch.zeros(1, d))).shape[-1]
    names = [f"z[{j}]" for j in range(d)] + [f"u[{n}]" for n in form.names(K)]
    settings = dict(kernel=kname, statistic=statistic, sigma=sigma, replicates=replicates, chains=num_chains,
                    samples=num_samples, warmup=warmup, draws=L, seed=seed)
    return SBCResult(np.stack([o[0] for o in out]), names, L, settings, [o[1] for o in out])


@functools.lru_cache(maxsize=64)
def ecdf_bands(num_ranks: int, L: int, alpha: float, simulations: int = 4000,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous ``1 - alpha`` bands for the counts ``#{rank < k}``, ``k = 1..L``, of ``num_ranks`` ranks uniform
    on ``{0..L}``: ``(k / (L + 1), lower [L], upper [L])`` counts. The pointwise binomial level is lowered until the
    simulated uniform ECDFs stay inside everywhere with probability ``1 - alpha``. Cached: the bands depend on the
    arguments only (the simulation is seeded)."""
    from scipy.stats import binom

    rng = np.random.default_rng(seed)
    x = np.arange(1, L + 1) / (L + 1)
    sims = rng.integers(0, L + 1, size=(simulations, num_ranks))
    counts = (sims[:, :, None] < np.arange(1, L + 1)[None, None, :]).sum(1)  # [sims, L]
    cdf = binom.cdf(counts, num_ranks, x)
    below = binom.cdf(counts - 1, num_ranks, x)
    pointwise = np.minimum(cdf, 1 - below)  # the smaller one-sided tail of each count
    gamma = np.quantile(pointwise.min(1), alpha)  # the per-point level that holds simultaneously
    lower = binom.ppf(gamma, num_ranks, x)
    upper = binom.ppf(1 - gamma, num_ranks, x)
    for a in (x, lower, upper):
        a.setflags(write=False)  # shared by the cache
    return x, lower, upper


def uniformity(ranks: np.ndarray, L: int, alpha: float = 0.05) -> dict:
    """Per quantity (column of ``ranks [R, Q]``): inside the simultaneous band at level ``alpha / Q``?"""
    R, Q = ranks.shape
    x, lower, upper = ecdf_bands(R, L, alpha / Q)
    out = {}
    for q in range(Q):
        counts = (ranks[:, q][:, None] < np.arange(1, L + 1)[None, :]).sum(0)
        outside = (counts < lower) | (counts > upper)
        hist = np.bincount(ranks[:, q], minlength=L + 1)
        out[q] = dict(passed=not outside.any(), worst=float(np.abs(counts / R - x).max()),
                      mean_rank=float(ranks[:, q].mean() / L), edge_share=float((hist[0] + hist[-1]) / R))
    return out


def plot(result: SBCResult, *, alpha: float = 0.05, path=None):
    """ECDF difference (ECDF of fractional ranks minus the uniform's) with the simultaneous band, one panel per
    quantity; a U shape in the histogram (below: ranks at the ends) means too narrow, a hump too wide, a slope bias."""
    import matplotlib.pyplot as plt

    from .plots import _finish

    R, Q = result.ranks.shape
    L = result.num_draws
    x, lower, upper = ecdf_bands(R, L, alpha / Q)
    verdicts = uniformity(result.ranks, L, alpha)
    cols = min(Q, 4)
    rows = math.ceil(Q / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[Q:]:
        ax.axis("off")
    for q, ax in enumerate(axes.flat[:Q]):
        counts = (result.ranks[:, q][:, None] < np.arange(1, L + 1)[None, :]).sum(0)
        ax.fill_between(x, lower / R - x, upper / R - x, color="0.85", step="mid", label=f"{1 - alpha:.0%} band")
        ax.step(x, counts / R - x, where="mid", color="tab:blue" if verdicts[q]["passed"] else "tab:red", lw=1.2)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{result.names[q]}: {'pass' if verdicts[q]['passed'] else 'FAIL'}", fontsize=8)
        ax.tick_params(labelsize=7)
    s = result.settings
    fig.suptitle(f"SBC {s.get('kernel')} on {s.get('statistic')}, sigma {s.get('sigma')}: ECDF of ranks minus "
                 f"uniform ({R} replicates, {L} draws each)", fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)
