"""Sweeps: the grid, the folder and its index, resuming, failures, and the same table from every backend; a worker
killed mid-run loses only its run (local processes and a local Ray instance)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import bayestrex as bt
from bayestrex.cli import main
from bayestrex.sweeps import Sweep, load_spec, sweep

TINY = dict(chains=2, samples=12, warmup=12, max_steps=16, optimize_steps=5)


def _spec(targets, seeds=(0,), **settings):
    return dict(name="t", settings={**TINY, **settings}, grid=[dict(target=list(targets), seed=list(seeds))])


def test_the_spec_is_a_product_per_grid_with_settings_as_defaults():
    name, runs = load_spec(dict(name="g", settings=dict(chains=3, sigma=0.1),
                                grid=[dict(target=["high:0", "high:1"], seed=[0, 1, 2]),
                                      dict(target="uniform", sigma=[0.05, 0.2], kernel="hmc")]))
    assert name == "g" and len(runs) == 2 * 3 + 2
    assert {(r.target, r.seed, r.sigma) for r in runs[:6]} == {(t, s, 0.1) for t in ("high:0", "high:1")
                                                                for s in (0, 1, 2)}
    assert [(r.kernel, r.sigma, r.chains) for r in runs[6:]] == [("hmc", 0.05, 3), ("hmc", 0.2, 3)]
    assert runs[0].dataset == "digits" and runs[0].generator == "vae" and runs[0].cpus == 1.0
    assert len({r.id for r in runs}) == len(runs)  # one file each
    assert load_spec(dict(grid=[dict(target=["high:0", "high:0"])]))[1] == [runs[0].__class__(
        **{**runs[0].__dict__, "chains": 16, "sigma": 0.05, "seed": 0})]  # duplicates collapse


@pytest.mark.parametrize("spec, message", [
    (dict(grid=[dict(target="high:0", chains=4)]), "unknown keys ['chains']"),
    (dict(settings=dict(chain=4), grid=[dict(target="high:0")]), "unknown keys ['chain']"),
    (dict(grid=[dict(seed=[0, 1])]), "every grid needs a target"),
    (dict(grid=[dict(target="nonsense:1")]), "nonsense"),
    (dict(grid=[dict(target="high:0", kernel="magic")]), "kernel 'magic'"),
    (dict(grid=[dict(target="high:0", sigma=0)]), "sigma must be a positive number"),
    (dict(settings=dict(chains=0), grid=[dict(target="high:0")]), "chains must be a positive integer"),
    (dict(grids=[]), "unknown top-level keys ['grids']"),
])
def test_bad_specs_name_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(spec)


def test_a_serial_sweep_writes_one_file_per_run_resumes_and_retries_failures_only_when_asked(tmp_path):
    spec = _spec(["high:0", "high:12"], seeds=[0, 1])  # high:12: the classifier has 10 classes, so it raises
    sw = sweep(spec, tmp_path / "s", backend="serial", progress=False)
    rows = sw.rows()
    assert [r["status"] for r in rows] == ["done", "done", "failed", "failed"]
    assert "class index 12 is out of range" in rows[2]["error"]
    assert len(sw.executed) == 4 and sorted(p.name for p in (tmp_path / "s" / "runs").iterdir()) == sorted(
        f"{r['id']}.nc" for r in rows[:2])
    for row in rows[:2]:  # the index holds the diagnostics of the file it points to
        r = bt.load(tmp_path / "s" / row["path"])
        o = bt.diagnostics.overview(r)
        assert (row["attainment"], row["max_r_hat"], row["grad_evals"]) == (o["attainment"], o["max_r_hat"],
                                                                             o["grad_evals"])
        assert r.info["dataset"] == "digits" and r.info["generator"] == "vae" and r.info["seed"] == row["seed"]
    assert sweep(spec, tmp_path / "s", backend="serial", progress=False).executed == []
    again = sweep(spec, tmp_path / "s", backend="serial", retry_failed=True, progress=False)
    assert sorted(again.executed) == sorted(r["id"] for r in rows[2:])
    # a run whose file was written but not indexed (the driver died in between) is taken from its file
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    index["runs"] = index["runs"][1:]
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    assert sweep(spec, tmp_path / "s", backend="serial", progress=False).executed == []
    assert Sweep.open(tmp_path / "s").table()["status"].tolist().count("done") == 2


def test_a_second_driver_is_kept_out_of_the_folder(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / ".lock").write_text(json.dumps(dict(host=os.uname().nodename, pid=os.getpid())))
    with pytest.raises(ValueError, match="another sweep driver"):
        sweep(_spec(["high:0"]), folder, backend="serial", progress=False)
    (folder / ".lock").write_text(json.dumps(dict(host=os.uname().nodename, pid=2 ** 22 + 1)))  # no such process
    assert len(sweep(_spec(["high:0"]), folder, backend="serial", progress=False).executed) == 1
    assert not (folder / ".lock").exists()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descendants(pattern: str) -> list[int]:
    """Processes started (directly or not) by this one whose command line contains ``pattern``."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if pattern not in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    continue
                up = int(p.name)
                for _ in range(5):  # Ray: driver -> raylet -> worker
                    up = _parent(up)
                    if up == os.getpid():
                        out.append(int(p.name))
                        break
                    if up <= 1:
                        break
            except (OSError, ValueError, IndexError):
                pass
    return out


