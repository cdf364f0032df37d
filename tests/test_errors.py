"""Bad input raises ValueError or TypeError with a message that names the problem."""

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import BackendUnavailableError, get_ops

ROOT = Path(__file__).resolve().parents[1]


def model(backend="numpy", **kw):
    kw.setdefault("seed", 0)
    return sn.Sequential([sn.Dense(4, 5), sn.ReLU(), sn.Dense(5, 3)], backend=backend, **kw)


def data(n=10, d=4, c=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), rng.integers(0, c, size=n)


def fit(m, X, y, **kw):
    kw.setdefault("loss", sn.SoftmaxCrossEntropy())
    kw.setdefault("optimizer", sn.SGD(0.1))
    return m.fit(X, y, **kw)


# --- the feature matrix -------------------------------------------------------------

def test_wrong_feature_count(backend):
    m = model(backend)
    X, y = data(d=3)
    for call in (lambda: m.predict(X), lambda: m.forward(X), lambda: m.evaluate(X, y),
                 lambda: fit(m, X, y)):
        with pytest.raises(ValueError, match=r"expects 4.*expected shape \(N, 4\), got \(10, 3\)"):
            call()


def test_wrong_feature_count_in_validation_data(backend):
    X, y = data()
    with pytest.raises(ValueError, match=r"X_val .*\(N, 4\).*\(5, 6\)"):
        fit(model(backend), X, y, validation_data=(np.zeros((5, 6)), y[:5]))


def test_3d_input_to_dense(backend):
    # Dense applies to the last axis, as torch.nn.Linear: (N, T, 4) -> (N, T, out)
    layer = sn.Dense(4, 2)
    layer.build(get_ops(backend), np.random.default_rng(0), "float32", "dense")
    assert layer.forward(np.zeros((2, 3, 4))).shape == (2, 3, 2)
    assert model(backend).predict(np.zeros((2, 3, 4))).shape == (2, 3, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4\) or \(N, \.\.\., 4\), "
                                         r"got \(2, 3, 5\)"):
        layer.forward(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"2-D.*\(N, \.\.\., 4\).*\(2, 3, 5\)"):
        model(backend).predict(np.zeros((2, 3, 5)))


def test_1d_input_gets_a_hint(backend):
    with pytest.raises(ValueError, match=r"2-D.*\(4,\).*reshape\(1, -1\)"):
        model(backend).predict(np.zeros(4))


