"""Safe weight files: a ``state_dict`` read with ``torch.load(weights_only=True)`` (no pickled code runs), checked
against the SHA-256 in a JSON file beside it that also holds the architecture's arguments and training figures."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_path
from .architectures import ARCHITECTURES

__all__ = ["save", "load", "sha256", "CheckpointError"]


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, untrusted (would need pickled code) or does not fit the architecture."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: nn.Module, path: str | os.PathLike, **info) -> None:
    """Write ``model``'s weights to ``path`` (``.pt``) and its config, checksum and ``info`` to ``path.json``.

    Both files are written atomically.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
        digest = sha256(tmp)
    meta = dict(arch=type(model).__name__, config=model.config, sha256=digest, torch=torch.__version__, **info)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by :func:`save`, safely; raises :class:`CheckpointError` on any problem."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} (and its {meta_path.name}) not found")
    try:
        meta = json.loads(meta_path.read_text())
        arch, config, digest = ARCHITECTURES[meta["arch"]], meta["config"], meta["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} is corrupt: {e!r}") from None
    if sha256(path) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 does not match the one in {meta_path.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"checkpoint {path} is corrupt or untrusted (refused by weights_only loading): {e}"
                              ) from None
    try:
        model = arch(**config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit a {meta['arch']}({config}): {e}") from None
    model.meta = meta
    return model.eval()
