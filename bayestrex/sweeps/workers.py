"""Where runs execute: one run (``execute``, in any process), and the backends that run many, each yielding
``(run, "done" | "failed" | "lost", result or error text, seconds)`` as runs finish."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import time

import torch

from .spec import Run

_MODELS: dict = {}  # (dataset, name, weights_dir, data_root) -> model: each worker process loads a model once


def _model(dataset: str, name: str, weights_dir=None, data_root=None):
    from .. import nets

    key = (dataset, name, weights_dir, data_root)
    if key not in _MODELS:
        _MODELS[key] = nets.get(dataset, name, directory=weights_dir, data_root=data_root, progress=False)
    return _MODELS[key]


def _kernel(name: str, max_steps: int | None):
    if max_steps is None:
        return name
    from ..kernels.chees import ChEES
    from ..kernels.hmc import BatchedHMC

    if name == "chees":
        return ChEES(max_steps=max_steps)
    if name == "hmc":
        return BatchedHMC(max_steps=max_steps)
    if name == "smc":
        from ..kernels.smc import SMC

        return SMC(max_leapfrog=max_steps)
    if name == "constrained":
        from ..kernels.constrained import Constrained

        return Constrained(max_steps=max_steps)
    raise ValueError(f"max_steps applies to the hmc, chees, smc and constrained kernels, not {name!r}")


def execute(run: Run):
    """Sample one run with the zoo's models (each loaded once per process) and return its
    :class:`~bayestrex.Result` (without the generator, so it travels light). Same run, same draws on CPU."""
    from .. import kernels
    from ..posterior import Posterior
    from ..sampling import sample

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
    from .. import nets

    dataset = dataset or result.info.get("dataset")
    name = name or result.info.get("generator")
    if not dataset or not name:
        return None
    path = nets.weights_dir(weights_dir) / dataset / f"{name}.pt"
    if not path.is_file():
        return None
    return _model(dataset, name, None if weights_dir is None else str(weights_dir)).generator


# -- backends ------------------------------------------------------------------------------------------------------
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
                try:
                    if not proc.is_alive():
                        raise BrokenPipeError
                    conn.send(todo[0])
                except (BrokenPipeError, OSError):  # it died while idle: nothing lost, start another
                    conn.close()
                    idle.append(start())
                    continue
                busy[conn] = (proc, todo.pop(0), time.perf_counter())
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
    """The Ray task (a module-level function, so workers import it and keep ``_MODELS`` between tasks):
    ``(result, seconds)``, timed in the worker (tasks wait in Ray's queue, which the driver's clock would count)."""
    t0 = time.perf_counter()
    result = execute(run)
    return result, time.perf_counter() - t0


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
                    out, seconds = ray.get(ref)
                    yield run, "done", out, seconds
                except RayTaskError as e:  # the run raised: its own error, recorded
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    yield run, "failed", f"{type(cause).__name__}: {cause}", time.perf_counter() - t0
                except ray.exceptions.RayError as e:  # a worker or node died: the run is lost, rerun next time
                    yield run, "lost", f"{type(e).__name__}: {str(e).splitlines()[0]}", time.perf_counter() - t0
    finally:
        if own:
            ray.shutdown()
