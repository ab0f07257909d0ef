"""bayestrex: model transparency by example.

An explanation is a posterior over a generator's latent codes given a target statistic of a classifier's
probabilities: ``target -> posterior -> kernel -> draws -> Result (DataTree) -> plots / report / CLI``.
"""

from . import data, density, diagnostics, driver, io, kernels, nets, special, targets
from .blackbox import BlackBox
from .posterior import Posterior
from .result import Result, load
from .sampling import sample

__version__ = "0.1.0"
__all__ = ["sample", "load", "Result", "Posterior", "BlackBox", "targets", "density", "kernels", "driver", "data",
           "nets", "diagnostics", "io", "special", "plots"]


def __getattr__(name):  # plots pulls in matplotlib: import it on first use
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module 'bayestrex' has no attribute {name!r}")
