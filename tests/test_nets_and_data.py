import json
import pickle

import pytest
import torch

import bayestrex as bt
from bayestrex import nets


def test_digits_loader():
    x, y = bt.data.load("digits", split="train")
    xt, yt = bt.data.load("digits", split="test")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() >= 0 and x.max() == 1 and set(y.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        bt.data.load("cifar")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        bt.data.load("digits", split="val")


def test_shipped_digits_models_load_safely_and_classify_well():
    vae, clf = nets.pretrained("digits")
    xt, yt = bt.data.load("digits", split="test")
    assert nets.accuracy(clf, xt, yt) >= 0.95
    assert vae.decoder.latent_dim == 5 and not any(p.requires_grad for p in clf.parameters())
    with torch.no_grad():
        mu, _ = vae.encoder(xt[:50])
        recon = vae.decoder(mu)
    assert recon.shape == (50, 1, 8, 8) and (recon - xt[:50]).abs().mean() < 0.15


def test_training_is_seeded_and_round_trips(tmp_path):
    x, y = bt.data.load("digits", split="train")
    a = nets.train_classifier(x[:200], y[:200], epochs=2, progress=False)
    b = nets.train_classifier(x[:200], y[:200], epochs=2, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    nets.save(a, tmp_path / "clf.pt", note="test")
    back = nets.load(tmp_path / "clf.pt")
    assert torch.equal(back(x[:5]), a(x[:5]))
    assert json.loads((tmp_path / "clf.json").read_text())["note"] == "test"


@pytest.fixture
def saved(tmp_path):
    model = nets.CNN()
    nets.save(model, tmp_path / "m.pt")
    return tmp_path / "m.pt"


def _rewrite(path, payload: bytes):
    """Replace the weights and record the new checksum, so only the loader's own checks stand in the way."""
    path.write_bytes(payload)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = nets.sha256(path)
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_corrupt_checkpoint_is_refused(saved):
    data = bytearray(saved.read_bytes())
    data[200] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(nets.CheckpointError, match="SHA-256 does not match"):
        nets.load(saved)
    _rewrite(saved, b"garbage" * 10)
    with pytest.raises(nets.CheckpointError, match="corrupt or untrusted"):
        nets.load(saved)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(saved, capsys):
    _rewrite(saved, pickle.dumps({"net.0.weight": Payload()}))
    with pytest.raises(nets.CheckpointError, match="corrupt or untrusted"):
        nets.load(saved)
    assert "pickled code ran" not in capsys.readouterr().out


def test_checkpoint_for_another_architecture(saved, tmp_path):
    nets.save(nets.CNN(num_classes=3), tmp_path / "other.pt")
    (tmp_path / "other.json").write_text(saved.with_suffix(".json").read_text().replace(
        json.loads(saved.with_suffix(".json").read_text())["sha256"], nets.sha256(tmp_path / "other.pt")))
    with pytest.raises(nets.CheckpointError, match="does not fit a CNN"):
        nets.load(tmp_path / "other.pt")
    with pytest.raises(nets.CheckpointError, match="not found"):
        nets.load(tmp_path / "missing.pt")
