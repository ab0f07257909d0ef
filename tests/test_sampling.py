"""Sampling against a posterior whose answer is known independently (quadrature), and the Result container."""

import math

import numpy as np
import pytest
import torch
from checks import check_mean

import bayestrex as bt

SIGMA = 0.2


class Identity(torch.nn.Module):
    latent_dim = 2

    def forward(self, z):
        return z


def logistic(x):
    """Two-class logistic classifier on the first coordinate: p1 = sigmoid(3 x0 - 1)."""
    return torch.stack([torch.zeros_like(x[:, 0]), 3.0 * x[:, 0] - 1.0], dim=-1)


def reference_moments():
    """Mean and sd of z0 under N(z0; 0, 1) N(1; sigmoid(3 z0 - 1), SIGMA), by quadrature; z1 stays N(0, 1)."""
    z = np.linspace(-8, 8, 160001)
    p1 = 1 / (1 + np.exp(-(3 * z - 1)))
    logw = -0.5 * z**2 - 0.5 * ((1 - p1) / SIGMA) ** 2
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = (w * z).sum()
    return mean, math.sqrt((w * (z - mean) ** 2).sum())


@pytest.fixture(scope="module", params=["nuts", "nuts-plate", "hmc", "chees", "slice"])
def result(request):
    return bt.sample(Identity(), logistic, "high:1", num_chains=4, num_samples=400, warmup=300, sigma=SIGMA,
                     kernel=request.param, seed=1, progress=False)


def test_moments_match_quadrature(result):
    # tolerances from the true variance and a required ESS of 400 (a quarter of the 1600 draws), not from MCSE
    mean0, sd0 = reference_moments()
    z = result.z
    check_mean(z, [mean0, 0.0], [sd0**2, 1.0], min_ess=400, max_rhat=1.02)
    # second moments about the truth: Var((z - m)²) = 2 sd⁴ for the Gaussian z1, <= 3 sd⁴ for the skewed z0
    dev = torch.stack([(z[..., 0] - mean0) ** 2, z[..., 1] ** 2], -1)
    check_mean(dev, [sd0**2, 1.0], [3 * sd0**4, 2.0], min_ess=400, max_rhat=1.02)


def test_result_shapes_and_datatree(result):
    assert result.z.shape == (4, 400, 2) and result.probs.shape == (4, 400, 2) and result.u.shape == (4, 400, 1)
    assert torch.allclose(result.probs.sum(-1), torch.ones(4, 400))
    dt = result.to_datatree()
    assert set(dt.children) >= {"posterior", "sample_stats", "constant_data"}
    assert set(dt["posterior"].data_vars) == {"z", "u", "probs"}
    stats = set(dt["sample_stats"].data_vars)
    if result.info["kernel"] == "slice":  # no step size or Hamiltonian energy; n_steps = likelihood evaluations
        assert stats == {"diverging", "acceptance_rate", "n_steps"}
    elif result.info["kernel"].startswith("nuts"):  # Pyro's public API has no per-draw acceptance probability
        assert stats == {"diverging", "step_size", "tree_depth", "n_steps", "energy"}
    else:
        assert {"diverging", "acceptance_rate", "step_size", "n_steps", "energy"} <= stats
    assert dt["sample_stats"]["diverging"].dtype == bool
    if "acceptance_rate" in stats:
        acc = dt["sample_stats"]["acceptance_rate"].values
        assert ((acc >= 0) & (acc <= 1)).all() and acc.mean() > 0.5
    # the probabilities of every draw come from the sampling pass itself, and match a fresh evaluation
    fresh = torch.softmax(logistic(result.z.reshape(-1, 2)), -1).reshape(result.probs.shape)
    assert torch.allclose(result.probs, fresh, atol=1e-5)
    assert set(dt["log_likelihood"].data_vars) == {"u"}
    assert (dt["sample_stats"]["n_steps"].values >= 1).all()


def test_summary_has_diagnostics_and_attainment(result):
    s = result.summary()
    assert {"r_hat", "ess_bulk", "ess_tail", "target", "within_tol"} <= set(s.columns)
    rate = result.attained.float().mean().item()
    assert s.loc["attainment", "mean"] == pytest.approx(rate)
    assert s.loc["u[p1]", "target"] == 1.0
    if result.info["kernel"] == "slice":
        assert result.bfmi() is None  # E-BFMI is a Hamiltonian diagnostic
    else:
        assert result.bfmi() is not None and len(result.bfmi()) == 4


def test_save_and_load_round_trip(result, tmp_path):
    path = tmp_path / "sub" / "r.nc"
    result.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["r.nc"]  # no temporary file left behind
    back = bt.load(path)
    assert torch.equal(back.z, result.z) and torch.equal(back.probs, result.probs) and torch.equal(back.u, result.u)
    assert back.target_spec == "high:1" and repr(back.target) == "high:1" and back.sigma == SIGMA
    assert back.statistic_names == ["p1"] and torch.equal(back.log_likelihood, result.log_likelihood)
    assert torch.equal(back.stats["diverging"], result.stats["diverging"])
    assert back.attainment == result.attainment
    with pytest.raises(ValueError, match="needs the generator"):
        back.images()
    assert back.images(Identity()).shape == (4, 400, 2)


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.nc"
    bad.write_bytes(b"not a netcdf file")
    with pytest.raises(ValueError, match="not a bayestrex result file"):
        bt.load(bad)
    with pytest.raises(FileNotFoundError):
        bt.load(tmp_path / "missing.nc")


