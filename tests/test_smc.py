"""Tempered SMC against answers known by construction: piece weights by quadrature, a closed-form evidence, and a rare
event out of reach of prior sampling. Tolerances come from the spread of independent runs, never from the sampler's
own error estimate."""

import math

import numpy as np
import pytest
import torch

import bayestrex as bt
from analyses import pieces
from bayestrex.density import Density, GaussianPrior
from bayestrex.driver import run
from bayestrex.kernels.smc import SMC, next_temperature, systematic_resample
from bayestrex.targets import Custom

SIGMA = 0.05


def piece_check():
    """SMC on the sine level set of ``analyses/pieces.py`` (pieces separated by barriers of e^-50 and e^-450): every
    piece's share of the draws within 4 standard errors (of 8 independent runs'
    spread) of its weight by quadrature."""
    edges, truth, keep = pieces.pieces_by_quadrature()
    assert keep.sum() >= 4 and truth[keep].min() < 0.02  # several pieces, some of them small
    dens = pieces.density()
    shares = []
    for seed in range(2):  # 2 calls x 4 independent runs each = 8 independent estimates
        z0 = torch.randn(1024, 2, generator=torch.Generator().manual_seed(seed))
        draws = run(SMC(runs=4), dens, z0, num_samples=5, warmup=2, seed=seed, progress=False)
        z1 = draws.z[..., 0].reshape(4, -1)  # particles of one run are contiguous
        for r in range(4):
            counts = np.histogram(z1[r].numpy(), bins=edges)[0]
            shares.append(counts / counts.sum())
    shares = np.asarray(shares)  # [8, pieces]
    mean, se = shares.mean(0), shares.std(0, ddof=1) / np.sqrt(len(shares))
    # a floor of 0.002 on the standard error for pieces the runs all agree on
    assert (np.abs(mean - truth)[keep] <= 4 * np.maximum(se, 0.002)[keep]).all(), (mean[keep], truth[keep], se[keep])


def test_disconnected_pieces_get_their_quadrature_weights():
    piece_check()


def test_smc_without_resampling_fails_the_piece_weights(monkeypatch):
    """The mutation check for SMC: dropping the weights (resampling replaced by the identity) leaves each particle
    in the piece its prior draw fell near; the piece check must catch it."""
    import bayestrex.kernels.smc as smc

    monkeypatch.setattr(smc, "systematic_resample", lambda log_w, runs, rng: torch.arange(log_w.numel()))
    with pytest.raises(AssertionError):
        piece_check()


def test_evidence_of_a_linear_gaussian_model_in_closed_form():
    d, m, s = 5, 2, 0.05
    g = torch.Generator().manual_seed(3)
    A = torch.randn(m, d, generator=g)
    y = torch.tensor([1.2, -0.7])

    def ell(z):
        r = (y - z @ A.T) / s
        return (-0.5 * r.square() - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)

    cov = A @ A.T + s * s * torch.eye(m)
    truth = float(torch.distributions.MultivariateNormal(torch.zeros(m), cov).log_prob(y))
    dens = Density(latent_dim=d, prior=GaussianPrior(torch.zeros(d), torch.ones(d)), log_likelihood=ell)
    estimates = []
    for seed in range(3):
        z0 = torch.randn(512, d, generator=torch.Generator().manual_seed(seed))
        draws = run(SMC(runs=4), dens, z0, num_samples=2, warmup=0, seed=seed, progress=False)
        estimates += draws.groups["smc"]["log_evidence_runs"].tolist()
    est = np.asarray(estimates)
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - truth) <= 4 * se + 0.02, (est, truth)  # 0.02: the adaptive schedule's small bias
    assert est.std(ddof=1) < 0.5  # 128 particles per run already pin log Z to a few tenths


class _Identity(torch.nn.Module):
    latent_dim = 2

    def forward(self, z):
        return z


def _log_odds_classifier(x):
    """Two classes with log(p1 / p0) = z1 exactly, so a Custom target can pin z1 through the probabilities."""
    return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], dim=-1)


def test_a_rare_event_mass_within_20_percent():
    # P(|z1 - 4.9| <= 0.1) under N(0, 1) = Phi(5.0) - Phi(4.8) = 5.07e-7: prior sampling would need ~1e9 draws
    truth = 0.5 * (math.erfc(4.8 / math.sqrt(2)) - math.erfc(5.0 / math.sqrt(2)))
    target = Custom(lambda p: torch.log(p[:, 1] / p[:, 0]), 4.9, names=["z1"], tolerance=0.1)
    estimates = []
    for seed in range(2):
        r = bt.sample(_Identity(), _log_odds_classifier, target, num_chains=512, num_samples=5, warmup=2,
                      sigma=SIGMA, kernel="smc", seed=seed, progress=False)
        mass = r.level_set_mass()
        estimates += mass["runs"]
        assert r.log_evidence is not None and math.isfinite(r.log_evidence_se)
    est = np.mean(estimates)
    assert abs(est / truth - 1) < 0.2, (est, truth, estimates)


