"""Reference architectures: an MLP VAE, an MLP GAN (spectral-norm discriminator), a small CNN and an MLP
classifier; over a classifier's hidden layer, a discrete VAE and an explanatory decoder (activations to images).
Each keeps its constructor arguments in ``config`` so a checkpoint can rebuild it."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Encoder", "Decoder", "VAE", "CNN", "MLP", "GAN", "DiscreteVAE", "Explainer", "ARCHITECTURES",
           "mlp_layers"]


def mlp_layers(sizes, act=nn.SiLU):
    """Linear layers of ``sizes`` with ``act`` between them (not after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(sizes) - 2 else [])
    return layers


class Encoder(nn.Module):
    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256, depth=2):
        super().__init__()
        n = math.prod(image_shape)
        self.net = nn.Sequential(nn.Flatten(), *mlp_layers([n] + [hidden] * depth + [2 * latent_dim]))

    def forward(self, x):
        """Posterior mean and log-variance ``[N, d]`` each."""
        return self.net(x).chunk(2, dim=-1)


class Decoder(nn.Module):
    """The generator: latent codes ``[N, latent_dim]`` to images ``[N, C, H, W]`` in (0, 1)."""

    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256, depth=2, act=nn.SiLU):
        super().__init__()
        self.latent_dim, self.image_shape = latent_dim, tuple(image_shape)
        self.net = nn.Sequential(*mlp_layers([latent_dim] + [hidden] * depth + [math.prod(image_shape)], act),
                                 nn.Sigmoid())

    def forward(self, z):
        return self.net(z).view(-1, *self.image_shape)


class VAE(nn.Module):
    """Bernoulli-pixel VAE with an N(0, I) prior; ``generator`` (= ``decoder``) is what the sampler explores."""

    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256, depth=2):
        super().__init__()
        self.config = dict(image_shape=list(image_shape), latent_dim=latent_dim, hidden=hidden, depth=depth)
        self.encoder = Encoder(image_shape, latent_dim, hidden, depth)
        self.decoder = Decoder(image_shape, latent_dim, hidden, depth)
        self.latent_dim = latent_dim

    @property
    def generator(self):
        return self.decoder

    def forward(self, x):
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar


class CNN(nn.Module):
    """Small CNN classifier returning logits: conv-conv-maxpool-fc-fc, as in Bayes-TrEx (scaled to the input).

    ``pool_between=True`` adds a max-pool after the first convolution (4x fewer operations on 28x28 inputs)."""

    def __init__(self, image_shape=(1, 8, 8), num_classes=10, channels=(16, 32), hidden=64, pool_between=False):
        super().__init__()
        self.config = dict(image_shape=list(image_shape), num_classes=num_classes, channels=list(channels),
                           hidden=hidden, pool_between=pool_between)
        c, h, w = image_shape
        c1, c2 = channels
        side = (h // 4) * (w // 4) if pool_between else (h // 2) * (w // 2)
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), *([nn.MaxPool2d(2)] if pool_between else []),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class MLP(nn.Module):
    """A fully connected classifier returning logits (to compare with the CNN at similar accuracy)."""

    def __init__(self, image_shape=(1, 8, 8), num_classes=10, hidden=256, depth=2):
        super().__init__()
        self.config = dict(image_shape=list(image_shape), num_classes=num_classes, hidden=hidden, depth=depth)
        self.net = nn.Sequential(nn.Flatten(), *mlp_layers([math.prod(image_shape)] + [hidden] * depth + [num_classes],
                                                     act=nn.ReLU))

    def forward(self, x):
        return self.net(x)


class _MinibatchStd(nn.Module):
    """Appends the batch's mean feature standard deviation to each row: lets the discriminator see a collapsed
    (too uniform) batch, the usual remedy for mode collapse (Karras et al., 2018)."""

    def forward(self, h):
        std = h.std(0, unbiased=False).mean() if len(h) > 1 else h.new_zeros(())
        return torch.cat([h, std.expand(len(h), 1)], dim=1)


class GAN(nn.Module):
    """An MLP GAN with an N(0, I) latent: ``generator`` maps ``[N, latent_dim]`` to images in (0, 1)."""

    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256):
        super().__init__()
        self.config = dict(image_shape=list(image_shape), latent_dim=latent_dim, hidden=hidden)
        self.latent_dim = latent_dim
        self.generator = Decoder(image_shape, latent_dim, hidden, depth=2, act=lambda: nn.LeakyReLU(0.2))
        n = math.prod(image_shape)
        sn = nn.utils.parametrizations.spectral_norm
        self.discriminator = nn.Sequential(
            nn.Flatten(), sn(nn.Linear(n, 2 * hidden)), nn.LeakyReLU(0.2), _MinibatchStd(),
            sn(nn.Linear(2 * hidden + 1, hidden)), nn.LeakyReLU(0.2), sn(nn.Linear(hidden, 1)))


