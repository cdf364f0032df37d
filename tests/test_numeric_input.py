"""Non-numeric input: the message names the bad value and where it is."""

import re

import numpy as np
import pytest

import scratchnet as sn
from scratchnet._validate import as_host_numeric


class FakeFrame:
    """The three things of a pandas DataFrame that the conversion uses."""

    def __init__(self, data):
        self.columns = list(data)
        self._data = data
        self.dtypes = [np.asarray(v).dtype for v in data.values()]

    def to_numpy(self):
        out = np.empty((len(next(iter(self._data.values()))), len(self.columns)), dtype=object)
        for j, values in enumerate(self._data.values()):
            out[:, j] = values
        return out


def message(x, name="X"):
    with pytest.raises(TypeError) as info:
        as_host_numeric(x, name)
    return str(info.value)


def test_frame_like_names_the_column_and_the_bad_value():
    frame = FakeFrame({"age": [31, 45, 27], "city": ["1.5", "Paris", "Oslo"],
                       "height": [1.7, 1.8, 1.6]})
    text = message(frame)
    assert "column 'city'" in text and "row 1" in text and "'Paris'" in text
    assert "1.5" not in text and "[31" not in text          # not the first element


def test_frame_like_all_numeric_converts():
    frame = FakeFrame({"a": [1, 2], "b": [0.5, 1.5]})
    np.testing.assert_array_equal(as_host_numeric(frame), [[1.0, 0.5], [2.0, 1.5]])


def test_pandas_dataframe_with_a_string_column():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"x0": [0.1, 0.2, 0.3], "x1": [1.0, 2.0, 3.0],
                       "label_name": ["cat", "dog", "cat"]})
    text = message(df)
    assert "column 'label_name'" in text and "row 0" in text and "'cat'" in text
    np.testing.assert_array_equal(as_host_numeric(df[["x0", "x1"]]),
                                  [[0.1, 1.0], [0.2, 2.0], [0.3, 3.0]])


def test_pandas_missing_value_is_called_missing():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1.0, 2.0], "n": pd.array([1, None], dtype="Int64")})
    text = message(df)
    assert "column 'n'" in text and "row 1" in text and "missing value" in text


def test_nested_list_with_one_bad_string_names_it_and_its_position():
    X = [[0.5, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, "oops", 8.0]]
    text = message(X)
    assert "X[2, 1] is the string 'oops'" in text


def test_object_array_with_one_bad_value():
    y = np.array([0, 1, "two", 2], dtype=object)
    assert "y[2] is the string 'two'" in message(y, "y")
    X = np.array([[1, 2], [3, {"a": 1}]], dtype=object)
    assert re.search(r"X\[1, 1\] is \{'a': 1\} \(dict\)", message(X))


def test_object_array_of_numbers_is_accepted():
    arr = as_host_numeric(np.array([[1, 2.5], [3, 4]], dtype=object))
    assert arr.dtype == np.float64 and arr.tolist() == [[1.0, 2.5], [3.0, 4.0]]


def test_string_array_says_how_to_convert():
    text = message(np.array([["1.5", "2"]]))
    assert "X[0, 0] is the string '1.5'" in text and "X.astype(float)" in text


def test_other_dtypes_are_named():
    assert "dtype complex128" in message(np.array([1 + 2j]))


def test_model_reports_the_bad_value():
    model = sn.Sequential([sn.Dense(3, 2)], seed=0)
    with pytest.raises(TypeError, match=re.escape("X[1, 2] is the string 'n/a'")):
        model.predict([[1.0, 2.0, 3.0], [4.0, 5.0, "n/a"]])
