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
BAD_CLI = [  # (argv, words the one error line must hold); {tmp} is a fresh folder, {file} a plain file in it,
    # {dir} an existing folder, {empty} an empty file, {png} a 5x5 PNG image (the digits models take 8x8)
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
    # targets: unknown, malformed, out of range for the 10 digits classes
    (["sample", "--target", "bogus", "--out", "{tmp}"], "--target 'bogus': unknown target"),
    (["sample", "--target", "", "--out", "{tmp}"], "--target '': unknown target"),
    (["sample", "--target", "high:10", "--out", "{tmp}"], "class index 10 is out of range"),
    (["sample", "--target", "high:x", "--out", "{tmp}"], "expects integer class indices"),
    (["sample", "--target", "ambiguous:3,3", "--out", "{tmp}"], "two different classes"),
    (["sample", "--target", "probs:0.5,0.6", "--out", "{tmp}"], "must sum to 1"),
    (["sample", "--target", "probs:nan,nan", "--out", "{tmp}"], "--target 'probs:nan,nan'"),
    (["sample", "--target", "graded:1,7,1.5", "--out", "{tmp}"], "must be in [0, 1]"),
    (["sample", "--target", "boundary:1,2,-1", "--out", "{tmp}"], "margin"),
    (["sample", "--target", "uniform:3", "--out", "{tmp}"], "takes no arguments"),
    (["demo", "--out", "{tmp}", "--targets", "high:0", "high:99"], "--targets 'high:99'"),
    (["sbc", "--out", "{tmp}", "--statistic", "ambiguous:1"], "--statistic"),
    (["intervene", "--target", "bogus"], "--target 'bogus'"),
    # numbers: NaN, inf, negative, zero, not a number
    (["sample", "--target", "high:0", "--out", "{tmp}", "--sigma", "nan"], "--sigma must be a finite number >= 0"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--sigma", "inf"], "--sigma must be a finite number >= 0"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--sigma", "-0.1"], "--sigma must be a finite number >= 0"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--sigma", "0"], "--sigma 0 is the level set itself"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--sigma", "wide"], "--sigma"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--chains", "0"], "--chains must be an integer >= 1"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--chains", "1.5"], "--chains"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--samples", "-1"], "--samples must be an integer >= 1"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--warmup", "-1"], "--warmup must be an integer >= 0"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--max-tree-depth", "0"], "--max-tree-depth"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--max-steps", "0"], "--max-steps"),
    (["demo", "--out", "{tmp}", "--jobs", "0"], "--jobs must be an integer >= 1"),
    (["sbc", "--out", "{tmp}", "--replicates", "0"], "--replicates"),
    (["sbc", "--out", "{tmp}", "--draws", "0"], "--draws"),
    (["xgems", "--out", "{tmp}", "--step", "-1"], "--step must be a finite number > 0"),
    (["xgems", "--out", "{tmp}", "--sigma", "0"], "--sigma 0 is the level set itself"),
    (["xgems", "--out", "{tmp}", "--prior-scale", "0"], "--prior-scale"),
    (["xgems", "--out", "{tmp}", "--index", "-1"], "--index must be an integer >= 0"),
    (["xgems", "--out", "{tmp}", "--index", "100000"], "--index must be in [0, 359]"),
    (["cdeepex", "--out", "{tmp}", "--outer", "0"], "--outer must be an integer >= 1"),
    (["cdeepex", "--out", "{tmp}", "--margin", "nan"], "--margin"),
    (["cdeepex", "--out", "{tmp}", "--true", "10"], "--true must be a class index"),
    (["intervene", "--to", "3", "--flip-prob", "1"], "--flip-prob must be a finite number in (0, 1)"),
    (["intervene", "--to", "3", "--max-radius", "-1"], "--max-radius"),
    (["intervene", "--to", "10"], "--to must be a class index"),
    # files: missing, empty, a folder, not an image, the wrong size, a file where a folder belongs and back
    (["cdeepex", "--out", "{tmp}", "--image", "{tmp}/missing.png"], "--image"),
    (["cdeepex", "--out", "{tmp}", "--image", "{dir}"], "is a folder, not an image file"),
    (["cdeepex", "--out", "{tmp}", "--image", "{empty}"], "is an empty file, not an image"),
    (["cdeepex", "--out", "{tmp}", "--image", "{file}"], "is not a readable image file"),
    (["xgems", "--out", "{tmp}", "--image", "{png}"], "is (5, 5) pixels; the digits models expect (8, 8)"),
    (["xgems", "--out", "{file}"], "--out"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--weights-dir", "{file}"], "--weights-dir"),
    (["train", "--models", "vae", "--out", "{file}"], "--weights-dir/--out"),
    (["report", "{file}", "--out", "{dir}"], "is a folder; pass the HTML file"),
    (["report", "{tmp}/missing.nc", "--out", "{tmp}/r.html"], "missing.nc"),
    (["sweep", "{tmp}/missing.toml"], "no sweep spec"),
    (["sweep", "{file}"], "is not valid TOML"),
    (["diagnose", "{empty}"], "not a bayestrex result file"),
    # commands and options that do not exist
    (["bogus"], "invalid choice: 'bogus'"),
    (["sample", "--target", "high:0", "--out", "{tmp}", "--bogus"], "unrecognized arguments: --bogus"),
    (["sweep", "{file}", "--backend", "slurm"], "--backend"),
]


