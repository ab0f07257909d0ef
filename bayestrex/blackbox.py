"""Black-box classifiers: any callable that returns class probabilities (a scikit-learn ``predict_proba``, a numpy
function, a remote model), made usable as a bayestrex classifier; and the black-box MAP search, :func:`evolve`.

``BlackBox(predict_proba)`` takes the generator's torch batch, hands the callable a numpy array (of shape
``input_shape`` per row when given, e.g. flattened for tabular models), checks what comes back (``[N, K]``
non-negative rows summing to 1) and returns log-probabilities as logits. It has no gradients: sample it with a
gradient-free kernel (``kernel="slice"``); ``bayestrex.sample`` says so when a gradient kernel is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["BlackBox", "evolve", "gradient_ascent", "SearchResult"]


class BlackBox:
    """Wrap ``predict_proba: array [N, ...] -> probabilities [N, K]`` as a (non-differentiable) classifier.

    Parameters
    ----------
    predict_proba : callable
        Takes a numpy array (float32 by default) and returns probabilities as a numpy array or tensor.
    input_shape : tuple, optional
        Reshape each row to this before the call (e.g. ``(-1,)`` to flatten images for a tabular model).
    dtype : numpy dtype of the array handed over (default float32).
    """

    differentiable = False

    def __init__(self, predict_proba: Callable, *, input_shape: tuple | None = None, dtype=np.float32):
        if not callable(predict_proba):
            raise TypeError(f"BlackBox needs a callable returning probabilities, got {type(predict_proba).__name__}")
        self.predict_proba, self.input_shape, self.dtype = predict_proba, input_shape, dtype
        self.calls = 0  #: rows evaluated so far (the black box's cost)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(self.dtype, copy=False)
        if self.input_shape is not None:
            arr = arr.reshape(len(arr), *self.input_shape)
        p = torch.as_tensor(np.asarray(self.predict_proba(arr)), dtype=x.dtype)
        self.calls += len(arr)
        if p.dim() != 2 or p.shape[0] != len(arr):
            raise ValueError(f"black-box predict_proba must return probabilities [N, K] for N = {len(arr)} inputs, "
                             f"got shape {tuple(p.shape)}")
        ok = torch.isfinite(p).all() and (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(len(p), dtype=p.dtype),
                                                                         atol=1e-3)
        if not ok:
            raise ValueError("black-box predict_proba must return probabilities (finite, non-negative rows summing "
                             "to 1); for a model that returns logits, pass it to bayestrex directly instead")
        return p.clamp_min(torch.finfo(p.dtype).tiny).log().to(x.device)


# -- the black-box MAP special case: exemplar search by an evolution strategy ---------------------------------------
@dataclass
class SearchResult:
    """What a search for an input the classifier is sure about found: the best code, its confidence, the cost."""

    z: torch.Tensor             #: [d] the best code
    confidence: float           #: its probability of the target class
    reached: bool               #: confidence >= stop_at
    forward_passes: int         #: inputs evaluated by the classifier (a gradient step counts 1 forward + 1 backward)
    iterations: int             #: generations (evolution) or steps (gradient ascent)
    history: list = field(default_factory=list)  #: (forward passes so far, best confidence) per iteration


def _confidence(generator, classifier, z, target):
    with torch.no_grad():
        return torch.softmax(classifier(generator(z)), dim=-1)


def evolve(generator, classifier, target: int, *, latent_dim: int | None = None, population: int = 50,
           survivors: int = 10, momentum: float = 0.3, noise: float = 0.5, stop_at: float = 0.95,
           max_generations: int = 1000, seed: int = 0) -> SearchResult:
    """Barbalau et al. (2020)'s evolution strategy for exemplars of ``target`` (no gradients needed).

    A population of codes drawn from N(0, I) is scored by the squared error between the classifier's probabilities
    and the one-hot target; the ``survivors`` best are kept, and each child is ``z + v`` with
    ``v = momentum · v_parent + (1 - momentum) · ε``, ``ε ~ N(0, noise² I)``; it stops when the best confidence
    reaches ``stop_at``. This is the MAP search of the ``high:target`` posterior for a black box."""
    d = latent_dim or getattr(generator, "latent_dim", None)
    if not d:
        raise ValueError("latent_dim is required: pass latent_dim=... or give the generator a latent_dim attribute")
    if not 1 <= survivors < population:
        raise ValueError(f"survivors must be in [1, population), got {survivors} of {population}")
    if not 0 <= momentum < 1 or not noise > 0 or not 0 < stop_at <= 1:
        raise ValueError("expected 0 <= momentum < 1, noise > 0 and 0 < stop_at <= 1, got "
                         f"momentum={momentum}, noise={noise}, stop_at={stop_at}")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(population, d, generator=g)
    v = torch.zeros_like(z)
    probs = _confidence(generator, classifier, z, target)
    passes, history = population, []
    one_hot = torch.nn.functional.one_hot(torch.tensor(target), probs.shape[-1]).to(probs.dtype)
    for gen in range(max_generations + 1):
        fitness = (probs - one_hot).square().sum(-1)
        order = fitness.argsort()
        best = int(order[0])
        history.append((passes, float(probs[best, target])))
        if probs[best, target] >= stop_at or gen == max_generations:
            return SearchResult(z[best].clone(), float(probs[best, target]), bool(probs[best, target] >= stop_at),
                                passes, gen, history)
        keep = order[:survivors]
        parents = keep[torch.randint(survivors, (population - survivors,), generator=g)]
        eps = torch.randn(population - survivors, d, generator=g) * noise
        child_v = momentum * v[parents] + (1 - momentum) * eps
        children = z[parents] + child_v
        child_p = _confidence(generator, classifier, children, target)
        passes += len(children)
        z, v = torch.cat([z[keep], children]), torch.cat([v[keep], child_v])
        probs = torch.cat([probs[keep], child_p])


def gradient_ascent(generator, classifier, target: int, *, latent_dim: int | None = None, lr: float = 0.05,
                    stop_at: float = 0.95, max_steps: int = 1000, prior_weight: float = 0.0,
                    seed: int = 0) -> SearchResult:
    """The same search with gradients: Adam on ``-log p_target(z)`` (plus ``prior_weight · ||z||²/2``) from one
    N(0, I) draw, one input per step; for comparing costs with :func:`evolve` on a differentiable model."""
    d = latent_dim or getattr(generator, "latent_dim", None)
    if not d:
        raise ValueError("latent_dim is required: pass latent_dim=... or give the generator a latent_dim attribute")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, d, generator=g).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    history = []
    for step in range(max_steps + 1):
        with torch.enable_grad():
            logp = torch.log_softmax(classifier(generator(z)), dim=-1)[0, target]
            conf = float(logp.detach().exp())
            history.append((step + 1, conf))
            if conf >= stop_at or step == max_steps:
                return SearchResult(z.detach()[0].clone(), conf, conf >= stop_at, step + 1, step, history)
            loss = -logp + prior_weight * 0.5 * z.square().sum()
            opt.zero_grad()
            loss.backward()
        opt.step()
