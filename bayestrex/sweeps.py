"""Sweeps: a grid of runs over (dataset, generator, classifier, target, kernel, sigma, seed), each stored as its own
netCDF file under a sweep folder with an index table; resumable, on a local process pool or on Ray.

    sweep = bt.sweep("spec.toml", "sweeps/demo")            # or a dict; backend="process" (default) or "ray"
    sweep.table()                                           # one row per run: its key and diagnostics
    sweep.report("sweeps/demo/report.html")                 # one HTML file, a section per run

A spec (TOML or a dict)::

    name = "demo"
    [settings]                  # every run: sampler settings, and defaults for the grid's axes
    chains = 16
    samples = 100
    warmup = 100
    max_steps = 64              # hmc, chees
    [[grid]]                    # each grid: the product of its lists; the runs of all grids are concatenated
    target = ["high:0", "ambiguous:3,8"]
    sigma = [0.05, 0.1]
    seed = [0, 1]

Folder: ``runs/<id>.nc`` (one per run; ``id`` = readable key + hash of every setting), ``index.json`` and
``index.md`` (one row per run: key, status, error, diagnostics, path). A finished run is skipped when the sweep runs
again; a run that raised is recorded as ``failed`` with its error and rerun only with ``retry_failed=True``; a run
whose worker died (killed, out of memory, a lost node) is recorded as ``lost`` and rerun the next time. Workers load
each model once and return the result; only the driver writes files (one writer per file), and ``.lock`` keeps a
second driver out of the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import pickle
import socket
import sys
import time
from pathlib import Path

import torch

from .io import atomic_path, markdown_table, write_json

__all__ = ["Run", "Sweep", "sweep", "load_spec", "to_toml", "execute", "generator_for", "AXES", "SETTINGS",
           "BACKENDS"]

#: the grid's axes and their defaults (``target`` has none)
AXES = dict(dataset="digits", generator="vae", classifier="classifier", target=None, kernel="chees", sigma=0.05,
            seed=0)
#: the other settings of a run and their defaults: sampler sizes, the leapfrog cap (hmc, chees), the Adam steps that
#: polish the starting points (None: the library's default), torch threads, device ("cpu", "cuda" or "auto"), the
#: resources a Ray task asks for, and where the zoo's weights and data live
SETTINGS = dict(chains=16, samples=100, warmup=100, max_steps=None, optimize_steps=None, threads=1, device="cpu",
                cpus=None, gpus=0, weights_dir=None, data_root=None)
BACKENDS = ("process", "ray", "serial")
#: the diagnostics columns of the merged table (deterministic for a seed: no wall time)
COLUMNS = ("attainment", "max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences", "failed_chains",
           "stuck_chains", "grad_evals")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: a point of the grid and the settings it is sampled with."""

    dataset: str
    generator: str
    classifier: str
    target: str
    kernel: str
    sigma: float
    seed: int
    chains: int
    samples: int
    warmup: int
    max_steps: int | None
    optimize_steps: int | None
    threads: int
    device: str
    cpus: float | None
    gpus: float
    weights_dir: str | None
    data_root: str | None

    @property
    def key(self) -> str:
        """``dataset generator classifier target kernel sigma=S seed=N``: what the tables show."""
        return (f"{self.dataset} {self.generator} {self.classifier} {self.target} {self.kernel} sigma={self.sigma:g} "
                f"seed={self.seed}")

    @property
    def id(self) -> str:
        """A file name: the key made safe, and a hash of every setting that changes the draws."""
        fields = dataclasses.asdict(self)
        for k in ("cpus", "gpus", "threads", "weights_dir", "data_root"):  # where it runs, not what it samples
            fields.pop(k)
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
        slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in
                       f"{self.dataset}-{self.generator}-{self.classifier}-{self.target}-{self.kernel}"
                       f"-s{self.sigma:g}-seed{self.seed}")
        return f"{slug}-{digest}"

    def axes(self) -> dict:
        return {k: getattr(self, k) for k in AXES}


