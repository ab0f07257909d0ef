"""In-distribution adversarial examples (Bayes-TrEx, section 4.3): for each class C, a VAE trained on every class but
C, and the target ``high:C`` of the classifier trained on all classes. Draws that reach p_C >= 0.9 are inputs from a
distribution without any C that the classifier is nonetheless sure are C.

    python -m analyses.adversarial --dataset mnist
    python -m analyses.adversarial --dataset digits --quick --classes 0 1

Writes ``adversarial.md`` / ``.json`` (per class: fraction of draws with p_C >= 0.9, attainment, diagnostics, and
what the classifier's second choice is) and ``adversarial-draws.png`` into ``--out/<dataset>/``.
"""

from __future__ import annotations

import sys

import torch

import bayestrex as bt
from analyses._studies import Study, parser, pick, top2_titles


def main(argv=None) -> list[dict]:
    p = parser("Bayes-TrEx in-distribution adversarial examples: high:C under a generator trained without C")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="classes C (default: all 10)")
    args = p.parse_args(argv)
    study = Study("adversarial", args)
    classes = args.classes if args.classes is not None else ([0, 1] if args.quick else list(range(10)))
    study.prefetch([(f"vae-without-{c}", "classifier", f"high:{c}") for c in classes])
    rows, montage_rows, titles = [], [], []
    for c in classes:
        result, images = study.sample(f"vae-without-{c}", "classifier", f"high:{c}")
        p_c = result.probs[..., c]
        confident = p_c >= 0.9
        row = study.row(result)
        row = dict(row, **{"class": study.class_names[c], "frac_p_ge_0.9": round(float(confident.float().mean()), 3),
                           "median_p_c": round(float(p_c.median()), 3)})
        others = result.probs.clone()
        others[..., c] = -1
        runner_up = others.argmax(-1)[confident]
        if len(runner_up):
            k = int(torch.mode(runner_up).values)
            row["usual_second_class"] = study.class_names[k]
        rows.append(row)
        img, probs = pick(result, images, where=confident)
        montage_rows.append((f"without {study.class_names[c]}\n{row['frac_p_ge_0.9']:.0%} p>=0.9", img))
        titles.append(top2_titles(probs))
    bt.plots.montage(montage_rows, titles=titles, path=study.figure("draws"),
                     suptitle=f"{args.dataset}: high:C sampled through a VAE trained without C "
                              "(draws with p_C >= 0.9 first)")
    md = study.write({"in-distribution adversarial examples (high:C, generator without C)": rows})
    print(md)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
