"""bayestrex: model transparency by example.

An explanation is a posterior over a generator's latent codes given a target statistic of a classifier's
probabilities: ``target -> posterior -> kernel -> draws -> Result (DataTree) -> plots / report / CLI``.
"""

from . import data, density, diagnostics, driver, io, kernels, nets, special, targets
from .blackbox import BlackBox
from .posterior import Posterior
from .result import Result, load
from .sampling import sample
from .sweeps import Sweep, sweep

__version__ = "0.1.0"
__all__ = ["sample", "load", "Result", "Posterior", "BlackBox", "targets", "density", "kernels", "driver", "data",
           "nets", "diagnostics", "io", "special", "plots", "report", "sweep", "Sweep", "sweeps"]


def __getattr__(name):  # plots and report pull in matplotlib: import them on first use
    if name in ("plots", "report"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'bayestrex' has no attribute {name!r}")
