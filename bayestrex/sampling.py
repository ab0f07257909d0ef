"""``sample``: validate the inputs, build the posterior, run a kernel, hand back a ``Result``."""

from __future__ import annotations

import time

import torch

from . import kernels
from .posterior import Posterior
from .result import Result

__all__ = ["sample"]


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def sample(generator, classifier, target, *, latent_dim: int | None = None, num_chains: int = 4,
           num_samples: int = 500, warmup: int = 500, sigma: float = 0.05, kernel="nuts", seed: int = 0,
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
        Chains, kept draws per chain, and warmup (adaptation) iterations per chain.
    sigma : float
        Width of the Gaussian relaxation of the level set (> 0).
    kernel : str or kernel object
        ``"nuts"`` (Pyro NUTS, independent chains), ``"nuts-plate"`` (Pyro NUTS, chains as a plate), ``"hmc"``
        (batched HMC, per-chain tuning), ``"chees"`` (ChEES-HMC, for many chains), ``"slice"`` (elliptical slice
        sampling: no gradients, for black-box classifiers), or a configured kernel object
        from :mod:`bayestrex.kernels` (e.g. ``ChEES(max_steps=256)``).
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
    warmup = _positive_int("warmup", warmup, minimum=0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    kern = kernels.get(kernel)
    post = Posterior(generator, classifier, target, latent_dim=latent_dim, sigma=sigma, device=device,
                     **posterior_options)
    if getattr(kern, "needs_gradients", True) and not post.differentiable:
        free = sorted(name for name, make in kernels.KERNELS.items() if not getattr(make(), "needs_gradients", True))
        raise ValueError(f"the classifier (or generator) has no gradients (a black box: numpy, scikit-learn, a "
                         f"renderer), but kernel {getattr(kern, 'name', kern)!r} needs them; use a gradient-free "
                         f"kernel: {', '.join(repr(k) for k in free)}")
    if init is None:
        z0 = post.initial_points(num_chains, seed=seed)
    else:
        z0 = torch.as_tensor(init, dtype=post.dtype)
        if z0.shape != (num_chains, post.latent_dim):
            raise ValueError(f"init must have shape [num_chains, latent_dim] = [{num_chains}, {post.latent_dim}], "
                             f"got {list(z0.shape)}")
        if z0.device != post.device:
            raise ValueError(f"device mismatch: init is on {z0.device} but the models are on {post.device}")

    t0 = time.perf_counter()
    draws = kern.run(post, z0, num_samples=num_samples, warmup=warmup, seed=seed, progress=progress)
    seconds = time.perf_counter() - t0
    probs = _probs(post, draws.z)
    return Result(
        z=draws.z, probs=probs, u=post.target.statistic(probs), stats=draws.stats, target=repr(post.target),
        target_value=post.value.cpu(), statistic_names=post.names, tolerance=post.target.tolerance, sigma=post.sigma,
        failed_chains=draws.failed, generator=generator,
        info=dict(draws.info, seed=seed, warmup=warmup, seconds=round(seconds, 3), device=str(post.device)),
    )


@torch.no_grad()
def _probs(post: Posterior, z: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Classifier probabilities ``[C, S, K]`` of the draws (NaN for a failed chain's NaN draws)."""
    if post.prior_loc.dim() == 2:  # per-chain models (e.g. a residual per chain): decode draw by draw, C rows each
        return torch.stack([post.probs(z[:, t].to(post.device, post.dtype)).float().cpu()
                            for t in range(z.shape[1])], dim=1)
    flat = z.reshape(-1, z.shape[-1])
    out = torch.full((len(flat), post.num_classes), float("nan"))
    ok = torch.isfinite(flat).all(-1)
    if ok.any():
        out[ok] = torch.cat([post.probs(b.to(post.device, post.dtype)).float().cpu()
                             for b in flat[ok].split(batch_size)])
    return out.reshape(*z.shape[:2], -1)
