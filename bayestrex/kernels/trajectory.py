"""How a state is drawn from a leapfrog trajectory, batched over chains: the static multinomial window, the endpoint
Metropolis rule and the doubling trajectory with biased progressive sampling (Betancourt 2017, "A conceptual
introduction to Hamiltonian Monte Carlo", app. A; Stan's and NumPyro's NUTS without the U-turn criterion).

Each scheme is given ``leap(at, p, active) -> (at, p, ok, h, cost, iterations)``: one leapfrog step of the chains in
``active [C]`` from the states ``at`` (a NamedTuple of per-chain tensors) with momenta ``p [C, D]``, returning the new
states and momenta (unchanged where ``ok`` is False: a step that failed, e.g. a projection that did not converge), its
energy ``h [C]``, its cost ``[C]`` and its solver iterations ``[C]``. A failed step is an edge of the trajectory that
fails from either end, so cutting the trajectory there keeps detailed balance. :class:`Tally` adds up what the steps
cost and the acceptance statistic; :class:`Pick` is the draw so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .base import select

__all__ = ["acceptance", "selection_log_weight", "merge_log_probability", "Tally", "Pick", "window", "doubling",
           "depth_of"]


def acceptance(h0: torch.Tensor, h1: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Metropolis acceptance ``min(1, exp(h0 - h1))`` ``[C]``; 0 where the trajectory failed (``ok`` False)."""
    log_acc = torch.where(ok & torch.isfinite(h1), h0 - h1, torch.full_like(h1, -math.inf)).clamp(max=0.0)
    return log_acc.exp().nan_to_num(nan=0.0)


