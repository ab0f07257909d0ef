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

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .posterior import Posterior
from .targets import Boundary, High

__all__ = ["Residual", "invert", "xgems", "cdeepex", "posterior_map", "boundary_samples", "fit_logistic", "Path",
           "CDeepExResult", "al_update", "chain_images"]


class Residual(nn.Module):
    """``G(z) - Δ``: the generator shifted so that the data point's code decodes to exactly the data point.

    ``delta`` is ``[N, ...]`` (row ``i`` for code row ``i``) or ``[1, ...]`` (one input, many chains)."""

    def __init__(self, generator, delta: torch.Tensor):
        super().__init__()
        self.generator = generator
        self.register_buffer("delta", delta.detach())
        self.latent_dim = generator.latent_dim

    def forward(self, z):
        if len(self.delta) not in (1, len(z)):
            raise ValueError(f"Residual: {len(z)} codes but {len(self.delta)} residuals; expected one residual per "
                             "code row, or one for all")
        return self.generator(z) - self.delta


def _check_images(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name} must be a batch of inputs [N, ...], got {type(x).__name__}"
                         f"{'' if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def invert(generator, x: torch.Tensor, *, encoder=None, steps: int = 500, lr: float = 0.05, restarts: int = 4,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``z0 [N, d]`` of inputs ``x [N, ...]`` and residuals ``Δ = G(z0) - x``.

    With ``encoder`` (a VAE's, returning ``(mean, logvar)``) ``z0`` is the encoder mean; otherwise ``z0`` minimises
    ``||G(z) - x||²`` by Adam from ``restarts`` prior draws per input (CDeepEx's Algorithm 2), keeping the best.
    """
    x = _check_images(x)
    d = generator.latent_dim
    with torch.no_grad():
        if encoder is not None:
            z0 = encoder(x)[0]
        else:
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(restarts, len(x), d, generator=g).to(x).reshape(-1, d).requires_grad_(True)
            target = x.repeat(restarts, *([1] * (x.dim() - 1)))
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                with torch.enable_grad():
                    loss = (generator(z) - target).square().flatten(1).sum(1)
                    opt.zero_grad()
                    loss.sum().backward()
                opt.step()
            err = (generator(z) - target).square().flatten(1).sum(1).view(restarts, len(x))
            z0 = z.detach().view(restarts, len(x), d)[err.argmin(0), torch.arange(len(x))]
        delta = generator(z0) - x
    return z0.detach(), delta.detach()


@dataclass
class Path:
    """A latent walk of N rows: ``z [T, N, d]``, ``probs [T, N, K]``, ``distance [T, N]`` (``||z_t - z0||``) and,
    per row, ``length [N]`` (steps recorded, the rest repeat the last) and ``switch [N]`` (first step whose predicted
    class is the target, -1 if never)."""

    z: torch.Tensor
    probs: torch.Tensor
    distance: torch.Tensor
    length: torch.Tensor
    switch: torch.Tensor

    def at(self, step: torch.Tensor) -> torch.Tensor:
        """Codes ``[N, d]`` at per-row steps ``step [N]`` (clamped to the recorded range)."""
        idx = step.clamp(0, self.z.shape[0] - 1)
        return self.z[idx, torch.arange(self.z.shape[1])]


@dataclass
class XGEMsResult:
    z0: torch.Tensor        # [N, d] codes of the inputs
    delta: torch.Tensor     # [N, ...] residuals G(z0) - x
    target: int             # the class walked toward
    path: Path
    z: torch.Tensor         # [N, d] the xGEMs: codes at the switch (the last code when there was none)
    probs: torch.Tensor     # [N, K] their probabilities
    switched: torch.Tensor  # [N] bool
    steepness: torch.Tensor  # [N] logistic fit of p_target against distance
    midpoint: torch.Tensor   # [N]

    def images(self, generator) -> torch.Tensor:
        """The xGEMs as inputs (residual added back)."""
        with torch.no_grad():
            return Residual(generator, self.delta)(self.z)


def _descend(post: Posterior, z0: torch.Tensor, *, steps: int, lr: float, stop=None, normalized: bool = False):
    """Descend the posterior's potential from ``z0 [N, d]``, each row frozen once ``stop(probs) [N]`` holds.

    ``normalized=True`` takes steps of length ``lr`` along the steepest-descent direction (a path with even arc
    length, for walks); otherwise Adam (for modes). Returns ``(z [T, N, d], probs [T, N, K], length [N])``, step 0
    being ``z0`` and ``length`` the number of steps each row moved."""
    z = z0.clone()
    opt_z = z.clone().requires_grad_(True)
    opt = None if normalized else torch.optim.Adam([opt_z], lr=lr)
    active = torch.ones(len(z), dtype=torch.bool, device=z.device)
    zs, ps = [z0.clone()], [post.probs(z0).detach()]
    length = torch.zeros(len(z), dtype=torch.long)
    for t in range(steps):
        if stop is not None:
            active &= ~stop(ps[-1])
        if not active.any():
            break
        _, grad = post.potential_and_grad(z)
        active &= torch.isfinite(grad).all(-1)  # a row whose density turns NaN/inf stops where it is
        if not active.any():
            break
        grad = torch.where(active[:, None], grad, torch.zeros_like(grad))
        if normalized:
            z = z - lr * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            opt_z.grad = grad
            opt.step()
            with torch.no_grad():
                opt_z.data = torch.where(active[:, None], opt_z.data, z)  # frozen rows stay where they stopped
            z = opt_z.detach().clone()
        length[active.cpu()] = t + 1
        zs.append(z.clone())
        ps.append(post.probs(z).detach())
    return torch.stack(zs), torch.stack(ps), length


def fit_logistic(distance: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None = None, *, steps: int = 500):
    """Least-squares fit of ``p ≈ 1 / (1 + exp(-k (d - d0)))`` per column of ``distance``/``p`` ``[T, N]``
    (rows where ``mask`` is False are ignored): ``(steepness k [N], midpoint d0 [N])``."""
    mask = torch.ones_like(p, dtype=torch.bool) if mask is None else mask
    d, p = distance.detach().double(), p.detach().double()
    w = mask.double()
    # start: midpoint where p crosses 0.5 (else the end), steepness from the span
    span = (d * w).amax(0).clamp_min(1e-6)
    cross = torch.where((p >= 0.5) & mask, d, torch.full_like(d, float("inf"))).amin(0)
    d0 = torch.where(torch.isfinite(cross), cross, span).clone().requires_grad_(True)
    log_k = (torch.log(8.0 / span)).clone().requires_grad_(True)
    opt = torch.optim.Adam([d0, log_k], lr=0.05)
    for _ in range(steps):
        pred = torch.sigmoid(log_k.exp() * (d - d0))
        loss = ((pred - p).square() * w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return log_k.detach().exp().float(), d0.detach().float()


def xgems(generator, classifier, x: torch.Tensor, target: int, *, encoder=None, z0=None, delta=None,
          prior_scale: float = 1.0, sigma: float = 0.05, step: float = 0.02, max_steps: int = 500,
          until: float = 0.95) -> XGEMsResult:
    """xGEMs of inputs ``x [N, ...]`` toward class ``target``.

    The walk descends the potential of the posterior ``N(z; z0, prior_scale²) · N(0; log p_target, sigma²)`` (the
    ``high:target,log`` posterior with a prior centred at the input's code: xGEMs' ``loss_x + λ loss_f`` with the
    data term measured in latent space, the classifier term on the log scale, which does not saturate where
    ``p_target`` is tiny, and ``λ = prior_scale² / sigma²``), in steps of length ``step`` along its steepest
    descent from ``z0``. The xGEM is the first
    code whose predicted class is ``target``; the path goes on until ``p_target >= until`` (or ``max_steps``) so that
    the confidence manifold (logistic fit of ``p_target`` against ``||z - z0||``) sees both sides of the switch.
    """
    x = _check_images(x)
    if z0 is None:
        z0, delta = invert(generator, x, encoder=encoder)
    elif delta is None:
        raise ValueError("delta is required with z0 (the residual G(z0) - x from invert)")
    gen = Residual(generator, delta)
    post = Posterior(gen, classifier, High(target, log=True), sigma=sigma, prior_loc=z0, prior_scale=prior_scale)
    z_path, p_path, length = _descend(post, z0, steps=max_steps, lr=step, stop=lambda p: p[:, target] >= until,
                                      normalized=True)
    dist = (z_path - z0).norm(dim=-1)
    is_target = p_path.argmax(-1) == target
    steps = torch.arange(len(z_path))[:, None]
    valid = steps <= length[None, :]
    switch = torch.where((is_target & valid).any(0), (is_target & valid).float().argmax(0), torch.tensor(-1))
    path = Path(z_path, p_path, dist, length, switch)
    pick = torch.where(switch >= 0, switch, length)
    k, d0 = fit_logistic(dist, p_path[..., target], valid)
    return XGEMsResult(z0, delta, int(target), path, path.at(pick), p_path[pick, torch.arange(len(x))],
                       switch >= 0, k, d0)


def al_update(h, g, h_prev, lam, mu, c, *, beta: float = 1.01, gamma: float = 0.24):
    """One outer update of the augmented Lagrangian for ``h = 0``, ``g <= 0`` (Bertsekas 1982; CDeepEx eq. 3-4):
    ``λ ← λ + c h``, ``μ ← max(0, μ + c g)``, and ``c ← β c`` where ``|h| > γ |h_prev|`` (per row)."""
    lam = lam + c * h
    mu = (mu + c[:, None] * g).clamp_min(0)
    c = torch.where(h.abs() > gamma * h_prev.abs(), c * beta, c)
    return lam, mu, c


@dataclass
class CDeepExResult:
    z0: torch.Tensor       # [N, d]
    delta: torch.Tensor    # [N, ...]
    true: int
    probe: int
    z: torch.Tensor        # [N, d] the boundary codes z_e
    probs: torch.Tensor    # [N, K]
    path: torch.Tensor     # [outer + 1, N, d] the outer iterates
    h: torch.Tensor        # [outer + 1, N] llh(true) - llh(probe) along them
    max_violation: torch.Tensor  # [N] max over the inequality constraints at z (<= 0 when met)
    c: torch.Tensor        # [N] final penalty
    converged: torch.Tensor  # [N] bool: |h| <= tol and violation <= tol

    def images(self, generator) -> torch.Tensor:
        with torch.no_grad():
            return Residual(generator, self.delta)(self.z)

    def explanation(self, generator) -> torch.Tensor:
        """``G(z0) - G(z_e)`` ``[N, ...]``: positive where the input has ink the boundary point lacks."""
        with torch.no_grad():
            return generator(self.z0) - generator(self.z)


def cdeepex(generator, classifier, x: torch.Tensor, true: int, probe: int, *, encoder=None, z0=None, delta=None,
            margin: float = 0.0, c0: float = 1.0, beta: float = 1.01, gamma: float = 0.24, outer: int = 100,
            inner: int = 30, lr: float = 0.01, tol: float = 1e-2) -> CDeepExResult:
    """CDeepEx: ``z_e = argmin ||z - z0||²`` subject to ``llh(true) = llh(probe)`` and both ``>= llh(y') + margin`` for
    every other class ``y'``, on the residual-shifted generator, by the augmented Lagrangian of the paper's eq. 3
    (inequalities written ``g = margin - (llh(a) - llh(y')) <= 0``). Each outer iteration minimises ``L_c`` with
    ``inner`` Adam steps, then updates the multipliers and ``c`` by :func:`al_update`."""
    x = _check_images(x)
    if z0 is None:
        z0, delta = invert(generator, x, encoder=encoder)
    elif delta is None:
        raise ValueError("delta is required with z0 (the residual G(z0) - x from invert)")
    target = Boundary(true, probe, margin=margin)
    post = Posterior(Residual(generator, delta), classifier, target, prior_loc=z0)
    n = len(z0)
    lam = torch.zeros(n, dtype=z0.dtype)
    mu = torch.zeros(n, 2 * (post.num_classes - 2), dtype=z0.dtype)
    c = torch.full((n,), float(c0), dtype=z0.dtype)

    def constraints(z):
        return target.constraints(post.probs(z))

    z = z0.clone()
    with torch.no_grad():
        h_prev, _ = constraints(z)
    path, hs = [z.clone()], [h_prev.clone()]
    for _ in range(outer):
        zv = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([zv], lr=lr)
        for _ in range(inner):
            with torch.enable_grad():
                h, g = constraints(zv)
                lag = ((zv - z0).square().sum(-1) + lam * h + 0.5 * c * h.square()
                       + ((mu + c[:, None] * g).clamp_min(0).square() - mu.square()).sum(-1) / (2 * c))
                opt.zero_grad()
                lag.sum().backward()
            opt.step()
        z = zv.detach()
        with torch.no_grad():
            h, g = constraints(z)
        lam, mu, c = al_update(h, g, h_prev, lam, mu, c, beta=beta, gamma=gamma)
        h_prev = h
        path.append(z.clone())
        hs.append(h.clone())
        if (h.abs() <= tol).all() and (g.amax(-1) <= tol).all():
            break
    with torch.no_grad():
        probs = post.probs(z)
        h, g = target.constraints(probs)
    viol = g.amax(-1)
    return CDeepExResult(z0, delta, int(true), int(probe), z, probs, torch.stack(path), torch.stack(hs), viol, c,
                         (h.abs() <= tol) & (viol <= tol))


def posterior_map(post: Posterior, z_init: torch.Tensor, *, steps: int = 2000, lr: float = 0.01) -> torch.Tensor:
    """The posterior's mode reached by Adam from ``z_init [N, d]`` (one row per prior centre or chain)."""
    z_path, _, _ = _descend(post, z_init, steps=steps, lr=lr)
    return z_path[-1]


def boundary_samples(generator, classifier, x: torch.Tensor, true: int, probe: int, *, encoder=None, z0=None,
                     delta=None, margin: float = 0.0, prior_scale: float = 0.5, sigma: float = 0.05,
                     chains_per_input: int = 4, init=None, **sample_options):
    """Boundary examples around each input: draws of the :class:`~bayestrex.targets.Boundary` posterior with a
    prior ``N(z0, prior_scale²)`` per input (the sampled CDeepEx). Inputs ``x [N, ...]`` give ``N × chains_per_input``
    chains, chain ``i`` belonging to input ``i // chains_per_input``. ``init`` (``[N, d]``, e.g. CDeepEx's ``z``)
    starts each input's chains; default ``z0``. Returns the :class:`~bayestrex.result.Result` and ``delta``."""
    from .sampling import sample

    x = _check_images(x)
    if z0 is None:
        z0, delta = invert(generator, x, encoder=encoder)
    elif delta is None:
        raise ValueError("delta is required with z0 (the residual G(z0) - x from invert)")
    r = int(chains_per_input)
    loc = z0.repeat_interleave(r, 0)
    start = (z0 if init is None else init).repeat_interleave(r, 0)
    gen = Residual(generator, delta.repeat_interleave(r, 0))
    result = sample(gen, classifier, Boundary(true, probe, margin=margin), num_chains=len(loc), sigma=sigma,
                    prior_loc=loc, prior_scale=prior_scale, init=start, **sample_options)
    result.generator = None  # its residual differs per chain: decode with chain_images(result, generator, delta)
    return result, delta


def chain_images(result, generator, delta: torch.Tensor) -> torch.Tensor:
    """Decoded draws ``[C, D, ...]`` of :func:`boundary_samples`: ``G(z) - Δ`` with each chain's input residual
    (``delta [N, ...]`` for ``C = N × chains_per_input`` chains)."""
    c, d = result.z.shape[:2]
    per = c // len(delta)
    with torch.no_grad():
        x = generator(result.z.reshape(c * d, -1).to(delta)).reshape(c, d, *delta.shape[1:])
    return x - delta.repeat_interleave(per, 0)[:, None]
