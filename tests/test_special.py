"""xGEMs and CDeepEx as special cases of the posterior, on a 2-D latent model whose answers are known by hand.

Generator: the identity on R². Classifier: linear logits (z_x, -z_x, a z_y + b). Then llh(0) - llh(1) = 2 z_x, so
the 0/1 boundary is the line z_x = 0, and class 2 beats both there where a z_y + b > 0.
"""

import math

import pytest
import torch
from torch import nn

import bayestrex as bt
from bayestrex import special
from bayestrex.targets import Boundary


class Identity(nn.Module):
    latent_dim = 2

    def forward(self, z):
        return z.clone()


def linear_classifier(a=2.0, b=-1.0):
    clf = nn.Linear(2, 3)
    with torch.no_grad():
        clf.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, a]]))
        clf.bias.copy_(torch.tensor([0.0, 0.0, b]))
    return clf.requires_grad_(False)


def test_boundary_statistic_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    u = Boundary(0, 1).statistic(p)
    assert u[0, 0] == pytest.approx(math.log(0.5 / 0.3), rel=1e-5) and u[0, 1] == 0  # third class below both
    assert u[1, 0] == pytest.approx(0, abs=1e-6) and u[1, 1] == pytest.approx(math.log(0.6 / 0.2), rel=1e-5)
    h, g = Boundary(0, 1, margin=0.1).constraints(p)
    assert g.shape == (2, 2) and g[0].tolist() == pytest.approx([0.1 - math.log(0.5 / 0.2), 0.1 - math.log(0.3 / 0.2)])
    assert str(bt.targets.parse("boundary:3,8,0.5")) == "boundary:3,8,0.5"
    with pytest.raises(ValueError, match="boundary target needs two different classes"):
        Boundary(2, 2)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        Boundary(0, 1, margin=-1)


def test_augmented_lagrangian_update_by_hand():
    h, h_prev = torch.tensor([0.5, 0.1]), torch.tensor([1.0, 1.0])
    g = torch.tensor([[0.2, -3.0], [-0.1, 0.4]])
    lam, mu, c = torch.tensor([1.0, -1.0]), torch.tensor([[0.0, 0.5], [1.0, 0.0]]), torch.tensor([1.0, 2.0])
    lam2, mu2, c2 = special.al_update(h, g, h_prev, lam, mu, c, beta=1.01, gamma=0.24)
    assert lam2.tolist() == pytest.approx([1.5, -0.8])                  # λ + c h
    assert mu2.flatten().tolist() == pytest.approx([0.2, 0.0, 0.8, 0.8])  # max(0, μ + c g)
    assert c2.tolist() == pytest.approx([1.01, 2.0])                    # |0.5| > 0.24 |1| grows; |0.1| < 0.24 keeps


def test_cdeepex_projects_onto_the_boundary_when_no_third_class_intrudes():
    clf = linear_classifier(a=2.0, b=-3.0)  # class 2 wins only where z_y > 1.5
    z0 = torch.tensor([[1.5, 0.2], [-0.8, -1.0]])
    res = special.cdeepex(Identity(), clf, z0, 0, 1, z0=z0, delta=torch.zeros(2, 2), outer=60, inner=40, lr=0.02)
    assert res.converged.all()
    assert res.z.flatten().tolist() == pytest.approx([0.0, 0.2, 0.0, -1.0], abs=0.02)  # the orthogonal projection


def test_cdeepex_keeps_a_third_class_out_and_the_small_sigma_map_lands_there():
    clf = linear_classifier(a=2.0, b=-1.0)  # class 2 beats 0 and 1 on the boundary where 2 z_y - 1 > 0
    z0 = torch.tensor([[1.5, 2.0]])
    res = special.cdeepex(Identity(), clf, z0, 0, 1, z0=z0, delta=torch.zeros(1, 2), outer=100, inner=40, lr=0.02)
    assert res.converged.all() and res.probs.argmax(-1).item() in (0, 1)
    assert res.z[0].tolist() == pytest.approx([0.0, 0.5], abs=0.03)  # closest boundary point with z_y <= 0.5
    # the projection that ignores the inequalities would be (0, 2), where class 2 is the most probable
    assert clf(torch.tensor([[0.0, 2.0]])).argmax().item() == 2
    # CDeepEx is the sigma -> 0 limit of the Boundary posterior with a proximity prior: its MAP lands there too
    post = bt.Posterior(Identity(), clf, Boundary(0, 1), sigma=0.01, prior_loc=z0, prior_scale=1.0)
    z_map = special.posterior_map(post, z0, steps=3000, lr=0.01)
    assert z_map[0].tolist() == pytest.approx(res.z[0].tolist(), abs=0.03)
    # a wide sigma does not: the relaxation lets the code stay nearer z0
    loose = special.posterior_map(bt.Posterior(Identity(), clf, Boundary(0, 1), sigma=1.0, prior_loc=z0), z0,
                                  steps=3000, lr=0.01)
    assert (loose[0] - res.z[0]).norm() > 0.2


