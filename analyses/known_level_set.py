"""A level set known by construction (the Bayes-TrEx authors' "vague" classifier), at the scale of the studies.

A classifier is trained with soft labels: an image of digit ``c`` has target probabilities ``p_c = alpha_c`` and
``p_{c+1 mod 10} = 1 - alpha_c`` (distinct ``alpha_c = 0.55 + 0.04 c``). If it learns them, the level set of
``graded:c,c+1,alpha_c`` under this classifier *is* "images of digit c". Sampling it and scoring the draws with the
ordinary zoo classifier measures whether the sampler returns what the level set is: the fraction of draws that are
digit ``c``, per ``c``. With ``--kernel smc`` the table also holds the level set's mass (the fraction of the
generator's inputs in it) beside the share of digit ``c`` among the generator's prior draws and a plain prior-sampling
estimate of the mass.

    python -m analyses.known_level_set --dataset mnist --kernel smc --chains 256 --warmup 2 --samples 4
    python -m analyses.known_level_set --dataset digits --quick
"""

from __future__ import annotations

import sys

import torch

from analyses._studies import Study, cached_model, parser, pick, predict, top2_titles
from analyses.level_sets import prior_masses
from bayestrex import nets, plots


def alphas() -> list[float]:
    """``alpha_c = 0.55 + 0.04 c``: distinct, so the ten level sets are ten different probability vectors."""
    return [round(0.55 + 0.04 * c, 2) for c in range(10)]


def soft_labels(y: torch.Tensor) -> torch.Tensor:
    """``[N, 10]``: ``alpha_c`` on the label ``c``, ``1 - alpha_c`` on ``c + 1 mod 10``."""
    a = torch.tensor(alphas())
    q = torch.zeros(len(y), 10)
    q[torch.arange(len(y)), y] = a[y]
    q[torch.arange(len(y)), (y + 1) % 10] = 1 - a[y]
    return q


def main(argv=None) -> dict:
    p = parser("A level set known by construction: a classifier trained on soft labels")
    args = p.parse_args(argv)
    study = Study("known_level_set", args)
    classes = [0, 1] if args.quick else list(range(10))
    x, y = study.data("train")
    xt, yt = study.data("test")
    cnn = dict(nets.RECIPES[args.dataset]["cnn"])
    vague = cached_model(study.out / "models" / "vague-classifier.pt", lambda: (
        nets.train_classifier(x, soft_labels(y), **cnn, progress=not args.quiet),
        dict(soft_labels="alpha_c = 0.55 + 0.04 c on c, the rest on c + 1 mod 10")))
    ordinary, vae = study.model("classifier"), study.model("vae")
    # how well the vague classifier learned its soft labels: test images whose output attains their own target
    pt = predict(vague, xt)
    learned = []
    for c in classes:
        t = nets_target(c)
        own = pt[yt == c]
        learned.append(round(float(t_attained(t, own).float().mean()), 3))

    rows, montage_rows, titles = [], [], []
    targets = [nets_target(c) for c in classes]
    for c, target in zip(classes, targets):
        result, images = study.sample_models(vae, vague, target)
        row = study.row(result)
        with torch.no_grad():
            judged = predict(ordinary, images.reshape(-1, *images.shape[2:])).argmax(-1).reshape(result.z.shape[:2])
        ok = result.attained
        row.update(alpha=alphas()[c], test_images_attaining=learned[classes.index(c)],
                   attained_draws=int(ok.sum()),
                   digit_c_among_attained=round(float((judged[ok] == c).float().mean()), 3) if ok.any() else None,
                   digit_c_among_all=round(float((judged == c).float().mean()), 3))
        rows.append(row)
        img, probs = pick(result, images)
        montage_rows.append((f"{target}\n{result.attainment:.0%} attained", img))
        titles.append(top2_titles(ordinary(img).softmax(-1)))
    tables = {"vague classifier level sets (draws scored by the ordinary classifier)": rows}
    plots.montage(montage_rows, titles=titles, path=study.figure("draws"),
                  suptitle=f"{args.dataset}: draws of the vague classifier's level sets (titles: the ordinary "
                           "classifier's top two)")
    if args.kernel == "smc":
        n = 2000 if args.quick else 200_000
        prior = prior_masses(vae.generator, vague, targets, n=n, seed=args.seed)
        g = torch.Generator().manual_seed(args.seed + 1)
        with torch.no_grad():
            z = torch.randn(n, vae.generator.latent_dim, generator=g)
            share = torch.cat([predict(ordinary, vae.generator(b)).argmax(-1) for b in z.split(8192)])
        tables["level-set mass against the generator's share of each digit"] = [
            dict(target=r["target"], smc_mass=r["mass"], smc_mass_se=r["mass_se"], prior_mass=q["prior_mass"],
                 prior_mass_se=q["prior_mass_se"], prior_draws=n,
                 share_of_digit_c_in_prior_draws=round(float((share == c).float().mean()), 4))
            for c, r, q in zip(classes, rows, prior)]
    md = study.write(tables)
    print(md)
    return tables


def nets_target(c: int) -> str:
    return f"graded:{c},{(c + 1) % 10},{alphas()[c]:g}"


def t_attained(spec: str, probs: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: probabilities ``[N, K]`` attain the target ``spec``."""
    from bayestrex import diagnostics, targets

    t = targets.parse(spec)
    return diagnostics.attained(t.statistic(probs), t.value(probs.shape[-1]), t.tolerance)


if __name__ == "__main__":
    main(sys.argv[1:])
