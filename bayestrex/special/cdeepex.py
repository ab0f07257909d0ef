"""CDeepEx (Feghahati et al. 2020): the closest code on the boundary between two classes, by the augmented
Lagrangian of the paper."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..posterior import Posterior
from ..targets import Boundary
from .inversion import Residual, check_images, invert

__all__ = ["al_update", "CDeepExResult", "cdeepex"]


def al_update(h, g, h_prev, lam, mu, c, *, beta: float = 1.01, gamma: float = 0.24):
    """One outer update of the augmented Lagrangian for ``h = 0``, ``g <= 0`` (Bertsekas 1982; CDeepEx eq. 3-4):
    ``λ ← λ + c h``, ``μ ← max(0, μ + c g)``, and ``c ← β c`` where ``|h| > γ |h_prev|`` (per row)."""
    lam = lam + c * h
    mu = (mu + c[:, None] * g).clamp_min(0)
    c = torch.where(h.abs() > gamma * h_prev.abs(), c * beta, c)
    return lam, mu, c


@dataclass
class CDeepExResult:
    z0: torch.Tensor       # [N, d]
    delta: torch.Tensor    # [N, ...]
    true: int
    probe: int
    z: torch.Tensor        # [N, d] the boundary codes z_e
    probs: torch.Tensor    # [N, K]
    path: torch.Tensor     # [outer + 1, N, d] the outer iterates
    h: torch.Tensor        # [outer + 1, N] llh(true) - llh(probe) along them
    max_violation: torch.Tensor  # [N] max over the inequality constraints at z (<= 0 when met)
    c: torch.Tensor        # [N] final penalty
    converged: torch.Tensor  # [N] bool: |h| <= tol and violation <= tol

    def images(self, generator) -> torch.Tensor:
        with torch.no_grad():
            return Residual(generator, self.delta)(self.z)

    def explanation(self, generator) -> torch.Tensor:
        """``G(z0) - G(z_e)`` ``[N, ...]``: positive where the input has ink the boundary point lacks."""
        with torch.no_grad():
            return generator(self.z0) - generator(self.z)


def cdeepex(generator, classifier, x: torch.Tensor, true: int, probe: int, *, encoder=None, z0=None, delta=None,
            margin: float = 0.0, c0: float = 1.0, beta: float = 1.01, gamma: float = 0.24, outer: int = 100,
            inner: int = 30, lr: float = 0.01, tol: float = 1e-2) -> CDeepExResult:
    """CDeepEx: ``z_e = argmin ||z - z0||²`` subject to ``llh(true) = llh(probe)`` and both ``>= llh(y') + margin`` for
    every other class ``y'``, on the residual-shifted generator, by the augmented Lagrangian of the paper's eq. 3
    (inequalities written ``g = margin - (llh(a) - llh(y')) <= 0``). Each outer iteration minimises ``L_c`` with
    ``inner`` Adam steps, then updates the multipliers and ``c`` by :func:`al_update`."""
    x = check_images(x)
    if z0 is None:
        z0, delta = invert(generator, x, encoder=encoder)
    elif delta is None:
        raise ValueError("delta is required with z0 (the residual G(z0) - x from invert)")
    target = Boundary(true, probe, margin=margin)
    post = Posterior(Residual(generator, delta), classifier, target, prior_loc=z0)
    n = len(z0)
    lam = torch.zeros(n, dtype=z0.dtype)
    mu = torch.zeros(n, 2 * (post.num_classes - 2), dtype=z0.dtype)
    c = torch.full((n,), float(c0), dtype=z0.dtype)

    def constraints(z):
        return target.constraints(post.probs(z))

    z = z0.clone()
    with torch.no_grad():
        h_prev, _ = constraints(z)
    path, hs = [z.clone()], [h_prev.clone()]
    for _ in range(outer):
        zv = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([zv], lr=lr)
        for _ in range(inner):
            with torch.enable_grad():
                h, g = constraints(zv)
                lag = ((zv - z0).square().sum(-1) + lam * h + 0.5 * c * h.square()
                       + ((mu + c[:, None] * g).clamp_min(0).square() - mu.square()).sum(-1) / (2 * c))
                opt.zero_grad()
                lag.sum().backward()
            opt.step()
        z = zv.detach()
        with torch.no_grad():
            h, g = constraints(z)
        lam, mu, c = al_update(h, g, h_prev, lam, mu, c, beta=beta, gamma=gamma)
        h_prev = h
        path.append(z.clone())
        hs.append(h.clone())
        if (h.abs() <= tol).all() and (g.amax(-1) <= tol).all():
            break
    with torch.no_grad():
        probs = post.probs(z)
        h, g = target.constraints(probs)
    viol = g.amax(-1)
    return CDeepExResult(z0, delta, int(true), int(probe), z, probs, torch.stack(path), torch.stack(hs), viol, c,
                         (h.abs() <= tol) & (viol <= tol))