def test_xgems_walks_until_the_label_switches_and_fits_the_confidence_manifold():
    clf = linear_classifier(a=0.0, b=-20.0)  # effectively two classes: p1 = sigmoid(-2 z_x)
    z0 = torch.tensor([[1.5, 0.3], [0.8, -0.4]])
    res = special.xgems(Identity(), clf, z0, 1, z0=z0, delta=torch.zeros(2, 2), step=0.01, sigma=0.05,
                        prior_scale=10.0, until=0.99)
    assert res.switched.all() and (res.probs.argmax(-1) == 1).all()
    assert res.z[:, 0].abs().max() < 0.02  # the switch is at the boundary z_x = 0 ...
    assert res.z[:, 1].tolist() == pytest.approx(z0[:, 1].tolist(), abs=0.05)  # ... reached straight along x
    # along the path p1 = sigmoid(2 (d - z0_x)): steepness 2, midpoint at the starting distance to the boundary
    assert res.steepness.tolist() == pytest.approx([2.0, 2.0], rel=0.1)
    assert res.midpoint.tolist() == pytest.approx([1.5, 0.8], abs=0.05)
    d = res.path.distance
    assert (d[1:] - d[:-1] >= -1e-6).all()  # the walk moves away from z0


def test_inversion_without_an_encoder_keeps_the_residual():
    gen = nn.Sequential(nn.Linear(2, 6), nn.Tanh())
    gen.latent_dim = 2
    gen.requires_grad_(False)
    x = gen(torch.tensor([[0.3, -0.5]])) + 0.01  # almost in the range of G
    z0, delta = special.invert(gen, x, steps=400, lr=0.05)
    assert (gen(z0) - x - delta).abs().max() < 1e-6  # Residual(G, delta)(z0) == x exactly
    assert special.Residual(gen, delta)(z0).sub(x).abs().max() < 1e-6
    assert delta.abs().max() < 0.05
    with pytest.raises(ValueError, match="x contains NaN"):
        special.invert(gen, torch.full((1, 6), float("nan")))


def test_boundary_samples_stay_near_each_input_and_on_the_boundary():
    clf = linear_classifier(a=2.0, b=-3.0)
    z0 = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    result, delta = special.boundary_samples(Identity(), clf, z0, 0, 1, z0=z0, delta=torch.zeros(2, 2),
                                             prior_scale=0.5, sigma=0.05, chains_per_input=4, num_samples=200,
                                             warmup=200, kernel="chees", progress=False, seed=1)
    z = result.z  # [8, 200, 2]: chains 0-3 belong to input 0, 4-7 to input 1
    assert z.shape == (8, 200, 2)

    def reference_mean_y(x0, y0, s=0.5, sigma=0.05):
        # quadrature of the exact density: prior N(z0, s²I), h = l0 - l1 = 2x, violation = max(0, 2y - 3 + |x|)
        x, y = torch.meshgrid(torch.linspace(-0.3, 0.3, 601, dtype=torch.float64),
                              torch.linspace(-2.5, 3.5, 1201, dtype=torch.float64), indexing="ij")
        logp = (-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s**2) - (2 * x) ** 2 / (2 * sigma**2)
                - (2 * y - 3 + x.abs()).clamp_min(0) ** 2 / (2 * sigma**2))
        w = (logp - logp.max()).exp()
        return float((w * y).sum() / w.sum())

    assert z[:, :, 0].abs().mean() < 0.05  # on the 0/1 boundary
    for rows, (x0, y0) in ((slice(0, 4), (1.0, 0.0)), (slice(4, 8), (-1.0, 1.0))):
        ref = reference_mean_y(x0, y0)  # 0.0 for the first input; ~0.86 for the second (class 2 cuts off z_y > 1.5)
        assert z[rows, :, 1].mean() == pytest.approx(ref, abs=0.1)
    assert reference_mean_y(-1.0, 1.0) < 0.9
    images = special.chain_images(result, Identity(), delta)
    assert torch.allclose(images, z)


def test_per_chain_prior_centres_are_checked():
    clf = linear_classifier()
    post = bt.Posterior(Identity(), clf, "high:0", prior_loc=torch.zeros(3, 2))
    assert post.log_prior(torch.zeros(3, 2)).shape == (3,)
    with pytest.raises(ValueError, match="per-chain prior_loc pass init="):
        post.initial_points(3)
    with pytest.raises(ValueError, match=r"prior_loc must have shape \[latent_dim\] or \[num_chains, latent_dim\]"):
        bt.Posterior(Identity(), clf, "high:0", prior_loc=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="3 codes but 2 residuals"):
        special.Residual(Identity(), torch.zeros(2, 2))(torch.zeros(3, 2))
