"""Elliptical slice sampling (Murray, Adams & MacKay, AISTATS 2010), vectorized over chains: no gradients.

For a posterior ``N(z; μ, diag(s²)) · L(z)`` every draw picks an ellipse through the current state ``z`` and a
prior draw ``ν``, a slice level ``log y = log L(z) + log U``, and shrinks an angle bracket toward 0 until the point
on the ellipse lies above the slice. It is exact, needs only likelihood evaluations, and has nothing to tune: the
kernel for classifiers without gradients (scikit-learn models, numpy functions, renderers). Each shrink step of all
still-searching chains is one batched likelihood call; chains that have accepted wait (masked).

Per-draw statistics: ``n_steps`` (likelihood evaluations of the chain in that draw), ``acceptance_rate`` (1, or 0
when the bracket collapsed after ``max_shrinks`` evaluations and the chain kept its state), ``diverging`` (that
collapse). With a :class:`~bayestrex.density.Density` given as one log density the prior is N(0, I) and
``L = density / N(0, I)``. At a temperature ``beta`` (inside SMC) the slice runs on ``L^beta``: exact there too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..density import GaussianPrior
from . import register
from .base import positive_int

__all__ = ["EllipticalSlice", "SliceState", "SliceInfo"]

#: the fitted reference Gaussian's covariance is inflated by this factor squared, so that density / reference stays
#: bounded in the tails (a reference narrower than the target makes the slice's likelihood blow up there)
REFERENCE_INFLATION = 1.3


def slice_level(loglik: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """The slice's height ``log y = log L(z) + log U``, ``U ~ Uniform(0, 1)``, per chain ``[C]``."""
    return loglik + torch.log(torch.rand(loglik.shape, generator=rng, device=loglik.device, dtype=loglik.dtype))


class _Reference(NamedTuple):
    """The Gaussian ``N(loc, L Lᵀ)`` (or ``N(loc, diag(scale²))``) whose ellipses the sampler walks."""

    loc: torch.Tensor  #: [d] or [C, d]
    chol: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def draw(self, shape, rng, like):
        eps = torch.randn(shape, generator=rng, device=like.device, dtype=like.dtype)
        return eps @ self.chol.T if self.chol is not None else eps * self.scale

    def log_prob(self, z):
        w = torch.linalg.solve_triangular(self.chol, (z - self.loc).T, upper=False).T
        return -0.5 * w.square().sum(-1) - self.chol.diagonal().log().sum()


def _same_reference(a: _Reference, b: _Reference) -> bool:
    """Whether two references are the same Gaussian: by identity, else by value (a resumed run rebuilds the state's
    and the adaptation's references as two objects; re-evaluating would change nothing but the batch shapes)."""
    if a is b:
        return True
    same = lambda x, y: (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))  # noqa: E731
    return same(a.loc, b.loc) and same(a.chol, b.chol) and same(a.scale, b.scale)


class SliceState(NamedTuple):
    z: torch.Tensor  #: [C, d]
    loglik: torch.Tensor  #: [C], log of the density over the reference (the slice's "likelihood")
    aux: dict  #: the density's by-products at z
    reference: _Reference


class SliceInfo(NamedTuple):
    n_steps: torch.Tensor  #: [C] likelihood evaluations
    acceptance_rate: torch.Tensor  #: [C] 1, or 0 when the bracket collapsed
    diverging: torch.Tensor  #: [C] bool: the bracket collapsed after max_shrinks evaluations


class SliceAdaptState(NamedTuple):
    reference: _Reference
    history: tuple  #: states [C, d] collected for the next fit
    fits: dict  #: iteration at which to fit -> first iteration of its history


def _slice_loglik(density, reference: _Reference, prior_reference: bool):
    """``(z [n, d], rows [n] or None) -> (log L(z) [n], aux)``: the density over the reference, non-finite values as
    ``-inf``; ``rows`` are the chains the points belong to (for a temperature per chain)."""

    def loglik(z, rows=None):
        if density.untempered:
            logp, aux = density.evaluate(z)
            ll = aux["log_likelihood"] if prior_reference else logp - reference.log_prob(z)
        else:  # a tempered view (inside SMC): the base density's likelihood, times each chain's temperature
            _, aux = density.base.evaluate(z)
            beta = density.beta
            if isinstance(beta, torch.Tensor):
                beta = beta if rows is None else beta[rows]
            ll = beta * aux["log_likelihood"]
            if not prior_reference:
                ll = density.prior.log_prob(z) + ll - reference.log_prob(z)
        return torch.where(torch.isfinite(ll) | (ll == -math.inf), ll, torch.full_like(ll, -math.inf)), aux

    return loglik


