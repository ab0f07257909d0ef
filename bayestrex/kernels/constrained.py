"""Constrained HMC on the lifted level set: a kernel whose cost per effective draw does not grow as sigma shrinks.

Manifold lifting (Au, Graham & Thiery 2020; constrained HMC on differentiable generators: Graham & Storkey 2017).
The posterior ``π0(z) N(u*; u(z), σ²)`` is the marginal of ``(z, y)`` with ``y ~ N(0, I_m)`` conditioned on the
constraint ``c(z, y) = u(z) + σ y - u* = 0``: on that d-dimensional manifold of ``R^{d+m}`` the density with respect
to surface measure is ``π0(z) N(y; 0, I) / sqrt(det(Dc Dcᵀ))``, ``Dc = [J, σ I]``, ``J = ∂u/∂z`` (the co-area
formula). As σ → 0 the manifold tends to the level set itself (times ``y``) and stays well conditioned
(``Dc Dcᵀ = J Jᵀ + σ² I``), while the unconstrained posterior becomes a tube of width σ whose curvature makes
ordinary HMC take steps of size ~σ. ``sigma = 0`` samples the level set exactly: ``π0(z) / sqrt(det(J Jᵀ))``.

Dynamics: the constrained (RATTLE / geodesic) leapfrog with the identity metric in prior-standardised coordinates
(Lelièvre, Rousset & Stoltz 2019; Mici's ``ConstrainedLeapfrogIntegrator`` and its Newton projection): half momentum
kick and projection onto the tangent space; a position step ``q + ε p`` pulled back onto the manifold along
``Dc(q)ᵀ`` by Newton iterations; a reversibility check (the reverse step must return to ``q``; Zappa,
Holmes-Cerfon & Goodman 2018); another half kick and projection. A projection that does not converge, or that is not
reversible, ends the trajectory on that side (``selection="multinomial"``, the default: a state is drawn from the
steps before it) or rejects it (``"endpoint"``), and is counted (``projection_failures`` statistic).

Cost, counted in gradient-equivalents (``n_steps``; a gradient = one forward and one backward pass = 1): one
evaluation of the potential's gradient needs the Jacobian (``m`` backward passes with their graph) and a backward
pass through it for the ``log det`` term: ``2 (1 + m)``; a Newton iteration is one forward and ``m`` backward
passes: ``(1 + m) / 2``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..density import GaussianPrior, residual_jacobian
from . import register
from .base import positive, positive_int, probability, select
from .tuning import DualAveraging, da_init, da_update

__all__ = ["Constrained", "ConstrainedState", "ConstrainedInfo"]

#: target mean acceptance (constrained HMC in Mici's examples and Au et al. use 0.8)
TARGET_ACCEPT = 0.8
#: Newton converges when the constraint's max norm is below this many units of the density's float resolution (a
#: float32 network's statistics are exact to ~1e-6 at best; a position criterion would amplify that noise by 1/sigma
#: in y); the reverse step must return within the position tolerance
CONSTRAINT_TOL_EPS, REVERSE_TOL_EPS = 100, 2000
MAX_NEWTON = 20
#: how a trajectory's state is chosen. On network level sets a projection fails at *places* (the normal swings, Newton
#: stalls at a residual of 1e-3..1e-1 even damped), 20-40% of trajectories of length 1 whatever the step from 0.025
#: to 0.4 (`tied:3,8,0.9`, σ = 0.0125), so "endpoint" (a failure rejects the trajectory) drove its step to 0.012:
#: "multinomial" (static multinomial HMC with a uniformly placed window, Betancourt 2017 app. A; a failed step is an
#: edge that fails from either end, so cutting the window there keeps detailed balance) takes steps of ~0.1 there
#: (README, "Multinomial selection"). On smooth level sets (circle, sphere) it draws states nearer the start, and
#: "endpoint" gave 1.3-2.3x its ESS per gradient (the tests' settings; an ad-hoc measurement, see the README)
SELECTIONS = ("multinomial", "endpoint")


class ConstrainedState(NamedTuple):
    q: torch.Tensor  #: [C, d + m] lifted position in standardised coordinates (x, y), float64
    z: torch.Tensor  #: [C, d] latent codes (what is recorded)
    potential: torch.Tensor  #: [C]
    grad: torch.Tensor  #: [C, d + m]
    dc: torch.Tensor  #: [C, m, d + m] constraint Jacobian at q
    aux: dict


class ConstrainedInfo(NamedTuple):
    acceptance_rate: torch.Tensor  #: [C]
    accepted: torch.Tensor  #: [C] bool
    diverging: torch.Tensor  #: [C] bool: energy error above 1000 or non-finite
    projection_failures: torch.Tensor  #: [C] int: steps whose projection failed (trajectory rejected)
    energy: torch.Tensor  #: [C]
    n_steps: torch.Tensor  #: [C] gradient-equivalent evaluations
    step_size: torch.Tensor  #: [C]
    newton_iterations: torch.Tensor  #: [C] Newton iterations of the projections, reverse checks included


class _Lifted:
    """The lifted system of one density: coordinates, constraint, potential and their derivatives."""

    def __init__(self, density):
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
        self.d = density.latent_dim
        eps = torch.finfo(density.dtype).eps
        self.tol_c, self.tol_rev = CONSTRAINT_TOL_EPS * eps, REVERSE_TOL_EPS * eps

    def z_of(self, x: torch.Tensor) -> torch.Tensor:
        return (self.prior.loc + self.prior.scale * x.to(self.prior.scale.dtype)).to(self.density.dtype)

    def x_of(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.prior.loc) / self.prior.scale).double()

    def jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c [C, m], Dc [C, m, D])`` at ``q`` (float64): one forward pass and ``m`` backward passes."""
        d, s = self.d, self.sigma
        c, J, _ = residual_jacobian(self.density, q[:, :d])
        m = c.shape[-1]
        if s > 0:
            c = c + s * q[:, d:]
            J = torch.cat([J, s * torch.eye(m, dtype=J.dtype, device=J.device).expand(len(q), m, m)], -1)
        return c, J

    def evaluate(self, q: torch.Tensor):
        """``(U [C], ∇U [C, D], Dc [C, m, D], c [C, m], aux)`` at ``q``: one forward pass, the Jacobian with its graph,
        and the gradient of ``U = |x|²/2 + |y|²/2 + log det(Dc Dcᵀ)/2``."""
        d, s = self.d, self.sigma
        x = q[:, :d].detach().to(self.density.dtype).requires_grad_(True)
        with torch.enable_grad():
            r, aux = self.density.residual(self.z_of(x))
            m = r.shape[-1]
            J = torch.stack([torch.autograd.grad(r[:, j].sum(), x, create_graph=True, retain_graph=True)[0]
                             for j in range(m)], 1)  # [C, m, d]
            G = J @ J.mT
            if s > 0:
                G = G + s * s * torch.eye(m, dtype=G.dtype, device=G.device)
            logdet = torch.linalg.cholesky_ex(G.double())[0].diagonal(dim1=-2, dim2=-1).log().sum(-1) * 2
            U = 0.5 * x.double().square().sum(-1) + 0.5 * logdet
            (gx,) = torch.autograd.grad(U.sum(), x)
        y = q[:, d:]
        U = U.detach() + 0.5 * y.square().sum(-1)
        J = J.detach().double()
        if s > 0:
            dc = torch.cat([J, s * torch.eye(m, dtype=J.dtype, device=J.device).expand(len(q), m, m)], -1)
            grad = torch.cat([gx.double(), y], -1)
        else:
            dc, grad = J, gx.double()
        c = r.detach().double() + (s * y if s > 0 else 0.0)
        lik = -0.5 * (r.detach().double() / s).square().sum(-1) - m * (math.log(s) + 0.5 * math.log(2 * math.pi)) \
            if s > 0 else torch.full((len(q),), math.nan, dtype=torch.float64)
        aux = {k: v.detach() for k, v in aux.items()} | {"log_likelihood": lik.to(self.density.dtype)}
        bad = ~(torch.isfinite(U) & torch.isfinite(grad).all(-1))
        U = torch.where(bad, torch.full_like(U, math.inf), U)
        return U, grad, dc, c, aux, 2 * (1 + m)


