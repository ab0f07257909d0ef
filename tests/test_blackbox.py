"""Gradient-free sampling: the elliptical slice kernel on known posteriors, and black-box classifiers."""

import numpy as np
import pytest
import torch
from checks import check_gaussian
from test_sampling import SIGMA, Identity, logistic, reference_moments

import bayestrex as bt
from bayestrex.driver import run
from bayestrex.kernels import Density, get


def test_slice_standard_normal_10d():
    # with a Density the prior is N(0, I): here the likelihood is flat and every draw is an exact prior draw
    z0 = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)) * 2
    draws = run(get("slice"), Density(lambda z: -0.5 * z.square().sum(-1), 10), z0,
                num_samples=400, warmup=100, seed=0, progress=False)
    check_gaussian(draws.z, torch.zeros(10), torch.ones(10), min_ess=8000)
    assert draws.info["grad_evals"] == 0 and draws.stats["n_steps"].min() >= 1


def _numpy_logistic(x: np.ndarray) -> np.ndarray:
    """The test_sampling classifier as a numpy black box returning probabilities."""
    p1 = 1 / (1 + np.exp(-(3 * x[:, 0] - 1)))
    return np.stack([1 - p1, p1], axis=-1)


def test_slice_with_a_numpy_black_box_matches_quadrature():
    clf = bt.BlackBox(_numpy_logistic)
    result = bt.sample(Identity(), clf, "high:1", num_chains=8, num_samples=500, warmup=100, sigma=SIGMA,
                       kernel="slice", seed=1, progress=False)
    mean0, sd0 = reference_moments()
    s = result.summary()
    for row, mean, sd in [("z[0]", mean0, sd0), ("z[1]", 0.0, 1.0)]:
        assert abs(s.loc[row, "mean"] - mean) < 4 * s.loc[row, "mcse_mean"], (row, s.loc[row].to_dict(), mean)
        assert abs(s.loc[row, "sd"] - sd) < 4 * s.loc[row, "mcse_sd"], (row, s.loc[row].to_dict(), sd)
    assert s["r_hat"].max() < 1.02 and clf.calls > 8 * 600


def test_gradient_kernels_refuse_a_black_box_and_name_the_alternatives():
    clf = bt.BlackBox(_numpy_logistic)
    for kernel in ("nuts", "hmc", "chees"):
        with pytest.raises(ValueError, match=r"has no gradients .* use a gradient-free kernel: 'mh', 'slice'"):
            bt.sample(Identity(), clf, "high:1", num_chains=2, num_samples=5, warmup=5, kernel=kernel,
                      progress=False)
    # a raw numpy function that cannot take a tensor needing gradients is detected the same way
    raw = lambda x: torch.as_tensor(np.log(_numpy_logistic(x.numpy())))  # noqa: E731
    assert not bt.Posterior(Identity(), raw, "high:1").differentiable
    assert bt.Posterior(Identity(), logistic, "high:1").differentiable


def test_black_box_checks_what_it_gets_back():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"must return probabilities \[N, K\] for N = 3"):
        bt.BlackBox(lambda a: np.ones((2, 2)) / 2)(x)
    with pytest.raises(ValueError, match="summing to 1"):
        bt.BlackBox(lambda a: np.full((3, 2), 0.7))(x)
    with pytest.raises(TypeError, match="needs a callable"):
        bt.BlackBox("model.pkl")
    flat = bt.BlackBox(lambda a: np.full((len(a), 2), 0.5) if a.shape == (3, 2) else None, input_shape=(-1,))
    assert flat(torch.zeros(3, 1, 2)).exp().allclose(torch.full((3, 2), 0.5))


def test_slice_same_seed_same_draws_and_sklearn_model():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    clf = bt.BlackBox(model.predict_proba)
    runs = [bt.sample(Identity(), clf, "high:1", num_chains=4, num_samples=50, warmup=20, kernel="slice", seed=3,
                      progress=False) for _ in range(2)]
    assert torch.equal(runs[0].z, runs[1].z)
    assert runs[0].attainment > 0.3 and float(runs[0].probs[..., 1].mean()) > 0.8


def _hard_logistic(x):
    """Class 1 needs x0 > 3 to pass 0.95: prior draws rarely start there."""
    return torch.stack([torch.zeros_like(x[:, 0]), 2.0 * (x[:, 0] - 3.0) + 5.9], dim=-1)


def test_evolution_strategy_reaches_the_target_and_counts_its_forward_passes():
    from bayestrex.blackbox import evolve

    clf = bt.BlackBox(lambda a: torch.softmax(_hard_logistic(torch.as_tensor(a)), -1).numpy())
    res = evolve(Identity(), clf, 1, population=20, survivors=5, seed=0)
    assert res.reached and res.confidence >= 0.95 and res.iterations >= 1
    assert res.forward_passes == 20 + res.iterations * 15 == clf.calls
    best = [c for _, c in res.history]
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))  # survivors are kept: the best never gets worse
    assert float(torch.softmax(_hard_logistic(res.z[None]), -1)[0, 1]) == pytest.approx(res.confidence, abs=1e-5)
    with pytest.raises(ValueError, match=r"survivors must be in \[1, population\)"):
        evolve(Identity(), clf, 1, population=5, survivors=5)
    with pytest.raises(ValueError, match="momentum"):
        evolve(Identity(), clf, 1, momentum=1.5)


def test_gradient_ascent_baseline_on_the_same_model():
    from bayestrex.blackbox import gradient_ascent

    res = gradient_ascent(Identity(), _hard_logistic, 1, lr=0.1, seed=0)
    assert res.reached and res.forward_passes == res.iterations + 1
    assert float(torch.softmax(_hard_logistic(res.z[None]), -1)[0, 1]) >= 0.95
