"""Checks of the command line's arguments before any work (loading models, sampling, training, writing files).

:func:`check` reads the parsed ``argparse`` namespace of any subcommand and raises one ``ValueError`` naming the first
bad option: counts below their minimum, NaN/inf/negative widths, targets that do not parse or do not fit the
dataset's classes, output and weight paths that are files where a folder is expected. :func:`read_image` reads an
``--image`` file or says in one line why it cannot. The rules are keyed by the option's ``dest``, so one table serves
every subcommand that has the option.
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["check", "read_image", "INT_MIN", "FLOAT_RANGE"]

#: integer options and their smallest allowed value
INT_MIN = {"chains": 1, "samples": 1, "warmup": 0, "max_tree_depth": 1, "max_steps": 1, "jobs": 1, "replicates": 1,
           "draws": 1, "outer": 1, "inner": 1, "workers": 1, "index": 0, "max_radius": 0}
#: float options: (low, high, whether low itself is allowed); all must be finite
FLOAT_RANGE = {"sigma": (0.0, math.inf, True), "margin": (0.0, math.inf, True), "prior_scale": (0.0, math.inf, False),
               "step": (0.0, math.inf, False), "flip_prob": (0.0, 1.0, False)}
#: options that name a target (a list for ``demo --targets``); ``xgems --target`` is a class index instead
TARGET_OPTIONS = ("target", "statistic", "targets")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_numbers(args) -> None:
    for dest, low in INT_MIN.items():
        value = getattr(args, dest, None)
        if value is not None and value < low:
            raise ValueError(f"{_flag(dest)} must be an integer >= {low}, got {value}")
    for dest, (low, high, closed) in FLOAT_RANGE.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        above = value >= low if closed else value > low
        if not (above and value < high and math.isfinite(value)):  # also refuses NaN
            where = (f"in {'[' if closed else '('}{low:g}, {high:g})" if math.isfinite(high)
                     else f"{'>=' if closed else '>'} {low:g}")
            raise ValueError(f"{_flag(dest)} must be a finite number {where}, got {value}")
    if getattr(args, "sigma", None) == 0:
        _check_zero_sigma(args)


def _check_zero_sigma(args) -> None:
    """``--sigma 0`` (the level set itself) only with a kernel that samples it."""
    from .kernels import KERNELS

    kernel = getattr(args, "kernel", None)
    if kernel in KERNELS and getattr(KERNELS[kernel](), "allows_zero_sigma", False):
        return
    able = sorted(k for k, make in KERNELS.items() if getattr(make(), "allows_zero_sigma", False))
    which = f"kernel {kernel!r}" if kernel else f"bayestrex {args.command}"
    raise ValueError(f"--sigma 0 is the level set itself, which {which} cannot sample; pass a sigma > 0"
                     + (f" (or --kernel {', '.join(able)})" if kernel else ""))


def _check_targets(args) -> None:
    from .data import CLASS_NAMES
    from .targets import parse

    classes = len(CLASS_NAMES.get(getattr(args, "dataset", None), ())) or None
    for dest in TARGET_OPTIONS:
        values = getattr(args, dest, None)
        for text in values if isinstance(values, list) else [values]:
            if not isinstance(text, str):
                continue
            try:
                target = parse(text)
                if classes:
                    target.validate(classes)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{_flag(dest)} {text!r}: {e}") from None


def _check_paths(args) -> None:
    command = args.command
    out = getattr(args, "out", None)
    if out is not None and command == "report":
        if Path(out).is_dir():
            raise ValueError(f"--out {out} is a folder; pass the HTML file to write, e.g. {Path(out) / 'report.html'}")
    elif out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; pass a folder for the run's files")
    weights = getattr(args, "weights_dir", None)
    if weights is not None and Path(weights).exists() and not Path(weights).is_dir():
        name = "--weights-dir/--out" if command == "train" else "--weights-dir"
        raise ValueError(f"{name} {weights} is a file, not a folder of model weights")
    root = getattr(args, "data_root", None)
    if root is not None and Path(root).exists() and not Path(root).is_dir():  # a missing one: the data module says
        raise ValueError(f"--data-root {root} is a file, not a folder of the dataset's IDX files")


def check(args) -> None:
    """Raise ``ValueError`` naming the first bad option of a parsed command line (any subcommand)."""
    _check_numbers(args)
    _check_targets(args)
    _check_paths(args)


def read_image(path: str, arg: str = "--image"):
    """The grayscale image at ``path`` as a float tensor ``[H, W]`` in ``[0, 1]`` (RGB(A) averaged, 8-bit scaled);
    a missing, empty, non-file or undecodable path raises one ``ValueError`` naming ``arg``."""
    import matplotlib.image
    import torch

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{arg} {path}: no such file")
    if not p.is_file():
        raise ValueError(f"{arg} {path} is a folder, not an image file")
    if p.stat().st_size == 0:
        raise ValueError(f"{arg} {path} is an empty file, not an image")
    try:
        pixels = matplotlib.image.imread(p)
    except Exception as e:  # noqa: BLE001 - PIL and matplotlib raise many types for files they cannot decode
        why = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{arg} {path} is not a readable image file (PNG, JPEG, ...): {type(e).__name__}: {why}"
                         ) from None
    img = torch.as_tensor(pixels, dtype=torch.float32)
    if img.dim() == 3:  # RGB(A) -> gray
        img = img[..., :3].mean(-1)
    if img.dim() != 2:
        raise ValueError(f"{arg} {path} has pixel array shape {tuple(pixels.shape)}; expected a 2-D image")
    return img / 255.0 if img.max() > 1 else img
