"""Reference models (a small VAE and a small CNN), their training loops, and safe weight files.

Weights are plain ``state_dict`` files read with ``torch.load(weights_only=True)`` (no pickled code runs) and
checked against the SHA-256 recorded in a JSON file beside them, with the architecture's arguments and the
training figures. ``pretrained("digits")`` loads them, training and caching them first when they are missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import data
from ._util import atomic_path

__all__ = ["VAE", "Decoder", "Encoder", "CNN", "train_vae", "train_classifier", "accuracy", "save", "load",
           "pretrained", "CheckpointError", "RECIPES"]


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, untrusted (would need pickled code) or does not fit the architecture."""


class Encoder(nn.Module):
    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256):
        super().__init__()
        n = math.prod(image_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x):
        """Posterior mean and log-variance ``[N, d]`` each."""
        return self.net(x).chunk(2, dim=-1)


class Decoder(nn.Module):
    """The generator: latent codes ``[N, latent_dim]`` to images ``[N, C, H, W]`` in (0, 1)."""

    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256):
        super().__init__()
        self.latent_dim, self.image_shape = latent_dim, tuple(image_shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, math.prod(image_shape)), nn.Sigmoid())

    def forward(self, z):
        return self.net(z).view(-1, *self.image_shape)


class VAE(nn.Module):
    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256):
        super().__init__()
        self.config = dict(image_shape=list(image_shape), latent_dim=latent_dim, hidden=hidden)
        self.encoder = Encoder(image_shape, latent_dim, hidden)
        self.decoder = Decoder(image_shape, latent_dim, hidden)
        self.latent_dim = latent_dim

    def forward(self, x):
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar


class CNN(nn.Module):
    """Small CNN classifier returning logits: conv-conv-maxpool-fc-fc, as in Bayes-TrEx (scaled to the input)."""

    def __init__(self, image_shape=(1, 8, 8), num_classes=10, channels=(16, 32), hidden=64):
        super().__init__()
        self.config = dict(image_shape=list(image_shape), num_classes=num_classes, channels=list(channels),
                           hidden=hidden)
        c, h, w = image_shape
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 2) * (w // 2), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


# -- training ----------------------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    return perm.split(batch_size)


def train_vae(images: torch.Tensor, *, latent_dim=5, hidden=256, epochs=300, batch_size=128, lr=2e-3, seed=0,
              progress=True) -> VAE:
    """Fit a VAE (Bernoulli pixels, N(0, I) prior) by maximising the ELBO with Adam; seeded."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae = VAE(tuple(images.shape[1:]), latent_dim, hidden)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    bar = tqdm(range(epochs), desc="train VAE", disable=not progress, leave=False)
    for _ in bar:
        total = 0.0
        for idx in _batches(len(images), batch_size, g):
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


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, num_classes=10, epochs=40, batch_size=64,
                     lr=2e-3, weight_decay=1e-4, seed=0, progress=True) -> CNN:
    """Fit the CNN by cross-entropy with AdamW; seeded."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    clf = CNN(tuple(images.shape[1:]), num_classes)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    bar = tqdm(range(epochs), desc="train classifier", disable=not progress, leave=False)
    for _ in bar:
        clf.train()
        total = 0.0
        for idx in _batches(len(images), batch_size, g):
            loss = nn.functional.cross_entropy(clf(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        bar.set_postfix(loss=f"{total / len(images):.3f}")
    return clf.eval()


@torch.no_grad()
def accuracy(classifier, images, labels) -> float:
    return (classifier(images).argmax(-1) == labels).float().mean().item()


# -- weight files ------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: nn.Module, path: str | os.PathLike, **info) -> None:
    """Write ``model``'s weights to ``path`` (``.pt``) and its config, checksum and ``info`` to ``path.json``.

    Both files are written atomically.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
        digest = _sha256(tmp)
    meta = dict(arch=type(model).__name__, config=model.config, sha256=digest, torch=torch.__version__, **info)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


_ARCHS = {"VAE": VAE, "CNN": CNN}


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by :func:`save`, safely; raises :class:`CheckpointError` on any problem."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} (and its {meta_path.name}) not found")
    try:
        meta = json.loads(meta_path.read_text())
        arch, config, digest = _ARCHS[meta["arch"]], meta["config"], meta["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} is corrupt: {e!r}") from None
    if _sha256(path) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 does not match the one in {meta_path.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"checkpoint {path} is corrupt or untrusted (refused by weights_only loading): {e}"
                              ) from None
    try:
        model = arch(**config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit a {meta['arch']}({config}): {e}") from None
    return model.eval()


#: how the shipped models are trained, per dataset; `pretrained` and `models/README.md` use these.
RECIPES = {
    "digits": dict(vae=dict(latent_dim=5, hidden=256, epochs=300, batch_size=128, lr=2e-3, seed=0),
                   classifier=dict(num_classes=10, epochs=40, batch_size=64, lr=2e-3, seed=0)),
}


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where weights live: the argument, else ``$BAYESTREX_WEIGHTS``, else the source tree's ``models/``, else
    ``~/.cache/bayestrex``."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("BAYESTREX_WEIGHTS"):
        return Path(os.environ["BAYESTREX_WEIGHTS"])
    repo_models = Path(__file__).resolve().parents[1] / "models"
    if repo_models.is_dir():
        return repo_models
    return Path.home() / ".cache" / "bayestrex"


def train(dataset: str = "digits", *, directory=None, progress=True) -> dict:
    """Train the dataset's VAE and classifier with its recipe and write their weights; returns the figures."""
    if dataset not in RECIPES:
        raise ValueError(f"no training recipe for dataset {dataset!r}; expected one of {sorted(RECIPES)}")
    recipe, out = RECIPES[dataset], weights_dir(directory) / dataset
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    x_train, y_train = data.load(dataset, "train")
    x_test, y_test = data.load(dataset, "test")

    t0 = time.perf_counter()
    vae = train_vae(x_train, progress=progress, **recipe["vae"])
    vae_s = time.perf_counter() - t0
    with torch.no_grad():
        recon, mu, logvar = vae(x_test)
        test_bce = nn.functional.binary_cross_entropy(vae.decoder(mu), x_test, reduction="sum").item() / len(x_test)

    t0 = time.perf_counter()
    clf = train_classifier(x_train, y_train, progress=progress, **recipe["classifier"])
    clf_s = time.perf_counter() - t0
    acc = accuracy(clf, x_test, y_test)

    figures = dict(vae_train_seconds=round(vae_s, 2), vae_test_reconstruction_bce=round(test_bce, 3),
                   classifier_train_seconds=round(clf_s, 2), classifier_test_accuracy=round(acc, 4))
    save(vae, out / "vae.pt", dataset=dataset, recipe=recipe["vae"], **figures)
    save(clf, out / "classifier.pt", dataset=dataset, recipe=recipe["classifier"], **figures)
    return figures


def pretrained(dataset: str = "digits", *, directory=None, progress=True):
    """``(vae, classifier)`` for ``dataset``, frozen and in eval mode; trains and caches them when missing.

    The generator for sampling is ``vae.decoder``; ``vae.encoder`` maps images to latent codes.
    """
    out = weights_dir(directory) / dataset
    if not (out / "vae.pt").is_file() or not (out / "classifier.pt").is_file():
        print(f"bayestrex: no {dataset} weights in {out}; training them once (seconds) ...", flush=True)
        figures = train(dataset, directory=directory, progress=progress)
        print(f"bayestrex: trained {dataset} models: {figures}", flush=True)
    models = load(out / "vae.pt"), load(out / "classifier.pt")
    for m in models:
        m.requires_grad_(False)
    return models
