#!/usr/bin/env bash
# The GPU session: every accelerator measurement of this project, side by side in one call of a lent machine.
#
#   bash analyses/gpu_session.sh OUT_DIR [SECONDS]      # SECONDS: the budget of each stage (default 420)
#
# Runs in parallel (the sampling is launch-bound: one CPU core drives each GPU process, so several share the card):
#   device_check      every kernel for a few iterations on cuda; potential and gradient, cuda against CPU
#   mnist, fashion    python -m analyses.level_sets --kernel smc --chains 512 --device auto (cuda there; issue 13's
#                     MNIST and Fashion-MNIST tables; the level-set masses against 10^6 prior draws, counted on the
#                     GPU). With "auto" in the sweep spec, runs a stopped stage did not reach can be finished on a CPU
#                     (same run ids; each result file records the device it ran on).
#   sigma-*           python -m analyses.bench_sigma on ambiguous:3,8,smooth: chees and constrained (256 chains) on
#                     cuda, one process per (kernel, sigma); 2048 chains at sigma 0.025
#   nuts-*            the single-chain Pyro NUTS reference on the same machine's CPU, seeds 0-2 (1 thread each)
# then merges the bench rows (x_nuts = ESS/s over the NUTS seeds' median) and packs everything into OUT_DIR.
# Needs the MNIST and Fashion-MNIST VAEs in models/ (bayestrex train --dataset mnist --models vae), the t10k IDX
# files under .devdata/ and the missing wheels under .whl/ (see the device tool's notes); nothing is downloaded.
# Each process shares the card with up to 15 others: its ESS/s is a lower bound of what it gets alone.
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR [SECONDS]}
BUDGET=${2:-420}
W=/tmp/gpu_session
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" MPLBACKEND=Agg
export BAYESTREX_MNIST="$PWD/.devdata/mnist" BAYESTREX_FASHION_MNIST="$PWD/.devdata/fashion-mnist"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv > "$W/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, xarray, arviz_base, pyro; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'xarray', xarray.__version__)" || exit 4
date -u +"start %FT%TZ"
( while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) \
  > "$W/utilization.txt" 2>&1 &
SMI=$!

stage() {  # stage NAME COMMAND...: run under the budget, log to $W/NAME.log, note the exit code and wall time
  local name=$1; shift
  ( s=$(date +%s); timeout "$BUDGET" "$@" > "$W/$name.log" 2>&1; rc=$?
    echo "$name rc=$rc wall=$(( $(date +%s) - s ))s" >> "$W/stages.txt" ) &
}

stage device_check "$PY" -m analyses.device_check --device cuda --out "$W/device"
for ds in mnist fashion-mnist; do
  stage "$ds" "$PY" -m analyses.level_sets --dataset "$ds" --kernel smc --chains 512 --warmup 2 --samples 2 \
    --device auto --threads 1 --quiet --no-report --out "$W/studies"
done
T=ambiguous:3,8,smooth
for k in chees constrained; do
  for s in 0.05 0.025 0.0125 0.00625; do
    stage "sigma-$k-$s" "$PY" -m analyses.bench_sigma --targets $T --sigmas "$s" --kernels "$k" --chains 256 \
      --threads 1 --device cuda --out "$W/bench/$k-$s"
  done
  stage "sigma-$k-0.025-2048" "$PY" -m analyses.bench_sigma --targets $T --sigmas 0.025 --kernels "$k" \
    --chains 2048 --threads 1 --device cuda --out "$W/bench/$k-0.025-2048"
done
for seed in 0 1 2; do
  stage "nuts-$seed" "$PY" -m analyses.bench_sigma --targets $T --sigmas 0.025 --nuts-sigmas 0.025 --kernels nuts \
    --seed "$seed" --threads 1 --device cpu --out "$W/bench/nuts-$seed"
done
wait $(jobs -p | grep -vx "$SMI")
kill "$SMI" 2>/dev/null
date -u +"end %FT%TZ"
parts=$(for d in "$W"/bench/*/; do [ -f "$d/bench_sigma.json" ] && echo "$d"; done)
[ -n "$parts" ] && "$PY" -m analyses.bench_sigma --merge $parts --out "$W/bench/merged" > "$W/merge.log" 2>&1
cat "$W/stages.txt"
tail -n 40 "$W/bench/merged/bench_sigma.md" 2>/dev/null
tar czf "$OUT/gpu_session.tgz" -C "$W" . && ls -la "$OUT"
