"""Where `constrained`'s projections fail on a network level set, and how that depends on the step size.

    python -m analyses.projection_failures                 # the recorded table (README, issue 15)
    python -m analyses.projection_failures --quick --out /tmp/f

From the last draws of a `constrained` run (``--chains`` chains, ``--warmup`` + ``--samples`` iterations at
``--sigma``), ``--momenta`` fresh tangent momenta per state, and for each step size in ``STEPS``: one constrained
leapfrog step of the kernel itself (``kernels.constrained._leapfrog``, its defaults). Per step size:

- ``failed``: the share of steps that fail, and why (``kernels.constrained.FAILURES``): the position step's Newton
  projection does not converge (``forward``), the reverse step's does not (``reverse``), or it converges elsewhere
  than the start (``not_reversible``);
- ``worst_quarter_share``: the share of the failures at the quarter of the states with most failures (0.25 if
  failures strike states evenly, 1 if they all sit at a few *places*);
- ``abs_dH_median`` / ``abs_dH_p90``: the energy error ``|H1 - H0|`` of the steps that succeed (what a step size is
  otherwise limited by);
- ``newton``: Newton iterations per step (both projections);
- ``s_min_median`` / ``s_min_median_failed``: the median smallest singular value of ``J = ∂u/∂x`` at the starting
  states, all of them and those whose step failed (where ``J`` nearly loses rank the lifted manifold turns on the
  scale ``σ / s_min``).

What it does not measure: trajectories longer than one step, other targets or sigmas than those given, and the
residual at which a failing Newton iteration stalls.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import bayestrex as bt
from bayestrex.io import write_results
from bayestrex.kernels import constrained as K
from bayestrex.kernels.lifted import tangent
from bayestrex.posterior import Posterior

OUT = Path(__file__).resolve().parent / "results" / "projection_failures"

#: step sizes (prior-standardised units) of the single leapfrog steps
STEPS = (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4)


def one_step_failures(post: Posterior, z: torch.Tensor, eps: float, momenta: int, seed: int) -> dict:
    """One constrained leapfrog step of size ``eps`` from each state ``z [N, d]`` with ``momenta`` fresh momenta:
    failure shares by kind, how concentrated they are, the energy error of the steps that succeed."""
    kernel = K.Constrained()
    state = kernel.init(post, z.repeat(momenta, 1), torch.Generator().manual_seed(seed))
    system = kernel._system(post)
    C, rng = len(state.q), torch.Generator().manual_seed(seed + 1)
    p0 = tangent(state.dc, torch.randn(state.q.shape, generator=rng, dtype=torch.float64))
    h0 = state.potential + 0.5 * p0.square().sum(-1)
    step = torch.full((C,), eps, dtype=torch.float64)
    _, _, ok, h, _, newton, kind = K._leapfrog(system, state, p0, step, torch.ones(C, dtype=torch.bool),
                                                   kernel.logdet_force, kernel.projection)
    per_state = (~ok).reshape(momenta, -1).sum(0).sort(descending=True).values  # [N] failures of each state
    failures = int((~ok).sum())
    dh = (h - h0)[ok].abs()
    row = dict(step=eps, steps=C, failed=round(failures / C, 3))
    for i, name in enumerate(K.FAILURES[1:], 1):
        row[name.replace(" projection", "").replace(" ", "_")] = round(int((kind == i).sum()) / C, 3)
    quarter = max(1, len(per_state) // 4)
    row["worst_quarter_share"] = round(int(per_state[:quarter].sum()) / failures, 2) if failures else None
    row["abs_dH_median"] = round(float(dh.median()), 4) if len(dh) else None
    row["abs_dH_p90"] = round(float(dh.quantile(0.9)), 4) if len(dh) else None
    row["newton"] = round(float(newton.double().mean()), 2)
    # the level set's conditioning at the start: the smallest singular value of J = ∂u/∂x (the lifted manifold turns
    # on the scale sigma / s_min where J nearly loses rank)
    s_min = torch.linalg.svdvals(state.dc[..., : system.d])[:, -1]
    row["s_min_median"] = round(float(s_min.median()), 4)
    row["s_min_median_failed"] = round(float(s_min[~ok].median()), 4) if failures else None
    return row


def main(argv: list[str]) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="tied:3,8,0.9")
    p.add_argument("--sigma", type=float, default=0.0125)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--momenta", type=int, default=16, help="fresh momenta per state (default 16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quick", action="store_true", help="4 chains, 10 + 2 iterations, 4 momenta, 2 step sizes")
    a = p.parse_args(argv)
    if a.quick:
        a.chains, a.warmup, a.samples, a.momenta = 4, 10, 2, 4
    torch.set_num_threads(a.threads)
    vae, clf = bt.nets.zoo.pretrained("digits", progress=False)
    t0 = time.perf_counter()
    r = bt.sample(vae.decoder, clf, a.target, sigma=a.sigma, kernel="constrained", num_chains=a.chains,
                  warmup=a.warmup, num_samples=a.samples, seed=a.seed, progress=False)
    post = Posterior(vae.decoder, clf, a.target, sigma=a.sigma)
    z = r.z[:, -1].to(post.dtype)
    rows = [one_step_failures(post, z, eps, a.momenta, a.seed) | dict(target=a.target, sigma=a.sigma)
            for eps in (STEPS[2:4] if a.quick else STEPS)]
    o = bt.diagnostics.overview(r)
    meta = dict(command="python -m analyses.projection_failures " + " ".join(argv), date=time.strftime("%Y-%m-%d"),
                torch=torch.__version__, seconds=round(time.perf_counter() - t0, 1),
                run=dict(step_size=round(float(r.info["step_size"]), 4), max_r_hat=o["max_r_hat"],
                         attainment=o["attainment"], failures_per_iteration=round(
                             float(r.stats["projection_failures"].double().mean()), 3)))
    title = "One constrained leapfrog step: how often it fails, and why"
    print(write_results(a.out, "projection_failures", title, meta, rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
