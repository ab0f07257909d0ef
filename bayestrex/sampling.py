"""``sample``: validate the inputs, build the posterior, run a kernel through the driver, hand back a ``Result``."""

from __future__ import annotations

import time

import torch

from . import driver, kernels
from .posterior import Posterior
from .result import Result

__all__ = ["sample"]

#: at sigma = 0, starting points are chosen on the posterior relaxed to this width, then projected onto the level set
ZERO_SIGMA_START = 0.05


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def sample(generator, classifier, target, *, latent_dim: int | None = None, num_chains: int = 4,
           num_samples: int = 500, warmup: int | None = None, sigma: float = 0.05, kernel="nuts", seed: int = 0,
           device=None, progress: bool = True, init: torch.Tensor | None = None, **posterior_options) -> Result:
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
    **posterior_options
        ``prior_loc``, ``prior_scale``, ``check_logits``: see :class:`Posterior`.
    """
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
    if getattr(kern, "needs_gradients", True) and not post.differentiable:
        free = sorted(name for name, make in kernels.KERNELS.items() if not getattr(make(), "needs_gradients", True))
        raise ValueError(f"the classifier (or generator) has no gradients (a black box: numpy, scikit-learn, a "
                         f"renderer), but kernel {getattr(kern, 'name', kern)!r} needs them; use a gradient-free "
                         f"kernel: {', '.join(repr(k) for k in free)}")
    if post.sigma == 0 and not getattr(kern, "allows_zero_sigma", False):
        raise ValueError(f"sigma=0 is the level set itself, which has no density for kernel {kern.name!r} to sample; "
                         "use kernel='constrained' (it samples the level set), or a sigma > 0")
    if init is None and getattr(kern, "starts_from_prior", False):  # tempered SMC: its particles start as prior draws
        z0 = post.prior_draws(num_chains, torch.Generator().manual_seed(seed))
    elif init is None:  # at sigma = 0 the starting points come from the relaxed posterior; the kernel projects them
        start = post if post.sigma > 0 else Posterior(generator, classifier, target, latent_dim=latent_dim,
                                                      sigma=ZERO_SIGMA_START, device=device, **posterior_options)
        z0 = start.initial_points(num_chains, seed=seed)
    else:
        z0 = torch.as_tensor(init, dtype=post.dtype)
        if z0.shape != (num_chains, post.latent_dim):
            raise ValueError(f"init must have shape [num_chains, latent_dim] = [{num_chains}, {post.latent_dim}], "
                             f"got {list(z0.shape)}")
        if z0.device != post.device:
            raise ValueError(f"device mismatch: init is on {z0.device} but the models are on {post.device}")

    t0 = time.perf_counter()
    draws = driver.run(kern, post, z0, num_samples=num_samples, warmup=warmup, seed=seed, progress=progress)
    seconds = time.perf_counter() - t0
    info = dict(draws.info, seed=seed, warmup=warmup, seconds=round(seconds, 3), device=str(post.device))
    return Result.from_draws(draws, post, generator=generator, info=info)


sample.__doc__ = sample.__doc__.format(kernels="\n".join(f"        - ``{name!r}``: {text}"
                                                          for name, text in kernels.describe().items()))
