"""How the cost of an effective draw grows as the level set narrows: ESS per gradient-equivalent against sigma.

    python -m analyses.bench_sigma                                   # the recorded table (see README)
    python -m analyses.bench_sigma --quick --out /tmp/s              # a smoke run
    python -m analyses.bench_sigma --merge DIR_A DIR_B --out DIR     # one table of processes run side by side

Digits VAE + CNN posterior; for every target and sigma, one after another in one process: single-chain Pyro NUTS,
``chees``, ``constrained`` (constrained HMC on the lifted level set) and ``mmala`` (manifold MALA with the
Gauss-Newton metric); ``--kernels`` and ``--device`` pick a subset
and a device, so that a GPU process and CPU NUTS processes can run side by side and be merged (``--merge``; the NUTS
ratio is then over the median of its seeds' rows). Columns: ESS bulk/tail (minimum over the
latent dimensions), ESS per 1000 gradient-equivalents of the whole run (warmup included; a Jacobian of m statistics
counts ``m`` backward passes, a Newton projection its passes: see ``bayestrex/kernels/constrained.py``), ESS per
second, R-hat, attainment, projection failures, and ``x_nuts``: ESS/s over the NUTS row of the same target and sigma
(where NUTS ran); ``local_*``: the same from each chain's own ESS, summed (``within_chain_ess``: local mixing, which
stays measurable where the chains sit in different pieces of a level set). Ambiguous targets use a differentiable
form for every kernel, so that all of them sample the same posterior (the kinked form has no tangent space on its
level set): ``ambiguous:A,B,mass`` by default (the ``smooth`` form's max over the other classes still has kinks near
the level set; the recorded probe of 2026-11-30 used it). Writes ``bench_sigma.md``,
``bench_sigma.json`` and ``bench_sigma.png`` (log-log) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bayestrex as bt
from bayestrex.io import write_json, write_results
from bayestrex.kernels.chees import ChEES
from bayestrex.kernels.constrained import Constrained
from bayestrex.kernels.mmala import MMALA
from bayestrex.kernels.pyro_nuts import PyroNUTS

OUT = Path(__file__).resolve().parent / "results" / "bench_sigma"


def within_chain_ess(z: torch.Tensor) -> dict[str, float]:
    """Bulk and tail ESS of each chain on its own (split-chain, min over the latent dimensions), summed over the chains
    ``z [C, S, d]``: how fast every chain explores the piece of the level set it is in. Where the chains sit in
    different pieces the ordinary (between-chain) ESS stays at about the number of chains whatever the kernel; this
    one compares kernels' local mixing given enough draws per chain (in 40 it cannot tell a slow chain from a still
    one), and says nothing about the pieces' weights (that is ``smc``'s job)."""
    import arviz_stats as azs

    x = z.double().cpu().numpy()
    out = {}
    for method in ("bulk", "tail"):
        kw = {"prob": (0.05, 0.95)} if method == "tail" else {}  # ArviZ's tail: the 5% and 95% quantiles
        out[method] = float(sum(np.nanmin(azs.ess(x[c: c + 1], method=method, **kw)) for c in range(len(x))))
    return out


def run_row(vae, clf, target, sigma, kernel, chains, warmup, samples, seed) -> dict:
    device = next(vae.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = bt.sample(vae.decoder, clf, target, num_chains=chains, num_samples=samples, warmup=warmup, sigma=sigma,
                       kernel=kernel, seed=seed, progress=False)
    wall = time.perf_counter() - t0
    o = bt.diagnostics.overview(result)
    cost = max(1, int(result.info.get("grad_evals", 0)))
    local = within_chain_ess(result.z)
    row = dict(target=target, sigma=sigma, kernel=result.info["kernel"], seed=seed, chains=chains, warmup=warmup,
               draws=chains * samples, wall_s=round(wall, 1), ess_bulk=round(o["min_ess_bulk"]),
               ess_tail=round(o["min_ess_tail"]), bulk_per_kgrad=round(1000 * o["min_ess_bulk"] / cost, 4),
               tail_per_kgrad=round(1000 * o["min_ess_tail"] / cost, 4),
               bulk_per_s=round(o["min_ess_bulk"] / wall, 3), tail_per_s=round(o["min_ess_tail"] / wall, 3),
               max_r_hat=o["max_r_hat"] if chains > 1 else None, attainment=o["attainment"], grad_equivalents=cost,
               divergences=o["divergences"], device=str(device), local_bulk=round(local["bulk"]),
               local_tail=round(local["tail"]), local_bulk_per_kgrad=round(1000 * local["bulk"] / cost, 4),
               local_tail_per_kgrad=round(1000 * local["tail"] / cost, 4))
    if "projection_failures" in result.stats:
        row["projection_failures"] = int(result.stats["projection_failures"].sum())
        row |= {k: result.info[k] for k in ("selection", "target_accept", "logdet_force", "projection", "soft")
                if k in result.info}
    if isinstance(result.info.get("step_size"), float):
        row["step_size"] = float(f"{result.info['step_size']:.3g}")
    print(json.dumps(row), flush=True)
    return row


def figure(rows, path):
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.2), squeeze=False)
    for ax, t in zip(axes[0], targets):
        for k, marker in zip(dict.fromkeys(r["kernel"] for r in rows), "os^<d>vpXh*+x"):
            pts = sorted((r["sigma"], r["bulk_per_kgrad"]) for r in rows
                         if r["target"] == t and r["kernel"] == k and "refused" not in r)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=k)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sigma")
        ax.set_title(t, fontsize=9)
    axes[0][0].set_ylabel("bulk ESS per 1000 gradient-equivalents")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    bt.plots.save(fig, path)


KERNELS = dict(nuts=lambda a: PyroNUTS(), chees=lambda a: ChEES(max_steps=a.chees_max_steps),
               constrained=lambda a: Constrained(), mmala=lambda a: MMALA())
# explicit configurations of `constrained` (a "constrained" row is the defaults of its date)
KERNELS["constrained-prior-force"] = lambda a: Constrained(logdet_force=False)  # the co-area term in the energy only
KERNELS["constrained-logdet-force"] = lambda a: Constrained(logdet_force=True)  # and its force integrated
KERNELS["constrained-endpoint"] = lambda a: Constrained(selection="endpoint")  # the rule before "multinomial"
KERNELS["constrained-multinomial"] = lambda a: Constrained(selection="multinomial")  # the rule before "doubling"
KERNELS["constrained-lift-all"] = lambda a: Constrained(soft=())  # every statistic lifted (before soft="auto")
KERNELS["constrained-accept-0.6"] = lambda a: Constrained(target_accept=0.6)  # the default without soft statistics
KERNELS["constrained-accept-0.8"] = lambda a: Constrained(target_accept=0.8)  # the default with them
KERNELS["constrained-chord"] = lambda a: Constrained(projection="chord")
KERNELS["constrained-chord-0.8"] = lambda a: Constrained(projection="chord", target_accept=0.8)


def with_ratios(rows: list[dict]) -> list[dict]:
    """``x_nuts_bulk`` / ``x_nuts_tail``: each row's ESS/s over the NUTS rows' of the same target and sigma (their
    median when NUTS ran with several seeds: one 100-draw chain's ESS is noisy; None where NUTS did not run)."""
    nuts: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kernel"] == "nuts":
            nuts.setdefault((r["target"], r["sigma"]), []).append(r)
    for r in rows:
        if "refused" in r:
            continue
        refs = nuts.get((r["target"], r["sigma"]))
        for kind in ("bulk", "tail"):
            ref = statistics.median(n[f"{kind}_per_s"] for n in refs) if refs else None
            r[f"x_nuts_{kind}"] = round(r[f"{kind}_per_s"] / ref, 1) if ref else None
    return rows


def write(rows: list[dict], meta: dict, out: Path) -> str:
    """``bench_sigma.{json,md,png}`` into ``out``; returns the markdown table."""
    cols = ["target", "sigma", "kernel", "seed", "device", "chains", "wall_s", "ess_bulk", "ess_tail", "bulk_per_kgrad",
            "tail_per_kgrad", "local_bulk_per_kgrad", "local_tail_per_kgrad", "bulk_per_s", "tail_per_s", "x_nuts_bulk",
            "x_nuts_tail", "max_r_hat", "attainment",
            "projection_failures", "step_size", "grad_equivalents", "refused"]
    md = write_results(out, "bench_sigma", "ESS per gradient-equivalent against sigma", meta, rows, cols)
    figure(rows, out / "bench_sigma.png")
    return md


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="ESS per gradient-equivalent against sigma, per kernel")
    p.add_argument("--targets", nargs="+", default=["ambiguous:3,8,mass", "graded:1,7,0.3", "high:0"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.05, 0.025, 0.0125, 0.00625])
    p.add_argument("--nuts-sigmas", type=float, nargs="*", default=[0.1, 0.05, 0.025],
                   help="sigmas at which the single-chain NUTS row runs (it gets slow as sigma shrinks)")
    p.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    p.add_argument("--chains", type=int, default=64, help="chains of the batched kernels (default 64)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--chees-max-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                   help="no sampling: merge the bench_sigma.json of these folders (e.g. a CPU NUTS process and a GPU "
                        "process run side by side) into one table with the NUTS ratios, written to --out")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads((d / "bench_sigma.json").read_text()) for d in args.merge]
        rows = with_ratios([r for part in parts for r in part["rows"]])
        meta = dict(command="python -m analyses.bench_sigma " + " ".join(argv or sys.argv[1:]),
                    parts=[part["meta"] for part in parts])
        md = write(rows, meta, args.out)
        print(md)
        return rows
    if args.quick:
        args.targets, args.sigmas, args.nuts_sigmas = args.targets[:1], [0.05, 0.0125], [0.05]
        args.chains, args.warmup, args.samples = 4, 10, 10
    torch.set_num_threads(args.threads)
    vae, clf = (m.to(args.device) for m in bt.nets.pretrained("digits", progress=False))
    gpu = torch.cuda.get_device_name() if str(args.device).startswith("cuda") else None
    meta = dict(command="python -m analyses.bench_sigma " + " ".join(argv or sys.argv[1:]),
                date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
                machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads" + (f", {gpu}" if gpu else ""))
    rows = []
    for target in args.targets:
        for sigma in args.sigmas:
            for name in args.kernels:
                if name == "nuts" and sigma not in args.nuts_sigmas:
                    continue
                chains = 1 if name == "nuts" else args.chains
                try:
                    row = run_row(vae, clf, target, sigma, KERNELS[name](args), chains, args.warmup, args.samples,
                                  args.seed)
                except ValueError as e:  # a kernel that refuses the target (e.g. no attained statistic): on record
                    row = dict(target=target, sigma=sigma, seed=args.seed, chains=chains, refused=str(e))
                    print(json.dumps(row), flush=True)
                rows.append(row | {"kernel": name})
                write_json(dict(meta=dict(meta, partial=True), rows=with_ratios(rows)), args.out / "bench_sigma.json")
    md = write(with_ratios(rows), meta, args.out)
    print(md)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