class DiscreteVAE(nn.Module):
    """A discrete VAE over hidden activations ``[N, *activation_shape]``: ``num_latents`` (K) categorical latents
    with ``num_values`` (M) values each. MLP encoder to ``[N, K, M]`` logits, MLP decoder from the K one-hot codes
    back to activations (ending in a ReLU when ``nonnegative``: the activations of a ReLU layer).

    ``encode(a) -> codes [N, K]`` (long, the most probable value of each latent), ``decode(codes) -> activations``;
    ``forward(a, tau, hard)`` is the Gumbel-softmax pass used in training (see
    :func:`bayestrex.nets.train_discrete_vae`)."""

    def __init__(self, activation_shape=(64,), num_latents=16, num_values=8, hidden=256, depth=1,
                 nonnegative=False):
        super().__init__()
        self.config = dict(activation_shape=list(activation_shape), num_latents=num_latents, num_values=num_values,
                           hidden=hidden, depth=depth, nonnegative=nonnegative)
        self.activation_shape, self.num_latents, self.num_values = tuple(activation_shape), num_latents, num_values
        n = math.prod(activation_shape)
        self.encoder = nn.Sequential(nn.Flatten(), *mlp_layers([n] + [hidden] * depth + [num_latents * num_values],
                                                               act=nn.ReLU))
        self.decoder = nn.Sequential(*mlp_layers([num_latents * num_values] + [hidden] * depth + [n], act=nn.ReLU),
                                     *([nn.ReLU()] if nonnegative else []))

    def logits(self, a: torch.Tensor) -> torch.Tensor:
        """``[N, K, M]`` logits of the latents' values given activations ``a [N, *activation_shape]``."""
        return self.encoder(a).view(len(a), self.num_latents, self.num_values)

    def encode(self, a: torch.Tensor) -> torch.Tensor:
        """``[N, K]`` codes (long): each latent's most probable value."""
        return self.logits(a).argmax(-1)

    def decode_soft(self, y: torch.Tensor) -> torch.Tensor:
        """Activations ``[N, *activation_shape]`` of (relaxed) one-hot codes ``y [N, K, M]``."""
        return self.decoder(y.flatten(1)).view(len(y), *self.activation_shape)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Activations ``[N, *activation_shape]`` of codes ``[N, K]`` (integers in ``[0, M)``, long or float)."""
        codes = codes.round().long() if codes.is_floating_point() else codes
        if codes.dim() != 2 or codes.shape[1] != self.num_latents:
            raise ValueError(f"codes must have shape [N, {self.num_latents}], got {list(codes.shape)}")
        if codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < self.num_values):
            raise ValueError(f"codes must be integers in [0, {self.num_values - 1}]")
        dtype = next(self.decoder.parameters()).dtype
        return self.decode_soft(nn.functional.one_hot(codes, self.num_values).to(dtype))

    def forward(self, a: torch.Tensor, tau: float = 1.0, hard: bool = True):
        """``(reconstruction [N, *activation_shape], logits [N, K, M])`` through Gumbel-softmax samples at
        temperature ``tau``: one-hot in the forward pass with the relaxed gradient (straight-through) when
        ``hard``, the relaxed sample itself otherwise."""
        logits = self.logits(a)
        y = nn.functional.gumbel_softmax(logits, tau=tau, hard=hard, dim=-1)
        return self.decode_soft(y), logits


class Explainer(nn.Module):
    """The explanatory decoder: hidden activations ``[N, *activation_shape]`` to images ``[N, *image_shape]`` in
    (0, 1), an MLP trained on pairs (g(x), x) so that a hidden representation can be looked at."""

    def __init__(self, activation_shape=(64,), image_shape=(1, 8, 8), hidden=256, depth=2):
        super().__init__()
        self.config = dict(activation_shape=list(activation_shape), image_shape=list(image_shape), hidden=hidden,
                           depth=depth)
        self.image_shape = tuple(image_shape)
        self.net = nn.Sequential(nn.Flatten(), *mlp_layers([math.prod(activation_shape)] + [hidden] * depth
                                                           + [math.prod(image_shape)], act=nn.ReLU), nn.Sigmoid())

    def forward(self, a):
        return self.net(a).view(len(a), *self.image_shape)


#: architecture name (as written in a checkpoint) -> class; a new architecture is one entry here
ARCHITECTURES = {"VAE": VAE, "CNN": CNN, "MLP": MLP, "GAN": GAN, "DiscreteVAE": DiscreteVAE, "Explainer": Explainer}
