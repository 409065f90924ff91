"""Images for classification: MNIST's IDX files and CSV rows, the split, augmentation and preprocessing.

Legend: N images, B batch, I channels, Y rows, X columns, K classes.

Formats (both read, both checked, every error names the file and the fix):
    IDX (LeCun's):  big-endian header: magic (0x00000803 images, 0x00000801 labels), then the sizes
                    (N, Y, X for images; N for labels); then N*Y*X (or N) unsigned bytes. Gzipped or not.
    CSV:            one image per line, Y*X pixel values 0..255 (row-major) then the label; no header.

The MNIST folder in ../shared/data holds the official 10,000 test images (IDX) and a 5,000-image subset
of the training images (CSV); the other 55,000 training images are not there. ``mnist_splits`` therefore
trains on the 5,000 CSV images plus the first ``test_in_train`` test images, draws the validation loss
curve on the next ``val_images`` test images (nothing is selected on it), and reports accuracy on the
rest, which no step of training has seen:

    test images  0 ............ 5999 | 6000 ... 6999 | 7000 .......... 9999
                 train (+ CSV 5,000)  | val (curve)   | test (reported: 3,000)

Pixels become model inputs with ``preprocess``: scaled to [0, 1], then normalized by the model's
per-channel mean and std (``VisionConfig``). Training batches are augmented with random shifts of up to
``shift`` pixels (zero-filled), a digit moved a little is the same digit.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ..errors import DataError, InputError, require_extra
from ..validation import check_fields

IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801
MNIST_FILES = {"test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
               "train_csv": "mnist_5k_train_subset.csv"}
MNIST_LABELS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class ImageDataConfig:
    test_in_train: int = 6000               # images: the first N official test images also train (the rest never)
    val_images: int = 1000                  # images: the next N test images draw the validation loss curve
    shift: int = 2                          # images: augment training batches with random shifts of up to N pixels

    def __post_init__(self):
        check_fields(self, {"test_in_train": "[0, 10000]", "val_images": "[1, 10000]", "shift": "[0, 14]"})
        if self.test_in_train + self.val_images >= 10000:
            raise DataError(f"test_in_train={self.test_in_train} + val_images={self.val_images} leave no test "
                            f"images of the 10,000 to report accuracy on; lower them")


def _open(path: Path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def find(directory: Path, stem: str) -> Path:
    """DIR/stem or DIR/stem.gz."""
    for p in (directory / stem, directory / (stem + ".gz")):
        if p.is_file():
            return p
    raise DataError(f"{directory} has no {stem}(.gz); point --data at the MNIST folder (../shared/data/mnist)")


def read_idx(path: str | Path, expect: int) -> torch.Tensor:
    """uint8 images_NYX (expect=IMAGES_MAGIC) or labels_N (expect=LABELS_MAGIC) from an IDX file."""
    path = Path(path)
    dims = 3 if expect == IMAGES_MAGIC else 1
    try:
        with _open(path) as fh:
            header = fh.read(4 + 4 * dims)
            data = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} could not be read ({e}); it is truncated or not an IDX file") from None
    if len(header) < 4 + 4 * dims or struct.unpack(">I", header[:4])[0] != expect:
        found = f"0x{struct.unpack('>I', header[:4])[0]:08x}" if len(header) >= 4 else "nothing"
        raise DataError(f"{path} is not an IDX {'image' if dims == 3 else 'label'} file: expected magic number "
                        f"0x{expect:08x} ({expect}) in its first 4 bytes, found {found}; the header is corrupt")
    shape = struct.unpack(">" + "I" * dims, header[4:])
    n = 1
    for s in shape:
        n *= s
    if len(data) != n:
        raise DataError(f"{path}: the header promises {' x '.join(map(str, shape))} = {n:,} bytes but {len(data):,} "
                        f"follow; the file is truncated or corrupt")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(*shape).clone()


def read_csv_images(path: str | Path, side: int = 28, n_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(images_NYX uint8, labels_N) from CSV rows of side*side pixels and a label."""
    path = Path(path)
    width = side * side + 1
    rows, labels = [], []
    try:
        with _open(path) as fh:
            for i, raw in enumerate(fh, start=1):
                line = raw.decode("ascii").strip()
                if not line:
                    continue
                values = line.split(",")
                if len(values) != width:
                    raise DataError(f"{path} line {i} has {len(values)} values but a {side}x{side} image needs "
                                    f"{width} ({side * side} pixels, then the label); fix or drop that line")
                try:
                    numbers = [int(v) for v in values]
                except ValueError:
                    raise DataError(f"{path} line {i} holds a value that is not an integer; fix that line") from None
                if min(numbers[:-1]) < 0 or max(numbers[:-1]) > 255:
                    raise DataError(f"{path} line {i} has a pixel outside 0..255; fix that line")
                if not 0 <= numbers[-1] < n_classes:
                    raise DataError(f"{path} line {i} has label {numbers[-1]}, outside the {n_classes} classes "
                                    f"0..{n_classes - 1}; fix that line")
                rows.append(numbers[:-1])
                labels.append(numbers[-1])
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise DataError(f"{path} could not be read as CSV text ({e}); it is corrupt") from None
    if not rows:
        raise DataError(f"{path} holds no images")
    return torch.tensor(rows, dtype=torch.uint8).view(-1, side, side), torch.tensor(labels)


