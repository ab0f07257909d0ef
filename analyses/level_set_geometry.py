"""Why step sizes shrink with sigma on the digits posterior: the width and the curvature of its level sets.

    python -m analyses.level_set_geometry                 # the recorded table (README, issue 15)
    python -m analyses.level_set_geometry --quick --out /tmp/g

At draws of each target's posterior (``chees``, sigma 0.05), in prior-standardised coordinates ``x``:

- ``s_1 ≥ s_2 ...``: the singular values of the statistics' Jacobian ``J = ∂u/∂x``. Across the level set the
  posterior is a tube of width ``w = σ / s_1`` in the stiffest direction (``σ / s_k`` in the others); ``stiff``: how
  many ``s_k`` exceed sigma (directions in which the likelihood is narrower than the prior);
- along random unit tangents ``t`` (orthogonal to the stiff directions), by finite differences at lengths ``ℓ`` in
  ``LENGTHS`` (so that the kinks of ReLU networks count, which a Hessian misses): ``departure_ℓ``, the largest change
  of a statistic along the straight move ``x + ℓt`` (it must stay within ~σ for a straight move to stay in the tube:
  ``straight_reach_σ`` is the longest such ``ℓ``, the bound on a leapfrog move of ``hmc`` and ``chees``), and
  ``turn_ℓ``, the angle by which the stiffest normal turns (``turn_length``: the longest ``ℓ`` over which it stays
  within 0.1 rad, the scale on which a kernel that follows the level set, ``constrained``, must step, whatever sigma).
  ``mmala`` is bound tighter still: its reverse proposal, under the metric at the far end, must find the move's
  component along the turned normal, ``ℓ · turn_ℓ``, within ``√h`` tube widths, so ``h`` falls like ``σ²``.

Medians over the points and directions. Writes ``level_set_geometry.{json,md}`` into ``--out``. What it does not
measure: the extremes (a shared step size is set by the worst region, not the median), anything away from the draws
(sigma 0.05), and lengths between the grid's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import bayestrex as bt
from bayestrex.density import residual_jacobian
from bayestrex.io import write_results
from bayestrex.posterior import Posterior

OUT = Path(__file__).resolve().parent / "results" / "level_set_geometry"


#: tangent move lengths (prior-standardised units) at which the level set's departure and turning are measured
LENGTHS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: the normal has "turned" once it is this many radians away from where the move started
TURN = 0.1


def geometry_at(post: Posterior, z: torch.Tensor, directions: int, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """At codes ``z [N, d]``: singular values ``s [N, k]`` of ``J`` and the number ``stiff [N]`` above sigma; for
    ``directions`` random unit tangents ``t`` (orthogonal to the stiff directions) and
    each length ``ℓ`` in ``LENGTHS``: ``departure [N, directions, L]`` = max over statistics of ``|r(x + ℓt) - r(x)|``
    (how far a straight move leaves the level set, in the statistics' units: compare with sigma) and ``turn`` = the
    angle (radians) between the stiffest normal at ``x`` and at ``x + ℓt``. Finite differences, so the kinks of ReLU
    networks count (a Hessian would miss them)."""
    prior = post.prior
    x = ((z - prior.loc) / prior.scale).double()
    r0, J0 = residual_jacobian(post, x)[:2]
    _, s, Vh = torch.linalg.svd(J0, full_matrices=False)
    n0 = Vh[:, 0]
    N, d = x.shape
    # stiff directions: where the likelihood at this sigma is narrower than the prior (s_k > sigma); with m >= d
    # statistics (graded: ten of them in 5-d) the rows of J span everything, but most are nearly zero (saturated
    # probabilities) and the posterior is not thin across them
    stiff = (s > float(post.sigma)).to(torch.float64)  # [N, k]
    Vs = Vh * stiff.unsqueeze(-1)
    t = torch.randn(N, directions, d, generator=rng, dtype=torch.float64)
    t = t - ((t @ Vs.mT) @ Vs)  # orthogonal to the stiff directions
    t = t / t.norm(dim=-1, keepdim=True)
    departure, turn = [], []
    for ell in LENGTHS:
        xl = (x.unsqueeze(1) + ell * t).reshape(-1, d)
        r, J = residual_jacobian(post, xl)[:2]
        departure.append((r.view(N, directions, -1) - r0.unsqueeze(1)).abs().amax(-1))
        n = torch.linalg.svd(J, full_matrices=False).Vh[:, 0].view(N, directions, d)
        turn.append(torch.acos((n * n0.unsqueeze(1)).sum(-1).abs().clamp(max=1.0)))
    return {"s": s, "stiff": stiff.sum(-1), "departure": torch.stack(departure, -1), "turn": torch.stack(turn, -1)}


def _reach(curve: torch.Tensor, limit: float) -> float:
    """The largest length in ``LENGTHS`` at which the median ``curve [P, L]`` stays within ``limit`` (0 if none)."""
    med = curve.median(0).values
    ok = [ell for ell, v in zip(LENGTHS, med.tolist()) if v <= limit]
    return ok[-1] if ok else 0.0


def row_for(vae, clf, target: str, sigmas: list[float], chains: int, samples: int, directions: int,
            seed: int) -> dict:
    """One target: draws at sigma 0.05 (a point cloud on and around the level set), the geometry there and, per
    sigma, how far a straight tangent move stays inside the tube."""
    t0 = time.perf_counter()
    result = bt.sample(vae.decoder, clf, target, num_chains=chains, num_samples=samples, warmup=100, sigma=0.05,
                       kernel="chees", seed=seed, progress=False)
    post = Posterior(vae.decoder, clf, target, latent_dim=vae.latent_dim, sigma=0.05)
    z = result.z[:, -min(samples, 5):].reshape(-1, vae.latent_dim).float()
    geo = geometry_at(post, z, directions, torch.Generator().manual_seed(seed))
    dep = geo["departure"].flatten(0, 1)
    turn = geo["turn"].flatten(0, 1)
    o = bt.diagnostics.overview(result)

    def med(v):
        return float(f"{statistics.median(v.tolist()):.3g}")

    row = dict(target=target, points=len(z), stiff=med(geo["stiff"]), s1=med(geo["s"][:, 0]),
               s_last=med(geo["s"][:, -1]),
               width_at_0_05=med(0.05 / geo["s"][:, 0]), turn_length=_reach(turn, TURN))
    for sigma in sigmas:
        row[f"straight_reach_{sigma:g}"] = _reach(dep, sigma)
    row.update({f"departure_{ell:g}": float(f"{float(dep[:, i].median()):.2g}") for i, ell in enumerate(LENGTHS)})
    row.update({f"turn_{ell:g}": float(f"{float(turn[:, i].median()):.2g}") for i, ell in enumerate(LENGTHS)})
    row.update(chees_step_size_at_0_05=float(f"{result.info['step_size']:.3g}"), max_r_hat=o["max_r_hat"],
               attainment=o["attainment"], seconds=round(time.perf_counter() - t0, 1))
    print(row, flush=True)
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="Width and curvature of the digits posterior's level sets")
    p.add_argument("--targets", nargs="+",
                   default=["ambiguous:3,8,mass", "ambiguous:3,8,smooth", "graded:1,7,0.3", "high:0"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.05, 0.025, 0.0125, 0.00625])
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--directions", type=int, default=8, help="random tangent directions per point")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.targets, args.chains, args.samples, args.directions = args.targets[:1], 4, 2, 2
    torch.set_num_threads(args.threads)
    vae, clf = bt.nets.pretrained("digits", progress=False)
    rows = [row_for(vae, clf, t, args.sigmas, args.chains, args.samples, args.directions, args.seed)
            for t in args.targets]
    meta = dict(command="python -m analyses.level_set_geometry " + " ".join(argv if argv is not None else sys.argv[1:]),
                date=time.strftime("%Y-%m-%d"), torch=torch.__version__)
    print(write_results(args.out, "level_set_geometry", "Width and curvature of the level sets (digits)", meta, rows,
                        list(rows[0])))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