@pytest.mark.parametrize("argv, words", BAD_CLI, ids=[" ".join(a).replace(" --out {tmp}", "") for a, _ in BAD_CLI])
def test_bad_cli_input_is_one_line_exit_2(argv, words, tmp_path, capsys, monkeypatch):
    from bayestrex import nets

    monkeypatch.setattr(bt, "sample", lambda *a, **k: pytest.fail("sampled despite bad input"))
    monkeypatch.setattr(nets, "train", lambda *a, **k: pytest.fail("trained despite bad input"))
    from bayestrex import intervention, sbc

    work = ((bt.special, "xgems"), (bt.special, "cdeepex"), (sbc, "simulate"), (intervention, "intervene"))
    for module, name in work:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("worked despite bad input"))
    afile = tmp_path / "f.nc"
    afile.write_text("not a result")
    (tmp_path / "empty.png").write_bytes(b"")
    import matplotlib.image

    matplotlib.image.imsave(tmp_path / "small.png", torch.rand(5, 5).numpy(), cmap="gray")
    paths = dict(tmp=tmp_path / "run", file=afile, dir=tmp_path, empty=tmp_path / "empty.png",
                 png=tmp_path / "small.png")
    rc, err = run_cli([a.format(**paths) for a in argv], capsys)
    assert rc == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err


def test_the_fuzz_table_has_forty_distinct_bad_inputs():
    assert len({tuple(argv) for argv, _ in BAD_CLI}) == len(BAD_CLI) >= 40


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


def test_image_files_are_read_as_grayscale_in_unit_range(tmp_path):
    import matplotlib.image
    import numpy as np

    from bayestrex.cli_checks import read_image

    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[2, 3] = (255, 255, 255)
    matplotlib.image.imsave(tmp_path / "x.png", rgb)  # 8-bit RGB(A) on disk
    img = read_image(str(tmp_path / "x.png"))
    assert img.shape == (8, 8) and float(img[2, 3]) == 1.0 and float(img.sum()) == 1.0


@pytest.mark.parametrize("gen_dtype, clf_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_a_dtype_clash_between_the_models_names_both_and_the_fix(gen_dtype, clf_dtype):
    gen = torch.nn.Linear(2, 5).to(gen_dtype)
    clf = torch.nn.Linear(5, 3).to(clf_dtype)
    words = (f"dtype mismatch: the generator returns {gen_dtype} but the classifier's parameters are {clf_dtype}; "
             f"convert one of the models, e.g. classifier.to({gen_dtype}) or generator.to({clf_dtype})")
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        bt.Posterior(gen, clf, "high:0", latent_dim=2)
    with pytest.raises(ValueError, match="dtype mismatch"):  # a function around the generator (float32 codes)
        bt.Posterior(lambda z: gen(z), clf, "high:0", latent_dim=2)
    gen64, clf32 = torch.nn.Linear(2, 5).double(), torch.nn.Linear(5, 3)
    with pytest.raises(ValueError, match="dtype mismatch: the classifier failed on the generator's torch.float64"):
        bt.Posterior(lambda z: gen64(z.double()), lambda x: clf32(x), "high:0", latent_dim=2)  # functions around both
    post = bt.Posterior(gen, clf.to(gen_dtype), "high:0", latent_dim=2)  # the fix the message names works
    assert post.dtype == gen_dtype and post.log_density(torch.zeros(3, 2, dtype=gen_dtype)).dtype == gen_dtype


def test_a_sigma_too_small_to_evaluate_names_sigma_and_the_smallest_usable_value():
    import re

    torch.manual_seed(0)
    gen, clf = torch.nn.Linear(2, 5), torch.nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"sigma=1e-30 is too small to evaluate in torch.float32") as err:
        bt.Posterior(gen, clf, "high:0", latent_dim=2, sigma=1e-30)
    smallest = float(re.search(r"the smallest usable sigma for this target and these models is (\S+)$",
                               str(err.value)).group(1))
    # ((u - u*) / sigma)^2 and (u - u*) / sigma^2 overflow float32 (max 3.4e38) below about sqrt(|u - u*| / 3.4e38)
    assert 1e-20 < smallest < 1e-18
    post = bt.Posterior(gen, clf, "high:0", latent_dim=2, sigma=smallest)  # the value it names is accepted ...
    pe, grad, _ = post.potential_and_grad(post.prior_draws(64, torch.Generator().manual_seed(1)))
    assert torch.isfinite(pe).all() and torch.isfinite(grad).all()  # ... and evaluates
    with pytest.raises(ValueError, match="too small to evaluate"):
        bt.Posterior(gen, clf, "high:0", latent_dim=2, sigma=smallest / 20)
    bt.Posterior(gen.double(), clf.double(), "high:0", latent_dim=2, sigma=1e-30)  # float64 has room for it