@register("slice")
class EllipticalSlice:
    """Elliptical slice sampling over C chains at once.

    ``max_shrinks`` bounds the likelihood evaluations per draw. ``adapt=True`` (default) re-centres the ellipses at a
    quarter and at half of warmup on a Gaussian fitted to the chains' recent states (pooled mean and dense
    covariance, the likelihood becoming density / that Gaussian): exact all the same, and far better mixing when the
    posterior is much narrower or wider than the prior. It is skipped for per-chain priors.
    """

    name = "slice"
    summary = "elliptical slice sampling: likelihood evaluations only, exact, nothing to tune (black-box classifiers)"
    needs_gradients = False
    recorded = ("n_steps", "acceptance_rate", "diverging")

    def __init__(self, max_shrinks: int = 100, adapt: bool = True):
        self.max_shrinks = positive_int("max_shrinks", max_shrinks)
        self.adapt = bool(adapt)

    @staticmethod
    def _prior_reference(density) -> _Reference:
        prior = density.prior
        if not isinstance(prior, GaussianPrior):
            raise ValueError("kernel 'slice' needs the Gaussian prior; a custom prior is sampled with kernel='mh'")
        return _Reference(prior.loc, scale=prior.scale)

    def init(self, density, z0, rng) -> SliceState:
        ref = self._prior_reference(density)
        ll, aux = _slice_loglik(density, ref, True)(z0)
        return SliceState(z0.clone(), ll, aux, ref)

    def step(self, density, state: SliceState, params: dict, rng) -> tuple[SliceState, SliceInfo]:
        """One draw for every chain: an ellipse through ``z`` and a reference draw, a slice level, a shrinking
        bracket of angles; each shrink evaluates the still-searching chains in one batched call."""
        ref = params.get("reference") or state.reference  # None: keep the state's ellipses
        prior_ref = ref.chol is None
        loglik = _slice_loglik(density, ref, prior_ref)
        z, ll, aux = state.z, state.loglik, state.aux
        if not _same_reference(ref, state.reference):  # re-centred: the state measured against the new one
            ll, aux = loglik(z)
        C = z.shape[0]
        nu = ref.draw(z.shape, rng, z)
        log_y = slice_level(ll, rng)
        theta = torch.rand(C, generator=rng, device=z.device, dtype=z.dtype) * 2 * math.pi
        lo, hi = theta - 2 * math.pi, theta.clone()
        f = z - ref.loc
        searching = torch.ones(C, dtype=torch.bool, device=z.device)
        evals = torch.zeros(C, dtype=torch.long)
        new_z, new_ll, new_aux = z.clone(), ll.clone(), {k: v.clone() for k, v in aux.items()}
        per_chain = density.per_chain  # one model per chain (a residual per chain): evaluate every row
        for _ in range(self.max_shrinks):
            prop = f * torch.cos(theta)[:, None] + nu * torch.sin(theta)[:, None] + ref.loc
            idx = torch.nonzero(searching).flatten()
            if per_chain:
                prop_ll, prop_aux = loglik(prop)
                prop_ll, prop_aux = prop_ll[idx], {k: v[idx] for k, v in prop_aux.items()}
            else:
                prop_ll, prop_aux = loglik(prop[idx], idx)
            evals[idx.cpu()] += 1
            ok = prop_ll > log_y[idx]
            new_z[idx[ok]], new_ll[idx[ok]] = prop[idx[ok]], prop_ll[ok]
            for k, v in prop_aux.items():
                new_aux[k][idx[ok]] = v[ok].to(new_aux[k].dtype)
            searching[idx[ok]] = False
            if not searching.any():
                break
            rest = idx[~ok]  # shrink the bracket toward 0 and draw a new angle
            t = theta[rest]
            lo[rest] = torch.where(t < 0, t, lo[rest])
            hi[rest] = torch.where(t < 0, hi[rest], t)
            theta[rest] = lo[rest] + (hi[rest] - lo[rest]) * torch.rand(len(rest), generator=rng, device=z.device,
                                                                        dtype=z.dtype)
        collapsed = searching.cpu()
        return (SliceState(new_z, new_ll, new_aux, ref),
                SliceInfo(evals, (~collapsed).float(), collapsed))

    def adaptation(self, density, z0, num_warmup) -> _Recentring:
        return _Recentring(self._prior_reference(density),
                           self.adapt and not density.per_chain and num_warmup >= 20 and z0.shape[0] >= 2)


class _Recentring:
    """Re-centre the ellipses twice: at warmup/4 on the states since warmup/8, at warmup/2 on those since warmup/4."""

    def __init__(self, prior_reference: _Reference, enabled: bool):
        self.prior_reference, self.enabled = prior_reference, enabled

    def init(self, state, num_warmup) -> SliceAdaptState:
        fits = {num_warmup // 4: num_warmup // 8, num_warmup // 2: num_warmup // 4} if self.enabled else {}
        return SliceAdaptState(self.prior_reference, (), fits)

    def parameters(self, a: SliceAdaptState, it, rng) -> dict:
        return {"reference": a.reference}

    def update(self, a: SliceAdaptState, it, previous, state, info, params) -> SliceAdaptState:
        history = a.history
        if any(start <= it < at for at, start in a.fits.items()):
            history = history + (state.z.detach(),)
        if it + 1 in a.fits:
            return a._replace(reference=_fit_reference(torch.cat(history), a.reference), history=())
        return a._replace(history=history)

    def final(self, a):
        return a._replace(history=())

    def describe(self, a) -> dict:
        return dict(adapted=bool(a.fits))


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
        chol = torch.linalg.cholesky(cov * REFERENCE_INFLATION**2)
    except RuntimeError:
        return fallback
    return _Reference(mean, chol=chol)
