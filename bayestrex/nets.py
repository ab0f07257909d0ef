"""Reference models (a VAE, an MLP GAN, a small CNN), their training loops, safe weight files, and the model zoo.

Weights are plain ``state_dict`` files read with ``torch.load(weights_only=True)`` (no pickled code runs) and
checked against the SHA-256 recorded in a JSON file beside them, with the architecture's arguments and the
training figures. ``get(dataset, name)`` loads a zoo model (see :func:`recipe` for the names), training and caching it
first when it is missing; ``pretrained(dataset)`` is ``(get(dataset, "vae"), get(dataset, "classifier"))``. The
digits pair is committed under ``models/digits``; MNIST and Fashion-MNIST models are trained on first use (about a
minute each on 2 CPU cores) and cached under ``models/<dataset>`` (or ``$BAYESTREX_WEIGHTS``).
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

__all__ = ["VAE", "Decoder", "Encoder", "CNN", "MLP", "GAN", "train_vae", "train_classifier", "train_gan", "accuracy",
           "save", "load", "get", "pretrained", "train", "train_model", "recipe", "CheckpointError", "RECIPES",
           "SPLITS"]


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, untrusted (would need pickled code) or does not fit the architecture."""


def _mlp(sizes, act=nn.SiLU):
    """Linear layers of ``sizes`` with ``act`` between them (not after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(sizes) - 2 else [])
    return layers


class Encoder(nn.Module):
    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256, depth=2):
        super().__init__()
        n = math.prod(image_shape)
        self.net = nn.Sequential(nn.Flatten(), *_mlp([n] + [hidden] * depth + [2 * latent_dim]))

    def forward(self, x):
        """Posterior mean and log-variance ``[N, d]`` each."""
        return self.net(x).chunk(2, dim=-1)


class Decoder(nn.Module):
    """The generator: latent codes ``[N, latent_dim]`` to images ``[N, C, H, W]`` in (0, 1)."""

    def __init__(self, image_shape=(1, 8, 8), latent_dim=5, hidden=256, depth=2, act=nn.SiLU):
        super().__init__()
        self.latent_dim, self.image_shape = latent_dim, tuple(image_shape)
        self.net = nn.Sequential(*_mlp([latent_dim] + [hidden] * depth + [math.prod(image_shape)], act), nn.Sigmoid())

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
        self.net = nn.Sequential(nn.Flatten(), *_mlp([math.prod(image_shape)] + [hidden] * depth + [num_classes],
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


# -- training ----------------------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, g: torch.Generator):
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
        for idx in _batches(len(images), batch_size, g):
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
        for idx in _batches(len(images), batch_size, g):
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


_ARCHS = {"VAE": VAE, "CNN": CNN, "MLP": MLP, "GAN": GAN}


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
    model.meta = meta
    return model.eval()


# -- the model zoo: recipes, training on first use, cached weights -------------------------------------------------
#: per dataset, the hyperparameters of each kind of model (architecture and training, seed 0).
RECIPES = {
    "digits": dict(vae=dict(latent_dim=5, hidden=256, epochs=300, batch_size=128, lr=2e-3),
                   cnn=dict(epochs=40, batch_size=64, lr=2e-3),
                   gan=dict(latent_dim=5, hidden=256, epochs=600, batch_size=64, lr=2e-4)),
    "mnist": dict(vae=dict(latent_dim=5, hidden=400, depth=1, epochs=15, batch_size=128, lr=2e-3),
                  cnn=dict(arch=dict(pool_between=True), epochs=4, batch_size=128, lr=3e-3),
                  gan=dict(latent_dim=5, hidden=256, epochs=12, batch_size=128, lr=2e-4)),
}
RECIPES["fashion-mnist"] = RECIPES["mnist"]

#: novel-class extrapolation: (classifier's classes, generator's classes), as in Bayes-TrEx.
SPLITS = {"digits": ((0, 1, 3, 6, 9), (2, 4, 5, 7, 8)), "mnist": ((0, 1, 3, 6, 9), (2, 4, 5, 7, 8)),
          "fashion-mnist": ((2, 3, 5, 6, 9), (0, 1, 4, 7, 8))}

MODEL_NAMES = ("vae", "classifier", "gan", "vae-without-C (C = 0..9)", "classifier-split", "vae-split")


def recipe(dataset: str, name: str) -> dict:
    """What model ``name`` of ``dataset`` is: its kind (vae / cnn / gan), the classes it is trained on and its
    hyperparameters. Names: ``vae``, ``classifier``, ``gan`` (all classes); ``vae-without-C`` (every class but C,
    for in-distribution adversarial examples); ``classifier-split`` and ``vae-split`` (the disjoint class sets of
    :data:`SPLITS`, for novel-class extrapolation)."""
    if dataset not in RECIPES:
        raise ValueError(f"no training recipe for dataset {dataset!r}; expected one of {sorted(RECIPES)}")
    every = list(range(10))
    kinds = {"vae": ("vae", every), "classifier": ("cnn", every), "gan": ("gan", every),
             "classifier-split": ("cnn", list(SPLITS[dataset][0])), "vae-split": ("vae", list(SPLITS[dataset][1]))}
    kinds.update({f"vae-without-{c}": ("vae", [k for k in every if k != c]) for c in every})
    if name not in kinds:
        raise ValueError(f"unknown model {name!r} for {dataset}; expected one of {', '.join(MODEL_NAMES)}")
    kind, classes = kinds[name]
    return dict(kind=kind, classes=classes, seed=0, **RECIPES[dataset][kind])


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


def train_model(dataset: str, name: str, *, directory=None, data_root=None, progress=True) -> dict:
    """Train model ``name`` of ``dataset`` by its :func:`recipe`, write its weights, return its figures."""
    spec = recipe(dataset, name)
    hyper = {k: v for k, v in spec.items() if k not in ("kind", "classes")}
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    relabel = spec["kind"] == "cnn"
    x, y = data.subset(*data.load(dataset, "train", root=data_root), spec["classes"], relabel=relabel)
    xt, yt = data.subset(*data.load(dataset, "test", root=data_root), spec["classes"], relabel=relabel)
    t0 = time.perf_counter()
    if spec["kind"] == "vae":
        model = train_vae(x, progress=progress, **hyper)
    elif spec["kind"] == "gan":
        model = train_gan(x, progress=progress, **hyper)
    else:
        model = train_classifier(x, y, num_classes=len(spec["classes"]), progress=progress, **hyper)
    figures = dict(train_seconds=round(time.perf_counter() - t0, 1), train_examples=len(x))
    if spec["kind"] == "gan":
        judge = get(dataset, "classifier", directory=directory, data_root=data_root, progress=progress)
    with torch.no_grad():
        if spec["kind"] == "vae":
            mu, _ = model.encoder(xt)
            bce = nn.functional.binary_cross_entropy(model.decoder(mu), xt, reduction="sum").item()
            figures["test_reconstruction_bce"] = round(bce / len(xt), 2)
        elif spec["kind"] == "cnn":
            figures["test_accuracy"] = round(accuracy(model, xt, yt), 4)
        else:  # mode coverage: the share of each class among 10 000 samples, by the dataset's classifier
            z = torch.randn(10_000, model.latent_dim, generator=torch.Generator().manual_seed(0))
            share = torch.cat([judge(model.generator(b)).argmax(-1) for b in z.split(2000)]).bincount(minlength=10)
            figures["class_shares"] = [round(v, 3) for v in (share / 10_000).tolist()]
    save(model, weights_dir(directory) / dataset / f"{name}.pt", dataset=dataset, name=name,
         classes=spec["classes"], recipe=hyper, **figures)
    return figures


def get(dataset: str, name: str, *, directory=None, data_root=None, progress=True) -> nn.Module:
    """Model ``name`` of ``dataset`` (see :func:`recipe`), frozen and in eval mode; trained once and cached when
    its weights are missing. ``model.meta["classes"]`` lists the dataset classes it covers (a classifier's output
    ``k`` is class ``classes[k]``)."""
    recipe(dataset, name)  # validates the names
    path = weights_dir(directory) / dataset / f"{name}.pt"
    if not path.is_file():
        print(f"bayestrex: no weights for {dataset}/{name} in {path.parent}; training them once "
              f"(seconds on digits, about a minute or two on MNIST-sized data) ...", flush=True)
        figures = train_model(dataset, name, directory=directory, data_root=data_root, progress=progress)
        print(f"bayestrex: trained {dataset}/{name}: {figures}", flush=True)
    model = load(path)
    model.meta.setdefault("classes", list(range(10)))
    return model.requires_grad_(False)


def train(dataset: str = "digits", names=("vae", "classifier"), *, directory=None, data_root=None,
          progress=True) -> dict:
    """Train (or retrain) ``names`` of ``dataset``; returns ``{name: figures}``."""
    return {n: train_model(dataset, n, directory=directory, data_root=data_root, progress=progress) for n in names}


def pretrained(dataset: str = "digits", *, directory=None, data_root=None, progress=True):
    """``(vae, classifier)`` for ``dataset``, frozen and in eval mode; trains and caches them when missing.

    The generator for sampling is ``vae.decoder``; ``vae.encoder`` maps images to latent codes.
    """
    return tuple(get(dataset, n, directory=directory, data_root=data_root, progress=progress)
                 for n in ("vae", "classifier"))
