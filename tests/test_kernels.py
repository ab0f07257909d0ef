"""The kernels on densities with known answers: Gaussians (closed form), a thin curved level set (quadrature),
Neal's funnel, bad regions; and a mutation check: each listed bug, planted in the kernel, fails a correctness test.

Tolerances come from the true moments and a required minimum ESS (``tests/checks.py``), never from the sampler's own
Monte-Carlo standard error.
"""

import math

import numpy as np
import pytest
import torch
from checks import check_gaussian, check_mean, check_runs

from bayestrex.driver import run
from bayestrex.kernels import Density, get
from bayestrex.kernels.chees import ChEES, chees_gradient, halton
from bayestrex.kernels.elliptical import EllipticalSlice
from bayestrex.kernels.hmc import BatchedHMC
from bayestrex.kernels.smc import SMC


def start(chains, d, seed=0, scale=1.0):
    return scale * torch.randn(chains, d, generator=torch.Generator().manual_seed(seed))


# step caps keep a planted bug from running for minutes (its step size collapses): the mutation test reuses these
KERNELS = {"hmc": lambda: BatchedHMC(max_steps=64), "chees": lambda: ChEES(max_steps=64),
           "slice": lambda: EllipticalSlice()}


def correlated_gaussian(d=6):
    """``N(mu, cov)`` with variances 0.1 .. 10 along random axes (condition number 100)."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    cov = q @ torch.diag(torch.logspace(-1, 1, d)) @ q.T
    prec, mu = torch.linalg.inv(cov), torch.linspace(-1, 1, d)
    return Density(lambda z: -0.5 * (((z - mu) @ prec) * (z - mu)).sum(-1), d), mu, cov


def gaussian_case(name):
    """The correctness check the mutation test reuses: 64 chains on the correlated Gaussian, whitened draws N(0, I)
    with at least 4000 effective draws per coordinate (a 5% variance error fails)."""
    dens, mu, cov = correlated_gaussian()
    draws = run(KERNELS[name](), dens, start(64, 6), num_samples=400, warmup=400, seed=1, progress=False)
    check_gaussian(draws.z, mu, cov, min_ess=4000)
    return draws


@pytest.mark.parametrize("name", ["hmc", "chees", "slice"])
def test_correlated_gaussian_condition_100(name):
    gaussian_case(name)


@pytest.mark.parametrize("name", ["hmc", "chees"])
def test_standard_normal_10d(name):
    dens = Density(lambda z: -0.5 * z.square().sum(-1), 10)
    draws = run(KERNELS[name](), dens, start(32, 10, scale=2.0), num_samples=300, warmup=300, seed=0,
                progress=False)
    check_gaussian(draws.z, torch.zeros(10), torch.ones(10), min_ess=3000)
    assert not draws.stats["diverging"].any()


# -- a thin, curved level set whose posterior is known by quadrature ----------------------------------------------
SHELL_SIGMA = 0.1


def shell_log_density(z):
    """Prior N(0, I) in 2-d; two statistics of a 3-class softmax with logits (s, -s, -3), s = z1 + z2²/2: the
    ambiguous target (|p0 - p1| = 0, min(p0, p1) - p2 = 0.5) with sigma 0.1. The level set is the parabola
    z1 = -z2²/2, the posterior a thin curved band around it."""
    s = z[:, 0] + 0.5 * z[:, 1] ** 2
    p = torch.softmax(torch.stack([s, -s, torch.full_like(s, -3.0)], -1), -1)
    u1, u2 = (p[:, 0] - p[:, 1]).abs(), torch.minimum(p[:, 0], p[:, 1]) - p[:, 2]
    return -0.5 * z.square().sum(-1) - 0.5 * ((u1 / SHELL_SIGMA) ** 2 + ((u2 - 0.5) / SHELL_SIGMA) ** 2)


def shell_moments():
    """Mean ``[2]``, variances ``[2]`` and fourth central moments ``[2]`` of the shell posterior, by quadrature on a
    0.004-spaced grid."""
    z1, z2 = np.meshgrid(np.arange(-9, 2, 0.004), np.arange(-4.5, 4.5, 0.004), indexing="ij")
    s = z1 + 0.5 * z2**2
    logits = np.stack([s, -s, np.full_like(s, -3.0)])
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    u1, u2 = np.abs(p[0] - p[1]), np.minimum(p[0], p[1]) - p[2]
    logp = -0.5 * (z1**2 + z2**2) - 0.5 * ((u1 / SHELL_SIGMA) ** 2 + ((u2 - 0.5) / SHELL_SIGMA) ** 2)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean = np.array([(w * z1).sum(), (w * z2).sum()])
    var = np.array([(w * (z1 - mean[0]) ** 2).sum(), (w * (z2 - mean[1]) ** 2).sum()])
    m4 = np.array([(w * (z1 - mean[0]) ** 4).sum(), (w * (z2 - mean[1]) ** 4).sum()])
    return torch.tensor(mean), torch.tensor(var), torch.tensor(m4)


SHELL_KERNELS = {"chees": lambda: ChEES(max_steps=128), "slice": lambda: EllipticalSlice()}


@pytest.mark.parametrize("name", list(SHELL_KERNELS))
def test_thin_curved_shell_matches_quadrature(name):
    """64 chains started on the shell. (Batched ``hmc`` is left out: its per-chain step sizes make it mix slowly
    along the parabola (R-hat 1.08 after 200 + 200 iterations, 60 s); the correlated Gaussian tests it.)"""
    mean, var, m4 = shell_moments()
    assert var[1] > 0.3 and var[0] > 0.1  # curved: z1 spreads along the parabola as z2 does
    t = start(64, 1, seed=4)[:, 0]
    samples = {"chees": 100, "slice": 800}[name]  # measured ESS: chees ~6000 per 200 draws, slice ~550 per 200
    draws = run(SHELL_KERNELS[name](), Density(shell_log_density, 2), torch.stack([-0.5 * t**2, t], -1),
                num_samples=samples, warmup=200, seed=2, progress=False)
    z = draws.z
    # means of z and of the squared deviations about the true mean, against quadrature; variances of those
    # quantities from the quadrature too (var, and m4 - var² for the squared deviations): no Gaussian assumption
    check_mean(z, mean, var, min_ess=400, max_rhat=1.05)
    check_mean((z - mean.float()) ** 2, var, m4 - var**2, min_ess=400, max_rhat=1.05)


def smc_shell_case():
    """SMC from the prior to the shell: 8 independent runs of 1024 particles; the population at the end of tempering
    (no continued chains: particles mix slowly along the parabola) against quadrature, each run worth at least 300
    independent draws (measured: ~450) (``check_runs``)."""
    mean, var, m4 = shell_moments()
    z0 = torch.randn(8192, 2, generator=torch.Generator().manual_seed(4))
    draws = run(SMC(runs=8), Density(shell_log_density, 2), z0, num_samples=1, warmup=0, seed=2, progress=False)
    z, runs = draws.z[:, 0], torch.as_tensor(draws.groups["smc"]["run"])
    check_runs(z, runs, mean, var, min_ess_per_run=300)
    check_runs((z - mean.float()) ** 2, runs, var, m4 - var**2, min_ess_per_run=300)


def test_smc_population_on_the_thin_curved_shell_matches_quadrature():
    smc_shell_case()  # (SMC with its weights dropped fails test_smc's piece weights)


# -- mutation check: plant each bug and see a correctness test fail --------------------------------------------
def _no_accept_step(h0, h1, diverging):
    return torch.zeros_like(h1)  # every proposal accepted (no Metropolis correction)


def _momentum_from_the_inverse_metric(self, like, rng):
    e = torch.randn(like.shape, generator=rng, device=like.device, dtype=like.dtype)
    if self.chol is None:
        return e * self.inv_mass.sqrt()  # N(0, M⁻¹) instead of N(0, M)
    return (self.chol @ e.unsqueeze(-1)).squeeze(-1)


def _slice_too_high(loglik, rng):
    u = torch.rand(loglik.shape, generator=rng, dtype=loglik.dtype)
    return loglik + 0.5 * torch.log(u)  # y ~ L · U^0.5: not uniform on [0, L]


MUTATIONS = {
    "hmc: accept step removed": (lambda: gaussian_case("hmc"), "bayestrex.kernels.hmc.log_accept", _no_accept_step),
    "chees: accept step removed": (lambda: gaussian_case("chees"), "bayestrex.kernels.hmc.log_accept",
                                   _no_accept_step),
    "hmc: momentum from the wrong covariance": (lambda: gaussian_case("hmc"),
                                                "bayestrex.kernels.integrators.Metric.momentum",
                                                _momentum_from_the_inverse_metric),
    "chees: momentum from the wrong covariance": (lambda: gaussian_case("chees"),
                                                  "bayestrex.kernels.integrators.Metric.momentum",
                                                  _momentum_from_the_inverse_metric),
    "slice: wrong slice height": (lambda: gaussian_case("slice"), "bayestrex.kernels.elliptical.slice_level",
                                  _slice_too_high),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_planted_bug_fails_a_correctness_test(mutation, monkeypatch):
    case, target, replacement = MUTATIONS[mutation]
    monkeypatch.setattr(target, replacement)
    # a check that fails, or a run that breaks down (e.g. a mass matrix adapted from wrong draws is not positive
    # definite), both catch the bug
    with pytest.raises((AssertionError, torch.linalg.LinAlgError)):
        case()


@pytest.mark.parametrize("name", ["hmc", "chees"])
def test_funnel_divergences_are_detected_and_reported(name):
    """Neal's funnel: v ~ N(0, 3²), x_i ~ N(0, exp(v)); the neck makes a fixed step size diverge."""

    def funnel(z):
        v, x = z[:, 0], z[:, 1:]
        return -0.5 * (v / 3) ** 2 - 0.5 * (x.square() * torch.exp(-v).unsqueeze(-1)).sum(-1) - 0.5 * 9 * v

    kernel = BatchedHMC(max_steps=64) if name == "hmc" else ChEES(max_steps=64)  # the neck asks for thousands
    draws = run(kernel, Density(funnel, 10), start(16, 10), num_samples=200, warmup=200, seed=0, progress=False)
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
