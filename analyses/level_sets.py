"""Level sets of the classifier (Bayes-TrEx, section 4.1): high confidence for every class, ambiguity for the 5 most
confused pairs of the test-set confusion matrix, and graded levels alpha = 0, 0.1, ..., 1 for the most confused pair.

    python -m analyses.level_sets --dataset mnist           # also fashion-mnist, digits
    python -m analyses.level_sets --dataset mnist --generator gan   # the same through the GAN
    python -m analyses.level_sets --dataset digits --quick  # a smoke run

Writes ``level_sets.md`` (``level_sets-gan.md`` with the GAN) / ``.json`` (attainment and diagnostics for every
target) and figures (draws per target; the graded sweep's mean probabilities against alpha) into
``--out/<dataset>/``.
"""

from __future__ import annotations

import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import bayestrex as bt  # noqa: E402
from analyses._studies import Study, parser, pick, predict, top2_titles  # noqa: E402


def confused_pairs(classifier, images, labels, k: int = 5) -> list[tuple[int, int, int]]:
    """The ``k`` most confused unordered class pairs on the test set: ``(a, b, errors a<->b)``, most first."""
    pred = predict(classifier, images).argmax(-1)
    n = int(max(labels.max(), pred.max())) + 1
    conf = torch.zeros(n, n, dtype=torch.long)
    conf.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    sym = conf + conf.T
    pairs = [(a, b, int(sym[a, b])) for a in range(n) for b in range(a + 1, n)]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:k]


@torch.no_grad()
def prior_masses(generator, classifier, targets: list[str], n: int, seed: int = 0, batch: int = 8192,
                 device="cpu") -> list[dict]:
    """The plain Monte Carlo answer to "what fraction of the generator's inputs attain each target": ``n`` prior
    draws, each decoded and classified once (on ``device``, where the models are moved; the draws come from a CPU
    generator, so they are the same on any device); hits, fraction and its binomial standard error per target."""
    parsed = [bt.targets.parse(t) for t in targets]
    hits = torch.zeros(len(parsed), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    generator, classifier = generator.to(device), classifier.to(device)
    for start in range(0, n, batch):
        z = torch.randn(min(batch, n - start), generator.latent_dim, generator=g).to(device)
        p = classifier(generator(z)).softmax(-1).cpu()
        for i, t in enumerate(parsed):
            hits[i] += int(bt.diagnostics.attained(t.statistic(p), t.value(p.shape[-1]), t.tolerance).sum())
    out = []
    for t, h in zip(targets, hits.tolist()):
        f = h / n
        out.append(dict(target=t, prior_draws=n, prior_hits=h, prior_mass=float(f"{f:.3g}"),
                        prior_mass_se=float(f"{math.sqrt(max(f * (1 - f), 1 / n) / n):.2g}")))
    return out


def main(argv=None) -> dict:
    p = parser("Bayes-TrEx level sets: high confidence, ambiguity, graded levels")
    p.add_argument("--generator", choices=["vae", "gan"], default="vae", help="zoo generator (default: vae)")
    args = p.parse_args(argv)
    study = Study("level_sets" if args.generator == "vae" else f"level_sets-{args.generator}", args)
    clf = study.model("classifier")
    x_test, y_test = study.data("test")
    pairs = confused_pairs(clf, x_test, y_test, k=1 if args.quick else 5)
    a, b = pairs[0][:2]
    classes = [0, 1] if args.quick else list(range(10))
    alphas = [0.0, 0.5, 1.0] if args.quick else [round(0.1 * i, 1) for i in range(11)]
    groups = {"high confidence": [f"high:{c}" for c in classes],
              "ambiguous (most confused pairs)": [f"ambiguous:{p},{q}" for p, q, _ in pairs],
              f"graded {a}/{b}": [f"graded:{a},{b},{al:g}" for al in alphas]}

    study.prefetch([(args.generator, "classifier", t) for targets in groups.values() for t in targets])
    tables, graded = {}, []
    for group, targets in groups.items():
        rows, montage_rows, titles = [], [], []
        for target in targets:
            result, images = study.sample(args.generator, "classifier", target)
            row = study.row(result)
            if target.startswith("ambiguous"):
                p, q = (int(s) for s in target.split(":")[1].split(","))
                row["test_errors_between"] = next(e for pp, qq, e in pairs if (pp, qq) == (p, q))
            if target.startswith("graded"):
                ok = result.attained
                mean = result.probs[ok].mean(0) if ok.any() else None  # over the attained draws
                row.update(mean_p_a=None if mean is None else round(float(mean[a]), 3),
                           mean_p_b=None if mean is None else round(float(mean[b]), 3))
                alpha = float(target.rsplit(",", 1)[1])
                graded.append((alpha, result.probs[..., a].flatten(), result.probs[..., b].flatten()))
            rows.append(row)
            img, probs = pick(result, images)
            montage_rows.append((f"{target}\n{result.attainment:.0%} attained", img))
            titles.append(top2_titles(probs))
        tables[group] = rows
        bt.plots.montage(montage_rows, titles=titles, path=study.figure(group.split(" ")[0]),
                         suptitle=f"{args.dataset}, {args.generator.upper()}: {group} (draws that attain the target "
                                  "first)")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    al = [g[0] for g in graded]
    ax.plot(al, al, "k:", lw=1, label="target")
    ax.errorbar(al, [float(g[1].mean()) for g in graded], yerr=[float(g[1].std()) for g in graded], marker="o",
                capsize=3, label=f"p_{a} of draws")
    ax.errorbar(al, [float(g[2].mean()) for g in graded], yerr=[float(g[2].std()) for g in graded], marker="s",
                capsize=3, label=f"p_{b} of draws")
    ax.set_xlabel("alpha (target p_a)")
    ax.set_ylabel("probability (mean ± sd over draws)")
    ax.legend(fontsize=8)
    ax.set_title(f"{args.dataset}: graded level sets between {a} and {b}", fontsize=9)
    bt.plots.save(fig, study.figure("graded-sweep"))

    pairs_table = [dict(a=p, b=q, test_errors=e) for p, q, e in pairs]
    if args.kernel == "smc":  # the level-set masses: SMC's estimate beside plain prior sampling
        gen = study.model(args.generator).generator
        every = [r for rows in tables.values() for r in rows]
        prior = prior_masses(gen, clf, [r["target"] for r in every], n=2000 if args.quick else 1_000_000,
                             seed=args.seed, device=study.device)
        tables["level-set masses (fraction of the generator's inputs that attain the target)"] = [
            dict(target=r["target"], smc_mass=r["mass"], smc_mass_se=r["mass_se"], **{k: v for k, v in q.items()
                                                                                    if k != "target"})
            for r, q in zip(every, prior)]
    md = study.write({"most confused pairs (test set)": pairs_table, **tables})
    print(md)
    return tables


if __name__ == "__main__":
    main(sys.argv[1:])