def test_empty_input(backend):
    with pytest.raises(ValueError, match=r"empty.*\(0, 4\)"):
        model(backend).predict(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="empty"):
        fit(model(backend), np.zeros((0, 4)), np.zeros(0, dtype=int))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_in_input(backend, bad):
    X, y = data()
    X[3, 1] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        fit(model(backend), X, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(backend).predict(X)
    with pytest.raises(ValueError, match="X_val contains .*NaN or infinite"):
        fit(model(backend), *data(), validation_data=(X, y))


def test_non_numeric_input(backend):
    X = [["a", "b", "c", "d"]] * 3
    with pytest.raises(TypeError, match="numeric"):
        model(backend).predict(X)
    with pytest.raises(TypeError, match="numeric"):
        fit(model(backend), X, [0, 1, 2])
    with pytest.raises(TypeError, match="y must be numeric"):
        fit(model(backend), data()[0], ["cat"] * 10)


def test_ragged_input(backend):
    with pytest.raises((TypeError, ValueError), match="X"):
        model(backend).predict([[1, 2, 3, 4], [1, 2]])


def test_lists_are_accepted(backend):
    X, y = data()
    hist = fit(model(backend), X.tolist(), y.tolist(), epochs=1)
    assert len(hist.history["loss"]) == 1


# --- labels and targets -------------------------------------------------------------

def test_x_y_length_mismatch(backend):
    X, y = data()
    with pytest.raises(ValueError, match="different lengths: 10 samples but 9 labels"):
        fit(model(backend), X, y[:9])
    with pytest.raises(ValueError, match="different lengths"):
        model(backend).evaluate(X, y[:9])
    with pytest.raises(ValueError, match=r"same shape as the model output \(10, 3\)"):
        fit(model(backend), X, np.zeros((9, 3)), loss=sn.MSE())


def test_labels_out_of_range(backend):
    X, y = data()
    y[2] = 3
    with pytest.raises(ValueError, match=r"label 3, out of range for 3 classes \(expected 0..2\)"):
        fit(model(backend), X, y)
    y[2] = -1
    with pytest.raises(ValueError, match="negative labels"):
        fit(model(backend), X, y)


def test_fractional_labels(backend):
    X, y = data()
    y = y.astype(float)
    y[4] = 1.5
    with pytest.raises(ValueError, match=r"fractional labels \(e.g. 1.5\)"):
        fit(model(backend), X, y)


def test_whole_float_labels_are_accepted(backend):
    X, y = data()
    fit(model(backend), X, y.astype(float), epochs=1)


def test_nan_labels(backend):
    X, y = data()
    y = y.astype(float)
    y[0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite labels"):
        fit(model(backend), X, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit(model(backend), X, np.full((10, 3), np.nan), loss=sn.MSE())


def test_2d_labels_of_wrong_width(backend):
    X, y = data()
    with pytest.raises(ValueError, match=r"same shape.*\(10, 3\).*\(10, 4\)"):
        fit(model(backend), X, np.eye(4)[y % 4])


# --- fit's arguments ----------------------------------------------------------------

@pytest.mark.parametrize("bs", [0, -1])
def test_batch_size_not_positive(backend, bs):
    with pytest.raises(ValueError, match=f"batch_size must be > 0, got {bs}"):
        fit(model(backend), *data(), batch_size=bs)


def test_batch_size_not_an_integer(backend):
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        fit(model(backend), *data(), batch_size=2.5)


def test_negative_epochs(backend):
    with pytest.raises(ValueError, match="epochs must be >= 0, got -1"):
        fit(model(backend), *data(), epochs=-1)


def test_unknown_mode(backend):
    with pytest.raises(ValueError, match="unknown mode 'stochastic'.*minibatch"):
        fit(model(backend), *data(), mode="stochastic")


def test_unknown_loss_and_optimizer(backend):
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        fit(model(backend), *data(), loss="hinge")
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        fit(model(backend), *data(), optimizer="lbfgs")


def test_bad_validation_data(backend):
    X, y = data()
    with pytest.raises(TypeError, match="validation_data"):
        fit(model(backend), X, y, validation_data=X)


# --- construction ------------------------------------------------------------------

def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'tpu'.*numpy"):
        sn.set_backend("tpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        model(backend="tpu")
    with pytest.raises(TypeError, match="backend name must be a string"):
        sn.set_backend(3)


def test_unknown_init():
    with pytest.raises(ValueError, match="unknown init 'glorious'.*xavier"):
        sn.Dense(4, 3, init="glorious")


def test_init_returning_wrong_shape():
    with pytest.raises(ValueError, match=r"returned shape \(3, 4\), expected \(4, 3\)"):
        sn.Dense(4, 3, init=lambda rng, fan_in, fan_out: np.zeros((fan_out, fan_in)))


@pytest.mark.parametrize("p, match", [(1, "Dropout p must be < 1"), (1.5, "Dropout p"),
                                      (-0.1, "Dropout p must be >= 0")])
def test_dropout_p_out_of_range(p, match):
    with pytest.raises(ValueError, match=match):
        sn.Dropout(p)


def test_negative_learning_rate():
    with pytest.raises(ValueError, match="SGD lr must be >= 0"):
        sn.SGD(lr=-0.1)
    with pytest.raises(ValueError, match="Adam lr must be >= 0"):
        sn.Adam(lr=-0.1)


def test_layers_that_do_not_chain():
    with pytest.raises(ValueError, match="expects 5 input features but the layer before it "
                                         "gives 3"):
        sn.Sequential([sn.Dense(4, 3), sn.Dense(5, 2)])
    with pytest.raises(ValueError, match="normalises 6 features.*gives 3"):
        sn.Sequential([sn.Dense(4, 3), sn.BatchNorm(6)])


def test_bad_layer_lists():
    with pytest.raises(ValueError, match="at least one layer"):
        sn.Sequential([])
    with pytest.raises(TypeError, match="item 1 is str, not a scratchnet layer"):
        sn.Sequential([sn.Dense(2, 2), "relu"])
    with pytest.raises(ValueError, match="Residual needs at least one layer"):
        sn.Residual([])


@pytest.mark.parametrize("make, exc, match", [
    (lambda: sn.Dense(0, 3), ValueError, "Dense n_in must be > 0"),
    (lambda: sn.Dense(3, -2), ValueError, "Dense n_out"),
    (lambda: sn.Dense(2.5, 3), TypeError, "Dense n_in must be an integer"),
    (lambda: sn.LeakyReLU(-0.1), ValueError, "LeakyReLU alpha"),
    (lambda: sn.BatchNorm(0), ValueError, "BatchNorm n"),
    (lambda: sn.BatchNorm(3, eps=0), ValueError, "BatchNorm eps"),
    (lambda: sn.BatchNorm(3, momentum=1.5), ValueError, "BatchNorm momentum"),
    (lambda: model(dtype="int32"), ValueError, "dtype must be 'float32' or 'float64'"),
    (lambda: model(dtype="float16"), ValueError, "float16"),
    (lambda: model(seed=-1), ValueError, "seed must be >= 0"),
    (lambda: model(seed="zero"), TypeError, "seed must be an integer"),
], ids=["dense_n_in", "dense_n_out", "dense_float", "leaky_alpha", "bn_n", "bn_eps",
        "bn_momentum", "dtype_int", "dtype_half", "seed_negative", "seed_str"])
def test_bad_constructor_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_batchnorm_needs_two_samples_in_training(backend):
    m = sn.Sequential([sn.Dense(4, 3), sn.BatchNorm(3)], backend=backend)
    with pytest.raises(ValueError, match="more than 1 sample"):
        m.forward(np.zeros((1, 4)), training=True)
    assert m.predict(np.zeros((1, 4))).shape == (1, 3)    # fine in evaluation


def test_backward_misuse(backend):
    m = model(backend)
    with pytest.raises(RuntimeError, match="forward"):
        m.backward(np.zeros((2, 3), np.float32))
    m.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dY has shape \(2, 4\).*\(2, 3\)"):
        m.backward(np.zeros((2, 4), np.float32))


# --- the environment and the devices -------------------------------------------------

def run_python(code, **env):
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=120)


def test_bogus_backend_environment_variable():
    code = "import scratchnet as sn; sn.Sequential([sn.Dense(2, 2)])"
    proc = run_python(code, SCRATCHNET_BACKEND="bogus")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError"), proc.stderr
    # the message names the bad value *and* where it came from
    assert "bogus" in last and "SCRATCHNET_BACKEND" in last, last
    # importing alone is fine
    assert run_python("import scratchnet", SCRATCHNET_BACKEND="bogus").returncode == 0


def test_cupy_array_to_numpy_model_fake_module(monkeypatch):
    """The check needs no GPU: a stand-in ``cupy`` module exercises it."""
    class FakeCupyArray:
        ndim, shape = 2, (3, 4)

    fake = types.ModuleType("cupy")
    fake.ndarray = FakeCupyArray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    m = model("numpy")
    with pytest.raises(TypeError, match=r"CuPy \(GPU\) array.*'numpy' backend.*model.to\('cupy'\)"):
        m.predict(FakeCupyArray())
    with pytest.raises(TypeError, match="CuPy"):
        fit(m, FakeCupyArray(), [0, 1, 2])


def test_cupy_array_to_numpy_model():
    try:
        cp_ops = get_ops("cupy")
    except BackendUnavailableError as err:
        pytest.skip(f"needs a working CuPy backend: {err}")
    X = cp_ops.asarray(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match=r"CuPy \(GPU\) array.*model.to\('cupy'\).*\.get\(\)"):
        model("numpy").predict(X)
    with pytest.raises(TypeError, match="CuPy"):
        fit(model("numpy"), X, [0, 1, 2])
