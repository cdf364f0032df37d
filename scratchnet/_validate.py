"""Input checks shared by the model, layers and losses.

Every check raises ValueError or TypeError whose message names the argument,
what was expected and what was found. Checks run once per call on the host
(or once per ``fit`` for the whole data set), never once per mini-batch.
"""

from __future__ import annotations

import numbers

import numpy

from ._compat import is_cupy_array

FLOAT_DTYPES = ("float32", "float64")


def as_dtype(dtype):
    """numpy dtype for 'float32'/'float64' (or the dtypes), else ValueError."""
    try:
        dt = numpy.dtype(dtype)
    except TypeError:
        raise ValueError(f"unknown dtype {dtype!r}; expected 'float32' or 'float64'") from None
    if dt.name not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dt.name!r}")
    return dt


def check_backend_of(x, ops, name="X"):
    """Refuse an array that lives on another backend, saying how to fix it."""
    if is_cupy_array(x) and ops.name != "cupy":
        raise TypeError(
            f"{name} is a CuPy (GPU) array but the model is on the {ops.name!r} backend: "
            f"move the model with model.to('cupy'), or pass {name}.get() (a NumPy array)")


def as_host_numeric(x, name="X"):
    """A NumPy array from ``x`` (list, array, pandas DataFrame or Series),
    refusing non-numeric data: the message names the first bad value and
    where it is (``X[3, 1]``; a DataFrame's column by its name)."""
    if is_cupy_array(x):
        return x
    if _is_frame(x):
        return _frame_as_numeric(x, name)
    try:
        arr = numpy.asarray(x)
    except (ValueError, TypeError) as err:
        raise TypeError(f"{name} could not be turned into a numeric array: {err}") from None
    if arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind == "O":
        try:
            return arr.astype(numpy.float64)     # numbers held as objects (Decimal, int, ...)
        except (ValueError, TypeError):
            index, value = _first_non_number(arr)
            raise TypeError(f"{name} must be numeric, but {name}{_at(index)} is "
                            f"{_show(value)}") from None
    if arr.dtype.kind in "US":
        # One string in a list turns every element into a string: look for it
        # among the original elements, which still tell numbers from text.
        index, value = _first_string(_as_objects(x, arr))
        raise TypeError(f"{name} must be numeric, but {name}{_at(index)} is {_show(value)}"
                        + (f" (an array of strings, dtype {arr.dtype}: numbers written as "
                           f"text need {name}.astype(float))" if not isinstance(x, (list, tuple))
                           else ""))
    raise TypeError(f"{name} must be numeric (integers or floats), got an array of dtype "
                    f"{arr.dtype}")


def _is_frame(x):
    """A pandas DataFrame or anything shaped like one (columns, dtypes, to_numpy)."""
    return (not isinstance(x, numpy.ndarray) and hasattr(x, "columns")
            and hasattr(x, "dtypes") and hasattr(x, "to_numpy"))


def _frame_as_numeric(frame, name):
    """A DataFrame's values as numbers, or a TypeError naming the first
    non-numeric column and the first bad value in it."""
    columns, dtypes = list(frame.columns), list(frame.dtypes)
    values = numpy.asarray(frame.to_numpy())
    if values.dtype.kind in "biuf":
        return values
    if values.ndim == 2 and values.shape[1] == len(columns):
        cells = values.astype(object) if values.dtype.kind in "US" else values
        for j, (column, dtype) in enumerate(zip(columns, dtypes)):
            if isinstance(dtype, numpy.dtype) and dtype.kind in "biuf":
                continue      # (pandas' nullable Int64 and the like may hold <NA>: checked)
            found = _first_non_number(cells[:, j])
            if found is not None:
                (row,), value = found
                fix = ("fill or drop the missing values" if _is_missing(value) else
                       "convert the column to numbers (e.g. one-hot encode it) or drop it")
                raise TypeError(f"{name} column {column!r} (dtype {dtype}) is not numeric: "
                                f"row {row} holds {_show(value)}; {fix}")
    return as_host_numeric(values, name)


def _as_objects(x, arr):
    """The elements of ``x`` as an object array of ``arr``'s shape, without the
    conversion to text that ``numpy.asarray`` applied."""
    if isinstance(x, (list, tuple)):
        try:
            objects = numpy.array(x, dtype=object)
            if objects.shape == arr.shape:
                return objects
        except (ValueError, TypeError):
            pass
    return arr.astype(object)


