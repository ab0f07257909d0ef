"""The sweep folder: ``runs/<id>.nc``, the index, the lock; ``sweep()`` (what is left to run, on which backend) and
``Sweep`` (the table, the results, the report)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..io import atomic_path, markdown_table, write_json
from .spec import AXES, BACKENDS, Run, load_spec
from .workers import _run_pool, _run_ray, _run_serial, generator_for

#: the diagnostics columns of the merged table (deterministic for a seed: no wall time)
COLUMNS = ("attainment", "max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences", "failed_chains",
           "stuck_chains", "grad_evals")

@contextlib.contextmanager
def _lock(folder: Path):
    """One driver per folder: ``.lock`` holds the driver's host and pid; a lock left by a dead process is taken."""
    path = folder / ".lock"
    me = dict(host=socket.gethostname(), pid=os.getpid())
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                other = {}
            alive = other.get("host") == me["host"] and _alive(int(other.get("pid", -1)))
            if alive or other.get("host") not in (None, me["host"]):
                raise ValueError(f"another sweep driver ({other.get('host')}, pid {other.get('pid')}) is writing "
                                 f"{folder}; wait for it, or remove {path} if it is gone") from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Sweep:
    """A sweep folder and the runs of one spec: ``table()``, ``results()``, ``report(path)``. ``executed`` lists the
    ids of the runs that the last :func:`sweep` call ran (empty when everything was done already)."""

    def __init__(self, folder, runs: list[Run], name: str = "sweep"):
        self.folder, self.runs, self.name = Path(folder), list(runs), name
        self.executed: list[str] = []

    @classmethod
    def open(cls, folder) -> Sweep:
        """Every run recorded in ``folder``'s index."""
        folder = Path(folder)
        index = _read_index(folder)
        if not index and not (folder / "index.json").is_file():
            raise FileNotFoundError(f"{folder} is not a sweep folder (no index.json)")
        meta = _read_json(folder / "spec.json") or {}
        return cls(folder, [Run(**row["run"]) for row in index.values()], meta.get("name", folder.name))

    def index(self) -> dict[str, dict]:
        """The index as stored: run id -> row."""
        return _read_index(self.folder)

    def rows(self) -> list[dict]:
        """One row per run of this sweep, in spec order (``status`` ``pending`` for runs never started)."""
        index = self.index()
        return [index.get(r.id) or _row(r, "pending") for r in self.runs]

    def table(self, *, seconds: bool = False):
        """The merged table (pandas): per run its axes, status and diagnostics (``seconds`` adds wall time, which
        differs between machines and backends; the rest is the same for the same seeds)."""
        import pandas as pd

        cols = ["key", *AXES, "status", "error", *COLUMNS] + (["seconds"] if seconds else [])
        return pd.DataFrame([{c: row.get(c) for c in cols} for row in self.rows()], columns=cols)

    def results(self) -> list[tuple[dict, object]]:
        """``(row, Result)`` of every finished run, read from its file."""
        from ..result import load

        return [(row, load(self.folder / row["path"])) for row in self.rows() if row["status"] == "done"]

    def write_table(self) -> str:
        """Write ``table.md`` and ``table.json`` (the merged table without wall time); return the markdown."""
        rows = self.table().to_dict("records")
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
        md = markdown_table(rows)
        with atomic_path(self.folder / "table.md") as tmp:
            tmp.write_text(md + "\n")
        write_json(rows, self.folder / "table.json")
        return md

    def report(self, path=None, *, generators=None, weights_dir=None) -> Path:
        """One HTML report of the finished runs (default ``<folder>/report.html``). Images are decoded with
        ``generators`` (one callable, or one per finished run), else with the zoo generator each run names when
        its weights are on disk."""
        from .. import report

        done = self.results()
        if not done:
            raise ValueError(f"no finished runs in {self.folder} to report")
        if generators is None:
            generators = [generator_for(r, weights_dir=weights_dir) for _, r in done]
        varying = [k for k in AXES if len({row[k] for row, _ in done}) > 1]
        fixed = {k: done[0][0][k] for k in AXES if k not in varying}
        title = f"sweep {self.name}: {len(done)} runs" + (
            " (" + ", ".join(f"{k} {v}" for k, v in fixed.items() if k != "target") + ")" if fixed else "")
        return report.write([r for _, r in done], path or self.folder / "report.html", generators=generators,
                            names=[row["key"] for row, _ in done],
                            extra=[{k: row[k] for k in varying} for row, _ in done], title=title)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _read_index(folder: Path) -> dict[str, dict]:
    data = _read_json(folder / "index.json")
    return {} if data is None else {row["id"]: row for row in data["runs"]}


