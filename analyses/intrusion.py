"""Third-class intrusion (CDeepEx, section 4): asked "why true, not probe?", does the explanation land where a third
class is the most probable?

Over N correctly classified test inputs, probe = the classifier's second most likely class, all three methods start
from the same code (the VAE encoder's mean) and residual:

- xGEMs: the walk toward the probe; intrusion when the first class to take over from the true class is neither the
  true class nor the probe;
- CDeepEx: the augmented-Lagrangian boundary point; intrusion when a third class is the most probable there;
- sampled boundary: draws of the Boundary posterior around the code (ChEES, ``--chains-per-input`` chains per
  input); intrusion = the fraction of draws where a third class is the most probable;
- the same Boundary posterior without the third-class constraint (its MAP, ``margin`` ignored: only
  ``llh(true) = llh(probe)``), to show what the constraint buys.

    python -m analyses.intrusion --dataset mnist            # 200 pairs
    python -m analyses.intrusion --dataset digits --quick   # a smoke run
"""

from __future__ import annotations

import sys
from collections import defaultdict

import arviz_stats as azs
import numpy as np
import torch

import bayestrex as bt
from analyses._studies import Study, parser
from bayestrex import special
from bayestrex.kernels.chees import ChEES
from bayestrex.targets import Custom


def _equal_only(true: int, probe: int) -> Custom:
    """The boundary without the third-class constraint: only ``llh(true) - llh(probe) = 0``."""
    return Custom(lambda p: p[..., true].clamp_min(1e-30).log() - p[..., probe].clamp_min(1e-30).log(), 0.0,
                  names=[f"logratio_{true}_{probe}"])


def main(argv=None) -> dict:
    p = parser("Third-class intrusion: xGEMs vs CDeepEx vs the sampled boundary", default_warmup=100,
               default_samples=100)
    p.add_argument("--pairs", type=int, default=200, help="number of (input, probe) pairs (default 200)")
    p.add_argument("--chains-per-input", type=int, default=2, help="sampled boundary: chains per input (default 2)")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs = min(args.pairs, 6)
    study = Study("intrusion", args)
    vae, clf = study.model("vae"), study.model("classifier")
    x_test, y_test = study.data("test")
    with torch.no_grad():
        probs = torch.cat([clf(b).softmax(-1) for b in x_test.split(4096)])
    top2 = probs.topk(2, dim=-1).indices
    correct = torch.nonzero(top2[:, 0] == y_test).flatten()[: args.pairs]
    groups = defaultdict(list)
    for i in correct.tolist():
        groups[(int(top2[i, 0]), int(top2[i, 1]))].append(i)

    counts = defaultdict(float)
    per_pair, rhats = [], []
    for (true, probe), idx in sorted(groups.items()):
        x = x_test[idx]
        z0, delta = special.invert(vae.generator, x, encoder=vae.encoder)
        xg = special.xgems(vae.generator, clf, x, probe, z0=z0, delta=delta)
        pred_path = xg.path.probs.argmax(-1)  # [T, N]
        steps = torch.arange(len(pred_path))[:, None]
        left = (pred_path != true) & (steps <= xg.path.length[None, :])
        first = torch.where(left.any(0), left.float().argmax(0), torch.full((len(idx),), -1))
        took_over = pred_path[first.clamp_min(0), torch.arange(len(idx))]
        xg_intrusion = (first >= 0) & (took_over != probe)

        cd = special.cdeepex(vae.generator, clf, x, true, probe, z0=z0, delta=delta, outer=60 if args.quick else 100)
        cd_pred = cd.probs.argmax(-1)
        cd_intrusion = (cd_pred != true) & (cd_pred != probe)

        loose_post = bt.Posterior(special.Residual(vae.generator, delta), clf, _equal_only(true, probe), sigma=0.01,
                                  prior_loc=z0)
        loose_pred = loose_post.probs(special.posterior_map(loose_post, z0, steps=300 if args.quick else 1500,
                                                            lr=0.02)).argmax(-1)
        loose_intrusion = (loose_pred != true) & (loose_pred != probe)

        result, _ = special.boundary_samples(vae.generator, clf, x, true, probe, z0=z0, delta=delta, init=cd.z,
                                             chains_per_input=args.chains_per_input, num_samples=args.samples,
                                             warmup=args.warmup, sigma=args.sigma,
                                             kernel=ChEES(max_steps=args.max_steps), seed=args.seed, progress=False)
        # R-hat per input, over that input's own chains (the chains of one group explain different inputs)
        z_in = result.z.view(len(idx), args.chains_per_input, *result.z.shape[1:]).numpy()
        per_input_rhat = [float(np.nanmax(azs.rhat(z_in[k], chain_axis=0, draw_axis=1))) for k in range(len(idx))]
        draw_pred = result.probs.argmax(-1)  # [C, D]
        draw_intrusion = ((draw_pred != true) & (draw_pred != probe)).float().view(len(idx), -1).mean(1)
        draw_attained = result.attained.float().view(len(idx), -1).mean(1)

        for k, i in enumerate(idx):
            per_pair.append(dict(index=i, true=true, probe=probe, xgems_switched=bool(xg.switched[k]),
                                 xgems_intrusion=bool(xg_intrusion[k]), cdeepex_converged=bool(cd.converged[k]),
                                 cdeepex_intrusion=bool(cd_intrusion[k]), equal_only_intrusion=bool(loose_intrusion[k]),
                                 sampled_intrusion=round(float(draw_intrusion[k]), 4),
                                 sampled_attainment=round(float(draw_attained[k]), 4),
                                 sampled_r_hat=round(per_input_rhat[k], 3)))
        counts["pairs"] += len(idx)
        counts["xgems"] += float(xg_intrusion.sum())
        counts["xgems_switched"] += float(xg.switched.sum())
        counts["cdeepex"] += float(cd_intrusion.sum())
        counts["cdeepex_converged"] += float(cd.converged.sum())
        counts["equal_only"] += float(loose_intrusion.sum())
        counts["sampled"] += float(draw_intrusion.sum())
        counts["sampled_attained"] += float(draw_attained.sum())
        rhats.extend(per_input_rhat)

    n = counts["pairs"]
    table = [
        dict(method="xGEMs (walk to the probe)", intrusion=round(counts["xgems"] / n, 3),
             note=f"label reached the probe in {counts['xgems_switched'] / n:.1%} of walks"),
        dict(method="boundary MAP, equality only (sigma 0.01)", intrusion=round(counts["equal_only"] / n, 3),
             note="llh(true) = llh(probe), no third-class constraint"),
        dict(method="CDeepEx (augmented Lagrangian)", intrusion=round(counts["cdeepex"] / n, 3),
             note=f"converged in {counts['cdeepex_converged'] / n:.1%}"),
        dict(method=f"sampled boundary (chees, {args.chains_per_input} chains/input, sigma {args.sigma})",
             intrusion=round(counts["sampled"] / n, 3),
             note=f"mean attainment {counts['sampled_attained'] / n:.1%}; R-hat per input ({args.chains_per_input} "
                  f"chains) median {np.median(rhats):.2f}, 90th percentile {np.quantile(rhats, 0.9):.2f}"),
    ]
    md = study.write({f"third-class intrusion over {int(n)} (input, probe) pairs": table}, extra=dict(pairs=per_pair))
    print(md)
    return dict(table=table, pairs=per_pair)


if __name__ == "__main__":
    main(sys.argv[1:])
