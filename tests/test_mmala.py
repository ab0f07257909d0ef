"""Simplified manifold MALA with the Gauss-Newton metric, against closed forms: a linear statistic of a Gaussian at
any sigma (its step size does not shrink with sigma there), a thin curved tube (a circle under an anisotropic prior,
by quadrature), and mutations (the accept step removed, the Hastings correction dropped) that must fail."""

import math

import numpy as np
import pytest
import torch
from checks import check_gaussian, check_mean

import bayestrex as bt
from bayestrex.density import Density, GaussianPrior
from bayestrex.driver import run
from bayestrex.kernels.mmala import MMALA

A = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
Y = torch.tensor([1.2, -0.4])


def linear_case(sigma: float, chains: int = 16, samples: int = 150, warmup: int = 50):
    """u(z) = A z (2 statistics, 3 latents), prior N(0, diag(1, 4, 0.25)): Gaussian posterior in closed form."""
    scale = torch.tensor([1.0, 2.0, 0.5])
    dens = Density(latent_dim=3, prior=GaussianPrior(torch.zeros(3), scale), residual=lambda z: z @ A.T - Y,
                   sigma=sigma)
    z0 = torch.randn(chains, 3, generator=torch.Generator().manual_seed(0))
    draws = run(MMALA(), dens, z0, num_samples=samples, warmup=warmup, seed=1, progress=False)
    Ad, Yd, S = A.double(), Y.double(), torch.diag(scale.double().square())
    inner = torch.linalg.inv(Ad @ S @ Ad.T + sigma**2 * torch.eye(2, dtype=torch.float64))
    return draws, S @ Ad.T @ inner @ Yd, S - S @ Ad.T @ inner @ Ad @ S


@pytest.mark.parametrize("sigma", [0.1, 0.001])
def test_linear_statistic_of_a_gaussian_at_any_sigma(sigma):
    draws, mean, cov = linear_case(sigma)
    check_gaussian(draws.z, mean, cov, min_ess=1500)


def test_step_size_does_not_shrink_with_sigma_on_a_straight_level_set():
    """The metric scales the move across the level set to sigma: h stays put from sigma 0.1 to 1e-4 (plain MALA's h
    would shrink like sigma²)."""
    h = {s: linear_case(s, chains=16, samples=20)[0].info["step_size"] for s in (0.1, 1e-4)}
    assert 0.5 < h[1e-4] / h[0.1] < 2, h


def circle_truth(sigma):
    """u(z) = |z| - 1.5, prior N(0, diag(1, 4)): E[cos 2t] and E[r] by quadrature on a polar grid."""
    t = np.linspace(-np.pi, np.pi, 4001)[:, None]
    r = np.linspace(max(1e-6, 1.5 - 12 * sigma), 1.5 + 12 * sigma, 2001)[None, :]
    w = r * np.exp(-0.5 * ((r * np.cos(t)) ** 2 + (r * np.sin(t) / 2) ** 2) - 0.5 * ((r - 1.5) / sigma) ** 2)
    w /= w.sum()
    out = []
    for f in (np.cos(2 * t) + 0 * r, r + 0 * t):
        m = (w * f).sum()
        out.append((m, (w * f**2).sum() - m**2))
    return out


def test_thin_circle_under_an_anisotropic_prior_matches_quadrature():
    """A curved level set: the tube of width sigma = 0.2 around the circle |z| = 1.5, weighted by the prior. (Thinner
    tubes are where this kernel loses: the tangent move leaves the curved set by ~h/R, so h shrinks with sigma; at
    0.02 it fell to 1e-3 and 300 draws of 32 chains gave ESS ~40.)"""
    sigma = 0.2
    dens = Density(latent_dim=2, prior=GaussianPrior(torch.zeros(2), torch.tensor([1.0, 2.0])),
                   residual=lambda z: z.norm(dim=-1) - 1.5, sigma=sigma)
    z0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    draws = run(MMALA(), dens, z0, num_samples=600, warmup=200, seed=3, progress=False)
    z = draws.z.double()
    (m_c, v_c), (m_r, v_r) = circle_truth(sigma)
    angle = torch.atan2(z[..., 1], z[..., 0])
    x = torch.stack([torch.cos(2 * angle), z.norm(dim=-1)], -1)
    check_mean(x, [m_c, m_r], [v_c, v_r], min_ess=1000)


