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

from .folder import COLUMNS, Sweep, sweep
from .spec import AXES, BACKENDS, SETTINGS, Run, load_spec, to_toml
from .workers import _execute_ray, execute, generator_for  # noqa: F401 - _execute_ray: the Ray task, by name

__all__ = ["Run", "Sweep", "sweep", "load_spec", "to_toml", "execute", "generator_for", "AXES", "SETTINGS",
           "BACKENDS", "COLUMNS"]
