import math

import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from bayestrex import Posterior


class Linear2(nn.Module):
    """A linear generator z -> x = A z and a 3-class linear classifier on x (logits W x + b)."""

    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[1.0, 0.5], [-0.3, 2.0]]), requires_grad=False)

    def forward(self, z):
        return z @ self.A.T


def classifier(x):
    return x @ torch.tensor([[2.0, 0.0], [0.0, 1.5], [-1.0, -1.0]]).T + torch.tensor([0.0, 0.2, -0.1])


def test_log_density_by_hand():
    post = Posterior(Linear2(), classifier, "high:1", sigma=0.1)
    z = torch.tensor([[0.3, -0.7], [1.0, 2.0]])
    p = torch.softmax(classifier(z @ post.generator.A.T), -1)
    want = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1) + (
        -0.5 * ((1.0 - p[:, 1]) / 0.1) ** 2 - math.log(0.1) - 0.5 * math.log(2 * math.pi)
    )
    assert torch.allclose(post.log_density(z), want, atol=1e-5)


@pytest.mark.parametrize("target", ["high:1", "ambiguous:0,1", "uniform", "graded:0,2,0.3"])
def test_log_density_equals_the_pyro_model(target):
    post = Posterior(Linear2(), classifier, target, sigma=0.07, prior_loc=0.2, prior_scale=1.5)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    tr = poutine.trace(poutine.condition(post.pyro_model(num_chains=5), data={"z": z})).get_trace()
    per_chain = sum(site["fn"].log_prob(site["value"]) for site in tr.nodes.values() if site["type"] == "sample")
    assert per_chain.shape == (5,)
    assert torch.allclose(per_chain, post.log_density(z), atol=1e-4)


def test_potential_and_grad_is_batched_per_chain():
    post = Posterior(Linear2(), classifier, "ambiguous:0,1")
    z = torch.randn(4, 2)
    pe, g, aux = post.potential_and_grad(z)
    for c in range(4):
        zc = z[c : c + 1].clone().requires_grad_(True)
        (gc,) = torch.autograd.grad(-post.log_density(zc).sum(), zc)
        assert torch.allclose(g[c], gc[0], atol=1e-5)
        assert torch.allclose(pe[c], -post.log_density(z[c : c + 1])[0])


def test_initial_points_are_distinct_and_near_the_target():
    post = Posterior(Linear2(), classifier, "high:0", sigma=0.05)
    z0 = post.initial_points(8, seed=3)
    assert z0.shape == (8, 2) and len({tuple(r) for r in z0.tolist()}) == 8
    prior_draws = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    assert post.log_density(z0).mean() > post.log_density(prior_draws).mean()
    assert torch.equal(z0, post.initial_points(8, seed=3))
    # the Adam polish moves the pool toward the level set: higher density than the raw likelihood-weighted draws
    raw = post.initial_points(8, seed=3, optimize_steps=0)
    assert post.log_density(z0).mean() > post.log_density(raw).mean()


# -- bad input: one clear error naming the argument --------------------------------------------------------------
@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])  # 0 is the level set (constrained kernel)
def test_sigma_must_be_positive(sigma):
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        Posterior(Linear2(), classifier, "high:0", sigma=sigma)


def test_class_index_out_of_range_names_K():
    with pytest.raises(ValueError, match="class index 5 is out of range for a classifier with 3 classes"):
        Posterior(Linear2(), classifier, "high:5")


def test_nan_from_the_generator():
    with pytest.raises(ValueError, match="generator returned NaN or inf"):
        Posterior(lambda z: z / 0.0 * 0.0, classifier, "high:0", latent_dim=2)


def test_probabilities_instead_of_logits_are_refused():
    with pytest.raises(ValueError, match="appears to return probabilities.*logits are expected"):
        Posterior(Linear2(), lambda x: torch.softmax(classifier(x), -1), "high:0")
    # the escape hatch is documented in the message and works
    Posterior(Linear2(), lambda x: torch.softmax(classifier(x), -1), "high:0", check_logits=False)


def test_classifier_output_shape():
    with pytest.raises(ValueError, match=r"logits of shape \[N, K\]"):
        Posterior(Linear2(), lambda x: x.sum(-1), "high:0")


def test_latent_dim_required():
    with pytest.raises(ValueError, match="latent_dim is required"):
        Posterior(lambda z: z, classifier, "high:0")


def test_device_mismatch_between_models_and_device():
    gen = Linear2().to("meta")
    with pytest.raises(ValueError, match="device mismatch: device='cpu' but the generator's parameters are on meta"):
        Posterior(gen, classifier, "high:0", device="cpu")
    clf = nn.Linear(2, 3)
    with pytest.raises(ValueError, match="device mismatch: generator is on meta but classifier is on cpu"):
        Posterior(gen, clf, "high:0")
