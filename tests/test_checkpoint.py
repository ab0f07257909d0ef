"""Checkpoints and resume: a run stopped anywhere (an error, Ctrl-C, SIGTERM, SIGKILL) and resumed gives the draws
of a run that was never stopped, bit for bit (CPU, one thread)."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

import bayestrex as bt
from bayestrex.checkpoint import load

CHAINS, WARMUP, SAMPLES = 6, 24, 16
SLOW_AT_CALL = 40  # the SIGKILL test's child sleeps per call from here on, so the kill lands mid-run:
SLOW_SLEEP = 0.03  # its checkpoint then lives ~1.4 s, 3x past the latest kill (0.4 s; at 0.002 it lived 0.3 s)


def models(seed=0):
    torch.manual_seed(seed)
    generator = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh())
    classifier = torch.nn.Linear(8, 3)
    generator.latent_dim = 2
    return generator, classifier


class Faulty(torch.nn.Module):
    """The generator, with ``fault()`` run once at its ``at``-th call (an exception, Ctrl-C, a signal)."""

    def __init__(self, generator, at, fault):
        super().__init__()
        self.generator, self.at, self.fault, self.calls = generator, at, fault, 0
        self.latent_dim = generator.latent_dim

    def forward(self, z):
        self.calls += 1
        if self.calls == self.at:
            self.fault()
        return self.generator(z)


def run(generator, classifier, kernel, **kw):
    return bt.sample(generator, classifier, "ambiguous:0,1", num_chains=CHAINS, num_samples=SAMPLES, warmup=WARMUP,
                     kernel=kernel, seed=3, progress=False, sigma=0.1, **kw)


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    g, c = models()
    return {k: run(g, c, k) for k in ("hmc", "chees", "slice", "mh")}


def call_at(generator, classifier, kernel, fraction):
    """The generator call a ``fraction`` of the way through the sampling loop (after the set-up's calls)."""
    counter = Faulty(generator, 10**9, None)
    info = run(counter, classifier, kernel).info
    in_driver = info.get("grad_calls") or info["likelihood_calls"]
    return counter.calls - in_driver + int(fraction * in_driver)


def stopped_in_warmup(tmp_path, kernel):
    """The checkpoint of a run of ``kernel`` that failed half-way (in warmup: the error itself is raised)."""
    g, c = models()
    path = tmp_path / "run.ckpt"
    with pytest.raises(RuntimeError):
        run(Faulty(g, call_at(g, c, kernel, 0.5), raise_runtime), c, kernel, checkpoint=path)
    return path


def raise_runtime():
    raise RuntimeError("simulated fault")


def raise_interrupt():
    raise KeyboardInterrupt


def send_sigint():
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def sigint_delivered():
    """Python's own SIGINT handler for the test: a suite started in the background from a script (``cmd &``) inherits
    an ignored SIGINT, which the driver rightly leaves ignored, so a test of Ctrl-C would see nothing."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("kernel", ["hmc", "chees", "slice", "mh"])
@pytest.mark.parametrize("fault", [raise_runtime, raise_interrupt, send_sigint])
def test_a_run_stopped_and_resumed_gives_the_uninterrupted_draws(kernel, fault, reference, tmp_path,
                                                                 sigint_delivered):
    g, c = models()
    path = tmp_path / "run.ckpt"
    for at in (call_at(g, c, kernel, 0.2), call_at(g, c, kernel, 0.8)):  # in warmup, then while drawing
        path.unlink(missing_ok=True)
        faulty = Faulty(g, at, fault)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                partial = run(faulty, c, kernel, checkpoint=path, checkpoint_every=1e9)
            assert partial.stopped and partial.num_draws < SAMPLES
            assert any(issubclass(w.category, bt.driver.SamplingStopped) for w in caught)
        except (RuntimeError, KeyboardInterrupt):
            pass  # stopped before its first kept draw: raised, and the checkpoint holds the warmup so far
        assert faulty.calls >= at, "the fault was not reached"
        assert path.exists(), "a stopped run leaves its checkpoint"
        resumed = run(g, c, kernel, resume=path)
        assert torch.equal(resumed.z, reference[kernel].z), f"{kernel}: resumed draws differ (fault at call {at})"
        assert torch.equal(resumed.probs, reference[kernel].probs)
        assert not path.exists(), "a finished run removes its checkpoint"
        assert resumed.info["resumed_at_iteration"] > 0


def test_resume_refuses_another_runs_checkpoint_and_a_damaged_one(tmp_path):
    path, (g, c) = stopped_in_warmup(tmp_path, "chees"), models()
    with pytest.raises(ValueError, match=r"resume: .* another run \(seed: 3 there, 4 here\)"):
        bt.sample(g, c, "ambiguous:0,1", num_chains=CHAINS, num_samples=SAMPLES, warmup=WARMUP, kernel="chees",
                  seed=4, progress=False, sigma=0.1, resume=path)
    with pytest.raises(ValueError, match=r"resume: .* another run \(kernel: 'chees' there, 'hmc' here\)"):
        run(g, c, "hmc", resume=path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"resume: the checkpoint .* is damaged"):
        run(g, c, "chees", resume=path)
    with pytest.raises(ValueError, match=r"checkpoint: kernel 'nuts' cannot be checkpointed"):
        run(g, c, "nuts", checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint_every"):
        run(g, c, "chees", checkpoint=path, checkpoint_every=-1)


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    path = stopped_in_warmup(tmp_path, "hmc")
    snapshot = load(path)  # torch.load(weights_only=True) inside: tensors, numbers, strings, lists, dicts only
    assert snapshot["iteration"] > 0 and snapshot["rng"].dtype == torch.uint8


CHILD = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_checkpoint import models, run, SLOW_AT_CALL, SLOW_SLEEP
    torch.set_num_threads(1)
    g, c = models()

    class Slow(torch.nn.Module):
        latent_dim = 2
        def __init__(self):
            super().__init__(); self.g, self.calls = g, 0
        def forward(self, z):
            self.calls += 1
            if self.calls >= SLOW_AT_CALL:
                time.sleep(SLOW_SLEEP)
            return self.g(z)

    run(Slow(), c, "chees", checkpoint={path!r}, checkpoint_every=0)
""")


