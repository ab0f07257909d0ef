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

from ._util import atomic_path  # noqa: E402

__all__ = ["image_grid", "statistic_hist", "trace", "montage", "save"]


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


def image_grid(result, generator=None, *, n: int = 32, cols: int = 8, path=None):
    """A grid of ``n`` draws (spread over chains and draws), each titled with its two most probable classes."""
    healthy = [c for c in range(result.num_chains) if c not in result.failed_chains]
    picks = [(healthy[c], d) for c, d in _spread(len(healthy), result.num_draws, n)]
    x = result.images(generator)
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
    fig.suptitle(f"{result.target}: draws (red title = outside tolerance); attainment {result.attainment:.0%}",
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
    healthy = [c for c in range(result.num_chains) if c not in result.failed_chains]
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
    fig.suptitle(f"{result.target}: target statistics (sigma = {result.sigma:g})", fontsize=9)
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
    healthy = [c for c in range(result.num_chains) if c not in result.failed_chains]
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
    fig.suptitle(f"{result.target}: {len(healthy)} chains x {result.num_draws} draws", fontsize=9)
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
