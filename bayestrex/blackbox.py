"""Black-box classifiers: any callable that returns class probabilities (a scikit-learn ``predict_proba``, a numpy
function, a remote model), made usable as a bayestrex classifier.

``BlackBox(predict_proba)`` takes the generator's torch batch, hands the callable a numpy array (of shape
``input_shape`` per row when given, e.g. flattened for tabular models), checks what comes back (``[N, K]``
non-negative rows summing to 1) and returns log-probabilities as logits. It has no gradients: sample it with a
gradient-free kernel (``kernel="slice"``); ``bayestrex.sample`` says so when a gradient kernel is asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["BlackBox"]


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
