"""Metropolis-Hastings with user moves on a mixed discrete/continuous posterior with a known answer, and the
procedural scene distribution."""

import math

import pytest
import torch
from checks import check_gaussian, check_mean

import bayestrex as bt
from bayestrex.driver import run
from bayestrex.kernels import Density
from bayestrex.kernels.mh import MetropolisHastings
from bayestrex.scenes import ScenePrior, SceneRenderer, count


def mixed_log_density(z):
    """k in {0, 1, 2} with weights (1, 2, 3); x | k ~ prior N(0, 1) times likelihood N(x; k, 0.5²)."""
    k, x = z[:, 0], z[:, 1]
    ok = (k == k.round()) & (k >= 0) & (k <= 2)
    w = torch.log(k.clamp(0, 2) + 1)
    lp = w - 0.5 * x.square() - 0.5 * ((x - k) / 0.5).square()
    return torch.where(ok, lp, torch.full_like(lp, -math.inf))


def mixed_move(z, g):
    k = torch.where(torch.rand(len(z), generator=g) < 0.3, torch.randint(3, (len(z),), generator=g).float(), z[:, 0])
    x = z[:, 1] + 0.7 * torch.randn(len(z), generator=g)
    return torch.stack([k, x], -1), torch.zeros(len(z))


def test_mh_mixed_discrete_continuous_matches_the_exact_answer():
    # exact: p(k) ∝ w_k N(k; 0, 1.25); E[x | k] = 0.8 k
    w = torch.tensor([1.0, 2.0, 3.0]) * torch.exp(-0.5 * torch.tensor([0.0, 1.0, 4.0]) / 1.25)
    pk = w / w.sum()
    z0 = torch.stack([torch.randint(3, (16,), generator=torch.Generator().manual_seed(0)).float(),
                      torch.zeros(16)], -1)
    draws = run(MetropolisHastings(mixed_move), Density(mixed_log_density, 2), z0, num_samples=5000, warmup=500,
                                               seed=0, progress=False)
    k, x = draws.z[..., 0], draws.z[..., 1]
    onehot = torch.stack([(k == j).float() for j in range(3)], -1)
    check_mean(onehot, pk, pk * (1 - pk), min_ess=800)  # indicator means = P(k), variances p(1 - p)
    # x | k ~ N(0.8 k, 0.2): posterior precision 1 + 1/0.25 = 5
    ex = (0.8 * torch.arange(3.0) * pk).sum()
    ex2 = ((0.8 * torch.arange(3.0)) ** 2 + 0.2).mul(pk).sum()
    check_mean(x[..., None], ex[None], (ex2 - ex**2)[None], min_ess=800)
    assert draws.info["grad_evals"] == 0 and 0 < draws.stats["accepted"].float().mean() < 1


def test_mh_random_walk_tunes_itself_on_a_gaussian():
    z0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    draws = run(MetropolisHastings(), Density(lambda z: -0.5 * (z / 2).square().sum(-1), 3), z0, num_samples=3000,
                                     warmup=1000, seed=1, progress=False)
    check_gaussian(draws.z, torch.zeros(3), torch.full((3,), 4.0), min_ess=1000)
    assert 0.15 < draws.stats["acceptance_rate"].mean() < 0.45


def test_scene_prior_renderer_and_moves():
    prior = ScenePrior(objects=4, shapes=(1, 2))  # squares and triangles only
    z = prior.sample(64, torch.Generator().manual_seed(0))
    assert z.shape == (64, 24) and (prior.log_prob(z) == 0).all() and (count(z) == 0).all()
    images = SceneRenderer(objects=4)(z)
    assert images.shape == (64, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert (images.flatten(1).amax(1) > 0).all()  # every scene shows something
    moved, log_q = prior.propose(z, torch.Generator().manual_seed(1))
    assert (log_q == 0).all() and not torch.equal(moved, z)
    assert (count(moved) == 0).all()  # a move never brings a circle into a circle-free prior
    bad = z.clone()
    bad[0, 3] = 0.99  # off the canvas range
    bad[1, 0] = 0.0  # a circle
    bad[2, 1] = 1.5  # not a colour index
    assert prior.log_prob(bad)[:3].eq(-math.inf).all() and prior.log_prob(bad)[3:].eq(0).all()
    one = torch.tensor([[0.0, 0, 1, 0.5, 0.5, 0.0]])  # a large circle in the middle
    img = SceneRenderer(objects=1)(one)
    r_px = 0.15 * 32
    assert img[0, 0].gt(0).sum().item() == pytest.approx(math.pi * r_px**2, rel=0.15)
    with pytest.raises(ValueError, match="shapes must be indices"):
        ScenePrior(shapes=(3,))


def test_mh_samples_a_custom_prior_posterior_through_the_renderer():
    prior, render = ScenePrior(objects=2), SceneRenderer(objects=2)

    def redness(x):  # a black-box "classifier": logits of (not red, red) from the share of red pixels
        red = ((x[:, 0] > 0.8) & (x[:, 1] < 0.3)).float().mean((1, 2))
        return torch.stack([torch.zeros_like(red), 60 * (red - 0.05)], -1)

    result = bt.sample(render, redness, "high:1", prior=prior, kernel="mh", num_chains=8, num_samples=200,
                       warmup=200, seed=0, progress=False)
    assert result.z.shape == (8, 200, 12) and result.attainment > 0.5
    colours = result.z[..., [1, 7]].round()
    assert (colours == 0).any(-1).float().mean() > 0.9  # red (colour 0) objects appear in nearly every draw
    with pytest.raises(ValueError, match="has no gradients"):
        bt.sample(render, redness, "high:1", prior=prior, kernel="chees", num_chains=2, progress=False)
    with pytest.raises(ValueError, match="needs the Gaussian prior"):
        bt.sample(render, redness, "high:1", prior=prior, kernel="slice", num_chains=2, progress=False)
