"""Inputs to codes: a VAE encoder or CDeepEx's Algorithm 2, and the residual that makes the code decode exactly."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Residual", "invert", "check_images"]


class Residual(nn.Module):
    """``G(z) - Δ``: the generator shifted so that the data point's code decodes to exactly the data point.

    ``delta`` is ``[N, ...]`` (row ``i`` for code row ``i``) or ``[1, ...]`` (one input, many chains)."""

    def __init__(self, generator, delta: torch.Tensor):
        super().__init__()
        self.generator = generator
        self.register_buffer("delta", delta.detach())
        self.latent_dim = generator.latent_dim

    def forward(self, z):
        if len(self.delta) not in (1, len(z)):
            raise ValueError(f"Residual: {len(z)} codes but {len(self.delta)} residuals; expected one residual per "
                             "code row, or one for all")
        return self.generator(z) - self.delta


def check_images(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name} must be a batch of inputs [N, ...], got {type(x).__name__}"
                         f"{'' if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def invert(generator, x: torch.Tensor, *, encoder=None, steps: int = 500, lr: float = 0.05, restarts: int = 4,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``z0 [N, d]`` of inputs ``x [N, ...]`` and residuals ``Δ = G(z0) - x``.

    With ``encoder`` (a VAE's, returning ``(mean, logvar)``) ``z0`` is the encoder mean; otherwise ``z0`` minimises
    ``||G(z) - x||²`` by Adam from ``restarts`` prior draws per input (CDeepEx's Algorithm 2), keeping the best.
    """
    x = check_images(x)
    d = generator.latent_dim
    with torch.no_grad():
        if encoder is not None:
            z0 = encoder(x)[0]
        else:
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(restarts, len(x), d, generator=g).to(x).reshape(-1, d).requires_grad_(True)
            target = x.repeat(restarts, *([1] * (x.dim() - 1)))
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                with torch.enable_grad():
                    loss = (generator(z) - target).square().flatten(1).sum(1)
                    opt.zero_grad()
                    loss.sum().backward()
                opt.step()
            err = (generator(z) - target).square().flatten(1).sum(1).view(restarts, len(x))
            z0 = z.detach().view(restarts, len(x), d)[err.argmin(0), torch.arange(len(x))]
        delta = generator(z0) - x
    return z0.detach(), delta.detach()
