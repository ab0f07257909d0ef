"""Sampler overhead robust to machine load: wall time / time inside the batched ``potential_and_grad`` calls.

    python -m analyses.driver_overhead analyses/results/driver/overhead.json

Digits VAE + CNN, ``sigma = 0.025``, 64 chains x (60 warmup + 60 draws), ``max_steps = 128``, one torch thread, for
``hmc`` and ``chees`` on ``high:0`` and ``ambiguous:3,8``. A ratio near 1 means the driver and kernel bookkeeping cost
little beside the network's passes (the one-driver rewrite measured 1.06-1.08 before and after).
"""

import sys
import time

import torch

import bayestrex as bt
from bayestrex.io import write_json
from bayestrex.kernels import get
from bayestrex.posterior import Posterior


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    spent = [0.0]
    orig = Posterior.potential_and_grad

    def timed(self, z):
        t = time.perf_counter()
        out = orig(self, z)
        spent[0] += time.perf_counter() - t
        return out

    Posterior.potential_and_grad = timed
    try:
        vae, clf = bt.nets.pretrained("digits", progress=False)
        rows = []
        for kernel in ["hmc", "chees"]:
            for target in ["high:0", "ambiguous:3,8"]:
                z0 = bt.Posterior(vae.decoder, clf, target, sigma=0.025).initial_points(64, seed=0)
                kern = get(kernel)
                kern.max_steps = 128
                spent[0] = 0.0
                t = time.perf_counter()
                bt.sample(vae.decoder, clf, target, num_chains=64, num_samples=60, warmup=60, sigma=0.025,
                          kernel=kern, init=z0, progress=False)
                wall = time.perf_counter() - t
                rows.append(dict(kernel=kernel, target=target, wall=round(wall, 2), in_gradients=round(spent[0], 2),
                                 overhead=round(wall / spent[0], 3)))
                print(rows[-1], flush=True)
    finally:
        Posterior.potential_and_grad = orig
    if argv:
        write_json(rows, argv[0])
    return rows


if __name__ == "__main__":
    main()
