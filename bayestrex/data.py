"""Datasets, offline: every loader returns ``(images [N, C, H, W] float in [0, 1], labels [N] long)``.

``digits`` (scikit-learn's 8×8 handwritten digits, 1797 images) is embedded and the default. Its split is fixed:
a stratified 80/20 split with seed 0 (1437 train, 360 test images).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["load", "DATASETS"]


def _digits(split: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    idx = np.arange(len(images))
    train, test = train_test_split(idx, test_size=0.2, stratify=bunch.target, random_state=0)
    sel = train if split == "train" else test
    return torch.from_numpy(images[sel]).unsqueeze(1), torch.from_numpy(bunch.target[sel]).long()


#: dataset name -> loader(split); a new dataset is one function and one line here.
DATASETS = {"digits": _digits}


def load(name: str = "digits", split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split as ``(images, labels)``; ``split`` is ``"train"`` or ``"test"``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS[name](split)
