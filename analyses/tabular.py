"""Tabular data: scikit-learn's wine dataset (178 wines, 13 chemical features, 3 cultivars), a small tabular VAE as
the generator, and a random forest as a black box (no gradients: elliptical slice sampling).

For high confidence in each cultivar and for ambiguity between cultivar pairs: attainment, R-hat, and example
draws shown as table rows in the original units, next to the mean of the real wines of the classes involved.

    python -m analyses.tabular            # writes analyses/results/studies/tabular/
    python -m analyses.tabular --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bayestrex as bt
from analyses._studies import RESULTS
from bayestrex.io import atomic_path, markdown_table, write_json
from bayestrex.tabular import Standardizer, train_tabular_vae

SHOWN = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "hue", "proline"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Tabular study: random-forest black box on wine, tabular VAE, slice")
    p.add_argument("--out", default=str(RESULTS / "studies" / "tabular"))
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.chains, args.warmup, args.samples = 4, 20, 20
    torch.set_num_threads(1)
    t_start, out = time.perf_counter(), Path(args.out)

    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    wine = load_wine()
    names = list(wine.feature_names)
    x_tr, x_te, y_tr, y_te = train_test_split(wine.data.astype(np.float32), wine.target, test_size=0.25,
                                              stratify=wine.target, random_state=0)
    forest = RandomForestClassifier(n_estimators=200, random_state=0).fit(x_tr, y_tr)
    scale = Standardizer(torch.from_numpy(x_tr))
    t0 = time.perf_counter()
    vae, generator = train_tabular_vae(scale(torch.from_numpy(x_tr)), epochs=200 if args.quick else 3000,
                                       seed=args.seed)
    vae_seconds = time.perf_counter() - t0
    # the black box sees wines in their original units
    black_box = bt.BlackBox(lambda a: forest.predict_proba(scale.inverse(torch.from_numpy(a)).numpy()))
    with torch.no_grad():
        prior_rows = scale.inverse(generator(torch.randn(2000, vae.latent_dim, generator=torch.Generator()
                                                         .manual_seed(1))))
    models = [dict(model="random forest (200 trees)", test_accuracy=round(forest.score(x_te, y_te), 3)),
              dict(model=f"tabular VAE (latent {vae.latent_dim})", train_seconds=round(vae_seconds, 1),
                   prior_draws_in_range=round(float(((prior_rows >= torch.from_numpy(wine.data.min(0)).float())
                                                     & (prior_rows <= torch.from_numpy(wine.data.max(0)).float()))
                                                    .all(-1).float().mean()), 3))]

    targets = ["high:0", "high:1", "high:2", "ambiguous:0,1", "ambiguous:1,2"]
    if args.quick:
        targets = ["high:0", "ambiguous:1,2"]
    rows, examples = [], []
    show = [names.index(n) for n in SHOWN]
    for target in targets:
        calls0 = black_box.calls
        result = bt.sample(generator, black_box, target, kernel="slice", num_chains=args.chains,
                           num_samples=args.samples, warmup=args.warmup, sigma=args.sigma, seed=args.seed,
                           progress=not args.quiet)
        o = bt.diagnostics.overview(result)
        rows.append(dict(target=target, attainment=o["attainment"], max_r_hat=o["max_r_hat"],
                         min_ess_bulk=o["min_ess_bulk"], forest_calls=black_box.calls - calls0,
                         seconds=o["seconds"]))
        flat_ok = result.attained.reshape(-1)
        z = result.z.reshape(-1, result.z.shape[-1])[flat_ok]
        probs = result.probs.reshape(-1, result.probs.shape[-1])[flat_ok]
        if len(z):
            pick = torch.linspace(0, len(z) - 1, min(3, len(z))).round().long()
            with torch.no_grad():
                wines = scale.inverse(generator(z[pick]))
            for w, pr in zip(wines, probs[pick]):
                examples.append({"target": target, **{n: round(float(w[i]), 2) for n, i in zip(SHOWN, show)},
                                 "forest p": "/".join(f"{v:.2f}" for v in pr.tolist())})
        classes = [int(c) for c in target.split(":")[1].split(",")]
        for c in classes:
            mean = wine.data[wine.target == c].mean(0)
            examples.append({"target": f"(real cultivar {c}, mean)", **{n: round(float(mean[i]), 2)
                                                                         for n, i in zip(SHOWN, show)},
                             "forest p": ""})
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    md = "\n".join(["# tabular — wine, random forest black box", "",
                    f"Settings: {settings}, seconds {time.perf_counter() - t_start:.0f}", "", "## models", "",
                    markdown_table(models), "", "## targets (kernel slice)", "", markdown_table(rows), "",
                    "## example draws (attained), in the original units", "", markdown_table(examples)]) + "\n"
    with atomic_path(out / "tabular.md") as tmp:
        tmp.write_text(md)
    write_json(dict(settings=settings, models=models, rows=rows, examples=examples), out / "tabular.json")
    print(md)
    return dict(models=models, rows=rows, examples=examples)


if __name__ == "__main__":
    main(sys.argv[1:])
