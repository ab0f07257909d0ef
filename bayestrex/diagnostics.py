"""Diagnostics as functions over a result's DataTree: attainment, the ArviZ summary, and plain-language flags.

Everything here reads an ``xarray.DataTree`` as :meth:`bayestrex.Result.to_datatree` builds it (groups
``posterior`` with ``z``, ``u``, ``probs``; ``sample_stats``; ``constant_data`` with ``target_value``; attributes
``bayestrex_*`` with the target, tolerance, failed chains and run information). Nothing calls back into ``Result``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

__all__ = ["as_tree", "attained", "attainment", "healthy_chains", "failed_chains", "summary", "flags", "overview",
           "stuck_chains", "bfmi", "nested_rhat", "nested_rhats", "run_labels", "evidence", "level_set_mass",
           "run_agreement", "THRESHOLDS"]

#: what ``flags`` calls a problem (Vehtari et al. 2021 for R-hat and ESS; Betancourt 2016 for E-BFMI)
THRESHOLDS = dict(r_hat=1.01, ess_per_chain=100, bfmi=0.3, attainment=0.5)


def attained(u, value, tolerance: float):
    """``[...]`` bool: every statistic of ``u [..., m]`` within ``tolerance`` of its target ``value [m]`` (tensors
    or arrays)."""
    return (abs(u - value) <= tolerance).all(-1)


def as_tree(obj):
    """The DataTree of ``obj``: a DataTree itself, or anything with ``to_datatree()`` (a ``Result``)."""
    return obj.to_datatree() if hasattr(obj, "to_datatree") else obj


def failed_chains(dt) -> dict[int, str]:
    """Chain index -> why it failed (its draws are NaN from the failure on)."""
    dt = as_tree(dt)
    return {int(k): v for k, v in json.loads(dt.attrs.get("bayestrex_failed_chains", "{}")).items()}


def healthy_chains(dt) -> list[int]:
    """The chains that did not fail: the ones every summary uses."""
    dt = as_tree(dt)
    bad = failed_chains(dt)
    return [c for c in range(dt["posterior"].sizes["chain"]) if c not in bad]


def _attained_array(dt) -> np.ndarray:
    """``[chains, draws]`` bool."""
    dt = as_tree(dt)
    u = dt["posterior"]["u"].values
    return attained(u, dt["constant_data"]["target_value"].values, float(dt.attrs["bayestrex_tolerance"]))


def attainment(dt) -> float:
    """Fraction of the healthy chains' draws whose every statistic is within tolerance of the target."""
    dt = as_tree(dt)
    healthy = healthy_chains(dt)
    return float(_attained_array(dt)[healthy].mean()) if healthy else float("nan")


def stuck_chains(z) -> list[int]:
    """Chains whose kept draws never move (every draw equal to the first), e.g. a chain that rejects everything.
    ``z`` is ``[chains, draws, d]`` (tensor or array)."""
    z = torch.as_tensor(np.asarray(z))
    if z.shape[1] < 2:
        return []
    moved = (z[:, 1:] != z[:, :1]).any(-1).any(-1)
    finite = torch.isfinite(z).all(-1).all(-1)
    return [int(c) for c in torch.nonzero(~moved & finite).flatten()]


def summary(dt, var_names=("z", "u")) -> pd.DataFrame:
    """ArviZ summary (mean, sd, ESS bulk and tail, R-hat, MCSE) of ``var_names`` over the healthy chains.

    Rows of the target statistics carry their ``target`` value and the fraction of draws ``within_tol`` of it;
    a last row ``attainment`` holds, under ``mean``, the fraction of draws with *every* statistic within tolerance.
    """
    import arviz_stats as azs

    dt = as_tree(dt)
    healthy = healthy_chains(dt)
    post = dt["posterior"].to_dataset().isel(chain=healthy)
    df = azs.summary(post, var_names=list(var_names), round_to="none")
    value = dt["constant_data"]["target_value"].values
    tol = float(dt.attrs["bayestrex_tolerance"])
    within = (abs(post["u"].values - value) <= tol).mean(axis=(0, 1))
    df["target"], df["within_tol"] = np.nan, np.nan
    for j, name in enumerate(dt["posterior"]["statistic"].values):
        row = f"u[{name}]"
        if row in df.index:
            df.loc[row, "target"] = float(value[j])
            df.loc[row, "within_tol"] = float(within[j])
    nested = nested_rhats(dt)
    if nested:
        df["nested_r_hat"] = [nested.get(row, np.nan) for row in df.index]
    df.loc["attainment"] = np.nan
    df.loc["attainment", "mean"] = attainment(dt)
    return df


