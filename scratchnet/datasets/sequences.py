"""Sequence data: the adding problem, Debian's fortunes as text, and the
character vocabulary and windows a character-level language model trains on.

* ``adding_problem(n, T, seed)``: the long-memory benchmark of Hochreiter &
  Schmidhuber (1997), as set by Le et al. (2015) and Arjovsky et al. (2016).
* ``load_fortunes()``: the quotations of the ``fortunes`` package
  (``/usr/share/games/fortunes``), split by quotation into training and
  held-out text.
* ``CharVocabulary``: characters <-> integer ids; ``text_windows`` cuts ids
  into (input, next-character target) windows.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .._validate import check_positive_int
from .loaders import DatasetNotFoundError

__all__ = ["adding_problem", "load_fortunes", "CharVocabulary", "text_windows",
           "FORTUNES_DIR"]

#: Where Debian's ``fortunes`` package installs the quotation files.
FORTUNES_DIR = Path("/usr/share/games/fortunes")


def adding_problem(n, T, seed=None):
    """The adding problem: ``(X, y)`` with X float32 (n, T, 2) and y (n, 1).

    At each of the T steps, channel 0 holds a value drawn uniformly from
    [0, 1] and channel 1 a marker; exactly two steps are marked (1.0), one
    chosen uniformly in the first half of the sequence and one in the
    second half; the target is the sum of the two marked values. A model
    that ignores its input does best predicting 1 (the mean), with mean
    squared error 1/6 (about 0.167, the variance of a sum of two uniforms);
    solving it needs a memory of about T steps.
    """
    n = check_positive_int(n, "adding_problem n")
    T = check_positive_int(T, "adding_problem T")
    if T < 2:
        raise ValueError(f"adding_problem T must be >= 2 (two marked steps), got {T}")
    rng = np.random.default_rng(seed)
    X = np.zeros((n, T, 2), dtype=np.float32)
    X[:, :, 0] = rng.random((n, T), dtype=np.float32)
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    rows = np.arange(n)
    X[rows, first, 1] = 1.0
    X[rows, second, 1] = 1.0
    y = (X[rows, first, 0] + X[rows, second, 0]).reshape(n, 1)
    return X, y


# -- fortunes -------------------------------------------------------------------------------

_OVERSTRIKE = re.compile(r".\x08")          # "_\bA": an underlined A in a terminal
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _fortune_files(directory):
    """The quotation files of a fortunes folder: every plain file but the
    ``.dat`` indexes and ``.u8`` links, sorted by name."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))


def _quotations(path):
    """The quotations of one file (separated by lines holding a single '%'),
    cleaned of terminal overstriking and control characters."""
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
    text = _CONTROL.sub("", _OVERSTRIKE.sub("", text))
    quotes = re.split(r"^%\n", text, flags=re.MULTILINE)
    return [q.strip("\n") + "\n" for q in quotes if q.strip()]


def load_fortunes(data_dir=None, test_fraction=0.1, seed=0, files=None):
    """Debian's fortunes: ``(train_text, test_text)``, two strings.

    Reads every quotation file of ``data_dir`` (default:
    ``/usr/share/games/fortunes``, from ``apt-get install fortunes``), or only
    those named in ``files`` (e.g. ``["wisdom", "science"]``). Terminal
    overstriking (``_\\bA``) and control characters are removed. The
    quotations are shuffled with ``seed`` and ``test_fraction`` of them are
    held out, so the test text holds whole quotations never seen in training.
    Each quotation ends with a newline and is followed by a line ``%``, as in
    the files, so a model learns where one ends. About 2.6 million
    characters in all.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    directory = Path(data_dir) if data_dir is not None else FORTUNES_DIR
    paths = _fortune_files(directory) if directory.is_dir() else []
    if not paths:
        raise DatasetNotFoundError(
            f"no fortunes found in {directory}. To get them: apt-get install fortunes "
            f"(Debian/Ubuntu), or pass data_dir= a folder of fortune files")
    if files is not None:
        by_name = {p.name: p for p in paths}
        missing = [f for f in files if f not in by_name]
        if missing:
            raise ValueError(f"load_fortunes: no file(s) {missing} in {directory}; it has "
                             f"{sorted(by_name)}")
        paths = [by_name[f] for f in files]
    quotes = [q for p in paths for q in _quotations(p)]
    if len(quotes) < 2:
        raise ValueError(f"load_fortunes: {directory} holds {len(quotes)} quotation(s); a "
                         f"training and a test part need at least 2")
    order = np.random.default_rng(seed).permutation(len(quotes))
    n_test = min(max(1, int(round(test_fraction * len(quotes)))), len(quotes) - 1)
    test, train = order[:n_test], order[n_test:]
    join = "%\n".join
    return join(quotes[i] for i in train) + "%\n", join(quotes[i] for i in test) + "%\n"


# -- characters -----------------------------------------------------------------------------

class CharVocabulary:
    """Characters <-> integer ids: ``chars[i]`` is the character of id i.

    ``CharVocabulary.from_text(text)`` takes every character of ``text``,
    sorted. ``encode`` refuses characters it does not know (naming the first
    one) unless the vocabulary was made with ``unknown=c``, a character of
    it that stands in for them.
    """

    def __init__(self, chars, unknown=None):
        chars = "".join(chars)
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("a CharVocabulary needs at least one character and no repeats")
        if unknown is not None and unknown not in chars:
            raise ValueError(f"unknown={unknown!r} is not one of the vocabulary's characters")
        self.chars, self.unknown = chars, unknown
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text, unknown=None):
        chars = sorted(set(text) | ({unknown} if unknown else set()))
        return cls("".join(chars), unknown=unknown)

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        """int64 ids (len(text),)."""
        ids, fallback = self._ids, self._ids.get(self.unknown)
        try:
            return np.fromiter((ids[c] if fallback is None else ids.get(c, fallback)
                                for c in text), dtype=np.int64, count=len(text))
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the vocabulary "
                             f"({len(self)} characters)") from None

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def __repr__(self):
        return f"CharVocabulary({len(self)} characters)"


def text_windows(ids, steps, stride=None):
    """Inputs and next-character targets for a language model:
    ``(X, y)``, int64 (n, steps) each, with y[k, t] = ids[start_k + t + 1]
    for X[k, t] = ids[start_k + t]; windows start every ``stride`` ids
    (default ``steps``: back to back, no overlap)."""
    ids = np.asarray(ids, dtype=np.int64)
    steps = check_positive_int(steps, "steps")
    stride = steps if stride is None else check_positive_int(stride, "stride")
    n = (len(ids) - 1 - steps) // stride + 1
    if n < 1:
        raise ValueError(f"text_windows: {len(ids)} ids make no window of {steps} steps and "
                         f"its next-character targets ({steps + 1} ids needed)")
    starts = np.arange(n) * stride
    offsets = np.arange(steps)
    X = ids[starts[:, None] + offsets]
    y = ids[starts[:, None] + offsets + 1]
    return X, y


def fortunes_available(data_dir=None):
    """True when ``load_fortunes`` would find quotation files."""
    directory = Path(data_dir) if data_dir is not None else FORTUNES_DIR
    return directory.is_dir() and bool(_fortune_files(directory))