def _kill_one_when(folder: Path, pattern: str, killed: list):
    """In a thread: once the sweep has finished one run (workers are warm), SIGKILL one of this test's workers that
    is running a task."""
    def go():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                done = sum(r["status"] == "done" for r in json.loads((folder / "index.json").read_text())["runs"])
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= 1:
                time.sleep(1.0)  # the worker that just finished has its next run by now (runs take seconds)
            pids = _descendants(pattern)
            if done >= 1 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


SPEC6 = _spec(["high:0", "high:1", "ambiguous:3,8"], seeds=[0, 1], samples=30, warmup=30)
SPEC4 = _spec(["high:0", "high:1"], seeds=[0, 1], samples=20, warmup=20)


@pytest.mark.slow  # ~40 s here: three worker processes start (each imports torch)
def test_local_processes_give_the_serial_table_and_a_killed_worker_loses_only_its_run(tmp_path):
    serial = sweep(SPEC6, tmp_path / "serial", backend="serial", progress=False).table()
    killed: list = []
    t = _kill_one_when(tmp_path / "pool", "spawn_main", killed)
    first = sweep(SPEC6, tmp_path / "pool", backend="process", workers=2, progress=False)
    t.join(timeout=5)
    status = [r["status"] for r in first.rows()]
    assert killed and status.count("lost") == 1 and status.count("done") == 5, first.rows()
    lost = next(r for r in first.rows() if r["status"] == "lost")
    assert "worker process died" in lost["error"]
    second = sweep(SPEC6, tmp_path / "pool", backend="process", workers=2, progress=False)
    assert second.executed == [lost["id"]]  # only the lost run
    assert second.table().equals(serial)  # same seeds, same table


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bayestrex[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_table_and_a_killed_worker_loses_only_its_run(tmp_path, local_ray):
    serial = sweep(SPEC4, tmp_path / "serial", backend="serial", progress=False).table()
    killed: list = []
    t = _kill_one_when(tmp_path / "ray", "ray::bayestrex:", killed)  # a worker's title while it runs our task
    first = sweep(SPEC4, tmp_path / "ray", backend="ray", progress=False)
    t.join(timeout=5)
    status = [r["status"] for r in first.rows()]
    assert killed and status.count("lost") == 1 and status.count("done") == 3, first.rows()
    lost = next(r for r in first.rows() if r["status"] == "lost")
    assert "Worker" in lost["error"] or "died" in lost["error"], lost["error"]
    second = sweep(SPEC4, tmp_path / "ray", backend="ray", progress=False)
    assert second.executed == [lost["id"]]
    assert second.table().equals(serial)
    workers = {r["worker"] for r in second.rows()}
    assert len(workers) >= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)  # ran in Ray's workers


def test_the_sweep_command_reads_toml_prints_the_table_and_writes_a_report(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "cli"\n[settings]\nchains = 2\nsamples = 10\nwarmup = 10\nmax_steps = 16\n'
                    'optimize_steps = 5\n[[grid]]\ntarget = ["high:0", "high:1"]\n')
    out = tmp_path / "sw"
    assert main(["sweep", str(spec), "--out", str(out), "--backend", "serial", "--report", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| key | dataset |" in printed and "2 of 2 runs done (2 run now)" in printed
    assert {"index.json", "index.md", "table.md", "table.json", "report.html", "spec.json"} <= {
        p.name for p in out.iterdir()}
    page = (out / "report.html").read_text()
    assert page.count('<section id="run-') == 2 and 'class="sortable index"' in page and "data:image/png" in page
    assert main(["sweep", str(spec), "--out", str(out), "--backend", "serial", "--quiet"]) == 0
    assert "(0 run now)" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "no sweep spec" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--backend", "process", "--address", "auto"]) == 2
    assert "address is for the ray backend only" in capsys.readouterr().err
