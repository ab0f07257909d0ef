"""What bounds the kernel benchmark's speed-up on one machine: a roofline of the batched log density.

    python -m analyses.roofline                  # this machine, 1 and 2 torch threads
    python -m analyses.roofline --device cuda    # the same on a GPU

The kernel benchmark (``analyses/bench_kernels.py``) reports ``x_bulk``: a kernel's bulk ESS per second over
single-chain Pyro NUTS's. That ratio is a product of two factors, and this script measures each:

    x_bulk = (gradient evaluations per second, kernel / NUTS)      <- hardware: what batching C chains buys
           × (bulk ESS per gradient evaluation, kernel / NUTS)     <- algorithm

Tables written to ``--out`` (``roofline.md``, ``roofline.json``, atomically):

1. ``batch``: one bare forward+backward of the digits VAE + CNN posterior at C chains, per thread count: ms,
   µs per chain, the gain per chain against C = 1 and the achieved GFLOP/s (FLOPs counted by torch's
   ``FlopCounterMode``);
2. ``peak``: what the machine attains on dense fp32 work: a 1024³ matmul and the CNN's larger convolution
   (16 → 32 channels, 8×8, forward + input gradient) at batch 4096, in GFLOP/s;
3. ``factors``: every row of the kernel benchmark's JSON (``--bench``) split into the two factors above.

When the batched pass already runs near the machine's attainable rate (table 2), no kernel can buy more than
table 1's best gain per gradient; the rest of any speed-up must come from ESS per gradient.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import bayestrex as bt
from analyses.bench_kernels import bare_seconds, median_seconds
from bayestrex.io import atomic_path, markdown_table, write_json

HERE = Path(__file__).resolve().parent


def flops_per_chain(posterior, chains: int = 64) -> float:
    """FLOPs of one chain's log density and its gradient with respect to z (the batched pass divided by C)."""
    z = torch.randn(chains, posterior.latent_dim, device=posterior.device, dtype=posterior.dtype)
    z.requires_grad_(True)
    params = [p for m in (posterior.generator, posterior.classifier) for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:  # count only the gradient with respect to z, as potential_and_grad computes it
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            (-posterior.log_density(z)).sum().backward()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return counter.get_total_flops() / chains


def batch_table(posterior, chains: list[int], repeats: int, flops: float) -> list[dict]:
    rows, base = [], None
    for c in chains:
        t = bare_seconds(posterior, c, repeats)
        base = base or t  # chains[0] is 1
        rows.append(dict(threads=torch.get_num_threads(), chains=c, ms=round(1e3 * t, 3),
                         us_per_chain=round(1e6 * t / c, 1), x_per_chain_vs_1=round(base / (t / c), 1),
                         gflops=round(flops * c / t / 1e9, 1)))
    return rows


def peak_table(device, repeats: int) -> list[dict]:
    a = torch.randn(1024, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    t_mm = median_seconds(lambda: a @ b, device, repeats)
    x = torch.randn(4096, 16, 8, 8, device=device, requires_grad=True)
    conv = torch.nn.Conv2d(16, 32, 3, padding=1).to(device).requires_grad_(False)

    def conv_fwd_bwd():
        (grad,) = torch.autograd.grad(conv(x).sum(), x)
        return grad

    t_conv = median_seconds(conv_fwd_bwd, device, repeats)
    conv_flops = 2 * 2 * 4096 * 32 * 16 * 9 * 64  # forward and input gradient, 2 FLOPs per multiply-add
    return [dict(threads=torch.get_num_threads(), work="matmul 1024^3", ms=round(1e3 * t_mm, 3),
                 gflops=round(2 * 1024**3 / t_mm / 1e9, 1)),
            dict(threads=torch.get_num_threads(), work="conv 16->32 3x3 8x8, batch 4096, fwd+grad",
                 ms=round(1e3 * t_conv, 3), gflops=round(conv_flops / t_conv / 1e9, 1))]


def factors_table(bench: dict) -> list[dict]:
    """Split each benchmark row's ESS/s ratio into (gradients/s ratio) × (ESS per gradient ratio)."""
    rows = []
    for target in dict.fromkeys(r["target"] for r in bench["rows"]):
        mine = [r for r in bench["rows"] if r["target"] == target]
        ref = next(r for r in mine if r["kernel"] == "nuts" and r["chains"] == 1)

        def per_kgrad(r):
            return 1e3 * r["ess_bulk"] / (r["grad_evals_per_s"] * r["wall_s"])

        for r in mine:
            rows.append(dict(target=target, kernel=r["kernel"], chains=r["chains"],
                             grad_evals_per_s=r["grad_evals_per_s"],
                             x_grad_rate=round(r["grad_evals_per_s"] / ref["grad_evals_per_s"], 1),
                             bulk_ess_per_kgrad=round(per_kgrad(r), 3),
                             x_ess_per_grad=round(per_kgrad(r) / per_kgrad(ref), 2),
                             x_bulk=round(r["bulk_per_s"] / ref["bulk_per_s"], 1)))
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time (CPU)")
    p.add_argument("--chains", type=int, nargs="+", default=[1, 8, 64, 256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--target", default="ambiguous:3,8")
    p.add_argument("--sigma", type=float, default=0.025)
    p.add_argument("--bench", type=Path, default=HERE / "results" / "bench_kernels" / "bench_kernels.json",
                   help="kernel benchmark JSON to split into factors (skipped when missing)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "roofline")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    vae, clf = bt.nets.pretrained("digits", progress=False)
    vae, clf = vae.to(device), clf.to(device)
    post = bt.Posterior(vae.decoder, clf, args.target, sigma=args.sigma)
    chains = sorted({1, *args.chains})
    flops = flops_per_chain(post)
    batch, peak = [], []
    for n in (args.threads if device.type == "cpu" else [torch.get_num_threads()]):
        torch.set_num_threads(n)
        batch += batch_table(post, chains, args.repeats, flops)
        peak += peak_table(device, args.repeats)
    out = dict(meta=dict(command="python -m analyses.roofline " + " ".join(sys.argv[1:] if argv is None else argv),
                         device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                         machine=platform.machine(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                         target=args.target, flops_per_chain=flops),
               batch=batch, peak=peak)
    md = [f"`{out['meta']['command']}` ({out['meta']['device']}, torch {torch.__version__}, {out['meta']['date']}); "
          f"one chain's log density + gradient: {out['meta']['flops_per_chain'] / 1e6:.2f} MFLOP",
          markdown_table(batch), markdown_table(peak)]
    if args.bench.exists():
        bench = json.loads(args.bench.read_text())
        out["factors"] = factors_table(bench)
        md += [f"Factors of `{bench['meta']['command']}` ({bench['meta']['date']}):",
               markdown_table(out["factors"])]
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(md) + "\n"
    with atomic_path(args.out / "roofline.md") as tmp:
        tmp.write_text(text)
    write_json(out, args.out / "roofline.json")
    print(text)
    return out


if __name__ == "__main__":
    main()
