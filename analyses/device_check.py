"""Does the sampling core run on an accelerator? Every registered kernel, a few iterations on ``--device``.

    python -m analyses.device_check --device cuda --out analyses/results/device

For each kernel: a short digits run (``high:0``, 8 chains, 10 + 10) on the device, run twice with the
same seed (same draws expected), and the potential and its gradient at the same points on the device and on the CPU
(float32: relative differences ~1e-6 expected, larger ones mean a device-dependent path). One line per kernel; a
kernel that raises is reported with its error and the others still run. Writes ``device_check.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

import bayestrex as bt
from bayestrex.io import write_json
from bayestrex.kernels import KERNELS

OUT = Path(__file__).resolve().parent / "results" / "device"
TARGET = "high:0"  # smooth (constrained needs that) and quick for every kernel


def potential_agreement(vae, clf, device) -> dict:
    """Relative difference of the potential and its gradient at 64 prior draws, device against CPU."""
    z = torch.randn(64, vae.latent_dim, generator=torch.Generator().manual_seed(0))
    out = []
    for where in ("cpu", device):
        post = bt.Posterior(vae.decoder.to(where), clf.to(where), TARGET, sigma=0.05)
        u, g, _ = post.potential_and_grad(z.to(where))
        out.append((u.cpu().double(), g.cpu().double()))
    (u0, g0), (u1, g1) = out
    return dict(potential_rel=float((u1 - u0).norm() / u0.norm()), grad_rel=float((g1 - g0).norm() / g0.norm()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="every kernel, a few iterations on a device")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    vae, clf = bt.nets.pretrained("digits", progress=False)
    report = dict(device=args.device, torch=torch.__version__,
                  name=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu")
    try:
        report["agreement"] = potential_agreement(vae, clf, args.device)
    except Exception as e:  # noqa: BLE001 - reported, the kernels still run
        report["agreement"] = dict(error=f"{type(e).__name__}: {e}", where=traceback.format_exc(limit=-3))
    print(json.dumps(report), flush=True)
    vae, clf = vae.to(args.device), clf.to(args.device)
    rows = []
    for name in KERNELS:
        row = dict(kernel=name)
        try:
            t0 = time.perf_counter()
            draws = [bt.sample(vae.decoder, clf, TARGET, num_chains=1 if name == "nuts" else 8, num_samples=10,
                               warmup=10, sigma=0.05, kernel=name, seed=3, progress=False) for _ in range(2)]
            row.update(ok=True, seconds=round(time.perf_counter() - t0, 1), device=draws[0].info.get("device"),
                       same_seed_same_draws=bool(torch.equal(draws[0].z, draws[1].z)),
                       finite=bool(torch.isfinite(draws[0].z).all()))
        except Exception as e:  # noqa: BLE001 - reported, the next kernel still runs
            row.update(ok=False, error=f"{type(e).__name__}: {e}"[:500], where=traceback.format_exc(limit=-4))
        print(json.dumps(row), flush=True)
        rows.append(row)
    report["kernels"] = rows
    write_json(report, args.out / "device_check.json")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
