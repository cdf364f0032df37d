"""Tests for scratchnet.datasets: IDX reading, the loaders and the offline download path."""

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from scratchnet.datasets import (DatasetNotFoundError, load_digits, load_fashion_mnist,
                                 load_mnist, read_idx)
from scratchnet.datasets import loaders

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(arr):
    """Encode ``arr`` as IDX: header, then big-endian values."""
    arr = np.asarray(arr)
    header = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data, compress=False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# --- read_idx ---------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("arr", [
    np.arange(7, dtype=np.uint8),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.linspace(-1, 1, 6, dtype=np.float32),
    np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    np.array([-300, 0, 300], dtype=np.int16),
    np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    np.array([[0.5, -2.25]], dtype=np.float64),
])
def test_read_idx_roundtrip(tmp_path, arr, compress):
    # A plain name: gzip must be recognised by its magic bytes, not by ".gz".
    out = read_idx(write(tmp_path / "data-idx", idx_bytes(arr), compress))
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype and out.dtype.isnative
    assert out.flags.writeable
    np.testing.assert_array_equal(out, arr)


def test_read_idx_float32_is_big_endian(tmp_path):
    raw = bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + struct.pack(">ff", 1.5, -2.0)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "f", raw)), [1.5, -2.0])


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


good = idx_bytes(np.zeros((2, 3), dtype=np.uint8))


