"""Elliptical slice sampling (Murray, Adams & MacKay, AISTATS 2010), vectorized over chains: no gradients.

For a posterior ``N(z; μ, diag(s²)) · L(z)`` every draw picks an ellipse through the current state ``z`` and a
prior draw ``ν``, a slice level ``log y = log L(z) + log U``, and shrinks an angle bracket toward 0 until the point
on the ellipse lies above the slice. It is exact, needs only likelihood evaluations, and has nothing to tune: the
kernel for classifiers without gradients (scikit-learn models, numpy functions, renderers). Each shrink step of all
still-searching chains is one batched likelihood call; chains that have accepted wait (masked).

Per-draw statistics: ``n_steps`` (likelihood evaluations of the chain in that draw), ``acceptance_rate`` (1, or 0
when the bracket collapsed after ``max_shrinks`` evaluations and the chain kept its state), ``diverging`` (that
collapse). With a :class:`~bayestrex.kernels.Density` the prior is taken as N(0, I) and ``L = density / N(0, I)``.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from . import Draws, register

__all__ = ["EllipticalSlice", "prior_and_likelihood"]


def prior_and_likelihood(posterior):
    """``(loc, scale, log_likelihood(z) -> [C], log_density(z) -> [C])`` of a Posterior (its Gaussian prior and
    likelihood) or of a Density (N(0, I) and the density over it). Non-finite values become ``-inf``."""
    if getattr(posterior, "prior", None) is not None:
        raise ValueError("kernel 'slice' needs the Gaussian prior; a custom prior is sampled with kernel='mh'")
    if hasattr(posterior, "prior_loc") and hasattr(posterior, "statistics"):
        loc, scale = posterior.prior_loc, posterior.prior_scale

        def loglik(z):
            return posterior.log_likelihood(posterior.statistics(z)[1])

        logdens = posterior.log_density
    else:
        d = posterior.latent_dim
        loc, scale = torch.zeros(d), torch.ones(d)

        def loglik(z):
            return posterior.log_density(z) + 0.5 * z.square().sum(-1)

        logdens = posterior.log_density

    def safe(f):
        def g(z):
            with torch.no_grad():
                v = f(z)
            return torch.where(torch.isfinite(v) | (v == -math.inf), v, torch.full_like(v, -math.inf))
        return g

    return loc, scale, safe(loglik), safe(logdens)


class _Reference:
    """The Gaussian ``N(loc, L Lᵀ)`` whose ellipses the sampler walks; the likelihood is the density over it."""

    def __init__(self, loc, chol=None, scale=None):
        self.loc, self.chol, self.scale = loc, chol, scale

    def draw(self, shape, g, like):
        eps = torch.randn(shape, generator=g, device=like.device, dtype=like.dtype)
        return eps @ self.chol.T if self.chol is not None else eps * self.scale

    def log_prob(self, z):
        w = torch.linalg.solve_triangular(self.chol, (z - self.loc).T, upper=False).T
        return -0.5 * w.square().sum(-1) - self.chol.diagonal().log().sum()


@register("slice")
class EllipticalSlice:
    """Elliptical slice sampling over C chains at once.

    ``max_shrinks`` bounds the likelihood evaluations per draw. ``adapt=True`` (default) re-centres the ellipses at a
    quarter and at half of warmup on a Gaussian fitted to the chains' recent states (pooled mean and dense
    covariance, the likelihood becoming density / that Gaussian): exact all the same, and far better mixing when the
    posterior is much narrower or wider than the prior. It is skipped for per-chain priors.
    """

    name = "slice"
    needs_gradients = False

    def __init__(self, max_shrinks: int = 100, adapt: bool = True):
        if isinstance(max_shrinks, bool) or not isinstance(max_shrinks, int) or max_shrinks < 1:
            raise ValueError(f"max_shrinks must be an integer >= 1, got {max_shrinks!r}")
        self.max_shrinks, self.adapt = max_shrinks, bool(adapt)

    def step(self, z, ll, ref, loglik, g):
        """One draw for every chain: ``(z, ll, evaluations [C], collapsed [C])``; ``ll`` is ``loglik(z)``."""
        C = z.shape[0]
        nu = ref.draw(z.shape, g, z)
        log_y = ll + torch.log(torch.rand(C, generator=g, device=z.device, dtype=z.dtype))
        theta = torch.rand(C, generator=g, device=z.device, dtype=z.dtype) * 2 * math.pi
        lo, hi = theta - 2 * math.pi, theta.clone()
        f = z - ref.loc
        searching = torch.ones(C, dtype=torch.bool, device=z.device)
        evals = torch.zeros(C, dtype=torch.long)
        new_z, new_ll = z.clone(), ll.clone()
        per_chain = ref.loc.dim() == 2  # per-chain models (a residual per chain): evaluate every row
        for _ in range(self.max_shrinks):
            prop = f * torch.cos(theta)[:, None] + nu * torch.sin(theta)[:, None] + ref.loc
            idx = torch.nonzero(searching).flatten()
            prop_ll = loglik(prop)[idx] if per_chain else loglik(prop[idx])
            evals[idx.cpu()] += 1
            ok = prop_ll > log_y[idx]
            new_z[idx[ok]], new_ll[idx[ok]] = prop[idx[ok]], prop_ll[ok]
            searching[idx[ok]] = False
            if not searching.any():
                break
            rest = idx[~ok]  # shrink the bracket toward 0 and draw a new angle
            t = theta[rest]
            lo[rest] = torch.where(t < 0, t, lo[rest])
            hi[rest] = torch.where(t < 0, hi[rest], t)
            theta[rest] = lo[rest] + (hi[rest] - lo[rest]) * torch.rand(len(rest), generator=g, device=z.device,
                                                                        dtype=z.dtype)
        return new_z, new_ll, evals, searching.cpu()

    def run(self, posterior, z0, *, num_samples, warmup, seed, progress=True) -> Draws:
        loc, scale, loglik, logdens = prior_and_likelihood(posterior)
        ref, lik = _Reference(loc, scale=scale), loglik
        g = torch.Generator(device=z0.device).manual_seed(seed)
        z, ll = z0.clone(), lik(z0)
        # re-centre twice: at warmup/4 on the states since warmup/8, at warmup/2 on the states since warmup/4
        can = self.adapt and loc.dim() == 1 and warmup >= 20 and z0.shape[0] >= 2
        fits = {warmup // 4: warmup // 8, warmup // 2: warmup // 4} if can else {}
        history, zs, evals, collapsed, total, t0 = [], [], [], [], 0, time.perf_counter()
        with tqdm(total=warmup + num_samples, desc=self.name, disable=not progress, unit="it") as bar:
            for it in range(warmup + num_samples):
                if it in fits:
                    ref = _fit_reference(torch.cat(history), ref)
                    lik = (lambda r: lambda q: logdens(q) - r.log_prob(q))(ref)
                    ll = lik(z)
                    history = []
                z, ll, n, stuck = self.step(z, ll, ref, lik, g)
                total += int(n.sum())
                if any(start <= it < at for at, start in fits.items()):
                    history.append(z.detach())
                if it >= warmup:
                    zs.append(z.detach().cpu())
                    evals.append(n)
                    collapsed.append(stuck)
                bar.update()
        n_steps = torch.stack(evals, dim=1)
        diverging = torch.stack(collapsed, dim=1)
        stats = dict(n_steps=n_steps, acceptance_rate=(~diverging).float(), diverging=diverging)
        info = dict(kernel=self.name, likelihood_evals=total, grad_evals=0, max_shrinks=self.max_shrinks,
                    adapted=bool(fits), sampling_seconds=time.perf_counter() - t0)
        return Draws(z=torch.stack(zs, dim=1), stats=stats, info=info)


def _fit_reference(states: torch.Tensor, fallback: _Reference) -> _Reference:
    """A Gaussian fitted to warmup states ``[n, d]`` (covariance shrunk toward its diagonal, inflated by 1.3² so the
    density / reference ratio stays bounded in the tails); the fallback when the fit fails."""
    finite = states[torch.isfinite(states).all(-1)]
    if len(finite) < 2 * states.shape[-1] + 2:
        return fallback
    mean = finite.mean(0)
    cov = torch.cov(finite.T).reshape(states.shape[-1], states.shape[-1])
    n = len(finite)
    cov = (n / (n + 5.0)) * cov + (5.0 / (n + 5.0)) * torch.diag(cov.diagonal()) + 1e-6 * torch.eye(len(mean),
                                                                                                     dtype=cov.dtype)
    try:
        chol = torch.linalg.cholesky(cov * 1.3**2)
    except RuntimeError:
        return fallback
    return _Reference(mean, chol=chol)
