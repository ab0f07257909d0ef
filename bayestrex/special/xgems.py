"""xGEMs (Joshi et al. 2018): the MAP walk of the high-confidence posterior from an input's code, and the
confidence manifold along it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..posterior import Posterior
from ..targets import High
from .descent import descend
from .inversion import Residual, check_images, invert

__all__ = ["Path", "XGEMsResult", "fit_logistic", "xgems"]


@dataclass
class Path:
    """A latent walk of N rows: ``z [T, N, d]``, ``probs [T, N, K]``, ``distance [T, N]`` (``||z_t - z0||``) and,
    per row, ``length [N]`` (steps recorded, the rest repeat the last) and ``switch [N]`` (first step whose predicted
    class is the target, -1 if never)."""

    z: torch.Tensor
    probs: torch.Tensor
    distance: torch.Tensor
    length: torch.Tensor
    switch: torch.Tensor

    def at(self, step: torch.Tensor) -> torch.Tensor:
        """Codes ``[N, d]`` at per-row steps ``step [N]`` (clamped to the recorded range)."""
        idx = step.clamp(0, self.z.shape[0] - 1)
        return self.z[idx, torch.arange(self.z.shape[1])]


@dataclass
class XGEMsResult:
    z0: torch.Tensor        # [N, d] codes of the inputs
    delta: torch.Tensor     # [N, ...] residuals G(z0) - x
    target: int             # the class walked toward
    path: Path
    z: torch.Tensor         # [N, d] the xGEMs: codes at the switch (the last code when there was none)
    probs: torch.Tensor     # [N, K] their probabilities
    switched: torch.Tensor  # [N] bool
    steepness: torch.Tensor  # [N] logistic fit of p_target against distance
    midpoint: torch.Tensor   # [N]

    def images(self, generator) -> torch.Tensor:
        """The xGEMs as inputs (residual added back)."""
        with torch.no_grad():
            return Residual(generator, self.delta)(self.z)


def fit_logistic(distance: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None = None, *, steps: int = 500):
    """Least-squares fit of ``p ≈ 1 / (1 + exp(-k (d - d0)))`` per column of ``distance``/``p`` ``[T, N]``
    (rows where ``mask`` is False are ignored): ``(steepness k [N], midpoint d0 [N])``."""
    mask = torch.ones_like(p, dtype=torch.bool) if mask is None else mask
    d, p = distance.detach().double(), p.detach().double()
    w = mask.double()
    # start: midpoint where p crosses 0.5 (else the end), steepness from the span
    span = (d * w).amax(0).clamp_min(1e-6)
    cross = torch.where((p >= 0.5) & mask, d, torch.full_like(d, float("inf"))).amin(0)
    d0 = torch.where(torch.isfinite(cross), cross, span).clone().requires_grad_(True)
    log_k = (torch.log(8.0 / span)).clone().requires_grad_(True)
    opt = torch.optim.Adam([d0, log_k], lr=0.05)
    for _ in range(steps):
        pred = torch.sigmoid(log_k.exp() * (d - d0))
        loss = ((pred - p).square() * w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return log_k.detach().exp().float(), d0.detach().float()


def xgems(generator, classifier, x: torch.Tensor, target: int, *, encoder=None, z0=None, delta=None,
          prior_scale: float = 1.0, sigma: float = 0.05, step: float = 0.02, max_steps: int = 500,
          until: float = 0.95) -> XGEMsResult:
    """xGEMs of inputs ``x [N, ...]`` toward class ``target``.

    The walk descends the potential of the posterior ``N(z; z0, prior_scale²) · N(0; log p_target, sigma²)`` (the
    ``high:target,log`` posterior with a prior centred at the input's code: xGEMs' ``loss_x + λ loss_f`` with the
    data term measured in latent space, the classifier term on the log scale, which does not saturate where
    ``p_target`` is tiny, and ``λ = prior_scale² / sigma²``), in steps of length ``step`` along its steepest
    descent from ``z0``. The xGEM is the first
    code whose predicted class is ``target``; the path goes on until ``p_target >= until`` (or ``max_steps``) so that
    the confidence manifold (logistic fit of ``p_target`` against ``||z - z0||``) sees both sides of the switch.
    """
    x = check_images(x)
    if z0 is None:
        z0, delta = invert(generator, x, encoder=encoder)
    elif delta is None:
        raise ValueError("delta is required with z0 (the residual G(z0) - x from invert)")
    gen = Residual(generator, delta)
    post = Posterior(gen, classifier, High(target, log=True), sigma=sigma, prior_loc=z0, prior_scale=prior_scale)
    z_path, p_path, length = descend(post, z0, steps=max_steps, lr=step, stop=lambda p: p[:, target] >= until,
                                      normalized=True)
    dist = (z_path - z0).norm(dim=-1)
    is_target = p_path.argmax(-1) == target
    steps = torch.arange(len(z_path))[:, None]
    valid = steps <= length[None, :]
    switch = torch.where((is_target & valid).any(0), (is_target & valid).float().argmax(0), torch.tensor(-1))
    path = Path(z_path, p_path, dist, length, switch)
    pick = torch.where(switch >= 0, switch, length)
    k, d0 = fit_logistic(dist, p_path[..., target], valid)
    return XGEMsResult(z0, delta, int(target), path, path.at(pick), p_path[pick, torch.arange(len(x))],
                       switch >= 0, k, d0)