@pytest.mark.parametrize("data, match", [
    (b"\x01\x00" + good[2:], "bad magic"),
    (good[:2] + b"\x07" + good[3:], "unknown type code 0x07"),
    (good[:-1], "payload has 5 bytes, header says 6"),
    (good + b"\x00", "payload has 7 bytes, header says 6"),
    (bytes([0, 0, 8, 0]), "number of dimensions is 0"),
    (bytes([0, 0, 8, 9]), "number of dimensions is 9"),
    (bytes([0, 0, 8, 3, 0, 0]), "header truncated"),
    (b"\x00\x00", "too short"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_errors_name_file_and_problem(tmp_path, data, match, compress):
    path = write(tmp_path / "broken-idx3-ubyte", data, compress)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert "broken-idx3-ubyte" in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = write(tmp_path / "x.gz", gzip.compress(good)[:-6])
    with pytest.raises(ValueError, match="x.gz"):
        read_idx(path)


# --- load_digits --------------------------------------------------------------

def test_load_digits_shapes_dtypes_ranges():
    (Xtr, ytr), (Xte, yte) = load_digits()
    assert Xtr.shape == (1437, 64) and Xte.shape == (360, 64)
    assert ytr.shape == (1437,) and yte.shape == (360,)
    assert Xtr.dtype == Xte.dtype == np.float32
    assert ytr.dtype == yte.dtype == np.int64
    X = np.concatenate([Xtr, Xte])
    assert X.min() == 0.0 and X.max() == 1.0
    # pixels were integers 0..16
    np.testing.assert_array_equal(X * 16, np.round(X * 16))
    assert set(np.unique(ytr)) == set(np.unique(yte)) == set(range(10))


def test_load_digits_deterministic_and_disjoint():
    (a, ya), (b, yb) = load_digits(seed=3)
    (c, yc), (d, yd) = load_digits(seed=3)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(yb, yd)
    (e, ye), (f, yf) = load_digits(seed=4)
    assert not np.array_equal(a, e)

    # Each split is a partition of the same 1797 samples: same rows, just reordered.
    def rows(*parts):
        table = np.concatenate([np.column_stack([X, y]) for X, y in parts])
        return table[np.lexsort(table.T)]
    np.testing.assert_array_equal(rows((a, ya), (b, yb)), rows((e, ye), (f, yf)))
    assert len(rows((a, ya), (b, yb))) == 1797


def test_load_digits_stratified():
    (_, ytr), (_, yte) = load_digits(test_fraction=0.3, seed=1)
    frac = np.bincount(yte, minlength=10) / (np.bincount(ytr, minlength=10)
                                              + np.bincount(yte, minlength=10))
    assert np.all(np.abs(frac - 0.3) < 0.01)


def test_load_digits_returns_fresh_arrays():
    (X, y), _ = load_digits()
    X[:] = -1
    y[:] = -1
    (X2, y2), _ = load_digits()
    assert X2.min() >= 0 and y2.min() >= 0


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan")])
def test_load_digits_bad_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=bad)


# --- load_fashion_mnist / load_mnist on fake files ---------------------------

@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point the Debian dirs, the cache and $SCRATCHNET_DATA into tmp_path; no network."""
    monkeypatch.setattr(loaders, "DEBIAN_DIRS", {"fashion-mnist": tmp_path / "debian-fashion",
                                                 "mnist": tmp_path / "debian-mnist"})
    monkeypatch.setattr(loaders, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setenv("SCRATCHNET_DATA", str(tmp_path / "env"))

    def no_network(url, dest):
        raise AssertionError(f"test tried to fetch {url}")
    monkeypatch.setattr(loaders, "_fetch", no_network)
    return tmp_path


def fake_files(n_train=5, n_test=3, n_train_labels=None, compress=True, seed=0):
    """Bytes of the four IDX files, keyed by their .gz (or raw) file names."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train_labels or n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # so the maximum is known
    suffix = ".gz" if compress else ""
    return {k + suffix: gzip.compress(idx_bytes(v)) if compress else idx_bytes(v)
            for k, v in arrays.items()}


def put(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def check_small(data, n_train=5, n_test=3):
    (Xtr, ytr), (Xte, yte) = data
    assert Xtr.shape == (n_train, 784) and Xte.shape == (n_test, 784)
    assert ytr.shape == (n_train,) and yte.shape == (n_test,)
    assert Xtr.dtype == Xte.dtype == np.float32
    assert ytr.dtype == yte.dtype == np.int64
    assert 0 <= Xtr.min() and Xtr.max() == 1.0


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_from_data_dir(isolated, compress):
    d = put(isolated / "mine", fake_files(compress=compress))
    check_small(load_fashion_mnist(d))
    check_small(load_fashion_mnist(data_dir=str(d)))


def test_fashion_values_match_files(isolated):
    files = fake_files()
    d = put(isolated / "mine", files)
    (Xtr, ytr), _ = load_fashion_mnist(d)
    images = read_idx(d / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(Xtr * 255, images.reshape(5, 784), atol=1e-4)
    np.testing.assert_array_equal(ytr, read_idx(d / "train-labels-idx1-ubyte.gz"))


@pytest.mark.parametrize("where", ["env", "env/fashion-mnist", "debian-fashion",
                                   "cache/fashion-mnist"])
def test_fashion_search_places(isolated, where):
    put(isolated / where, fake_files())
    check_small(load_fashion_mnist())


def test_fashion_search_order_env_before_debian(isolated):
    put(isolated / "env", fake_files(n_train=4))
    put(isolated / "debian-fashion", fake_files(n_train=6))
    check_small(load_fashion_mnist(), n_train=4)


def test_explicit_dir_is_the_only_place(isolated):
    put(isolated / "debian-fashion", fake_files())
    (isolated / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(isolated / "empty")
    assert str(isolated / "debian-fashion") not in str(info.value)


def test_fashion_mismatched_counts(isolated):
    d = put(isolated / "mine", fake_files(n_train=5, n_train_labels=4))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_fashion_mnist(d)


def test_fashion_wrong_image_size(isolated):
    files = fake_files()
    files["t10k-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros((3, 27, 28), np.uint8)))
    with pytest.raises(ValueError, match="expected uint8 \\(N, 28, 28\\)"):
        load_fashion_mnist(put(isolated / "mine", files))


def test_fashion_not_found(isolated):
    (isolated / "empty").mkdir()
    (isolated / "env").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(download=False)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "dataset-fashion-mnist" in msg and "download=True" in msg
    assert "--download" in msg and "SCRATCHNET_DATA" in msg
    for place in ["env", "env/fashion-mnist", "debian-fashion", "cache/fashion-mnist"]:
        assert str(isolated / place) in msg


def test_mnist_paths_and_alias(isolated):
    put(isolated / "debian-mnist", fake_files())
    check_small(load_mnist())
    d = put(isolated / "m", fake_files())
    check_small(load_mnist(d))
    check_small(load_mnist(data_dir=d))
    with pytest.raises(TypeError):
        load_mnist(d, data_dir=isolated / "other")
    with pytest.raises(DatasetNotFoundError, match="MNIST not found"):
        load_mnist(isolated / "nothing")


# --- download path, offline ---------------------------------------------------

def serve(monkeypatch, files):
    """Make _fetch write ``files[name]`` for a URL ending in ``name``; return the URLs asked."""
    asked = []

    def fake_fetch(url, dest):
        asked.append(url)
        Path(dest).write_bytes(files[url.rsplit("/", 1)[1]])
    monkeypatch.setattr(loaders, "_fetch", fake_fetch)
    return asked


def test_download_good_checksum(isolated, monkeypatch):
    files = fake_files()
    for name, data in files.items():
        monkeypatch.setitem(loaders.FASHION_MNIST_SHA256, name, hashlib.sha256(data).hexdigest())
    asked = serve(monkeypatch, files)
    check_small(load_fashion_mnist(download=True))
    assert all(url.startswith("https://") for url in asked) and len(asked) == 4
    cache = isolated / "cache" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    # Second call finds the cached files and fetches nothing.
    check_small(load_fashion_mnist(download=True))
    assert len(asked) == 4


def test_download_bad_checksum_leaves_no_file(isolated, monkeypatch):
    files = fake_files()
    for name, data in files.items():
        monkeypatch.setitem(loaders.FASHION_MNIST_SHA256, name, hashlib.sha256(data).hexdigest())
    files["train-images-idx3-ubyte.gz"] = b"tampered"
    serve(monkeypatch, files)
    with pytest.raises(ValueError, match="sha256"):
        load_fashion_mnist(download=True)
    cache = isolated / "cache" / "fashion-mnist"
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert not list(cache.glob("*.part"))


def test_mnist_download_uses_md5(isolated, monkeypatch):
    files = fake_files()
    for name, data in files.items():
        monkeypatch.setitem(loaders.MNIST_MD5, name, hashlib.md5(data).hexdigest())
    serve(monkeypatch, files)
    check_small(load_mnist(download=True))
    assert (isolated / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_cache_dir_respects_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert loaders._cache_dir() == tmp_path / "scratchnet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert loaders._cache_dir() == Path.home() / ".cache" / "scratchnet"


# --- the real thing, when Debian's package is installed ---------------------

def test_real_fashion_mnist():
    if not DEBIAN_FASHION.is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    (Xtr, ytr), (Xte, yte) = load_fashion_mnist(DEBIAN_FASHION)
    assert Xtr.shape == (60000, 784) and Xte.shape == (10000, 784)
    assert ytr.shape == (60000,) and yte.shape == (10000,)
    assert Xtr.dtype == Xte.dtype == np.float32
    assert ytr.dtype == yte.dtype == np.int64
    assert Xtr.min() == 0.0 and Xtr.max() == 1.0
    assert set(np.unique(ytr)) == set(np.unique(yte)) == set(range(10))