def test_sigkill_at_a_random_moment_then_resume_gives_the_uninterrupted_draws(reference, tmp_path):
    path = tmp_path / "run.ckpt"
    code = CHILD.format(tests=os.path.dirname(__file__), path=str(path))
    child = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=os.getcwd()))
    deadline = time.monotonic() + 120
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, 0.4))  # a random moment after the first checkpoint
    child.kill()
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the child finished before it was killed: make it slower"
    assert path.exists(), "the child's run ended (its checkpoint removed) before the kill: make it slower"
    g, c = models()
    resumed = run(g, c, "chees", resume=path)
    assert 0 < resumed.info["resumed_at_iteration"] < WARMUP + SAMPLES
    assert torch.equal(resumed.z, reference["chees"].z)


def test_cli_sigterm_saves_a_partial_result_and_resume_finishes_it(tmp_path):
    out = tmp_path / "run"
    argv = ["sample", "--target", "ambiguous:3,8", "--kernel", "chees", "--chains", "8", "--warmup", "20",
            "--samples", "150", "--max-steps", "4", "--out", str(out), "--checkpoint-every", "0", "--quiet"]
    child = subprocess.Popen([sys.executable, "-m", "bayestrex.cli", *argv], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while child.poll() is None and time.monotonic() < deadline:  # until the run is into its kept draws
        time.sleep(0.05)
        try:
            if load(out / "checkpoint.pt")["iteration"] > 25:
                break
        except ValueError:  # not written yet
            pass
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=240)
    assert child.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "interrupted: kept" in last and f"continue with: bayestrex sample --resume {out}" in last, err
    partial = bt.load(out / "result.nc")
    assert partial.stopped == "interrupted" and 0 < partial.num_draws < 150
    assert any(f.startswith("partial run") for f in partial.diagnose())
    assert (out / "checkpoint.pt").exists()

    from bayestrex.cli import main

    assert main(["sample", "--resume", str(out), "--quiet"]) == 0
    done = bt.load(out / "result.nc")
    assert done.stopped is None and done.num_draws == 150 and done.info["resumed_at_iteration"] > 20
    assert torch.equal(done.z[:, : partial.num_draws], partial.z)  # the draws made before the signal are kept as-is
    assert not (out / "checkpoint.pt").exists()
    assert main(["sample", "--resume", str(out), "--quiet"]) == 2  # finished: nothing to resume


@pytest.mark.parametrize("name", ["constrained", "mmala"])
def test_level_set_kernels_resume_after_a_fault(tmp_path, name):
    """The kernels that read the residual (per-chain adaptation state for mmala, a shared one for constrained)."""
    from bayestrex.checkpoint import Checkpoint
    from bayestrex.density import Density, GaussianPrior
    from bayestrex.driver import run as drive
    from bayestrex.kernels.constrained import Constrained
    from bayestrex.kernels.mmala import MMALA

    kernel, sigma = (Constrained, 0.0) if name == "constrained" else (MMALA, 0.1)

    A = torch.tensor([[1.0, 0.5, -0.3]])
    calls = [0]

    def residual(z, fail_at=None):
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("simulated fault")
        return z @ A.T - 0.7

    def density(fail_at=None):
        return Density(latent_dim=3, prior=GaussianPrior(torch.zeros(3), torch.ones(3)), sigma=sigma,
                       residual=lambda z: residual(z, fail_at))

    z0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    kw = dict(num_samples=20, warmup=20, seed=1, progress=False)
    reference = drive(kernel(), density(), z0, **kw)
    total, calls[0] = calls[0], 0
    path = tmp_path / "c.ckpt"
    mark = {"format": 1, "case": "linear"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drive(kernel(), density(fail_at=(3 * total) // 4), z0, checkpoint=Checkpoint(path, mark, every=1e9), **kw)
    resumed = drive(kernel(), density(), z0, resume=load(path, mark), **kw)
    assert torch.equal(resumed.z, reference.z)


def test_resume_with_another_thread_count_is_refused_and_an_unwritable_checkpoint_only_warns(tmp_path):
    path, (g, c) = stopped_in_warmup(tmp_path, "chees"), models()
    with pytest.raises(ValueError, match=r"resume: .* another run \(threads: '1' there, '2' here\)"):
        run(g, c, "chees", resume=path, threads=2)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.warns(RuntimeWarning, match="could not write the checkpoint"):
        done = run(g, c, "chees", checkpoint=blocked / "run.ckpt", checkpoint_every=0)
    assert done.num_draws == SAMPLES and done.stopped is None  # the run went on without its checkpoints


def test_cli_passes_threads_and_checkpointing_to_the_sampler(tmp_path, monkeypatch):
    from bayestrex.cli import main

    seen = {}

    def fake_sample(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(bt, "sample", fake_sample)
    assert main(["sample", "--target", "high:0", "--kernel", "chees", "--threads", "3", "--out",
                 str(tmp_path / "run"), "--checkpoint-every", "5", "--quiet"]) == 2
    assert seen["threads"] == 3 and seen["checkpoint_every"] == 5.0 and seen["keep_checkpoint"]
    assert str(seen["checkpoint"]).endswith("checkpoint.pt")