def _is_number(value):
    """What ``astype(float64)`` accepts: numbers, and text such as '1.5'."""
    if isinstance(value, numbers.Real):
        return True
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _first_non_number(cells):
    """(index, value) of the first element of an object array that is not a
    number, or None."""
    for index, value in numpy.ndenumerate(cells):
        if not _is_number(value):
            return index, value
    return None


def _first_string(cells):
    for index, value in numpy.ndenumerate(cells):
        if isinstance(value, (str, bytes)):
            return index, value
    return next(numpy.ndenumerate(cells))


def _at(index):
    return "[" + ", ".join(str(i) for i in index) + "]"


def _show(value):
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if isinstance(value, str):
        return f"the string {text}"
    if _is_missing(value):
        return f"{text} (a missing value)"
    return f"{text} ({type(value).__name__})"


def _is_missing(value):
    """None, or pandas' missing-value markers (pd.NA, pd.NaT)."""
    return value is None or type(value).__name__ in ("NAType", "NaTType")


def check_features(x, ops, n_features=None, name="X"):
    """Validate a feature matrix: numeric, 2-D (N, features), N > 0, finite.

    Returns the host or device array unchanged in dtype (the caller casts).
    """
    check_backend_of(x, ops, name)
    arr = as_host_numeric(x, name)
    if arr.ndim != 2:
        hint = " (one sample? use X.reshape(1, -1))" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D with shape (N, features), got shape "
                         f"{tuple(arr.shape)}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features per sample but the model expects "
                         f"{n_features}: expected shape (N, {n_features}), got {tuple(arr.shape)}")
    if arr.dtype.kind == "f" and not all_finite(arr, ops):
        xp = ops.xp if is_cupy_array(arr) else numpy
        bad = int((~xp.isfinite(arr)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean the data first")
    return arr


def all_finite(arr, ops):
    """No NaN or inf in ``arr``: min and max propagate NaN and show inf, in two
    vectorised passes with no temporary as large as the data."""
    xp = ops.xp if is_cupy_array(arr) else numpy
    return bool(xp.isfinite(arr.min())) and bool(xp.isfinite(arr.max()))


def check_labels(y, n_rows, n_classes=None, name="y"):
    """Integer class labels (N,) in [0, n_classes): returns an int64 host array.

    Float labels are accepted only when every value is a whole number.
    """
    arr = as_host_numeric(y, name)
    if is_cupy_array(arr):
        arr = arr.get()
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer labels of shape (N,), got shape "
                         f"{tuple(arr.shape)}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"X and {name} have different lengths: {n_rows} samples but "
                         f"{arr.shape[0]} labels")
    if arr.dtype.kind == "f":
        if not numpy.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite labels")
        if not (arr == numpy.round(arr)).all():
            raise ValueError(f"{name} contains fractional labels (e.g. {arr[arr != numpy.round(arr)][0]}); "
                             "class labels must be whole numbers")
    if arr.dtype.kind == "b":
        arr = arr.astype(numpy.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} contains negative labels (min {arr.min()}); labels must be in "
                         f"[0, {n_classes if n_classes else 'n_classes'})")
    if n_classes is not None and arr.size and arr.max() >= n_classes:
        raise ValueError(f"{name} contains label {int(arr.max())}, out of range for "
                         f"{n_classes} classes (expected 0..{n_classes - 1})")
    return arr.astype(numpy.int64, copy=False)


def check_targets(t, shape, name="y"):
    """Real-valued targets with exactly ``shape`` (N, M); finite."""
    arr = as_host_numeric(t, name)
    if is_cupy_array(arr):
        arr = arr.get()
    if arr.ndim == 1 and len(shape) == 2 and shape[1] == 1:
        arr = arr.reshape(-1, 1)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have the same shape as the model output {tuple(shape)}, "
                         f"got {tuple(arr.shape)}")
    if not numpy.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_positive_int(value, name, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_number(value, name, low=None, high=None, low_open=False, high_open=False,
                 finite=False):
    """A real number in [low, high] (ends open when asked); names the argument.
    ``finite=True`` also refuses +-inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must be a number, got NaN")
    if finite and value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


__all__ = ["as_dtype", "check_backend_of", "check_features", "check_labels", "check_targets",
           "check_positive_int", "check_number"]
