"""Reference models (a VAE, an MLP GAN, a small CNN), their training loops, safe weight files, and the model zoo;
``split`` cuts a classifier at a hidden layer, where a discrete VAE and an explanatory decoder are trained.

Weights are plain ``state_dict`` files read with ``torch.load(weights_only=True)`` (no pickled code runs) and
checked against the SHA-256 recorded in a JSON file beside them, with the architecture's arguments and the
training figures. ``get(dataset, name)`` loads a zoo model (see :func:`recipe` for the names), training and caching it
first when it is missing; ``pretrained(dataset)`` is ``(get(dataset, "vae"), get(dataset, "classifier"))``. The
digits pair is committed under ``models/digits``; MNIST and Fashion-MNIST models are trained on first use (about a
minute each on 2 CPU cores) and cached under ``models/<dataset>`` (or ``$BAYESTREX_WEIGHTS``).
"""

from .architectures import ARCHITECTURES, CNN, GAN, MLP, VAE, Decoder, DiscreteVAE, Encoder, Explainer
from .checkpoints import CheckpointError, load, save, sha256
from .split import activations, layers, split
from .training import (
    accuracy,
    discrete_vae_figures,
    train_classifier,
    train_discrete_vae,
    train_explainer,
    train_gan,
    train_vae,
)
from .zoo import MODEL_NAMES, RECIPES, SPLITS, get, pretrained, recipe, train, train_model, weights_dir

__all__ = ["VAE", "Decoder", "Encoder", "CNN", "MLP", "GAN", "DiscreteVAE", "Explainer", "ARCHITECTURES", "split",
           "layers", "activations", "train_vae", "train_classifier", "train_gan", "train_discrete_vae",
           "train_explainer", "discrete_vae_figures", "accuracy", "save", "load", "sha256", "get", "pretrained",
           "train", "train_model", "recipe", "weights_dir", "CheckpointError", "RECIPES", "SPLITS", "MODEL_NAMES"]
