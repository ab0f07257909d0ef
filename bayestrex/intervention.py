"""Explanations inside the network, as a posterior: interventions on the discrete codes of a hidden layer that move
the class (after Gat et al., "Latent Space Explanation by Intervention", AAAI 2022).

A classifier ``f = h ∘ g`` is split at a hidden layer (:func:`bayestrex.nets.split`); a discrete VAE
(:class:`bayestrex.nets.DiscreteVAE`) encodes ``g(x)`` as K categorical latents with M values each. For an input with
codes ``c = enc(g(x))``, an intervention toward a target is a draw of codes ``c'`` from

    p(c' | u*) ∝ π_c(c') · N(u*; u(softmax(h(dec(c')))), σ²),     π_c(c') ∝ exp(-λ · #{k : c'_k ≠ c_k}),

the usual Gaussian likelihood of a target statistic (``high:B`` to move to class B, ``ambiguous:A,B``, ...;
:mod:`bayestrex.targets`) on the classifier's head, times :class:`HammingPrior`: independent categorical flips
around ``c`` with a penalty ``λ`` per changed latent. :func:`intervene` samples it with ``bt.sample(...,
prior=HammingPrior(c), kernel="mh")``: Metropolis-Hastings with the prior's single-site moves (one latent of each
chain proposed a new value, uniformly among the other M - 1), batched over chains.

The *minimal intervention* (the fewest changed latents whose decoded activations h classifies as B, ties broken by
the larger ``p_B``) is the MAP of that posterior in the limit of a hard class constraint and a large ``λ``.
:func:`minimal_intervention` finds it exactly by enumerating the Hamming balls around ``c`` (radius 1, 2, ... up to
``max_radius``); when none of them reaches B, :class:`Intervention` falls back to the best posterior draw and says so
in ``minimal["method"]``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .kernels.mh import MetropolisHastings
from .posterior import Posterior
from .sampling import sample
from .targets import High, parse

__all__ = ["HammingPrior", "SiteGibbs", "CodeDecoder", "Intervention", "intervene", "minimal_intervention",
           "concept_counts", "summary", "pictures", "describe"]


class HammingPrior:
    """Codes ``c' ∈ {0..M-1}^K`` near ``center``: independently, each latent keeps its value with probability
    ``1 - flip_prob`` and otherwise takes one of its other M - 1 values uniformly. So
    ``log π(c') = -λ · hamming(c', center) - K log Z`` with the Hamming penalty ``λ = log((M - 1)(1 - q) / q)``
    per changed latent (``q = flip_prob``, ``Z = 1 + (M - 1) e^-λ``). A latent the likelihood does not care about
    is changed in a fraction ``q`` of the posterior draws: the background against which a concept stands out.

    Codes are float tensors ``[N, K]`` holding integers (the sampler's latent space); ``log_prob`` is ``-inf`` off
    the grid. ``propose`` is the single-site move of Metropolis-Hastings (symmetric).
    """

    def __init__(self, center: torch.Tensor, num_values: int, flip_prob: float = 0.05):
        center = torch.as_tensor(center)
        if center.dim() != 1 or center.numel() < 1:
            raise ValueError(f"center must be one code vector [K], got shape {list(center.shape)}")
        if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values < 2:
            raise ValueError(f"num_values must be an integer >= 2, got {num_values!r}")
        if not ((center == center.round()) & (center >= 0) & (center < num_values)).all():
            raise ValueError(f"center must hold integers in [0, {num_values - 1}], got {center.tolist()}")
        if isinstance(flip_prob, bool) or not isinstance(flip_prob, (int, float)) or not 0 < flip_prob < 1:
            raise ValueError(f"flip_prob must be in (0, 1), got {flip_prob!r}")
        self.center, self.num_values, self.flip_prob = center.float(), num_values, float(flip_prob)
        self.latent_dim = center.numel()
        #: λ, the log prior cost of each changed latent
        self.penalty = math.log((num_values - 1) * (1 - self.flip_prob) / self.flip_prob)
        self.log_z = -math.log1p(-self.flip_prob)  # Z = 1 / (1 - q)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``[N]`` log prior of codes ``z [N, K]`` (normalised; ``-inf`` for values off the grid)."""
        center = self.center.to(z)
        ok = ((z == z.round()) & (z >= 0) & (z < self.num_values)).all(-1)
        lp = -self.penalty * (z != center).sum(-1).to(z.dtype) - self.latent_dim * self.log_z
        return torch.where(ok, lp, torch.full_like(lp, -math.inf))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, K]`` independent draws (float codes)."""
        k, m = self.latent_dim, self.num_values
        change = torch.rand(n, k, generator=generator) < self.flip_prob
        other = (self.center + torch.randint(1, m, (n, k), generator=generator)) % m
        return torch.where(change, other, self.center.expand(n, k))

    def propose(self, z: torch.Tensor, generator: torch.Generator | None = None):
        """Single-site move: one latent per chain, chosen uniformly, gets a value drawn uniformly among its other
        M - 1 values. Symmetric, so ``log q ratio = 0``."""
        n = len(z)
        rows, site = torch.arange(n), torch.randint(self.latent_dim, (n,), generator=generator)
        shift = torch.randint(1, self.num_values, (n,), generator=generator).to(z)
        new = z.clone()
        new[rows, site] = (z[rows, site] + shift) % self.num_values
        return new, torch.zeros(n, dtype=z.dtype, device=z.device)

    propose.__name__ = "single_site"


class SiteGibbs:
    """A Gibbs-like Metropolis-Hastings move over categorical codes: each chain picks one latent uniformly and draws
    its new value from the density's full conditional over all M values (one batched evaluation of ``[C · M]``
    codes). With ``log q ratio = log π(z) - log π(z')`` the MH acceptance is 1: a random-scan Gibbs step. It costs M
    density evaluations a step (plus the kernel's one), which the driver's counts do not include."""

    __name__ = "site_gibbs"

    def __init__(self, density, num_values: int):
        self.density, self.num_values = density, int(num_values)

    def __call__(self, z: torch.Tensor, generator: torch.Generator | None = None):
        n, k = z.shape
        m, rows = self.num_values, torch.arange(n)
        site = torch.randint(k, (n,), generator=generator)
        cand = z.repeat_interleave(m, 0)
        cand[torch.arange(n * m), site.repeat_interleave(m)] = torch.arange(m, dtype=z.dtype).repeat(n)
        lp = self.density.evaluate(cand)[0].view(n, m)
        pick = torch.multinomial(lp.softmax(-1).nan_to_num(1.0 / m), 1, generator=generator).flatten()
        now = z[rows, site].long()
        return cand.view(n, m, k)[rows, pick], lp[rows, now] - lp[rows, pick]


class CodeDecoder(nn.Module):
    """The sampler's generator: float codes ``[N, K]`` to the discrete VAE's decoded activations (no gradients:
    the codes are discrete)."""

    def __init__(self, dvae):
        super().__init__()
        self.dvae, self.latent_dim = dvae, dvae.num_latents

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.dvae.decode(z)


def _rhat_ess(x: np.ndarray) -> tuple[float, float]:
    """R-hat and bulk ESS of ``x [chains, draws]`` (NaN when every draw is equal)."""
    import arviz_stats as azs

    if np.all(x == x.flat[0]):
        return math.nan, math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(azs.rhat(x)), float(azs.ess(x))


@dataclass
class Intervention:
    """Posterior draws of interventions on one input's codes, and its minimal intervention.

    ``codes [K]`` (long) are ``c = enc(g(x))``; ``result`` the :class:`~bayestrex.Result` of the sampler (its ``z``
    are the codes ``c'`` as floats ``[chains, draws, K]``); ``to_class`` the class a draw must be predicted as to
    count as *reaching* the target (``None``: a draw reaches it when it attains the target within tolerance);
    ``minimal`` a dict (``codes``, ``changed`` latents, ``probs``, ``method``) or None when nothing reached it;
    ``num_values`` is M; ``move`` the MH move (``"gibbs"`` or ``"uniform"``).
    """

    codes: torch.Tensor
    result: object
    to_class: int | None
    flip_prob: float
    num_values: int
    minimal: dict | None = None
    move: str = "gibbs"

    @property
    def draws(self) -> torch.Tensor:
        """``[chains, draws, K]`` sampled codes (long)."""
        return self.result.z.round().long()

    @property
    def changed(self) -> torch.Tensor:
        """``[chains, draws, K]`` bool: latent ``k`` of the draw differs from the input's code."""
        return self.draws != self.codes

    @property
    def reached(self) -> torch.Tensor:
        """``[chains, draws]`` bool: the draw is predicted as ``to_class`` (or attains the target)."""
        if self.to_class is None:
            return self.result.attained
        return self.result.probs.argmax(-1) == self.to_class

    def change_frequency(self) -> torch.Tensor:
        """``[K]``: among the draws that reach the target, the fraction in which each latent is changed (NaN when
        no draw reaches it): the posterior probability that the latent is part of the intervention."""
        ok = self.reached
        if not ok.any():
            return torch.full((self.codes.numel(),), math.nan)
        return self.changed[ok].float().mean(0)

    def best_draw(self) -> dict | None:
        """The draw that reaches the target with the fewest changed latents (then the largest target statistic)."""
        ok = self.reached.flatten()
        if not ok.any():
            return None
        codes = self.draws.flatten(0, 1)[ok]
        probs = self.result.probs.flatten(0, 1)[ok]
        dist = (codes != self.codes).sum(-1).double()
        score = probs[:, self.to_class] if self.to_class is not None else -self.result.u.flatten(0, 1)[ok].sub(
            self.result.target_value).abs().amax(-1)
        i = int(torch.argmin(dist - 1e-3 * score.double()))
        return _answer(codes[i], self.codes, probs[i], "posterior draws (fewest changes among the draws that reach "
                                                        "the target)")

    def record(self) -> dict:
        """The run as JSON-ready numbers: ``codes``, ``target``, ``minimal``, ``change_frequency`` (None where no
        draw reached the target) and ``diagnostics``."""
        freq = self.change_frequency().tolist()
        return dict(codes=self.codes.tolist(), target=self.result.target_spec, minimal=self.minimal,
                    change_frequency=[None if math.isnan(v) else round(v, 4) for v in freq],
                    diagnostics=self.diagnostics())

    def distinct(self, n: int = 3) -> list[dict]:
        """The ``n`` most frequent distinct codes among the draws that reach the target, each a dict as
        :func:`minimal_intervention` returns with its ``share`` of those draws."""
        ok = self.reached.flatten()
        if not ok.any():
            return []
        codes, probs = self.draws.flatten(0, 1)[ok], self.result.probs.flatten(0, 1)[ok]
        unique, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
        out = []
        for j in counts.argsort(descending=True)[:n].tolist():
            first = int(torch.nonzero(inverse == j)[0])
            out.append(dict(_answer(unique[j], self.codes, probs[first], "posterior draw"),
                            share=round(float(counts[j]) / len(codes), 4)))
        return out

    def diagnostics(self) -> dict:
        """Convergence of the run: worst R-hat and least bulk ESS over the target statistics and the number of
        changed latents (None when no draw changes them), the MH acceptance (1 for Gibbs moves) and the share of
        transitions that changed the code (``move_rate``), attainment, the share of draws reaching the target, the
        mean number of changed latents, and the density evaluations of the run (warmup and draws; a Gibbs step
        evaluates all M values of its latent besides the kernel's one evaluation; not counting the starting points'
        4096 prior draws)."""
        r = self.result
        series = [r.u[..., j].double().numpy() for j in range(r.u.shape[-1])]
        series.append(self.changed.sum(-1).double().numpy())
        rhats, esss = zip(*(_rhat_ess(s) for s in series))
        finite = [v for v in rhats if not math.isnan(v)]
        d = self.draws
        return dict(max_r_hat=round(max(finite), 3) if finite else None,
                    min_ess_bulk=round(min(e for e in esss if not math.isnan(e)), 1) if finite else None,
                    acceptance=round(float(r.stats["accepted"].float().mean()), 3),
                    move_rate=round(float((d[:, 1:] != d[:, :-1]).any(-1).float().mean()), 3) if d.shape[1] > 1
                    else None,
                    attainment=round(float(r.attained.float().mean()), 3),
                    reached=round(float(self.reached.float().mean()), 3),
                    mean_changes=round(float(self.changed.sum(-1).float().mean()), 2),
                    evaluations=int(r.info.get("likelihood_evals", 0)) * (self.num_values + 1 if self.move == "gibbs"
                                                                          else 1))


def _answer(new: torch.Tensor, codes: torch.Tensor, probs: torch.Tensor, method: str) -> dict:
    changed = torch.nonzero(new != codes).flatten().tolist()
    return dict(codes=new.long().tolist(), changed=changed, values={k: (int(codes[k]), int(new[k])) for k in changed},
                probs=[round(float(p), 4) for p in probs], method=method)


def _ball_shell(codes: torch.Tensor, num_values: int, radius: int):
    """Every code at Hamming distance exactly ``radius`` from ``codes [K]``, in chunks ``[n, K]``."""
    k = codes.numel()
    shifts = torch.tensor(list(itertools.product(range(1, num_values), repeat=radius)), dtype=torch.long)
    for sites in itertools.combinations(range(k), radius):
        cand = codes.expand(len(shifts), k).clone()
        cand[:, list(sites)] = (cand[:, list(sites)] + shifts) % num_values
        yield cand


@torch.no_grad()
def minimal_intervention(dvae, head, codes: torch.Tensor, to_class: int, *, max_radius: int = 2,
                         batch_size: int = 8192) -> dict | None:
    """The fewest changed latents of ``codes [K]`` whose decoding ``head`` classifies as ``to_class``, by exact
    search: every code at Hamming distance 1, then 2, ... up to ``max_radius``; among the codes at the first distance
    that reaches the class, the one with the largest ``p_to_class``. ``None`` when no code within ``max_radius``
    does (the search costs ``C(K, r) (M - 1)^r`` evaluations at radius r).

    Returns a dict: ``codes`` (the new code, list), ``changed`` (latent indices), ``values`` ({latent: (old, new)}),
    ``probs`` (h's probabilities there), ``method``."""
    codes = torch.as_tensor(codes).long().flatten()
    for radius in range(1, max_radius + 1):
        cand = torch.cat(list(_ball_shell(codes, dvae.num_values, radius)))
        probs = torch.cat([head(dvae.decode(b)).softmax(-1) for b in cand.split(batch_size)])
        hit = probs.argmax(-1) == to_class
        if hit.any():
            i = int(torch.where(hit, probs[:, to_class], torch.full_like(probs[:, to_class], -1.0)).argmax())
            return _answer(cand[i], codes, probs[i], f"exact search (Hamming radius {radius})")
    return None


def intervene(dvae, head, codes: torch.Tensor, target, *, flip_prob: float = 0.05, sigma: float = 0.05,
              num_chains: int = 8, num_samples: int = 1000, warmup: int = 500, seed: int = 0, max_radius: int = 2,
              move: str = "gibbs", progress: bool = False) -> Intervention:
    """Sample interventions on one input's codes ``codes [K]`` (``dvae.encode(g(x))[0]``) toward ``target``.

    Parameters
    ----------
    dvae : DiscreteVAE
        The discrete VAE over the hidden layer (``num_latents`` K, ``num_values`` M).
    head : callable
        The classifier after the layer, h: activations to logits.
    target : int, str or Target
        A class B or any target (``"high:B"``, ``"ambiguous:3,8"``, a ``Target``). A class B means ``high:B,log``:
        the level set ``p_B ≈ 1`` of ``high:B`` measured on ``log p_B``, whose likelihood does not flatten where
        ``p_B`` is tiny, so that single-site moves can climb from the input's codes (``high:B`` is flat there: a
        chain started near ``c`` then only follows the prior).
    flip_prob : float
        The prior probability that a latent changes (:class:`HammingPrior`; λ = log((M - 1)(1 - q) / q)).
    sigma, num_chains, num_samples, warmup, seed, progress
        As in :func:`bayestrex.sample` (kernel ``"mh"``: the prior's single-site moves; the chains start at the
        best of many prior draws, :meth:`~bayestrex.Posterior.initial_points`).
    max_radius : int
        Hamming radius of the exact search for the minimal intervention (0: only the posterior draws).
    move : str
        ``"gibbs"`` (:class:`SiteGibbs`, a full-conditional single-site update) or ``"uniform"`` (the prior's
        :meth:`HammingPrior.propose`: a single-site value drawn uniformly, accepted or rejected).
    """
    codes = torch.as_tensor(codes).long().flatten()
    if codes.numel() != dvae.num_latents:
        raise ValueError(f"codes must hold the {dvae.num_latents} latents of the discrete VAE, got {codes.numel()}")
    target = parse(High(target, log=True) if isinstance(target, int) and not isinstance(target, bool) else target)
    to_class = target.c if isinstance(target, High) else None
    if move not in ("gibbs", "uniform"):
        raise ValueError(f"move must be 'gibbs' or 'uniform', got {move!r}")
    prior, decoder = HammingPrior(codes, dvae.num_values, flip_prob), CodeDecoder(dvae)
    kernel = "mh"
    if move == "gibbs":
        kernel = MetropolisHastings(SiteGibbs(Posterior(decoder, head, target, sigma=sigma, prior=prior),
                                              dvae.num_values))
    result = sample(decoder, head, target, prior=prior, kernel=kernel, num_chains=num_chains,
                    num_samples=num_samples, warmup=warmup, sigma=sigma, seed=seed, progress=progress)
    out = Intervention(codes, result, to_class, prior.flip_prob, dvae.num_values, move=move)
    if to_class is not None and max_radius > 0:
        out.minimal = minimal_intervention(dvae, head, codes, to_class, max_radius=max_radius)
    if out.minimal is None:
        out.minimal = out.best_draw()
    return out


def concept_counts(interventions, num_classes: int) -> dict:
    """Across many inputs: how often each latent is changed to reach each class.

    ``interventions`` is a list of :class:`Intervention` with a ``to_class``. Returns tensors ``[num_classes, K]``:
    ``minimal`` (how many inputs' minimal interventions change latent k to reach the class), ``posterior`` (the
    mean over those inputs of the posterior change frequency), and ``inputs [num_classes]`` (inputs per class with
    an intervention that reached it)."""
    k = interventions[0].codes.numel() if interventions else 0
    minimal, posterior = torch.zeros(num_classes, k), torch.zeros(num_classes, k)
    inputs = torch.zeros(num_classes, dtype=torch.long)
    for it in interventions:
        if it.to_class is None or it.minimal is None:
            continue
        inputs[it.to_class] += 1
        minimal[it.to_class, it.minimal["changed"]] += 1
        freq = it.change_frequency()
        posterior[it.to_class] += torch.nan_to_num(freq, nan=0.0)
    posterior = posterior / inputs.clamp_min(1)[:, None]
    return dict(minimal=minimal, posterior=posterior, inputs=inputs)


def summary(diagnostics: list[dict], minimal: list[dict | None]) -> dict:
    """One table row over many inputs' runs: ``diagnostics`` (:meth:`Intervention.diagnostics` of each) and their
    ``minimal`` interventions. Counts of inputs, of those whose intervention reached the target and of those found by
    the exact search; the mean number of latents the minimal interventions change; R-hat (median, max, and how many
    runs have R-hat <= 1.01, the only ones called converged), the median of the least bulk ESS, the mean move rate
    and acceptance."""
    found = [m for m in minimal if m is not None]
    rhat = np.array([d["max_r_hat"] for d in diagnostics if d["max_r_hat"] is not None], dtype=float)
    ess = np.array([d["min_ess_bulk"] for d in diagnostics if d["min_ess_bulk"] is not None], dtype=float)
    mean = lambda v: round(float(np.mean(v)), 3) if len(v) else None  # noqa: E731
    return dict(inputs=len(minimal), reached=len(found),
                exact_search=sum(m["method"].startswith("exact") for m in found),
                mean_changes=mean([len(m["changed"]) for m in found]),
                median_r_hat=round(float(np.median(rhat)), 3) if len(rhat) else None,
                max_r_hat=round(float(rhat.max()), 3) if len(rhat) else None,
                converged=int((rhat <= 1.01).sum()),
                median_min_ess=round(float(np.median(ess)), 1) if len(ess) else None,
                move_rate=mean([d["move_rate"] for d in diagnostics if d["move_rate"] is not None]),
                acceptance=mean([d["acceptance"] for d in diagnostics]))


@torch.no_grad()
def pictures(dvae, explainer, activation: torch.Tensor, codes: torch.Tensor, new_codes: torch.Tensor) -> tuple:
    """What a user looks at: the explanatory decoder's images ``[n, ...]`` of the hidden activations
    ``activation [1, ...]`` (g(x)), of their codes ``dec(c)`` and of each of the codes ``new_codes [n, K]``
    (``dec(c')``): ``(from_g, from_codes, from_new)``, the first two repeated n times."""
    new_codes = torch.as_tensor(new_codes).long().view(-1, dvae.num_latents)
    n = len(new_codes)
    from_g = explainer(activation).expand(n, *explainer.image_shape)
    from_codes = explainer(dvae.decode(torch.as_tensor(codes).long().view(1, -1))).expand(n, *explainer.image_shape)
    return from_g, from_codes, explainer(dvae.decode(new_codes))


def describe(answer: dict | None, class_names=None) -> str:
    """``"k3: 2→5, k7: 0→1"``: the latents an intervention changes (``"none"`` when nothing reached the target);
    with ``class_names``, a second line with the most probable class and its probability."""
    if answer is None:
        return "none"
    text = ", ".join(f"k{k}: {a}→{b}" for k, (a, b) in answer["values"].items()) or "no change"
    if class_names is not None:
        p = answer["probs"]
        top = max(range(len(p)), key=p.__getitem__)
        text += f"\n{class_names[top]}: {p[top]:.2f}"
    return text
