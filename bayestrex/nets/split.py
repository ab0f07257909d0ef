"""Split a classifier ``f = h ∘ g`` at a hidden layer: ``g`` maps inputs to the layer's activations, ``h`` maps
those to logits. Works on an ``nn.Sequential`` and on any module whose whole forward is an ``nn.Sequential`` held in
its ``net`` attribute (the zoo's :class:`~bayestrex.nets.CNN` and :class:`~bayestrex.nets.MLP`)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["split", "layers", "activations"]


def _sequential(classifier) -> tuple[nn.Sequential, str]:
    """The ``nn.Sequential`` that is ``classifier``'s forward, and the prefix of its layer names."""
    if isinstance(classifier, nn.Sequential):
        return classifier, ""
    net = getattr(classifier, "net", None)
    if isinstance(classifier, nn.Module) and isinstance(net, nn.Sequential):
        return net, "net."
    raise ValueError(f"classifier must be an nn.Sequential or a module whose forward is the nn.Sequential in its "
                     f"`net` attribute (the zoo's CNN and MLP); got {type(classifier).__name__}. Wrap other models "
                     "as nn.Sequential(...) of their layers to split them")


def layers(classifier) -> list[str]:
    """The layers ``classifier`` can be split after, as ``"INDEX: NAME (Type)"`` strings, in order."""
    seq, prefix = _sequential(classifier)
    return [f"{i}: {prefix}{name} ({type(m).__name__})" for i, (name, m) in enumerate(seq.named_children())]


def _index(seq: nn.Sequential, prefix: str, layer) -> int:
    names = [name for name, _ in seq.named_children()]
    n = len(names)
    if isinstance(layer, bool) or not isinstance(layer, (int, str)):
        raise ValueError(f"layer must be a layer index or name, got {layer!r}")
    if isinstance(layer, int):
        if not -n <= layer < n:
            raise ValueError(f"layer index {layer} is out of range for a classifier of {n} layers ([{-n}, {n - 1}])")
        i = layer % n
    else:
        name = layer[len(prefix):] if prefix and layer.startswith(prefix) else layer
        if name not in names:
            raise ValueError(f"layer {layer!r} is not a layer of the classifier; its layers are "
                             f"{', '.join(prefix + m for m in names)}")
        i = names.index(name)
    if i == n - 1:
        raise ValueError(f"layer {layer!r} is the classifier's last layer: split at an earlier one so that h keeps "
                         "at least one layer")
    return i


def split(classifier: nn.Module, layer: int | str, *, example: torch.Tensor | None = None
          ) -> tuple[nn.Sequential, nn.Sequential]:
    """``(g, h)`` with ``classifier(x) == h(g(x))``: ``g`` ends with ``layer`` and ``h`` holds the layers after it.

    Parameters
    ----------
    classifier : nn.Module
        An ``nn.Sequential``, or a module whose forward is its ``net`` (the zoo's CNN and MLP).
    layer : int or str
        Where to split: a layer index (negative counts from the end; ``-2`` is the last hidden layer of the zoo's
        CNN and MLP, the ReLU before the output layer) or a layer name (``"8"`` or ``"net.8"``). See :func:`layers`.
    example : tensor, optional
        A batch of inputs ``[N, ...]`` on which ``h(g(x))`` is checked against ``classifier(x)`` (by default two
        seeded uniform inputs of ``classifier.config["image_shape"]`` when the classifier has one).

    ``g`` and ``h`` are views (``nn.Sequential`` slices): they share the classifier's parameters. Raises
    ``ValueError`` for a model that is not Sequential-like, an unknown layer, or a split that does not reproduce
    the classifier.
    """
    seq, prefix = _sequential(classifier)
    i = _index(seq, prefix, layer)
    g, h = seq[: i + 1], seq[i + 1:]
    shape = getattr(classifier, "config", {}).get("image_shape") if example is None else None
    if example is None and shape is not None:
        p = next(classifier.parameters(), torch.zeros(()))
        example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    if example is not None:
        with torch.no_grad():
            whole, parts = classifier(example), h(g(example))
        if whole.shape != parts.shape or not torch.allclose(whole, parts, atol=1e-5, rtol=1e-4):
            raise ValueError(f"h(g(x)) differs from classifier(x) for a {type(classifier).__name__}: its forward is "
                             "not just its layers in order, so it cannot be split at a layer")
    return g, h


@torch.no_grad()
def activations(g, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``g(images)`` in batches, without gradients: ``[N, ...]`` hidden activations of ``images [N, ...]``."""
    return torch.cat([g(x) for x in images.split(batch_size)])
