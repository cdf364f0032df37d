"""Loaders for Fashion-MNIST, MNIST and the bundled 8x8 digits.

Every loader returns ``((X_train, y_train), (X_test, y_test))`` with X float32
in [0, 1] of shape (N, features) and y int64 of shape (N,); with ``flat=False``
X holds images (N, 1, height, width), as convolutional layers take them; with
``sequences=True`` X holds (N, height, width): each image's rows as time steps
of a sequence, as recurrent layers take them.
"""

import functools
import gzip
import hashlib
import io
import math
import os
import shutil
import tempfile
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np

from .idx import read_idx

# Where Debian's dataset packages install the files (a public convention).
DEBIAN_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Zalando's bucket through its HTTPS (REST) endpoint: the website endpoint
# http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ serves the same
# files but only over plain HTTP.
FASHION_MNIST_URL = "https://fashion-mnist.s3.eu-central-1.amazonaws.com/"
FASHION_MNIST_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# MNIST is checked with MD5: these are the sums published with the dataset
# (and used by torchvision); we have no SHA-256s from a source we verified.
# MD5 still catches corrupt or truncated downloads.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# name -> (title, base URL, hash algorithm, digests, Debian package or None)
_SOURCES = {
    "fashion-mnist": ("Fashion-MNIST", FASHION_MNIST_URL, "sha256",
                      FASHION_MNIST_SHA256, "dataset-fashion-mnist"),
    "mnist": ("MNIST", MNIST_URL, "md5", MNIST_MD5, None),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files were not found in any of the places searched."""


def _cache_dir():
    """The user cache, ``$XDG_CACHE_HOME/scratchnet`` or ``~/.cache/scratchnet``."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):  # the XDG spec says ignore relative paths
        base = Path.home() / ".cache"
    return Path(base) / "scratchnet"


def _search_dirs(name, data_dir):
    """Directories to look in, in order; only ``data_dir`` when it is given."""
    if data_dir is not None:
        return [Path(data_dir)]
    dirs = []
    env = os.environ.get("SCRATCHNET_DATA")
    if env:
        dirs += [Path(env), Path(env) / name]
    return dirs + [DEBIAN_DIRS[name], _cache_dir() / name]


def _find_files(directory):
    """Map each stem to its ``.gz`` or raw file in ``directory``; None if any is missing."""
    found = {}
    for stem in _STEMS:
        for path in (directory / f"{stem}.gz", directory / stem):
            if path.is_file():
                found[stem] = path
                break
        else:
            return None
    return found


def _read_split(images_path, labels_path):
    """Read one split: X float32 (N, 784) in [0, 1], y int64 (N,)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.dtype} {images.shape}, "
                         "expected uint8 (N, 28, 28)")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: labels have shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but "
                         f"{labels_path} has {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{labels_path}: labels outside 0..9")
    X = images.reshape(len(images), 28 * 28).astype(np.float32)
    X /= 255  # in place: avoids a second 188 MB temporary for the training set
    return X, labels.astype(np.int64)


def _not_found_message(name, dirs, download_dir):
    title, _, _, _, package = _SOURCES[name]
    lines = [f"{title} not found. Looked for {', '.join(s + '[.gz]' for s in _STEMS)} in:"]
    lines += [f"  {d}" for d in dirs]
    lines.append("To get it, do one of:")
    if package:
        lines.append(f"  - apt-get install {package}   (Debian/Ubuntu)")
    lines.append(f"  - pass download=True (--download on the CLI) to fetch it into {download_dir}")
    lines.append("  - set SCRATCHNET_DATA to a directory holding the files")
    return "\n".join(lines)


def _fetch(url, dest):
    """Download ``url`` to the file ``dest`` (tests replace this to stay offline)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def _download_file(url, target, algorithm, expected):
    """Fetch ``url`` to ``target`` via a temporary file, kept only if its digest matches."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    os.close(fd)
    try:
        _fetch(url, tmp)
        with open(tmp, "rb") as f:
            got = hashlib.file_digest(f, algorithm).hexdigest()
        if got != expected:
            raise ValueError(f"{url}: {algorithm} is {got}, expected {expected}; "
                             "download discarded")
        os.replace(tmp, target)  # atomic: a half-written file never has the real name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(name, dest):
    """Fetch the missing files of dataset ``name`` into the directory ``dest``."""
    _, base_url, algorithm, digests, _ = _SOURCES[name]
    dest.mkdir(parents=True, exist_ok=True)
    for stem in _STEMS:
        if not (dest / stem).is_file() and not (dest / f"{stem}.gz").is_file():
            filename = f"{stem}.gz"
            _download_file(base_url + filename, dest / filename, algorithm, digests[filename])


def _load_idx_dataset(name, data_dir, download):
    dirs = _search_dirs(name, data_dir)
    # An explicit directory is also where a download goes; otherwise the cache.
    download_dir = dirs[0] if data_dir is not None else _cache_dir() / name
    for d in dirs:
        files = _find_files(d)
        if files:
            break
    else:
        if not download:
            raise DatasetNotFoundError(_not_found_message(name, dirs, download_dir))
        _download(name, download_dir)
        files = _find_files(download_dir)
    return (_read_split(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"]),
            _read_split(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]))


def _as_images(splits, flat, side, sequences=False):
    """``splits`` as they are (flat), with X viewed as (N, 1, side, side) images,
    or as (N, side, side) sequences of rows (``sequences``)."""
    if sequences:
        if not flat:
            raise ValueError("give flat=False (images) or sequences=True (rows as time "
                             "steps), not both")
        return tuple((X.reshape(len(X), side, side), y) for X, y in splits)
    if flat:
        return splits
    return tuple((X.reshape(len(X), 1, side, side), y) for X, y in splits)


def load_fashion_mnist(data_dir=None, download=False, flat=True, sequences=False):
    """Load Fashion-MNIST (Zalando's 28x28 grey clothing images, 10 classes).

    Returns ``((X_train, y_train), (X_test, y_test))``: X float32 in [0, 1] of
    shape (60000, 784) and (10000, 784), y int64 in 0..9 of shape (N,).

    Looks in ``data_dir`` only, if given; otherwise in ``$SCRATCHNET_DATA`` (and
    its ``fashion-mnist`` subfolder), ``/usr/share/datasets/fashion-mnist`` and
    the user cache. With ``download=True`` missing files are fetched into
    ``data_dir`` or the cache and checked against SHA-256 sums; otherwise
    DatasetNotFoundError is raised. ``flat=False`` gives X as (N, 1, 28, 28)
    images (a view of the same data); ``sequences=True`` gives (N, 28, 28),
    each image's 28 rows as 28 time steps of 28 pixels, for recurrent layers
    (also a view).
    """
    return _as_images(_load_idx_dataset("fashion-mnist", data_dir, download), flat, 28,
                      sequences)


def load_mnist(path=None, download=False, *, data_dir=None, flat=True, sequences=False):
    """Load MNIST (28x28 grey handwritten digits); ``data_dir`` aliases ``path``.

    Same return value, shapes, dtypes and search order as load_fashion_mnist,
    with ``mnist`` in place of ``fashion-mnist``. Downloads are checked
    against the MD5 sums published with the dataset. ``flat=False`` gives X
    as (N, 1, 28, 28) images, ``sequences=True`` as (N, 28, 28) rows as time
    steps.
    """
    if data_dir is not None:
        if path is not None and Path(path) != Path(data_dir):
            raise TypeError("load_mnist: give path or data_dir, not both")
        path = data_dir
    return _as_images(_load_idx_dataset("mnist", path, download), flat, 28, sequences)


@functools.lru_cache(maxsize=1)
def _digits_table():
    """The bundled digits as a read-only int64 array of shape (1797, 65)."""
    raw = (resources.files(__package__) / "data" / "digits.csv.gz").read_bytes()
    text = gzip.decompress(raw).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 65:
        raise ValueError(f"digits.csv.gz: rows have {table.shape[1]} values, expected 65")
    table.flags.writeable = False  # shared between calls
    return table


def _stratified_split(y, test_fraction, rng):
    """Shuffled (train, test) index arrays with each class split in proportion."""
    n = len(y)
    n_test = math.ceil(test_fraction * n)  # as scikit-learn rounds: 0.2 of 1797 -> 360
    if n_test >= n:
        raise ValueError(f"test_fraction={test_fraction} leaves no training samples")
    classes, counts = np.unique(y, return_counts=True)
    share = counts * n_test / n
    per_class = np.floor(share).astype(np.int64)
    # Give the test slots that flooring lost to the classes with the largest remainders.
    leftover = n_test - per_class.sum()
    per_class[np.argsort(per_class - share, kind="stable")[:leftover]] += 1
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k]
                           for c, k in zip(classes, per_class)])
    is_train = np.ones(n, dtype=bool)
    is_train[test] = False
    return rng.permutation(np.flatnonzero(is_train)), rng.permutation(test)


def load_digits(test_fraction=0.2, seed=0, flat=True, sequences=False):
    """Load the bundled 8x8 handwritten digits (1797 samples, 10 classes).

    Returns ``((X_train, y_train), (X_test, y_test))``: X float32 = pixels/16
    in [0, 1] of shape (N, 64), y int64 in 0..9 of shape (N,). The split is
    stratified by label and deterministic for a given ``seed``; the test set
    gets ceil(test_fraction * 1797) samples (360 for the default 0.2).
    ``flat=False`` gives X as (N, 1, 8, 8) images, ``sequences=True`` as
    (N, 8, 8) rows as time steps.
    """
    if not 0 < test_fraction < 1:  # also rejects NaN
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    table = _digits_table()
    train, test = _stratified_split(table[:, 64], test_fraction, np.random.default_rng(seed))
    X = table[:, :64].astype(np.float32) / 16
    y = table[:, 64].copy()
    return _as_images(((X[train], y[train]), (X[test], y[test])), flat, 8, sequences)
