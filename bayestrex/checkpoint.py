"""Checkpoints of a running sampler: what the driver needs to continue a killed run with the same draws.

A checkpoint holds the iteration reached, the kernel's state, the adaptation's state, the random stream's state
(taken *before* the iteration in progress, so an interrupt inside a step redoes that step), the kept draws so far,
failed chains and counters, and a fingerprint of the run (kernel and its options, target, sigma, shapes, seed and
a hash of the starting points) that a resume must match. Continuing from it repeats exactly the computations an
uninterrupted run makes, so a resumed run's draws are bit-identical to one that was never stopped (same device,
same torch thread count).

File format: a 32-byte SHA-256 of the payload, then the payload written by ``torch.save``; it holds only tensors,
numbers, strings, lists and dicts and is read with ``torch.load(weights_only=True)``: loading runs no pickled code.
Kernel states (NamedTuples of tensors, numbers, dicts, tuples) are encoded as plain lists and rebuilt against a
template of the same kernel's state (:func:`decode`).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from pathlib import Path

import torch

from .io import atomic_path

__all__ = ["Checkpoint", "encode", "decode", "load", "fingerprint", "CHECKPOINT_EVERY"]

#: seconds between periodic checkpoints by default (writing one costs a copy of the draws so far)
CHECKPOINT_EVERY = 60.0
#: bumped when the layout changes; an older checkpoint is refused with a clear error
FORMAT = 1

_NAMEDTUPLE, _TUPLE, _FROZENSET = "__namedtuple__", "__tuple__", "__frozenset__"


def encode(obj):
    """A kernel or adaptation state as nested lists/dicts of CPU tensors and numbers (no classes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return [_NAMEDTUPLE, [encode(v) for v in obj]]
    if isinstance(obj, tuple):
        return [_TUPLE, [encode(v) for v in obj]]
    if isinstance(obj, frozenset):
        return [_FROZENSET, sorted(obj)]
    if isinstance(obj, dict) and all(isinstance(k, (str, int)) for k in obj):
        return {k: encode(v) for k, v in obj.items()}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def decode(template, data, device: torch.device):
    """Rebuild a state from :func:`encode`'s output, taking NamedTuple classes from ``template`` (a state of the
    same kernel, e.g. fresh from ``init``) and putting tensors on ``device``."""
    if isinstance(data, torch.Tensor):
        like = template if isinstance(template, torch.Tensor) else None
        return data.to(device=like.device if like is not None else device)
    if isinstance(data, list) and len(data) == 2 and data[0] == _NAMEDTUPLE:
        if not (isinstance(template, tuple) and hasattr(template, "_fields") and len(template) == len(data[1])):
            raise ValueError("the checkpoint's kernel state does not fit this kernel")
        return type(template)(*(decode(t, d, device) for t, d in zip(template, data[1])))
    if isinstance(data, list) and len(data) == 2 and data[0] == _TUPLE:
        items = template if isinstance(template, tuple) and len(template) == len(data[1]) else [None] * len(data[1])
        return tuple(decode(t, d, device) for t, d in zip(items, data[1]))
    if isinstance(data, list) and len(data) == 2 and data[0] == _FROZENSET:
        return frozenset(data[1])
    if isinstance(data, dict):
        return {k: decode(template.get(k) if isinstance(template, dict) else None, v, device) for k, v in data.items()}
    return data


def fingerprint(kernel, z0: torch.Tensor, *, num_samples: int, warmup: int, seed: int, **extra) -> dict:
    """What identifies a run: a resume must match every entry. ``z0 [C, d]`` enters by its SHA-256 (the starting
    points follow from the models, the target and the seed, so a change of models usually shows there too)."""
    options = {k: (v if isinstance(v, (bool, int, float, str, type(None)))
                   else getattr(v, "__qualname__", type(v).__qualname__))  # a user move: by its name
               for k, v in sorted(vars(kernel).items())}
    z = z0.detach().cpu().contiguous().view(torch.uint8)  # any dtype (bfloat16 has no numpy form)
    return dict(format=FORMAT, kernel=getattr(kernel, "name", type(kernel).__name__), kernel_options=repr(options),
                num_chains=int(z0.shape[0]), latent_dim=int(z0.shape[1]), dtype=str(z0.dtype), num_samples=num_samples,
                warmup=warmup, seed=seed, z0_sha256=hashlib.sha256(z.numpy().tobytes()).hexdigest(),
                **{k: str(v) for k, v in extra.items()})


class Checkpoint:
    """Where and how often a run saves itself: ``path`` (a file), every ``every`` seconds (0: every iteration).

    The driver calls :meth:`due` after each iteration and :meth:`write` when it is due, when warmup ends and when the
    run stops early; :meth:`finish` removes the file once the run's draws are handed back complete.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict, every: float = CHECKPOINT_EVERY):
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0 or math.isinf(every):
            raise ValueError(f"checkpoint_every must be a finite number of seconds >= 0, got {every!r}")
        self.path, self.fingerprint, self.every = Path(path), dict(fingerprint), float(every)
        self.last = time.monotonic()
        self.written = 0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def write(self, snapshot: dict) -> None:
        """Save ``snapshot`` (tensors, numbers, strings, lists, dicts) with the fingerprint, atomically."""
        buffer = io.BytesIO()
        torch.save(dict(snapshot, fingerprint=self.fingerprint), buffer)
        payload = buffer.getvalue()
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(hashlib.sha256(payload).digest() + payload)
        self.last = time.monotonic()
        self.written += 1

    def finish(self) -> None:
        """Remove the checkpoint (a finished run's draws are in its result); one never written is no error."""
        try:
            self.path.unlink(missing_ok=True)
        except NotADirectoryError:  # its folder could not be made (the writes warned already)
            pass


def load(path: str | os.PathLike, fingerprint: dict | None = None, arg: str = "resume") -> dict:
    """Read a checkpoint written by :class:`Checkpoint`; a ``ValueError`` naming ``arg`` when the file is missing,
    damaged, or of another run than ``fingerprint`` describes (the first entry that differs is named)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{arg}: cannot read the checkpoint {path}: {e.strerror or e}") from None
    digest, payload = raw[:32], raw[32:]
    if len(raw) < 32 or hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"{arg}: the checkpoint {path} is damaged (its checksum does not match)")
    try:
        snapshot = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable payload is one error naming the argument
        raise ValueError(f"{arg}: the checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
    saved = snapshot.get("fingerprint", {})
    if saved.get("format") != FORMAT:
        raise ValueError(f"{arg}: the checkpoint {path} has format {saved.get('format')!r}; this bayestrex reads "
                         f"format {FORMAT}")
    if fingerprint is not None:
        for key, value in fingerprint.items():
            if saved.get(key) != value:
                raise ValueError(f"{arg}: the checkpoint {path} is of another run ({key}: {saved.get(key)!r} there, "
                                 f"{value!r} here); pass the same arguments as the run that wrote it")
    return snapshot
