"""Which draws are bit-reproducible: the same seed with the same and with another torch CPU thread count.

    python -m analyses.thread_reproducibility analyses/results/reliability/threads.json

Digits VAE + CNN, ``high:0``, ``sigma = 0.05``, 4 chains x (20 warmup + 20 draws), seed 0, on CPU, for ``nuts``
(tree depth <= 6), ``chees``, ``hmc`` (<= 64 leapfrog steps) and ``slice``: each run once with 1 thread, again with
1 thread, and with 2 threads.
Records whether the draws are identical bit for bit, the largest difference of ``z`` and the first draw that differs.
With several threads torch splits the network's sums differently, so float rounding differs in the last bits; a
sampler's chain (NUTS's tree doubling, an accept/reject test, a slice bracket) can turn such a difference into other
draws.
"""

from __future__ import annotations

import sys
import time

import torch

import bayestrex as bt
from bayestrex.io import write_json

KERNELS = ("nuts", "chees", "hmc", "slice")
SETTINGS = dict(dataset="digits", target="high:0", sigma=0.05, chains=4, warmup=20, samples=20, seed=0, device="cpu",
                nuts_max_tree_depth=6, max_steps=64)


def _kernel(name: str):
    from bayestrex.kernels.chees import ChEES
    from bayestrex.kernels.hmc import BatchedHMC
    from bayestrex.kernels.pyro_nuts import PyroNUTS

    steps = SETTINGS["max_steps"]
    return dict(nuts=PyroNUTS(max_tree_depth=SETTINGS["nuts_max_tree_depth"]), chees=ChEES(max_steps=steps),
                hmc=BatchedHMC(max_steps=steps)).get(name, name)


def _run(vae, clf, kernel: str, threads: int) -> torch.Tensor:
    s = SETTINGS
    return bt.sample(vae.decoder, clf, s["target"], num_chains=s["chains"], num_samples=s["samples"],
                     warmup=s["warmup"], sigma=s["sigma"], kernel=_kernel(kernel), seed=s["seed"], progress=False,
                     threads=threads).z


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    same = torch.equal(a, b)
    differ = (a != b).flatten(2).any(-1).any(0)  # [draws]: some chain differs there
    return dict(identical=same, max_abs_diff=float((a - b).abs().max()),
                first_differing_draw=None if same else int(differ.nonzero()[0, 0]))


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    vae, clf = bt.nets.pretrained("digits", progress=False)
    rows = []
    for kernel in KERNELS:
        t = time.perf_counter()
        one, again, two = _run(vae, clf, kernel, 1), _run(vae, clf, kernel, 1), _run(vae, clf, kernel, 2)
        same, other = _compare(one, again), _compare(one, two)
        rows.append(dict(kernel=kernel, same_threads_identical=same["identical"],
                         threads_1_vs_2_identical=other["identical"], threads_1_vs_2_max_abs_diff=other["max_abs_diff"],
                         threads_1_vs_2_first_differing_draw=other["first_differing_draw"],
                         seconds=round(time.perf_counter() - t, 1)))
        print(rows[-1], flush=True)
        if argv:  # after each kernel: a long run keeps what it measured
            write_json(dict(settings=dict(SETTINGS, torch=torch.__version__,
                                          command="python -m analyses.thread_reproducibility " + " ".join(argv)),
                            rows=rows), argv[0])
    return rows


if __name__ == "__main__":
    main()
