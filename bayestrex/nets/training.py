"""Training loops of the reference models (seeded, with progress bars) and test accuracy."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import CNN, GAN, MLP, VAE

__all__ = ["train_vae", "train_classifier", "train_gan", "accuracy", "batches"]


def batches(n: int, batch_size: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    return perm.split(batch_size)


def train_vae(images: torch.Tensor, *, latent_dim=5, hidden=256, depth=2, epochs=300, batch_size=128, lr=2e-3,
              seed=0, progress=True) -> VAE:
    """Fit a VAE (Bernoulli pixels, N(0, I) prior) by maximising the ELBO with Adam; seeded."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae = VAE(tuple(images.shape[1:]), latent_dim, hidden, depth)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    bar = tqdm(range(epochs), desc="train VAE", disable=not progress, leave=False)
    for _ in bar:
        total = 0.0
        for idx in batches(len(images), batch_size, g):
            x = images[idx]
            recon, mu, logvar = vae(x)
            rec = nn.functional.binary_cross_entropy(recon, x, reduction="sum")
            kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum()
            loss = (rec + kl) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
        sched.step()
        bar.set_postfix(neg_elbo=f"{total / len(images):.2f}")
    return vae.eval()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, num_classes=10, arch=None, net: str = "cnn",
                     epochs=40, batch_size=64, lr=2e-3, weight_decay=1e-4, seed=0, progress=True) -> nn.Module:
    """Fit a classifier (``net``: ``"cnn"`` or ``"mlp"``; ``arch``: extra arguments of :class:`CNN` / :class:`MLP`)
    by cross-entropy with AdamW; seeded."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if net not in ("cnn", "mlp"):
        raise ValueError(f"net must be 'cnn' or 'mlp', got {net!r}")
    clf = (CNN if net == "cnn" else MLP)(tuple(images.shape[1:]), num_classes, **(arch or {}))
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    bar = tqdm(range(epochs), desc="train classifier", disable=not progress, leave=False)
    for _ in bar:
        clf.train()
        total = 0.0
        for idx in batches(len(images), batch_size, g):
            loss = nn.functional.cross_entropy(clf(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        bar.set_postfix(loss=f"{total / len(images):.3f}")
    return clf.eval()


def train_gan(images: torch.Tensor, *, latent_dim=5, hidden=256, epochs=30, batch_size=128, lr=2e-4, seed=0,
              progress=True) -> GAN:
    """Fit the MLP GAN (hinge loss, spectral-norm discriminator with a minibatch-std feature, Adam β1 = 0.5); seeded."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    gan = GAN(tuple(images.shape[1:]), latent_dim, hidden)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    gan.train()
    bar = tqdm(range(epochs), desc="train GAN", disable=not progress, leave=False)
    for _ in bar:
        for idx in batches(len(images), batch_size, g):
            real = images[idx]
            fake = gan.generator(torch.randn(len(idx), latent_dim))
            # hinge loss with a spectrally normalised discriminator (Miyato et al., 2018)
            d_real, d_fake = gan.discriminator(real), gan.discriminator(fake.detach())
            loss_d = nn.functional.relu(1 - d_real).mean() + nn.functional.relu(1 + d_fake).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = -gan.discriminator(fake).mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
        bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
    return gan.eval()


@torch.no_grad()
def accuracy(classifier, images, labels, batch_size=2048) -> float:
    hits = sum((classifier(x).argmax(-1) == y).sum().item()
               for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / max(len(labels), 1)