def acceptance(h0: torch.Tensor, h1: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Metropolis acceptance ``min(1, exp(h0 - h1))`` ``[C]``; 0 where the trajectory failed (``ok`` False)."""
    log_acc = torch.where(ok & torch.isfinite(h1), h0 - h1, torch.full_like(h1, -math.inf)).clamp(max=0.0)
    return log_acc.exp().nan_to_num(nan=0.0)


def _pull_onto(system: _Lifted, q: torch.Tensor, iterations: int = 4 * MAX_NEWTON) -> torch.Tensor:
    """Starting points ``q [C, D]`` moved onto the level set by damped Gauss-Newton: minimum-norm steps, halved per
    chain (up to 2⁻⁸) until the constraint's max norm decreases. Full steps overshoot where the level set is curved
    (the digits' ambiguous set: they oscillate around it), so only the initial placement uses this; the dynamics keep
    the plain Newton projection, whose failures are rejections."""
    c, dc = system.jacobian(q)
    for _ in range(iterations):
        norm = c.abs().amax(-1)
        todo = norm >= system.tol_c
        if not bool(todo.any()):
            break
        step = (dc.mT @ _gram_solve(dc, c).unsqueeze(-1)).squeeze(-1)
        t = torch.ones(len(q), dtype=q.dtype, device=q.device)
        for _ in range(9):
            trial = q - t[:, None] * step
            c_t, dc_t = system.jacobian(trial)
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


def _tangent(dc: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Project ``p [C, D]`` onto the tangent space ``{v : Dc v = 0}``."""
    return p - (dc.mT @ _gram_solve(dc, (dc @ p.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)


def _retract(system: _Lifted, q, p, eps, dc, active):
    """The position step ``q' = q + ε (p - Dc(q)ᵀ λ)`` with ``c(q') = 0``: Newton's method on ``λ``, each iteration
    ``q' ← q' - Dc(q)ᵀ (Dc(q') Dc(q)ᵀ)⁻¹ c(q')`` with the Jacobian at the iterate (one forward and ``m`` backward
    passes; quadratic convergence, where the chord method that keeps ``Dc(q)`` stalls on a curved network level set).
    Returns ``(q', p', converged [C], iterations [C])`` with ``p' = (q' - q) / ε``."""
    e = eps.unsqueeze(-1)
    qn = q + e * p
    done = ~active
    ok = torch.zeros_like(active)
    iterations = torch.zeros(len(q), dtype=torch.long)
    for _ in range(MAX_NEWTON):
        c, dcn = system.jacobian(qn)
        iterations += (~done).long().cpu()
        lam = _solve(dcn @ dc.mT, c.unsqueeze(-1))
        step = (dc.mT @ lam).squeeze(-1)
        finite = torch.isfinite(c).all(-1) & torch.isfinite(step).all(-1)
        conv = finite & (c.abs().amax(-1) < system.tol_c)
        ok |= conv & ~done
        done |= conv | ~finite | (c.abs().amax(-1) > 1e8)
        if bool(done.all()):
            break
        qn = torch.where(done.unsqueeze(-1), qn, qn - step)
    return qn, (qn - q) / e, ok & active, iterations


def selection_log_weight(h0: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Log weight ``-(h - h0)`` with which a state of the trajectory is drawn (multinomial HMC; the accept step)."""
    return h0 - h


def _leapfrog(system: _Lifted, at: ConstrainedState, p, eps, active):
    """One constrained leapfrog step of the chains in ``active`` from ``at`` with momentum ``p`` (the other chains,
    and every chain whose step failed, are returned as they were): half kick and tangent projection, position step
    pulled onto the manifold, reversibility check, half kick. Returns the new ``(at, p)`` (``at.z`` is left as it
    was), ``ok [C]`` (both projections converged and the reverse step returned), the energy ``h [C]``, the
    gradient-equivalents of the evaluation and the Newton iterations ``[C]``."""
    p = _tangent(at.dc, p - 0.5 * eps.unsqueeze(-1) * at.grad)
    q1, p1, ok, it = _retract(system, at.q, p, eps, at.dc, active)
    U1, g1, dc1, _, aux1, c_eval = system.evaluate(torch.where(ok.unsqueeze(-1), q1, at.q))
    p1 = _tangent(dc1, p1)
    qr, _, okr, itr = _retract(system, q1, -p1, eps, dc1, ok)  # the reverse step from (q1, -p1) must land on q
    ok = okr & ((qr - at.q).abs().amax(-1) < system.tol_rev)
    p1 = _tangent(dc1, p1 - 0.5 * eps.unsqueeze(-1) * g1)
    h = U1 + 0.5 * p1.square().sum(-1)
    return (select(ok, ConstrainedState(q1, at.z, U1, g1, dc1, aux1), at), select(ok, p1, p), ok, h, c_eval,
            it + itr)


class _Pick:
    """Progressive multinomial sampling over a trajectory: each offered state replaces the pick with probability
    ``w / (W + w)`` (``W``: the weights offered so far), so the pick is a draw ∝ ``w`` from all of them; the start
    (``state``) has weight 1 (log weights are relative to its energy)."""

    def __init__(self, state: ConstrainedState):
        self.state = state
        self.log_total = torch.zeros_like(state.potential)
        self.moved = torch.zeros(len(state.q), dtype=torch.bool, device=state.q.device)

    def offer(self, mask, at: ConstrainedState, log_w, rng):
        log_w = torch.where(mask & torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
        total = torch.logaddexp(self.log_total, log_w)
        u = torch.rand(len(log_w), generator=rng, dtype=torch.float64, device=rng.device).to(log_w.device)
        self.take(mask & (u.log() < log_w - total), at)
        self.log_total = torch.where(mask, total, self.log_total)

    def take(self, take, at: ConstrainedState):
        """Make ``at`` the pick of the chains in ``take [C]``."""
        self.state, self.moved = select(take, at, self.state), self.moved | take


@register("constrained")
class Constrained:
    """Constrained HMC on the lifted level set (see the module docstring).

    Parameters
    ----------
    trajectory_length : float
        Integration time in prior-standardised units, jittered as ``u · T`` per iteration (shared by the chains).
    target_accept : float
        Dual averaging of the shared step size toward this mean acceptance (failed projections count as 0).
    max_steps : int
        Cap on leapfrog steps per iteration.
    initial_step_size : float
        Where dual averaging starts.
    selection : {"multinomial", "endpoint"}
        How the next state is drawn from the trajectory (see ``SELECTIONS``): ``"multinomial"`` (a window placed at
        random around the start, a failed projection ends it on that side, a state drawn ∝ exp(-H)) or
        ``"endpoint"`` (Metropolis on the last state; a failed projection rejects the whole trajectory).
    """

    name = "constrained"
    summary = ("constrained HMC on the lifted level set (manifold lifting): steps along the level set, cost flat "
               "as sigma shrinks; sigma = 0 samples the level set itself")
    needs_gradients = True
    recorded = ("acceptance_rate", "accepted", "diverging", "projection_failures", "energy", "n_steps", "step_size",
                "newton_iterations")
    allows_zero_sigma = True

    def __init__(self, *, trajectory_length: float = math.pi, target_accept: float = TARGET_ACCEPT,
                 max_steps: int = 64, initial_step_size: float = 0.3, selection: str = "multinomial"):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(map(repr, SELECTIONS))}, got {selection!r}")
        self.selection = selection
        self.trajectory_length = positive("trajectory_length", trajectory_length)
        self.target_accept = probability("target_accept", target_accept)
        self.max_steps = positive_int("max_steps", max_steps)
        self.initial_step_size = positive("initial_step_size", initial_step_size)

    def init(self, density, z0, rng) -> ConstrainedState:
        system = _Lifted(density)
        x = system.x_of(z0)
        if system.sigma > 0:  # y = -(u(z) - u*) / sigma puts every chain on the manifold exactly
            r, _ = density.residual(z0)
            q = torch.cat([x, -r.detach().double() / system.sigma], -1)
        else:
            q = _pull_onto(system, x)
        U, grad, dc, c, aux, _ = system.evaluate(q)
        bad = ~torch.isfinite(U) | (c.abs().amax(-1) > 1e-4)
        if bad.any():
            raise ValueError(f"init: chains {torch.nonzero(bad).flatten().tolist()} could not be placed on the level "
                             "set (non-finite density or no projection): at sigma=0 the target value must be "
                             "attained, and the built-in targets pin probabilities of 0 or 1 that the softmax only "
                             "approaches (their level sets are empty; use a sigma > 0, or a Custom statistic with an "
                             "attained value)")
        return ConstrainedState(q, system.z_of(q[:, : system.d]), U, grad, dc, aux)

    def step(self, density, state: ConstrainedState, params: dict, rng) -> tuple[ConstrainedState, ConstrainedInfo]:
        system = _Lifted(density)
        C, dev = len(state.q), state.q.device
        eps = torch.full((C,), params["step_size"], dtype=torch.float64, device=dev)
        n = params["num_steps"]
        p0 = _tangent(state.dc, torch.randn(state.q.shape, generator=rng, dtype=torch.float64, device=dev))
        h0 = state.potential + 0.5 * p0.square().sum(-1)
        multinomial = self.selection == "multinomial"
        # multinomial: a window of `back` steps before the start and n - back after it, uniform per chain (static
        # multinomial HMC); a failed step ends the window on its side. endpoint: n steps forward, Metropolis on the end
        back = (torch.randint(0, n + 1, (C,), generator=rng, device=rng.device).to(dev) if multinomial
                else torch.zeros(C, dtype=torch.long, device=dev))
        pick = _Pick(state)
        stat, tried = torch.zeros(C, dtype=torch.float64, device=dev), torch.zeros(C, dtype=torch.float64, device=dev)
        failures, newton = torch.zeros(C, dtype=torch.long), torch.zeros(C, dtype=torch.long)
        cost, diverging = torch.zeros(C), torch.zeros(C, dtype=torch.bool, device=dev)
        # one batched sweep of n steps: each chain takes its `back` steps (momentum -p0) first, then starts again
        # from the start with +p0 (a failure on the backward side moves a chain to the forward side at once)
        todo_back, todo_fwd = back.clone(), n - back
        forward = todo_back == 0
        at, p = state, torch.where(forward.unsqueeze(-1), p0, -p0)
        for _ in range(n):
            turn = ~forward & (todo_back == 0)
            if bool(turn.any()):
                at, p, forward = select(turn, state, at), select(turn, p0, p), forward | turn
            alive = torch.where(forward, todo_fwd > 0, todo_back > 0)
            if not bool(alive.any()):
                break
            at, p, ok, h, c_eval, its = _leapfrog(system, at, p, eps, alive)
            newton += its
            cost += float(c_eval) * alive.float().cpu()
            div = alive & ok & (~torch.isfinite(h) | (h - h0 > 1000.0))
            failures += (alive & ~ok).long().cpu()
            diverging |= div
            stat += torch.where(alive, acceptance(h0, h, ok & ~div), stat.new_zeros(()))
            tried += alive.double()
            good = alive & ok & ~div
            # a step taken counts down its side; a failed one ends its side
            todo_back = torch.where(alive & ~forward, torch.where(good, todo_back - 1, 0), todo_back)
            todo_fwd = torch.where(alive & forward, torch.where(good, todo_fwd - 1, 0), todo_fwd)
            if multinomial:
                pick.offer(good, at, selection_log_weight(h0, h), rng)
        cost += 0.5 * (1 + state.dc.shape[1]) * newton.float()
        if multinomial:
            accept_stat = torch.where(tried > 0, stat / tried.clamp(min=1), torch.ones_like(stat))
        else:  # endpoint (back = 0): the chains whose n steps all succeeded end together, `h` their energy
            accept_stat = acceptance(h0, h, (failures == 0).to(dev) & ~diverging)
            pick.take(torch.rand(C, generator=rng, dtype=torch.float64, device=rng.device).to(dev) < accept_stat, at)
        new = pick.state._replace(z=select(pick.moved, system.z_of(pick.state.q[:, : system.d]), state.z))
        return new, ConstrainedInfo(accept_stat.float(), pick.moved, diverging, failures, h0.float(),
                                    cost.round().long(), eps.float(), newton)

    def adaptation(self, density, z0, num_warmup):
        return _StepSize(self)


class _StepState(NamedTuple):
    log_eps: float
    da: DualAveraging


class _StepSize:
    """One step size for all chains, by dual averaging on their mean acceptance; a trajectory ``u · T`` jittered
    per iteration (``u`` uniform on (0, 1], shared: no chain idles)."""

    def __init__(self, kernel: Constrained):
        self.k = kernel

    def init(self, state, num_warmup):
        log_eps = math.log(self.k.initial_step_size)
        return _StepState(log_eps, da_init(math.log(10) + log_eps))

    def parameters(self, a: _StepState, it, rng):
        u = 1.0 - float(torch.rand((), generator=rng, device=rng.device))
        eps = math.exp(a.log_eps)
        return {"step_size": eps, "num_steps": min(self.k.max_steps, max(1, math.ceil(u * self.k.trajectory_length
                                                                                          / eps)))}

    def update(self, a: _StepState, it, previous, state, info: ConstrainedInfo, params):
        da = da_update(a.da, self.k.target_accept - float(info.acceptance_rate.mean()))
        return _StepState(float(da.x), da)

    def final(self, a: _StepState):
        return a._replace(log_eps=float(a.da.x_avg)) if a.da.t > 0 else a

    def describe(self, a: _StepState) -> dict:
        eps = math.exp(a.log_eps)
        return dict(step_size=eps, trajectory_length=self.k.trajectory_length, selection=self.k.selection,
                    leapfrog_steps=min(self.k.max_steps, max(1, math.ceil(self.k.trajectory_length / eps))))
