"""``Result``: the draws, their probabilities and statistics, the sampler's per-draw statistics, and the target.

Everything is kept as CPU tensors ``[chains, draws, ...]``; ``to_datatree()`` gives the ArviZ container
(groups ``posterior``, ``sample_stats``, ``constant_data``) and ``save``/``load`` round-trip it through netCDF.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch

from . import diagnostics
from ._util import atomic_path

__all__ = ["Result", "load"]


class Result:
    """Posterior draws for one target. Build it with :func:`bayestrex.sample` or :func:`bayestrex.load`."""

    def __init__(self, *, z, probs, u, stats, target: str, target_value, statistic_names, tolerance: float,
                 sigma: float, failed_chains=None, generator=None, info=None):
        self.z = torch.as_tensor(z).detach().cpu()
        self.probs = torch.as_tensor(probs).detach().cpu()
        self.u = torch.as_tensor(u).detach().cpu()
        self.stats = {k: torch.as_tensor(v).detach().cpu() for k, v in stats.items()}
        self.target, self.tolerance, self.sigma = target, float(tolerance), float(sigma)
        self.target_value = torch.as_tensor(target_value, dtype=self.u.dtype).cpu()
        self.statistic_names = list(statistic_names)
        self.failed_chains = {int(k): str(v) for k, v in (failed_chains or {}).items()}
        self.generator = generator
        self.info = dict(info or {})

    # -- shape and attainment -------------------------------------------------------------------------------
    @property
    def num_chains(self) -> int:
        return self.z.shape[0]

    @property
    def num_draws(self) -> int:
        return self.z.shape[1]

    @property
    def attained(self) -> torch.Tensor:
        """``[chains, draws]`` bool: the draw's statistics are all within ``tolerance`` of the target."""
        return diagnostics.attained(self.u, self.target_value, self.tolerance)

    @property
    def attainment(self) -> float:
        """Fraction of draws (of the healthy chains) that attain the target."""
        healthy = [c for c in range(self.num_chains) if c not in self.failed_chains]
        return float(self.attained[healthy].float().mean()) if healthy else float("nan")

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
        """An ``xarray.DataTree``: ``posterior`` (z, u, probs), ``sample_stats``, ``constant_data`` (target)."""
        from arviz_base import from_dict

        K = self.probs.shape[-1]
        with warnings.catch_warnings():  # many short chains (batched kernels) are intended here, not a mix-up
            warnings.filterwarnings("ignore", message="Found chain dimension to be longer than draw dimension")
            dt = from_dict(
                {"posterior": {"z": self.z.numpy(), "u": self.u.numpy(), "probs": self.probs.numpy()},
                 "sample_stats": {k: v.numpy() for k, v in self.stats.items()},
                 "constant_data": {"target_value": self.target_value.numpy()}},
                dims={"z": ["latent"], "u": ["statistic"], "probs": ["class"], "target_value": ["statistic"]},
                coords={"statistic": self.statistic_names, "class": np.arange(K),
                        "latent": np.arange(self.z.shape[-1])},
            )
        dt.attrs.update(self._attrs())
        return dt

    def _attrs(self) -> dict:
        return dict(bayestrex_target=self.target, bayestrex_sigma=self.sigma, bayestrex_tolerance=self.tolerance,
                    bayestrex_failed_chains=json.dumps(self.failed_chains),
                    bayestrex_info=json.dumps(self.info, default=str))

    def summary(self):
        """A pandas DataFrame: ArviZ summary of z and the target statistics, their targets, and attainment."""
        return diagnostics.summary(self)

    def diagnose(self) -> list[str]:
        """Plain-language problems (divergences, R-hat, ESS, E-BFMI, failed or stuck chains, low attainment)."""
        return diagnostics.flags(self)

    def bfmi(self) -> list[float] | None:
        """E-BFMI per chain (ArviZ) from the ``energy`` sample statistic; None when the kernel records none."""
        import arviz_stats as azs

        e = self.stats.get("energy")
        if e is None or e.shape[1] < 3 or not torch.isfinite(e).all():
            return None
        return [float(b) for b in azs.bfmi(self.to_datatree())["energy"].values]

    def __repr__(self):
        return (f"Result(target={self.target!r}, chains={self.num_chains}, draws={self.num_draws}, "
                f"attainment={self.attainment:.1%}, failed_chains={sorted(self.failed_chains)})")

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the result as netCDF (the DataTree), atomically: readers never see a partial file."""
        dt = self.to_datatree()
        with atomic_path(path) as tmp:
            dt.to_netcdf(tmp, engine="h5netcdf")

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
            return cls(
                z=torch.from_numpy(post["z"].values), probs=torch.from_numpy(post["probs"].values),
                u=torch.from_numpy(post["u"].values),
                stats={k: torch.from_numpy(ss[k].values) for k in ss.data_vars},
                target=attrs["bayestrex_target"],
                target_value=torch.from_numpy(dt["constant_data"]["target_value"].values),
                statistic_names=[str(s) for s in post["statistic"].values], tolerance=attrs["bayestrex_tolerance"],
                sigma=attrs["bayestrex_sigma"], failed_chains=json.loads(attrs["bayestrex_failed_chains"]),
                info=json.loads(attrs["bayestrex_info"]),
            )
        except (KeyError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a bayestrex result file: {e!r}") from None


load = Result.load
