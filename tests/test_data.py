"""Datasets: Fashion-MNIST from Debian's package and from any directory, digits, synthetic, CIFAR errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import dpbench.data as data
from dpbench.data import (DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, dataset_names, default_offline_dataset,
                          find_fashion_mnist, load_dataset, load_datasets, read_idx)
from dpbench.errors import DpbenchError


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def fake_fashion_mnist(directory, n_train=12, n_test=5, compress=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": np.arange(n_train) % 10,
              "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": np.arange(n_test) % 10}
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in FASHION_MNIST_FILES.items():
        write_idx(directory / stem, arrays[key], compress)
    return arrays


@pytest.fixture
def no_debian_fashion_mnist(monkeypatch, tmp_path):
    """Hide Debian's copy and point the default data directory at an empty folder."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("DPBENCH_DATA_DIR", str(tmp_path / "empty"))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (scripts/install-offline-data.sh)")
def test_fashion_mnist_from_debian_without_configuration(monkeypatch, tmp_path):
    monkeypatch.setenv("DPBENCH_DATA_DIR", str(tmp_path))  # nothing there: must find Debian's copy
    train, test = load_datasets("fashion_mnist")
    assert (len(train), len(test)) == (60000, 10000)
    assert isinstance(train, TensorDataset)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert train.info.num_classes == 10 and train.info.image_shape == (1, 28, 28)
    assert train.info.source == str(DEBIAN_FASHION_MNIST)
    assert torch.bincount(train.tensors[1]).tolist() == [6000] * 10
    assert abs(train.tensors[0].mean().item()) < 1e-3 and train.tensors[0].std().item() == pytest.approx(1, abs=1e-3)
    assert default_offline_dataset() == "fashion_mnist"


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_any_directory_of_the_standard_files(tmp_path, compress):
    arrays = fake_fashion_mnist(tmp_path / "fm", compress=compress)
    train, test = load_datasets("fashion_mnist", root=tmp_path / "fm")
    assert (len(train), len(test)) == (12, 5) and train.info.source == str(tmp_path / "fm")
    assert train.tensors[1].tolist() == arrays["train_labels"].tolist()
    assert train.tensors[1].dtype == torch.int64
    pixels = arrays["train_images"] / 255.0
    expected = (pixels - pixels.mean()) / pixels.std()
    assert np.allclose(train.tensors[0][:, 0].numpy(), expected, atol=1e-5)
    assert train.info.mean[0] == pytest.approx(pixels.mean())


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", compress=False)
    assert find_fashion_mnist(tmp_path) == tmp_path / "FashionMNIST" / "raw"


def test_fashion_mnist_resized(tmp_path):
    fake_fashion_mnist(tmp_path, n_train=3, n_test=2)
    train, test = load_datasets("fashion_mnist", root=tmp_path, image_size=32)
    assert train[0][0].shape == test[0][0].shape == (1, 32, 32)
    assert train.info.image_shape == (1, 32, 32) and train.info.native_shape == (1, 28, 28)


def test_missing_fashion_mnist_says_how_to_get_it(no_debian_fashion_mnist):
    assert find_fashion_mnist() is None
    assert default_offline_dataset() == "digits"
    with pytest.raises(DpbenchError, match="dataset-fashion-mnist"):
        load_datasets("fashion_mnist")


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(DpbenchError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"not an idx file")
    with pytest.raises(DpbenchError, match="not an idx"):
        read_idx(path)


def test_digits_always_load_with_a_fixed_split():
    train, test = load_datasets("digits")
    again = load_dataset("digits", train=False)
    assert (len(train), len(test)) == (1437, 360)
    assert train.info.image_shape == (1, 8, 8) and train.info.num_classes == 10
    assert torch.equal(test.tensors[0], again.tensors[0]) and torch.equal(test.tensors[1], again.tensors[1])
    assert set(torch.unique(test.tensors[1]).tolist()) == set(range(10))
    assert abs(train.tensors[0].mean().item()) < 1e-5
    assert load_datasets("digits", image_size=32)[0][0][0].shape == (1, 32, 32)


