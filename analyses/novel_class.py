"""Novel-class extrapolation (Bayes-TrEx, section 4.4): a classifier trained on 5 classes meets inputs of the other 5
(MNIST and digits: classifier {0,1,3,6,9}, generator {2,4,5,7,8}; Fashion-MNIST: {2,3,5,6,9} and {0,1,4,7,8}).

Two views, side by side:

1. the test images of each novel class: the classifier's predicted class distribution, median confidence and the
   fraction predicted with confidence >= 0.9;
2. Bayes-TrEx: ``high:k`` for each of the classifier's classes, sampled through the VAE trained only on the novel
   classes; each draw's novel class is named by the 10-class classifier (an oracle), and the same per-novel-class
   table is made from the draws.

    python -m analyses.novel_class --dataset mnist
    python -m analyses.novel_class --dataset digits --quick
"""

from __future__ import annotations

import sys

import torch

import bayestrex as bt
from analyses._studies import Study, parser, pick, predict, top2_titles


def _per_class(names, novel, known, true, probs) -> list[dict]:
    """Per novel class: how many inputs, what the split classifier predicts for them and how surely."""
    rows = []
    conf, pred = probs.max(-1)
    groups = [(names[c], true == c) for c in novel]
    other = ~torch.isin(true, torch.tensor(novel))
    if other.any():  # draws the oracle puts in one of the classifier's own classes: counted, not dropped
        groups.append(("(oracle: a classifier class)", other))
    for label, sel in groups:
        n = int(sel.sum())
        row = {"novel class": label, "n": n}
        for k, name in enumerate(known):
            row[f"-> {names[name]}"] = round(float((pred[sel] == k).float().mean()), 3) if n else None
        row["median_conf"] = round(float(conf[sel].median()), 3) if n else None
        row["frac_conf_ge_0.9"] = round(float((conf[sel] >= 0.9).float().mean()), 3) if n else None
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    args = parser("Bayes-TrEx novel-class extrapolation").parse_args(argv)
    study = Study("novel_class", args)
    known, novel = bt.nets.SPLITS[args.dataset]
    names = study.class_names
    clf = study.model("classifier-split")
    oracle = study.model("classifier")

    x_test, y_test = study.data("test")
    keep = torch.isin(y_test, torch.tensor(novel))
    test_rows = _per_class(names, novel, known, y_test[keep], predict(clf, x_test[keep]))

    sample_rows, drawn_probs, drawn_true, montage_rows, titles = [], [], [], [], []
    targets = range(2 if args.quick else len(known))
    study.prefetch([("vae-split", "classifier-split", f"high:{k}") for k in targets])
    for k in targets:
        result, images = study.sample("vae-split", "classifier-split", f"high:{k}")
        flat = images.reshape(-1, *images.shape[2:])
        oracle_class = predict(oracle, flat).argmax(-1)
        probs = result.probs.reshape(-1, result.probs.shape[-1])
        drawn_probs.append(probs)
        drawn_true.append(oracle_class)
        row = dict(study.row(result), **{"classifier class": names[known[k]]})
        row["frac_conf_ge_0.9"] = round(float((probs[:, k] >= 0.9).float().mean()), 3)
        ok = result.attained.reshape(-1)
        if ok.any():
            top = torch.mode(oracle_class[ok]).values
            row["oracle: usual novel class"] = names[int(top)]
            row["oracle: share of it"] = round(float((oracle_class[ok] == top).float().mean()), 3)
        sample_rows.append(row)
        img, p = pick(result, images)
        montage_rows.append((f"high:{names[known[k]]}\n{result.attainment:.0%} attained", img))
        titles.append(top2_titles(p, [names[c] for c in known]))
    drawn_rows = _per_class(names, novel, known, torch.cat(drawn_true), torch.cat(drawn_probs))
    bt.plots.montage(montage_rows, titles=titles, path=study.figure("draws"),
                     suptitle=f"{args.dataset}: classifier on {[names[c] for c in known]} sampled through a VAE "
                              f"trained on {[names[c] for c in novel]}")
    tables = {"test images of the novel classes: what the 5-class classifier predicts": test_rows,
              "Bayes-TrEx: high:k through the novel-class generator": sample_rows,
              "the same draws grouped by their novel class (10-class oracle)": drawn_rows}
    print(study.write(tables, extra=dict(classifier_classes=list(known), generator_classes=list(novel))))
    return tables


if __name__ == "__main__":
    main(sys.argv[1:])