def bfmi(dt) -> list[float] | None:
    """E-BFMI per chain (ArviZ) from the ``energy`` sample statistic; None when the kernel records none."""
    dt = as_tree(dt)
    import arviz_stats as azs

    ss = dt["sample_stats"]
    if "energy" not in ss.data_vars:
        return None
    e = ss["energy"].values
    if e.shape[1] < 3 or not np.isfinite(e).all():
        return None
    return [float(b) for b in azs.bfmi(dt)["energy"].values]


def flags(dt) -> list[str]:
    """Plain-language problems: a run that stopped early, failed or stuck chains, divergences, R-hat, ESS, E-BFMI,
    attainment."""
    dt = as_tree(dt)
    out = []
    stopped = dt.attrs.get("bayestrex_stopped")
    if stopped:
        out.append(f"partial run: sampling stopped after {dt['posterior'].sizes['draw']} draws per chain "
                   f"({stopped}); the draws are kept but the run did not finish")
    failed = failed_chains(dt)
    if failed:
        out.append(f"failed chains (NaN draws, left out of summaries): {failed}")
    stuck = stuck_chains(dt["posterior"]["z"].values)
    if stuck:
        out.append(f"stuck chains (no draw moved): {stuck}")
    ss = dt["sample_stats"]
    if "diverging" in ss.data_vars:
        div = ss["diverging"].values.astype(bool)
        if div.any():
            chains = sorted({int(c) for c in np.nonzero(div)[0]})
            out.append(f"{int(div.sum())} divergent transitions after warmup (chains {chains}); "
                       "the sampler may miss part of the posterior")
    healthy = healthy_chains(dt)
    runs = run_labels(dt)
    if runs is not None and runs.max() >= 1:  # SMC: independent runs are the superchains; particles share ancestors
        nr = max(nested_rhats(dt).values())
        if not nr <= THRESHOLDS["r_hat"]:
            out.append(f"max nested R-hat {nr:.3f} > {THRESHOLDS['r_hat']}: the independent runs disagree; use more "
                       "particles, a larger target_ess or more mutation steps")
        agreement = run_agreement(dt)
        if agreement is not None and not agreement["agree"]:
            out.append(agreement["text"])
        df = summary(dt)
        ess_b, ess_t = df["ess_bulk"].min(), df["ess_tail"].min()
        need = THRESHOLDS["ess_per_chain"] * (int(runs.max()) + 1)
        if not min(ess_b, ess_t) >= need:
            out.append(f"min ESS bulk {ess_b:.0f} / tail {ess_t:.0f} < {need} (100 per independent run)")
    elif len(healthy) >= 2:
        df = summary(dt)
        rhat, ess_b, ess_t = df["r_hat"].max(), df["ess_bulk"].min(), df["ess_tail"].min()
        if not rhat <= THRESHOLDS["r_hat"]:
            out.append(f"max R-hat {rhat:.3f} > {THRESHOLDS['r_hat']}: chains disagree; run longer or check modes")
        need = THRESHOLDS["ess_per_chain"] * len(healthy)
        if not min(ess_b, ess_t) >= need:
            out.append(f"min ESS bulk {ess_b:.0f} / tail {ess_t:.0f} < {need} (100 per chain)")
    b = bfmi(dt)
    if b is not None:
        low = [c for c, v in enumerate(b) if v < THRESHOLDS["bfmi"]]
        if low:
            out.append(f"E-BFMI < {THRESHOLDS['bfmi']} in chains {low}: momentum resampling explores energy poorly")
    rate = attainment(dt)
    if not rate >= THRESHOLDS["attainment"]:
        out.append(f"only {rate:.1%} of draws attain the target within ±{float(dt.attrs['bayestrex_tolerance'])}")
    return out


