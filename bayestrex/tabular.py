"""Tabular data: a small Gaussian VAE over standardised feature vectors, the generator for explaining tabular
classifiers (e.g. a random forest wrapped in :class:`bayestrex.BlackBox`)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["Standardizer", "TabularVAE", "train_tabular_vae"]


class Standardizer:
    """``(x - mean) / sd`` per feature, fitted on training rows; ``inverse`` maps back to the original units."""

    def __init__(self, x: torch.Tensor):
        self.mean, self.sd = x.mean(0), x.std(0).clamp_min(1e-8)

    def __call__(self, x):
        return (x - self.mean) / self.sd

    def inverse(self, z):
        return z * self.sd + self.mean


class TabularVAE(nn.Module):
    """MLP VAE with a Gaussian likelihood (learned per-feature noise) on standardised features; the generator for
    sampling (codes ``[N, latent_dim]`` to decoder means ``[N, features]``) comes from :func:`train_tabular_vae`."""

    def __init__(self, features: int, latent_dim: int = 3, hidden: int = 64):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, features))
        self.log_noise = nn.Parameter(torch.full((features,), -1.0))

    def forward(self, x):
        mu, logvar = self.encoder(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar


class _Generator(nn.Module):
    def __init__(self, vae: TabularVAE):
        super().__init__()
        self.vae, self.latent_dim = vae, vae.latent_dim

    def forward(self, z):
        return self.vae.decoder(z)


def train_tabular_vae(x: torch.Tensor, *, latent_dim: int = 3, hidden: int = 64, epochs: int = 2000,
                      lr: float = 3e-3, seed: int = 0, progress: bool = False):
    """Fit the VAE on standardised rows ``x [N, F]`` (full batch, Adam, seeded); returns ``(vae, generator)``."""
    torch.manual_seed(seed)
    vae = TabularVAE(x.shape[1], latent_dim, hidden)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc="train tabular VAE", disable=not progress, leave=False):
        recon, mu, logvar = vae(x)
        var = (2 * vae.log_noise).exp()
        nll = 0.5 * (((x - recon).square() / var) + 2 * vae.log_noise).sum(-1).mean()
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1).mean()
        opt.zero_grad()
        (nll + kl).backward()
        opt.step()
    vae.eval().requires_grad_(False)
    return vae, _Generator(vae)
