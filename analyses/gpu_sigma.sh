#!/usr/bin/env bash
# The second GPU call: sigma = 0.025 on ambiguous:3,8,smooth with two GPU processes only (the first call's 15
# processes time-sliced the card at 99% utilisation), the CPU NUTS reference beside them, and whether CUDA draws are
# bit-reproducible under torch.use_deterministic_algorithms.
#   bash analyses/gpu_sigma.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: gpu_sigma.sh OUT_DIR [SECONDS]}
BUDGET=${2:-330}
W=/tmp/gpu_sigma
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" MPLBACKEND=Agg
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
stage() {
  local name=$1; shift
  ( s=$(date +%s); timeout "$BUDGET" "$@" > "$W/$name.log" 2>&1; rc=$?
    echo "$name rc=$rc wall=$(( $(date +%s) - s ))s" >> "$W/stages.txt" ) &
}
T=ambiguous:3,8,smooth
for k in chees constrained; do
  stage "sigma-$k" "$PY" -m analyses.bench_sigma --targets $T --sigmas 0.025 --kernels "$k" --chains 1024 --warmup 60 \
    --samples 60 --threads 1 --device cuda --out "$W/bench/$k"
done
for seed in 0 1 2; do
  stage "nuts-$seed" "$PY" -m analyses.bench_sigma --targets $T --sigmas 0.025 --nuts-sigmas 0.025 --kernels nuts \
    --seed "$seed" --threads 1 --device cpu --out "$W/bench/nuts-$seed"
done
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
parts=$(for d in "$W"/bench/*/; do [ -f "$d/bench_sigma.json" ] && echo "$d"; done)
[ -n "$parts" ] && "$PY" -m analyses.bench_sigma --merge $parts --out "$W/bench/merged" > "$W/merge.log" 2>&1
cat "$W/stages.txt" "$W/deterministic.log"
tail -n 8 "$W/bench/merged/bench_sigma.md" 2>/dev/null
tar czf "$OUT/gpu_sigma.tgz" -C "$W" .