def selection_log_weight(h0: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Log weight ``-(h - h0)`` with which a state of the trajectory is drawn (multinomial HMC; the accept step)."""
    return h0 - h


def merge_log_probability(log_new: torch.Tensor, log_old: torch.Tensor) -> torch.Tensor:
    """Log probability ``min(0, log W_new - log W_old)`` ``[C]`` that a doubling's new half supplies the draw (biased
    progressive sampling; ``W``: the halves' summed weights exp(-H))."""
    return (log_new - log_old).clamp(max=0.0)


class Tally:
    """What the steps of a trajectory add up to, per chain: the acceptance statistic's sum over the steps tried, the
    failed steps, the divergences (energy error above 1000 or non-finite), the solver iterations and the cost."""

    def __init__(self, C: int, dev):
        self.stat = torch.zeros(C, dtype=torch.float64, device=dev)
        self.tried = torch.zeros(C, dtype=torch.float64, device=dev)
        self.failures, self.iterations = torch.zeros(C, dtype=torch.long), torch.zeros(C, dtype=torch.long)
        self.cost, self.diverging = torch.zeros(C), torch.zeros(C, dtype=torch.bool, device=dev)

    def add(self, alive, ok, h, h0, cost, iterations) -> torch.Tensor:
        """Count one step of the chains in ``alive [C]``; returns where it succeeded (``ok`` and not diverging)."""
        div = alive & ok & (~torch.isfinite(h) | (h - h0 > 1000.0))
        self.iterations += iterations
        self.cost += cost
        self.failures += (alive & ~ok).long().cpu()
        self.diverging |= div
        self.stat += torch.where(alive, acceptance(h0, h, ok & ~div), self.stat.new_zeros(()))
        self.tried += alive.double()
        return alive & ok & ~div

    def mean_acceptance(self) -> torch.Tensor:
        """``[C]``: the acceptance statistic averaged over the steps tried (a failed one 0; 1 where none was)."""
        return torch.where(self.tried > 0, self.stat / self.tried.clamp(min=1), torch.ones_like(self.stat))


class Pick:
    """Progressive multinomial sampling over a trajectory: each offered state replaces the pick with probability
    ``w / (W + w)`` (``W``: the weights offered so far), so the pick is a draw ∝ ``w`` from all of them; the start
    (``state``) has weight 1 (log weights are relative to its energy), or none if ``empty``."""

    def __init__(self, state, empty: bool = False):
        self.state = state
        C, dev = len(state[0]), state[0].device
        self.log_total = torch.full((C,), -math.inf if empty else 0.0, dtype=torch.float64, device=dev)
        self.moved = torch.zeros(C, dtype=torch.bool, device=dev)

    def offer(self, mask, at, log_w, rng):
        log_w = torch.where(mask & torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
        total = torch.logaddexp(self.log_total, log_w)
        u = torch.rand(len(log_w), generator=rng, dtype=torch.float64, device=rng.device).to(log_w.device)
        self.take(mask & (u.log() < log_w - total), at)
        self.log_total = torch.where(mask, total, self.log_total)

    def take(self, take, at):
        """Make ``at`` the pick of the chains in ``take [C]``."""
        self.state, self.moved = select(take, at, self.state), self.moved | take


Leap = Callable[..., tuple]


def window(leap: Leap, state, p0, h0, n: int, tally: Tally, rng, multinomial: bool = True):
    """``n`` leapfrog steps per chain. ``multinomial``: a window of ``back`` steps before the start and ``n - back``
    after it, ``back`` uniform on ``0..n`` per chain (static multinomial HMC), a failed step ending it on its side;
    returns the :class:`Pick` (a draw ∝ exp(-H) over the window). Otherwise ``n`` steps forward; returns the last
    states and their energies ``(at, h)`` for a Metropolis decision (a chain with a failed step is to be rejected)."""
    C, dev = len(p0), p0.device
    back = (torch.randint(0, n + 1, (C,), generator=rng, device=rng.device).to(dev) if multinomial
            else torch.zeros(C, dtype=torch.long, device=dev))
    pick = Pick(state)
    # one batched sweep of n steps: each chain takes its `back` steps (momentum -p0) first, then starts again from
    # the start with +p0 (a failure on the backward side moves a chain to the forward side at once)
    todo_back, todo_fwd = back.clone(), n - back
    forward = todo_back == 0
    at, p, h = state, torch.where(forward.unsqueeze(-1), p0, -p0), h0
    for _ in range(n):
        turn = ~forward & (todo_back == 0)
        if bool(turn.any()):
            at, p, forward = select(turn, state, at), select(turn, p0, p), forward | turn
        alive = torch.where(forward, todo_fwd > 0, todo_back > 0)
        if not bool(alive.any()):
            break
        at, p, ok, h, cost, its = leap(at, p, alive)
        good = tally.add(alive, ok, h, h0, cost, its)
        # a step taken counts down its side; a failed one ends its side
        todo_back = torch.where(alive & ~forward, torch.where(good, todo_back - 1, 0), todo_back)
        todo_fwd = torch.where(alive & forward, torch.where(good, todo_fwd - 1, 0), todo_fwd)
        if multinomial:
            pick.offer(good, at, selection_log_weight(h0, h), rng)
    return pick if multinomial else (at, h)


def depth_of(n: int, max_steps: int) -> int:
    """Doublings for about ``n`` steps: ``round(log2(n + 1))``, at least 1, and ``2^k - 1 <= max_steps``."""
    return max(1, min(round(math.log2(n + 1)), int(math.log2(max_steps + 1))))


def doubling(leap: Leap, state, p0, h0, depth: int, tally: Tally, rng) -> Pick:
    """``depth`` doublings: the ``j``-th extends the trajectory by ``2^j`` steps from its end on a side drawn per
    chain; the new half's state (drawn ∝ exp(-H) within it) replaces the pick with probability
    ``min(1, W_new / W_old)`` (biased progressive sampling), so the draw lies mostly in the half away from the start.
    A failed step discards its half and ends the trajectory, as a divergence does in NUTS: from any state of the kept
    trajectory the same doublings meet the same failure, so the draw stays exact. A divergence (energy error above
    1000, :class:`Tally`) is measured from the start's energy, so from another start it might not be one: the
    approximation Stan and NumPyro make (the window rule shares it). ``2^depth - 1`` steps at most."""
    C, dev = len(p0), p0.device
    pick = Pick(state)
    left = right = state
    p_left = p_right = p0  # the momentum at each end, pointing forward in time
    alive = torch.ones(C, dtype=torch.bool, device=dev)
    for j in range(depth):
        fwd = torch.rand(C, generator=rng, dtype=torch.float64, device=rng.device).to(dev) < 0.5
        at, p = select(fwd, right, left), torch.where(fwd.unsqueeze(-1), p_right, -p_left)
        half, going = Pick(at, empty=True), alive
        for _ in range(2 ** j):
            if not bool(going.any()):
                break
            at, p, ok, h, cost, its = leap(at, p, going)
            going = tally.add(going, ok, h, h0, cost, its)
            half.offer(going, at, selection_log_weight(h0, h), rng)
        u = torch.rand(C, generator=rng, dtype=torch.float64, device=rng.device).to(dev)
        pick.take(going & (u.log() < merge_log_probability(half.log_total, pick.log_total)), half.state)
        pick.log_total = torch.where(going, torch.logaddexp(pick.log_total, half.log_total), pick.log_total)
        right, p_right = select(going & fwd, at, right), torch.where((going & fwd).unsqueeze(-1), p, p_right)
        left, p_left = select(going & ~fwd, at, left), torch.where((going & ~fwd).unsqueeze(-1), -p, p_left)
        alive = going
        if not bool(alive.any()):
            break
    return pick