def test_synthetic_is_deterministic_and_any_shape():
    train, test = load_datasets("synthetic", image_size=12, channels=2, num_classes=7, train_size=40,
                                test_size=9, seed=3)
    assert (len(train), len(test)) == (40, 9)
    x, y = train[5]
    assert x.shape == (2, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64 and 0 <= y < 7
    again, _ = load_datasets("synthetic", image_size=12, channels=2, num_classes=7, train_size=40, test_size=9, seed=3)
    assert torch.equal(again[5][0], x) and torch.equal(train[-35][0], x)
    assert not torch.equal(test[5][0], x)
    other_seed, _ = load_datasets("synthetic", image_size=12, channels=2, num_classes=7, train_size=40, seed=4)
    assert not torch.equal(other_seed[5][0], x)
    assert train.info.image_shape == (2, 12, 12) and train.info.num_classes == 7
    with pytest.raises(IndexError):
        train[40]


def test_synthetic_is_lazy_at_large_sizes():
    train, _ = load_datasets("synthetic", image_size=224, train_size=10**9)
    assert len(train) == 10**9 and train[10**9 - 1][0].shape == (3, 224, 224)


def test_synthetic_bad_options():
    with pytest.raises(DpbenchError, match="num_classes"):
        load_datasets("synthetic", num_classes=1)
    with pytest.raises(DpbenchError, match="colour"):
        load_datasets("synthetic", colour=True)
    with pytest.raises(DpbenchError, match="synthetic"):
        load_datasets("digits", num_classes=3)


def test_large_splits_transform_per_item(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path, n_train=6, n_test=2)
    eager, _ = load_datasets("fashion_mnist", root=tmp_path, image_size=16)
    monkeypatch.setattr(data, "PRETRANSFORM_LIMIT_BYTES", 0)
    lazy, _ = load_datasets("fashion_mnist", root=tmp_path, image_size=16)
    assert isinstance(lazy, data.LazyImageDataset) and len(lazy) == 6
    for index in range(6):
        assert torch.allclose(lazy[index][0], eager[index][0], atol=1e-6) and lazy[index][1] == eager[index][1]


def test_missing_cifar_says_how_to_get_it_without_network(tmp_path, monkeypatch):
    import torchvision

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", no_network)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", no_network)
    for name, url in [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz")]:
        with pytest.raises(DpbenchError) as err:
            load_datasets(name, root=tmp_path)
        assert "--download" in str(err.value) and url in str(err.value) and str(tmp_path) in str(err.value)


def test_cifar_arrays_become_normalised_channels_first(tmp_path, monkeypatch):
    """The conversion from torchvision's CIFAR object (its files cannot be faked: MD5-checked)."""
    import torchvision

    class FakeCIFAR10:
        base_folder = "cifar-10-batches-py"

        def __init__(self, root, train, download):
            rng = np.random.default_rng(0 if train else 1)
            self.data = rng.integers(0, 256, (8 if train else 4, 32, 32, 3), dtype=np.uint8)
            self.targets = list(range(8 if train else 4))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    train, test = load_datasets("cifar10", root=tmp_path)
    raw = FakeCIFAR10(tmp_path, True, False).data
    assert train.info.image_shape == (3, 32, 32) and train.info.num_classes == 10 and len(test) == 4
    red = raw[..., 0] / 255.0
    assert np.allclose(train.tensors[0][:, 0].numpy(), (red - red.mean()) / red.std(), atol=1e-5)
    assert train.tensors[1].dtype == torch.int64


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DpbenchError, match="cifar10, cifar100, digits, fashion_mnist, synthetic"):
        load_datasets("mnist")
    assert dataset_names() == ["cifar10", "cifar100", "digits", "fashion_mnist", "synthetic"]


def test_bad_image_size():
    with pytest.raises(DpbenchError, match="image_size"):
        load_datasets("digits", image_size=0)
