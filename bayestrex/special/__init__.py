"""Special cases of the posterior: explanations of one data point ``x``.

- :func:`invert`: ``x`` to a code ``z0`` (a VAE's encoder, or CDeepEx's Algorithm 2: minimise ``||G(z) - x||²``),
  keeping the residual ``Δ = G(z0) - x`` so that :class:`Residual` ``G(z) - Δ`` decodes ``z0`` to exactly ``x``.
- :func:`xgems` (Joshi et al. 2018): the MAP path of the posterior of ``high:y`` under a prior centred at ``z0``,
  walked by gradient steps from ``z0`` until the label switches to ``y``; with the confidence manifold (a logistic
  fit of ``p_y`` against the distance walked).
- :func:`cdeepex` (Feghahati et al. 2020): the closest code to ``z0`` on the ``true``/``probe`` boundary where no
  third class wins, by the paper's augmented Lagrangian. It is the ``sigma -> 0`` limit of the posterior of the
  :class:`~bayestrex.targets.Boundary` target under the same proximity prior, whose MAP is :func:`posterior_map`.
- :func:`boundary_samples`: that posterior sampled, not optimised: boundary examples around ``z0``.

All of them work on a batch of N inputs at once (one prior centre per row) and share the posterior's code: the
statistics are the targets', the density is :class:`~bayestrex.posterior.Posterior`'s.
"""

from .boundary import boundary_samples, chain_images, posterior_map
from .cdeepex import CDeepExResult, al_update, cdeepex
from .inversion import Residual, invert
from .xgems import Path, XGEMsResult, fit_logistic, xgems

__all__ = ["Residual", "invert", "xgems", "cdeepex", "posterior_map", "boundary_samples", "fit_logistic", "Path",
           "XGEMsResult", "CDeepExResult", "al_update", "chain_images"]
