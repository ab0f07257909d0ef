"""Confidence manifolds (xGEMs, section 4.3): two classifiers of similar accuracy, an MLP and the zoo CNN, walked by
xGEMs from the same test inputs toward each input's runner-up class; a logistic function of the distance walked is
fitted to the target's probability along every walk, and the fitted steepness and midpoint are compared as 2-D
histograms. A steep, near midpoint means the classifier flips abruptly close to the input.

    python -m analyses.manifolds --dataset mnist
    python -m analyses.manifolds --dataset digits --quick
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayestrex as bt  # noqa: E402
from analyses._studies import Study, cached_model, parser, predict  # noqa: E402
from bayestrex import nets, special  # noqa: E402


def _mlp(study, x, y):
    cnn = nets.RECIPES[study.args.dataset]["cnn"]
    return cached_model(study.out / "manifold-models" / "mlp.pt", lambda: (nets.train_classifier(
        x, y, net="mlp", epochs=cnn["epochs"] * 2, batch_size=cnn["batch_size"], progress=not study.args.quiet), {}))


def walks(vae, clf, x, max_steps):
    """xGEMs of ``x`` toward each input's runner-up class under ``clf``: ``(switched, steepness, midpoint)``."""
    runner = predict(clf, x).topk(2, dim=-1).indices[:, 1]
    z0, delta = special.invert(vae.generator, x, encoder=vae.encoder)
    switched = torch.zeros(len(x), dtype=torch.bool)
    k, d0 = torch.zeros(len(x)), torch.zeros(len(x))
    for t in runner.unique().tolist():
        rows = torch.nonzero(runner == t).flatten()
        res = special.xgems(vae.generator, clf, x[rows], t, z0=z0[rows], delta=delta[rows], max_steps=max_steps)
        switched[rows], k[rows], d0[rows] = res.switched, res.steepness, res.midpoint
    return switched, k, d0


def main(argv=None) -> dict:
    p = parser("Confidence manifolds of an MLP and a CNN (xGEMs logistic fits)")
    p.add_argument("--inputs", type=int, default=300, help="test inputs walked per classifier (default 300)")
    args = p.parse_args(argv)
    if args.quick:
        args.inputs = min(args.inputs, 12)
    study = Study("manifolds", args)
    x_train, y_train = study.data("train")
    x_test, y_test = study.data("test")
    vae, cnn = study.model("vae"), study.model("classifier")
    mlp = _mlp(study, x_train, y_train)
    x = x_test[: args.inputs]

    rows, fits = [], {}
    for name, clf in (("MLP", mlp), ("CNN", cnn)):
        switched, k, d0 = walks(vae, clf, x, max_steps=100 if args.quick else 500)
        fits[name] = (k[switched].numpy(), d0[switched].numpy())
        q = lambda v: [round(float(a), 3) for a in np.quantile(v, [0.25, 0.5, 0.75])] if len(v) else None  # noqa: E731
        rows.append(dict(classifier=name, test_accuracy=round(nets.accuracy(clf, x_test, y_test), 4),
                         walks=len(x), switched=int(switched.sum()), steepness_quartiles=q(fits[name][0]),
                         midpoint_quartiles=q(fits[name][1])))

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharex=True, sharey=True)
    all_k = np.concatenate([np.log10(np.clip(v[0], 1e-3, None)) for v in fits.values()] + [np.zeros(1)])
    all_d = np.concatenate([v[1] for v in fits.values()] + [np.zeros(1)])
    k_edges = np.linspace(np.quantile(all_k, 0.01), np.quantile(all_k, 0.99) + 1e-6, 25)
    d_edges = np.linspace(0, np.quantile(all_d, 0.99) + 1e-6, 25)
    for ax, (name, (k, d0)) in zip(axes, fits.items()):
        ax.hist2d(d0, np.log10(np.clip(k, 1e-3, None)), bins=[d_edges, k_edges], cmap="viridis")
        ax.set_title(f"{name}: {len(k)} xGEMs", fontsize=9)
        ax.set_xlabel("midpoint d0 (latent distance)")
    axes[0].set_ylabel("log10 steepness k")
    fig.suptitle(f"{args.dataset}: confidence manifolds toward the runner-up class", fontsize=9)
    bt.plots.save(fig, study.figure("hist2d"))
    md = study.write({"logistic fits of p(target) against distance, per classifier": rows})
    print(md)
    return dict(rows=rows)


if __name__ == "__main__":
    main(sys.argv[1:])
