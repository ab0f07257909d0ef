"""A level set of disconnected pieces with weights known by quadrature: which kernels give each piece its weight?

    python -m analyses.pieces            # ~10 min on 2 CPU cores; --quick for a smoke run

Prior N(0, I) in 2-d, one statistic ``u(z) = sin(2 z1)`` pinned at 0.5 with ``sigma = 0.05``: the level set is the
lines ``sin(2 z1) = 0.5``, pieces separated by barriers of ``e^-50`` (where ``sin = 1``) and ``e^-450`` (where
``sin = -1``). The posterior of ``z1`` is one-dimensional, so each piece's weight is a quadrature on a fine grid.
Every kernel gets the same number of chains/particles; MCMC chains start from the package's default starting points
(the best of many prior draws, polished), SMC from the prior. The table: each kernel's share of draws per piece,
its largest error against quadrature, gradient evaluations, and its R-hat (nested R-hat over independent runs for
SMC). Writes ``pieces.md`` / ``pieces.json`` into ``analyses/results/pieces/``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bayestrex import diagnostics
from bayestrex.density import Density, GaussianPrior
from bayestrex.driver import run
from bayestrex.io import atomic_path, markdown_table, write_json
from bayestrex.kernels import get
from bayestrex.kernels.smc import SMC

SIGMA, OMEGA, U_STAR = 0.05, 2.0, 0.5
OUT = Path(__file__).resolve().parent / "results" / "pieces"


def sine_loglik(z: torch.Tensor) -> torch.Tensor:
    """``log N(0.5; sin(2 z1), 0.05²)`` ``[C]`` for ``z [C, 2]``."""
    r = (U_STAR - torch.sin(OMEGA * z[:, 0])) / SIGMA
    return -0.5 * r.square() - math.log(SIGMA) - 0.5 * math.log(2 * math.pi)


def density() -> Density:
    return Density(latent_dim=2, prior=GaussianPrior(torch.zeros(2), torch.ones(2)), log_likelihood=sine_loglik)


def pieces_by_quadrature():
    """``(edges, weights, keep)``: the pieces' boundaries in z1 (where ``sin(2 z1) = ±1``), each piece's posterior
    weight on a 1e-5-spaced grid, and which pieces weigh more than 1e-3."""
    x = np.linspace(-7, 7, 1_400_001)
    logp = -0.5 * x**2 - 0.5 * ((U_STAR - np.sin(OMEGA * x)) / SIGMA) ** 2
    p = np.exp(logp - logp.max())
    cuts = (np.pi / 2 + np.pi * np.arange(-6, 6)) / OMEGA
    edges = np.concatenate([[-np.inf], cuts, [np.inf]])
    weights = np.array([p[(x > a) & (x <= b)].sum() for a, b in zip(edges[:-1], edges[1:])]) / p.sum()
    return edges, weights, weights > 1e-3


def shares(z1: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.histogram(z1, bins=edges)[0]
    return counts / counts.sum()


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="Piece weights of a disconnected level set, by kernel")
    p.add_argument("--chains", type=int, default=1024, help="chains (MCMC) or particles (SMC) (default 1024)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.chains, args.warmup, args.samples = 64, 20, 5
    torch.set_num_threads(1)
    edges, truth, keep = pieces_by_quadrature()
    dens = density()
    rows = [dict(kernel="quadrature", **{f"piece_{i}": round(float(w), 4) for i, w in enumerate(truth[keep])})]
    for name in ("chees", "hmc", "slice", "smc"):
        t0 = time.perf_counter()
        kernel = SMC(runs=4) if name == "smc" else get(name)
        z0 = (torch.randn(args.chains, 2, generator=torch.Generator().manual_seed(args.seed)) if name == "smc"
              else dens.initial_points(args.chains, seed=args.seed))
        draws = run(kernel, dens, z0, num_samples=args.samples, warmup=2 if name == "smc" else args.warmup,
                    seed=args.seed, progress=False)
        s = shares(draws.z[..., 0].numpy().ravel(), edges)[keep]
        z = draws.z.numpy()
        if name == "smc":
            runs = np.arange(args.chains) // (args.chains // 4)
            rhat = max(diagnostics.nested_rhat(np.stack([z[runs == r, :, j] for r in range(4)])) for j in range(2))
        else:
            rhat = max(float(v) for v in _rhat(z))
        rows.append(dict(kernel=name, **{f"piece_{i}": round(float(v), 4) for i, v in enumerate(s)},
                         max_abs_error=round(float(np.abs(s - truth[keep]).max()), 4),
                         r_hat=round(rhat, 3), r_hat_kind="nested, 4 runs" if name == "smc" else "split, chains",
                         grad_evals=int(draws.info.get("grad_evals", 0)),
                         likelihood_evals=int(draws.info.get("likelihood_evals", 0)),
                         seconds=round(time.perf_counter() - t0, 1)))
        print(rows[-1], flush=True)
    settings = dict(chains=args.chains, warmup=args.warmup, samples=args.samples, sigma=SIGMA, seed=args.seed,
                    quick=args.quick, smc="4 independent runs, warmup 2",
                    command="python -m analyses.pieces" + (" --quick" if args.quick else ""))
    md = "\n".join(["# Piece weights of a disconnected level set", "",
                    "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), "", markdown_table(rows)])
    with atomic_path(args.out / "pieces.md") as tmp:
        tmp.write_text(md + "\n")
    write_json(dict(settings=settings, rows=rows), args.out / "pieces.json")
    print(md)
    return rows


def _rhat(z: np.ndarray) -> list[float]:
    import arviz_stats as azs
    from arviz_base import from_dict

    s = azs.summary(from_dict({"posterior": {"z": z}}), round_to="none")
    return s["r_hat"].tolist()


if __name__ == "__main__":
    main(sys.argv[1:])
