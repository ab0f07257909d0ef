"""Print the figures of every trained model under models/ (or a given folder) as a markdown table.

    python models/summary.py            # after training, e.g. `bayestrex train --dataset mnist --models all`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(root: Path) -> list[dict]:
    out = []
    for meta_path in sorted(root.glob("*/*.json")):
        meta = json.loads(meta_path.read_text())
        if "arch" not in meta:
            continue
        fig = meta.get("test_accuracy", meta.get("classifier_test_accuracy"))
        figure = f"test accuracy {fig:.2%}" if fig is not None and meta["arch"] in ("CNN", "MLP") else ""
        bce = meta.get("test_reconstruction_bce", meta.get("vae_test_reconstruction_bce"))
        if meta["arch"] in ("VAE", "Explainer") and bce is not None:
            figure = f"test reconstruction BCE {bce:.1f} nats/image"
        if meta["arch"] == "DiscreteVAE" and "test_relative_mse" in meta:
            figure = (f"relative MSE {meta['test_relative_mse']:.3f}; h on reconstructions "
                      f"{meta['test_accuracy_on_reconstruction']:.2%} (classifier {meta['test_accuracy']:.2%})")
        if meta["arch"] == "GAN" and "class_shares" in meta:
            shares = meta["class_shares"]
            figure = f"class shares of 10k samples {min(shares):.1%}–{max(shares):.1%}"
        seconds = meta.get("train_seconds", meta.get("vae_train_seconds" if meta["arch"] == "VAE"
                                                     else "classifier_train_seconds"))
        classes = meta.get("classes", list(range(10)))
        out.append(dict(dataset=meta_path.parent.name, model=meta_path.stem, arch=meta["arch"],
                        classes="all" if len(classes) == 10 else ",".join(map(str, classes)),
                        train_examples=meta.get("train_examples", ""), train_seconds=seconds, figure=figure))
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent
    table = rows(root)
    cols = list(table[0]) if table else []
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in table:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
