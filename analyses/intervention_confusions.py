"""Interventions on a hidden layer between the classes the classifier confuses most (Fashion-MNIST by default).

The zoo classifier is split at its last hidden layer; the zoo's discrete VAE (``dvae``) and explanatory decoder
(``explainer``) are over that layer. The ``--pairs`` pairs of classes with the most test confusions (both
directions counted) are taken; for each direction a -> b, ``--per-direction`` test inputs of class a that the
classifier gets right are moved to b (``bayestrex.intervention.intervene``: target ``high:b,log``, the Hamming prior,
MH with Gibbs moves). Reported per direction: how many interventions reach b, how many latents the minimal ones
change, the latents the posterior changes most often (the "concepts" that move a to b), and the runs' R-hat, ESS and
move rate; figures: examples and the latent-by-direction heatmap.

    python -m analyses.intervention_confusions --dataset fashion-mnist
    python -m analyses.intervention_confusions --dataset digits --quick
"""

from __future__ import annotations

import sys

import torch

import bayestrex as bt
from analyses._studies import Study, intervention_examples, parser, predict
from analyses.level_sets import confused_pairs
from bayestrex import intervention as iv
from bayestrex import nets


def main(argv=None) -> dict:
    p = parser("interventions on a hidden layer between the most confused classes", default_chains=8,
               default_warmup=500, default_samples=1500)
    p.set_defaults(dataset="fashion-mnist")
    p.add_argument("--pairs", type=int, default=3, help="most confused class pairs (default 3)")
    p.add_argument("--per-direction", type=int, default=8, help="test inputs per direction (default 8)")
    p.add_argument("--flip-prob", type=float, default=0.05, help="prior probability a latent changes (default 0.05)")
    p.add_argument("--max-radius", type=int, default=2, help="exact search radius (default 2)")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.per_direction = min(args.pairs, 1), min(args.per_direction, 2)
    study = Study("intervention_confusions", args)
    names = study.class_names
    clf, dvae, explainer = study.model("classifier"), study.model("dvae"), study.model("explainer")
    g, h = nets.split(clf, dvae.meta["layer"])
    xt, yt = study.data("test")
    predicted = predict(clf, xt).argmax(-1)
    pairs = confused_pairs(clf, xt, yt, k=args.pairs)
    fig = nets.discrete_vae_figures(dvae, h, nets.activations(g, xt), yt)
    model_row = dict(layer=dvae.meta["layer"], latents=f"{dvae.num_latents} x {dvae.num_values} values",
                     accuracy=fig["accuracy"], dvae_relative_mse=fig["relative_mse"],
                     dvae_accuracy_on_reconstruction=fig["accuracy_on_reconstruction"], agreement=fig["agreement"],
                     explainer_test_bce=dvae.meta.get("test_reconstruction_bce", explainer.meta.get(
                         "test_reconstruction_bce")))

    rows, heat, labels, records, shown = [], [], [], [], []
    for a, b, count in pairs:
        for src, dst in ((a, b), (b, a)):
            idx = torch.nonzero((yt == src) & (predicted == src)).flatten()[: args.per_direction]
            recs = []
            for n, i in enumerate(idx.tolist()):
                with torch.no_grad():
                    act = g(xt[i:i + 1])
                codes = dvae.encode(act)[0]
                it = iv.intervene(dvae, h, codes, dst, flip_prob=args.flip_prob, sigma=args.sigma,
                                  num_chains=args.chains, num_samples=args.samples, warmup=args.warmup,
                                  seed=args.seed + n, max_radius=args.max_radius)
                recs.append(dict(index=i, source=src, **it.record()))
                if n == 0 and it.minimal is not None:
                    pics = iv.pictures(dvae, explainer, act, codes, [it.minimal["codes"]])
                    shown.append((f"{names[src]} -> {names[dst]}", xt[i], *(q[0] for q in pics), it.minimal))
            records += recs
            mean_freq = [sum(r["change_frequency"][k] or 0.0 for r in recs) / max(1, len(recs))
                         for k in range(dvae.num_latents)]
            top = sorted(range(len(mean_freq)), key=lambda k: -mean_freq[k])[:3]
            heat.append(mean_freq)
            labels.append(f"{names[src]} -> {names[dst]}")
            rows.append({"direction": labels[-1], "test confusions (both ways)": count,
                         **iv.summary([r["diagnostics"] for r in recs], [r["minimal"] for r in recs]),
                         "most changed latents (posterior share)": ", ".join(f"k{k} ({mean_freq[k]:.2f})"
                                                                             for k in top)})
    bt.plots.concepts(heat, row_labels=labels, path=study.figure("latents"),
                      title="share of the posterior draws reaching the target class that change each latent "
                            f"(mean over inputs; prior: {args.flip_prob})")
    intervention_examples(study, shown, "minimal interventions between confused classes: input; explainer images of "
                                        "g(x), dec(c), dec(c'); the change (red: added ink)")
    md = study.write({"classifier and its hidden-layer models (test set)": [model_row],
                      "interventions between the most confused classes": rows},
                     extra=dict(pairs=pairs, records=records, latent_change_frequency=dict(zip(labels, heat))),
                     settings=dict(kernel="mh (site Gibbs moves)", max_steps=None, flip_prob=args.flip_prob,
                                   target="high:B,log", per_direction=args.per_direction, max_radius=args.max_radius))
    print(md)
    return dict(model=model_row, rows=rows, pairs=pairs)


if __name__ == "__main__":
    main(sys.argv[1:])
