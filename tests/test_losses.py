"""Losses: values and gradients against hand-written NumPy formulas, on every backend."""

import warnings

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import get_ops

DTYPES = ["float32", "float64"]


def host(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def assert_close(actual, expected, dtype, rtol=None):
    actual, expected = host(actual), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tol = rtol if rtol is not None else (1e-5 if np.dtype(dtype) == np.float32 else 1e-10)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale + 1e-30)


def run(backend, loss, out, y):
    """(value, gradient) of ``loss`` for ``out`` on ``backend``."""
    with sn.use_backend(backend):
        ops = get_ops(backend)
        out = ops.asarray(out)
        value = loss.forward(out, y)
        grad = loss.backward()
    assert isinstance(value, float)
    assert grad.shape == out.shape and grad.dtype == out.dtype
    return value, host(grad)


def close(a, b, dtype):
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    return a == pytest.approx(b, rel=tol, abs=tol)


def logits_and_labels(dtype, n=5, c=4, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, c)) * scale).astype(dtype), rng.integers(0, c, size=n)


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- SoftmaxCrossEntropy --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_int_labels(backend, dtype):
    Z, y = logits_and_labels(dtype)
    P, n = softmax(Z), len(y)
    value, grad = run(backend, sn.SoftmaxCrossEntropy(), Z, y)
    assert close(value, -np.log(P[np.arange(n), y]).mean(), dtype)
    onehot = np.eye(Z.shape[1])[y]
    assert_close(grad, (P - onehot) / n, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_one_hot_equals_int_labels(backend, dtype):
    Z, y = logits_and_labels(dtype, seed=1)
    onehot = np.eye(Z.shape[1])[y]
    v1, g1 = run(backend, sn.SoftmaxCrossEntropy(), Z, y)
    v2, g2 = run(backend, sn.SoftmaxCrossEntropy(), Z, onehot)
    assert close(v1, v2, dtype)
    assert_close(g2, g1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_soft_targets(backend, dtype):
    Z, _ = logits_and_labels(dtype, seed=2)
    T = softmax(np.random.default_rng(3).normal(size=Z.shape))
    P = softmax(Z)
    value, grad = run(backend, sn.SoftmaxCrossEntropy(), Z, T)
    assert close(value, -(T * np.log(P)).sum(axis=1).mean(), dtype)
    assert_close(grad, (P - T) / len(Z), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_stable_for_huge_logits(backend, dtype):
    Z = np.array([[1e4, -1e4, 0.0],      # confident and right: loss 0
                  [-1e4, 1e4, 1e4],      # a tie between two classes: log 2
                  [1e4, -1e4, -1e4]],    # confident and wrong: 2e4
                 dtype=dtype)
    y = np.array([0, 2, 1])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        value, grad = run(backend, sn.SoftmaxCrossEntropy(), Z, y)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert close(value, (0 + np.log(2) + 2e4) / 3, dtype)
    expected = np.array([[0, 0, 0], [0, 0.5, -0.5], [1, -1, 0]]) / 3
    assert_close(grad, expected, dtype)


def test_softmax_cross_entropy_accepts_lists(backend):
    value, _ = run(backend, sn.SoftmaxCrossEntropy(), np.zeros((2, 4)), [1, 3])
    assert value == pytest.approx(np.log(4))


# --- CrossEntropy (on probabilities) -------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_int_labels(backend, dtype):
    Z, y = logits_and_labels(dtype, seed=4)
    P = softmax(Z).astype(dtype)
    n = len(y)
    value, grad = run(backend, sn.CrossEntropy(), P, y)
    P64 = P.astype(np.float64)
    assert close(value, -np.log(P64[np.arange(n), y]).mean(), dtype)
    expected = np.zeros_like(P64)
    expected[np.arange(n), y] = -1 / (P64[np.arange(n), y] * n)
    assert_close(grad, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_accepts_one_hot(backend, dtype):
    Z, y = logits_and_labels(dtype, seed=5)
    P = softmax(Z).astype(dtype)
    v1, g1 = run(backend, sn.CrossEntropy(), P, y)
    v2, g2 = run(backend, sn.CrossEntropy(), P, np.eye(P.shape[1])[y])
    v3, g3 = run(backend, sn.CrossEntropy(), P, np.eye(P.shape[1])[y].tolist())
    assert close(v1, v2, dtype) and close(v1, v3, dtype)
    assert_close(g2, g1, dtype)
    assert_close(g3, g1, dtype)


def test_cross_entropy_clips_zero_probability(backend):
    P = np.array([[0.0, 1.0], [0.5, 0.5]])
    value, grad = run(backend, sn.CrossEntropy(eps=1e-12), P, [0, 1])
    assert value == pytest.approx((-np.log(1e-12) - np.log(0.5)) / 2)
    assert np.isfinite(grad).all()


def test_cross_entropy_rejects_logits(backend):
    with pytest.raises(ValueError, match="probabilities"):
        run(backend, sn.CrossEntropy(), np.array([[2.0, -1.0]]), [0])


# --- BinaryCrossEntropy ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy(backend, dtype):
    rng = np.random.default_rng(6)
    P = rng.uniform(0.05, 0.95, size=(5, 3)).astype(dtype)
    T = rng.integers(0, 2, size=(5, 3)).astype(dtype)
    p = P.astype(np.float64)
    value, grad = run(backend, sn.BinaryCrossEntropy(), P, T)
    assert close(value, -(T * np.log(p) + (1 - T) * np.log(1 - p)).mean(), dtype)
    # mean over every element (PyTorch's BCELoss): divide by N*M
    assert_close(grad, (p - T) / (p * (1 - p)) / P.size, dtype)


def test_binary_cross_entropy_soft_targets_and_1d(backend):
    P = np.array([[0.2], [0.7], [0.9]])
    T = np.array([0.0, 0.5, 1.0])
    value, grad = run(backend, sn.BinaryCrossEntropy(), P, T)
    p, t = P[:, 0], T
    assert value == pytest.approx(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(), rel=1e-12)
    np.testing.assert_allclose(grad[:, 0], (p - t) / (p * (1 - p)) / 3, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_clips_0_and_1(backend, dtype):
    P = np.array([[0.0, 1.0, 0.0, 1.0]], dtype=dtype)
    T = np.array([[1.0, 0.0, 0.0, 1.0]])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        value, grad = run(backend, sn.BinaryCrossEntropy(eps=1e-7), P, T)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # probabilities clipped to [eps, 1 - eps] (as representable in dtype): each wrong
    # certainty costs about -log(eps), each right one about 0
    dt = np.dtype(dtype).type
    p = np.clip(P, dt(1e-7), dt(1 - 1e-7)).astype(np.float64)
    expected = -(T * np.log(p) + (1 - T) * np.log(1 - p)).mean()
    assert close(value, expected, dtype)
    assert value == pytest.approx(2 * -np.log(1e-7) / 4, rel=0.01)
    assert_close(grad, (p - T) / (p * (1 - p)) / 4, dtype)
    assert grad[0, 0] < 0 < grad[0, 1]


def test_binary_cross_entropy_rejects_targets_outside_0_1(backend):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run(backend, sn.BinaryCrossEntropy(), np.full((2, 1), 0.5), [0.0, 2.0])


# --- MSE ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_mean_over_all_elements(backend, dtype):
    rng = np.random.default_rng(7)
    out = rng.normal(size=(4, 3)).astype(dtype)
    y = rng.normal(size=(4, 3))
    value, grad = run(backend, sn.MSE(), out, y)
    d = out.astype(np.float64) - y.astype(dtype)
    assert close(value, (d ** 2).sum() / 12, dtype)          # / (N*M), not / N
    assert_close(grad, 2 * d / 12, dtype)


def test_mse_known_value(backend):
    value, grad = run(backend, sn.MSE(), np.array([[1.0, 2.0], [3.0, 4.0]]),
                      np.array([[0.0, 2.0], [3.0, 6.0]]))
    assert value == pytest.approx((1 + 0 + 0 + 4) / 4)
    np.testing.assert_allclose(grad, [[0.5, 0.0], [0.0, -1.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_int_labels_mean_one_hot(backend, dtype):
    rng = np.random.default_rng(8)
    out = rng.uniform(size=(5, 4)).astype(dtype)
    y = rng.integers(0, 4, size=5)
    v1, g1 = run(backend, sn.MSE(), out, y)
    v2, g2 = run(backend, sn.MSE(), out, np.eye(4)[y])
    d = out.astype(np.float64) - np.eye(4)[y]
    assert close(v1, (d ** 2).mean(), dtype) and close(v1, v2, dtype)
    assert_close(g1, 2 * d / d.size, dtype)
    assert_close(g2, g1, dtype)


def test_mse_single_output_accepts_1d_targets(backend):
    value, grad = run(backend, sn.MSE(), np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 0.0, 1.0]))
    assert value == pytest.approx((0 + 4 + 9) / 3)
    np.testing.assert_allclose(grad[:, 0], 2 * np.array([0.0, 2.0, 3.0]) / 3)


def test_mse_shape_mismatch(backend):
    with pytest.raises(ValueError, match="same shape"):
        run(backend, sn.MSE(), np.zeros((4, 2)), np.zeros((4, 3)))


# --- shared behaviour -----------------------------------------------------------

@pytest.mark.parametrize("loss", [sn.MSE, sn.SoftmaxCrossEntropy, sn.CrossEntropy,
                                  sn.BinaryCrossEntropy])
def test_backward_before_forward(loss):
    with pytest.raises(RuntimeError, match="before forward"):
        loss().backward()


@pytest.mark.parametrize("loss", [sn.SoftmaxCrossEntropy, sn.CrossEntropy, sn.MSE])
def test_per_sample_gradients_average_to_the_batch_gradient(backend, loss):
    """Every loss is a mean over the batch: the mean of per-row gradients times N
    equals the batch gradient times N -- what mode='per_sample' relies on."""
    Z, y = logits_and_labels("float64", n=6, seed=9)
    out = softmax(Z)
    _, g = run(backend, loss(), out, y)
    rows = np.concatenate([run(backend, loss(), out[i:i + 1], y[i:i + 1])[1] for i in range(6)])
    np.testing.assert_allclose(rows / 6, g, rtol=1e-12, atol=1e-15)


def test_loss_computes_on_the_backend_that_owns_the_array(monkeypatch):
    """With a GPU default backend (here a stand-in that owns no NumPy array), a loss
    on a host model's output still computes on the host."""
    from scratchnet import backends
    from scratchnet.backends.numpy_ops import NumpyOps

    class DeviceOnly(NumpyOps):
        name = "device"

        def is_own_array(self, x):
            return False

        def softmax_cross_entropy(self, logits, labels):
            raise AssertionError("a host array went to the device backend")

    monkeypatch.setitem(backends.BACKENDS, "device", (__name__, "DeviceOnly"))
    monkeypatch.setitem(backends._instances, "device", DeviceOnly())
    model = sn.Sequential([sn.Dense(3, 2)], seed=0, backend="numpy")
    X = np.ones((4, 3))
    with sn.use_backend("device"):
        value = sn.SoftmaxCrossEntropy().forward(model.forward(X), [0, 1, 1, 0])
    assert value == pytest.approx(
        sn.SoftmaxCrossEntropy().forward(model.forward(X), [0, 1, 1, 0]))


def test_mse_accepts_label_lists(backend):
    out = np.array([[0.9, 0.1], [0.2, 0.8]])
    v1, g1 = run(backend, sn.MSE(), out, [0, 1])
    v2, g2 = run(backend, sn.MSE(), out, np.array([0, 1]))
    assert v1 == v2
    np.testing.assert_array_equal(g1, g2)


def test_mse_tracks_accuracy_for_labels_and_one_hot_targets_only():
    X = np.random.default_rng(0).random((12, 3))
    labels = np.arange(12) % 3
    model = sn.Sequential([sn.Dense(3, 3), sn.Sigmoid()], seed=0, backend="numpy")
    for y, tracked in [(labels, True), (np.eye(3)[labels], True),
                       (np.random.default_rng(1).random((12, 3)), False)]:
        hist = model.fit(X, y, loss=sn.MSE(), optimizer=sn.SGD(0.1), epochs=1, batch_size=4)
        assert ("accuracy" in hist.history) is tracked
