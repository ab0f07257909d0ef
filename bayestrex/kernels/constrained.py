"""Constrained HMC on the lifted level set: a kernel whose cost per effective draw does not grow as sigma shrinks.

It moves on the lifted manifold of :mod:`bayestrex.kernels.lifted` (manifold lifting, Au, Graham & Thiery 2020: the
posterior as a d-dimensional manifold of ``(z, y)``, ``c(z, y) = u(z) + σ y - u* = 0``, with the co-area density
``π0(z) N(y; 0, I) / sqrt(det(Dc Dcᵀ))``), where the unconstrained posterior is a tube of width σ whose curvature makes
ordinary HMC take steps of size ~σ; ``sigma = 0`` samples the level set itself.

Dynamics: the constrained (RATTLE / geodesic) leapfrog with the identity metric in prior-standardised coordinates
(Lelièvre, Rousset & Stoltz 2019; Mici's ``ConstrainedLeapfrogIntegrator`` and its Newton projection): half momentum
kick and projection onto the tangent space; a position step ``q + ε p`` pulled back onto the manifold along
``Dc(q)ᵀ`` by Newton iterations; a reversibility check (the reverse step must return to ``q``; Zappa,
Holmes-Cerfon & Goodman 2018); another half kick and projection. A projection that does not converge, or that is not
reversible, ends the trajectory on that side (``selection="doubling"``, the default, and ``"multinomial"``: a state
is drawn from the steps before it) or rejects it (``"endpoint"``), and is counted (``projection_failures``).

Statistics whose target value the softmax only approaches (``Target.saturating``: a pair's mass of 1, a probability of
0) are not lifted but kept as soft terms of the potential (``soft="auto"``); see :mod:`bayestrex.kernels.lifted`.

Cost, counted in gradient-equivalents (``n_steps``; a gradient = one forward and one backward pass = 1, so a pass is
1/2), per chain: a Newton iteration is a forward pass, and the ``m_h`` backward passes of the constraints' Jacobian
where the chain goes on or has converged in the forward projection (the reverse check needs none at its end), plus,
with soft statistics, one backward pass for their gradient at the new point; a chord iteration a forward pass. With
``logdet_force=True`` the potential's gradient needs the Jacobian with its graph and a backward pass through it:
``2 (1 + m_h)`` more (½ more with soft statistics).
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch

from . import register, trajectory
from .base import positive, positive_int, probability, select
from .lifted import PROJECTIONS, Lifted, pull_onto, retract, tangent
from .trajectory import Pick, Tally, depth_of, doubling, window
from .tuning import DualAveraging, da_init, da_update

__all__ = ["Constrained", "ConstrainedState", "ConstrainedInfo"]

#: target mean acceptance per selection. "endpoint": 0.8, as constrained HMC in Mici's examples and Au et al.
#: "multinomial" (mean over a window's steps, a failed one 0): on `tied:3,8,0.9` projections fail ~0.5 times per unit
#: of integration time at steps from 0.05 to 0.4 (`analyses/projection_failures.py`), so longer steps cover the same
#: path for fewer gradients; 0.6 doubled the bulk ESS per gradient of 0.8 there (step 0.32 against 0.10; README,
#: "Multinomial selection"), and 0.45 (step 0.52) did not add to it. "doubling" (the same mean): on `tied:3,8,0.9` at
#: σ = 0.0125 (16 chains x (100 + 200)) 0.6 gave 3.0x the bulk ESS per gradient of 0.8 (step 0.37 against 0.044; on
#: the 5-d sphere 0.8 was 1.4x better, ad hoc)
TARGET_ACCEPT = {"multinomial": 0.6, "endpoint": 0.8, "doubling": 0.6}
#: target mean acceptance of "multinomial" and "doubling" with soft statistics (``soft``): the leapfrog on their
#: potential is an ordinary one against an exponential wall (a pair's mass near 1), whose energy error, not projection
#: failures, limits the step. On `ambiguous:3,8,mass` at σ = 0.025 (16 chains x (100 + 100), seeds 0 and 1) 0.8 gave
#: 1.2-1.4x the bulk and 1.7-1.8x the tail ESS per gradient of 0.6, and R-hat 1.12 against 1.34-1.37 (runs before
#: the reverse tolerance and cost count; README, "Soft statistics"). With "doubling" at σ = 0.0125 (16 chains x
#: (100 + 200)) 0.8 gave 1.14x the bulk and 1.3x the tail ESS per gradient of 0.6
TARGET_ACCEPT_SOFT = 0.8
#: how a trajectory's state is chosen. On network level sets a projection fails at *places*: on `tied:3,8,0.9` at
#: σ = 0.0125 about 0.4-0.6 failures per unit of integration time at steps from 0.05 to 0.4, nearly all the forward
#: Newton projection, the quarter of the states with most failures holding 92-100% of them at steps up to 0.1
#: (`python -m analyses.projection_failures`). "endpoint" (a failure rejects the trajectory) drove the step to 0.012
#: there; "multinomial" (static multinomial HMC with a uniformly placed window, Betancourt 2017 app. A; a failed step
#: is an edge that fails from either end, so cutting the window there keeps detailed balance) keeps the states before a
#: failure and takes steps of ~0.3 (README, "Multinomial selection"). On smooth level sets (circle, sphere) it draws
#: states nearer the start, and "endpoint" gave 1.3-2.3x its ESS per gradient (an ad-hoc measurement, see the README)
#: "doubling" builds the trajectory as NUTS does without its U-turn criterion (each doubling extends it on a random
#: side) and takes the new half's state with probability min(1, W_new / W_old) (biased progressive sampling,
#: Betancourt 2017 app. A.3.2), so the draw lies mostly in the half away from the start
SELECTIONS = ("multinomial", "endpoint", "doubling")
#: default of ``selection``. "multinomial" draws uniformly placed states, often near the start: on
#: `ambiguous:3,8,mass` at σ = 0.0125 its least-mixing latent (a prior-like one, sd 1.0) had lag-1 autocorrelation
#: 0.85. At σ = 0.0125 (16 chains x (100 + 200)) "doubling" gave 2.0x its bulk ESS per gradient there (1.4x tail),
#: 1.6x on `tied:3,8,0.9` (0.86x tail), and 3x / 2.1x on the 5-d sphere / linear Gaussian (README, "Doubling")
SELECTION = "doubling"
#: why a step fails: the position step's Newton projection does not converge; the reverse step's does not; or the
#: reverse step converges elsewhere than the start (not reversible)
FAILURES = ("none", "forward projection", "reverse projection", "not reversible")
#: default of ``logdet_force``. On `tied:3,8,0.9` (16 chains x (100 + 100), target acceptance 0.6; README, "Multinomial
#: selection") the step adapts to the same size without the co-area force (0.16-0.37 against 0.25-0.32) and a step
#: costs its projections alone, so the bulk ESS per gradient was 1.9-2.2x that with the force at sigma 0.05-0.00625
#: (at target 0.8 the step without it shrank 3x and the two were even). Where log det(Dc Dcᵀ) varies fast along the
#: level set (relative to the prior) the force would matter more
LOGDET_FORCE = False
#: default of ``projection``
PROJECTION = "newton"


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
    projection_failures: torch.Tensor  #: [C] int: steps whose projection failed (each ends its trajectory or side)
    energy: torch.Tensor  #: [C]
    n_steps: torch.Tensor  #: [C] gradient-equivalent evaluations
    step_size: torch.Tensor  #: [C]
    newton_iterations: torch.Tensor  #: [C] iterations of the projections (Newton or chord), reverse checks included


def _leapfrog(system: Lifted, at: ConstrainedState, p, eps, active, logdet_force: bool, projection: str = "newton"):
    """One constrained leapfrog step of the chains in ``active`` from ``at`` with momentum ``p`` (the other chains,
    and every chain whose step failed, are returned as they were): half kick and tangent projection, position step
    pulled onto the manifold, reversibility check, half kick. Returns the new ``(at, p)`` (``at.z`` is left as it
    was), ``ok [C]`` (both projections converged and the reverse step returned), the energy ``h [C]``, the
    gradient-equivalents of the step ``[C]``, the projections' iterations ``[C]`` and why a step failed ``[C]`` (an
    index into ``FAILURES``; 0 for the steps that did not fail)."""
    p = tangent(at.dc, p - 0.5 * eps.unsqueeze(-1) * at.grad)
    q1, p1, ok, it, cost, (dc1, aux1, soft1) = retract(system, at.q, p, eps, at.dc, active, projection)
    if logdet_force:
        U1, g1, dc1, _, aux1, _, c_eval = system.evaluate(torch.where(ok.unsqueeze(-1), q1, at.q))
        cost += c_eval * active.float().cpu()
    else:  # the retraction's last Jacobian is Dc(q1), with the soft terms: no network pass
        U1, g1 = system.potential_force(q1, dc1, soft1)
    at1 = select(ok, ConstrainedState(q1, at.z, U1, g1, dc1, aux1), at)
    p1 = tangent(at1.dc, p1)
    # the reverse step from (q1, -p1) must land on q
    qr, _, okr, itr, cost_r, _ = retract(system, q1, -p1, eps, at1.dc, ok, projection, jacobian=False)
    back = okr & ((qr - at.q).abs().amax(-1) < system.reverse_tolerance(at1.dc))
    kind = torch.where(~active | back, 0, torch.where(~ok, 1, torch.where(~okr, 2, 3)))  # FAILURES' index
    ok = back
    p1 = tangent(at1.dc, p1 - 0.5 * eps.unsqueeze(-1) * at1.grad)
    h = at1.potential + 0.5 * p1.square().sum(-1)
    return select(ok, at1, at), select(ok, p1, p), ok, h, cost + cost_r, it + itr, kind


@register("constrained")
class Constrained:
    """Constrained HMC on the lifted level set (see the module docstring).

    Parameters
    ----------
    trajectory_length : float
        Integration time in prior-standardised units, jittered as ``u · T`` per iteration (shared by the chains).
    target_accept : float, optional
        Dual averaging of the shared step size toward this mean acceptance (failed projections count as 0); by
        default ``TARGET_ACCEPT[selection]``, or ``TARGET_ACCEPT_SOFT`` for ``"multinomial"`` with soft statistics.
    max_steps : int
        Cap on leapfrog steps per iteration (with ``"doubling"``: ``2^k - 1`` at most this).
    initial_step_size : float
        Where dual averaging starts.
    selection : {"multinomial", "endpoint", "doubling"}
        How the next state is drawn from the trajectory (see ``SELECTIONS``): ``"multinomial"`` (a window placed at
        random around the start, a failed projection ends it on that side, a state drawn ∝ exp(-H)),
        ``"endpoint"`` (Metropolis on the last state; a failed projection rejects the whole trajectory) or
        ``"doubling"`` (``≈ log2`` of the step count doublings on random sides, the new half's state preferred by
        biased progressive sampling; a failed projection discards its half and ends the trajectory).
    logdet_force : bool
        Whether the dynamics integrate the force of the co-area term ``log det(Dc Dcᵀ)/2`` (True) or the prior's alone
        (False; see ``LOGDET_FORCE``). The term stays in the energy that weighs the states, so the draws are exact
        either way; without its force a step needs no network pass beyond the projections' (the last Newton
        iterate's Jacobian is ``Dc`` at the new point), with it one Jacobian with its graph and a second backward pass.
    soft : "auto" or sequence of int
        Statistics kept as soft terms ``|r_j|² / 2σ²`` of the potential (their force integrated) instead of lifted
        constraints. ``"auto"``: the target's ``saturating`` statistics at ``sigma > 0`` (values the softmax only
        approaches, e.g. the pair's mass of ``ambiguous``: lifted, they make a manifold too curved to project onto);
        ``()`` lifts every statistic. At least one statistic must stay a constraint.
    projection : {"newton", "chord"}
        How a position step is pulled back onto the manifold (``bayestrex.kernels.lifted.retract``): Newton's method
        (a Jacobian per iteration) or the chord method (the start's Jacobian, a forward pass per iteration, then one
        Jacobian at the end; the reverse check needs none). See ``PROJECTION``.
    """

    name = "constrained"
    summary = ("constrained HMC on the lifted level set (manifold lifting): steps along the level set, cost flat "
               "as sigma shrinks; sigma = 0 samples the level set itself")
    needs_gradients = True
    recorded = ("acceptance_rate", "accepted", "diverging", "projection_failures", "energy", "n_steps", "step_size",
                "newton_iterations")
    allows_zero_sigma = True

    def __init__(self, *, trajectory_length: float = math.pi, target_accept: float | None = None,
                 max_steps: int = 64, initial_step_size: float = 0.3, selection: str = SELECTION,
                 logdet_force: bool = LOGDET_FORCE, soft="auto", projection: str = PROJECTION):
        if isinstance(soft, str):
            if soft != "auto":
                raise ValueError(f"soft must be 'auto' or a sequence of statistic indices, got {soft!r}")
        else:
            try:
                soft = tuple(sorted(set(operator.index(j) for j in soft)))
            except TypeError:
                raise ValueError(f"soft must be 'auto' or a sequence of statistic indices, got {soft!r}") from None
            if any(j < 0 for j in soft):
                raise ValueError(f"soft: statistic indices must be >= 0, got {list(soft)}")
        self.soft = soft
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(map(repr, PROJECTIONS))}, got {projection!r}")
        self.projection = projection
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(map(repr, SELECTIONS))}, got {selection!r}")
        if not isinstance(logdet_force, bool):
            raise ValueError(f"logdet_force must be True or False, got {logdet_force!r}")
        self.selection, self.logdet_force = selection, logdet_force
        self.trajectory_length = positive("trajectory_length", trajectory_length)
        self.target_accept = None if target_accept is None else probability("target_accept", target_accept)
        self.max_steps = positive_int("max_steps", max_steps)
        self.initial_step_size = positive("initial_step_size", initial_step_size)

    def _system(self, density, m: int | None = None) -> Lifted:
        """The lifted system of ``density`` with this kernel's soft statistics (checked against ``m`` when given)."""
        if self.soft != "auto":
            soft = self.soft
        else:  # the statistics the target only approaches; none at sigma = 0 (where they make the level set empty)
            soft = tuple(getattr(density, "saturating", ())) if float(getattr(density, "sigma", 0) or 0) > 0 else ()
        if m is not None:
            if any(j >= m for j in soft):
                raise ValueError(f"soft: statistic indices must be < {m} (the number of statistics), got {list(soft)}")
            if len(soft) == m:
                why = "values the softmax only approaches" if self.soft == "auto" else "as given"
                raise ValueError(f"kernel 'constrained': every statistic of target {getattr(density, 'target', '?')!r} "
                                 f"is soft ({list(soft)}: {why}), so there is no level set to move along; use "
                                 "kernel='chees' (or pass soft=() to lift them all)")
        return Lifted(density, soft)

    def init(self, density, z0, rng) -> ConstrainedState:
        r, _ = density.residual(z0)
        system = self._system(density, r.shape[-1])
        x = system.x_of(z0)
        if system.sigma > 0:  # y = -(u_H(z) - u*_H) / sigma puts every chain on the manifold exactly
            q = torch.cat([x, -system.split(r.detach().double())[0] / system.sigma], -1)
        else:
            q = pull_onto(system, x)
        U, grad, dc, c, aux, soft, _ = system.evaluate(q)
        bad = ~torch.isfinite(U) | (c.abs().amax(-1) > 1e-4)
        if bad.any():
            raise ValueError(f"init: chains {torch.nonzero(bad).flatten().tolist()} could not be placed on the level "
                             "set (non-finite density or no projection): at sigma=0 the target value must be "
                             "attained, and the built-in targets pin probabilities of 0 or 1 that the softmax only "
                             "approaches (their level sets are empty; use a sigma > 0, or a Custom statistic with an "
                             "attained value)")
        if not self.logdet_force:
            grad = system.potential_force(q, dc, soft)[1]
        return ConstrainedState(q, system.z_of(q[:, : system.d]), U, grad, dc, aux)

    def step(self, density, state: ConstrainedState, params: dict, rng) -> tuple[ConstrainedState, ConstrainedInfo]:
        system = self._system(density)
        C, dev = len(state.q), state.q.device
        eps = torch.full((C,), params["step_size"], dtype=torch.float64, device=dev)
        p0 = tangent(state.dc, torch.randn(state.q.shape, generator=rng, dtype=torch.float64, device=dev))
        h0 = state.potential + 0.5 * p0.square().sum(-1)

        def leap(at, p, active):
            return _leapfrog(system, at, p, eps, active, self.logdet_force, self.projection)[:6]

        tally, n = Tally(C, dev), params["num_steps"]
        if self.selection != "endpoint":
            pick = (doubling(leap, state, p0, h0, depth_of(n, self.max_steps), tally, rng)
                    if self.selection == "doubling" else window(leap, state, p0, h0, n, tally, rng))
            accept = tally.mean_acceptance()
        else:  # endpoint: the chains whose n steps all succeeded end together, `h` their energy
            at, h = window(leap, state, p0, h0, n, tally, rng, multinomial=False)
            accept = trajectory.acceptance(h0, h, (tally.failures == 0).to(dev) & ~tally.diverging)
            pick = Pick(state)
            pick.take(torch.rand(C, generator=rng, dtype=torch.float64, device=rng.device).to(dev) < accept, at)
        new = pick.state._replace(z=select(pick.moved, system.z_of(pick.state.q[:, : system.d]), state.z))
        return new, ConstrainedInfo(accept.float(), pick.moved, tally.diverging, tally.failures, h0.float(),
                                    tally.cost.round().long(), eps.float(), tally.iterations)

    def adaptation(self, density, z0, num_warmup):
        soft, target = list(self._system(density).soft), self.target_accept
        if target is None:
            target = TARGET_ACCEPT_SOFT if soft and self.selection != "endpoint" else TARGET_ACCEPT[self.selection]
        return _StepSize(self, target, soft)


