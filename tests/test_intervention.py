"""Interventions on a hidden layer's discrete codes (bayestrex.intervention), split and the discrete VAE, with known
answers: a planted binary concept that the intervention must find and flip, and the exact posterior of a hand-built
discrete VAE by enumeration."""

import itertools
import json
import math

import pytest
import torch
from torch import nn

import bayestrex as bt
from bayestrex import intervention as iv
from bayestrex.nets import DiscreteVAE, Explainer


# -- split ------------------------------------------------------------------------------------------------------------
def test_split_reproduces_the_zoo_cnn_and_an_mlp_at_indices_and_names():
    clf = bt.nets.get("digits", "classifier")
    x = bt.data.load("digits", "test")[0][:16]
    for layer in (-2, 7, "7", "net.7", 0, "net.5"):
        g, h = bt.nets.split(clf, layer)
        assert torch.allclose(h(g(x)), clf(x), atol=1e-5)
    g, h = bt.nets.split(clf, -2)
    assert g(x).shape == (16, 64) and len(h) == 1 and h[0] is clf.net[-1]  # shares the parameters
    mlp = bt.nets.MLP((1, 8, 8), 10, hidden=32, depth=2)
    g, h = bt.nets.split(mlp, -2)
    assert g(x).shape == (16, 32) and torch.allclose(h(g(x)), mlp(x))
    named = nn.Sequential(__import__("collections").OrderedDict(flat=nn.Flatten(), fc=nn.Linear(64, 5),
                                                                act=nn.ReLU(), out=nn.Linear(5, 3)))
    g, h = bt.nets.split(named, "act")
    assert [type(m) for m in h] == [nn.Linear] and torch.allclose(h(g(x)), named(x))
    assert bt.nets.layers(named)[2] == "2: act (ReLU)"


def test_split_refuses_what_it_cannot_split_with_one_clear_error():
    clf = bt.nets.get("digits", "classifier")
    with pytest.raises(ValueError, match="last layer"):
        bt.nets.split(clf, -1)
    with pytest.raises(ValueError, match="out of range"):
        bt.nets.split(clf, 9)
    with pytest.raises(ValueError, match="not a layer.*net.0"):
        bt.nets.split(clf, "fc")
    with pytest.raises(ValueError, match="layer must be a layer index or name"):
        bt.nets.split(clf, 1.5)

    class Residual(nn.Module):  # a `net` that is not its whole forward
        def __init__(self):
            super().__init__()
            self.config = dict(image_shape=[1, 8, 8])
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x) + x.flatten(1)[:, :3]

    with pytest.raises(ValueError, match="not just its layers"):
        bt.nets.split(Residual(), 1)
    with pytest.raises(ValueError, match="nn.Sequential"):
        bt.nets.split(lambda x: x, 0)


# -- the discrete VAE -------------------------------------------------------------------------------------------------
def test_discrete_vae_codes_decode_and_checkpoints_round_trip(tmp_path):
    dvae = DiscreteVAE((4, 3), num_latents=5, num_values=6, hidden=16)
    a = torch.randn(7, 4, 3)
    codes = dvae.encode(a)
    assert codes.shape == (7, 5) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 6
    assert dvae.decode(codes).shape == (7, 4, 3) and torch.equal(dvae.decode(codes.float()), dvae.decode(codes))
    with pytest.raises(ValueError, match=r"codes must be integers in \[0, 5\]"):
        dvae.decode(codes + 6)
    with pytest.raises(ValueError, match=r"codes must have shape \[N, 5\]"):
        dvae.decode(codes[:, :3])
    expl = Explainer((4, 3), (1, 2, 2), hidden=8)
    for model in (dvae, expl):
        bt.nets.save(model, tmp_path / f"{type(model).__name__}.pt")
        back = bt.nets.load(tmp_path / f"{type(model).__name__}.pt")
        assert type(back) is type(model) and back.config == model.config
        assert all(torch.equal(p, q) for p, q in zip(back.state_dict().values(), model.state_dict().values()))


# -- a hand-built discrete VAE: the exact posterior by enumeration ----------------------------------------------------
K, M, CONCEPT, ON = 4, 3, 2, 2  # latent 2 carries the concept: on when its value is 2


