"""Kernel benchmark: Pyro NUTS (1 chain, and C chains as a plate) against the batched kernels ``hmc`` and ``chees``.

    python -m analyses.bench_kernels                       # the full table (hours on 2 CPU cores)
    python -m analyses.bench_kernels --quick --out /tmp/b  # a smoke run (seconds)

Every row samples the digits VAE + CNN posterior of one target with the same ``sigma``, in one process on one
machine, one row after another. Columns:

- ``wall_s``: the kernel's sampling time (warmup + draws; the shared choice of starting points is not counted);
- ``draws``: kept draws, chains × samples;
- ``ess_bulk``, ``ess_tail``: the minimum over the latent dimensions (ArviZ, rank-normalised split R-hat/ESS);
- ``bulk_per_s``, ``tail_per_s``: those ESS per wall second, and ``x_bulk``, ``x_tail`` the ratios to the
  single-chain Pyro NUTS row of the same target;
- ``max_r_hat`` over the latent dimensions; ``attainment`` (every statistic within ±0.05 of its target);
- ``grad_evals_per_s``: gradient evaluations of one chain's log density per second (a batched call over C chains
  counts C);
- ``overhead``: wall / (batched gradient calls × the time of one bare batched forward+backward at that C), so 1.0
  means the sampler costs nothing beyond its gradients.

Writes ``bench_kernels.md`` and ``bench_kernels.json`` (atomically) into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import bayestrex as bt
from bayestrex.io import atomic_path
from bayestrex.io import markdown_table as markdown
from bayestrex.kernels.chees import ChEES
from bayestrex.kernels.hmc import BatchedHMC
from bayestrex.kernels.pyro_nuts import PyroNUTS


def median_seconds(fn, device, repeats: int = 20) -> float:
    """Median seconds of ``fn()`` after 3 warm-up calls (synchronising on GPUs)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bare_seconds(posterior, num_chains: int, repeats: int = 20, seed: int = 0) -> float:
    """Median time of one batched forward+backward of the log density at ``num_chains`` points."""
    z = torch.randn(num_chains, posterior.latent_dim, generator=torch.Generator().manual_seed(seed))
    z = z.to(posterior.device, posterior.dtype)
    return median_seconds(lambda: posterior.potential_and_grad(z), posterior.device, repeats)


def row_specs(args) -> list[tuple[str, object, int, int, int]]:
    """(label, kernel, chains, warmup, samples) for each row of one target."""
    rows = [("nuts", PyroNUTS(full_mass=True, max_tree_depth=args.nuts_depth), 1, args.warmup, args.samples)]
    for c in args.plate_chains:
        rows.append(("nuts-plate", PyroNUTS("plate", full_mass=True, max_tree_depth=args.plate_depth), c,
                     args.plate_warmup, args.plate_samples))
    for c in args.hmc_chains:
        rows.append(("hmc", BatchedHMC(max_steps=args.max_steps), c, args.warmup, args.samples))
    for c in args.chees_chains:
        rows.append(("chees", ChEES(max_steps=args.max_steps), c, args.warmup, args.samples))
    return rows


def run_row(vae, clf, target, label, kernel, chains, warmup, samples, sigma, seed, bare_cache) -> dict:
    result = bt.sample(vae.decoder, clf, target, num_chains=chains, num_samples=samples, warmup=warmup, sigma=sigma,
                       kernel=kernel, seed=seed, progress=False)
    wall = result.info["sampling_seconds"]
    df = bt.diagnostics.summary(result)
    z = df[df.index.str.startswith("z")]
    if chains not in bare_cache:
        post = bt.Posterior(vae.decoder, clf, target, sigma=sigma)
        bare_cache[chains] = bare_seconds(post, chains)
    calls, evals = result.info["grad_calls"], result.info["grad_evals"]
    ess_b, ess_t = float(z["ess_bulk"].min()), float(z["ess_tail"].min())
    return dict(target=target, kernel=label, chains=chains, warmup=warmup, draws=chains * samples,
                wall_s=round(wall, 1), ess_bulk=round(ess_b), ess_tail=round(ess_t),
                bulk_per_s=round(ess_b / wall, 2), tail_per_s=round(ess_t / wall, 2),
                max_r_hat=round(float(z["r_hat"].max()), 3), attainment=round(result.attainment, 3),
                grad_evals_per_s=round(evals / wall), overhead=round(wall / (calls * bare_cache[chains]), 2),
                divergences=int(result.stats["diverging"].bool().sum()), failed_chains=len(result.failed_chains),
                step_size=_round(result.info.get("step_size")), trajectory=_round(result.info.get("trajectory_length")))


