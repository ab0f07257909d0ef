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
# Each GPU process shares the card with up to 12 others: its ESS/s is a lower bound of what it gets alone.
# (The shared set-up moved into gpu_common.sh after the 2026-11-29 run; the commands are the ones that ran.)
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR [SECONDS]}
BUDGET=${2:-420}
W=/tmp/gpu_session
source "$(dirname "$0")/gpu_common.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv > "$W/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, xarray, arviz_base, pyro; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'xarray', xarray.__version__)" || exit 4
date -u +"start %FT%TZ"
( while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) \
  > "$W/utilization.txt" 2>&1 &
SMI=$!

stage device_check "$PY" -m analyses.device_check --device cuda --out "$W/device"
for ds in mnist fashion-mnist; do
  stage "$ds" "$PY" -m analyses.level_sets --dataset "$ds" --kernel smc --chains 512 --warmup 2 --samples 2 \
    --device auto --threads 1 --quiet --no-report --out "$W/studies"
done
for k in chees constrained; do
  for s in 0.05 0.025 0.0125 0.00625; do
    bench "sigma-$k-$s" --sigmas "$s" --kernels "$k" --chains 256 --device cuda
  done
  bench "sigma-$k-0.025-2048" --sigmas 0.025 --kernels "$k" --chains 2048 --device cuda
done
nuts_reference
wait $(jobs -p | grep -vx "$SMI")
kill "$SMI" 2>/dev/null
date -u +"end %FT%TZ"
merge_bench
cat "$W/stages.txt"
tail -n 40 "$W/bench/merged/bench_sigma.md" 2>/dev/null
tar czf "$OUT/gpu_session.tgz" -C "$W" . && ls -la "$OUT"
