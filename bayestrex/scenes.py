"""A hand-defined scene distribution with a procedural renderer: Bayes-TrEx's CLEVR study without Blender.

A scene has ``objects`` slots; each slot is ``[shape, colour, size, x, y, angle]`` (shape, colour and size are
integers stored as floats), so a batch of scenes is a float tensor ``[N, 6 · objects]``:

- :class:`ScenePrior`: shapes uniform over ``shapes`` (a subset of circle / square / triangle), colours uniform,
  sizes small or large, positions uniform in [0.15, 0.85]², angles uniform. ``log_prob`` is 0 on the support (up to
  a constant) and ``-inf`` off it; ``propose`` is the CLEVR sampler's move applied to one random object: a Gaussian
  step on its position and angle, each of its discrete attributes resampled with probability ``resample``
  (symmetric).
- :class:`SceneRenderer`: paints the slots in order (later ones on top) onto an RGB canvas, batched; no gradients
  are needed, the sampler is Metropolis-Hastings (``kernel="mh"``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["ScenePrior", "SceneRenderer", "SHAPES", "COLOURS", "count"]

SHAPES = ("circle", "square", "triangle")
COLOURS = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.7, 0.2], [0.2, 0.4, 0.95], [0.95, 0.85, 0.2], [0.7, 0.3, 0.85],
                        [0.2, 0.85, 0.85]])
SIZES = (0.10, 0.15)  # radius in canvas units
FIELDS = 6  # shape, colour, size, x, y, angle
LOW, HIGH = 0.15, 0.85


class ScenePrior:
    """Uniform scenes of ``objects`` slots with shapes from ``shapes`` (indices into :data:`SHAPES`)."""

    def __init__(self, objects: int = 5, shapes=(0, 1, 2), *, resample: float = 0.2, step_xy: float = 0.05,
                 step_angle: float = 0.3):
        shapes = sorted({int(s) for s in shapes})
        if not shapes or min(shapes) < 0 or max(shapes) >= len(SHAPES):
            raise ValueError(f"shapes must be indices into {SHAPES}, got {shapes}")
        if objects < 1:
            raise ValueError(f"objects must be >= 1, got {objects}")
        self.objects, self.shapes = int(objects), torch.tensor(shapes, dtype=torch.float32)
        self.resample, self.step_xy, self.step_angle = float(resample), float(step_xy), float(step_angle)
        self.latent_dim = FIELDS * self.objects

    def _fields(self, z):
        return z.view(len(z), self.objects, FIELDS)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator
        shape = self.shapes[torch.randint(len(self.shapes), (n, self.objects), generator=g)]
        colour = torch.randint(len(COLOURS), (n, self.objects), generator=g).float()
        size = torch.randint(len(SIZES), (n, self.objects), generator=g).float()
        xy = LOW + (HIGH - LOW) * torch.rand(n, self.objects, 2, generator=g)
        angle = 2 * math.pi * torch.rand(n, self.objects, generator=g)
        return torch.cat([shape[..., None], colour[..., None], size[..., None], xy, angle[..., None]],
                         -1).view(n, -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        f = self._fields(z)
        shape, colour, size, xy = f[..., 0], f[..., 1], f[..., 2], f[..., 3:5]
        ok = torch.isin(shape, self.shapes.to(z)) & (colour == colour.round()) & (colour >= 0)
        ok &= (colour < len(COLOURS)) & ((size == 0) | (size == 1)) & (xy >= LOW).all(-1) & (xy <= HIGH).all(-1)
        ok = ok.all(-1) & torch.isfinite(z).all(-1)
        return torch.where(ok, torch.zeros(len(z), dtype=z.dtype), torch.full((len(z),), -math.inf, dtype=z.dtype))

    def propose(self, z: torch.Tensor, generator: torch.Generator | None = None):
        """CLEVR's moves, one object at a time: a random slot's position and angle get a Gaussian step and each of
        its shape, colour and size is resampled uniformly with probability ``resample``. Symmetric:
        ``log q ratio = 0``. (Moving every object at once is accepted too rarely on a narrow level set.)"""
        g = generator
        n = len(z)
        f = self._fields(z).clone()
        rows, slot = torch.arange(n), torch.randint(self.objects, (n,), generator=g)
        obj = f[rows, slot]
        obj[:, 3:5] += self.step_xy * torch.randn(n, 2, generator=g, dtype=z.dtype)
        obj[:, 5] = (obj[:, 5] + self.step_angle * torch.randn(n, generator=g, dtype=z.dtype)) % (2 * math.pi)
        fresh = self._fields(self.sample(n, g).to(z.dtype))[:, 0]
        flip = torch.rand(n, 3, generator=g) < self.resample
        obj[:, :3] = torch.where(flip, fresh[:, :3], obj[:, :3])
        f[rows, slot] = obj
        return f.view(n, -1), torch.zeros(n, dtype=z.dtype)

    propose.__name__ = "clevr_moves"


def count(z: torch.Tensor, shape: int = 0, objects: int | None = None) -> torch.Tensor:
    """How many slots of each scene hold ``shape`` (default circles): ``[N]``."""
    objects = objects or z.shape[-1] // FIELDS
    return (z.view(len(z), objects, FIELDS)[..., 0].round() == shape).sum(-1)


class SceneRenderer(torch.nn.Module):
    """Renders scene latents ``[N, 6 · objects]`` to RGB images ``[N, 3, size, size]`` in [0, 1] (black ground)."""

    def __init__(self, objects: int = 5, size: int = 32):
        super().__init__()
        self.objects, self.size = int(objects), int(size)
        self.latent_dim = FIELDS * self.objects
        grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        self.register_buffer("v", grid.view(1, size, 1).expand(1, size, size).clone())  # rows: y
        self.register_buffer("u", grid.view(1, 1, size).expand(1, size, size).clone())  # columns: x

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = len(z)
        f = z.view(n, self.objects, FIELDS)
        img = torch.zeros(n, 3, self.size, self.size, dtype=z.dtype, device=z.device)
        colours = COLOURS.to(z)
        for k in range(self.objects):
            shape = f[:, k, 0].round().view(n, 1, 1)
            colour = colours[f[:, k, 1].round().long().clamp(0, len(COLOURS) - 1)]
            r = torch.where(f[:, k, 2].round() > 0.5, SIZES[1], SIZES[0]).to(z).view(n, 1, 1)
            dx, dy = self.u - f[:, k, 3].view(n, 1, 1), self.v - f[:, k, 4].view(n, 1, 1)
            c, s = torch.cos(f[:, k, 5]).view(n, 1, 1), torch.sin(f[:, k, 5]).view(n, 1, 1)
            a, b = c * dx + s * dy, -s * dx + c * dy
            circle = a.square() + b.square() <= r.square()
            square = torch.maximum(a.abs(), b.abs()) <= 0.85 * r
            triangle = (b >= -r / 2) & (math.sqrt(3) * a + b <= r) & (-math.sqrt(3) * a + b <= r)
            mask = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
            img = torch.where(mask[:, None], colour[:, :, None, None], img)
        return img
