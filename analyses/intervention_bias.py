"""Interventions on a hidden layer toward 8, on the biased MNIST of the bias study (a square on every training 8).

For the bias study's biased and unbiased classifiers (``analyses.bias.classifiers``, cached in ``bias-models/``),
each split at its last hidden layer (``nets.split(classifier, -2)``):

- a discrete VAE over the hidden activations and an explanatory decoder (activations to images), both trained on the
  training images with the square drawn on half of them whatever their class, so that neither learns "8 means square"
  from its data; they can only show the square where the classifier's hidden layer encodes it;
- the latent that carries the square: the share of test pairs (x, x + square) whose codes differ, per latent;
- interventions toward 8 (``bayestrex.intervention.intervene``: target ``high:8,log``, the Hamming prior, MH with
  Gibbs moves) on clean test inputs of every other class. The square oracle of the bias study reads the explanatory
  decoder's images: an intervention *adds the square* when the image of dec(c') has it and the image of dec(c) has
  not. Reported for the minimal intervention of each input (counts) and as the share of each input's posterior draws
  that reach 8 (mean over inputs), with the runs' R-hat, ESS and move rate. An input whose dec(c) already shows the
  square cannot have it added; the rates over the inputs whose dec(c) lacks it are a table of their own.

    python -m analyses.intervention_bias --dataset mnist
    python -m analyses.intervention_bias --dataset digits --quick
    python -m analyses.intervention_bias --dataset mnist --rescore   # only that table, from a run's JSON
"""

from __future__ import annotations

import sys

import torch

import bayestrex as bt
from analyses._studies import Study, cached_model, intervention_examples, parser
from analyses.bias import BIASED_CLASS, add_square, classifiers, has_square
from bayestrex import intervention as iv
from bayestrex import nets

WITHOUT_SQUARE = "the same, over the inputs whose dec(c) does not already show the square"


def hidden_models(study: Study, name: str, classifier, x: torch.Tensor, layer=-2):
    """``(g, h, dvae, explainer)`` for ``classifier`` split at ``layer``: the discrete VAE and the explanatory
    decoder trained (the zoo's recipes) on the activations of ``x``; cached in ``bias-models/``."""
    g, h = nets.split(classifier, layer)
    recipes = {k: {a: b for a, b in nets.RECIPES[study.args.dataset][k].items() if a != "layer"}
               for k in ("dvae", "explainer")}
    models, progress = study.out / "bias-models", not study.args.quiet
    a = nets.activations(g, x)
    info = dict(layer=layer, classifier=name, data="training images, the square on half of them, any class")
    dvae = cached_model(models / f"dvae-{name}.pt", lambda: (
        nets.train_discrete_vae(a, head=h, **recipes["dvae"], progress=progress), info))
    explainer = cached_model(models / f"explainer-{name}.pt", lambda: (
        nets.train_explainer(a, x, **recipes["explainer"], progress=progress), info))
    return g, h, dvae, explainer


@torch.no_grad()
def square_before(dvae, explainer, codes: torch.Tensor) -> bool:
    """Whether the explainer's image of ``dec(c)`` (``codes [K]``) already shows the square."""
    return bool(has_square(explainer(dvae.decode(codes[None])))[0])


def without_square_rows(records: list[dict]) -> list[dict]:
    """Per classifier, the inputs whose ``dec(c)`` lacks the square (records with ``square_before``): how many, and
    the share of their minimal interventions (counts) and of their posterior draws reaching 8 that add it."""
    rows = []
    for name in dict.fromkeys(r["classifier"] for r in records):
        mine = [r for r in records if r["classifier"] == name]
        free = [r for r in mine if not r["square_before"]]
        added = [r["square_added"] for r in free if "square_added" in r]
        post = [r["posterior_square_added"] for r in free if "posterior_square_added" in r]
        rows.append(dict(classifier=name, inputs=len(mine), square_in_dec_c=len(mine) - len(free),
                         without_square=len(free), reached=len(added), square_added=sum(added),
                         square_rate=round(sum(added) / len(added), 3) if added else None,
                         posterior_square_rate=round(sum(post) / len(post), 3) if post else None))
    return rows


@torch.no_grad()
def square_carrier(g, dvae, images: torch.Tensor) -> list[float]:
    """Per latent, the share of pairs (x, x + square) whose codes differ: ``[K]``."""
    squared = add_square(images, torch.ones(len(images), dtype=torch.bool))
    return (dvae.encode(g(images)) != dvae.encode(g(squared))).float().mean(0).tolist()