def overview(dt) -> dict:
    """One row of figures for a results table: attainment, worst R-hat and ESS, divergences, cost."""
    dt = as_tree(dt)
    df = summary(dt)
    info = json.loads(dt.attrs.get("bayestrex_info", "{}"))
    ss, post = dt["sample_stats"], dt["posterior"]
    div = int(ss["diverging"].values.astype(bool).sum()) if "diverging" in ss.data_vars else 0
    return dict(target=dt.attrs["bayestrex_target"], kernel=info.get("kernel", "?"), chains=post.sizes["chain"],
                draws=post.sizes["draw"], attainment=round(attainment(dt), 3),
                max_r_hat=round(float(df["r_hat"].max()), 3), min_ess_bulk=round(float(df["ess_bulk"].min()), 1),
                min_ess_tail=round(float(df["ess_tail"].min()), 1), divergences=div,
                failed_chains=len(failed_chains(dt)), stuck_chains=len(stuck_chains(post["z"].values)),
                grad_evals=int(info.get("grad_evals", 0)), seconds=info.get("seconds", float("nan")),
                **_smc_overview(dt))


def _smc_overview(dt) -> dict:
    ev = evidence(dt)
    if ev is None:
        return {}
    nested = nested_rhats(dt)
    return dict(nested_r_hat=round(max(nested.values()), 4) if nested else None,
                log_evidence=round(ev["log_evidence"], 3), log_evidence_se=round(ev["log_evidence_se"], 3))


# -- many short chains, independent runs (tempered SMC) -------------------------------------------------------------
def nested_rhat(x) -> float:
    """Nested R-hat of one quantity, ``x [K, M, N]``: K superchains of M chains of N draws (Margossian, Hoffman,
    Sountsov, Riou-Durand, Vehtari & Gelman 2024; as R's ``posterior::rhat_nested``). ``sqrt(1 + B / W)`` with B the
    variance of the superchain means and W the mean over superchains of (variance of its chains' means + mean
    within-chain variance). NaN when a value is non-finite or every draw is equal."""
    x = np.asarray(x, dtype=np.float64)
    K, M, N = x.shape
    if K < 2 or not np.isfinite(x).all() or np.ptp(x) == 0:
        return float("nan")
    chain_mean = x.mean(2)  # [K, M]
    within = x.var(2, ddof=1).mean(1) if N > 1 else np.zeros(K)
    between = chain_mean.var(1, ddof=1) if M > 1 else np.zeros(K)
    B = x.mean((1, 2)).var(ddof=1)
    W = (within + between).mean()
    return float(np.sqrt(1 + B / W)) if W > 0 else float("inf")


def run_labels(dt) -> np.ndarray | None:
    """``[chains]`` independent-run index of every chain (SMC particles), or None for a result without runs."""
    dt = as_tree(dt)
    if "smc" not in dt.children or "run" not in dt["smc"].data_vars:
        return None
    return np.asarray(dt["smc"]["run"].values, dtype=int)


