"""A CLEVR-style scene study without Blender (Bayes-TrEx, section 4.5): a hand-defined scene distribution, a
procedural renderer (bayestrex.scenes), a CNN trained to count circles, and Metropolis-Hastings with the CLEVR
sampler's moves.

1. In-distribution adversarial scenes: the prior restricted to squares and triangles (no circle at all), target
   ``high:1`` ("exactly one circle"): scenes with no circle that the counter is >= 90% sure hold one.
2. Ambiguous scenes: all shapes, target ``ambiguous:1,2`` (torn between one and two circles).

For both, the rate of hits per 1000 likelihood evaluations (every rendered and classified scene counts: warmup, and
the 4096 prior scenes scored to choose the starting points) against plain sampling from the prior, which costs one
evaluation per scene.

    python -m analyses.scenes               # writes analyses/results/studies/scenes/
    python -m analyses.scenes --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import bayestrex as bt
from analyses._studies import RESULTS, cached_model, pick, top2_titles
from bayestrex import nets
from bayestrex.io import atomic_path, markdown_table, write_json
from bayestrex.kernels.mh import MetropolisHastings
from bayestrex.scenes import ScenePrior, SceneRenderer, count

OBJECTS, MAX_COUNT = 5, 5


def counter(out: Path, render, *, scenes: int, epochs: int, progress: bool):
    """The circle counter (classes 0..5), trained once on prior scenes and cached."""

    def train():
        z = ScenePrior(OBJECTS).sample(scenes, torch.Generator().manual_seed(0))
        clf = nets.train_classifier(render(z), count(z), num_classes=MAX_COUNT + 1,
                                    arch=dict(pool_between=True, channels=(32, 64), hidden=128), epochs=epochs,
                                    batch_size=128, lr=3e-3, progress=progress)
        zt = ScenePrior(OBJECTS).sample(2000, torch.Generator().manual_seed(1))
        return clf, dict(train_scenes=scenes, test_accuracy=round(nets.accuracy(clf, render(zt), count(zt)), 4))

    return cached_model(out / "models" / "counter.pt", train)


def distinct(z: torch.Tensor, hits: torch.Tensor) -> int:
    """Distinct hit states: ``z [C, S, d]``, ``hits [C, S]``; an MH chain repeats its state after a rejected move, so
    the number of hits overstates what was found. Counted per chain (chains do not share states)."""
    return sum(len(torch.unique(z[c][hits[c]], dim=0)) for c in range(z.shape[0]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="CLEVR-style scene study: MH over scenes vs prior sampling")
    p.add_argument("--out", default=str(RESULTS / "studies" / "scenes"))
    p.add_argument("--chains", type=int, default=32)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.chains, args.warmup, args.samples = 4, 20, 20
    torch.set_num_threads(args.threads)
    out, t_start = Path(args.out), time.perf_counter()
    render = SceneRenderer(OBJECTS)
    clf = counter(out, render, scenes=600 if args.quick else 40_000, epochs=1 if args.quick else 12,
                  progress=not args.quiet)

    studies = {
        "no circle, counter >= 90% sure of one (high:1)": (ScenePrior(OBJECTS, shapes=(1, 2)), "high:1",
                                                           lambda r: r.probs[..., 1] >= 0.9),
        "ambiguous 1 vs 2 circles (ambiguous:1,2)": (ScenePrior(OBJECTS), "ambiguous:1,2", lambda r: r.attained),
    }
    rows, montage_rows, titles = [], [], []
    n_prior = 2000 if args.quick else 20_000
    for name, (prior, target, hit) in studies.items():
        result = bt.sample(render, clf, target, prior=prior, kernel=MetropolisHastings(), num_chains=args.chains,
                           num_samples=args.samples, warmup=args.warmup, sigma=args.sigma, seed=args.seed,
                           progress=not args.quiet)
        hits = hit(result)
        # MH steps plus the prior scenes scored to pick the starting points (Posterior.initial_points)
        evals = int(result.info["likelihood_evals"]) + max(4096, 16 * args.chains)
        # plain prior sampling: every scene one evaluation
        zp = prior.sample(n_prior, torch.Generator().manual_seed(args.seed + 1))
        with torch.no_grad():
            pp = torch.softmax(clf(render(zp)), -1)
        tgt = bt.targets.parse(target)
        prior_hits = (pp[:, 1] >= 0.9) if target == "high:1" else bt.diagnostics.attained(
            tgt.statistic(pp), tgt.value(pp.shape[-1]), tgt.tolerance)
        circles = count(result.z.reshape(-1, result.z.shape[-1]))
        rows.append({"study": name, "chains x draws": f"{args.chains} x {args.samples}", "evaluations": evals,
                     "hits": int(hits.sum()), "hits per 1000 evals": round(1000 * int(hits.sum()) / evals, 2),
                     "distinct hit states": distinct(result.z, hits),
                     "distinct per 1000 evals": round(1000 * distinct(result.z, hits) / evals, 2),
                     "prior hits per 1000": round(1000 * int(prior_hits.sum()) / n_prior, 2),
                     "true circle counts in draws": ",".join(f"{k}:{int((circles == k).sum())}"
                                                            for k in range(MAX_COUNT + 1) if (circles == k).any()),
                     "max_r_hat": bt.diagnostics.overview(result)["max_r_hat"],
                     "acceptance": round(float(result.stats["accepted"].float().mean()), 3)})
        images = render(result.z.reshape(-1, result.z.shape[-1])).view(*result.z.shape[:2], 3, 32, 32)
        img, probs = pick(result, images, where=hits)
        montage_rows.append((target, img))
        titles.append(top2_titles(probs))
    bt.plots.montage(montage_rows, titles=titles, path=out / "scenes-draws.png",
                     suptitle="MH over scenes: top no circle yet 'one circle' >= 0.9; bottom torn between 1 and 2")
    meta = nets.load(out / "models" / "counter.pt").meta
    counter_row = [dict(classes="0..5 circles", train_scenes=meta["train_scenes"], train_seconds=meta["train_seconds"],
                        test_accuracy=meta["test_accuracy"])]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    md = "\n".join(["# scenes", "", f"Settings: {settings}, seconds {time.perf_counter() - t_start:.0f}", "",
                    "## the circle counter", "", markdown_table(counter_row), "",
                    "## MH over scenes vs sampling the prior", "", markdown_table(rows)]) + "\n"
    with atomic_path(out / "scenes.md") as tmp:
        tmp.write_text(md)
    write_json(dict(settings=settings, counter=counter_row, rows=rows), out / "scenes.json")
    print(md)
    return dict(counter=counter_row, rows=rows)


if __name__ == "__main__":
    main(sys.argv[1:])
