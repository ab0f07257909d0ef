"""The lifted level set of a density: its coordinates, constraint, potential and the projections onto it.

Manifold lifting (Au, Graham & Thiery 2020; constrained HMC on differentiable generators: Graham & Storkey 2017).
The posterior ``π0(z) N(u*; u(z), σ²)`` is the marginal of ``(z, y)`` with ``y ~ N(0, I_m)`` conditioned on the
constraint ``c(z, y) = u(z) + σ y - u* = 0``: on that d-dimensional manifold of ``R^{d+m}`` the density with respect
to surface measure is ``π0(z) N(y; 0, I) / sqrt(det(Dc Dcᵀ))``, ``Dc = [J, σ I]``, ``J = ∂u/∂z`` (the co-area
formula). Statistics marked ``soft`` (those whose target value the softmax only approaches: ``Target.saturating``)
are not lifted: their likelihood ``exp(-|r_S|² / 2σ²)`` stays a term of the potential, so the manifold is
``{u_H(z) + σ y_H = u*_H}`` of the others (lifting a saturating statistic makes ``y`` exponential in ``z``: a manifold
so curved that Newton's projections fail and the step shrinks, README "Small σ on a network").
As σ → 0 the manifold tends to the level set itself (times ``y``) and stays well conditioned
(``Dc Dcᵀ = J Jᵀ + σ² I``). ``sigma = 0`` is the level set exactly: ``π0(z) / sqrt(det(J Jᵀ))``.

What the constrained kernel (:mod:`bayestrex.kernels.constrained`) moves on: ``Lifted`` (the system of one density),
``tangent`` (momentum onto the tangent space), ``retract`` (a position step pulled back onto the manifold by Newton's
or the chord method), ``pull_onto`` (initial placement at ``sigma = 0``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..density import GaussianPrior
from .base import select

__all__ = ["Lifted", "gram_log_det", "pull_onto", "tangent", "retract", "MAX_NEWTON", "MAX_CHORD", "PROJECTIONS"]

#: Newton converges when the constraint's max norm is below this many units of the density's float resolution (a
#: float32 network's statistics are exact to ~1e-6 at best; a position criterion would amplify that noise by 1/sigma
#: in y); the reverse step must return within the position tolerance plus what the constraint tolerance leaves open
#: (``Lifted.reverse_tolerance``)
CONSTRAINT_TOL_EPS, REVERSE_TOL_EPS = 100, 2000
#: the reverse check's tolerance never exceeds this (prior units; it grows where Dc nearly loses rank, at sigma = 0):
#: another root of the projection lies about a curvature radius away, 0.1-0.3 on the digits network (README, "Small
#: σ on a network", turn length)
REVERSE_TOL_MAX = 0.01
MAX_NEWTON = 20
PROJECTIONS = ("newton", "chord")
#: the chord iteration converges linearly: more iterations, each a forward pass only
MAX_CHORD = 50


class Pass(NamedTuple):
    """One forward pass of the network at ``q``, its graph kept for the derivatives that are needed."""

    q: torch.Tensor  #: [C, D] float64
    x: torch.Tensor  #: [C, d] the latent part, in the density's dtype, with requires_grad
    r: torch.Tensor  #: [C, m] the residual u(z) - u*, with its graph
    aux: dict


class Lifted:
    """The lifted system of one density: coordinates, constraint, potential and their derivatives."""

    def __init__(self, density, soft: tuple[int, ...] = ()):
        prior = density.prior
        if not isinstance(prior, GaussianPrior):
            raise ValueError("kernel 'constrained' needs the Gaussian prior; a custom prior is sampled with "
                             "kernel='mh'")
        if not callable(getattr(density, "residual", None)) or getattr(density, "sigma", None) is None:
            raise ValueError("kernel 'constrained' needs a density with a Gaussian likelihood of statistics: "
                             "residual(z) -> u(z) - u* and sigma (a Posterior, or Density(residual=..., sigma=...))")
        if not getattr(density, "smooth", True):
            raise ValueError(f"kernel 'constrained' moves along the level set and needs statistics that are smooth "
                             f"there; target {getattr(density, 'target', '?')!r} has kinks on it (for ambiguous "
                             f"targets use the smooth form, e.g. 'ambiguous:3,8,smooth')")
        if not density.untempered:
            raise ValueError("kernel 'constrained' samples the posterior itself (beta = 1), not a tempered density")
        self.density, self.prior = density, prior
        self.sigma = float(density.sigma)
        self.soft = tuple(int(j) for j in soft)
        self._index: dict = {}  # (m, device) -> the hard and soft statistics' indices
        if self.soft and not self.sigma > 0:
            raise ValueError("soft statistics need sigma > 0 (at sigma = 0 every statistic is a constraint)")
        self.d = density.latent_dim
        eps = torch.finfo(density.dtype).eps
        self.tol_c, self.tol_rev = CONSTRAINT_TOL_EPS * eps, REVERSE_TOL_EPS * eps

    def z_of(self, x: torch.Tensor) -> torch.Tensor:
        return (self.prior.loc + self.prior.scale * x.to(self.prior.scale.dtype)).to(self.density.dtype)

    def x_of(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.prior.loc) / self.prior.scale).double()

    def split(self, t: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hard, soft)`` parts of ``t`` along the statistics' dimension ``dim``: the constraints and the soft
        terms."""
        key = (t.shape[dim], t.device)
        if key not in self._index:
            hard = [j for j in range(key[0]) if j not in self.soft]
            self._index[key] = (torch.tensor(hard, dtype=torch.long, device=t.device),
                                torch.tensor(self.soft, dtype=torch.long, device=t.device))
        hard, soft = self._index[key]
        return t.index_select(dim, hard), t.index_select(dim, soft)

    def forward(self, q: torch.Tensor) -> Pass:
        """One forward pass at ``q [C, D]`` with its graph, for the derivatives below to share."""
        x = q[:, : self.d].detach().to(self.density.dtype).requires_grad_(True)
        with torch.enable_grad():
            r, aux = self.density.residual(self.z_of(x))
        return Pass(q, x, r, aux)

    def constraint_of(self, f: Pass) -> torch.Tensor:
        """``c [C, m_h]`` (float64) of a forward pass."""
        rh = self.split(f.r.detach().double())[0]
        return rh + self.sigma * f.q[:, self.d:] if self.sigma > 0 else rh

    def jacobian_of(self, f: Pass) -> torch.Tensor:
        """``Dc [C, m_h, D]`` (float64) of a forward pass: ``m_h`` backward passes."""
        with torch.enable_grad():
            rh = self.split(f.r)[0]
            J = torch.stack([torch.autograd.grad(rh[:, j].sum(), f.x, retain_graph=True)[0]
                             for j in range(rh.shape[-1])], 1)
        return self._lifted_jacobian(J.double())

    def soft_of(self, f: Pass) -> tuple[torch.Tensor, torch.Tensor]:
        """The soft terms' potential ``|r_S|² / 2σ² [C]`` and its gradient in ``x`` ``[C, d]`` (float64) of a forward
        pass: one backward pass (none, and zeros, without soft statistics)."""
        if not self.soft:
            return torch.zeros_like(f.q[:, 0]), torch.zeros_like(f.q[:, : self.d])
        with torch.enable_grad():
            U = 0.5 * (self.split(f.r)[1].double() / self.sigma).square().sum(-1)
            (g,) = torch.autograd.grad(U.sum(), f.x, retain_graph=True)
        return U.detach(), g.double()

    def aux_of(self, f: Pass) -> dict:
        """What is recorded beside a draw: the residual's (``probs``, ``u``) with ``log_likelihood`` (of all ``m``
        statistics)."""
        return {k: v.detach() for k, v in f.aux.items()} | {"log_likelihood": self._log_likelihood(f.r)}

    def jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict, tuple]:
        """``(c [C, m_h], Dc [C, m_h, D], aux, soft)`` at ``q`` (float64): one forward pass, ``m_h`` backward passes
        and, with soft statistics, one more (:meth:`passes` in all)."""
        f = self.forward(q)
        return self.constraint_of(f), self.jacobian_of(f), self.aux_of(f), self.soft_of(f)

    def constraint(self, q: torch.Tensor) -> torch.Tensor:
        """``c [C, m_h]`` at ``q`` (float64): one forward pass, no graph."""
        d, s = self.d, self.sigma
        with torch.no_grad():
            r, _ = self.density.residual(self.z_of(q[:, :d]))
        rh = self.split(r.double())[0]
        return rh + s * q[:, d:] if s > 0 else rh

    def reverse_tolerance(self, dc: torch.Tensor) -> torch.Tensor:
        """``[C]``: how far the reverse step may land from the start and still have returned to it, given the
        Jacobian ``Dc [C, m_h, D]`` at the new point. Both points lie in the same affine normal space there (the
        start by construction, the reverse step's iterates by the projection) with ``|c| < tol_c``, so two solutions
        at the same root can differ by up to ``2 √m_h tol_c / s_min(Dc)``: ``tol_rev`` plus that, at most
        ``REVERSE_TOL_MAX``. A fixed tolerance
        rejected steps that had returned (on `graded:1,7,0.3` at σ = 0.0125: 6-7% of the steps, each back within
        1-8·10⁻⁴ of the start where ``tol_c / s_min`` was 6-10·10⁻⁴; README, "Soft statistics"); another root lies
        a curvature radius away."""
        s_min = torch.linalg.eigvalsh(dc @ dc.mT)[:, 0].clamp_min(0).sqrt()  # s_min >= sigma
        return (self.tol_rev + 2 * math.sqrt(dc.shape[1]) * self.tol_c / s_min).clamp_max(REVERSE_TOL_MAX)

    def passes(self, c: torch.Tensor) -> int:
        """Network passes of :meth:`jacobian`: one forward, one backward per constraint (``c [C, m_h]``) and one for
        the soft terms' gradient."""
        return 1 + c.shape[-1] + (1 if self.soft else 0)

    def _lifted_jacobian(self, J: torch.Tensor) -> torch.Tensor:
        """``Dc = [J, σ I] [C, m_h, d + m_h]`` from ``J [C, m_h, d]`` (``J`` itself at ``sigma = 0``)."""
        s, (C, m, _) = self.sigma, J.shape
        return torch.cat([J, s * torch.eye(m, dtype=J.dtype, device=J.device).expand(C, m, m)], -1) if s > 0 else J

    def _log_likelihood(self, r: torch.Tensor) -> torch.Tensor:
        s, m = self.sigma, r.shape[-1]
        lik = -0.5 * (r.detach().double() / s).square().sum(-1) - m * (math.log(s) + 0.5 * math.log(2 * math.pi)) \
            if s > 0 else torch.full((len(r),), math.nan, dtype=torch.float64, device=r.device)
        return lik.to(self.density.dtype)

    def potential_force(self, q: torch.Tensor, dc: torch.Tensor, soft: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U [C], F [C, D])`` at ``q`` with ``Dc`` and the soft terms known (no network pass): the potential with
        its co-area term ``log det(Dc Dcᵀ)/2`` and soft terms, and the force of the prior and the soft terms
        (``logdet_force=False``)."""
        U = 0.5 * q.square().sum(-1) + 0.5 * gram_log_det(dc @ dc.mT) + soft[0]
        F = q + torch.nn.functional.pad(soft[1], (0, q.shape[-1] - self.d))
        bad = ~(torch.isfinite(U) & torch.isfinite(F).all(-1))
        return torch.where(bad, torch.full_like(U, math.inf), U), F

    def evaluate(self, q: torch.Tensor):
        """``(U [C], ∇U [C, D], Dc [C, m_h, D], c [C, m_h], aux, soft, cost)`` at ``q``: one forward pass, the
        constraints' Jacobian with its graph, and the gradient of ``U = |x|²/2 + |y|²/2 + log det(Dc Dcᵀ)/2 +
        |r_S|²/2σ²`` (with soft statistics, the gradient of their potential also on its own)."""
        d, s = self.d, self.sigma
        x = q[:, :d].detach().to(self.density.dtype).requires_grad_(True)
        with torch.enable_grad():
            r, aux = self.density.residual(self.z_of(x))
            rh, rs = self.split(r)
            m = rh.shape[-1]
            Jh = torch.stack([torch.autograd.grad(rh[:, j].sum(), x, create_graph=True, retain_graph=True)[0]
                              for j in range(m)], 1)  # [C, m_h, d]
            G = Jh @ Jh.mT
            if s > 0:
                G = G + s * s * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
            U_soft = 0.5 * (rs.double() / s).square().sum(-1) if self.soft else torch.zeros_like(G[:, 0, 0]).double()
            gs = torch.autograd.grad(U_soft.sum(), x, retain_graph=True)[0].double() if self.soft else \
                torch.zeros_like(q[:, :d])
            U = 0.5 * x.double().square().sum(-1) + 0.5 * gram_log_det(G.double()) + U_soft
            (gx,) = torch.autograd.grad(U.sum(), x)
        y = q[:, d:]
        U = U.detach() + 0.5 * y.square().sum(-1)
        dc = self._lifted_jacobian(Jh.detach().double())
        grad = torch.cat([gx.double(), y], -1) if s > 0 else gx.double()
        c = rh.detach().double() + (s * y if s > 0 else 0.0)
        soft = (U_soft.detach(), gs)  # the soft terms alone (for `potential_force`): one more backward pass
        aux = {k: v.detach() for k, v in aux.items()} | {"log_likelihood": self._log_likelihood(r)}
        bad = ~(torch.isfinite(U) & torch.isfinite(grad).all(-1))
        U = torch.where(bad, torch.full_like(U, math.inf), U)
        return U, grad, dc, c, aux, soft, 2 * (1 + m) + (0.5 if self.soft else 0)


def gram_log_det(gram: torch.Tensor) -> torch.Tensor:
    """``log det(Dc Dcᵀ) [C]`` from the Gram matrices ``[C, m, m]`` (the co-area term of the potential, twice)."""
    return torch.linalg.cholesky_ex(gram)[0].diagonal(dim1=-2, dim2=-1).log().sum(-1) * 2


def pull_onto(system: Lifted, q: torch.Tensor, iterations: int = 4 * MAX_NEWTON) -> torch.Tensor:
    """Starting points ``q [C, D]`` moved onto the level set by damped Gauss-Newton: minimum-norm steps, halved per
    chain (up to 2⁻⁸) until the constraint's max norm decreases. Full steps overshoot where the level set is curved
    (the digits' ambiguous set: they oscillate around it), so only the initial placement uses this; the dynamics keep
    the plain Newton projection, whose failures are rejections."""
    c, dc, _, _ = system.jacobian(q)
    for _ in range(iterations):
        norm = c.abs().amax(-1)
        todo = norm >= system.tol_c
        if not bool(todo.any()):
            break
        step = (dc.mT @ _gram_solve(dc, c).unsqueeze(-1)).squeeze(-1)
        t = torch.ones(len(q), dtype=q.dtype, device=q.device)
        for _ in range(9):
            trial = q - t[:, None] * step
            c_t, dc_t, _, _ = system.jacobian(trial)
            better = todo & torch.isfinite(c_t).all(-1) & (c_t.abs().amax(-1) < norm)
            q, c, dc = (torch.where(better[:, None], trial, q), torch.where(better[:, None], c_t, c),
                        torch.where(better[:, None, None], dc_t, dc))
            todo = todo & ~better
            if not bool(todo.any()):
                break
            t = t / 2
    return q


def _gram_solve(dc: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(Dc Dcᵀ)⁻¹ v`` for ``v [C, m]``."""
    return _solve(dc @ dc.mT, v.unsqueeze(-1)).squeeze(-1)


def _solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A⁻¹ B`` batched over chains; NaN for a chain whose ``A`` is singular (its step then fails and is rejected,
    instead of one chain's singular Gram matrix stopping the run)."""
    X, info = torch.linalg.solve_ex(A, B)
    return torch.where((info != 0).reshape(-1, *[1] * (X.dim() - 1)), torch.full_like(X, math.nan), X)


def tangent(dc: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Project ``p [C, D]`` onto the tangent space ``{v : Dc v = 0}``."""
    return p - (dc.mT @ _gram_solve(dc, (dc @ p.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)


def retract(system: Lifted, q, p, eps, dc, active, projection: str = "newton", jacobian: bool = True):
    """The position step ``q' = q + ε (p - Dc(q)ᵀ λ)`` with ``c(q') = 0``, solved for ``λ`` by ``projection``:

    - ``"newton"``: each iteration ``q' ← q' - Dc(q)ᵀ (Dc(q') Dc(q)ᵀ)⁻¹ c(q')`` with the Jacobian at the iterate
      (quadratic convergence): a forward pass, and ``m_h`` backward passes where the chain goes on (or, if
      ``jacobian``, has converged: ``Dc(q')`` and the soft terms' gradient, one more pass, are the new point's);
    - ``"chord"`` (quasi-Newton, Mici's default; Au, Graham & Thiery 2020): ``q' ← q' - Dc(q)ᵀ (Dc(q) Dc(q)ᵀ)⁻¹ c(q')``
      with the start's Jacobian throughout: a forward pass per iteration, linear convergence (at a rate ~ the step
      times the curvature), failing when the constraint's norm grows; then, if ``jacobian``, one Jacobian at ``q'``.

    The reverse check (``jacobian=False``) thus needs no derivatives at the point it converges to.
    Returns ``(q', p', converged [C], iterations [C], cost [C], (Dc(q'), aux(q'), soft(q')))`` with
    ``p' = (q' - q) / ε``, ``cost`` in gradient-equivalents (a forward pass 1/2, each backward pass 1/2, counted for
    the chains that need it), and the converged chains' ``Dc``, ``aux`` and soft terms at ``q'`` (if ``jacobian``;
    else ``None``)."""
    e = eps.unsqueeze(-1)
    qn = q + e * p
    done = ~active
    ok = torch.zeros_like(active)
    iterations = torch.zeros(len(q), dtype=torch.long)
    cost = torch.zeros(len(q))
    if projection == "chord":
        gram = dc @ dc.mT
        previous = torch.full((len(q),), math.inf, dtype=torch.float64, device=q.device)
        for _ in range(MAX_CHORD):
            c = system.constraint(qn)
            cost += 0.5 * (~done).float().cpu()
            iterations += (~done).long().cpu()
            step = (dc.mT @ _solve(gram, c.unsqueeze(-1))).squeeze(-1)
            norm = c.abs().amax(-1)
            finite = torch.isfinite(c).all(-1) & torch.isfinite(step).all(-1)
            conv = finite & (norm < system.tol_c)
            ok |= conv & ~done
            done |= conv | ~finite | (norm > 1e8) | (norm >= previous)
            previous = norm
            if bool(done.all()):
                break
            qn = torch.where(done.unsqueeze(-1), qn, qn - step)
        ok = ok & active
        last = None
        if jacobian:
            c, dcn, aux, soft = system.jacobian(qn)
            cost += 0.5 * system.passes(c) * ok.float().cpu()
            last = (dcn, aux, soft)
        return qn, (qn - q) / e, ok, iterations, cost, last
    last = None
    for _ in range(MAX_NEWTON):
        f = system.forward(qn)
        c = system.constraint_of(f)
        todo = ~done
        cost += 0.5 * todo.float().cpu()
        iterations += todo.long().cpu()
        norm = c.abs().amax(-1)
        finite = torch.isfinite(c).all(-1)
        conv = finite & (norm < system.tol_c)
        newly = todo & conv
        going_on = todo & ~conv & finite & (norm <= 1e8)
        need = going_on | (newly if jacobian else torch.zeros_like(newly))
        dcn = None
        if bool(need.any()):
            dcn = system.jacobian_of(f)
            cost += 0.5 * c.shape[-1] * need.float().cpu()
        if jacobian and bool(newly.any()):  # the new point's Jacobian, aux and soft terms
            soft = system.soft_of(f)
            cost += 0.5 * (1 if system.soft else 0) * newly.float().cpu()
            new = dict(dc=dcn, aux=system.aux_of(f), soft_U=soft[0], soft_g=soft[1])
            last = new if last is None else select(newly, new, last)
        ok |= newly
        done |= conv | ~going_on
        if bool(done.all()):
            break
        step = (dc.mT @ _solve(dcn @ dc.mT, c.unsqueeze(-1))).squeeze(-1)
        done |= ~torch.isfinite(step).all(-1)
        qn = torch.where(done.unsqueeze(-1), qn, qn - step)
    ok = ok & active
    if not jacobian:
        return qn, (qn - q) / e, ok, iterations, cost, None
    if last is None:  # no chain converged: placeholders of the right shapes (every step failed)
        last = dict(dc=dc, aux=system.aux_of(f), soft_U=torch.zeros_like(q[:, 0]),
                    soft_g=torch.zeros_like(q[:, : system.d]))
    return qn, (qn - q) / e, ok, iterations, cost, (last["dc"], last["aux"], (last["soft_U"], last["soft_g"]))
