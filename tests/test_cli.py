import json
import subprocess
import sys

import pytest

import bayestrex as bt
from bayestrex.cli import main


@pytest.mark.parametrize("argv", [[], ["demo"], ["sample"], ["diagnose"], ["train"], ["xgems"], ["cdeepex"], ["sweep"],
                                  ["report"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: bayestrex" in capsys.readouterr().out


def test_sample_writes_result_figures_and_summary_then_diagnose_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "--target", "high:0", "--chains", "2", "--samples", "15", "--warmup", "15",
                 "--kernel", "nuts-plate", "--max-tree-depth", "5", "--out", str(out), "--quiet"])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"result.nc", "images.png", "statistics.png", "trace.png", "summary.md", "summary.json"} <= names
    for png in ["images.png", "statistics.png", "trace.png"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| target | kernel |" in printed and "u[p0]" in printed and "attainment" in printed

    r = bt.load(out / "result.nc")
    assert r.z.shape == (2, 15, 5) and r.target_spec == "high:0"
    assert main(["diagnose", str(out / "result.nc")]) == 0
    printed = capsys.readouterr().out
    assert "Result(target='high:0'" in printed and "r_hat" in printed


def test_bad_target_gives_one_clear_error(tmp_path, capsys):
    code = main(["sample", "--target", "high:12", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "class index 12 is out of range for a classifier with 10 classes" in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "bayestrex.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "diagnose" in out.stdout


@pytest.mark.parametrize("kernel", ["hmc", "chees"])
def test_sample_with_a_batched_kernel_and_its_step_cap(kernel, tmp_path):
    out = tmp_path / kernel
    code = main(["sample", "--target", "high:0", "--chains", "4", "--samples", "10", "--warmup", "10",
                 "--kernel", kernel, "--max-steps", "8", "--out", str(out), "--quiet"])
    assert code == 0
    r = bt.load(out / "result.nc")
    assert r.info["kernel"] == kernel and r.z.shape == (4, 10, 5)
    assert int(r.stats["n_steps"].max()) <= 8


def test_unknown_kernel_names_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse refuses it, naming the registered kernels
        main(["sample", "--target", "high:0", "--kernel", "nutz", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    from bayestrex.kernels import KERNELS

    choices = ", ".join(f"'{k}'" for k in sorted(KERNELS))
    assert f"--kernel: invalid choice: 'nutz' (choose from {choices})" in err


def test_demo_samples_targets_in_parallel_processes(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--targets", "high:0", "graded:1,7,0.3", "--chains", "2", "--samples", "5", "--warmup", "5",
                 "--max-steps", "4", "--jobs", "2", "--out", str(out), "--quiet"])
    assert code == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [r["target"] for r in rows] == ["high:0", "graded:1,7,0.3"] and {r["kernel"] for r in rows} == {"chees"}
    for slug in ("high_0", "graded_1_7_0.3"):
        for kind in ("images", "statistics", "trace"):
            assert (out / f"{slug}-{kind}.png").read_bytes()[:4] == b"\x89PNG"
        assert bt.load(out / f"{slug}-result.nc").z.shape == (2, 5, 5)
    assert "| high:0 | chees |" in capsys.readouterr().out
    page = (out / "report.html").read_text()  # one page with both targets, their draws decoded
    assert page.count('<section id="run-') == 2 and '<a href="#run-1">graded:1,7,0.3</a>' in page
    assert page.count("data:image/png") == 2 * 3 + 2 and "no images" not in page


def test_train_reads_a_data_root_and_reports_missing_data(tmp_path, monkeypatch, capsys):
    from test_idx_data import _write_dataset

    from bayestrex import nets

    root = _write_dataset(tmp_path / "idx", n_train=100, n_test=30)
    monkeypatch.setitem(nets.RECIPES, "mnist", dict(cnn=dict(arch=dict(pool_between=True), epochs=2, batch_size=50)))
    code = main(["train", "--dataset", "mnist", "--models", "classifier-split", "--data-root", str(root),
                 "--weights-dir", str(tmp_path / "w"), "--quiet"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["classifier-split"]["train_examples"] == 50  # the 5 classifier classes of 10 equal classes
    assert (tmp_path / "w" / "mnist" / "classifier-split.pt").is_file()
    code = main(["train", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "nowhere"),
                 "--weights-dir", str(tmp_path / "w"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "fashion-mnist: folder" in err and "dataset-fashion-mnist" in err


def test_xgems_and_cdeepex_commands_write_their_figures_and_numbers(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["xgems", "--index", "3", "--target", "3", "--out", str(out), "--quiet"]) == 0
    numbers = json.loads((out / "xgems.json").read_text())
    assert numbers["target"] == 3 and numbers["switched"] and numbers["probs_at_xgem"][3] >= 0.4
    assert (out / "xgems-path.png").read_bytes()[:4] == b"\x89PNG"
    # the augmented Lagrangian needs 100-115 outer iterations here, depending on the CPU's floating-point kernels
    assert main(["cdeepex", "--index", "3", "--probe", "3", "--outer", "200", "--out", str(out), "--quiet"]) == 0
    numbers = json.loads((out / "cdeepex.json").read_text())
    p = numbers["probs_at_boundary"]
    assert numbers["converged"] and abs(p[numbers["true"]] - p[3]) < 0.05
    assert numbers["most_probable_at_boundary"] in (numbers["true"], 3)
    assert {"cdeepex.png", "cdeepex-path.png"} <= {f.name for f in out.iterdir()}
    capsys.readouterr()
    assert main(["cdeepex", "--index", "100000", "--out", str(out), "--quiet"]) == 2
    assert "--index must be in [0, 359]" in capsys.readouterr().err
    assert main(["xgems", "--target", "12", "--out", str(out), "--quiet"]) == 2
    assert "--target must be a class index in [0, 9]" in capsys.readouterr().err
