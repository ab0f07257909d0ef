"""``Result``: the draws, their probabilities and statistics, the sampler's per-draw statistics, and the target.

The draws are CPU tensors ``[chains, draws, ...]``; ``to_datatree()`` builds the ArviZ container once (groups
``posterior``, ``sample_stats``, ``log_likelihood``, ``constant_data``, and any the kernel adds, such as ``smc``)
and every diagnostic reads that (:mod:`bayestrex.diagnostics`). ``save``/``load`` round-trip it through netCDF.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch

from . import diagnostics
from .io import atomic_path
from .targets import Target, parse

__all__ = ["Result", "load"]


class Result:
    """Posterior draws for one target. Build it with :func:`bayestrex.sample` or :func:`bayestrex.load`.

    ``target`` is the :class:`~bayestrex.targets.Target` (or its string form); ``target_value``,
    ``statistic_names`` and ``tolerance`` default to the target's. A result loaded from a file rebuilds its target
    from the string form; a ``Custom`` target (a Python function) cannot be rebuilt, and ``result.target`` says so
    while everything else (``target_spec``, the values, the diagnostics) still works.
    """

    def __init__(self, *, z, probs, u, stats, target, sigma: float, tolerance: float | None = None,
                 target_value=None, statistic_names=None, log_likelihood=None, failed_chains=None, generator=None,
                 info=None, groups=None, stopped: str | None = None):
        self.z = torch.as_tensor(z).detach().cpu()
        self.probs = torch.as_tensor(probs).detach().cpu()
        self.u = torch.as_tensor(u).detach().cpu()
        self.log_likelihood = None if log_likelihood is None else torch.as_tensor(log_likelihood).detach().cpu()
        self.stats = {k: torch.as_tensor(v).detach().cpu() for k, v in stats.items()}
        K = self.probs.shape[-1]
        if isinstance(target, Target):
            self._target, self.target_spec = target, repr(target)
        else:
            self.target_spec = str(target)
            try:
                self._target = parse(self.target_spec)
            except (ValueError, TypeError):
                self._target = None  # e.g. a Custom target read back from a file
        if self._target is None and (target_value is None or statistic_names is None or tolerance is None):
            raise ValueError(f"target {self.target_spec!r} cannot be rebuilt from its string form: pass "
                             "target_value, statistic_names and tolerance")
        t = self._target
        self.target_value = torch.as_tensor(target_value if target_value is not None else t.value(K),
                                            dtype=self.u.dtype).cpu()
        self.statistic_names = list(statistic_names if statistic_names is not None else t.names(K))
        self.tolerance = float(tolerance if tolerance is not None else t.tolerance)
        self.sigma = float(sigma)
        self.failed_chains = {int(k): str(v) for k, v in (failed_chains or {}).items()}
        self.generator = generator
        self.info = dict(info or {})
        self.groups = {k: dict(v) for k, v in (groups or {}).items()}
        self.stopped = stopped
        self._tree = None

    @classmethod
    def from_draws(cls, draws, posterior, *, generator=None, info=None) -> Result:
        """The result of a :func:`bayestrex.driver.run` on a :class:`~bayestrex.posterior.Posterior`."""
        return cls(z=draws.z, probs=draws.aux["probs"].float(), u=draws.aux["u"].float(),
                   log_likelihood=draws.aux.get("log_likelihood"), stats=draws.stats, target=posterior.target,
                   target_value=posterior.value.cpu(), statistic_names=posterior.names, sigma=posterior.sigma,
                   failed_chains=draws.failed, generator=generator, info=info if info is not None else draws.info,
                   groups=draws.groups, stopped=draws.stopped)

    @property
    def target(self) -> Target:
        """The :class:`~bayestrex.targets.Target` (its string form is ``target_spec``)."""
        if self._target is None:
            raise ValueError(f"the target {self.target_spec!r} of this loaded result is a Python function and cannot "
                             "be rebuilt from the file; its values, names and tolerance are on the result")
        return self._target

    # -- shape and attainment -------------------------------------------------------------------------------
    @property
    def num_chains(self) -> int:
        return self.z.shape[0]

    @property
    def num_draws(self) -> int:
        return self.z.shape[1]

    @property
    def healthy_chains(self) -> list[int]:
        """Chains that did not fail (what the summaries use)."""
        return [c for c in range(self.num_chains) if c not in self.failed_chains]

    @property
    def attained(self) -> torch.Tensor:
        """``[chains, draws]`` bool: the draw's statistics are all within ``tolerance`` of the target."""
        return diagnostics.attained(self.u, self.target_value, self.tolerance)

    @property
    def attainment(self) -> float:
        """Fraction of draws (of the healthy chains) that attain the target."""
        return diagnostics.attainment(self.to_datatree())

    @property
    def stuck_chains(self) -> list[int]:
        """Indices of chains none of whose kept draws moved (kept in ``attainment``; ``diagnose`` flags them)."""
        return diagnostics.stuck_chains(self.z)

    # -- images --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def images(self, generator=None, *, batch_size: int = 1024) -> torch.Tensor:
        """Decoded draws ``[chains, draws, ...]`` (on CPU); ``generator`` is needed for a loaded result."""
        generator = generator if generator is not None else self.generator
        if generator is None:
            raise ValueError("images() needs the generator: this result was loaded from a file; "
                             "pass result.images(generator)")
        device = next((p.device for p in getattr(generator, "parameters", lambda: iter(()))()), torch.device("cpu"))
        dtype = next((p.dtype for p in getattr(generator, "parameters", lambda: iter(()))()), torch.float32)
        flat = self.z.reshape(-1, self.z.shape[-1])
        x = torch.cat([generator(b.to(device, dtype)).cpu() for b in flat.split(batch_size)])
        return x.reshape(*self.z.shape[:2], *x.shape[1:])

    # -- ArviZ ---------------------------------------------------------------------------------------------
    def to_datatree(self):
        """An ``xarray.DataTree`` (built once): ``posterior`` (z, u, probs), ``sample_stats``, ``log_likelihood``
        (``u``: log N(u*; u(z), σ²) per draw), ``constant_data`` (target value), and the kernel's own groups."""
        if self._tree is None:
            self._tree = self._build_tree()
        return self._tree

    def _build_tree(self):
        from arviz_base import from_dict

        K = self.probs.shape[-1]
        data = {"posterior": {"z": self.z.numpy(), "u": self.u.numpy(), "probs": self.probs.numpy()},
                "sample_stats": {k: v.numpy() for k, v in self.stats.items()},
                "constant_data": {"target_value": self.target_value.numpy()}}
        if self.log_likelihood is not None:
            data["log_likelihood"] = {"u": self.log_likelihood.numpy()}
        with warnings.catch_warnings():  # many short chains (batched kernels) are intended here, not a mix-up
            warnings.filterwarnings("ignore", message="Found chain dimension to be longer than draw dimension")
            dt = from_dict(data, dims={"z": ["latent"], "u": ["statistic"], "probs": ["class"],
                                       "target_value": ["statistic"]},
                           coords={"statistic": self.statistic_names, "class": np.arange(K),
                                   "latent": np.arange(self.z.shape[-1])})
        for name, variables in self.groups.items():
            dt[name] = _group(variables)
        dt.attrs.update(bayestrex_target=self.target_spec, bayestrex_sigma=self.sigma,
                        bayestrex_tolerance=self.tolerance, bayestrex_failed_chains=json.dumps(self.failed_chains),
                        bayestrex_info=json.dumps(self.info, default=str), bayestrex_stopped=self.stopped or "")
        return dt

    def summary(self):
        """A pandas DataFrame: ArviZ summary of z and the target statistics, their targets, and attainment."""
        return diagnostics.summary(self.to_datatree())

    def diagnose(self) -> list[str]:
        """Plain-language problems (a partial run, divergences, R-hat, ESS, E-BFMI, failed or stuck chains, low
        attainment); for SMC, also when its independent runs disagree on how the draws split between regions of
        the level set (``diagnostics.run_agreement`` gives the comparison either way)."""
        return diagnostics.flags(self.to_datatree())

    # -- SMC: evidence and level-set mass ----------------------------------------------------------------------
    @property
    def log_evidence(self) -> float | None:
        """``log Z = log ∫ prior(z) N(u*; u(z), σ²) dz`` (SMC results; None otherwise), likelihood constants
        included as in :meth:`Posterior.log_density`."""
        ev = diagnostics.evidence(self.to_datatree())
        return None if ev is None else ev["log_evidence"]

    @property
    def log_evidence_se(self) -> float | None:
        """Standard error of :attr:`log_evidence`, from the spread of its independent runs."""
        ev = diagnostics.evidence(self.to_datatree())
        return None if ev is None else ev["log_evidence_se"]

    def level_set_mass(self) -> dict | None:
        """The fraction of the generator's inputs (prior draws) that attain the target, with its standard error
        (SMC results; see :func:`bayestrex.diagnostics.level_set_mass`)."""
        return diagnostics.level_set_mass(self.to_datatree())

    def bfmi(self) -> list[float] | None:
        """E-BFMI per chain (ArviZ) from the ``energy`` sample statistic; None when the kernel records none."""
        return diagnostics.bfmi(self.to_datatree())

    def __repr__(self):
        partial = f", stopped={self.stopped!r}" if self.stopped else ""
        return (f"Result(target={self.target_spec!r}, chains={self.num_chains}, draws={self.num_draws}, "
                f"attainment={self.attainment:.1%}, failed_chains={sorted(self.failed_chains)}{partial})")

    def report(self, path: str | os.PathLike, generator=None):
        """Write one self-contained HTML report of this run (:mod:`bayestrex.report`) and return its path.
        ``generator`` decodes the draws (default: the one sampled with; a loaded result has none, and then the
        report says so and shows everything but the images)."""
        from .report import write

        return write(self, path, generators=generator)

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the result as netCDF (the DataTree), atomically and synced to disk: readers never see a partial
        file. Every variable carries an HDF5 Fletcher-32 checksum, so :func:`load` detects a corrupted block; the
        attributes record the package version, the seed and (when known) the models' SHA-256."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            package_version = version("bayestrex")
        except PackageNotFoundError:  # run from a source tree that is not installed
            package_version = "unknown"
        dt = self.to_datatree().copy()
        dt.attrs.update(bayestrex_version=package_version, bayestrex_seed=str(self.info.get("seed", "")),
                        bayestrex_models_sha256=json.dumps(self.info.get("models_sha256", {})))
        encoding = {node.path: {name: {"fletcher32": True} for name, v in node.variables.items()
                                if v.ndim > 0 and v.dtype.kind in "biuf"}  # HDF5 filters: chunked numbers only
                    for node in dt.subtree}
        with atomic_path(path) as tmp:
            dt.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        """Read a result written by :meth:`save` (data only: no code is executed)."""
        import xarray as xr

        if not os.path.isfile(path):
            raise FileNotFoundError(f"no result file at {path}")
        try:
            dt = xr.open_datatree(path, engine="h5netcdf").load()
            post, ss = dt["posterior"], dt["sample_stats"]
            attrs = dt.attrs
            ll = dt["log_likelihood"]["u"].values if "log_likelihood" in dt.children else None
            known = {"posterior", "sample_stats", "constant_data", "log_likelihood"}
            groups = {name: {k: v.values for k, v in dt[name].data_vars.items()}
                      for name in dt.children if name not in known}
            return cls(
                z=torch.from_numpy(post["z"].values), probs=torch.from_numpy(post["probs"].values),
                u=torch.from_numpy(post["u"].values), log_likelihood=None if ll is None else torch.from_numpy(ll),
                stats={k: torch.from_numpy(ss[k].values) for k in ss.data_vars},
                target=attrs["bayestrex_target"],
                target_value=torch.from_numpy(dt["constant_data"]["target_value"].values),
                statistic_names=[str(s) for s in post["statistic"].values], tolerance=attrs["bayestrex_tolerance"],
                sigma=attrs["bayestrex_sigma"], failed_chains=json.loads(attrs["bayestrex_failed_chains"]),
                info=json.loads(attrs["bayestrex_info"]), groups=groups,
                stopped=attrs.get("bayestrex_stopped") or None,
            )
        except (KeyError, OSError, ValueError) as e:
            if any(w in str(e).lower() for w in ("fletcher32", "checksum", "filter")):  # our only filter: checksums
                raise ValueError(f"{path} is corrupt: a data block fails its checksum ({e}); the file was damaged "
                                 "after it was written (disk, copy or transfer); use a backup or rerun") from None
            raise ValueError(f"{path} is not a bayestrex result file: {e!r}") from None


def _group(variables: dict):
    """A DataTree node of arrays (e.g. SMC's per-stage records), each with its own dimensions."""
    import xarray as xr

    return xr.DataTree(xr.Dataset({k: ([f"{k}_dim_{i}" for i in range(np.ndim(v))], np.asarray(v))
                                   for k, v in variables.items()}))


load = Result.load