# -- the spec ------------------------------------------------------------------------------------------------------
def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise FileNotFoundError(f"no sweep spec at {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"spec {path} is not valid TOML: {e}") from None


def load_spec(spec) -> tuple[str, list[Run]]:
    """``(name, runs)`` of a spec: a TOML file path or a dict (see the module docstring). Raises ``ValueError``
    naming the key or value that is wrong."""
    from . import kernels, targets

    name = "sweep"
    if isinstance(spec, (str, os.PathLike)):
        name = Path(spec).stem
        spec = _read_toml(Path(spec))
    if not isinstance(spec, dict):
        raise ValueError(f"spec must be a TOML file or a dict, got {type(spec).__name__}")
    unknown = set(spec) - {"name", "settings", "grid"}
    if unknown:
        raise ValueError(f"spec: unknown top-level keys {sorted(unknown)}; expected name, [settings] and [[grid]]")
    name = str(spec.get("name", name))
    settings = dict(spec.get("settings", {}))
    bad = set(settings) - set(AXES) - set(SETTINGS)
    if bad:
        raise ValueError(f"spec [settings]: unknown keys {sorted(bad)}; expected {sorted({**AXES, **SETTINGS})}")
    grids = spec.get("grid", [{}])
    grids = [grids] if isinstance(grids, dict) else list(grids)
    runs: list[Run] = []
    for g in grids:
        bad = set(g) - set(AXES)
        if bad:
            raise ValueError(f"spec [[grid]]: unknown keys {sorted(bad)}; a grid has the axes {list(AXES)} "
                             "(other settings go into [settings])")
        axes = {k: g.get(k, settings.get(k, default)) for k, default in AXES.items()}
        if axes["target"] is None:
            raise ValueError("spec: every grid needs a target (in [[grid]] or [settings])")
        lists = {k: v if isinstance(v, list) else [v] for k, v in axes.items()}
        for point in itertools.product(*lists.values()):
            runs.append(_make_run(dict(zip(lists, point)), settings))
    for run in runs:
        targets.parse(run.target)  # a bad target string fails here, before anything runs
        if run.kernel not in kernels.KERNELS:
            raise ValueError(f"spec: kernel {run.kernel!r} is not one of {sorted(kernels.KERNELS)}")
    unique = list(dict.fromkeys(runs))
    if not unique:
        raise ValueError("spec: the grid is empty")
    return name, unique


def to_toml(spec: dict) -> str:
    """A spec dict (strings, numbers, booleans and lists of them) as TOML that :func:`load_spec` reads back."""
    def value(v):
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(str(v))  # a TOML basic string is a JSON string

    lines = [f"name = {value(spec['name'])}"] if "name" in spec else []
    lines += ["", "[settings]"] + [f"{k} = {value(v)}" for k, v in spec.get("settings", {}).items() if v is not None]
    grids = spec.get("grid", [])
    for g in [grids] if isinstance(grids, dict) else grids:
        lines += ["", "[[grid]]"] + [f"{k} = {value(v)}" for k, v in g.items()]
    return "\n".join(lines) + "\n"


def _make_run(axes: dict, settings: dict) -> Run:
    values = {**SETTINGS, **{k: v for k, v in settings.items() if k in SETTINGS}, **axes}
    for k in ("chains", "samples", "warmup", "threads", "seed"):
        v = values[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k in ("warmup", "seed") else 1):
            raise ValueError(f"spec: {k} must be a {'non-negative' if k in ('warmup', 'seed') else 'positive'} "
                             f"integer, got {v!r}")
    for k in ("max_steps", "optimize_steps"):
        if values[k] is not None and (isinstance(values[k], bool) or not isinstance(values[k], int) or values[k] < 1):
            raise ValueError(f"spec: {k} must be a positive integer, got {values[k]!r}")
    if isinstance(values["sigma"], bool) or not isinstance(values["sigma"], (int, float)) or not values["sigma"] > 0:
        raise ValueError(f"spec: sigma must be a positive number, got {values['sigma']!r}")
    if values["device"] not in ("cpu", "cuda", "auto") and not str(values["device"]).startswith("cuda:"):
        raise ValueError(f"spec: device must be cpu, cuda, cuda:N or auto, got {values['device']!r}")
    for k in ("dataset", "generator", "classifier", "target", "kernel"):
        if not isinstance(values[k], str):
            raise ValueError(f"spec: {k} must be a string, got {values[k]!r}")
    values["sigma"] = float(values["sigma"])
    values["cpus"] = float(values["cpus"]) if values["cpus"] is not None else float(values["threads"])
    values["gpus"] = float(values["gpus"])
    return Run(**values)


# -- one run, in a worker ------------------------------------------------------------------------------------------
_MODELS: dict = {}  # (dataset, name, weights_dir, data_root) -> model: each worker process loads a model once


def _model(dataset: str, name: str, weights_dir=None, data_root=None):
    from . import nets

    key = (dataset, name, weights_dir, data_root)
    if key not in _MODELS:
        _MODELS[key] = nets.get(dataset, name, directory=weights_dir, data_root=data_root, progress=False)
    return _MODELS[key]


def _kernel(name: str, max_steps: int | None):
    if max_steps is None:
        return name
    from .kernels.chees import ChEES
    from .kernels.hmc import BatchedHMC

    if name == "chees":
        return ChEES(max_steps=max_steps)
    if name == "hmc":
        return BatchedHMC(max_steps=max_steps)
    raise ValueError(f"max_steps applies to the hmc and chees kernels, not {name!r}")  # a new kernel's cap: here


def execute(run: Run):
    """Sample one run with the zoo's models (each loaded once per process) and return its
    :class:`~bayestrex.Result` (without the generator, so it travels light). Same run, same draws on CPU."""
    from . import kernels
    from .posterior import Posterior
    from .sampling import sample

    torch.set_num_threads(run.threads)
    gen_model = _model(run.dataset, run.generator, run.weights_dir, run.data_root)
    clf = _model(run.dataset, run.classifier, run.weights_dir, run.data_root)
    device = run.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gen_model, clf = gen_model.to(device), clf.to(device)
    generator = gen_model.generator
    kernel = _kernel(run.kernel, run.max_steps)
    init = None
    if run.optimize_steps is not None and not getattr(kernels.get(kernel), "starts_from_prior", False):
        post = Posterior(generator, clf, run.target, sigma=run.sigma)
        init = post.initial_points(run.chains, seed=run.seed, optimize_steps=run.optimize_steps)
    result = sample(generator, clf, run.target, num_chains=run.chains, num_samples=run.samples, warmup=run.warmup,
                    sigma=run.sigma, kernel=kernel, seed=run.seed, progress=False,
                    init=init)
    result.info.update(dataset=run.dataset, generator=run.generator, classifier=run.classifier,
                       generator_sha256=gen_model.meta.get("sha256"), classifier_sha256=clf.meta.get("sha256"),
                       host=socket.gethostname(), pid=os.getpid())
    result.generator = None
    result._tree = None
    return result


def generator_for(result, *, dataset: str | None = None, name: str | None = None, weights_dir=None):
    """The zoo generator that decodes ``result``'s draws: ``dataset`` / ``name`` given, else those recorded in the
    result (sweep runs record them); None when neither names one or its weights are not on disk (nothing is trained
    to draw a report)."""
    from . import nets

    dataset = dataset or result.info.get("dataset")
    name = name or result.info.get("generator")
    if not dataset or not name:
        return None
    path = nets.weights_dir(weights_dir) / dataset / f"{name}.pt"
    if not path.is_file():
        return None
    return _model(dataset, name, None if weights_dir is None else str(weights_dir)).generator


# -- backends: each yields (run, "done" | "failed" | "lost", result or error text, seconds) as runs finish ----------
def _run_serial(runs):
    for run in runs:
        t0 = time.perf_counter()
        try:
            yield run, "done", execute(run), time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - recorded in the index, the sweep goes on
            yield run, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - t0


def _worker_loop(conn) -> None:
    """A process-pool worker: receive a run, send back ``(status, pickled result or error)``, until ``None``."""
    while True:
        run = conn.recv()
        if run is None:
            return
        try:
            conn.send(("done", pickle.dumps(execute(run))))
        except Exception as e:  # noqa: BLE001
            conn.send(("failed", f"{type(e).__name__}: {e}"))


def _run_pool(runs, workers: int):
    """Local processes (spawned), one run each at a time; a process that dies loses only its run, and is replaced."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    todo, busy = list(runs), {}  # busy: conn -> (process, run, start)

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        proc.start()
        child.close()
        return parent, proc

    idle = [start() for _ in range(min(workers, len(todo)))]
    try:
        while todo or busy:
            while idle and todo:
                conn, proc = idle.pop()
                run = todo.pop(0)
                conn.send(run)
                busy[conn] = (proc, run, time.perf_counter())
            wait(list(busy) + [p.sentinel for p, _, _ in busy.values()])
            for conn in list(busy):
                proc, run, t0 = busy[conn]
                message = None
                if conn.poll():  # a message, or the end of the pipe of a process that died
                    with contextlib.suppress(EOFError, OSError):
                        message = conn.recv()
                if message is not None:
                    del busy[conn]
                    idle.append((conn, proc))
                    status, payload = message
                    yield run, status, pickle.loads(payload) if status == "done" else payload, \
                        time.perf_counter() - t0
                elif not proc.is_alive():
                    del busy[conn]
                    conn.close()
                    yield run, "lost", f"worker process died (exit code {proc.exitcode})", time.perf_counter() - t0
                    if todo:
                        idle.append(start())
    finally:
        for conn, proc in idle + [(c, p) for c, (p, _, _) in busy.items()]:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def _execute_ray(run: Run):
    """The Ray task (a module-level function, so workers import it and keep ``_MODELS`` between tasks)."""
    return execute(run)


def _run_ray(runs, workers: int | None, address: str | None):
    try:
        import ray
        from ray.exceptions import RayTaskError
    except ImportError:
        raise ValueError("backend 'ray' needs Ray: pip install 'bayestrex[ray]'") from None

    own = not ray.is_initialized()
    if own:
        kwargs = dict(include_dashboard=False, log_to_driver=False)
        if address is None and workers is not None:
            kwargs["num_cpus"] = workers
        ray.init(address=address, **kwargs)
    try:
        task = ray.remote(_execute_ray)
        pending = {}
        for run in runs:
            ref = task.options(num_cpus=run.cpus, num_gpus=run.gpus, max_retries=0,
                               name=f"bayestrex:{run.id}").remote(run)
            pending[ref] = (run, time.perf_counter())
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                run, t0 = pending.pop(ref)
                try:
                    out = ray.get(ref)
                    yield run, "done", out, time.perf_counter() - t0
                except RayTaskError as e:  # the run raised: its own error, recorded
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    yield run, "failed", f"{type(cause).__name__}: {cause}", time.perf_counter() - t0
                except ray.exceptions.RayError as e:  # a worker or node died: the run is lost, rerun next time
                    yield run, "lost", f"{type(e).__name__}: {str(e).splitlines()[0]}", time.perf_counter() - t0
    finally:
        if own:
            ray.shutdown()


# -- the sweep folder ----------------------------------------------------------------------------------------------
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
        from .result import load

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
        from . import report

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
        from .diagnostics import overview

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
                from .result import load

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
    from . import nets

    for dataset, name, wd, root in dict.fromkeys((r.dataset, m, r.weights_dir, r.data_root) for r in runs
                                                 for m in (r.generator, r.classifier)):
        nets.get(dataset, name, directory=wd, data_root=root, progress=False)
