"""Training loops of the reference models (seeded, with progress bars) and test accuracy."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import CNN, GAN, MLP, VAE, DiscreteVAE, Explainer

__all__ = ["train_vae", "train_classifier", "train_gan", "train_discrete_vae", "train_explainer",
           "discrete_vae_figures", "accuracy", "batches"]


def batches(n: int, batch_size: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    return perm.split(batch_size)


def _fit(make, n: int, loss_of, *, epochs: int, batch_size: int, lr: float, seed: int, desc: str, progress: bool):
    """Seeded Adam with a cosine learning-rate schedule over ``epochs`` passes of shuffled batches of ``n`` examples:
    ``make()`` builds the model (after seeding), ``loss_of(model, idx, epoch)`` is the mean loss of batch ``idx``.
    Returns the model in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        total = 0.0
        for idx in batches(n, batch_size, g):
            loss = loss_of(model, idx, epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        bar.set_postfix(loss=f"{total / n:.4g}")
    return model.eval()


def train_vae(images: torch.Tensor, *, latent_dim=5, hidden=256, depth=2, epochs=300, batch_size=128, lr=2e-3,
              seed=0, progress=True) -> VAE:
    """Fit a VAE (Bernoulli pixels, N(0, I) prior) by maximising the ELBO with Adam; seeded."""

    def neg_elbo(vae, idx, epoch):
        x = images[idx]
        recon, mu, logvar = vae(x)
        rec = nn.functional.binary_cross_entropy(recon, x, reduction="sum")
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum()
        return (rec + kl) / len(x)

    return _fit(lambda: VAE(tuple(images.shape[1:]), latent_dim, hidden, depth), len(images), neg_elbo,
                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, desc="train VAE", progress=progress)


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


def train_discrete_vae(activations: torch.Tensor, *, head=None, num_latents=16, num_values=8, hidden=256, depth=1,
                       epochs=30, batch_size=256, lr=2e-3, tau=(1.0, 0.5), kl_weight=0.01, consistency=1.0, seed=0,
                       progress=True) -> DiscreteVAE:
    """Fit a :class:`DiscreteVAE` to hidden activations ``[N, ...]`` with straight-through Gumbel-softmax (one-hot
    codes in the forward pass, relaxed gradients; the temperature anneals geometrically from ``tau[0]`` to
    ``tau[1]``) and Adam; seeded.

    Loss per example: the squared reconstruction error relative to the activations' variance (``1 - R²``), plus
    ``kl_weight`` times the mean KL divergence of each latent's posterior from the uniform prior, plus, when the
    classifier's ``head`` h is given, ``consistency`` times ``KL(softmax h(a) || softmax h(â))`` so that h
    predicts the same on reconstructions as on the activations. The decoder ends in a ReLU when every activation is
    non-negative."""
    a_all = activations.detach()
    scale = a_all.var().clamp_min(1e-12)
    log_m = torch.log(torch.tensor(float(num_values)))

    def loss_of(dvae, idx, epoch):
        a = a_all[idx]
        recon, logits = dvae(a, tau=tau[0] * (tau[1] / tau[0]) ** (epoch / max(epochs - 1, 1)), hard=True)
        loss = (recon - a).square().flatten(1).mean(1).mean() / scale
        q = logits.log_softmax(-1)
        loss = loss + kl_weight * (q.exp() * (q + log_m)).sum(-1).mean()
        if head is not None and consistency:
            p = head(a).log_softmax(-1)
            loss = loss + consistency * nn.functional.kl_div(head(recon).log_softmax(-1), p, log_target=True,
                                                             reduction="batchmean")
        return loss

    return _fit(lambda: DiscreteVAE(tuple(a_all.shape[1:]), num_latents, num_values, hidden, depth,
                                    nonnegative=bool((a_all >= 0).all())),
                len(a_all), loss_of, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                desc="train discrete VAE", progress=progress)


def train_explainer(activations: torch.Tensor, images: torch.Tensor, *, hidden=256, depth=2, epochs=20,
                    batch_size=128, lr=2e-3, seed=0, progress=True) -> Explainer:
    """Fit the explanatory decoder on pairs (``activations [N, ...]`` = g(x), ``images [N, ...]`` = x) by binary
    cross-entropy with Adam; seeded."""
    def bce(model, idx, epoch):
        return nn.functional.binary_cross_entropy(model(activations[idx]), images[idx], reduction="sum") / len(idx)

    return _fit(lambda: Explainer(tuple(activations.shape[1:]), tuple(images.shape[1:]), hidden, depth), len(images),
                bce, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, desc="train explainer",
                progress=progress)


@torch.no_grad()
def discrete_vae_figures(dvae: DiscreteVAE, head, activations: torch.Tensor, labels: torch.Tensor,
                         batch_size: int = 4096) -> dict:
    """How well ``dvae`` keeps what the classifier's ``head`` h reads, on held-out ``activations [N, ...]`` with
    ``labels [N]``: the relative reconstruction error ``relative_mse`` (squared error over the activations'
    variance, ``1 - R²``), the accuracy of h on the activations (= the classifier's) and on their reconstructions
    ``h(dec(enc(a)))``, and how often the two predictions agree."""
    recon = torch.cat([dvae.decode(dvae.encode(a)) for a in activations.split(batch_size)])
    pred = torch.cat([head(a).argmax(-1) for a in activations.split(batch_size)])
    pred_recon = torch.cat([head(r).argmax(-1) for r in recon.split(batch_size)])
    mse = (recon - activations).square().mean() / activations.var().clamp_min(1e-12)
    return dict(relative_mse=round(float(mse), 4), accuracy=round(float((pred == labels).float().mean()), 4),
                accuracy_on_reconstruction=round(float((pred_recon == labels).float().mean()), 4),
                agreement=round(float((pred_recon == pred).float().mean()), 4))


@torch.no_grad()
def accuracy(classifier, images, labels, batch_size=2048) -> float:
    hits = sum((classifier(x).argmax(-1) == y).sum().item()
               for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / max(len(labels), 1)
