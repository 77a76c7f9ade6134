"""Datasets by name, as (train, test) pairs of torch Datasets with normalised float images and int64 labels.

- ``cifar10``, ``cifar100``: torchvision's files in a data directory; downloaded only when asked.
- ``fashion_mnist``: the standard idx files, read directly; found without configuration where Debian's
  ``dataset-fashion-mnist`` package puts them (scripts/install-offline-data.sh installs it).
- ``digits``: scikit-learn's bundled 8x8 digits, split 80/20 (stratified, fixed seed); needs nothing.
- ``synthetic``: seeded Gaussian images of any shape, class count and length, generated per item.

Real images are scaled to [0, 1] and normalised per channel with the mean and std of their training
split. Those that fit in memory after the optional resize are transformed once and returned as
``TensorDataset``s; larger ones (e.g. CIFAR at 224x224) keep their uint8 pixels and transform per item.
Every dataset carries ``.info``, a `DatasetInfo`.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from dpbench.errors import DpbenchError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                       "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
CIFAR_URLS = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}
DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED = 0.2, 0
PRETRANSFORM_LIMIT_BYTES = 2 * 1024**3
"""Largest float image tensor of one split that is built in memory; beyond it, transform per item."""
SYNTHETIC_DEFAULTS = {"channels": 3, "image_size": 32, "num_classes": 10, "train_size": 50000,
                      "test_size": 10000, "seed": 0}
SYNTHETIC_CLASS_OFFSET = 0.5
"""Std of the per-class, per-channel shift of the synthetic images' mean (makes them learnable)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, where it came from, and what a model must accept."""

    name: str
    description: str
    source: str
    num_classes: int
    image_shape: tuple[int, int, int]
    """(C, H, W) of the images returned, after any resize."""
    native_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalisation: str
    train_size: int
    test_size: int

    def as_dict(self) -> dict:
        """A JSON-ready dict (for result files)."""
        return asdict(self)


def dataset_names() -> list[str]:
    """Every name `load_datasets` accepts."""
    return ["cifar10", "cifar100", "digits", "fashion_mnist", "synthetic"]


def default_data_dir() -> Path:
    """Where datasets live when no root is given: $DPBENCH_DATA_DIR, else ./data."""
    return Path(os.environ.get("DPBENCH_DATA_DIR", "data"))


def find_fashion_mnist(root: str | Path | None = None) -> Path | None:
    """The first directory holding the four Fashion-MNIST idx files (gzipped or not), or None.

    Looked for in `root`, `root`/FashionMNIST/raw and `root`/fashion-mnist (root defaults to
    `default_data_dir()`), then in Debian's /usr/share/datasets/fashion-mnist.
    """
    base = Path(root) if root is not None else default_data_dir()
    for directory in (base, base / "FashionMNIST" / "raw", base / "fashion-mnist", DEBIAN_FASHION_MNIST):
        if all(_idx_file(directory, stem) is not None for stem in FASHION_MNIST_FILES.values()):
            return directory
    return None


def default_offline_dataset() -> str:
    """The real dataset available without a network: "fashion_mnist" where found, else "digits"."""
    return "fashion_mnist" if find_fashion_mnist() is not None else "digits"


def load_datasets(name: str, root: str | Path | None = None, *, download: bool = False,
                  image_size: int | None = None, **synthetic_options) -> tuple[Dataset, Dataset]:
    """The (train, test) pair of dataset `name`, each with `.info`; `image_size` resizes to a square.

    `synthetic_options` (synthetic only): channels, image_size, num_classes, train_size, test_size, seed.
    """
    if name not in dataset_names():
        raise DpbenchError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DpbenchError(f"image_size must be a whole number >= 1, got {image_size!r}")
    if name == "synthetic":
        return _synthetic(image_size=image_size, **synthetic_options)
    if synthetic_options:
        raise DpbenchError(f"options {sorted(synthetic_options)} apply only to the synthetic dataset, not {name!r}")
    if name in CIFAR_URLS:
        raw, source = _cifar(name, Path(root) if root is not None else default_data_dir(), download)
        description = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
        num_classes, scale = (10 if name == "cifar10" else 100), 255.0
    elif name == "fashion_mnist":
        raw, source = _fashion_mnist(root)
        description, num_classes, scale = "Fashion-MNIST (real, offline)", 10, 255.0
    else:
        raw, source = _digits()
        description, num_classes, scale = "scikit-learn 8x8 digits (real, bundled)", 10, 16.0
    (train_x, train_y), (test_x, test_y) = raw
    mean, std = _channel_stats(train_x, scale)
    native = tuple(train_x.shape[1:])
    shape = native if image_size is None else (native[0], image_size, image_size)
    info = DatasetInfo(name=name, description=description, source=source, num_classes=num_classes,
                       image_shape=shape, native_shape=native, mean=mean, std=std,
                       normalisation=f"pixels / {scale:g}, then per channel (x - mean) / std of the training split"
                       + ("" if shape == native else f", resized bilinearly to {shape[1]}x{shape[2]}"),
                       train_size=len(train_y), test_size=len(test_y))
    return tuple(_image_dataset(x, y, scale, info) for x, y in ((train_x, train_y), (test_x, test_y)))


