"""Sweeps measured: the same 24-run spec on local processes and on a local Ray instance (are the tables identical?),
and a study's wall time with 1 and 2 workers.

    python -m analyses.sweep_bench backends            # examples/sweep-24.toml, 2 processes vs Ray with 2 CPUs
    python -m analyses.sweep_bench scaling             # the digits level-set study, --workers 1 vs 2

Writes ``backends.json`` / ``scaling.json`` (and ``.md``) into ``--out`` (default ``analyses/results/sweeps``),
with the machine's load averages before and after each timing (other work on the machine slows the 2-worker run
most).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analyses._studies import RESULTS
from bayestrex.io import atomic_path, markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _write(out: Path, name: str, data: dict, rows: list[dict]) -> str:
    write_json(data, out / f"{name}.json")
    md = f"# {name}\n\n{data['how']}\n\n{markdown_table(rows)}\n"
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(md)
    return md


def backends(args) -> str:
    import bayestrex as bt

    spec = ROOT / "examples" / "sweep-24.toml"
    rows, tables = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("process", "ray"):
            before, t0 = load(), time.perf_counter()
            sw = bt.sweep(spec, Path(tmp) / backend, backend=backend, workers=args.workers, progress=not args.quiet)
            seconds = time.perf_counter() - t0
            tables[backend] = sw.table()
            done = int((tables[backend]["status"] == "done").sum())
            rows.append(dict(backend=backend, workers=args.workers, runs=len(sw.runs), done=done,
                             wall_s=round(seconds, 1), run_seconds_sum=round(float(sw.table(seconds=True)["seconds"]
                                                                                    .sum()), 1),
                             load_before=before, load_after=load()))
        identical = bool(tables["process"].equals(tables["ray"]))
        if args.keep:
            shutil.copytree(Path(tmp) / "process", Path(args.keep), dirs_exist_ok=True)
    data = dict(how=f"`python -m analyses.sweep_bench backends --workers {args.workers}` on {os.cpu_count()} CPUs, "
                    f"{time.strftime('%Y-%m-%d %H:%M')}: examples/sweep-24.toml on local processes, then on a local "
                    f"Ray instance (ray.init(num_cpus={args.workers})); tables compared without wall time",
                identical_tables=identical, rows=rows,
                table=tables["process"].drop(columns=["error"]).to_dict("records"))
    return _write(Path(args.out), "backends", data, rows) + f"\nidentical tables: {identical}\n"


def scaling(args) -> str:
    import json

    rows, tables = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}"
            cmd = [sys.executable, "-m", "analyses.level_sets", "--dataset", args.dataset, "--threads", "1",
                   "--quiet", "--no-report", "--backend", "process", "--workers", str(workers), "--out", str(out),
                   "--chains", str(args.chains), "--warmup", str(args.warmup), "--samples", str(args.samples)]
            before, t0 = load(), time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            index = json.loads((out / args.dataset / "runs" / "index.json").read_text())["runs"]
            saved = json.loads((out / args.dataset / "level_sets.json").read_text())["tables"]
            tables.append({g: [{k: v for k, v in r.items() if k != "seconds"} for r in rs] for g, rs in saved.items()})
            rows.append(dict(study="level_sets", dataset=args.dataset, workers=workers, runs=len(index),
                             wall_s=round(seconds, 1), run_seconds_sum=round(sum(r["seconds"] for r in index), 1),
                             load_before=before, load_after=load()))
    for r in rows:
        r["speedup"] = round(rows[0]["wall_s"] / r["wall_s"], 2)
    data = dict(how=f"`python -m analyses.sweep_bench scaling --dataset {args.dataset}` on {os.cpu_count()} CPUs, "
                    f"{time.strftime('%Y-%m-%d %H:%M')}: `python -m analyses.level_sets --dataset {args.dataset} "
                    f"--threads 1 --backend process --workers N --chains {args.chains} --warmup {args.warmup} "
                    f"--samples {args.samples}` into an empty folder, N = 1 then 2 (chees capped at 64 leapfrog "
                    "steps); wall time includes start-up and the study's tables and figures",
                identical_tables=tables[0] == tables[1], rows=rows)
    return _write(Path(args.out), "scaling", data, rows) + f"\nidentical tables: {tables[0] == tables[1]}\n"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["backends", "scaling"])
    p.add_argument("--workers", type=int, default=2, help="backends: processes / Ray CPUs (default 2)")
    p.add_argument("--dataset", default="digits", help="scaling: the study's dataset (default digits)")
    p.add_argument("--chains", type=int, default=32, help="scaling: chains per run (the study's default 32)")
    p.add_argument("--warmup", type=int, default=100, help="scaling: warmup per chain (default 100)")
    p.add_argument("--samples", type=int, default=100, help="scaling: draws per chain (default 100)")
    p.add_argument("--out", default=str(RESULTS / "sweeps"))
    p.add_argument("--keep", default=None, help="backends: copy the process sweep folder here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    md = backends(args) if args.part == "backends" else scaling(args)
    print(md)
    return md


if __name__ == "__main__":
    main(sys.argv[1:])
