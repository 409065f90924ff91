"""A tiny MNIST-format folder (IDX test set + CSV training subset) written from random digits, for tests."""

import gzip
import struct
from pathlib import Path

import torch

from qkv.data.images import IMAGES_MAGIC, LABELS_MAGIC, MNIST_FILES


def idx_bytes(tensor: torch.Tensor, magic: int) -> bytes:
    return struct.pack(">I" + "I" * tensor.dim(), magic, *tensor.shape) + tensor.to(torch.uint8).numpy().tobytes()


def digit_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images_N28x28 uint8, labels_N): class k is a bright bar at row 2 + 2k, plus noise: easy to learn."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 250
    return images, labels


def write_mnist(directory: Path, n_test: int = 60, n_train: int = 40, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images(n_test, seed=0)

    def write(path: Path, data: bytes) -> None:
        if gz:
            with gzip.open(str(path) + ".gz", "wb") as fh:
                fh.write(data)
        else:
            path.write_bytes(data)
    write(directory / MNIST_FILES["test_images"], idx_bytes(images, IMAGES_MAGIC))
    write(directory / MNIST_FILES["test_labels"], idx_bytes(labels, LABELS_MAGIC))
    train, train_labels = digit_images(n_train, seed=1)
    rows = "".join(",".join(map(str, img.flatten().tolist() + [int(y)])) + "\n" for img, y in zip(train, train_labels))
    write(directory / MNIST_FILES["train_csv"], rows.encode())
    return directory