def _by_run(values: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """``[C, S]`` -> ``[K, M, S]`` (chains grouped by run; runs are equal-sized)."""
    K = int(runs.max()) + 1
    return np.stack([values[runs == k] for k in range(K)])


def nested_rhats(dt) -> dict[str, float]:
    """Nested R-hat of every ``z`` and ``u`` coordinate with the independent runs as superchains (SMC results)."""
    dt = as_tree(dt)
    runs = run_labels(dt)
    if runs is None:
        return {}
    post = dt["posterior"]
    out = {}
    for var, dim in (("z", "latent"), ("u", "statistic")):
        vals = post[var].values
        for j, name in enumerate(post[dim].values):
            out[f"{var}[{name}]"] = nested_rhat(_by_run(vals[..., j], runs))
    return out


def evidence(dt) -> dict | None:
    """``log Z`` (the evidence: ``log ∫ prior × likelihood``) pooled over the independent runs, with its standard error
    from their spread: ``{"log_evidence", "log_evidence_se", "runs": [log Z_r]}``; None without SMC runs."""
    dt = as_tree(dt)
    if "smc" not in dt.children:
        return None
    log_z = np.asarray(dt["smc"]["log_evidence_runs"].values, dtype=np.float64)
    R = len(log_z)
    pooled = float(np.logaddexp.reduce(log_z) - np.log(R))  # log of the mean of the runs' unbiased Z estimates
    se = float(np.exp(log_z - pooled).std(ddof=1) / np.sqrt(R)) if R > 1 else float("nan")  # delta method
    return {"log_evidence": pooled, "log_evidence_se": se, "runs": log_z.tolist()}


def level_set_mass(dt) -> dict | None:
    """The prior probability that an input attains the target (every statistic within tolerance): ``Z · E_post[1_A /
    L]`` per independent run (``L`` the likelihood of each draw), averaged over runs, with the standard error of that
    mean. The fraction of the generator's inputs that answer the question. None without SMC runs."""
    dt = as_tree(dt)
    runs, ev = run_labels(dt), evidence(dt)
    if runs is None or "log_likelihood" not in dt.children:
        return None
    hit = _attained_array(dt)
    ll = dt["log_likelihood"]["u"].values.astype(np.float64)
    log_terms = np.where(hit, -ll, -np.inf)
    per_run = []
    for k, log_z in enumerate(ev["runs"]):
        t = log_terms[runs == k].ravel()
        per_run.append(log_z + np.logaddexp.reduce(t) - np.log(t.size))
    mass = np.exp(np.asarray(per_run))
    se = float(mass.std(ddof=1) / np.sqrt(len(mass))) if len(mass) > 1 else float("nan")
    return {"mass": float(mass.mean()), "mass_se": se, "runs": mass.tolist()}


def _kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Labels ``[n]`` of k-means (k-means++ start) on the rows of ``x [n, d]``."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    centres = np.asarray(centres)
    for _ in range(iterations):
        labels = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.asarray([x[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return labels


def run_agreement(dt, regions: int = 4) -> dict | None:
    """Do the independent runs agree on how their draws split between regions of the level set? Regions: ``regions``
    k-means cells of all draws (standardised ``z``). Per run, the share of its draws in each region, and the nested
    R-hat of each region's indicator (runs as superchains: it compares the runs' shares with the spread between and
    within their particles). ``None`` without runs."""
    dt = as_tree(dt)
    runs = run_labels(dt)
    if runs is None or runs.max() < 1:
        return None
    z = dt["posterior"]["z"].values
    C, S, d = z.shape
    flat = z.reshape(-1, d)
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-12)
    labels = _kmeans(flat, regions).reshape(C, S)
    K = int(runs.max()) + 1
    shares = np.asarray([[(labels[runs == r] == j).mean() for j in range(regions)] for r in range(K)])
    rhats = [nested_rhat(_by_run((labels == j).astype(float), runs)) for j in range(regions)]
    worst = float(np.nanmax(rhats)) if np.isfinite(rhats).any() else float("nan")
    agree = bool(worst <= THRESHOLDS["r_hat"])
    spread = float((shares.max(0) - shares.min(0)).max())
    overall = shares.mean(0)
    text = (f"the {K} independent runs {'agree' if agree else 'DISAGREE'} on how the draws split between "
            f"{regions} regions of the level set (k-means cells of z; shares "
            f"{'/'.join(f'{s:.2f}' for s in overall)}; largest difference between runs {spread:.3f}; nested R-hat "
            f"of the region indicators {worst:.3f}{' <=' if agree else ' >'} {THRESHOLDS['r_hat']})")
    return {"agree": agree, "shares": shares.tolist(), "nested_r_hat": rhats, "max_difference": spread,
            "text": text}
