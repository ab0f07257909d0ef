"""The batched kernels (``hmc``, ``chees``) on densities with known answers: Gaussians, Neal's funnel, bad regions.

Moments are checked within 4 Monte-Carlo standard errors (ArviZ's MCSE of the mean of z and of z²).
"""

import math

import arviz_stats as azs
import pytest
import torch
from arviz_base import from_dict

from bayestrex.driver import run
from bayestrex.kernels import Density, get
from bayestrex.kernels.chees import ChEES, chees_gradient, halton
from bayestrex.kernels.hmc import BatchedHMC


def start(chains, d, seed=0, scale=1.0):
    return scale * torch.randn(chains, d, generator=torch.Generator().manual_seed(seed))


def check_moments(z: torch.Tensor, mean: torch.Tensor, second: torch.Tensor, max_rhat: float):
    """Draws ``[C, S, d]``: E[z] and E[z²] per dimension within 4 MCSE of the truth, R-hat at most ``max_rhat``."""
    dt = from_dict({"posterior": {"z": z.numpy(), "z2": z.square().numpy()}})
    s = azs.summary(dt, round_to="none")
    d = z.shape[-1]
    for i in range(d):
        for name, truth in ((f"z[{i}]", mean[i]), (f"z2[{i}]", second[i])):
            row = s.loc[name]
            assert abs(row["mean"] - float(truth)) < 4 * row["mcse_mean"], (name, row.to_dict(), float(truth))
    assert s["r_hat"].max() <= max_rhat, s["r_hat"].max()
    assert s["ess_bulk"].min() > 100 and s["ess_tail"].min() > 100


KERNELS = {"hmc": lambda: BatchedHMC(), "chees": lambda: ChEES()}


@pytest.mark.parametrize("name", ["hmc", "chees"])
def test_standard_normal_10d(name):
    dens = Density(lambda z: -0.5 * z.square().sum(-1), 10)
    draws = run(KERNELS[name](), dens, start(32, 10, scale=2.0), num_samples=300, warmup=300, seed=0,
                                progress=False)
    check_moments(draws.z, torch.zeros(10), torch.ones(10), max_rhat=1.01)
    assert not draws.stats["diverging"].any()


@pytest.mark.parametrize("name", ["hmc", "chees"])
def test_correlated_gaussian_condition_100(name):
    d = 6
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    eig = torch.logspace(-1, 1, d)  # variances 0.1 .. 10: condition number 100
    cov = q @ torch.diag(eig) @ q.T
    prec = torch.linalg.inv(cov)
    mu = torch.linspace(-1, 1, d)
    dens = Density(lambda z: -0.5 * (((z - mu) @ prec) * (z - mu)).sum(-1), d)
    assert torch.linalg.cond(cov) >= 99
    draws = run(KERNELS[name](), dens, start(32, d), num_samples=300, warmup=400, seed=1, progress=False)
    check_moments(draws.z, mu, torch.diag(cov) + mu.square(), max_rhat=1.01)


@pytest.mark.parametrize("name", ["hmc", "chees"])
def test_funnel_divergences_are_detected_and_reported(name):
    """Neal's funnel: v ~ N(0, 3²), x_i ~ N(0, exp(v)); the neck makes a fixed step size diverge."""

    def funnel(z):
        v, x = z[:, 0], z[:, 1:]
        return -0.5 * (v / 3) ** 2 - 0.5 * (x.square() * torch.exp(-v).unsqueeze(-1)).sum(-1) - 0.5 * 9 * v

    draws = run(KERNELS[name](), Density(funnel, 10), start(16, 10), num_samples=200, warmup=200, seed=0,
                                progress=False)
    div = draws.stats["diverging"]
    assert div.dtype == torch.bool and div.shape == (16, 200)
    assert div.any(), "the funnel's neck must produce divergent transitions"
    assert not draws.stats["accepted"][div].any(), "a divergent transition is rejected"


def test_chees_adapts_like_blackjax_on_a_stretched_gaussian():
    """BlackJAX's own check: N(0, diag(1, 10²)), 16 chains, 1000 warmup → step ≈ 1.5 ± 0.3, mean steps ≈ 9 ± 3."""
    scales = torch.tensor([1.0, 10.0])
    dens = Density(lambda z: -0.5 * (z / scales).square().sum(-1), 2)
    draws = run(ChEES(mass="identity"), dens, start(16, 2), num_samples=100, warmup=1000, seed=0, progress=False)
    assert 1.2 <= draws.info["step_size"] <= 1.8, draws.info
    assert 6 <= draws.stats["n_steps"].float().mean() <= 12, draws.stats["n_steps"].float().mean()
    assert (draws.stats["n_steps"] == draws.stats["n_steps"][:1]).all(), "every chain takes the same steps"