class _StepState(NamedTuple):
    log_eps: float
    da: DualAveraging


class _StepSize:
    """One step size for all chains, by dual averaging on their mean acceptance; a trajectory ``u · T`` jittered
    per iteration (``u`` uniform on (0, 1], shared: no chain idles)."""

    def __init__(self, kernel: Constrained, target_accept: float, soft: list[int]):
        self.k, self.target_accept, self.soft = kernel, target_accept, soft

    def init(self, state, num_warmup):
        log_eps = math.log(self.k.initial_step_size)
        return _StepState(log_eps, da_init(math.log(10) + log_eps))

    def parameters(self, a: _StepState, it, rng):
        u = 1.0 - float(torch.rand((), generator=rng, device=rng.device))
        eps = math.exp(a.log_eps)
        return {"step_size": eps, "num_steps": min(self.k.max_steps, max(1, math.ceil(u * self.k.trajectory_length
                                                                                          / eps)))}

    def update(self, a: _StepState, it, previous, state, info: ConstrainedInfo, params):
        da = da_update(a.da, self.target_accept - float(info.acceptance_rate.mean()))
        return _StepState(float(da.x), da)

    def final(self, a: _StepState):
        return a._replace(log_eps=float(a.da.x_avg)) if a.da.t > 0 else a

    def describe(self, a: _StepState) -> dict:
        eps = math.exp(a.log_eps)
        return dict(step_size=eps, trajectory_length=self.k.trajectory_length, selection=self.k.selection,
                    logdet_force=self.k.logdet_force, target_accept=self.target_accept,
                    projection=self.k.projection, soft=self.soft,
                    leapfrog_steps=self._steps(max(1, math.ceil(self.k.trajectory_length / eps))))

    def _steps(self, n: int) -> int:
        """Leapfrog steps of a trajectory of ``n`` planned steps: ``2^k - 1`` with doubling; at most ``max_steps``."""
        return 2 ** depth_of(n, self.k.max_steps) - 1 if self.k.selection == "doubling" else min(self.k.max_steps, n)