def check_labels(labels_N: torch.Tensor, n_classes: int, path: Path) -> None:
    bad = ((labels_N < 0) | (labels_N >= n_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: label {int(labels_N[i])} of item {i} is outside the {n_classes} classes "
                        f"0..{n_classes - 1}; the file is corrupt")


def read_mnist_test(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = find(directory, MNIST_FILES["test_images"]), find(directory, MNIST_FILES["test_labels"])
    images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; "
                        f"use files of the same set")
    check_labels(labels, 10, labels_path)
    return images, labels


def mnist_splits(directory: str | Path, dcfg: ImageDataConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "val", "test"}: (images_N1YX uint8, labels_N), split as the module docstring draws it."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"--data {d} is not a folder; point it at the MNIST folder (../shared/data/mnist)")
    test_images, test_labels = read_mnist_test(d)
    if len(test_images) <= dcfg.test_in_train + dcfg.val_images:
        raise DataError(f"{d} has {len(test_images)} test images, too few for test_in_train={dcfg.test_in_train} "
                        f"and val_images={dcfg.val_images}; lower them")
    csv_images, csv_labels = read_csv_images(find(d, MNIST_FILES["train_csv"]), side=test_images.shape[-1])
    a, b = dcfg.test_in_train, dcfg.test_in_train + dcfg.val_images
    return {"train": (torch.cat([csv_images, test_images[:a]])[:, None], torch.cat([csv_labels, test_labels[:a]])),
            "val": (test_images[a:b, None], test_labels[a:b]),
            "test": (test_images[b:, None], test_labels[b:])}


def normalize(pixels_NIYX: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (or [0, 255] float) pixels -> (x / 255 - mean) / std per channel, float32."""
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return (pixels_NIYX.float() / 255.0 - m) / s


def random_shift(pixels_BIYX: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Move each image by up to ``shift`` pixels along each axis (zero-filled): pad, then crop at random."""
    if shift == 0:
        return pixels_BIYX
    B, _, Y, X = pixels_BIYX.shape
    padded = F.pad(pixels_BIYX, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (B, 2), generator=generator)
    return torch.stack([padded[b, :, dy:dy + Y, dx:dx + X] for b, (dy, dx) in enumerate(offsets.tolist())])


class ImageBatches:
    """Batches for the trainer: {"pixels_BIYX": normalized floats, "labels": labels_B}."""
    unit = "img"                                   # the trainer's throughput counts images

    def __init__(self, splits: dict, mean: list[float], std: list[float], shift: int, seed: int):
        self.splits = {name: images for name, (images, _) in splits.items()}
        self.labels = {name: labels for name, (_, labels) in splits.items()}
        self.mean, self.std, self.shift = mean, std, shift
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, split: str, batch_size: int) -> dict:
        idx = torch.randint(0, len(self.splits[split]), (batch_size,), generator=self.generator)
        pixels = self.splits[split][idx]
        if split == "train":
            pixels = random_shift(pixels, self.shift, self.generator)
        return {"pixels_BIYX": normalize(pixels, self.mean, self.std), "labels": self.labels[split][idx]}

    def val_batches(self, batch_size: int, n: int):
        """The first n * batch_size validation images, in order (the same ones at every evaluation)."""
        images, labels = self.splits["val"], self.labels["val"]
        for start in range(0, min(len(images), n * batch_size), batch_size):
            yield {"pixels_BIYX": normalize(images[start:start + batch_size], self.mean, self.std),
                   "labels": labels[start:start + batch_size]}


    def score(self, model) -> dict:
        """Accuracy on the whole validation split (the trainer adds it to each metrics.jsonl row)."""
        correct = 0
        for batch in self.val_batches(256, len(self.splits["val"])):
            correct += int((model(batch["pixels_BIYX"]).logits.argmax(-1) == batch["labels"]).sum())
        return {"val_accuracy": round(correct / len(self.splits["val"]), 5)}


def require_pillow():
    """PIL.Image, or the one-line error naming the vision extra; a command asks before it loads a model."""
    return require_extra("PIL.Image", "vision", "reading an image file", "pillow")


def image_to_pixels(path: str | Path, size: int, channels: int, resample: str = "bilinear",
                    invert: bool = False) -> tuple[torch.Tensor, str]:
    """(pixels_1IYX uint8, a note on what was changed) from an image file, via Pillow: converted to the
    model's channels (L or RGB) and resized to size x size when it is another size."""
    Image = require_pillow()

    path = Path(path)
    if path.is_dir():
        raise InputError(f"--image {path} is a directory; pass an image file in it (PNG, JPEG, ...)")
    if not path.is_file():
        raise InputError(f"--image {path} does not exist; pass an image file (PNG, JPEG, ...)")
    try:
        with Image.open(path) as im:
            im.load()
            original = (im.size, im.mode)
            im = im.convert({1: "L", 3: "RGB"}.get(channels, "RGBA"))
            if im.size != (size, size):
                im = im.resize((size, size), RESAMPLE[resample])
    except (Image.UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"--image {path} could not be read as an image ({e}); pass a PNG or JPEG file") from None
    pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, channels)
    pixels = pixels.permute(2, 0, 1)[None].clone()
    if invert:
        pixels = 255 - pixels
    notes = []
    if original[0] != (size, size):
        notes.append(f"resized from {original[0][0]}x{original[0][1]} to the model's {size}x{size}")
    if original[1] != im.mode:
        notes.append(f"converted from {original[1]} to {im.mode}")
    return pixels, "; ".join(notes)


def background_note(pixels_1IYX: torch.Tensor, mean: list[float], inverted: bool) -> str:
    """A note when the image is mostly light but the model learned on dark images (MNIST: light digits on
    black, mean 0.13): a dark digit on white paper then gets a confident, wrong class with no other sign."""
    median = float(pixels_1IYX.float().median()) / 255
    if max(mean) >= 0.3 or median <= 0.5:
        return ""
    fix = "drop --invert" if inverted else "pass --invert"
    return (f"the image is mostly light (median {median:.2f}) but the model learned on dark images (mean "
            f"{max(mean):.2f}): if it is dark on light, {fix}")


RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}       # Pillow's filter numbers (Image.Resampling)
