"""Nothing lost, nothing mixed: checksummed result files, run-folder checks and lock, weights protection, bad input."""

import h5py
import pytest
import torch

import bayestrex as bt


def small_result(seed: int = 3) -> bt.Result:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(4, 500, 3, generator=g)
    probs = torch.softmax(torch.randn(4, 500, 2, generator=g), -1)
    return bt.Result(z=z, probs=probs, u=probs[..., 1:], stats={"diverging": torch.zeros(4, 500, dtype=torch.bool)},
                     target="high:1", sigma=0.2, info={"seed": seed, "models_sha256": {"vae": "ab" * 32}})


def largest_block(path) -> tuple[int, int]:
    """``(byte offset, size)`` of the largest stored chunk in an HDF5 file."""
    blocks = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                blocks.append((info.size, info.byte_offset))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    size, offset = max(blocks)
    return offset, size


def test_saved_result_round_trips_with_provenance(tmp_path):
    res = small_result()
    path = tmp_path / "r.nc"
    res.save(path)
    back = bt.load(path)
    assert torch.equal(back.z, res.z) and torch.equal(back.probs, res.probs)
    with h5py.File(path, "r") as f:
        assert f["posterior/z"].fletcher32 and f["sample_stats/diverging"].fletcher32
        assert f.attrs["bayestrex_version"] == bt.__version__ and f.attrs["bayestrex_seed"] == "3"
        assert "ab" * 32 in f.attrs["bayestrex_models_sha256"]
    assert "bayestrex_version" not in res.to_datatree().attrs  # the result's own tree is left as it was


def test_flipped_bit_in_a_data_block_is_detected(tmp_path):
    path = tmp_path / "r.nc"
    small_result().save(path)
    offset, size = largest_block(path)
    assert size > 10_000  # a block of z's floats (plus its 4-byte checksum), not metadata
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="r.nc is corrupt: a data block fails its checksum"):
        bt.load(path)


# -- run folders ------------------------------------------------------------------------------------------------
def run_cli(argv, capsys):
    """``(exit status, stderr)`` of the CLI run in this process (argparse's refusals included)."""
    from bayestrex.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_out_that_is_a_file_or_cannot_be_created_fails_before_sampling(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bt, "sample", lambda *a, **k: pytest.fail("sampled before checking --out"))
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    for out, words in ((afile, "is a file"), (afile / "sub", "cannot be created")):
        rc, err = run_cli(["sample", "--target", "high:0", "--out", str(out), "--quiet"], capsys)
        assert rc == 2 and err.count("\n") == 1 and "--out" in err and words in err and "Traceback" not in err


