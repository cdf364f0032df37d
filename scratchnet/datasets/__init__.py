"""Datasets: the IDX reader, (Fashion-)MNIST loaders, the bundled 8x8 digits, and
sequence data (the adding problem, Debian's fortunes as text)."""

from .idx import read_idx
from .loaders import DatasetNotFoundError, load_digits, load_fashion_mnist, load_mnist
from .sequences import CharVocabulary, adding_problem, load_fortunes, text_windows

__all__ = ["read_idx", "load_fashion_mnist", "load_mnist", "load_digits",
           "DatasetNotFoundError", "adding_problem", "load_fortunes", "CharVocabulary",
           "text_windows"]