def _round(v):
    return round(float(v), 4) if isinstance(v, (int, float)) else None


COLUMNS = ["target", "kernel", "chains", "warmup", "draws", "wall_s", "ess_bulk", "ess_tail", "bulk_per_s",
           "tail_per_s", "x_bulk", "x_tail", "max_r_hat", "attainment", "grad_evals_per_s", "overhead"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=["ambiguous:3,8", "high:0"])
    p.add_argument("--sigma", type=float, default=0.025, help="one sigma for every row (half the ±0.05 tolerance)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--nuts-depth", type=int, default=10, help="max tree depth of the single-chain NUTS row")
    p.add_argument("--plate-chains", type=int, nargs="*", default=[16])
    p.add_argument("--plate-depth", type=int, default=7)
    p.add_argument("--plate-warmup", type=int, default=150)
    p.add_argument("--plate-samples", type=int, default=150)
    p.add_argument("--hmc-chains", type=int, nargs="*", default=[64])
    p.add_argument("--chees-chains", type=int, nargs="*", default=[64, 256, 1024])
    p.add_argument("--bare-chains", type=int, nargs="*", default=[8, 64, 256, 1024, 4096],
                   help="batch sizes at which to time one bare forward+backward (the floor of every kernel)")
    p.add_argument("--max-steps", type=int, default=1000,
                   help="leapfrog cap of hmc and chees (128 cripples them on ambiguous:3,8 at sigma 0.025)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--device", default="cpu", help="where the models and chains live (cpu, cuda, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("analyses/results/bench_kernels"))
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of the whole pipeline")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup = args.samples = args.plate_warmup = args.plate_samples = 20
        args.nuts_depth = args.plate_depth = 4
        args.plate_chains, args.hmc_chains, args.chees_chains, args.max_steps = [4], [4], [4, 8], 16
        args.bare_chains = [4]
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vae, clf = bt.nets.pretrained("digits", progress=False)
    vae, clf = vae.to(args.device), clf.to(args.device)
    rows = []
    for target in args.targets:
        bare_cache: dict[int, float] = {}
        for label, kernel, chains, warmup, samples in row_specs(args):
            print(f"[bench] {target} {label} C={chains} ...", file=sys.stderr, flush=True)
            rows.append(run_row(vae, clf, target, label, kernel, chains, warmup, samples, args.sigma, args.seed,
                                bare_cache))
            print(f"[bench]   {rows[-1]}", file=sys.stderr, flush=True)
        ref = next(r for r in rows if r["target"] == target and r["kernel"] == "nuts" and r["chains"] == 1)
        for r in rows:
            if r["target"] == target:
                r["x_bulk"] = round(r["bulk_per_s"] / ref["bulk_per_s"], 1) if ref["bulk_per_s"] else math.nan
                r["x_tail"] = round(r["tail_per_s"] / ref["tail_per_s"], 1) if ref["tail_per_s"] else math.nan
    rows = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
    meta = dict(command="python -m analyses.bench_kernels " + " ".join(argv if argv is not None else sys.argv[1:]),
                sigma=args.sigma, torch=torch.__version__, threads=torch.get_num_threads(),
                machine=f"{platform.machine()} {platform.processor() or ''}".strip(), device=args.device,
                date=time.strftime("%Y-%m-%d"))
    post = bt.Posterior(vae.decoder, clf, args.targets[0], sigma=args.sigma)
    bare = {c: bare_seconds(post, c) for c in sorted({1, *args.bare_chains})}
    meta["bare_forward_backward_ms"] = {c: round(1e3 * t, 3) for c, t in bare.items()}
    md = markdown(rows, COLUMNS) + "\n\n" + markdown(
        [dict(chains=c, ms=round(1e3 * t, 3), us_per_chain=round(1e6 * t / c, 1),
              x_per_chain_vs_1=round(bare[1] / (t / c), 1)) for c, t in bare.items()],
        ["chains", "ms", "us_per_chain", "x_per_chain_vs_1"])
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "bench_kernels.md") as tmp:
        tmp.write_text(f"`{meta['command']}` (sigma {args.sigma}, {meta['threads']} torch threads, "
                       f"torch {meta['torch']}, {meta['date']})\n\n{md}\n")
    with atomic_path(args.out / "bench_kernels.json") as tmp:
        tmp.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    print(md)
    return rows


if __name__ == "__main__":
    main()