def load_dataset(name: str, root: str | Path | None = None, train: bool = True, **options) -> Dataset:
    """The train (or test) split of `load_datasets(name, root, **options)`."""
    train_set, test_set = load_datasets(name, root, **options)
    return train_set if train else test_set


# ------------------------------------------------------------------------------------------------ images

def _channel_stats(raw: torch.Tensor, scale: float, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of raw / scale over [N, C, H, W], in float64 chunks."""
    total = torch.zeros(raw.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in raw.split(chunk):
        x = part.to(torch.float64) / scale
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = raw.shape[0] * raw.shape[2] * raw.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _transform(raw: torch.Tensor, scale: float, info: DatasetInfo) -> torch.Tensor:
    """Float, normalised and resized images from raw [N, C, H, W] pixels."""
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (raw.to(torch.float32) / scale - mean) / std
    if info.image_shape != info.native_shape:
        downsampling = info.image_shape[1] < info.native_shape[1]
        x = F.interpolate(x, size=info.image_shape[1:], mode="bilinear", align_corners=False, antialias=downsampling)
    return x


class ImageTensorDataset(TensorDataset):
    """Images transformed once, held as a float tensor, with their int64 labels and `info`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo):
        super().__init__(images, labels)
        self.info = info


class LazyImageDataset(Dataset):
    """uint8 images transformed item by item (for splits too large to hold as floats), with `info`."""

    def __init__(self, raw: torch.Tensor, labels: torch.Tensor, scale: float, info: DatasetInfo):
        self.raw, self.labels, self.scale, self.info = raw, labels, scale, info

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _transform(self.raw[index:index + 1], self.scale, self.info)[0], self.labels[index]


def _image_dataset(raw: torch.Tensor, labels: torch.Tensor, scale: float, info: DatasetInfo) -> Dataset:
    c, h, w = info.image_shape
    if len(labels) * c * h * w * 4 > PRETRANSFORM_LIMIT_BYTES:
        return LazyImageDataset(raw, labels, scale, info)
    images = torch.cat([_transform(part, scale, info) for part in raw.split(4096)]) if len(raw) else \
        torch.empty(0, c, h, w)
    return ImageTensorDataset(images, labels, info)


# ------------------------------------------------------------------------------------------------ sources

Split = tuple[torch.Tensor, torch.Tensor]