def _hand_built():
    """Decoder: the one-hot codes themselves (activations [K * M]); head: class 1 iff latent CONCEPT has value ON."""
    dvae = DiscreteVAE((K * M,), num_latents=K, num_values=M, depth=0)
    with torch.no_grad():
        dvae.decoder[0].weight.copy_(torch.eye(K * M))
        dvae.decoder[0].bias.zero_()
    head = nn.Linear(K * M, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, CONCEPT * M + ON] = 20.0
        head.bias[1] = -10.0
    return dvae.requires_grad_(False), head.requires_grad_(False)


def test_hamming_prior_is_normalised_and_its_single_site_move_is_symmetric():
    prior = iv.HammingPrior(torch.tensor([0, 1, 0, 2]), M, flip_prob=0.2)
    every = torch.tensor(list(itertools.product(range(M), repeat=K)), dtype=torch.float32)
    assert math.isclose(float(prior.log_prob(every).exp().sum()), 1.0, rel_tol=1e-5)
    assert prior.penalty == pytest.approx(math.log(2 * 0.8 / 0.2))
    assert prior.log_prob(torch.tensor([[0.5, 1, 0, 2], [3.0, 1, 0, 2]])).isinf().all()
    draws = prior.sample(20_000, torch.Generator().manual_seed(0))
    assert (draws != prior.center).float().mean().item() == pytest.approx(0.2, abs=0.01)
    z = prior.sample(5000, torch.Generator().manual_seed(1))
    new, log_q = prior.propose(z, torch.Generator().manual_seed(2))
    assert torch.equal((new != z).sum(-1), torch.ones(5000, dtype=torch.long)) and (log_q == 0).all()
    with pytest.raises(ValueError, match="flip_prob"):
        iv.HammingPrior(torch.tensor([0, 1]), M, flip_prob=1.0)
    with pytest.raises(ValueError, match="center must hold integers"):
        iv.HammingPrior(torch.tensor([0, 3]), M)


@pytest.mark.parametrize("move", ["gibbs", "uniform"])
def test_sampled_interventions_match_the_exact_posterior_of_a_hand_built_discrete_vae(move):
    dvae, head = _hand_built()
    codes, q, sigma = torch.tensor([0, 1, 0, 2]), 0.2, 0.05
    res = iv.intervene(dvae, head, codes, 1, flip_prob=q, sigma=sigma, num_chains=8, num_samples=1200, warmup=100,
                       seed=3, move=move)
    # the exact posterior over all M^K codes
    every = torch.tensor(list(itertools.product(range(M), repeat=K)), dtype=torch.float32)
    post = bt.Posterior(iv.CodeDecoder(dvae), head, "high:1,log", sigma=sigma, prior=iv.HammingPrior(codes, M, q))
    weights = post.log_density(every).softmax(0)
    exact = ((every != codes).float() * weights[:, None]).sum(0)
    assert exact[CONCEPT] > 0.999 and torch.allclose(exact[[0, 1, 3]], torch.full((3,), q), atol=1e-4)
    assert res.reached.float().mean() > 0.99
    assert torch.allclose(res.change_frequency(), exact, atol=0.04)  # 9600 draws; the truth from enumeration
    assert (res.draws[..., CONCEPT] == ON).float().mean() > 0.99
    # the minimal intervention: exactly the concept latent, found by exact search
    assert res.minimal["changed"] == [CONCEPT] and res.minimal["values"] == {CONCEPT: (0, ON)}
    assert res.minimal["method"] == "exact search (Hamming radius 1)"
    d = res.diagnostics()
    assert d["reached"] > 0.99 and d["max_r_hat"] < 1.05 and 0 < d["move_rate"] < 1
    assert d["acceptance"] > 0.999 if move == "gibbs" else 0 < d["acceptance"] < 0.9  # Gibbs moves are always taken
    counts = iv.concept_counts([res, res], 2)
    assert counts["inputs"].tolist() == [0, 2] and counts["minimal"][1].tolist() == [0, 0, 2, 0]
    with pytest.raises(ValueError, match="move must be"):
        iv.intervene(dvae, head, codes, 1, move="hmc")