def intervene_all(study: Study, name: str, models, xt: torch.Tensor, yt: torch.Tensor, inputs: torch.Tensor):
    """Interventions toward 8 on ``xt[inputs]`` through ``models = (g, h, dvae, explainer)``: one record per input
    (its minimal intervention, diagnostics, posterior change frequencies, whether the square is added) and the
    explainer's pictures of every minimal intervention."""
    a, (g, h, dvae, explainer) = study.args, models
    records, pictures = [], []
    for n, i in enumerate(inputs.tolist()):
        with torch.no_grad():
            act = g(xt[i:i + 1])
        codes = dvae.encode(act)[0]
        it = iv.intervene(dvae, h, codes, BIASED_CLASS, flip_prob=a.flip_prob, sigma=a.sigma, num_chains=a.chains,
                          num_samples=a.samples, warmup=a.warmup, seed=a.seed + n, max_radius=a.max_radius)
        m = it.minimal
        rec = dict(classifier=name, index=i, label=int(yt[i]), **it.record())
        with torch.no_grad():
            before = rec["square_before"] = square_before(dvae, explainer, codes)
            hits = it.draws.flatten(0, 1)[it.reached.flatten()]
            if len(hits):  # up to 400 of the draws that reach 8, evenly spread
                hits = hits[torch.linspace(0, len(hits) - 1, min(len(hits), 400)).long()]
                shown = has_square(explainer(dvae.decode(hits)))
                rec["posterior_square_added"] = round(float(shown.float().mean()) * (not before), 4)
            if m is not None:
                pics = iv.pictures(dvae, explainer, act, codes, [m["codes"]])
                rec["square_added"] = bool(has_square(pics[2])[0]) and not before
                pictures.append((xt[i], *(p_[0] for p_ in pics), m))
        records.append(rec)
    return records, pictures