def test_cli_sigma_too_small_fails_in_one_line_before_sampling(tmp_path, capsys, monkeypatch):
    from bayestrex.posterior import Posterior

    monkeypatch.setattr(Posterior, "initial_points", lambda *a, **k: pytest.fail("looked for starting points"))
    rc, err = run_cli(["sample", "--target", "high:0", "--sigma", "1e-30", "--out", str(tmp_path), "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "sigma=1e-30 is too small to evaluate" in err
    assert "starting points" not in err and "Traceback" not in err


# -- Ctrl-C in demo ---------------------------------------------------------------------------------------------
def test_demo_interrupted_in_process_cancels_the_targets_after_the_partial_one(tmp_path, capsys, monkeypatch):
    """With --jobs 1 the first Ctrl-C reaches the driver, which keeps a partial result: the demo stops there."""
    from bayestrex import cli

    def fake_sample_and_report(target, vae, clf, out, args, prefix):
        res = small_result()
        res.stopped = "interrupted" if target == "uniform" else None  # Ctrl-C during the second target
        res.save(out / f"{prefix}result.nc")
        return {"target": target}

    monkeypatch.setattr(cli, "_setup", lambda args: (None, None))
    monkeypatch.setattr(cli, "_sample_and_report", fake_sample_and_report)
    rc, err = run_cli(["demo", "--out", str(tmp_path / "run"), "--jobs", "1", "--quiet",
                       "--targets", "high:0", "uniform", "high:1"], capsys)
    assert rc == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert "interrupted: 1 of 3 targets finished (high:0; their files are in" in err
    assert "the other 2 were stopped or cancelled" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["high_0-result.nc", "uniform-result.nc"]
    assert bt.load(tmp_path / "run" / "uniform-result.nc").stopped == "interrupted"  # kept, marked partial


@pytest.mark.skipif(not hasattr(__import__("os"), "killpg"), reason="needs POSIX signals and process groups")
def test_ctrl_c_stops_demo_workers_and_their_queued_targets(tmp_path):
    """SIGINT to the whole process group, as Ctrl-C in a terminal sends it: exit 130 at once, one line, no worker
    left running and no file written afterwards (before: the workers went on with their queued targets for ~70 s)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "bayestrex.cli", "demo", "--out", str(out), "--jobs", "2",
                             "--chains", "4", "--samples", "5000", "--warmup", "500"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as from a terminal: SIGINT not ignored, even when this suite runs as a background job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().startswith("sampling 4 targets in 2 processes")
        time.sleep(2)  # the workers are importing or sampling
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.perf_counter()
        _, err = proc.communicate(timeout=30)
        seconds = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and seconds < 15, (proc.returncode, seconds, err)
    assert err.count("\n") == 1 and "interrupted: 0 of 4 targets finished" in err and "Traceback" not in err, err
    deadline = time.perf_counter() + 10  # no process of the run's group is left (exited ones may await reaping)
    while time.perf_counter() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a process of the interrupted demo is still there 10 s after it exited")
    assert list(out.iterdir()) == []  # no result, no figure, no temporary file, no lock