# -- a toy classifier with a planted binary concept in its hidden layer; a trained discrete VAE ----------------------
def _toy_classifier():
    """Inputs: 6 binary pixels [1, 2, 3]; hidden layer = the pixels (Linear = identity, ReLU); class 1 iff hidden
    unit 0 (the planted concept) is on, whatever the other five (nuisance) units hold."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        f[1].weight.copy_(torch.eye(6))
        f[1].bias.zero_()
        f[3].weight.zero_()
        f[3].bias.copy_(torch.tensor([0.0, -6.0]))
        f[3].weight[1, 0] = 12.0
    return f.requires_grad_(False)


def test_the_intervention_finds_and_flips_exactly_a_planted_concept():
    torch.set_num_threads(1)
    f = _toy_classifier()
    g, h = bt.nets.split(f, "2")
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=6)))
    x = bits.repeat(16, 1).view(-1, 1, 2, 3)
    a = bt.nets.activations(g, x)
    # binary latents trained for reconstruction alone (no consistency term): the code factorises this toy layer
    dvae = bt.nets.train_discrete_vae(a, head=h, num_latents=8, num_values=2, hidden=64, epochs=40, batch_size=64,
                                      kl_weight=0.3, consistency=0.0, progress=False)
    figures = bt.nets.discrete_vae_figures(dvae, h, a, bits[:, 0].repeat(16).long())
    assert figures["accuracy_on_reconstruction"] == figures["accuracy"] == 1.0 and figures["relative_mse"] < 0.05
    # the latent that carries the concept, read off the data: its code determines hidden unit 0
    codes_all = dvae.encode(a)
    agree = [max((codes_all[:, k] == a[:, 0].long()).float().mean(), (codes_all[:, k] != a[:, 0].long()).float()
                 .mean()).item() for k in range(8)]
    concept = max(range(8), key=agree.__getitem__)
    assert agree[concept] == 1.0 and sorted(agree)[-2] < 0.8
    explainer = bt.nets.train_explainer(a, x, hidden=32, epochs=40, batch_size=128, lr=5e-3, progress=False)
    for pattern in bits[bits[:, 0] == 0][::8]:  # 4 inputs without the concept, moved to class 1
        xi = pattern.view(1, 1, 2, 3)
        codes = dvae.encode(g(xi))[0]
        res = iv.intervene(dvae, h, codes, 1, num_chains=4, num_samples=150, warmup=50, seed=0)
        m = res.minimal
        assert m["changed"] == [concept] and m["method"] == "exact search (Hamming radius 1)"
        freq = res.change_frequency()  # the posterior: the concept latent always, any other at about the prior's 5%
        assert freq[concept] == 1.0 and freq[[k for k in range(8) if k != concept]].max() < 0.25
        before, after = dvae.decode(codes[None]), dvae.decode(torch.tensor([m["codes"]]))
        assert after[0, 0] - before[0, 0] > 0.6  # the concept is switched on ...
        assert (after[0, 1:] - before[0, 1:]).abs().max() < 0.25  # ... and nothing else in the hidden layer moves
        _, from_c, from_new = iv.pictures(dvae, explainer, g(xi), codes, [m["codes"]])
        shown = (from_new - from_c).flatten()  # the visualised change: the concept pixel only
        assert shown[0] > 0.5 and shown[1:].abs().max() < 0.3


# -- the zoo, the command line and the studies ------------------------------------------------------------------------
def test_zoo_hidden_models_are_tied_to_their_classifier(tmp_path):
    import shutil

    (tmp_path / "digits").mkdir()
    for f in ("classifier", "dvae", "explainer"):
        for ext in ("pt", "json"):
            shutil.copy(bt.nets.weights_dir() / "digits" / f"{f}.{ext}", tmp_path / "digits" / f"{f}.{ext}")
    dvae = bt.nets.get("digits", "dvae", directory=tmp_path)
    assert dvae.meta["layer"] == -2 and dvae.meta["test_accuracy_on_reconstruction"] >= dvae.meta["test_accuracy"] - .02
    meta = json.loads((tmp_path / "digits" / "dvae.json").read_text())
    meta["classifier_sha256"] = "0" * 64
    (tmp_path / "digits" / "dvae.json").write_text(json.dumps(meta))
    with pytest.raises(bt.nets.CheckpointError, match="trained on another digits classifier"):
        bt.nets.get("digits", "dvae", directory=tmp_path)


def test_intervene_command_writes_pictures_and_numbers_and_refuses_bad_input(tmp_path, capsys):
    from bayestrex.cli import main

    out = tmp_path / "iv"
    args = ["--dataset", "digits", "--index", "7", "--out", str(out), "--quiet", "--chains", "4", "--samples", "100",
            "--warmup", "20"]
    assert main(["intervene", *args, "--to", "4"]) == 0
    numbers = json.loads((out / "intervention.json").read_text())
    assert numbers["target"] == "high:4,log" and numbers["label"] == int(bt.data.load("digits", "test")[1][7])
    assert numbers["predicted"] != 4 and len(numbers["codes"]) == 16
    m = numbers["minimal"]
    assert max(range(10), key=m["probs"].__getitem__) == 4 and len(m["changed"]) >= 1
    assert 0 < numbers["diagnostics"]["reached"] <= 1 and numbers["diagnostics"]["max_r_hat"] is not None
    assert {"intervention.png", "intervention-latents.png", "result.nc"} <= {f.name for f in out.iterdir()}
    assert bt.load(out / "result.nc").z.shape == (4, 100, 16)
    capsys.readouterr()
    for extra, message in ((["--to", "12"], "--to must be a class index in [0, 9]"),
                           (["--target", "sure:4"], "unknown target 'sure:4'"),
                           (["--to", "4", "--flip-prob", "1.5"], "--flip-prob must be a finite number in (0, 1)")):
        assert main(["intervene", *args, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["intervene", "--out", str(out)])  # neither --to nor --target
    assert e.value.code == 2


@pytest.fixture
def tiny_hidden_zoo(tmp_path, monkeypatch):
    """Digits recipes that train in seconds (classifier, discrete VAE, explainer) into tmp_path/w."""
    from bayestrex import nets

    monkeypatch.setitem(nets.RECIPES, "digits", dict(
        cnn=dict(epochs=3, batch_size=64), dvae=dict(layer=-2, num_latents=8, num_values=4, hidden=64, epochs=5),
        explainer=dict(layer=-2, hidden=64, epochs=5)))
    return ["--dataset", "digits", "--quick", "--quiet", "--threads", "1", "--weights-dir", str(tmp_path / "w"),
            "--out", str(tmp_path / "out")]


def test_intervention_bias_study_smoke(tmp_path, tiny_hidden_zoo):
    from analyses import intervention_bias

    out = intervention_bias.main(tiny_hidden_zoo)
    assert [r["classifier"] for r in out["runs"]] == ["biased", "unbiased"]
    for r in out["runs"]:
        assert r["inputs"] == 3 and 0 <= r["square_added"] <= r["reached"] <= 3 and r["acceptance"] > 0.99
    assert [r["class"] for r in out["classes"]] == [0, 1, 2]
    assert all(r["square_latent"].startswith("k") for r in out["models"])
    saved = json.loads((tmp_path / "out" / "digits" / "intervention_bias.json").read_text())
    assert saved["settings"]["kernel"] == "mh (site Gibbs moves)" and "max_steps" not in saved["settings"]
    assert len(saved["records"]) == 6 and len(saved["latent_change_frequency"]["biased"]) == 3
    for fig in ("examples", "latents-biased", "latents-unbiased"):
        assert (tmp_path / "out" / "digits" / f"intervention_bias-{fig}.png").stat().st_size > 1000
    rows = saved["tables"][intervention_bias.WITHOUT_SQUARE]
    for r, run in zip(rows, out["runs"]):
        assert r["inputs"] == 3 and r["square_in_dec_c"] + r["without_square"] == 3 and r["square_added"] == run[
            "square_added"]  # an input whose dec(c) shows the square cannot have it added
    # re-scoring the run's JSON (no sampling) marks the same inputs and keeps the run's settings and tables
    for r in saved["records"]:
        del r["square_before"]
    (tmp_path / "out" / "digits" / "intervention_bias.json").write_text(json.dumps(saved))
    assert intervention_bias.main([*tiny_hidden_zoo, "--rescore"])["without_square"] == rows
    again = json.loads((tmp_path / "out" / "digits" / "intervention_bias.json").read_text())
    assert again["settings"] == dict(saved["settings"], rescored=again["settings"]["rescored"])
    assert again["tables"] == saved["tables"] and "max_steps" not in again["settings"]


def test_intervention_confusions_study_smoke(tmp_path, tiny_hidden_zoo):
    from analyses import intervention_confusions

    out = intervention_confusions.main(tiny_hidden_zoo)
    (a, b, count), = out["pairs"]
    assert count > 0 and [r["direction"].split(" -> ") for r in out["rows"]] == [[str(a), str(b)], [str(b), str(a)]]
    for r in out["rows"]:
        assert r["inputs"] == 2 and 0 <= r["reached"] <= 2 and r["converged"] <= 2
    assert (tmp_path / "out" / "digits" / "intervention_confusions-latents.png").is_file()
    assert json.loads((tmp_path / "out" / "digits" / "intervention_confusions.json").read_text())["pairs"] == [
        [a, b, count]]
