"""What the Bayes-TrEx studies share: options, the zoo models, cached sampling of one target, tables and figures.

Every study is one command (``python analyses/<study>.py --dataset mnist``) that writes ``<study>.md``,
``<study>.json`` and PNG figures into ``--out/<dataset>/``. Sampled results are cached in ``--out/<dataset>/cache/``
by (models, target, sampler settings), so studies that need the same posterior sample it once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

import bayestrex as bt
from bayestrex.io import atomic_path, markdown_table, write_json
from bayestrex.kernels.chees import ChEES

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str, *, default_chains=32, default_warmup=100, default_samples=100) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", default="mnist", help="digits, mnist or fashion-mnist (default: mnist)")
    p.add_argument("--out", default=str(RESULTS / "studies"), help="output folder; a subfolder per dataset")
    p.add_argument("--chains", type=int, default=default_chains, help=f"chains per target (default {default_chains})")
    p.add_argument("--warmup", type=int, default=default_warmup, help=f"warmup per chain (default {default_warmup})")
    p.add_argument("--samples", type=int, default=default_samples,
                   help=f"kept draws per chain (default {default_samples})")
    p.add_argument("--sigma", type=float, default=0.05, help="likelihood width, as in Bayes-TrEx (default 0.05)")
    p.add_argument("--max-steps", type=int, default=64,
                   help="chees: leapfrog cap per draw (default 64: ambiguous targets asked for ~150 at sigma 0.05, "
                        "5 min a target on 2 CPU cores; the cap costs mixing, reported as R-hat and ESS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--weights-dir", default=None, help="folder of model weights (default: models/)")
    p.add_argument("--data-root", default=None, help="folder of IDX files (default: the installed data source)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few targets, few draws")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


class Study:
    """One study run: its options, output folder, models and sampler."""

    def __init__(self, name: str, args):
        if args.quick:
            args.chains, args.warmup, args.samples = min(args.chains, 4), min(args.warmup, 10), min(args.samples, 10)
        self.name, self.args = name, args
        self.out = Path(args.out) / args.dataset
        self.cache = self.out / "cache"
        self.class_names = bt.data.CLASS_NAMES[args.dataset]
        torch.set_num_threads(args.threads)
        self.t0 = time.perf_counter()

    def model(self, name: str):
        return bt.nets.get(self.args.dataset, name, directory=self.args.weights_dir, data_root=self.args.data_root,
                           progress=not self.args.quiet)

    def data(self, split: str):
        return bt.data.load(self.args.dataset, split, root=self.args.data_root)

    def sample(self, generator_name: str, classifier_name: str, target: str) -> tuple[bt.Result, torch.Tensor]:
        """The posterior of ``target`` for (generator, classifier) of the zoo: ``(result, images [C, D, ...])``.
        Cached on disk by models (their checksums), target and sampler settings."""
        a = self.args
        gen_model, clf = self.model(generator_name), self.model(classifier_name)
        generator = gen_model.generator
        key = json.dumps([a.dataset, gen_model.meta["sha256"], clf.meta["sha256"], target, a.chains, a.warmup,
                          a.samples, a.sigma, a.max_steps, a.seed])
        slug = target.replace(":", "_").replace(",", "_")
        path = self.cache / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.nc"
        if path.is_file():
            result = bt.load(path)
        else:
            init = None
            if a.quick:  # smoke runs: a short polish of the starting points (the default is 200 Adam steps)
                post = bt.Posterior(generator, clf, target, sigma=a.sigma)
                init = post.initial_points(a.chains, seed=a.seed, optimize_steps=10)
            result = bt.sample(generator, clf, target, num_chains=a.chains, num_samples=a.samples, warmup=a.warmup,
                               sigma=a.sigma, kernel=ChEES(max_steps=a.max_steps), seed=a.seed,
                               progress=not a.quiet, init=init)
            result.save(path)
        with torch.no_grad():
            images = result.images(generator)
        return result, images

    def row(self, result: bt.Result) -> dict:
        """The diagnostics columns every study reports per target."""
        o = bt.diagnostics.overview(result)
        return {k: o[k] for k in ("target", "attainment", "max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences",
                                  "failed_chains", "stuck_chains", "seconds")}

    def write(self, tables: dict[str, list[dict]], extra: dict | None = None, settings: dict | None = None) -> str:
        """Write ``<name>.md`` (one section per table) and ``<name>.json`` atomically; return the markdown.
        ``settings`` override or add to the recorded settings (a value of None drops one, e.g. ``max_steps`` for a
        study that does not use ChEES)."""
        a = self.args
        settings = {k: v for k, v in dict(dict(dataset=a.dataset, kernel="chees", chains=a.chains, warmup=a.warmup,
                                                samples=a.samples, sigma=a.sigma, max_steps=a.max_steps, seed=a.seed,
                                                quick=a.quick), **(settings or {})).items() if v is not None}
        settings.setdefault("seconds", round(time.perf_counter() - self.t0, 1))  # kept when given (a re-scored run)
        parts = [f"# {self.name} — {a.dataset}", "", "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items())]
        for title, rows in tables.items():
            parts += ["", f"## {title}", "", markdown_table(rows) if rows else "(none)"]
        md = "\n".join(parts) + "\n"
        with atomic_path(self.out / f"{self.name}.md") as tmp:
            tmp.write_text(md)
        write_json(dict(settings=settings, tables=tables, **(extra or {})), self.out / f"{self.name}.json")
        return md

    def figure(self, fig_name: str) -> Path:
        return self.out / f"{self.name}-{fig_name}.png"


def pick(result: bt.Result, images: torch.Tensor, n: int = 8, where: torch.Tensor | None = None):
    """Up to ``n`` draws spread over the chains, preferring those in ``where`` (default: attained draws):
    ``(images [n, ...], probs [n, K])``."""
    where = result.attained if where is None else where
    flat_ok = where.reshape(-1)
    order = torch.arange(flat_ok.numel())
    # interleave chains: draw d of chain c has rank d * C + c, so the first picks come from different chains
    c, d = result.z.shape[:2]
    rank = (order % d) * c + order // d
    chosen = order[flat_ok][rank[flat_ok].argsort()]
    if len(chosen) < n:
        rest = order[~flat_ok][rank[~flat_ok].argsort()]
        chosen = torch.cat([chosen, rest])
    chosen = chosen[:n]
    flat_images = images.reshape(-1, *images.shape[2:])
    return flat_images[chosen], result.probs.reshape(-1, result.probs.shape[-1])[chosen]


def top2_titles(probs: torch.Tensor, classes=None) -> list[str]:
    """``"3:0.51 8:0.47"`` per row of ``probs``; ``classes[k]`` names output ``k``."""
    out = []
    for p in probs:
        top = p.topk(min(2, len(p)))
        out.append(" ".join(f"{classes[k] if classes else k}:{v:.2f}" for v, k in zip(top.values.tolist(),
                                                                                    top.indices.tolist())))
    return out


@torch.no_grad()
def predict(classifier, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Softmax probabilities ``[N, K]`` of ``images [N, ...]``, in batches."""
    return torch.cat([classifier(x).softmax(-1) for x in images.split(batch_size)])


def intervention_examples(study: Study, shown: list, title: str) -> None:
    """The study's ``examples`` figure of interventions: ``shown`` rows ``(label, x, from_g, from_codes, from_new,
    minimal)`` (see ``bayestrex.intervention.pictures``), each labelled with its changed latents and top class."""
    from bayestrex.intervention import describe

    if shown:
        bt.plots.intervention(*(torch.stack([row[j] for row in shown]) for j in range(1, 5)),
                              labels=[f"{row[0]}\n{describe(row[5], study.class_names)}" for row in shown],
                              path=study.figure("examples"), title=title)


def cached_model(path: Path, train):
    """The model saved at ``path``; when missing, ``train() -> (model, info)`` makes it and it is saved with ``info``
    and its training time. Loaded safely (``weights_only``), frozen."""
    path = Path(path)
    if not path.is_file():
        t0 = time.perf_counter()
        model, info = train()
        bt.nets.save(model, path, train_seconds=round(time.perf_counter() - t0, 1), **info)
    return bt.nets.load(path).requires_grad_(False)
