"""Smoke runs of the analyses: the whole pipeline on tiny settings (the real runs are their own commands)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "analyses" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kernel_benchmark_quick_run_writes_its_table(tmp_path):
    bench = _module("bench_kernels")
    rows = bench.main(["--quick", "--targets", "high:0", "--out", str(tmp_path)])
    kernels = [(r["kernel"], r["chains"]) for r in rows]
    assert kernels == [("nuts", 1), ("nuts-plate", 4), ("hmc", 4), ("chees", 4), ("chees", 8)]
    saved = json.loads((tmp_path / "bench_kernels.json").read_text())
    assert saved["rows"] == rows and "1" in saved["meta"]["bare_forward_backward_ms"]
    md = (tmp_path / "bench_kernels.md").read_text()
    assert "| target | kernel | chains |" in md and md.count("| high:0 |") == 5
    for r in rows:
        assert r["draws"] == r["chains"] * 20 and r["wall_s"] > 0 and 0 <= r["attainment"] <= 1
        assert r["grad_evals_per_s"] > 0 and r["overhead"] > 0.5  # a kernel cannot beat its own gradients by 2x
        assert r["x_bulk"] == round(r["bulk_per_s"] / rows[0]["bulk_per_s"], 1)
    assert rows[0]["x_bulk"] == 1.0
