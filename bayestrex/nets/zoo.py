"""The model zoo: per-dataset recipes, models trained once on first use, cached weights."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .. import data
from . import training
from .checkpoints import CheckpointError, load, save
from .split import activations, split
from .training import accuracy, train_classifier, train_gan, train_vae

__all__ = ["RECIPES", "SPLITS", "MODEL_NAMES", "recipe", "weights_dir", "train_model", "get", "train", "pretrained"]

#: per dataset, the hyperparameters of each kind of model (architecture and training, seed 0). ``dvae`` (discrete VAE)
#: and ``explainer`` (activations to images) are over the zoo classifier's hidden ``layer`` (see ``nets.split``).
RECIPES = {
    "digits": dict(vae=dict(latent_dim=5, hidden=256, epochs=300, batch_size=128, lr=2e-3),
                   cnn=dict(epochs=40, batch_size=64, lr=2e-3),
                   gan=dict(latent_dim=5, hidden=256, epochs=600, batch_size=64, lr=2e-4),
                   dvae=dict(layer=-2, num_latents=16, num_values=8, hidden=256, epochs=300, batch_size=128),
                   explainer=dict(layer=-2, hidden=256, epochs=300, batch_size=64)),
    "mnist": dict(vae=dict(latent_dim=5, hidden=400, depth=1, epochs=15, batch_size=128, lr=2e-3),
                  cnn=dict(arch=dict(pool_between=True), epochs=4, batch_size=128, lr=3e-3),
                  gan=dict(latent_dim=5, hidden=256, epochs=12, batch_size=128, lr=2e-4),
                  dvae=dict(layer=-2, num_latents=16, num_values=8, hidden=256, epochs=20, batch_size=256),
                  explainer=dict(layer=-2, hidden=400, epochs=15, batch_size=128)),
}
RECIPES["fashion-mnist"] = RECIPES["mnist"]

#: novel-class extrapolation: (classifier's classes, generator's classes), as in Bayes-TrEx.
SPLITS = {"digits": ((0, 1, 3, 6, 9), (2, 4, 5, 7, 8)), "mnist": ((0, 1, 3, 6, 9), (2, 4, 5, 7, 8)),
          "fashion-mnist": ((2, 3, 5, 6, 9), (0, 1, 4, 7, 8))}

MODEL_NAMES = ("vae", "classifier", "gan", "vae-without-C (C = 0..9)", "classifier-split", "vae-split", "dvae",
               "explainer")


def recipe(dataset: str, name: str) -> dict:
    """What model ``name`` of ``dataset`` is: its kind (vae / cnn / gan), the classes it is trained on and its
    hyperparameters. Names: ``vae``, ``classifier``, ``gan`` (all classes); ``vae-without-C`` (every class but C,
    for in-distribution adversarial examples); ``classifier-split`` and ``vae-split`` (the disjoint class sets of
    :data:`SPLITS`, for novel-class extrapolation); ``dvae`` and ``explainer`` (a discrete VAE over the
    classifier's hidden layer, and the decoder from that layer to images, for interventions)."""
    if dataset not in RECIPES:
        raise ValueError(f"no training recipe for dataset {dataset!r}; expected one of {sorted(RECIPES)}")
    every = list(range(10))
    kinds = {"vae": ("vae", every), "classifier": ("cnn", every), "gan": ("gan", every),
             "classifier-split": ("cnn", list(SPLITS[dataset][0])), "vae-split": ("vae", list(SPLITS[dataset][1])),
             "dvae": ("dvae", every), "explainer": ("explainer", every)}
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
    repo_models = Path(__file__).resolve().parents[2] / "models"
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
    if spec["kind"] in ("dvae", "explainer"):  # over the zoo classifier's hidden layer
        return _train_hidden(dataset, name, spec, hyper, (x, y, xt, yt), directory, data_root, progress)
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


def _train_hidden(dataset, name, spec, hyper, splits, directory, data_root, progress) -> dict:
    """Train a ``dvae`` or ``explainer`` recipe on the zoo classifier's activations at ``hyper["layer"]``."""
    x, y, xt, yt = splits
    clf = get(dataset, "classifier", directory=directory, data_root=data_root, progress=progress)
    layer = hyper.pop("layer")
    g, h = split(clf, layer)
    t0 = time.perf_counter()
    a, at = activations(g, x), activations(g, xt)
    if spec["kind"] == "dvae":
        model = training.train_discrete_vae(a, head=h, progress=progress, **hyper)
        figures = dict(train_seconds=round(time.perf_counter() - t0, 1), train_examples=len(x),
                       **{f"test_{k}": v for k, v in training.discrete_vae_figures(model, h, at, yt).items()})
    else:
        model = training.train_explainer(a, x, progress=progress, **hyper)
        with torch.no_grad():
            bce = nn.functional.binary_cross_entropy(model(at), xt, reduction="sum").item()
        figures = dict(train_seconds=round(time.perf_counter() - t0, 1), train_examples=len(x),
                       test_reconstruction_bce=round(bce / len(xt), 2))
    save(model, weights_dir(directory) / dataset / f"{name}.pt", dataset=dataset, name=name, classes=spec["classes"],
         recipe=dict(hyper, layer=layer), layer=layer, classifier_sha256=clf.meta["sha256"], **figures)
    return figures


def get(dataset: str, name: str, *, directory=None, data_root=None, progress=True) -> nn.Module:
    """Model ``name`` of ``dataset`` (see :func:`recipe`), frozen and in eval mode; trained once and cached when
    its weights are missing. ``model.meta["classes"]`` lists the dataset classes it covers (a classifier's output
    ``k`` is class ``classes[k]``)."""
    recipe(dataset, name)  # validates the names
    path = weights_dir(directory) / dataset / f"{name}.pt"
    if not path.is_file():
        spec = recipe(dataset, name)
        print(f"bayestrex: no weights {path}; training {dataset}/{name} once ({spec['kind']} on classes "
              f"{spec['classes']}, {spec.get('epochs')} epochs, seed 0) into {path.parent} (seconds on digits, about a "
              "minute or two on MNIST-sized data) ...", file=sys.stderr, flush=True)
        figures = train_model(dataset, name, directory=directory, data_root=data_root, progress=progress)
        print(f"bayestrex: trained {dataset}/{name}: {figures}", file=sys.stderr, flush=True)
    model = load(path)
    model.meta.setdefault("classes", list(range(10)))
    trained_on = model.meta.get("classifier_sha256")
    if trained_on is not None:  # a model over the classifier's hidden layer must match that classifier
        clf = get(dataset, "classifier", directory=directory, data_root=data_root, progress=progress)
        if clf.meta["sha256"] != trained_on:
            raise CheckpointError(f"{path} was trained on another {dataset} classifier than the one in "
                                  f"{path.parent}; delete it to retrain it on first use")
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