def test_read_only_out_fails_before_sampling(tmp_path, capsys, monkeypatch):
    import errno
    import os

    from bayestrex.io import LOCK_NAME

    real_open = os.open

    def read_only(path, *a, **k):  # a read-only folder, also for root (who may write into a 0555 one)
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(bt, "sample", lambda *a, **k: pytest.fail("sampled before checking --out"))
    rc, err = run_cli(["sample", "--target", "high:0", "--out", str(tmp_path), "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--out" in err and "not writable: Permission denied" in err


def test_second_run_on_a_locked_folder_is_refused_and_stale_locks_are_taken_over(tmp_path, capsys, monkeypatch):
    import os
    import subprocess
    import sys

    from bayestrex.io import LOCK_NAME, run_folder

    monkeypatch.setattr(bt, "sample", lambda *a, **k: pytest.fail("sampled into a locked folder"))
    with run_folder(tmp_path) as out:  # a live run (this process) holds the folder
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        rc, err = run_cli(["sample", "--target", "high:0", "--out", str(tmp_path), "--quiet"], capsys)
        assert rc == 2 and err.count("\n") == 1 and "in use by another bayestrex run" in err and "--out" in err
    assert not (tmp_path / LOCK_NAME).exists()  # removed at the end
    (tmp_path / LOCK_NAME).write_text("")  # a run that has just created its lock and not yet written its pid
    with pytest.raises(ValueError, match="in use by another bayestrex run"):
        with run_folder(tmp_path):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(dead.stdout)  # a killed run's lock: its pid is gone
    (tmp_path / ".result.nc.abc123.tmp").write_bytes(b"half a file")  # and its temporary file
    (tmp_path / "keep.tmp").write_text("not ours")
    with run_folder(tmp_path) as out:
        assert not (out / ".result.nc.abc123.tmp").exists() and (out / "keep.tmp").exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_result_is_written_before_the_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bt, "sample", lambda *a, **k: small_result())

    def broken(*a, **k):
        raise RuntimeError("no display")

    monkeypatch.setattr(bt.plots, "image_grid", broken)
    rc, err = run_cli(["sample", "--target", "high:1", "--out", str(tmp_path), "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "draws are saved in" in err and "no display" in err
    assert torch.equal(bt.load(tmp_path / "result.nc").z, small_result().z)


# -- weights ----------------------------------------------------------------------------------------------------
def test_train_never_overwrites_weights_without_overwrite(tmp_path, capsys, monkeypatch):
    from bayestrex import nets

    monkeypatch.delenv("BAYESTREX_WEIGHTS", raising=False)
    shipped = nets.weights_dir() / "digits" / "vae.pt"
    assert shipped.is_file()  # the committed digits weights behind the README's numbers
    before = shipped.read_bytes()
    monkeypatch.setattr(nets, "train", lambda *a, **k: pytest.fail("trained over existing weights"))
    rc, err = run_cli(["train", "--dataset", "digits", "--models", "vae", "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--overwrite" in err and "--weights-dir/--out" in err
    assert str(shipped.parent) in err and shipped.read_bytes() == before
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "classifier.pt").write_bytes(b"mine")
    rc, err = run_cli(["train", "--out", str(tmp_path), "--models", "vae", "classifier", "--quiet"], capsys)
    assert rc == 2 and "classifier already exist" in err
    assert (tmp_path / "digits" / "classifier.pt").read_bytes() == b"mine"

    calls = []

    def fake_train(dataset, names, *, directory, **_):  # says what and where BEFORE training
        calls.append((dataset, list(names), directory, capsys.readouterr().err))
        return {n: {} for n in names}

    monkeypatch.setattr(nets, "train", fake_train)
    rc, err = run_cli(["train", "--out", str(tmp_path), "--models", "vae", "classifier", "--overwrite", "--quiet"],
                      capsys)
    assert rc == 0 and calls[0][:3] == ("digits", ["vae", "classifier"], str(tmp_path))
    assert f"training digits/classifier into {tmp_path / 'digits' / 'classifier.pt'}" in calls[0][3]


# -- bad input --------------------------------------------------------------------------------------------------
BAD_CLI = [  # (argv, words the one error line must hold); {tmp} is a fresh folder, {file} a plain file in it
    (["sample", "--target", "high:0", "--out", "{tmp}", "--threads", "0"], "--threads"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--threads", "-2"], "--threads"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--threads", "two"], "--threads"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--seed", "-1"], "--seed"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--seed", "1e20"], "--seed"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--seed", str(2**63)], "--seed"),
    (["sample", "--target", "high:0", "--out", "{file}"], "--out"),
    (["sample", "--target", "high:0", "--out", "{file}/sub"], "--out"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--kernel", "nutz"], "--kernel"),
    (["sample", "--out", "{tmp}"], "--target"),
    (["demo", "--out", "{tmp}", "--threads", "0"], "--threads"),
    (["demo", "--out", "{file}"], "--out"),
    (["sbc", "--out", "{tmp}", "--seed", "-3"], "--seed"),
    (["intervene", "--to", "3", "--threads", "-1"], "--threads"),
    (["intervene", "--to", "3", "--seed", "99999999999999999999"], "--seed"),
    (["xgems", "--out", "{tmp}", "--threads", "0"], "--threads"),
    (["cdeepex", "--out", "{tmp}", "--threads", "x"], "--threads"),
    (["diagnose", "{tmp}/missing.nc"], "missing.nc"),
    (["diagnose", "{file}"], "not a bayestrex result file"),
    (["train", "--models", "bogus", "--out", "{tmp}"], "unknown model 'bogus'"),
    (["train", "--dataset", "cifar", "--out", "{tmp}"], "cifar"),
]


@pytest.mark.parametrize("argv, words", BAD_CLI, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_CLI])
def test_bad_cli_input_is_one_line_exit_2(argv, words, tmp_path, capsys, monkeypatch):
    from bayestrex import nets

    monkeypatch.setattr(bt, "sample", lambda *a, **k: pytest.fail("sampled despite bad input"))
    monkeypatch.setattr(nets, "train", lambda *a, **k: pytest.fail("trained despite bad input"))
    afile = tmp_path / "f.nc"
    afile.write_text("not a result")
    run = tmp_path / "run"
    rc, err = run_cli([a.format(tmp=run, file=afile) for a in argv], capsys)
    assert rc == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err


class Wide(torch.nn.Module):
    latent_dim = 4  # but its first layer takes 3

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 6)

    def forward(self, z):
        return self.layer(z)


def test_wrong_latent_dim_names_latent_dim():
    logits = torch.nn.Linear(6, 3)
    with pytest.raises(ValueError, match=r"latent_dim=4 does not fit the generator: it failed on a batch of shape"):
        bt.sample(Wide(), logits, "high:0", num_chains=2, num_samples=5, warmup=5, progress=False)
    with pytest.raises(ValueError, match=r"latent_dim=5 does not fit the generator"):
        bt.Posterior(Wide(), logits, "high:0", latent_dim=5)
    assert bt.Posterior(Wide(), logits, "high:0", latent_dim=3).num_classes == 3


def test_sigmoid_scores_are_warned_about_and_logits_are_not(recwarn):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="rows do not sum to 1: they look like per-class sigmoid scores"):
        bt.Posterior(lambda z: z, lambda x: torch.sigmoid(net(x)), "high:0", latent_dim=2)
    bt.Posterior(lambda z: z, lambda x: 5 * net(x), "high:0", latent_dim=2)  # logits of both signs: no warning
    assert not [w for w in recwarn if "sigmoid" in str(w.message)]
