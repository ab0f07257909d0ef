"""Adaptive tempered SMC: particles move from the prior (β = 0) to the posterior (β = 1), for multimodal level sets.

Del Moral, Doucet & Jasra (2006); adaptive temperatures as in Jasra et al. (2011) with the conditional ESS of Zhou,
Johansen & Aston (2016); BlackJAX's ``smc/adaptive_tempered.py`` and ``smc/inner_kernel_tuning.py`` for the layout.
The path is ``π_β ∝ π0 · L^β``. At each stage, for every run:

1. the next temperature ``β + δ``: ``δ`` by bisection so that the conditional ESS of the incremental weights
   ``δ · log L`` is ``target_ess`` of the run's particles (or ``δ = 1 - β`` when that is already enough);
2. the evidence ``log Z += log Σ W e^{δ log L}``, then systematic resampling;
3. mutation: batched MCMC steps invariant for ``π_{β+δ}`` — HMC whose mass matrix is the run's weighted particle
   covariance and whose step size follows the acceptance rate, or elliptical slice sampling (no gradients, exact for
   the Gaussian prior, nothing to tune) — until the particles have moved ``jump`` times ``d`` in squared
   covariance-whitened distance on average, between ``min_mutation_steps`` and ``max_mutation_steps`` steps.

Weights move mass between disconnected pieces of a level set at temperatures where they are still connected, which
no MCMC chain started in one piece can do. The ``N`` particles (``num_chains``) form ``runs`` independent runs of
``N / runs`` particles each, with their own temperature schedule, resampling, evidence and tuning, all evaluated in
one batch: the spread between runs gives the evidence's standard error and the runs-agree diagnostic (nested R-hat
with runs as superchains).

After tempering, ``warmup`` more mutation steps at ``β = 1`` (discarded; the step size keeps adapting), then each
particle continues as a chain for the ``num_samples`` kept draws, so every diagnostic and plot works as for MCMC.
Per-stage records (temperature, ESS, acceptance, mutation steps, distinct particles, evidence increments) go to the
result's ``smc`` group.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..density import GaussianPrior
from . import register
from .base import Warmed, positive, positive_int, probability
from .elliptical import EllipticalSlice
from .hmc import DENSE_UP_TO, HMCParams
from .hmc import init as hmc_init
from .hmc import step as hmc_step
from .integrators import Metric

__all__ = ["SMC", "next_temperature", "systematic_resample"]

#: conditional ESS fraction kept at each stage (Jasra et al. 2011; BlackJAX's and PyMC's default 0.5)
TARGET_ESS = 0.5
#: HMC mutations aim at this mean acceptance (Beskos et al. 2013: 0.651 for HMC in high dimensions)
TARGET_ACCEPT = 0.651
#: bisection iterations for the next temperature (2^-60 of the remaining interval)
BISECTION_STEPS = 60


class _Cost(NamedTuple):
    """Density evaluations outside a kernel step (re-evaluating particles at a new temperature)."""

    n_steps: torch.Tensor


def _lse_runs(x: torch.Tensor, runs: int) -> torch.Tensor:
    """``log Σ exp`` within each run: ``x [N] -> [R]`` (``-inf`` entries contribute nothing)."""
    return torch.logsumexp(x.view(runs, -1), dim=1)


def next_temperature(loglik: torch.Tensor, log_w: torch.Tensor, beta: torch.Tensor, runs: int,
                     target_ess: float) -> torch.Tensor:
    """The step ``δ [R]`` per run such that the conditional ESS fraction of weights ``δ · loglik`` is ``target_ess``.

    ``loglik [N]`` (``-inf`` allowed), ``log_w [N]`` normalised log weights within each run, ``beta [R]``. Runs at
    ``β = 1`` get ``δ = 0``; when ``δ = 1 - β`` keeps enough ESS, that is the step.
    """

    def cess(delta):  # [R] fraction: (Σ W e^w)² / Σ W e^{2w}
        d = delta.repeat_interleave(loglik.numel() // runs)
        w = torch.where(d > 0, d * loglik, torch.zeros_like(loglik))
        return (2 * _lse_runs(log_w + w, runs) - _lse_runs(log_w + 2 * w, runs)).exp()

    hi = (1.0 - beta).clamp_min(0.0)
    lo = torch.zeros_like(hi)
    done = cess(hi) >= target_ess
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        ok = cess(mid) >= target_ess
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    delta = torch.where(done, (1.0 - beta).clamp_min(0.0), lo)
    # never stall: at least a tiny step (a run whose particles all have log L = -inf but one)
    return torch.where((beta < 1) & (delta <= 0), torch.minimum(1.0 - beta, torch.full_like(beta, 1e-12)), delta)


def systematic_resample(log_w: torch.Tensor, runs: int, rng: torch.Generator) -> torch.Tensor:
    """Indices ``[N]`` (into all particles) drawn by systematic resampling within each run (one uniform per run)."""
    N = log_w.numel()
    M = N // runs
    w = torch.softmax(log_w.view(runs, M).double(), dim=1)
    cdf = w.cumsum(1)
    cdf[:, -1] = 1.0
    u = torch.rand(runs, 1, generator=rng, device=log_w.device, dtype=torch.float64)
    points = (u + torch.arange(M, device=log_w.device, dtype=torch.float64)) / M
    idx = torch.searchsorted(cdf, points).clamp(max=M - 1)
    return (idx + M * torch.arange(runs, device=log_w.device).unsqueeze(1)).flatten()


def _weighted_covariance(z: torch.Tensor, log_w: torch.Tensor, runs: int, dense: bool) -> torch.Tensor:
    """Per run, the covariance of its weighted particles ``[R, d, d]`` (or variances ``[R, d]``), shrunk toward
    its diagonal and regularised."""
    N, d = z.shape
    M = N // runs
    w = torch.softmax(log_w.view(runs, M), dim=1).to(z.dtype).unsqueeze(-1)  # [R, M, 1]
    zr = z.view(runs, M, d)
    mean = (w * zr).sum(1, keepdim=True)
    c = zr - mean
    ess = 1.0 / w.square().sum((1, 2))  # [R]
    if not dense:
        return (w * c.square()).sum(1) + 1e-8
    cov = (w * c).mT @ c  # [R, d, d]
    k = (ess / (ess + 5.0)).view(-1, 1, 1)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    return k * cov + (1 - k) * torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1)) + 1e-8 * eye


class _Tuning(NamedTuple):
    """What the HMC mutation uses at one temperature, per run."""

    step_size: torch.Tensor  #: [R]
    cov: torch.Tensor  #: [R, d, d] or [R, d]
    metric: Metric  #: per particle


def _metric(cov: torch.Tensor, M: int) -> Metric:
    return Metric.of(cov.repeat_interleave(M, dim=0))


def _whitened_jump(z: torch.Tensor, z0: torch.Tensor, cov: torch.Tensor, runs: int) -> torch.Tensor:
    """Mean over each run's particles of ``(z - z0)ᵀ Σ⁻¹ (z - z0)`` ``[R]``."""
    N, d = z.shape
    dz = (z - z0).view(runs, N // runs, d)
    if cov.dim() == 2:
        return (dz.square() / cov.unsqueeze(1)).sum(-1).mean(1)
    chol = torch.linalg.cholesky(cov)
    w = torch.linalg.solve_triangular(chol, dz.mT, upper=False)  # [R, d, M]
    return w.square().sum(1).mean(1)


class SMCState(NamedTuple):
    """Between stages: positions, the density's by-products (with the untempered log-likelihood)."""

    z: torch.Tensor
    log_density: torch.Tensor
    aux: dict


@register("smc")
class SMC:
    """Adaptive tempered SMC (see the module docstring); ``num_chains`` is the number of particles.

    Parameters
    ----------
    mutation : {"hmc", "slice"}
        HMC (gradients; mass matrix from the particles) or elliptical slice sampling (likelihood evaluations only).
    runs : int, optional
        Independent runs the particles are split into (default: 4 when each gets at least 16 particles, else as
        many as allow 8 each, at least 1). ``num_chains`` must be a multiple of it.
    target_ess : float
        Conditional ESS fraction kept at each stage (smaller: fewer stages, more degeneracy).
    min_mutation_steps, max_mutation_steps : int
        Bounds on the mutation steps per stage; in between they stop once the particles have moved ``jump · d``
        in mean squared whitened distance (independent draws of the same distribution are ``2 d`` apart).
    jump : float
        See above.
    trajectory_length : float
        HMC: integration time in whitened units, jittered as ``u · T``, ``u ~ Uniform(0, 1]`` drawn once per
        mutation step for all particles.
    max_leapfrog : int
        HMC: cap on leapfrog steps per mutation step.
    max_stages : int
        A path needing more stages than this raises (a sign that sigma is far too small for the particles).
    """

    name = "smc"
    summary = "adaptive tempered SMC from the prior: weights across disconnected pieces, evidence (log Z)"
    starts_from_prior = True
    default_warmup = 10

    def __init__(self, *, mutation: str = "hmc", runs: int | None = None, target_ess: float = TARGET_ESS,
                 min_mutation_steps: int = 2, max_mutation_steps: int = 25, jump: float = 1.0,
                 trajectory_length: float = math.pi, max_leapfrog: int = 1000, initial_step_size: float = 0.5,
                 target_accept: float = TARGET_ACCEPT, max_stages: int = 1000):
        if mutation not in ("hmc", "slice"):
            raise ValueError(f"mutation must be 'hmc' or 'slice', got {mutation!r}")
        self.mutation = mutation
        self.runs = None if runs is None else positive_int("runs", runs)
        self.target_ess = probability("target_ess", target_ess)
        self.min_mutation_steps = positive_int("min_mutation_steps", min_mutation_steps)
        self.max_mutation_steps = positive_int("max_mutation_steps", max_mutation_steps)
        if self.max_mutation_steps < self.min_mutation_steps:
            raise ValueError("max_mutation_steps must be >= min_mutation_steps")
        self.jump = positive("jump", jump)
        self.trajectory_length = positive("trajectory_length", trajectory_length)
        self.max_leapfrog = positive_int("max_leapfrog", max_leapfrog)
        self.initial_step_size = positive("initial_step_size", initial_step_size)
        self.target_accept = probability("target_accept", target_accept)
        self.max_stages = positive_int("max_stages", max_stages)
        self._slice = EllipticalSlice(max_shrinks=100, adapt=False)

    @property
    def needs_gradients(self) -> bool:
        return self.mutation == "hmc"

    @property
    def recorded(self) -> tuple[str, ...]:
        from .hmc import RECORDED

        return RECORDED if self.mutation == "hmc" else self._slice.recorded

    def num_runs(self, num_particles: int) -> int:
        if self.runs is not None:
            if num_particles % self.runs or num_particles // self.runs < 2:
                raise ValueError(f"num_chains ({num_particles} particles) must be a multiple of runs ({self.runs}) "
                                 "with at least 2 particles per run")
            return self.runs
        for r in (4, 3, 2):
            if num_particles % r == 0 and num_particles // r >= (16 if r == 4 else 8):
                return r
        return 1

    # -- the kernel contract ----------------------------------------------------------------------------------
    def init(self, density, z0, rng) -> SMCState:
        """``z0`` are draws from the prior (``sample`` passes them); nothing is required of their density."""
        if not isinstance(density.prior, GaussianPrior):
            raise ValueError("kernel 'smc' needs the Gaussian prior (it starts from prior draws and, with "
                             "mutation='slice', walks its ellipses); a custom prior is sampled with kernel='mh'")
        self.num_runs(z0.shape[0])
        lp, aux = density.evaluate(z0)
        return SMCState(z0.clone(), lp, aux)

    def step(self, density, state, params, rng):
        if self.mutation == "hmc":
            return hmc_step(density, state, params, rng)
        return self._slice.step(density, state, params, rng)

    def adaptation(self, density, z0, num_warmup):
        raise NotImplementedError("smc tunes itself inside its own warmup (SMC.warmup)")

    # -- tempering ----------------------------------------------------------------------------------------------
    def warmup(self, density, state: SMCState, num_warmup: int, rng: torch.Generator):
        """The driver's warmup: tempering stages, then ``num_warmup`` steps at β = 1. Yields ``(info, postfix)`` per
        mutation step; returns a :class:`~bayestrex.driver.Warmed` whose adaptation gives the sampling parameters."""
        z, aux = state.z, state.aux
        N, d = z.shape
        R = self.num_runs(N)
        M = N // R
        dense = d <= DENSE_UP_TO
        dev = z.device
        run_of = torch.arange(N, device=dev) // M
        beta = torch.zeros(R, dtype=torch.float64, device=dev)
        log_z = torch.zeros(R, dtype=torch.float64, device=dev)
        log_w = torch.full((N,), -math.log(M), dtype=torch.float64, device=dev)
        step_size = torch.full((R,), self.initial_step_size, dtype=z.dtype, device=dev)
        rec = {k: [] for k in ("beta", "ess", "log_z_increment", "acceptance", "step_size", "distinct",
                               "mutation_steps", "leapfrog_steps")}
        stage = 0
        while bool((beta < 1).any()):
            stage += 1
            if stage > self.max_stages:
                raise RuntimeError(f"smc: the tempering path needed more than max_stages={self.max_stages} stages "
                                   f"(temperatures reached: {beta.tolist()}); sigma may be too small")
            ll = aux["log_likelihood"].to(torch.float64)
            delta = next_temperature(ll, log_w, beta, R, self.target_ess)
            active = delta > 0
            inc = delta.repeat_interleave(M)
            w = torch.where(inc > 0, inc * ll, torch.zeros_like(ll))
            increment = _lse_runs(log_w + w, R)  # log Σ W e^w, W normalised
            log_z = log_z + torch.where(active, increment, torch.zeros_like(increment))
            log_w = log_w + w
            log_w = log_w - _lse_runs(log_w, R).repeat_interleave(M)
            ess = 1.0 / torch.softmax(log_w.view(R, M), 1).square().sum(1) / M
            beta = torch.where(1.0 - (beta + delta) < 1e-10, torch.ones_like(beta), beta + delta)
            cov = _weighted_covariance(z, log_w.to(z.dtype), R, dense)
            idx = systematic_resample(log_w, R, rng)
            z, aux = z[idx], {k: v[idx] for k, v in aux.items()}
            log_w = torch.full_like(log_w, -math.log(M))
            distinct = torch.tensor([float(torch.unique(i).numel()) / M for i in idx.view(R, M)])
            tempered = density.tempered(beta.to(z.dtype).repeat_interleave(M))
            inner, steps, acc, step_size, leapfrog = yield from self._mutate(
                tempered, z, cov, step_size, run_of, R, active, rng, beta,
                self.min_mutation_steps, self.max_mutation_steps, stop_on_jump=True)
            z, aux = inner.z, inner.aux
            for k, v in (("beta", beta), ("ess", ess), ("log_z_increment", increment), ("acceptance", acc),
                         ("step_size", step_size), ("distinct", distinct)):
                rec[k].append(v.detach().double().cpu())
            rec["mutation_steps"].append(steps)
            rec["leapfrog_steps"].append(leapfrog)
        # warmup at the posterior: particles decorrelate further, the step size settles; then it is frozen
        cov = _weighted_covariance(z, log_w.to(z.dtype), R, dense)
        if num_warmup > 0:
            inner, _, _, step_size, _ = yield from self._mutate(
                density, z, cov, step_size, run_of, R, torch.ones(R, dtype=torch.bool, device=dev), rng, beta,
                num_warmup, num_warmup, stop_on_jump=False)
        else:
            inner = self._init_inner(density, z, rng)
            yield _Cost(torch.ones(N, dtype=torch.long)), {"beta": "1"}
        groups = {"smc": {**{k: torch.stack(v).numpy() if k not in ("mutation_steps", "leapfrog_steps")
                             else torch.tensor(v).numpy() for k, v in rec.items()},
                          "log_evidence_runs": log_z.cpu().numpy(), "run": run_of.cpu().numpy(),
                          "target_ess": self.target_ess}}
        frozen = _Frozen(self, step_size, cov, M)
        return Warmed(inner, frozen, None, groups)

    def _init_inner(self, density, z, rng):
        if self.mutation == "hmc":
            return hmc_init(density, z)
        return self._slice.init(density, z, rng)

    def _mutate(self, density, z, cov, step_size, run_of, R, active, rng, beta, min_steps, max_steps,
                stop_on_jump):
        """Mutation steps at one temperature (a generator: yields per step; returns the new inner state, the steps
        taken, the mean acceptance [R], the step sizes [R] and the mean leapfrog steps per mutation step)."""
        N = z.shape[0]
        M = N // R
        inner = self._init_inner(density, z, rng)
        note = {"beta": f"{float(beta.min()):.3g}"}
        yield _Cost(torch.ones(N, dtype=torch.long)), note
        metric = _metric(cov, M)
        acc_sum = torch.zeros(R, dtype=torch.float64)
        leapfrog, t = 0, 0
        for t in range(1, max_steps + 1):
            params = self._params(step_size, metric, run_of, rng)
            inner, info = self.step(density, inner, params, rng)
            acc = info.acceptance_rate.view(R, M).double().mean(1).cpu()
            acc_sum += acc
            leapfrog += int(info.n_steps.max())
            if self.mutation == "hmc":  # follow the acceptance rate (a population average: stable at any stage)
                step_size = step_size * torch.exp(acc.to(step_size) - self.target_accept)
            yield info, note
            if t >= min_steps and stop_on_jump:
                jumped = _whitened_jump(inner.z, z, cov, R)
                if bool((jumped[active.to(jumped.device)] >= self.jump * z.shape[1]).all()):
                    break
        return inner, t, acc_sum / max(t, 1), step_size, leapfrog / max(t, 1)

    def _params(self, step_size, metric, run_of, rng):
        if self.mutation == "slice":
            return {"reference": None}  # the prior's ellipses, as the state holds them
        eps = step_size[run_of]
        # one jitter for all particles of this step (u ~ Uniform(0, 1]): no particle idles while another finishes a
        # longer trajectory, so a step costs the mean, not the maximum, of the jittered lengths
        u = 1.0 - float(torch.rand((), generator=rng, device=rng.device))
        n = torch.ceil(u * self.trajectory_length / eps).clamp(1, self.max_leapfrog).long()
        return HMCParams(eps, n, metric, u)


class _Frozen:
    """The sampling phase's parameters: each run's last step size and particle covariance, fixed."""

    def __init__(self, smc: SMC, step_size: torch.Tensor, cov: torch.Tensor, M: int):
        self.smc, self.step_size, self.cov, self.M = smc, step_size, cov, M
        self.metric = _metric(cov, M)
        self.run_of = torch.arange(len(step_size) * M, device=step_size.device) // M

    def parameters(self, astate, it, rng):
        return self.smc._params(self.step_size, self.metric, self.run_of, rng)

    def describe(self, astate) -> dict:
        return dict(mutation=self.smc.mutation, runs=len(self.step_size), target_ess=self.smc.target_ess,
                    step_size=[round(float(s), 6) for s in self.step_size])
