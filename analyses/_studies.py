"""What the Bayes-TrEx studies share: options, the zoo models, sampling through a sweep, tables, figures, reports.

Every study is one command (``python -m analyses.<study> --dataset mnist``) that writes ``<study>.md``,
``<study>.json``, PNG figures and ``<study>-report.html`` into ``--out/<dataset>/`` (``<study>-smc.*`` with
``--kernel smc``). Its runs are a sweep (:mod:`bayestrex.sweeps`): the study writes its spec
(``<study>-sweep.toml``), runs it into the sweep folder ``--out/<dataset>/runs/`` (shared by the studies of a
dataset, so a posterior two studies need is sampled once), then makes its tables and figures from the stored
results. Interrupted, a study resumes where it stopped; ``--backend process --workers N`` spreads the runs over local
processes, ``--backend ray --address ADDR`` over a Ray cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch

import bayestrex as bt
from bayestrex.io import atomic_path, markdown_table, write_json
from bayestrex.kernels.chees import ChEES
from bayestrex.kernels.smc import SMC
from bayestrex.sweeps import Sweep, load_spec, sweep, to_toml

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
    p.add_argument("--kernel", choices=["chees", "smc"], default="chees",
                   help="chees (many chains from the best prior draws) or smc (tempered from the prior: particles = "
                        "--chains, in 4 independent runs; --warmup = mutation steps at the posterior) (default chees)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when there is one; default cpu)")
    p.add_argument("--weights-dir", default=None, help="folder of model weights (default: models/)")
    p.add_argument("--data-root", default=None, help="folder of IDX files (default: the installed data source)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few targets, few draws")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--backend", choices=["serial", "process", "ray"], default="serial",
                   help="where the runs execute: serial (this process, default), process (--workers local "
                        "processes) or ray (a Ray task per run)")
    p.add_argument("--workers", type=int, default=None, help="process: worker processes; ray: CPUs of a local "
                   "instance")
    p.add_argument("--address", default=None, help="ray: address of a running cluster (default: a local instance)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p


class Study:
    """One study run: its options, output folder, models and sampler."""

    def __init__(self, name: str, args):
        if args.quick:
            args.chains, args.warmup, args.samples = min(args.chains, 4), min(args.warmup, 10), min(args.samples, 10)
        self.name, self.args = name + ("-smc" if args.kernel == "smc" else ""), args
        self.out = Path(args.out) / args.dataset
        self.runs_dir = self.out / "runs"
        self.sampled: list[tuple[str, bt.Result, object]] = []  # (key, result, generator) for the report
        self.class_names = bt.data.CLASS_NAMES[args.dataset]
        torch.set_num_threads(args.threads)
        self.t0 = time.perf_counter()

    @property
    def device(self) -> torch.device:
        """Where this study's runs sample (``--device``; ``auto`` is cuda when there is one)."""
        d = self.args.device
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(d)

    def model(self, name: str):
        """Zoo model ``name`` of the study's dataset, on CPU (the sweep's runs load their own, on ``--device``)."""
        return bt.nets.get(self.args.dataset, name, directory=self.args.weights_dir, data_root=self.args.data_root,
                           progress=not self.args.quiet)

    def data(self, split: str):
        return bt.data.load(self.args.dataset, split, root=self.args.data_root)

    def spec(self, runs) -> dict:
        """The sweep spec of ``runs``, a list of ``(generator, classifier, target)``, with the study's settings."""
        a = self.args
        settings = dict(dataset=a.dataset, kernel=getattr(a, "kernel", "chees"), sigma=a.sigma, seed=a.seed,
                        chains=a.chains, samples=a.samples, warmup=a.warmup, max_steps=a.max_steps, threads=a.threads)
        if a.quick:  # smoke runs: a short polish of the starting points (the default is 200 Adam steps)
            settings["optimize_steps"] = 10
        settings.update({k: str(v) for k, v in (("weights_dir", a.weights_dir), ("data_root", a.data_root)) if v})
        if a.device != "cpu":  # the default stays out of the spec, so that CPU runs keep their file names
            settings["device"] = a.device
        grid = [dict(generator=g, classifier=c, target=t) for g, c, t in dict.fromkeys(runs)]
        return dict(name=self.name, settings=settings, grid=grid)

    def prefetch(self, runs) -> Sweep:
        """Sample every run of ``runs`` (``(generator, classifier, target)`` tuples) that the sweep folder lacks, on
        the chosen backend; write the spec beside the study's tables (``bayestrex sweep`` runs it as it is)."""
        a = self.args
        spec = self.spec(runs)
        with atomic_path(self.out / f"{self.name}-sweep.toml") as tmp:
            tmp.write_text(to_toml(spec))
        sw = sweep(spec, self.runs_dir, backend=a.backend, workers=a.workers, address=a.address,
                   retry_failed=a.retry_failed, progress=not a.quiet)
        failed = [r for r in sw.rows() if r["status"] != "done"]
        if failed:
            raise RuntimeError(f"{len(failed)} runs did not finish ({failed[0]['key']}: {failed[0]['error']}); see "
                               f"{self.runs_dir / 'index.md'}; rerun (with --retry-failed for failed runs)")
        return sw

    def sample(self, generator_name: str, classifier_name: str, target: str) -> tuple[bt.Result, torch.Tensor]:
        """The posterior of ``target`` for (generator, classifier) of the zoo: ``(result, images [C, D, ...])``,
        read from the sweep folder (sampled now when it is not there)."""
        run = load_spec(self.spec([(generator_name, classifier_name, target)]))[1][0]
        row = Sweep(self.runs_dir, [run]).rows()[0]
        if row["status"] != "done":
            self.prefetch([(generator_name, classifier_name, target)])
            row = Sweep(self.runs_dir, [run]).rows()[0]
        result = bt.load(self.runs_dir / row["path"])
        generator = self.model(generator_name).generator
        with torch.no_grad():
            images = result.images(generator)
        self.sampled.append((row["key"], result, generator))
        return result, images

    def sample_models(self, gen_model, clf, target: str) -> tuple[bt.Result, torch.Tensor]:
        """As :meth:`sample` for models that are not in the zoo (loaded from the study's own checkpoints: anything
        with ``meta["sha256"]``): sampled in this process, cached in ``--out/<dataset>/cache/`` by the models'
        checksums, target and sampler settings."""
        a = self.args
        generator = gen_model.generator
        settings = [a.dataset, gen_model.meta["sha256"], clf.meta["sha256"], target, a.chains, a.warmup, a.samples,
                    a.sigma, a.max_steps, a.seed]
        key = json.dumps(settings + (["smc"] if a.kernel == "smc" else []))
        slug = target.replace(":", "_").replace(",", "_")
        path = self.out / "cache" / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.nc"
        if path.is_file():
            result = bt.load(path)
        else:
            init = None
            if a.quick and a.kernel == "chees":  # smoke runs: a short polish of the starting points (default 200)
                post = bt.Posterior(generator, clf, target, sigma=a.sigma)
                init = post.initial_points(a.chains, seed=a.seed, optimize_steps=10)
            kernel = ChEES(max_steps=a.max_steps) if a.kernel == "chees" else SMC(max_leapfrog=a.max_steps)
            result = bt.sample(generator, clf, target, num_chains=a.chains, num_samples=a.samples, warmup=a.warmup,
                               sigma=a.sigma, kernel=kernel, seed=a.seed, progress=not a.quiet, init=init)
            result.save(path)
        with torch.no_grad():
            images = result.images(generator)
        self.sampled.append((f"{target} (own models)", result, generator))
        return result, images

    def row(self, result: bt.Result) -> dict:
        """The diagnostics columns every study reports per target (for smc also the nested R-hat over its
        independent runs, whether they agree on the split between regions, log Z and the level-set mass)."""
        o = bt.diagnostics.overview(result)
        row = {k: o[k] for k in ("target", "attainment", "max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences",
                                 "failed_chains", "stuck_chains", "grad_evals", "seconds")}
        if self.args.kernel == "smc":
            # one run (a few particles): no split between runs to compare
            agreement = bt.diagnostics.run_agreement(result) or dict(agree=None, max_difference=math.nan)
            mass = result.level_set_mass()
            row.update(nested_r_hat=o["nested_r_hat"], runs_agree=agreement["agree"],
                       region_share_spread=round(agreement["max_difference"], 3), log_z=o["log_evidence"],
                       log_z_se=o["log_evidence_se"], mass=float(f"{mass['mass']:.3g}"),
                       mass_se=float(f"{mass['mass_se']:.2g}"), stages=len(result.groups["smc"]["beta"]))
        return row

    def write(self, tables: dict[str, list[dict]], extra: dict | None = None, settings: dict | None = None) -> str:
        """Write ``<name>.md`` (one section per table) and ``<name>.json`` atomically; return the markdown.
        ``settings`` override or add to the recorded settings (a value of None drops one, e.g. ``max_steps`` for a
        study that does not use ChEES)."""
        a = self.args
        settings = {k: v for k, v in dict(dict(dataset=a.dataset, kernel=a.kernel, chains=a.chains, warmup=a.warmup,
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
        if self.sampled and not a.no_report:
            keys, results, generators = zip(*self.sampled)
            bt.report.write(list(results), self.out / f"{self.name}-report.html", generators=list(generators),
                            names=list(keys), title=f"{self.name} — {a.dataset}")
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
