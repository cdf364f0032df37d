"""The model file format: one ``.npz`` archive holding a JSON config and arrays.

This module only reads and writes the format (``write_file``, ``read_file``);
the model turns itself into a state and back (``Sequential.get_state`` /
``Sequential.from_state``, and ``scratchnet.load``), and the state is
checked before anything is built (``scratchnet.state``).

``save`` writes to a temporary file in the same folder and renames it over
the target only once it is complete, so a failed or killed save leaves the
previous file intact (see ``scratchnet._atomic``). ``load`` never unpickles:
arrays of Python objects are refused.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy

FORMAT = "scratchnet-model"
VERSION = 1

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def write_file(path, config, arrays):
    """Write a model's state (``Sequential.get_state()``) to ``path``, atomically."""
    from ._atomic import atomic_write
    config = {"format": FORMAT, "version": VERSION, **config}
    blob = numpy.frombuffer(json.dumps(config).encode("utf-8"), dtype=numpy.uint8)
    atomic_write(path, lambda f: numpy.savez(f, __config__=blob, **arrays))


def read_file(path):
    """``(config, arrays)`` from a model file; ValueError naming the file and
    the problem for anything that is not one."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder, not a model file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in _ZIP_MAGIC:
        raise ValueError(f"{path}: not a scratchnet model file (a model file is an .npz "
                         f"archive; this one starts with {head!r})")
    try:
        with open(path, "rb") as f:    # our handle: numpy leaks its own on a bad zip
            with numpy.load(f, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        why = "it holds arrays of Python objects, which a model file never does" \
            if "pickle" in str(err) else f"corrupt or truncated? {err}"
        raise ValueError(f"{path}: not a readable scratchnet model file ({why})") from None
    blob = arrays.pop("__config__", None)
    if blob is None or blob.dtype != numpy.uint8 or blob.ndim != 1:
        raise ValueError(f"{path}: not a scratchnet model file (no config inside)")
    try:
        config = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a scratchnet model file (its config is not JSON: "
                         f"{err})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a valid scratchnet model: its config is nested too "
                         "deep") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: not a scratchnet model file (format is {fmt!r})")
    version = config.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path}: written by a newer scratchnet (format version {version!r}); "
                         "upgrade scratchnet to load it")
    return config, arrays