def main(argv=None) -> dict:
    p = parser("interventions toward 8 on a hidden layer of the biased and unbiased MNIST classifiers",
               default_chains=8, default_warmup=500, default_samples=1500)
    p.add_argument("--per-class", type=int, default=8, help="clean test inputs per class (default 8)")
    p.add_argument("--flip-prob", type=float, default=0.05, help="prior probability a latent changes (default 0.05)")
    p.add_argument("--max-radius", type=int, default=2, help="exact search radius (default 2)")
    p.add_argument("--pairs", type=int, default=2000, help="test images used to find the square's latent")
    p.add_argument("--examples", type=int, default=4, help="inputs per classifier in the figure (default 4)")
    p.add_argument("--sources", type=int, nargs="+", default=[c for c in range(10) if c != BIASED_CLASS],
                   help="classes of the inputs moved to 8 (default: all but 8)")
    p.add_argument("--rescore", action="store_true",
                   help="no sampling: add the table over inputs whose dec(c) lacks the square to the JSON of an "
                        "earlier run (its records' codes, the cached hidden-layer models)")
    args = p.parse_args(argv)
    if args.quick:
        args.per_class, args.pairs, args.sources = min(args.per_class, 1), min(args.pairs, 100), args.sources[:3]
    if BIASED_CLASS in args.sources or not set(args.sources) <= set(range(10)):
        raise ValueError(f"--sources must be classes in 0..9 other than {BIASED_CLASS}, got {args.sources}")
    study = Study("intervention_bias", args)
    x, y = study.data("train")
    xt, yt = study.data("test")
    biased, unbiased = classifiers(study, x, y, torch.Generator().manual_seed(0))
    xs = add_square(x, torch.rand(len(x), generator=torch.Generator().manual_seed(1)) < 0.5)
    sources = sorted(set(args.sources))
    inputs = torch.cat([torch.nonzero(yt == c).flatten()[: args.per_class] for c in sources])
    pairs = xt[: args.pairs]
    if args.rescore:
        return rescore(study, {name: hidden_models(study, name, clf, xs)
                               for name, clf in (("biased", biased), ("unbiased", unbiased))})

    model_rows, run_rows, by_class, heat, records, shown = [], [], {c: {"class": c} for c in sources}, {}, [], []
    for name, clf in (("biased", biased), ("unbiased", unbiased)):
        models = hidden_models(study, name, clf, xs)
        g, h, dvae, explainer = models
        fig = nets.discrete_vae_figures(dvae, h, nets.activations(g, xt), yt)
        carrier = square_carrier(g, dvae, pairs)
        order = sorted(range(len(carrier)), key=lambda k: -carrier[k])
        with torch.no_grad():
            squared = add_square(pairs, torch.ones(len(pairs), dtype=torch.bool))
            on_squared, on_clean = (float(has_square(explainer(g(v))).float().mean()) for v in (squared, pairs))
        model_rows.append(dict(classifier=name, accuracy=fig["accuracy"], dvae_relative_mse=fig["relative_mse"],
                               dvae_accuracy_on_reconstruction=fig["accuracy_on_reconstruction"],
                               explainer_shows_square_on_squared=round(on_squared, 3),
                               explainer_shows_square_on_clean=round(on_clean, 3),
                               square_latent=f"k{order[0]} ({carrier[order[0]]:.2f})",
                               next_latents=", ".join(f"k{k} ({carrier[k]:.2f})" for k in order[1:3])))
        recs, pics = intervene_all(study, name, models, xt, yt, inputs)
        records += recs
        step = max(1, len(pics) // args.examples)
        shown += [(f"{name} classifier", *pic) for pic in pics[::step][: args.examples]]
        added = [r["square_added"] for r in recs if "square_added" in r]
        post = [r["posterior_square_added"] for r in recs if "posterior_square_added" in r]
        run_rows.append(dict(classifier=name, **iv.summary([r["diagnostics"] for r in recs],
                                                            [r["minimal"] for r in recs]),
                             square_added=sum(added), square_rate=round(sum(added) / len(added), 3) if added else None,
                             posterior_square_rate=round(sum(post) / len(post), 3) if post else None,
                             minimal_changes_square_latent=sum(order[0] in r["minimal"]["changed"] for r in recs
                                                               if r["minimal"] is not None)))
        for c in sources:
            mine = [r for r in recs if r["label"] == c and "square_added" in r]
            by_class[c][name] = f"{sum(r['square_added'] for r in mine)} / {len(mine)}"
        heat[name] = [[sum((r["change_frequency"][k] or 0.0) for r in recs if r["label"] == c)
                       / max(1, sum(r["label"] == c for r in recs)) for k in range(dvae.num_latents)] for c in sources]
        bt.plots.concepts(heat[name], row_labels=[f"{c} -> 8" for c in sources], path=study.figure(f"latents-{name}"),
                          title=f"{name} classifier: share of the posterior draws reaching 8 that change each latent "
                                f"(square latent: k{order[0]})")
    intervention_examples(study, shown, "minimal interventions toward 8: input; explainer images of g(x), dec(c), "
                                        "dec(c'); the change (red: added ink)")
    md = study.write({"classifiers and their hidden-layer models (test set)": model_rows,
                      "interventions toward 8: how often the visualised change adds the square": run_rows,
                      "minimal interventions that add the square, per source class (added / reached 8)":
                          [by_class[c] for c in sources], WITHOUT_SQUARE: without_square_rows(records)},
                     extra=dict(records=records, latent_change_frequency=heat),
                     settings=dict(kernel="mh (site Gibbs moves)", max_steps=None, flip_prob=args.flip_prob,
                                   target="high:8,log", per_class=args.per_class, max_radius=args.max_radius))
    print(md)
    return dict(models=model_rows, runs=run_rows, classes=[by_class[c] for c in sources])


def rescore(study: Study, models: dict) -> dict:
    """``--rescore``: mark each record of the study's JSON with ``square_before`` (from its codes and the cached
    ``models[classifier] = (g, h, dvae, explainer)``) and rewrite the JSON and markdown with the
    :data:`WITHOUT_SQUARE` table; the run's settings and other tables are kept."""
    import json

    saved = json.loads((study.out / f"{study.name}.json").read_text())
    records = saved["records"]
    for r in records:
        _, _, dvae, explainer = models[r["classifier"]]
        r["square_before"] = square_before(dvae, explainer, torch.tensor(r["codes"]))
    rows = without_square_rows(records)
    command = f"python -m analyses.intervention_bias --dataset {study.args.dataset} --rescore"
    settings = dict(max_steps=None, **saved["settings"], rescored=command)
    print(study.write(dict(saved["tables"], **{WITHOUT_SQUARE: rows}),
                      extra={k: v for k, v in saved.items() if k not in ("settings", "tables")}, settings=settings))
    return dict(without_square=rows)


if __name__ == "__main__":
    main(sys.argv[1:])