def test_chees_trajectory_length_moves_only_by_its_own_optimiser():
    # Regression: T was clipped to [step size, ...] every iteration, so a transient large step size in early dual
    # averaging (or its 10x restart after a mass window) ratcheted T up for good (3.0 came out as 7.35).
    normal = Density(lambda z: -0.5 * z.square().sum(-1), 2)
    kernel = ChEES(initial_trajectory_length=3.0, learning_rate=1e-6)
    draws = run(kernel, normal, start(16, 2), num_samples=5, warmup=150, seed=0, progress=False)
    assert draws.info["trajectory_length"] == pytest.approx(3.0, rel=1e-3)


def test_chees_gradient_by_hand():
    q = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    q_prop = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    accept = torch.tensor([1.0, 1.0])
    # means: q̄ = (1, 0), q̄' = (2, 0.5); centred q' = (-1, -.5), (1, .5); ||·||² = 1.25 each; ||q - q̄||² = 1 each
    # diff = 0.25; (q' - q̄')·v = -1 and 0.5; g = 0.5 * 0.25 * (-1 + 0.5) / 2
    assert math.isclose(float(chees_gradient(q, q_prop, v, accept, 0.5)), 0.5 * 0.25 * (-0.5) / 2, rel_tol=1e-6)
    # a chain that rejects everything carries no weight: only the first one counts, its mean is its own point
    g = chees_gradient(q, q_prop, v, torch.tensor([1.0, 0.0]), 1.0)
    assert math.isclose(float(g), (0.0 - 1.0) * 0.0, abs_tol=1e-6)
    assert [halton(i) for i in range(1, 5)] == [0.5, 0.25, 0.75, 0.125]


@pytest.mark.parametrize("name", ["hmc", "chees"])
def test_same_seed_same_draws(name):
    dens = Density(lambda z: -0.5 * z.square().sum(-1), 3)
    a = run(get(name), dens, start(4, 3), num_samples=20, warmup=30, seed=7, progress=False)
    b = run(get(name), dens, start(4, 3), num_samples=20, warmup=30, seed=7, progress=False)
    c = run(get(name), dens, start(4, 3), num_samples=20, warmup=30, seed=8, progress=False)
    assert torch.equal(a.z, b.z) and not torch.equal(a.z, c.z)


@pytest.mark.parametrize("name", ["hmc", "chees"])
def test_nan_region_is_rejected(name):
    """log density NaN for z0 > 0.5: trajectories into it diverge and are rejected; no draw lands there."""

    def logp(z):
        lp = -0.5 * z.square().sum(-1)
        return torch.where(z[:, 0] > 0.5, torch.full_like(lp, float("nan")), lp)

    z0 = start(8, 2)
    z0[:, 0] = z0[:, 0].clamp(max=0.0)
    # at a hard wall, a smaller step does not help a trajectory that heads into it: cap the steps to stay quick
    kernel = BatchedHMC(max_steps=64) if name == "hmc" else ChEES(max_steps=64)
    draws = run(kernel, Density(logp, 2), z0, num_samples=100, warmup=100, seed=0, progress=False)
    assert (draws.z[..., 0] <= 0.5).all() and torch.isfinite(draws.z).all()
    div = draws.stats["diverging"]
    assert div.any() and not draws.stats["accepted"][div].any()
    assert torch.isfinite(draws.stats["acceptance_rate"]).all()
    z0[5, 0] = 3.0
    with pytest.raises(ValueError, match=r"init: .*not finite .*chains \[5\]"):
        run(get(name), Density(logp, 2), z0, num_samples=10, warmup=10, seed=0, progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mass"):
        ChEES(mass="full")
    with pytest.raises(ValueError, match="target_accept"):
        ChEES(target_accept=1.5)
    with pytest.raises(ValueError, match="max_steps"):
        BatchedHMC(max_steps=0)
    with pytest.raises(ValueError, match="num_chains must be >= 2"):
        run(ChEES(), Density(lambda z: -z.square().sum(-1), 2), start(1, 2), num_samples=5, warmup=5, seed=0,
                    progress=False)
