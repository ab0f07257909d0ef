"""Descent of a posterior's potential, batched over rows: the walks of xGEMs and the posterior MAP."""

from __future__ import annotations

import torch

from ..posterior import Posterior

__all__ = ["descend"]


def descend(post: Posterior, z0: torch.Tensor, *, steps: int, lr: float, stop=None, normalized: bool = False):
    """Descend the posterior's potential from ``z0 [N, d]``, each row frozen once ``stop(probs) [N]`` holds.

    ``normalized=True`` takes steps of length ``lr`` along the steepest-descent direction (a path with even arc
    length, for walks); otherwise Adam (for modes). Returns ``(z [T, N, d], probs [T, N, K], length [N])``, step 0
    being ``z0`` and ``length`` the number of steps each row moved."""
    z = z0.clone()
    opt_z = z.clone().requires_grad_(True)
    opt = None if normalized else torch.optim.Adam([opt_z], lr=lr)
    active = torch.ones(len(z), dtype=torch.bool, device=z.device)
    zs, ps = [z0.clone()], [post.probs(z0).detach()]
    length = torch.zeros(len(z), dtype=torch.long)
    for t in range(steps):
        if stop is not None:
            active &= ~stop(ps[-1])
        if not active.any():
            break
        _, grad, _ = post.potential_and_grad(z)
        active &= torch.isfinite(grad).all(-1)  # a row whose density turns NaN/inf stops where it is
        if not active.any():
            break
        grad = torch.where(active[:, None], grad, torch.zeros_like(grad))
        if normalized:
            z = z - lr * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            opt_z.grad = grad
            opt.step()
            with torch.no_grad():
                opt_z.data = torch.where(active[:, None], opt_z.data, z)  # frozen rows stay where they stopped
            z = opt_z.detach().clone()
        length[active.cpu()] = t + 1
        zs.append(z.clone())
        ps.append(post.probs(z).detach())
    return torch.stack(zs), torch.stack(ps), length
