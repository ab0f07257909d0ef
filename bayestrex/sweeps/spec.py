"""A sweep's spec: the grid's axes and settings, one ``Run`` per point, read from TOML or a dict."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from pathlib import Path

AXES = dict(dataset="digits", generator="vae", classifier="classifier", target=None, kernel="chees", sigma=0.05,
            seed=0)
#: the other settings of a run and their defaults: sampler sizes, the leapfrog cap (hmc, chees), the Adam steps that
#: polish the starting points (None: the library's default), torch threads, device ("cpu", "cuda" or "auto"), the
#: resources a Ray task asks for, and where the zoo's weights and data live
SETTINGS = dict(chains=16, samples=100, warmup=100, max_steps=None, optimize_steps=None, threads=1, device="cpu",
                cpus=None, gpus=0, weights_dir=None, data_root=None)
BACKENDS = ("process", "ray", "serial")


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
    from .. import kernels, targets

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


