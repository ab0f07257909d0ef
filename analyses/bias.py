"""Bias (confounding) detection with xGEMs, on CDeepEx's biased MNIST.

- biased classifier: trained on data where every 8 (and nothing else) carries a small grey square in the top-left
  corner; unbiased classifier: the square appears on 10% of the training images, whatever their class;
- generator: a VAE trained on data where the square appears on half of the images, independently of the class;
- oracle: the square is present when the mean of its pixels is >= 0.25 (checked on the test set below).

xGEMs walk clean test inputs of every class but 8 toward 8, and 8s carrying the square toward their runner-up class.
The xGEMs confounding metric is the fraction of xGEMs (walks whose label reached the target) that change the square
attribute (square added on the way to 8, removed on the way from 8), reported per class and overall for both
classifiers, with the number of xGEMs and the classifiers' accuracy on clean 8s.

    python -m analyses.bias --dataset mnist
    python -m analyses.bias --dataset digits --quick
"""

from __future__ import annotations

import sys

import torch

from analyses._studies import Study, cached_model, parser, predict
from bayestrex import nets, special

BIASED_CLASS = 8


def square_slices(shape) -> tuple[slice, slice]:
    """The square's rows and columns: 6x6 one pixel in from the corner on 28x28 (scaled for other sizes)."""
    h, w = shape[-2:]
    side, off = max(2, round(6 * h / 28)), 1 if h >= 16 else 0
    return slice(off, off + side), slice(off, off + side)


def add_square(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``x`` with the grey (0.5) square drawn on the rows where ``which`` is True."""
    x = x.clone()
    rows, cols = square_slices(x.shape)
    patch = x[which][..., rows, cols]
    x[which, ..., rows, cols] = torch.maximum(patch, torch.full_like(patch, 0.5))
    return x


def has_square(x: torch.Tensor) -> torch.Tensor:
    """The oracle: mean intensity of the square's pixels >= 0.25."""
    rows, cols = square_slices(x.shape)
    return x[..., rows, cols].flatten(1).mean(1) >= 0.25


def classifiers(study: Study, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple:
    """``(biased, unbiased)``: CNNs trained with the dataset's recipe on ``x`` with the square on every 8, and on
    10% of the images whatever their class (drawn from ``g``); cached in ``<out>/<dataset>/bias-models/``."""
    cnn, progress = dict(nets.RECIPES[study.args.dataset]["cnn"]), not study.args.quiet
    models = study.out / "bias-models"
    biased = cached_model(models / "biased.pt", lambda: (
        nets.train_classifier(add_square(x, y == BIASED_CLASS), y, **cnn, progress=progress),
        dict(square="every 8")))
    unbiased = cached_model(models / "unbiased.pt", lambda: (
        nets.train_classifier(add_square(x, torch.rand(len(x), generator=g) < 0.1), y, **cnn, progress=progress),
        dict(square="10% of images, any class")))
    return biased, unbiased


def main(argv=None) -> dict:
    p = parser("xGEMs confounding metric on biased MNIST (a square on every training 8)")
    p.add_argument("--per-class", type=int, default=40, help="test inputs walked per class (default 40)")
    args = p.parse_args(argv)
    if args.quick:
        args.per_class = min(args.per_class, 3)
    study = Study("bias", args)
    x, y = study.data("train")
    xt, yt = study.data("test")
    g = torch.Generator().manual_seed(0)
    biased, unbiased = classifiers(study, x, y, g)
    vae = cached_model(study.out / "bias-models" / "vae-squares.pt", lambda: (
        nets.train_vae(add_square(x, torch.rand(len(x), generator=g) < 0.5), **nets.RECIPES[args.dataset]["vae"],
                       progress=not args.quiet),
        dict(square="50% of images, any class")))

    clean8 = xt[yt == BIASED_CLASS]
    squared = add_square(xt, torch.ones(len(xt), dtype=torch.bool))
    accuracy = [dict(classifier=name, clean_test=round(nets.accuracy(m, xt, yt), 4),
                     clean_8s=round(nets.accuracy(m, clean8, torch.full((len(clean8),), BIASED_CLASS)), 4),
                     squared_test_predicted_8=round(float((predict(m, squared).argmax(-1) == BIASED_CLASS)
                                                          .float().mean()), 4))
                for name, m in (("biased", biased), ("unbiased", unbiased))]
    oracle = dict(clean_detected=round(float(has_square(xt).float().mean()), 4),
                  squared_detected=round(float(has_square(squared).float().mean()), 4))

    rows, tallies = [], {"biased": [0, 0], "unbiased": [0, 0]}
    for c in range(10):
        idx = torch.nonzero(yt == c).flatten()[: args.per_class]
        inputs = xt[idx] if c != BIASED_CLASS else add_square(xt[idx], torch.ones(len(idx), dtype=torch.bool))
        row = {"class": c, "inputs": len(idx), "walk": f"{c} -> 8" if c != BIASED_CLASS else "8+square -> runner-up"}
        z0, delta = special.invert(vae.generator, inputs, encoder=vae.encoder)
        for name, clf in (("biased", biased), ("unbiased", unbiased)):
            if c != BIASED_CLASS:
                targets = {BIASED_CLASS: torch.arange(len(idx))}
            else:
                runner = clf(inputs).softmax(-1)
                runner[:, BIASED_CLASS] = -1
                second = runner.argmax(-1)
                targets = {int(t): torch.nonzero(second == t).flatten() for t in second.unique()}
            changed, switched = torch.zeros(len(idx), dtype=torch.bool), torch.zeros(len(idx), dtype=torch.bool)
            for t, rows_t in targets.items():
                res = special.xgems(vae.generator, clf, inputs[rows_t], t, z0=z0[rows_t], delta=delta[rows_t],
                                    max_steps=100 if args.quick else 500)
                changed[rows_t] = has_square(res.images(vae.generator)) != has_square(inputs[rows_t])
                switched[rows_t] = res.switched
            # the metric counts xGEMs, i.e. walks whose label reached the target
            row[f"{name}: xgems"] = int(switched.sum())
            row[f"{name}: confounding"] = round(float(changed[switched].float().mean()), 3) if switched.any() else None
            tallies[name][0] += int(changed[switched].sum())
            tallies[name][1] += int(switched.sum())
        rows.append(row)
    overall = {"class": "all", "inputs": sum(r["inputs"] for r in rows), "walk": "all"}
    for name, (hits, n) in tallies.items():
        overall[f"{name}: xgems"] = n
        overall[f"{name}: confounding"] = round(hits / n, 3) if n else None
    rows.append(overall)
    md = study.write({"classifiers (accuracy on clean data; clean 8s; squared images called 8)": accuracy,
                      "oracle (square detector) on the test set": [oracle],
                      "xGEMs confounding metric: fraction of walks whose xGEM changes the square": rows})
    print(md)
    return dict(accuracy=accuracy, oracle=oracle, rows=rows)


if __name__ == "__main__":
    main(sys.argv[1:])
