#!/usr/bin/env bash
# The second GPU call: sigma = 0.025 on ambiguous:3,8,smooth with two GPU processes only (the first call's 15
# processes time-sliced the card at 99% utilisation), the CPU NUTS reference beside them, and whether CUDA draws are
# bit-reproducible under torch.use_deterministic_algorithms.
#   bash analyses/gpu_sigma.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: gpu_sigma.sh OUT_DIR [SECONDS]}
BUDGET=${2:-330}
W=/tmp/gpu_sigma
source "$(dirname "$0")/gpu_common.sh"
for k in chees constrained; do
  bench "sigma-$k" --sigmas 0.025 --kernels "$k" --chains 1024 --warmup 60 --samples 60 --device cuda
done
nuts_reference
stage deterministic env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" -c "
import torch, bayestrex as bt
torch.use_deterministic_algorithms(True)
vae, clf = (m.to('cuda') for m in bt.nets.pretrained('digits', progress=False))
for k in ('chees', 'mh', 'smc'):
    try:
        r = [bt.sample(vae.decoder, clf, 'high:0', num_chains=8, num_samples=10, warmup=10, kernel=k, seed=3,
                       progress=False).z for _ in range(2)]
        print(k, 'same draws under deterministic algorithms:', bool(torch.equal(*r)), flush=True)
    except Exception as e:
        print(k, 'error:', type(e).__name__, str(e)[:300], flush=True)
"
wait
merge_bench
cat "$W/stages.txt" "$W/deterministic.log"
tail -n 8 "$W/bench/merged/bench_sigma.md" 2>/dev/null
tar czf "$OUT/gpu_sigma.tgz" -C "$W" .
