"""What a kernel may ask of a density: the ``LogDensity`` contract, the Gaussian prior, and plain densities.

Every density is a prior times a likelihood, ``log π_β(z) = log π0(z) + β · ℓ(z)`` over codes ``z [C, d]`` (one row
per chain), with ``β = 1`` except inside tempered SMC. A kernel asks for:

- ``potential_and_grad(z) -> (U [C], ∇U [C, d], aux)``: ``U = -log π_β`` and its gradient from one batched pass;
- ``evaluate(z) -> (log π_β [C], aux)``: the same without a gradient (gradient-free kernels; ``differentiable=True``
  keeps the graph, for kernels that differentiate themselves);
- ``prior``: a :class:`GaussianPrior` (elliptical slice and SMC need one) or any object with ``log_prob`` and
  ``sample`` (and optionally ``propose``: a move for Metropolis-Hastings);
- ``tempered(beta)``: the same density with the likelihood raised to ``beta``.

``aux`` holds what the same forward pass computed besides the density, ``[C, ...]`` per entry: always
``log_likelihood`` (``ℓ``, untempered), and for a :class:`~bayestrex.posterior.Posterior` the class probabilities
``probs`` and target statistics ``u``. The driver records ``aux`` for every kept draw, so nothing is computed twice.

Non-finite values (NaN or inf from a network) become ``log π = -inf`` (``U = +inf``): kernels reject them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LogDensity", "GaussianPrior", "Density", "LOG_SQRT_2PI", "residual_jacobian"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class GaussianPrior:
    """``N(loc, diag(scale²))`` over ``R^d``; ``loc`` is ``[d]``, or ``[C, d]`` for one centre per chain."""

    loc: torch.Tensor  #: [d] or [C, d]
    scale: torch.Tensor  #: [d]

    @property
    def per_chain(self) -> bool:
        """One centre per chain (a proximity prior around C data points' codes): chain ``c`` has its own prior."""
        return self.loc.dim() == 2

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``[C]`` log density of ``z [C, d]`` (normalised)."""
        w = (z - self.loc) / self.scale
        return (-0.5 * w.square() - self.scale.log() - LOG_SQRT_2PI).sum(-1)

    def sample(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """``[n, d]`` draws (``n`` must equal C for a per-chain prior); ``rng`` is a CPU ``torch.Generator``."""
        if self.per_chain and n != len(self.loc):
            raise ValueError(f"a per-chain prior has {len(self.loc)} centres; cannot draw {n} codes from it")
        eps = torch.randn(n, self.loc.shape[-1], generator=rng).to(self.loc.device, self.loc.dtype)
        return eps * self.scale + self.loc


def _finite_or(value: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.where(torch.isfinite(value), value, torch.full_like(value, fill))


class LogDensity:
    """Base class of the densities kernels run on; a subclass implements :meth:`terms` and sets ``latent_dim``,
    ``prior`` (and ``device``, ``dtype``). See the module docstring for the contract."""

    latent_dim: int
    prior: object
    beta: float | torch.Tensor = 1.0  #: likelihood temperature: 1 = the posterior; a tensor [C] = one per chain

    @property
    def base(self) -> LogDensity:
        """The untempered density (itself, unless this is a tempered view)."""
        return self

    @property
    def untempered(self) -> bool:
        return isinstance(self.beta, float) and self.beta == 1.0

    def terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(log π0 [C], ℓ [C], aux)`` at ``z [C, d]``, differentiable in ``z``; ``aux`` without ``log_likelihood``."""
        raise NotImplementedError

    @property
    def per_chain(self) -> bool:
        """Whether the prior has one centre per chain (then row ``c`` of ``z`` must be chain ``c``)."""
        return bool(getattr(self.prior, "per_chain", False))

    def _evaluate(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``(log π_β [C], aux)``, differentiable in ``z``."""
        log_prior, ll, aux = self.terms(z)
        return self._finish(log_prior + (ll if self.untempered else self.beta * ll), ll, aux)

    @staticmethod
    def _finish(joint, log_likelihood, aux):
        joint = torch.where(torch.isfinite(joint), joint, torch.full_like(joint, -math.inf))
        aux = {k: v.detach() for k, v in aux.items()}
        aux["log_likelihood"] = _finite_or(log_likelihood.detach(), -math.inf)
        return joint, aux

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """``log π_β`` ``[C]`` at ``z [C, d]`` (differentiable; non-finite values become ``-inf``)."""
        return self._evaluate(z)[0]

    def evaluate(self, z: torch.Tensor, differentiable: bool = False) -> tuple[torch.Tensor, dict]:
        """``(log π_β [C], aux)`` at ``z [C, d]``; without a gradient unless ``differentiable``."""
        if differentiable:
            return self._evaluate(z)
        with torch.no_grad():
            return self._evaluate(z)

    def potential_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(U [C], ∇U [C, d], aux)``: ``U = -log π_β`` (``+inf`` where non-finite) from one batched pass."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            lp, aux = self._evaluate(z)
            pe = -lp
            (grad,) = torch.autograd.grad(pe.sum(), z)
        pe = pe.detach()
        return torch.where(torch.isnan(pe), torch.full_like(pe, math.inf), pe), grad, aux

    differentiable: bool = True  #: whether gradients exist (False for black boxes)

    def prior_draws(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """``[n, d]`` draws from the prior (``rng`` a CPU ``torch.Generator``), on the density's device."""
        return torch.as_tensor(self.prior.sample(n, rng)).to(self.device, self.dtype)

    @torch.no_grad()
    def initial_points(self, num_chains: int, *, seed: int = 0, candidates: int | None = None, pool: int | None = None,
                       optimize_steps: int = 200, learning_rate: float = 0.05,
                       batch_size: int = 4096, callback=None) -> torch.Tensor:
        """Distinct starting codes ``[num_chains, d]`` in the posterior's main basin, spread over it.

        1. ``candidates`` prior draws (default ``max(4096, 16 C)``); keep a ``pool`` of them (default ``4 C``) by
           Gumbel top-k on the likelihood (sampling without replacement with weights ∝ likelihood), so they are
           near the level set and spread over its modes instead of piled on one point;
        2. ``optimize_steps`` of Adam on the potential, batched over the pool. A narrow level set (small ``sigma``)
           has pseudo-modes: local minima of the potential whose density is ``e^-500`` of the level set's. A chain
           started in one never leaves it (R-hat in the tens), and, for kernels that share a step size, drags the
           step size of all chains to zero;
        3. the ``num_chains`` best of the pool by Gumbel top-k on the posterior density.

        Starting points do not bias MCMC, but an MCMC chain that cannot cross between disconnected pieces of a level
        set keeps the piece it starts in: the pieces' shares are then those of the starting points (without
        replacement, not the posterior's). Tempered SMC (``kernel="smc"``) gives pieces their weights.

        ``callback(done, total)``, if given, is called after each batched evaluation and optimisation step (a
        progress bar: ``sample`` shows one, as this takes minutes for thousands of chains).
        """
        if self.per_chain:
            raise ValueError("initial_points needs one prior centre for all chains; with a per-chain prior_loc "
                             "pass init= (e.g. the prior centres themselves)")
        n = candidates or max(4096, 16 * num_chains)
        m = min(n, pool or 4 * num_chains)
        g = torch.Generator().manual_seed(seed)
        steps = optimize_steps if self.differentiable else 0
        total, done = -(-n // batch_size) + steps + -(-m // batch_size), 0

        def tick():
            nonlocal done
            done += 1
            if callback is not None:
                callback(done, total)

        def batched(f, z):
            out = []
            for b in z.split(batch_size):
                out.append(f(b))
                tick()
            return torch.cat(out)

        z = self.prior_draws(n, g)
        loglik = batched(lambda b: self.evaluate(b)[1]["log_likelihood"], z)
        z = z[_gumbel_top_k(loglik, m, g)]
        if steps > 0:
            z = z.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=learning_rate)
            for _ in range(steps):
                _, grad, _ = self.potential_and_grad(z.detach())
                z.grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                opt.step()
                tick()
            z = z.detach()
        log_density = batched(self.log_density, z)
        return z[_gumbel_top_k(log_density, num_chains, g)]

    def tempered(self, beta: float | torch.Tensor) -> LogDensity:
        """This density with the likelihood raised to ``beta`` in ``[0, 1]``: a number, or a tensor ``[C]`` with one
        temperature per chain (then every evaluation must be of all C chains, in order). A view: nothing is copied."""
        if isinstance(beta, torch.Tensor):
            if beta.dim() != 1 or not ((beta >= 0) & (beta <= 1)).all():
                raise ValueError("beta must be a number or a 1-d tensor of values in [0, 1]")
        elif not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        else:
            beta = float(beta)
        return _Tempered(self, beta)


def _gumbel_top_k(log_weight: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Indices of ``k`` draws without replacement with probabilities ∝ ``exp(log_weight)`` (NaN counts as -inf)."""
    log_weight = torch.where(torch.isfinite(log_weight), log_weight, torch.full_like(log_weight, -math.inf))
    gumbel = -torch.log(-torch.log(torch.rand(len(log_weight), generator=g).clamp_min(1e-12))).to(log_weight)
    return torch.topk(log_weight + gumbel, k).indices


class _Tempered(LogDensity):
    def __init__(self, base: LogDensity, beta):
        self._base, self.beta = base, beta
        self.latent_dim, self.prior = base.latent_dim, base.prior
        self.device, self.dtype = getattr(base, "device", None), getattr(base, "dtype", None)

    @property
    def base(self):
        return self._base

    def terms(self, z):
        return self._base.terms(z)

    def tempered(self, beta):
        return self._base.tempered(beta)


class Density(LogDensity):
    """A plain log density over ``R^d``, e.g. to test kernels on targets with known answers. One of:

    - ``Density(log_density, d)``: any ``f(z [C, d]) -> [C]`` (differentiable with torch), split for the kernels that
      need a prior as ``N(0, I)`` times the likelihood ``f / N(0, I)``;
    - ``Density(latent_dim=d, prior=GaussianPrior(...), log_likelihood=ell)``: a Gaussian prior and a log-likelihood
      ``ell(z) -> [C]``, whose evidence ``log ∫ π0 e^ℓ`` is what SMC estimates;
    - ``Density(latent_dim=d, prior=..., residual=r, sigma=s)``: the Bayes-TrEx form, ``N(0; r(z), s²)`` with
      ``r(z) -> [C, m]`` (a statistic minus its target): kernels on the level set use ``residual`` itself, and
      ``sigma = 0`` is the level set ``{r = 0}``.
    """

    def __init__(self, log_density: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 latent_dim: int | None = None, *, prior: GaussianPrior | None = None,
                 log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 residual: Callable[[torch.Tensor], torch.Tensor] | None = None, sigma: float | None = None):
        if sum(f is not None for f in (log_density, log_likelihood, residual)) != 1:
            raise ValueError("Density needs exactly one of log_density, log_likelihood or residual (with sigma)")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if residual is not None:
            if sigma is None or not (float(sigma) >= 0 and math.isfinite(float(sigma))):
                raise ValueError(f"sigma must be a finite number >= 0 with residual, got {sigma!r}")
            self.sigma, self._r = float(sigma), residual
            log_likelihood = self._residual_loglik
        self.latent_dim = latent_dim
        self._f, self._ell = log_density, log_likelihood
        if prior is None:
            prior = GaussianPrior(torch.zeros(latent_dim), torch.ones(latent_dim))
        self.prior = prior
        self.device, self.dtype = prior.loc.device, prior.loc.dtype

    def _residual_loglik(self, z):
        r = self._r(z)
        r = r.unsqueeze(-1) if r.dim() == 1 else r
        if self.sigma == 0:
            return torch.full(r.shape[:-1], -math.inf, dtype=r.dtype, device=r.device)
        return (-0.5 * (r / self.sigma).square() - math.log(self.sigma) - LOG_SQRT_2PI).sum(-1)

    def residual(self, z):
        """``(r(z) [C, m], {})`` (densities built with ``residual=``)."""
        if getattr(self, "_r", None) is None:
            raise AttributeError("this Density has no residual (build it with residual=..., sigma=...)")
        r = self._r(z)
        return (r.unsqueeze(-1) if r.dim() == 1 else r), {}

    def terms(self, z):
        lp = self.prior.log_prob(z)
        if self._ell is not None:
            return lp, self._ell(z), {}
        return lp, self._f(z) - lp, {}

    def _evaluate(self, z):
        if self._f is None or not self.untempered:
            return super()._evaluate(z)
        f = self._f(z)  # exactly f: no prior added and taken off again
        return self._finish(f, f - self.prior.log_prob(z), {})


def residual_jacobian(density, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(r [C, m], J [C, m, d], aux)`` at prior-standardised ``x [C, d]`` (``z = loc + scale · x``): the residual
    ``u(z) − u*`` of a density with ``residual`` and its Jacobian ``∂r/∂x``, both float64; one forward pass and ``m``
    backward passes (the level-set kernels and ``analyses/level_set_geometry.py`` share it)."""
    prior = density.prior
    xt = x.detach().to(density.dtype).requires_grad_(True)
    with torch.enable_grad():
        r, aux = density.residual((prior.loc + prior.scale * xt.to(prior.scale.dtype)).to(density.dtype))
        m = r.shape[-1]
        J = torch.stack([torch.autograd.grad(r[:, j].sum(), xt, retain_graph=j < m - 1)[0] for j in range(m)], 1)
    return r.detach().double(), J.double(), {k: v.detach() for k, v in aux.items()}
