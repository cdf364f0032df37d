"""Datasets: the IDX reader, (Fashion-)MNIST loaders and the bundled 8x8 digits."""

from .idx import read_idx
from .loaders import DatasetNotFoundError, load_digits, load_fashion_mnist, load_mnist

__all__ = ["read_idx", "load_fashion_mnist", "load_mnist", "load_digits",
           "DatasetNotFoundError"]
