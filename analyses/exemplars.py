"""Exemplar search without gradients (Barbalau et al. 2020's evolution strategy) against gradient ascent on the same
differentiable model: forward passes needed to reach 0.95 confidence in each class.

Two generators per class: the zoo VAE (the class is in its range, easy) and the VAE trained without that class
(in-distribution adversarial, hard). Forward passes: the classifier inputs evaluated; a gradient-ascent step costs
one forward and one backward pass (so also reported: gradient steps x 3 as forward-pass equivalents).

    python -m analyses.exemplars --dataset mnist
    python -m analyses.exemplars --dataset digits --quick
"""

from __future__ import annotations

import statistics
import sys

import torch

from analyses._studies import Study, parser
from bayestrex.blackbox import evolve, gradient_ascent


def main(argv=None) -> dict:
    p = parser("Evolution strategy vs gradient ascent: forward passes to 0.95 confidence")
    p.add_argument("--repeats", type=int, default=5, help="seeds per class and method (default 5)")
    p.add_argument("--stop-at", type=float, default=0.95)
    args = p.parse_args(argv)
    classes = [0, 1] if args.quick else list(range(10))
    repeats = 2 if args.quick else args.repeats
    study = Study("exemplars", args)
    clf = study.model("classifier")
    rows = []
    for c in classes:
        for gen_name in (["vae"] if args.quick else ["vae", f"vae-without-{c}"]):
            gen = study.model(gen_name).generator
            es = [evolve(gen, clf, c, stop_at=args.stop_at, max_generations=200, seed=s) for s in range(repeats)]
            ga = [gradient_ascent(gen, clf, c, stop_at=args.stop_at, max_steps=2000, seed=s) for s in range(repeats)]

            def med(results):
                hit = [r.forward_passes for r in results if r.reached]
                return statistics.median(hit) if hit else None

            ga_med = med(ga)
            rows.append({"class": study.class_names[c],
                         "generator": "all classes" if gen_name == "vae" else "without it",
                         "ES reached": f"{sum(r.reached for r in es)}/{repeats}",
                         "ES forward passes (median)": med(es),
                         "GA reached": f"{sum(r.reached for r in ga)}/{repeats}",
                         "GA steps (median)": ga_med,
                         "GA forward-pass equivalents": None if ga_med is None else 3 * ga_med,
                         "ES best confidence (median)": round(statistics.median(r.confidence for r in es), 3)})
    md = study.write({f"forward passes to {args.stop_at} confidence (ES: population 50, 10 survivors, momentum "
                      "0.3/0.7, noise 0.5)": rows})
    print(md)
    return dict(rows=rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
