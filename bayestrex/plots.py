"""Figures of a result (matplotlib + seaborn, PNG): sampled images, target statistics, traces and ranks.

Each function returns the matplotlib Figure and, given ``path``, also writes it there atomically.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = ["image_grid", "statistic_hist", "trace", "montage", "contrastive", "walk", "intervention", "concepts",
           "save"]


def save(fig, path) -> None:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _finish(fig, path):
    if path is not None:
        save(fig, path)
    return fig


def _spread(num_chains: int, num_draws: int, n: int) -> list[tuple[int, int]]:
    """``n`` (chain, draw) pairs spread evenly over chains and over each chain's draws."""
    per = max(1, math.ceil(n / num_chains))
    picks = [(c, int(d)) for d in np.linspace(0, num_draws - 1, per).round() for c in range(num_chains)]
    return picks[:n]


def image_grid(result, generator=None, *, n: int = 32, cols: int = 8, path=None, images=None):
    """A grid of ``n`` draws (spread over chains and draws), each titled with its two most probable classes.
    ``images``: the draws already decoded (``[chains, draws, ...]``), else the generator decodes them."""
    healthy = result.healthy_chains
    picks = [(healthy[c], d) for c, d in _spread(len(healthy), result.num_draws, n)]
    x = result.images(generator) if images is None else images
    rows = math.ceil(len(picks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.55 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (c, d) in zip(axes.flat, picks):
        img = x[c, d]
        img = img[0] if img.dim() == 3 and img.shape[0] == 1 else img.permute(1, 2, 0) if img.dim() == 3 else img
        ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        top = result.probs[c, d].topk(2)
        ok = bool(result.attained[c, d])
        ax.set_title("  ".join(f"{k}:{p:.2f}" for p, k in zip(top.values.tolist(), top.indices.tolist())),
                     fontsize=7, color="black" if ok else "tab:red")
    fig.suptitle(f"{result.target_spec}: draws (red title = outside tolerance); attainment {result.attainment:.0%}",
                 fontsize=9)
    return _finish(fig, path)


def statistic_hist(result, *, path=None):
    """A histogram of each target statistic over all draws, with its target value and the tolerance band."""
    m = len(result.statistic_names)
    cols = min(m, 5)
    rows = math.ceil(m / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[m:]:
        ax.axis("off")
    healthy = result.healthy_chains
    for j, (ax, name) in enumerate(zip(axes.flat, result.statistic_names)):
        u = result.u[healthy][..., j].flatten().numpy()
        t = float(result.target_value[j])
        ax.axvspan(t - result.tolerance, t + result.tolerance, color="tab:green", alpha=0.15, label="± tolerance")
        sns.histplot(u, ax=ax, bins=40, stat="probability", color="tab:blue", edgecolor=None)
        ax.axvline(t, color="tab:green", lw=1.5, label="target")
        within = float((np.abs(u - t) <= result.tolerance).mean())
        ax.set_title(f"{name}: {within:.0%} within ±{result.tolerance:g}", fontsize=8)
        ax.set_xlabel("")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{result.target_spec}: target statistics (sigma = {result.sigma:g})", fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def trace(result, *, max_dims: int = 6, path=None):
    """Per latent dimension: the trace of every chain (left) and each chain's rank histogram (right).

    Well-mixed chains give overlapping traces and flat, similar rank histograms.
    """
    z = result.z
    d = min(z.shape[-1], max_dims)
    fig, axes = plt.subplots(d, 2, figsize=(9, 1.5 * d), squeeze=False, gridspec_kw=dict(width_ratios=[3, 1]))
    colors = sns.color_palette("husl", result.num_chains)
    healthy = result.healthy_chains
    for i in range(d):
        zi = z[healthy][..., i]
        ranks = torch.argsort(torch.argsort(zi.flatten())).reshape(zi.shape).float()
        bins = np.linspace(0, zi.numel(), 21)
        for k, c in enumerate(healthy):
            axes[i, 0].plot(zi[k].numpy(), lw=0.6, color=colors[c], alpha=0.8)
            axes[i, 1].hist(ranks[k].numpy(), bins=bins, histtype="step", color=colors[c], lw=0.8)
        axes[i, 0].set_ylabel(f"z[{i}]", fontsize=8)
        axes[i, 1].set_yticks([])
    axes[0, 0].set_title("trace per chain", fontsize=8)
    axes[0, 1].set_title("rank histogram per chain", fontsize=8)
    fig.suptitle(f"{result.target_spec}: {len(healthy)} chains x {result.num_draws} draws", fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def montage(rows, *, cols: int = 8, titles=None, path=None, suptitle: str | None = None):
    """Image rows side by side: ``rows`` is a list of ``(label, images [n, C, H, W])``; each row shows up to ``cols``
    images, with the row's label on the left and, when ``titles`` (a list of lists of strings) is given, a small
    title over each image."""
    n_rows = max(len(rows), 1)
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.1 * cols + 1.2, 1.25 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for r, (label, images) in enumerate(rows):
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        for c, img in enumerate(images[:cols]):
            img = img[0] if img.dim() == 3 and img.shape[0] == 1 else img.permute(1, 2, 0) if img.dim() == 3 else img
            axes[r, c].imshow(img.clamp(0, 1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            if titles is not None and c < len(titles[r]):
                axes[r, c].set_title(titles[r][c], fontsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _finish(fig, path)


def _gray(img: torch.Tensor) -> np.ndarray:
    img = img.detach().cpu()
    return (img[0] if img.dim() == 3 else img).clamp(0, 1).numpy()


def _image_row(axes, images, titles=None, fontsize: int = 8) -> None:
    """Gray or RGB arrays ``images`` in a row of ``axes`` without ticks, titled with ``titles`` when given."""
    for j, (ax, img) in enumerate(zip(axes, images)):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[j], fontsize=fontsize)


def contrastive(x, boundary, explanation, *, labels=None, path=None, title: str | None = None):
    """CDeepEx's figure, one row per input: the input, the boundary point, and the explanation
    ``G(z0) - G(z_e)`` drawn over the faded input in red (ink the input has and the boundary point lacks) and blue
    (ink the boundary point adds). ``labels``: one string per row."""
    n = len(x)
    fig, axes = plt.subplots(n, 3, figsize=(4.2, 1.45 * n), squeeze=False)
    scale = float(explanation.abs().max().clamp_min(1e-6))
    for i in range(n):
        _image_row(axes[i], (_gray(x[i]), _gray(boundary[i]), _red_blue(x[i], explanation[i], scale)),
                   ("input", "boundary", "why not") if i == 0 else None, fontsize=8)
        if labels is not None:
            axes[i, 0].set_ylabel(labels[i], rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8, y=1.0 + 0.12 / n)
    return _finish(fig, path)


def walk(images, p_target, distance, *, steepness=None, midpoint=None, switch=None, cols: int = 8, path=None,
         title: str | None = None):
    """One latent walk (xGEMs): ``cols`` images along it, and ``p_target`` against the distance from the start with
    the fitted logistic confidence manifold. ``images [T, ...]``, ``p_target [T]``, ``distance [T]``."""
    t = len(images)
    picks = np.unique(np.linspace(0, t - 1, min(cols, t)).round().astype(int))
    fig = plt.figure(figsize=(1.15 * len(picks), 3.6))
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1, 1.6])
    for j, k in enumerate(picks):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(_gray(images[k]), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"d={float(distance[k]):.2f}\np={float(p_target[k]):.2f}", fontsize=6,
                     color="tab:red" if switch is not None and k >= switch >= 0 else "black")
    ax = fig.add_subplot(grid[1, :])
    d, p = np.asarray(distance, dtype=float), np.asarray(p_target, dtype=float)
    ax.plot(d, p, ".", ms=3, label="path")
    if steepness is not None:
        grid_d = np.linspace(0, d.max(), 200)
        ax.plot(grid_d, 1 / (1 + np.exp(-float(steepness) * (grid_d - float(midpoint)))), "k--", lw=1,
                label=f"logistic fit: k={float(steepness):.2f}, d0={float(midpoint):.2f}")
    if switch is not None and switch >= 0:
        ax.axvline(d[switch], color="tab:red", lw=0.8, label="label switches")
    ax.set_xlabel("distance from the start ||z - z0||")
    ax.set_ylabel("p(target)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _finish(fig, path)


def _red_blue(base: torch.Tensor, d: torch.Tensor, scale: float) -> np.ndarray:
    """An RGB image: ``d / scale`` (in [-1, 1]) over the faded ``base``, positive in red and negative in blue."""
    faded = _gray(base) * 0.35
    d = d.detach().cpu() / scale
    d = (d[0] if d.dim() == 3 else d).numpy()
    return np.stack([faded + np.clip(d, 0, None), faded, faded + np.clip(-d, 0, None)], -1).clip(0, 1)


def intervention(x, from_g, from_codes, from_new, *, labels=None, path=None, title: str | None = None):
    """Interventions on a hidden layer, one row per input: the input ``x``, the explanatory decoder's images of its
    hidden activations ``g(x)``, of their discrete codes ``dec(c)`` and of the intervened codes ``dec(c')``, and
    the difference ``dec(c') - dec(c)`` (red: ink the intervention adds; blue: ink it removes). All ``[n, C, H, W]``;
    ``labels``: one string per row (e.g. the changed latents), written beside the difference."""
    n = len(x)
    height = 1.45 * n + 0.55
    fig, axes = plt.subplots(n, 5, figsize=(7.6, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.45 / height, bottom=0.02, hspace=0.25)
    scale = float((from_new - from_codes).abs().max().clamp_min(1e-6))
    names = ("input x", "expl. g(x)", "expl. dec(c)", "expl. dec(c')", "dec(c') - dec(c)")
    for i in range(n):
        _image_row(axes[i], (_gray(x[i]), _gray(from_g[i]), _gray(from_codes[i]), _gray(from_new[i]),
                             _red_blue(from_codes[i], from_new[i] - from_codes[i], scale)),
                   names if i == 0 else None, fontsize=7)
        if labels is not None:
            axes[i, 4].text(1.08, 0.5, labels[i], transform=axes[i, 4].transAxes, fontsize=6.5, va="center")
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.06 / height, va="top")
    return _finish(fig, path)


def concepts(counts, *, row_labels=None, path=None, title: str | None = None, fmt: str = ".2f"):
    """A heatmap of ``counts [rows, K]``: how often each discrete latent (columns) is changed to reach each class
    (rows); ``row_labels`` name the rows."""
    counts = np.asarray(counts, dtype=float)
    fig, ax = plt.subplots(figsize=(0.42 * counts.shape[1] + 1.6, 0.42 * counts.shape[0] + 1.0))
    sns.heatmap(counts, annot=True, fmt=fmt, cmap="rocket_r", cbar=False, ax=ax, annot_kws=dict(fontsize=6),
                yticklabels=row_labels if row_labels is not None else "auto")
    ax.set_xlabel("discrete latent k")
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)
