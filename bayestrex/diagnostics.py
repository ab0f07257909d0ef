"""Diagnostics over a result's DataTree: attainment, the ArviZ summary, and plain-language flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

__all__ = ["attained", "summary", "flags", "overview", "stuck_chains", "THRESHOLDS"]

#: what ``flags`` calls a problem (Vehtari et al. 2021 for R-hat and ESS; Betancourt 2016 for E-BFMI)
THRESHOLDS = dict(r_hat=1.01, ess_per_chain=100, bfmi=0.3, attainment=0.5)


def attained(u: torch.Tensor, value: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``[...]`` bool: every statistic of ``u [..., m]`` within ``tolerance`` of its target ``value [m]``."""
    return ((u - value).abs() <= tolerance).all(-1)


def stuck_chains(z: torch.Tensor) -> list[int]:
    """Chains whose kept draws never move (every draw equal to the first), e.g. a chain that rejects everything."""
    if z.shape[1] < 2:
        return []
    moved = (z[:, 1:] != z[:, :1]).any(-1).any(-1)
    finite = torch.isfinite(z).all(-1).all(-1)
    return [int(c) for c in torch.nonzero(~moved & finite).flatten()]


def summary(result, var_names=("z", "u")) -> pd.DataFrame:
    """ArviZ summary (mean, sd, ESS bulk and tail, R-hat, MCSE) of ``var_names`` over the healthy chains.

    Rows of the target statistics carry their ``target`` value and the fraction of draws ``within_tol`` of it;
    a last row ``attainment`` holds, under ``mean``, the fraction of draws with *every* statistic within tolerance.
    """
    import arviz_stats as azs

    dt = result.to_datatree()
    healthy = [c for c in range(result.num_chains) if c not in result.failed_chains]
    post = dt["posterior"].to_dataset().isel(chain=healthy)
    df = azs.summary(post, var_names=list(var_names), round_to="none")
    u = result.u[healthy]
    within = ((u - result.target_value).abs() <= result.tolerance).float().mean(dim=(0, 1))
    df["target"], df["within_tol"] = np.nan, np.nan
    for j, name in enumerate(result.statistic_names):
        row = f"u[{name}]"
        if row in df.index:
            df.loc[row, "target"] = float(result.target_value[j])
            df.loc[row, "within_tol"] = float(within[j])
    df.loc["attainment"] = np.nan
    df.loc["attainment", "mean"] = result.attainment
    return df


def flags(result) -> list[str]:
    """Plain-language problems with a result: failed or stuck chains, divergences, R-hat, ESS, E-BFMI, attainment."""
    out = []
    if result.failed_chains:
        out.append(f"failed chains (NaN draws, left out of summaries): {result.failed_chains}")
    stuck = stuck_chains(result.z)
    if stuck:
        out.append(f"stuck chains (no draw moved): {stuck}")
    stats = result.stats
    if "diverging" in stats:
        div = stats["diverging"].bool()
        if div.any():
            chains = sorted({int(c) for c in torch.nonzero(div)[:, 0]})
            out.append(f"{int(div.sum())} divergent transitions after warmup (chains {chains}); "
                       "the sampler may miss part of the posterior")
    if result.num_chains - len(result.failed_chains) >= 2:
        df = summary(result)
        rhat, ess_b, ess_t = df["r_hat"].max(), df["ess_bulk"].min(), df["ess_tail"].min()
        if not rhat <= THRESHOLDS["r_hat"]:
            out.append(f"max R-hat {rhat:.3f} > {THRESHOLDS['r_hat']}: chains disagree; run longer or check modes")
        need = THRESHOLDS["ess_per_chain"] * (result.num_chains - len(result.failed_chains))
        if not min(ess_b, ess_t) >= need:
            out.append(f"min ESS bulk {ess_b:.0f} / tail {ess_t:.0f} < {need} (100 per chain)")
    bfmi = result.bfmi()
    if bfmi is not None:
        low = [c for c, b in enumerate(bfmi) if b < THRESHOLDS["bfmi"]]
        if low:
            out.append(f"E-BFMI < {THRESHOLDS['bfmi']} in chains {low}: momentum resampling explores energy poorly")
    if not result.attainment >= THRESHOLDS["attainment"]:
        out.append(f"only {result.attainment:.1%} of draws attain the target within ±{result.tolerance}")
    return out


def overview(result) -> dict:
    """One row of figures for a results table: attainment, worst R-hat and ESS, divergences, cost."""
    df = summary(result)
    div = result.stats.get("diverging")
    return dict(target=result.target, kernel=result.info.get("kernel", "?"), chains=result.num_chains,
                draws=result.num_draws, attainment=round(result.attainment, 3),
                max_r_hat=round(float(df["r_hat"].max()), 3), min_ess_bulk=round(float(df["ess_bulk"].min()), 1),
                min_ess_tail=round(float(df["ess_tail"].min()), 1),
                divergences=int(div.bool().sum()) if div is not None else 0,
                failed_chains=len(result.failed_chains), stuck_chains=len(stuck_chains(result.z)),
                grad_evals=int(result.info.get("grad_evals", 0)),
                seconds=result.info.get("seconds", float("nan")))