def test_without_its_accept_step_the_kernel_fails(monkeypatch):
    import bayestrex.kernels.mmala as mmala

    monkeypatch.setattr(mmala, "acceptance", lambda U0, U1, qb, qf: torch.ones_like(U0))
    with pytest.raises(AssertionError):
        draws, mean, cov = linear_case(0.1)
        check_gaussian(draws.z, mean, cov, min_ess=1500)


def test_without_the_hastings_correction_the_kernel_fails(monkeypatch):
    """Metropolis with the proposal's density dropped: exact only for a symmetric proposal, which a Langevin one is
    not (and a position-dependent metric even less)."""
    import bayestrex.kernels.mmala as mmala

    real = mmala.acceptance
    monkeypatch.setattr(mmala, "acceptance", lambda U0, U1, qb, qf: real(U0, U1, 0 * qb, 0 * qf))
    with pytest.raises(AssertionError):
        draws, mean, cov = linear_case(0.1)
        check_gaussian(draws.z, mean, cov, min_ess=1500)


def test_mmala_refuses_sigma_zero_and_tempered_densities():
    dens = Density(latent_dim=2, residual=lambda z: z.norm(dim=-1) - 1.5, sigma=0.0)
    with pytest.raises(ValueError, match="sigma > 0.*constrained"):
        MMALA().init(dens, torch.ones(2, 2), torch.Generator())
    dens = Density(latent_dim=2, residual=lambda z: z.norm(dim=-1) - 1.5, sigma=0.1)
    with pytest.raises(ValueError, match="beta = 1"):
        MMALA().init(dens.tempered(0.5), torch.ones(2, 2), torch.Generator())


def test_runs_on_the_digits_posterior_through_sample():
    vae, clf = bt.nets.pretrained("digits", progress=False)
    r = bt.sample(vae.decoder, clf, "ambiguous:3,8,smooth", kernel="mmala", num_chains=4, num_samples=5, warmup=5,
                  sigma=0.05, progress=False)
    assert r.z.shape == (4, 5, vae.latent_dim)
    assert int(r.stats["n_steps"][0, 0]) == round(8 * 1.5)  # 8 proposals of one forward + two backward passes
    assert torch.isfinite(r.stats["acceptance_rate"]).all()
    assert math.isfinite(r.info["step_size"])


def varying_case():
    """u(z) = |z|² = 2 with sigma = 1, prior N(0, I) in 2-d: the metric's λ = 4|z|²/σ² changes across the posterior, so
    the log det G terms of the proposal densities matter (dropped, E[|z|²] moves by ~2 tolerances). E[|z|²] by
    quadrature in the radius."""
    sigma = 1.0
    dens = Density(latent_dim=2, residual=lambda z: z.square().sum(-1) - 2.0, sigma=sigma)
    z0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    draws = run(MMALA(), dens, z0, num_samples=500, warmup=100, seed=6, progress=False)
    r = np.linspace(1e-4, 6.0, 60001)
    w = r * np.exp(-0.5 * r**2 - 0.5 * ((r**2 - 2.0) / sigma) ** 2)
    w /= w.sum()
    m = (w * r**2).sum()
    z = draws.z.double()
    return z.square().sum(-1, keepdim=True), m, (w * r**4).sum() - m**2


def test_a_metric_that_varies_across_the_tube_matches_quadrature():
    x, m, v = varying_case()
    check_mean(x, [m], [v], min_ess=1000)


def test_without_the_log_det_of_its_metric_the_kernel_fails(monkeypatch):
    """The proposal densities' ½ log det G terms dropped: harmless where G is constant (the linear case), biased
    where it varies."""
    import bayestrex.kernels.mmala as mmala

    real = mmala._log_q
    monkeypatch.setattr(mmala, "_log_q", lambda to, frm, g, h: real(to, frm, g, h) - 0.5 * torch.log1p(g.lam).sum(-1))
    with pytest.raises(AssertionError):
        x, m, v = varying_case()
        check_mean(x, [m], [v], min_ess=1000)