def test_next_temperature_keeps_the_conditional_ess_fraction():
    g = torch.Generator().manual_seed(0)
    ll = -10 * torch.rand(400, generator=g, dtype=torch.float64)
    log_w = torch.full((400,), -math.log(100), dtype=torch.float64)  # 4 runs of 100, uniform weights
    beta = torch.tensor([0.0, 0.5, 0.999, 1.0], dtype=torch.float64)
    delta = next_temperature(ll, log_w, beta, 4, 0.5)
    assert delta[3] == 0 and 0 < delta[0] < 1 and delta[2] == pytest.approx(0.001)
    w = (delta[0] * ll[:100]).exp()
    assert float(w.sum() ** 2 / w.square().sum() / 100) == pytest.approx(0.5, abs=1e-6)


def test_systematic_resampling_follows_the_weights_within_each_run():
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([0.7, 0.1, 0.2, 0.0] * 2, dtype=torch.float64)
    idx = systematic_resample(w.log(), 2, g)
    assert idx.shape == (8,) and (idx[:4] < 4).all() and (idx[4:] >= 4).all()
    assert 3 not in idx.tolist() and 7 not in idx.tolist()  # zero weight: never drawn
    counts = torch.bincount(systematic_resample(torch.log(torch.tensor([0.5, 0.25, 0.25] * 1000, dtype=torch.float64)
                                                         ), 1, g), minlength=3000)
    assert counts.sum() == 3000 and counts.max() <= 2  # systematic: each particle within one of its expectation


def test_smc_result_carries_its_records_through_save_and_load(tmp_path):
    r = bt.sample(_Identity(), _log_odds_classifier, "high:1", num_chains=64, num_samples=4, warmup=1, sigma=0.1,
                  kernel="smc", seed=0, progress=False)
    assert r.z.shape == (64, 4, 2) and r.info["kernel"] == "smc" and r.info["runs"] == 4
    stages = r.groups["smc"]["beta"]
    assert stages.shape[1] == 4 and (stages[-1] == 1).all() and (np.diff(stages, axis=0) >= 0).all()
    dt = r.to_datatree()
    assert "smc" in dt.children and "nested_r_hat" in r.summary().columns
    agreement = bt.diagnostics.run_agreement(r.to_datatree())  # 16 particles per run: either verdict is possible
    problems = " ".join(r.diagnose())
    if agreement["agree"]:
        assert "runs agree" in agreement["text"] and "independent runs" not in problems
    else:
        assert "runs DISAGREE" in agreement["text"] and agreement["text"] in problems
    r.save(tmp_path / "r.nc")
    back = bt.load(tmp_path / "r.nc")
    assert back.log_evidence == pytest.approx(r.log_evidence) and back.groups["smc"]["beta"].shape == stages.shape
    with pytest.raises(ValueError, match="runs"):
        bt.sample(_Identity(), _log_odds_classifier, "high:1", num_chains=30, num_samples=2, sigma=0.1,
                  kernel=SMC(runs=4), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [0, 5])
def test_evidence_of_high_confidence_on_the_digits_network_matches_a_million_prior_draws(cls):
    """log Z = log E_prior[L(z)] of ``high:C`` on the digits VAE + CNN, counted by 10^6 prior draws (relative standard
    error ~0.3%), against 2 x 4 independent SMC runs: their mean within 4 standard errors of the runs' own spread
    (plus the brute-force count's). ~3 min a class on one core."""
    vae, clf = bt.nets.pretrained("digits", progress=False)
    post = bt.Posterior(vae.decoder, clf, f"high:{cls}", sigma=SIGMA)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        ll = torch.cat([post.evaluate(torch.randn(8192, 5, generator=g))[1]["log_likelihood"].double()
                        for _ in range(123)])[:1_000_000]
    top = ll.max()
    w = (ll - top).exp()
    brute, brute_se = float(top + w.mean().log()), float(w.std() / w.mean() / math.sqrt(len(w)))
    runs = []
    for seed in range(2):
        r = bt.sample(vae.decoder, clf, f"high:{cls}", num_chains=256, num_samples=2, warmup=2, kernel="smc",
                      seed=seed, progress=False)
        runs += bt.diagnostics.evidence(r.to_datatree())["runs"]
    runs = np.asarray(runs)  # log Z of 8 independent runs of 64 particles; Z (not log Z) is unbiased, so pool Z
    pooled = float(np.logaddexp.reduce(runs) - np.log(len(runs)))
    se = math.hypot(float(np.exp(runs - pooled).std(ddof=1)) / math.sqrt(len(runs)), brute_se)  # delta method
    assert abs(pooled - brute) <= 4 * se, (runs, brute, brute_se)
    assert se < 0.2  # the check has teeth: the runs pin log Z to within ~0.8 nats
