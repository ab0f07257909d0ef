"""Smoke runs of the analyses: the whole pipeline on tiny settings (the real runs are their own commands)."""

import importlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(name):
    """An analysis as the command ``python -m analyses.NAME`` runs it (the repository root is on the path)."""
    return importlib.import_module(f"analyses.{name}")


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
        # a kernel cannot beat its own gradients; the bare time is measured at another moment on shared cores (0.33
        # seen under load), so only a gradient count off by 10x fails here
        assert r["grad_evals_per_s"] > 0 and r["overhead"] > 0.1
        assert r["x_bulk"] == round(r["bulk_per_s"] / rows[0]["bulk_per_s"], 1)
    assert rows[0]["x_bulk"] == 1.0



def test_sigma_benchmark_rates_every_kernel_against_the_median_nuts_seed_and_merges_processes(tmp_path):
    bench = _module("bench_sigma")
    row = dict(target="t", sigma=0.025, bulk_per_s=1.0, tail_per_s=1.0, bulk_per_kgrad=1.0)
    nuts = [dict(row, kernel="nuts", seed=k, bulk_per_s=b, tail_per_s=t) for k, (b, t) in
            enumerate([(0.1, 0.4), (0.2, 0.1), (0.4, 0.2)])]
    other = [dict(row, kernel="chees", bulk_per_s=60.0, tail_per_s=30.0),
             dict(row, kernel="chees", sigma=0.05),  # no NUTS row at this sigma
             dict(target="t", sigma=0.025, kernel="constrained", refused="no level set")]  # a kernel that refused
    rows = bench.with_ratios(nuts + other)
    assert "x_nuts_bulk" not in rows[5]
    assert (rows[3]["x_nuts_bulk"], rows[3]["x_nuts_tail"]) == (300.0, 150.0)  # medians 0.2 and 0.2
    assert rows[4]["x_nuts_bulk"] is None and rows[0]["x_nuts_bulk"] == 0.5
    # two processes' folders (e.g. CPU NUTS beside GPU kernels) merge into one table with the ratios
    for name, part in (("a", nuts), ("b", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bench_sigma.json").write_text(json.dumps(dict(meta=dict(command=name), rows=part)))
    merged = bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert [r.get("x_nuts_bulk") for r in merged] == [0.5, 1.0, 2.0, 300.0, None, None]
    assert "refused" in (tmp_path / "m" / "bench_sigma.md").read_text()
    saved = json.loads((tmp_path / "m" / "bench_sigma.json").read_text())
    assert [p["command"] for p in saved["meta"]["parts"]] == ["a", "b"] and saved["rows"] == merged


def test_study_spec_names_the_device_only_when_it_is_not_the_cpu(tmp_path):
    studies = _module("_studies")
    for device, expected in (("cpu", None), ("auto", "auto"), ("cuda", "cuda")):
        args = studies.parser("x").parse_args(["--dataset", "digits", "--out", str(tmp_path), "--device", device])
        study = studies.Study("s", args)
        assert study.spec([("vae", "classifier", "high:0")])["settings"].get("device") == expected
    assert str(studies.Study("s", studies.parser("x").parse_args(["--device", "cpu"])).device) == "cpu"


def test_smc_study_row_of_a_single_run_has_no_agreement_verdict_rather_than_a_crash(tmp_path):
    import bayestrex as bt

    studies = _module("_studies")
    vae, clf = bt.nets.pretrained("digits", progress=False)
    result = bt.sample(vae.decoder, clf, "high:0", num_chains=4, num_samples=2, warmup=1, kernel="smc", seed=0,
                       progress=False)  # 4 particles: one run, so no between-run split to compare
    args = studies.parser("x").parse_args(["--dataset", "digits", "--kernel", "smc", "--out", str(tmp_path)])
    row = studies.Study("s", args).row(result)
    assert row["runs_agree"] is None and row["region_share_spread"] != row["region_share_spread"]  # nan
    assert row["mass"] >= 0 and row["stages"] >= 1


def test_roofline_counts_flops_by_hand_and_splits_the_speedup_into_its_factors(tmp_path, monkeypatch):
    import bayestrex as bt

    roof = _module("roofline")
    vae, clf = bt.nets.pretrained("digits", progress=False)
    post = bt.Posterior(vae.decoder, clf, "ambiguous:3,8", sigma=0.025)
    # multiply-adds of one forward pass: decoder 5-256-256-64, CNN conv 1->16 and 16->32 (3x3 on 8x8), fc 512-64-10
    macs = 5 * 256 + 256 * 256 + 256 * 64 + 64 * 16 * 9 + 64 * 32 * 16 * 9 + 512 * 64 + 64 * 10
    clf.net[0].weight.requires_grad_(True)  # counting must ignore parameter gradients and restore these flags
    flags = [p.requires_grad for p in clf.parameters()]
    assert roof.flops_per_chain(post) == 2 * 2 * macs  # 2 FLOPs a multiply-add; the input gradient costs a forward
    assert [p.requires_grad for p in clf.parameters()] == flags and clf.net[0].weight.grad is None

    def row(kernel, chains, ess, gps, wall):
        return dict(target="t", kernel=kernel, chains=chains, ess_bulk=ess, grad_evals_per_s=gps, wall_s=wall,
                    bulk_per_s=ess / wall)

    bench = dict(meta=dict(command="bench", date="d"),
                 rows=[row("nuts", 1, 10, 1000, 100), row("chees", 64, 1000, 20000, 100)])
    nuts, chees = roof.factors_table(bench)
    assert (nuts["x_grad_rate"], nuts["x_ess_per_grad"], nuts["x_bulk"]) == (1.0, 1.0, 1.0)
    # 20x the gradients per second, 0.5 vs 0.1 ESS per 1000 gradients: 5x; 100x the ESS per second
    assert (chees["x_grad_rate"], chees["bulk_ess_per_kgrad"], chees["x_ess_per_grad"], chees["x_bulk"]) == \
        (20.0, 0.5, 5.0, 100.0)

    (tmp_path / "bench.json").write_text(json.dumps(bench))
    out = roof.main(["--chains", "1", "4", "--threads", "1", "--repeats", "2", "--bench", str(tmp_path / "bench.json"),
                     "--out", str(tmp_path / "roof")])
    assert [r["chains"] for r in out["batch"]] == [1, 4] and all(r["gflops"] > 0 for r in out["batch"])
    assert [r["work"].split()[0] for r in out["peak"]] == ["matmul", "conv"]
    assert json.loads((tmp_path / "roof" / "roofline.json").read_text())["factors"] == out["factors"]
    md = (tmp_path / "roof" / "roofline.md").read_text()
    assert "| t | chees | 64 | 20000 | 20 | 0.5 | 5 | 100 |" in md


# -- the Bayes-TrEx studies, on digits with tiny zoo models trained into a temporary folder -----------------------
import pytest  # noqa: E402
import torch  # noqa: E402

from bayestrex import nets  # noqa: E402


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """Digits zoo models trained in seconds into tmp_path/weights; study modules importable as scripts."""
    monkeypatch.setitem(nets.RECIPES, "digits", dict(vae=dict(latent_dim=5, hidden=64, epochs=20, batch_size=128),
                                                      cnn=dict(epochs=8, batch_size=64),
                                                      gan=dict(latent_dim=5, hidden=32, epochs=1)))
    return ["--dataset", "digits", "--quick", "--quiet", "--threads", "1", "--no-report",
            "--weights-dir", str(tmp_path / "w"),
            "--out", str(tmp_path / "out")]


def _saved(tmp_path, name):
    return json.loads((tmp_path / "out" / "digits" / f"{name}.json").read_text())


def test_level_sets_study_smoke(tmp_path, tiny_zoo):
    study = _module("level_sets")
    tables = study.main([a for a in tiny_zoo if a != "--no-report"])
    groups = list(tables)
    assert [r["target"] for r in tables[groups[0]]] == ["high:0", "high:1"]
    assert len(tables[groups[1]]) == 1 and tables[groups[1]][0]["target"].startswith("ambiguous:")
    assert [r["target"].rsplit(",", 1)[1] for r in tables[groups[2]]] == ["0", "0.5", "1"]
    for rows in tables.values():
        for r in rows:
            assert 0 <= r["attainment"] <= 1 and r["failed_chains"] == 0
    saved = _saved(tmp_path, "level_sets")
    assert saved["settings"]["chains"] == 4 and saved["tables"]["high confidence"] == tables["high confidence"]
    for fig in ("high", "ambiguous", "graded", "graded-sweep"):
        assert (tmp_path / "out" / "digits" / f"level_sets-{fig}.png").stat().st_size > 1000
    # the runs are a sweep: one file each, an index, the spec beside the tables, and one report of them all
    out = tmp_path / "out" / "digits"
    index = json.loads((out / "runs" / "index.json").read_text())["runs"]
    assert [r["target"] for r in index] == [r["target"] for rows in tables.values() for r in rows]
    assert all(r["status"] == "done" and (out / "runs" / r["path"]).is_file() for r in index)
    assert [r["attainment"] for r in index] == [r["attainment"] for rows in tables.values() for r in rows]
    from bayestrex.sweeps import load_spec

    assert [r.target for r in load_spec(out / "level_sets-sweep.toml")[1]] == [r["target"] for r in index]
    assert (out / "level_sets-report.html").read_text().count('<section id="run-') == len(index)
    # run again (resumed, or after an interruption): nothing is sampled again
    args = _module("_studies").parser("again").parse_args(tiny_zoo)
    again = _module("_studies").Study("level_sets", args).prefetch([("vae", "classifier", r["target"]) for r in index])
    assert again.executed == [] and [r["status"] for r in again.rows()] == ["done"] * len(index)


def test_confused_pairs_counts_both_directions():
    study = _module("level_sets")

    class Fixed(torch.nn.Module):  # predicts the class stored in the first pixel
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 4).float() * 10

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    preds = torch.tensor([1, 0, 0, 1, 3, 2, 2, 2])  # 0<->1 confused twice, 2<->3 three times
    images = preds.float().view(-1, 1, 1, 1)
    assert study.confused_pairs(Fixed(), images, labels, k=2) == [(2, 3, 3), (0, 1, 2)]


def test_adversarial_study_smoke(tmp_path, tiny_zoo):
    rows = _module("adversarial").main(tiny_zoo + ["--classes", "3"])
    assert len(rows) == 1 and rows[0]["target"] == "high:3" and 0 <= rows[0]["frac_p_ge_0.9"] <= 1
    # the generator really is the one trained without 3
    meta = json.loads((tmp_path / "w" / "digits" / "vae-without-3.json").read_text())
    assert 3 not in meta["classes"] and len(meta["classes"]) == 9
    assert (tmp_path / "out" / "digits" / "adversarial-draws.png").is_file()


def test_novel_class_study_smoke(tmp_path, tiny_zoo):
    tables = _module("novel_class").main(tiny_zoo)
    test_rows, sample_rows, drawn_rows = tables.values()
    assert [r["novel class"] for r in test_rows] == ["2", "4", "5", "7", "8"]
    for r in test_rows:  # every novel test image is predicted as one of the 5 known classes
        assert sum(r[f"-> {k}"] for k in "01369") == pytest.approx(1, abs=0.01)
    assert sum(r["n"] for r in test_rows) == 179  # novel-class images in the digits test split
    assert sum(r["n"] for r in drawn_rows) == 2 * 4 * 10  # every draw of both targets, none dropped
    assert [r["target"] for r in sample_rows] == ["high:0", "high:1"]


def test_overconfidence_study_smoke(tmp_path, tiny_zoo):
    level, hist = _module("overconfidence").main(tiny_zoo).values()
    assert [r["level set"] for r in level][-1] == "uniform" and len(level) == 2
    for r in level:
        assert r["test images"] == 360 and 0 <= r["test in level set"] <= 360
        assert r["sampler attained draws"] <= 40 and r["sampler grad evals"] > 0
    for r in hist:
        assert sum(v for k, v in r.items() if k.startswith("max conf")) == pytest.approx(1, abs=1e-3)


def test_intrusion_study_smoke(tmp_path, tiny_zoo):
    out = _module("intrusion").main(tiny_zoo)
    methods = [r["method"].split(" ")[0] for r in out["table"]]
    assert methods == ["xGEMs", "boundary", "CDeepEx", "sampled"] and len(out["pairs"]) == 6
    for r in out["table"]:
        assert 0 <= r["intrusion"] <= 1
    for pair in out["pairs"]:  # probe = the runner-up, never the true class
        assert pair["true"] != pair["probe"] and 0 <= pair["sampled_intrusion"] <= 1
    n = len(out["pairs"])
    assert out["table"][2]["intrusion"] == round(sum(p["cdeepex_intrusion"] for p in out["pairs"]) / n, 3)


def test_bias_study_smoke(tmp_path, tiny_zoo):
    bias = _module("bias")
    x = torch.zeros(4, 1, 28, 28)
    marked = bias.add_square(x, torch.tensor([True, False, True, False]))
    assert bias.has_square(marked).tolist() == [True, False, True, False]
    assert marked[0, 0, 1:7, 1:7].eq(0.5).all() and marked[0].sum() == 36 * 0.5  # 6x6 grey, one pixel in
    out = bias.main(tiny_zoo)
    assert [a["classifier"] for a in out["accuracy"]] == ["biased", "unbiased"]
    assert out["oracle"]["squared_detected"] == 1.0
    assert [r["class"] for r in out["rows"]] == list(range(10)) + ["all"]
    total = out["rows"][-1]
    assert total["biased: xgems"] == sum(r["biased: xgems"] for r in out["rows"][:-1])


def test_manifolds_study_smoke(tmp_path, tiny_zoo):
    rows = _module("manifolds").main(tiny_zoo)["rows"]
    assert [r["classifier"] for r in rows] == ["MLP", "CNN"] and all(r["walks"] == 12 for r in rows)
    assert (tmp_path / "out" / "digits" / "manifolds-hist2d.png").is_file()


def test_scene_study_smoke(tmp_path, monkeypatch):
    out = _module("scenes").main(["--quick", "--quiet", "--threads", "1", "--out", str(tmp_path)])
    assert out["counter"][0]["classes"] == "0..5 circles"
    assert [r["study"].split(" ")[0] for r in out["rows"]] == ["no", "ambiguous"]
    for r in out["rows"]:
        assert r["evaluations"] == 4 * 40 + 4096 and 0 <= r["hits"] <= 80
        assert r["hits per 1000 evals"] == round(1000 * r["hits"] / r["evaluations"], 2)
    # the first study's prior has no circles at all: every draw's true count is 0
    assert out["rows"][0]["true circle counts in draws"] == "0:80"
    assert (tmp_path / "scenes-draws.png").is_file() and (tmp_path / "scenes.json").is_file()


def test_tabular_study_smoke(tmp_path, monkeypatch):
    out = _module("tabular").main(["--quick", "--quiet", "--out", str(tmp_path)])
    assert out["models"][0]["test_accuracy"] > 0.85
    assert [r["target"] for r in out["rows"]] == ["high:0", "ambiguous:1,2"]
    assert all(r["forest_calls"] > 4 * 40 for r in out["rows"])  # slice evaluates the forest at least once a draw
    shown = [e for e in out["examples"] if e["target"] == "high:0"]
    assert all(float(e["forest p"].split("/")[0]) >= 0.95 for e in shown)


def test_exemplars_study_smoke(tmp_path, tiny_zoo):
    rows = _module("exemplars").main(tiny_zoo)["rows"]
    assert [r["class"] for r in rows] == ["0", "1"]
    for r in rows:
        reached = int(r["ES reached"].split("/")[0])
        assert r["ES forward passes (median)"] is None or (reached and r["ES forward passes (median)"] % 40 == 10)


def test_readme_quick_start_is_the_timed_code_and_its_figures_are_recorded():
    quick = _module("quickstart")
    code = quick.quick_start_code()
    compile(code, "README quick start", "exec")  # valid python, as written
    assert "bt.sample(" in code and "kernel=ChEES(max_steps=32)" in code
    timing = json.loads((ROOT / "analyses/results/quickstart/timing.json").read_text())
    assert timing["under_a_minute_of_cpu"] and timing["cpu_seconds"] < 60
    readme = (ROOT / "README.md").read_text()
    assert f"{round(timing['cpu_seconds'])} s of CPU time" in readme  # the README quotes the recorded run


def test_level_set_geometry_measures_a_circle_exactly():
    """On the circle |z| = R a tangent move of length l departs by sqrt(R² + l²) - R and turns the normal by
    atan(l / R): the finite differences of ``analyses.level_set_geometry`` must give both."""
    import math

    import torch

    from bayestrex.density import Density

    geo_mod = _module("level_set_geometry")
    R = 1.5
    dens = Density(latent_dim=2, residual=lambda z: z.norm(dim=-1) - R, sigma=0.05)
    angles = torch.linspace(0, 6, 5)
    z = R * torch.stack([angles.cos(), angles.sin()], -1)
    geo = geo_mod.geometry_at(dens, z, directions=2, rng=torch.Generator().manual_seed(0))
    for i, ell in enumerate(geo_mod.LENGTHS):
        assert torch.allclose(geo["departure"][..., i].double(), torch.tensor(math.hypot(R, ell) - R).double(),
                              rtol=1e-3, atol=1e-6)
        assert torch.allclose(geo["turn"][..., i], torch.tensor(math.atan(ell / R)).double(), rtol=1e-3, atol=2e-4)
    assert torch.allclose(geo["s"][:, 0], torch.ones(5).double())  # |grad |z|| = 1
    assert geo_mod._reach(geo["departure"].flatten(0, 1), 0.01) == 0.1  # 0.0033 at 0.1, 0.030 at 0.3


def test_projection_failures_are_told_apart_on_a_circle():
    """On the circle |z| = 1.5 (sigma = 0) a step whose tangent move is short returns exactly; one longer than the
    radius leaves the normal line at the start without a point on the circle: a forward failure, every time."""
    import torch

    from bayestrex.density import Density

    fail_mod = _module("projection_failures")
    dens = Density(latent_dim=2, residual=lambda z: z.norm(dim=-1, keepdim=True) - 1.5, sigma=0.0)
    angles = torch.linspace(0, 6, 8)
    z = 1.5 * torch.stack([angles.cos(), angles.sin()], -1)
    short = fail_mod.one_step_failures(dens, z, 0.05, momenta=4, seed=0)
    assert short["failed"] == 0 and short["newton"] >= 2 and short["abs_dH_p90"] < 0.01
    # |p| ~ 1 along the tangent; a move of 20 |p| > 1.5 has no root on the normal line (a few tiny momenta may find one)
    long = fail_mod.one_step_failures(dens, z, 20.0, momenta=4, seed=0)
    assert long["failed"] > 0.8 and long["forward"] == long["failed"], long
