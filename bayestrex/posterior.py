"""The posterior over latent codes: the one place the likelihood is written.

    p(z | u*) ∝ N(z; μ0, s0² I) · Π_j N(u*_j; u_j(softmax(f(G(z)))), σ²)

``Posterior`` is a :class:`~bayestrex.density.LogDensity`: ``terms(z)`` evaluates prior, likelihood and the class
probabilities and statistics of a batch of codes ``z [C, d]`` in one forward pass (normalising constants included),
and the kernels use it through that contract. ``Posterior.pyro_model`` is the same density written as a Pyro model,
for anyone who wants to extend it in Pyro.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import torch

from .density import LOG_SQRT_2PI, GaussianPrior, LogDensity
from .targets import Target, parse

__all__ = ["Posterior"]


def _module_device(f, name: str) -> torch.device | None:
    if not isinstance(f, torch.nn.Module):
        return None
    devices = {t.device for t in (*f.parameters(), *f.buffers())}
    if len(devices) > 1:
        raise ValueError(f"{name} has tensors on several devices {sorted(map(str, devices))}; move it to one")
    return devices.pop() if devices else None


def _module_dtype(f) -> torch.dtype | None:
    if isinstance(f, torch.nn.Module):
        for t in f.parameters():
            if t.is_floating_point():
                return t.dtype
    return None


class Posterior(LogDensity):
    """Posterior over latent codes ``z`` of ``generator`` given a classifier ``target``.

    Parameters
    ----------
    generator : callable
        Maps a float tensor ``[N, latent_dim]`` to a batch ``[N, ...]`` (an ``nn.Module`` or a function).
    classifier : callable
        Maps that batch to logits ``[N, K]``. Probabilities are refused (see ``check_logits``).
    target : Target or str
        What to pin, e.g. ``"ambiguous:3,8"`` (see :mod:`bayestrex.targets`).
    latent_dim : int, optional
        Taken from ``generator.latent_dim`` when not given.
    sigma : float
        Standard deviation of the Gaussian relaxation of the level set (Bayes-TrEx uses 0.05). ``0`` is the level set
        itself: only kernels on the level set (``constrained``) can sample it; its ``log_density`` is then -inf.
    prior_loc, prior_scale : tensor or float
        Mean and standard deviation of the Gaussian prior over ``z`` (default N(0, I)). ``prior_loc`` may be
        ``[num_chains, latent_dim]``: one centre per chain (a proximity prior around N data points' codes).
    prior : object, optional
        Any other prior (e.g. over a structured scene): ``latent_dim``, ``log_prob(z) -> [N]`` and
        ``sample(n, generator) -> [n, latent_dim]``. Replaces the Gaussian; sample it with ``kernel="mh"``.
    device : str or torch.device, optional
        Where to evaluate; defaults to the device of the generator's parameters, else CPU.
    check_logits : bool
        Raise when the classifier's outputs look like probabilities (non-negative rows summing to 1).
    """

    def __init__(self, generator, classifier, target: Target | str, *, latent_dim: int | None = None,
                 sigma: float = 0.05, prior_loc=0.0, prior_scale=1.0, prior=None, device=None,
                 check_logits: bool = True):
        if not callable(generator):
            raise TypeError(f"generator must be callable (an nn.Module or a function), got {type(generator).__name__}")
        if not callable(classifier):
            raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
        try:
            sigma = float(sigma)
        except (TypeError, ValueError):
            raise TypeError(f"sigma must be a positive number, got {sigma!r}") from None
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number (or 0: the exact level set, for the kernels "
                             f"that allow it), got {sigma}")
        if prior is not None:
            for attr in ("log_prob", "sample"):
                if not callable(getattr(prior, attr, None)):
                    raise TypeError(f"prior must have log_prob(z) and sample(n, generator) methods; "
                                    f"{type(prior).__name__} has no {attr}()")
            latent_dim = latent_dim or getattr(prior, "latent_dim", None)
        if latent_dim is None:
            latent_dim = getattr(generator, "latent_dim", None)
            if latent_dim is None:
                raise ValueError("latent_dim is required: pass latent_dim=... or give the generator a "
                                 "latent_dim attribute")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")

        self.generator, self.classifier, self.target = generator, classifier, parse(target)
        self.latent_dim, self.sigma = latent_dim, sigma
        self.device = self._resolve_device(device)
        self.dtype = _module_dtype(generator) or torch.float32
        loc = torch.as_tensor(prior_loc, dtype=self.dtype, device=self.device)
        if loc.dim() == 2:  # one prior centre per chain (e.g. xGEMs / CDeepEx from N data points at once)
            if loc.shape[1] != latent_dim:
                raise ValueError(f"prior_loc must have shape [latent_dim] or [num_chains, latent_dim] with "
                                 f"latent_dim = {latent_dim}, got {tuple(loc.shape)}")
            self.prior_loc = loc.clone()
        else:
            self.prior_loc = loc.expand(latent_dim).clone()
        self.prior_scale = torch.as_tensor(prior_scale, dtype=self.dtype, device=self.device).expand(latent_dim).clone()
        if not (self.prior_scale > 0).all():
            raise ValueError("prior_scale must be positive")
        #: the prior the kernels see: the Gaussian, or the user's prior object
        self.prior = prior if prior is not None else GaussianPrior(self.prior_loc, self.prior_scale)
        logits = self._probe(check_logits)
        self.num_classes = logits.shape[1]
        self.target.validate(self.num_classes)
        self.value = self.target.value(self.num_classes).to(device=self.device, dtype=self.dtype)
        self.names = self.target.names(self.num_classes)
        self._check_sigma(torch.softmax(logits, dim=-1))

    # -- set-up checks -----------------------------------------------------------------------------------------
    def _resolve_device(self, device) -> torch.device:
        gen, clf = _module_device(self.generator, "generator"), _module_device(self.classifier, "classifier")
        if gen is not None and clf is not None and gen != clf:
            raise ValueError(f"device mismatch: generator is on {gen} but classifier is on {clf}; "
                             "move both to one device")
        found = gen or clf
        if device is None:
            return found or torch.device("cpu")
        device = torch.device(device)
        if found is not None and (found.type != device.type or device.index not in (None, found.index)):
            which = "generator" if gen is not None else "classifier"
            raise ValueError(f"device mismatch: device={str(device)!r} but the {which}'s parameters are on {found}; "
                             f"move the models with .to({str(device)!r}) or pass device={str(found)!r}")
        return found or device

    def _probe(self, check_logits: bool) -> torch.Tensor:
        """Check the models on a few prior draws; returns their logits ``[n, K]``."""
        g = torch.Generator().manual_seed(0)
        n = len(self.prior_loc) if self.per_chain else 4
        z = self.prior_draws(n, g)
        try:
            with torch.no_grad():
                x = self._probe_generator(z)
                if not isinstance(x, torch.Tensor):
                    raise TypeError(f"generator must return a tensor, got {type(x).__name__}")
                if not torch.isfinite(x).all():
                    raise ValueError("generator returned NaN or inf for latent codes drawn from the prior; "
                                     "check the generator (a code z should decode to finite values)")
                logits = self._probe_classifier(x)
        except RuntimeError as e:
            if "device" in str(e):
                raise ValueError(f"device mismatch while evaluating generator and classifier on {self.device}: "
                                 f"{e}") from e
            raise
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != z.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"classifier must return logits of shape [N, K] for a batch of N inputs, got {shape}")
        if not torch.isfinite(logits).all():
            raise ValueError("classifier returned NaN or inf logits for generated inputs")
        if check_logits and (logits >= 0).all() and torch.allclose(logits.sum(-1), torch.ones(len(logits),
                                                                                          dtype=logits.dtype,
                                                                                          device=logits.device),
                                                                   atol=1e-4):
            raise ValueError("classifier appears to return probabilities (non-negative rows summing to 1), "
                             "but logits are expected; return logits, or wrap it as "
                             "lambda x: torch.log(classifier(x)), or pass check_logits=False if you are sure")
        if check_logits and ((logits >= 0) & (logits <= 1)).all():
            warnings.warn("the classifier's outputs all lie in [0, 1] but its rows do not sum to 1: they look like "
                          "per-class sigmoid scores, not logits; softmax of such scores is nearly uniform and targets "
                          "are hardly ever attained; return logits (or log-probabilities) instead", stacklevel=3)
        self.differentiable = self._has_gradients(z)
        return logits

    def _probe_generator(self, z: torch.Tensor) -> torch.Tensor:
        """``generator(z)``; a shape error (the generator takes another latent size) names ``latent_dim``, a dtype
        error (a function wrapping a model of another dtype) says how the codes' dtype is chosen."""
        try:
            return self.generator(z)
        except RuntimeError as e:
            if "dtype" in str(e) or "type (" in str(e):
                raise ValueError(f"dtype mismatch: the generator failed on {z.dtype} latent codes ({e}); the codes "
                                 "take the dtype of the generator's parameters when it is an nn.Module (else float32): "
                                 "pass the module itself, or convert its parameters to float32") from None
            if "shape" not in str(e) and "size" not in str(e):
                raise
            raise ValueError(f"latent_dim={self.latent_dim} does not fit the generator: it failed on a batch of shape "
                             f"{list(z.shape)} ({e}); pass the latent_dim the generator takes") from None

    def _probe_classifier(self, x: torch.Tensor) -> torch.Tensor:
        """``classifier(x)``; a dtype clash between the generator's output and the classifier's parameters (e.g. a
        float64 generator with a float32 classifier) is refused, naming both and the fix."""
        try:
            return self.classifier(x)
        except RuntimeError as e:
            want = _module_dtype(self.classifier)
            if want is not None and want != x.dtype and "type" in str(e):
                raise ValueError(f"dtype mismatch: the generator returns {x.dtype} but the classifier's parameters "
                                 f"are {want}; convert one of the models, e.g. classifier.to({x.dtype}) or "
                                 f"generator.to({want})") from None
            if "dtype" in str(e) or "type (" in str(e):  # a function around a model: its parameters are hidden
                raise ValueError(f"dtype mismatch: the classifier failed on the generator's {x.dtype} outputs ({e}); "
                                 "convert one of the models so that both use one dtype") from None
            raise

    def _check_sigma(self, probs: torch.Tensor) -> None:
        """Refuse a ``sigma`` so small that the likelihood's ``((u - u*) / sigma)²`` or its gradient
        ``(u - u*) / sigma²`` overflows the models' dtype for the probe's codes (drawn from the prior)."""
        if self.sigma == 0:
            return
        r = (self.target.statistic(probs) - self.value).abs()
        r = r[torch.isfinite(r)]
        big, top = (float(r.max()) if r.numel() else 0.0), torch.finfo(r.dtype).max
        # x10: headroom for the sum over statistics and the chain rule through the networks
        smallest = 10 * max(math.sqrt(big / top), big / math.sqrt(top))
        if self.sigma < smallest:
            shown = float(f"{smallest * 1.05:.1e}")  # two digits, rounded up: `shown` itself passes
            raise ValueError(f"sigma={self.sigma:g} is too small to evaluate in {r.dtype}: for codes drawn from the "
                             f"prior, |u - u*| reaches {big:.3g} and ((u - u*) / sigma)² or its gradient overflows; "
                             f"the smallest usable sigma for this target and these models is {shown:.2g}")

    def _has_gradients(self, z: torch.Tensor) -> bool:
        """Whether the log density has gradients in ``z`` (False for black boxes: numpy models, renderers)."""
        z = z.detach().requires_grad_(True)
        try:
            with torch.enable_grad():
                out = self.classifier(self.generator(z))
        except RuntimeError:  # e.g. "Can't call numpy() on Tensor that requires grad"
            return False
        return isinstance(out, torch.Tensor) and out.requires_grad

    # -- the density ------------------------------------------------------------------------------------------
    def probs(self, z: torch.Tensor) -> torch.Tensor:
        """Classifier probabilities ``[C, K]`` of the decoded codes ``z [C, d]``."""
        return torch.softmax(self.classifier(self.generator(z)), dim=-1)

    def statistics(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs [C, K], u [C, m])`` for codes ``z [C, d]``."""
        logits = self.classifier(self.generator(z))
        p = torch.softmax(logits, dim=-1)
        if self.target.uses_log_probs:  # log p from log_softmax: finite gradients where p underflows
            return p, self.target.statistic(p, log_probs=torch.log_softmax(logits, dim=-1))
        return p, self.target.statistic(p)

    @property
    def gaussian(self) -> bool:
        """Whether the prior is the Gaussian ``N(prior_loc, prior_scale²)`` (not a user prior object)."""
        return isinstance(self.prior, GaussianPrior)

    def prior_draws(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """``[n, d]`` draws from the prior (``rng`` a CPU ``torch.Generator``), on the models' device."""
        if not self.gaussian:
            return torch.as_tensor(self.prior.sample(n, rng)).to(self.device, self.dtype)
        z = torch.randn(n, self.latent_dim, generator=rng).to(self.device, self.dtype)
        return z * self.prior_scale + self.prior_loc

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """``[C]`` log prior density of ``z [C, d]``."""
        return self.prior.log_prob(z)

    def log_likelihood(self, u: torch.Tensor) -> torch.Tensor:
        """``[C]`` log likelihood ``Σ_j log N(u*_j; u_j, σ²)`` of statistics ``u [C, m]``."""
        if self.sigma == 0:  # the level set itself: no density with respect to Lebesgue measure
            return torch.full(u.shape[:-1], -math.inf, dtype=u.dtype, device=u.device)
        w = (u - self.value) / self.sigma
        return (-0.5 * w.square() - math.log(self.sigma) - LOG_SQRT_2PI).sum(-1)

    @property
    def smooth(self) -> bool:
        """Whether the target's statistics are differentiable on the level set (see ``Target.smooth``)."""
        return bool(getattr(self.target, "smooth", True))

    @property
    def saturating(self) -> list[int]:
        """Indices of the statistics whose target value the softmax only approaches (see ``Target.saturating``)."""
        return list(self.target.saturating(self.num_classes))

    def residual(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``(u(z) - u* [C, m], {"probs", "u"})``: how far each code's statistics are from the target (differentiable;
        the likelihood is ``N(residual; 0, sigma²)``). Kernels on the level set use it."""
        p, u = self.statistics(z)
        return u - self.value, {"probs": p, "u": u}

    def terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(log prior [C], log likelihood [C], {"probs": [C, K], "u": [C, m]})`` of ``z [C, d]``, one forward
        pass, differentiable. ``log_density(z)`` (their sum; non-finite values become ``-inf``),
        ``potential_and_grad(z)`` and ``evaluate(z)`` come from :class:`~bayestrex.density.LogDensity`."""
        p, u = self.statistics(z)
        return self.log_prior(z), self.log_likelihood(u), {"probs": p, "u": u}

    def pyro_model(self, num_chains: int = 1):
        """The same posterior as a Pyro model over a site ``z`` of shape ``[num_chains, d]``.

        The chains are a ``pyro.plate``; the target values are observed at site ``u``.
        """

        if not self.gaussian:
            raise ValueError("the Pyro kernels need the Gaussian prior; a custom prior is sampled with kernel='mh'")

        def model():
            with pyro.plate("chains", num_chains):
                z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
                _, u = self.statistics(z)
                pyro.sample("u", dist.Normal(u, self.sigma).to_event(1), obs=self.value.expand_as(u))
            return z

        return model