def _cifar(name: str, root: Path, download: bool) -> tuple[tuple[Split, Split], str]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as err:
        how = (f"pass --download (dpbench train ... --download) or call torchvision.datasets."
               f"{cls.__name__}({str(root)!r}, download=True) on a machine with a network; either fetches "
               f"{CIFAR_URLS[name]} and extracts it into {root}")
        if download:
            raise DpbenchError(f"could not download {name} into {root} ({err}); get {CIFAR_URLS[name]} and extract "
                               f"it there") from None
        raise DpbenchError(f"{name} is not in {root} (looked for {root / cls.base_folder}); to get it, {how}") from None
    except OSError as err:
        raise DpbenchError(f"could not {'download' if download else 'read'} {name} in {root}: {err}") from None
    raw = tuple((torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets, dtype=torch.int64))
                for s in splits)
    return raw, str(root / cls.base_folder)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format, gzipped or not) of unsigned bytes as an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise DpbenchError(f"cannot read {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DpbenchError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)) if len(data) >= header else ()
    if len(data) < header or len(data) - header != int(np.prod(shape)):
        raise DpbenchError(f"{path} is truncated or corrupt (header says shape {shape}, "
                           f"{len(data) - header} bytes of data)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _fashion_mnist(root: str | Path | None) -> tuple[tuple[Split, Split], str]:
    directory = find_fashion_mnist(root)
    if directory is None:
        base = Path(root) if root is not None else default_data_dir()
        raise DpbenchError(
            f"Fashion-MNIST not found in {base}, {base / 'FashionMNIST' / 'raw'} or {DEBIAN_FASHION_MNIST}; "
            f"install Debian's package (sudo apt-get install dataset-fashion-mnist, or scripts/install-offline-data.sh) "
            f"or put {', '.join(f + '.gz' for f in FASHION_MNIST_FILES.values())} in {base}")
    arrays = {key: read_idx(_idx_file(directory, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    raw = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DpbenchError(f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, "
                               f"labels {labels.shape}")
        raw.append((torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))))
    return tuple(raw), str(directory)


def _digits() -> tuple[tuple[Split, Split], str]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None]  # integer grey levels 0..16
    splits = train_test_split(images, digits.target, test_size=DIGITS_TEST_FRACTION, stratify=digits.target,
                              random_state=DIGITS_SPLIT_SEED)
    train_x, test_x, train_y, test_y = (torch.from_numpy(np.ascontiguousarray(a)) for a in splits)
    raw = ((train_x, train_y.to(torch.int64)), (test_x, test_y.to(torch.int64)))
    return raw, f"sklearn.datasets.load_digits, stratified {1 - DIGITS_TEST_FRACTION:.0%}/{DIGITS_TEST_FRACTION:.0%} " \
                f"split with seed {DIGITS_SPLIT_SEED}"


# ------------------------------------------------------------------------------------------------ synthetic

class SyntheticImages(Dataset):
    """Seeded images N(0, 1) + a per-class, per-channel offset; item i is generated from (seed, split, i)."""

    def __init__(self, length: int, channels: int, image_size: int, num_classes: int, seed: int, split: int,
                 info: DatasetInfo):
        self.length, self.shape, self.num_classes, self.info = length, (channels, image_size, image_size), num_classes, info
        self.seed, self.split = seed, split
        offsets = np.random.default_rng([seed]).standard_normal((num_classes, channels), dtype=np.float32)
        self.class_offsets = SYNTHETIC_CLASS_OFFSET * torch.from_numpy(offsets)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic images")
        # numpy's SeedSequence keeps all of (seed, split, index); torch's CPU generator keeps only 32 bits.
        rng = np.random.default_rng([self.seed, self.split, index % self.length])
        label = int(rng.integers(self.num_classes))
        image = torch.from_numpy(rng.standard_normal(self.shape, dtype=np.float32)) + self.class_offsets[label].view(-1, 1, 1)
        return image, torch.tensor(label, dtype=torch.int64)


def _synthetic(image_size: int | None = None, **options) -> tuple[Dataset, Dataset]:
    unknown = set(options) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise DpbenchError(f"unknown synthetic options {sorted(unknown)}; valid: {', '.join(SYNTHETIC_DEFAULTS)}")
    settings = {**SYNTHETIC_DEFAULTS, **options}
    if image_size is not None:
        settings["image_size"] = image_size
    for key, value in settings.items():
        smallest = 0 if key == "seed" else 2 if key == "num_classes" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise DpbenchError(f"synthetic {key} must be a whole number >= {smallest}, got {value!r}")
    c, s = settings["channels"], settings["image_size"]
    info = DatasetInfo(name="synthetic", description=f"synthetic {c}x{s}x{s}, {settings['num_classes']} classes "
                       f"(seed {settings['seed']})", source="generated", num_classes=settings["num_classes"],
                       image_shape=(c, s, s), native_shape=(c, s, s), mean=(0.0,) * c, std=(1.0,) * c,
                       normalisation="none: N(0, 1) pixels plus a per-class channel offset",
                       train_size=settings["train_size"], test_size=settings["test_size"])
    return tuple(SyntheticImages(settings[f"{split}_size"], c, s, settings["num_classes"], settings["seed"], index, info)
                 for index, split in enumerate(("train", "test")))