def test_same_seed_same_draws():
    kw = dict(num_chains=2, num_samples=20, warmup=20, sigma=SIGMA, seed=5, progress=False)
    a = bt.sample(Identity(), logistic, "high:1", **kw)
    b = bt.sample(Identity(), logistic, "high:1", **kw)
    c = bt.sample(Identity(), logistic, "high:1", **{**kw, "seed": 6})
    assert torch.equal(a.z, b.z)
    assert not torch.equal(a.z, c.z)


def _flaky(fail_at: int):
    """The identity generator, raising once, on its ``fail_at``-th call."""
    calls = {"n": 0}

    def flaky(z):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("simulated generator failure")
        return z

    return flaky


def test_a_failing_chain_is_reported_not_dropped():
    # nuts runs each chain on its own: the chain that meets the failure stops; the others go on
    with pytest.warns(RuntimeWarning, match=r"chain \d failed and holds NaN draws from iteration \d+"):
        r = bt.sample(_flaky(400), logistic, "high:1", latent_dim=2, num_chains=3, num_samples=30, warmup=30,
                      sigma=SIGMA, progress=False, init=torch.full((3, 2), 0.5))  # init: no generator calls before
    assert len(r.failed_chains) == 1
    (bad,) = r.failed_chains
    assert "simulated generator failure" in r.failed_chains[bad]
    healthy = [c for c in range(3) if c != bad]
    assert torch.isfinite(r.z[healthy]).all() and torch.isnan(r.z[bad, -1]).all()
    assert any("failed chains" in f for f in r.diagnose())
    assert np.isfinite(r.summary().loc["z[0]", "mean"])  # computed over the healthy chains


@pytest.mark.parametrize("kernel", ["chees", "slice"])
def test_a_failure_inside_a_batched_kernel_keeps_the_draws_so_far(kernel):
    kw = dict(latent_dim=2, num_chains=4, num_samples=40, warmup=20, sigma=SIGMA, progress=False, kernel=kernel,
              init=torch.full((4, 2), 0.5))
    full = bt.sample(lambda z: z, logistic, "high:1", **kw)
    calls = full.info["grad_calls" if kernel == "chees" else "likelihood_calls"]
    with pytest.warns(bt.driver.SamplingStopped, match=r"stopped after \d+ of 40 draws .*simulated generator"):
        r = bt.sample(_flaky(int(0.8 * calls)), logistic, "high:1", **kw)
    assert 0 < r.num_draws < 40 and r.stopped.startswith("RuntimeError: simulated generator failure")
    assert torch.equal(r.z, full.z[:, : r.num_draws])  # the draws before the failure, exactly as an unbroken run
    assert torch.equal(r.probs, full.probs[:, : r.num_draws])
    assert any(f.startswith("partial run") for f in r.diagnose())
    assert "stopped=" in repr(r)


def test_a_stuck_chain_is_reported_by_index_and_kept(result):
    z = result.z.clone()
    z[1] = z[1, :1]  # chain 1 never moves
    stuck = bt.Result(z=z, probs=result.probs, u=result.u, stats=result.stats, target=result.target,
                      target_value=result.target_value, statistic_names=result.statistic_names,
                      tolerance=result.tolerance, sigma=result.sigma)
    assert stuck.stuck_chains == [1] and result.stuck_chains == []
    assert "stuck chains (no draw moved): [1]" in stuck.diagnose()
    assert bt.diagnostics.overview(stuck)["stuck_chains"] == 1
    assert stuck.attainment == result.attainment  # kept in attainment, flagged instead of dropped


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_chains=0), "num_chains must be an integer >= 1"),
        (dict(num_samples=2.5), "num_samples must be an integer"),
        (dict(warmup=-1), "warmup must be an integer >= 0"),
        (dict(kernel="metropolis"), "unknown kernel 'metropolis'"),
        (dict(init=torch.zeros(3, 2)), r"init must have shape \[num_chains, latent_dim\] = \[4, 2\]"),
        (dict(sigma=-1.0), "sigma must be a positive finite number"),
        (dict(sigma=0.0), "sigma=0 is the level set itself.*use kernel='constrained'"),
        (dict(target="high:2"), "class index 2 is out of range for a classifier with 2 classes"),
    ],
)
def test_bad_arguments(kwargs, message):
    kw = dict(target="high:1", num_chains=4, num_samples=5, warmup=5, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        bt.sample(Identity(), logistic, kw.pop("target"), **kw)


def test_sample_runs_on_one_thread_by_default_puts_it_back_and_shows_starting_point_progress(capsys):
    torch.manual_seed(0)
    seen = []

    class Recording(torch.nn.Module):
        latent_dim = 2

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 3)

        def forward(self, z):
            seen.append(torch.get_num_threads())
            return self.lin(z)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bt.sample(Recording(), torch.nn.Identity(), "high:0", num_chains=4, num_samples=3, warmup=3, kernel="chees",
                  progress=True)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        assert "starting points" in capsys.readouterr().err
        seen.clear()
        bt.sample(Recording(), torch.nn.Identity(), "high:0", num_chains=4, num_samples=3, warmup=3, kernel="chees",
                  progress=False, threads=None)
        assert set(seen) == {2}
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            bt.sample(Recording(), torch.nn.Identity(), "high:0", threads=0)
    finally:
        torch.set_num_threads(before)
