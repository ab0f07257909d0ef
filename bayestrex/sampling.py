"""``sample``: validate the inputs, build the posterior, run a kernel through the driver, hand back a ``Result``."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from . import driver, kernels
from .checkpoint import CHECKPOINT_EVERY, Checkpoint, fingerprint
from .checkpoint import load as load_checkpoint
from .posterior import Posterior
from .result import Result

__all__ = ["sample"]

#: at sigma = 0, starting points are chosen on the posterior relaxed to this width, then projected onto the level set
ZERO_SIGMA_START = 0.05


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's CPU thread count set to ``threads`` (None: left as it is) for the block, then put back."""
    if threads is None:
        yield
        return
    threads = _positive_int("threads", threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def sample(generator, classifier, target, *, latent_dim: int | None = None, num_chains: int = 4,
           num_samples: int = 500, warmup: int | None = None, sigma: float = 0.05, kernel="nuts", seed: int = 0,
           device=None, progress: bool = True, init: torch.Tensor | None = None, checkpoint=None,
           checkpoint_every: float = CHECKPOINT_EVERY, resume=None, keep_checkpoint: bool = False,
           threads: int | None = 1, **posterior_options) -> Result:
    """Sample latent codes whose decoded inputs make the classifier hit ``target``.

    Draws ``z ~ p(z | u*) ∝ N(z; 0, I) · N(u*; u(softmax(classifier(generator(z)))), sigma²)``.

    Parameters
    ----------
    generator : callable
        Maps a float tensor ``[N, latent_dim]`` to a batch ``[N, ...]``.
    classifier : callable
        Maps that batch to **logits** ``[N, K]``.
    target : Target or str
        ``"high:C"``, ``"ambiguous:A,B"``, ``"uniform"``, ``"graded:A,B,ALPHA"``, ``"probs:Q0,...,QK-1"`` or a
        :class:`bayestrex.targets.Target` (e.g. ``Custom``).
    latent_dim : int, optional
        Defaults to ``generator.latent_dim``.
    num_chains, num_samples, warmup : int
        Chains, kept draws per chain, and warmup (adaptation) iterations per chain (default: the kernel's
        ``default_warmup``, else 500). For ``smc``, ``num_chains`` is the number of particles and ``warmup`` the
        mutation steps at the posterior after tempering (default 10).
    sigma : float
        Width of the Gaussian relaxation of the level set (> 0); ``0`` samples the level set itself (``constrained``).
    kernel : str or kernel object
        A registered name:

{kernels}

        or a configured kernel object from :mod:`bayestrex.kernels` (e.g. ``ChEES(max_steps=256)``).
    seed : int
        Same seed, same draws (on CPU).
    device : str or torch.device, optional
        Defaults to the models' device.
    progress : bool
        Show a progress bar.
    init : tensor, optional
        Starting codes ``[num_chains, latent_dim]``; by default the best of many prior draws
        (see :meth:`Posterior.initial_points`).
    checkpoint : path, optional
        Save the run to this file every ``checkpoint_every`` seconds (0: every iteration), when warmup ends and when
        it stops early (Ctrl-C, SIGTERM, an error); removed when the run finishes. Not for ``nuts``/``nuts-plate``
        (Pyro's kernel keeps state outside our reach) or ``smc`` (its warmup is not an iteration loop).
    resume : path, optional
        Continue the run saved in this checkpoint (it keeps being written to unless ``checkpoint`` names another
        file). Every other argument must be those of the run that wrote it (checked, with the models through the
        starting points); the draws are then bit-identical to an uninterrupted run's (same device, same threads).
        A missing file starts the run from the beginning, which gives the same draws.
    keep_checkpoint : bool
        Keep the checkpoint file after a finished run (by default it is removed once the ``Result`` is built; the
        CLI keeps it until ``result.nc`` is written).
    threads : int or None
        torch CPU threads for the run (put back after). Default 1: for these small batched networks one thread was
        fastest here, 5.5x faster than torch's default of 2 when other processes compete for the cores, and draws
        are reproducible only at a fixed thread count. ``None`` keeps torch's setting (large networks on an idle
        many-core machine may gain from more).
    **posterior_options
        ``prior_loc``, ``prior_scale``, ``check_logits``: see :class:`Posterior`.
    """
    with _torch_threads(threads):
        num_chains = _positive_int("num_chains", num_chains)
        num_samples = _positive_int("num_samples", num_samples)
        kern = kernels.get(kernel)
        if warmup is None:
            warmup = getattr(kern, "default_warmup", 500)
        warmup = _positive_int("warmup", warmup, minimum=0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        post = Posterior(generator, classifier, target, latent_dim=latent_dim, sigma=sigma, device=device,
                         **posterior_options)
        _check_kernel_fits(kern, post)
        z0 = _starting_points(kern, post, init, num_chains, seed, progress,
                              lambda s: Posterior(generator, classifier, target, latent_dim=latent_dim, sigma=s,
                                                  device=device, **posterior_options))
        saver, snapshot = _checkpointing(kern, post, z0, checkpoint, checkpoint_every, resume,
                                         num_samples=num_samples, warmup=warmup, seed=seed)
        t0 = time.perf_counter()
        draws = driver.run(kern, post, z0, num_samples=num_samples, warmup=warmup, seed=seed, progress=progress,
                           checkpoint=saver, resume=snapshot)
        seconds = time.perf_counter() - t0
        info = dict(draws.info, seed=seed, warmup=warmup, seconds=round(seconds, 3), device=str(post.device))
        result = Result.from_draws(draws, post, generator=generator, info=info)
        if saver is not None and draws.stopped is None and not keep_checkpoint:
            saver.finish()
        return result


def _check_kernel_fits(kern, post: Posterior) -> None:
    if getattr(kern, "needs_gradients", True) and not post.differentiable:
        free = sorted(name for name, make in kernels.KERNELS.items() if not getattr(make(), "needs_gradients", True))
        raise ValueError(f"the classifier (or generator) has no gradients (a black box: numpy, scikit-learn, a "
                         f"renderer), but kernel {getattr(kern, 'name', kern)!r} needs them; use a gradient-free "
                         f"kernel: {', '.join(repr(k) for k in free)}")
    if post.sigma == 0 and not getattr(kern, "allows_zero_sigma", False):
        raise ValueError(f"sigma=0 is the level set itself, which has no density for kernel {kern.name!r} to "
                         "sample; use kernel='constrained' (it samples the level set), or a sigma > 0")


def _starting_points(kern, post: Posterior, init, num_chains: int, seed: int, progress: bool, relaxed):
    """``z0 [C, d]``: ``init`` checked, prior draws for tempered SMC, else :meth:`Posterior.initial_points` (at
    sigma = 0 on ``relaxed(ZERO_SIGMA_START)``, the posterior relaxed to that width; the kernel projects them)."""
    if init is not None:
        z0 = torch.as_tensor(init, dtype=post.dtype)
        if z0.shape != (num_chains, post.latent_dim):
            raise ValueError(f"init must have shape [num_chains, latent_dim] = [{num_chains}, {post.latent_dim}], "
                             f"got {list(z0.shape)}")
        if z0.device != post.device:
            raise ValueError(f"device mismatch: init is on {z0.device} but the models are on {post.device}")
        return z0
    if getattr(kern, "starts_from_prior", False):  # tempered SMC: its particles start as prior draws
        return post.prior_draws(num_chains, torch.Generator().manual_seed(seed))
    start = post if post.sigma > 0 else relaxed(ZERO_SIGMA_START)
    with driver.progress_bar("starting points", enabled=progress) as update:
        return start.initial_points(num_chains, seed=seed, callback=update)


def _checkpointing(kern, post: Posterior, z0, checkpoint, every, resume, **run):
    """The :class:`Checkpoint` to write (or None) and the snapshot to resume from (or None)."""
    if checkpoint is None and resume is None:
        return None, None
    arg = "checkpoint" if checkpoint is not None else "resume"
    if not hasattr(kern, "adaptation") or hasattr(kern, "warmup") or not getattr(kern, "checkpoints", True):
        raise ValueError(f"{arg}: kernel {kern.name!r} cannot be checkpointed; use hmc, chees, slice, mh or "
                         "constrained for resumable runs")
    mark = fingerprint(kern, z0, target=post.target, sigma=post.sigma, target_value=post.value.tolist(),
                       device=post.device, threads=torch.get_num_threads(), torch=torch.__version__, **run)
    saver = Checkpoint(checkpoint if checkpoint is not None else resume, mark, every=every)
    snapshot = load_checkpoint(resume, mark) if resume is not None and Path(resume).exists() else None
    return saver, snapshot


sample.__doc__ = sample.__doc__.format(kernels="\n".join(f"        - ``{name!r}``: {text}"
                                                          for name, text in kernels.describe().items()))
