"""Overconfidence against the test set (Bayes-TrEx, section 4.2): the test set holds few inputs in an ambiguous level
set, because the classifier is confident on nearly all of them; the sampler finds many in-distribution inputs there.

For each level set (ambiguity for the 3 most confused pairs, and uniform ambiguity), side by side:

- test set: how many of its images attain the target (every statistic within the tolerance), for N forward passes;
- sampler: attained draws, and independent-equivalent attained draws (attainment x min bulk ESS), for the gradient
  evaluations it spent (one gradient evaluation of one chain costs about 3 forward passes);
- both per 10 000 forward-pass equivalents.

And histograms of the maximum confidence on the test set against inputs drawn from the generator's prior (fresh
in-distribution inputs, no target).

    python -m analyses.overconfidence --dataset mnist
    python -m analyses.overconfidence --dataset digits --quick
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayestrex as bt  # noqa: E402
from analyses._studies import Study, parser, predict  # noqa: E402
from analyses.level_sets import confused_pairs  # noqa: E402

FORWARDS_PER_GRADIENT = 3  # a forward and a backward pass ~ 3 forward passes


def main(argv=None) -> dict:
    args = parser("Bayes-TrEx overconfidence: level-set inputs in the test set vs found by the sampler"
                  ).parse_args(argv)
    study = Study("overconfidence", args)
    clf, vae = study.model("classifier"), study.model("vae")
    x_test, y_test = study.data("test")
    test_probs = predict(clf, x_test)
    pairs = confused_pairs(clf, x_test, y_test, k=1 if args.quick else 3)
    targets = [f"ambiguous:{a},{b}" for a, b, _ in pairs] + ["uniform"]

    study.prefetch([("vae", "classifier", spec) for spec in targets])
    rows = []
    for spec in targets:
        target = bt.targets.parse(spec)
        in_test = bt.diagnostics.attained(target.statistic(test_probs), target.value(test_probs.shape[-1]),
                                          target.tolerance)
        result, _ = study.sample("vae", "classifier", spec)
        grads = int(result.info.get("grad_evals", 0))
        attained = int(result.attained.sum())
        ess = min(float(result.summary()["ess_bulk"].min()), result.num_chains * result.num_draws)
        effective = result.attainment * ess
        per = 10_000 / max(grads * FORWARDS_PER_GRADIENT, 1)
        rows.append({"level set": spec, "test images": len(x_test), "test in level set": int(in_test.sum()),
                     "test per 10k fwd": round(int(in_test.sum()) * 10_000 / len(x_test), 2),
                     "sampler grad evals": grads, "sampler attained draws": attained,
                     "sampler independent-equivalent": round(effective, 1),
                     "sampler per 10k fwd": round(effective * per, 2),
                     "attainment": round(result.attainment, 3), "max_r_hat": study.row(result)["max_r_hat"]})

    g = torch.Generator().manual_seed(args.seed)
    n_prior = 1000 if args.quick else 10_000
    with torch.no_grad():
        z = torch.randn(n_prior, vae.latent_dim, generator=g)
        prior_probs = predict(clf, vae.generator(z))
    bins = [0.0, 0.5, 0.9, 0.99, 1.0001]
    hist_rows = []
    for name, probs in (("test set", test_probs), ("generator prior draws", prior_probs)):
        conf = probs.max(-1).values.numpy()
        counts, _ = np.histogram(conf, bins)
        hist_rows.append({"inputs": name, "n": len(conf), **{f"max conf {lo:g}-{min(hi, 1):g}": round(c / len(conf), 4)
                                                          for lo, hi, c in zip(bins[:-1], bins[1:], counts)}})
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    edges = np.linspace(0.1, 1.0, 46)
    for name, probs in (("test set", test_probs), ("generator prior draws", prior_probs)):
        ax.hist(probs.max(-1).values.numpy(), edges, histtype="step", density=True, lw=1.5, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("maximum class probability")
    ax.set_ylabel("density (log)")
    ax.legend(fontsize=8)
    ax.set_title(f"{args.dataset}: classifier confidence, test set vs generated inputs", fontsize=9)
    bt.plots.save(fig, study.figure("confidence-hist"))

    tables = {"level sets: test set vs sampler, per 10 000 forward-pass equivalents": rows,
              "maximum confidence: test set vs generator prior draws": hist_rows}
    print(study.write(tables))
    return tables


if __name__ == "__main__":
    main(sys.argv[1:])
