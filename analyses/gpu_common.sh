# Sourced by analyses/gpu_session.sh and analyses/gpu_sigma.sh: the environment of a lent GPU machine, and `stage`.
# Expects OUT, BUDGET and W set; sets PY and installs the carried wheels (.whl/) into /tmp/site.
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" MPLBACKEND=Agg
export BAYESTREX_MNIST="$PWD/.devdata/mnist" BAYESTREX_FASHION_MNIST="$PWD/.devdata/fashion-mnist"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
fi

stage() {  # stage NAME COMMAND...: run in the background under the budget, log to $W/NAME.log, note rc and wall time
  local name=$1; shift
  ( s=$(date +%s); timeout "$BUDGET" "$@" > "$W/$name.log" 2>&1; rc=$?
    echo "$name rc=$rc wall=$(( $(date +%s) - s ))s" >> "$W/stages.txt" ) &
}

bench() {  # bench NAME ARGS...: a bench_sigma process on ambiguous:3,8,smooth (1 thread) into $W/bench/NAME
  local name=$1; shift
  stage "$name" "$PY" -m analyses.bench_sigma --targets ambiguous:3,8,smooth --threads 1 "$@" --out "$W/bench/$name"
}

nuts_reference() {  # the single-chain Pyro NUTS rows at sigma 0.025 on the CPU, seeds 0-2, beside the GPU processes
  for seed in 0 1 2; do
    bench "nuts-$seed" --sigmas 0.025 --nuts-sigmas 0.025 --kernels nuts --seed "$seed" --device cpu
  done
}

merge_bench() {  # one table of every finished bench folder, NUTS ratios over the seeds' median
  local parts
  parts=$(for d in "$W"/bench/*/; do [ -f "$d/bench_sigma.json" ] && echo "$d"; done)
  [ -n "$parts" ] && "$PY" -m analyses.bench_sigma --merge $parts --out "$W/bench/merged" > "$W/merge.log" 2>&1
}