def _write_index(folder: Path, index: dict[str, dict], runs: list[Run]) -> None:
    """Rows of this spec's runs in its order, then any other runs recorded in the folder."""
    order = [r.id for r in runs if r.id in index] + [i for i in index if i not in {r.id for r in runs}]
    index = {i: index[i] for i in order}
    write_json({"runs": list(index.values())}, folder / "index.json")
    cols = ["key", "status", "attainment", "max_r_hat", "min_ess_bulk", "divergences", "seconds", "path", "error"]
    with atomic_path(folder / "index.md") as tmp:
        tmp.write_text(markdown_table(list(index.values()), cols) + "\n")


def _row(run: Run, status: str, *, error: str | None = None, result=None, seconds: float | None = None) -> dict:
    row = dict(id=run.id, key=run.key, **run.axes(), status=status, error=error,
               path=f"runs/{run.id}.nc" if status == "done" else None,
               **{c: None for c in COLUMNS}, seconds=None if seconds is None else round(seconds, 2), worker=None,
               finished=time.strftime("%Y-%m-%dT%H:%M:%S"), run=dataclasses.asdict(run))
    if result is not None:
        from ..diagnostics import overview

        o = overview(result)
        row.update({c: o[c] for c in COLUMNS})
        row["worker"] = f"{result.info.get('host', '?')}:{result.info.get('pid', '?')}"
    return row


def sweep(spec, folder=None, *, backend: str = "process", workers: int | None = None, address: str | None = None,
          retry_failed: bool = False, progress: bool = True) -> Sweep:
    """Run every run of ``spec`` (a TOML path or a dict) not yet done in ``folder`` and return the :class:`Sweep`.

    ``backend``: ``"process"`` (local spawned processes, ``workers`` of them, default the CPU count), ``"ray"``
    (each run a Ray task asking for the spec's ``cpus``/``gpus``; ``address`` of a running cluster, else a local
    instance with ``workers`` CPUs; an already initialised Ray is used as it is) or ``"serial"`` (in this process).
    ``folder`` defaults to ``sweeps/<name>``. Finished runs are skipped; failed runs are rerun only with
    ``retry_failed``; lost runs (their worker died) are rerun. Only this process writes into ``folder``.
    """
    name, runs = load_spec(spec)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if address is not None and backend != "ray":
        raise ValueError("address is for the ray backend only")
    folder = Path(folder) if folder is not None else Path("sweeps") / name
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    result_sweep = Sweep(folder, runs, name)
    with _lock(folder):
        write_json(dict(name=name, runs=[dataclasses.asdict(r) for r in runs]), folder / "spec.json")
        index = _read_index(folder)
        todo = []
        for run in runs:
            row, path = index.get(run.id), folder / "runs" / f"{run.id}.nc"
            if row is not None and row["status"] == "done" and path.is_file():
                continue
            if (row is None or row["status"] != "done") and path.is_file():  # written, but the index was not
                from ..result import load

                with contextlib.suppress(ValueError, OSError):
                    index[run.id] = _row(run, "done", result=load(path))
                    continue
            if row is not None and row["status"] == "failed" and not retry_failed:
                continue
            todo.append(run)
        _write_index(folder, index, runs)
        if todo:
            _prepare_models(todo)
        if backend == "serial":
            finished = _run_serial(todo)
        elif backend == "process":
            finished = _run_pool(todo, workers or os.cpu_count() or 1)
        else:
            finished = _run_ray(todo, workers, address)
        for k, (run, status, out, seconds) in enumerate(finished, 1):
            if status == "done":
                out.save(folder / "runs" / f"{run.id}.nc")
                index[run.id] = row = _row(run, "done", result=out, seconds=seconds)
                brief = f"attainment {row['attainment']:.3f}, max R-hat {row['max_r_hat']:.3f}"
            else:
                index[run.id] = _row(run, status, error=out, seconds=seconds)
                brief = out
            result_sweep.executed.append(run.id)
            _write_index(folder, index, runs)
            if progress:
                print(f"[{k}/{len(todo)}] {status:6} {run.key} ({seconds:.1f} s): {brief}", file=sys.stderr,
                      flush=True)
    return result_sweep


def _prepare_models(runs: list[Run]) -> None:
    """Load (and, where missing, train once) every model the runs need, here, before any worker starts: a bad
    dataset or model name fails now, and workers never train the same model at once."""
    from .. import nets

    for dataset, name, wd, root in dict.fromkeys((r.dataset, m, r.weights_dir, r.data_root) for r in runs
                                                 for m in (r.generator, r.classifier)):
        nets.get(dataset, name, directory=wd, data_root=root, progress=False)
