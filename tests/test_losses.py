"""Losses: values and gradients against hand-written NumPy formulas, on every backend."""

import warnings

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import get_ops
from conftest import to_host as host

DTYPES = ["float32", "float64"]


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


@pytest.mark.parametrize("label", [-1, 3, 255])
@pytest.mark.parametrize("label_dtype", ["int64", "int32"])
def test_softmax_cross_entropy_rejects_labels_out_of_range(ops, label, label_dtype):
    """Every backend refuses a label outside [0, C) alike (NumPy used to read -1
    as the last class, Numba raised an IndexError)."""
    logits = ops.asarray(np.zeros((4, 3), np.float32))
    labels = ops.asarray(np.array([0, 2, label, 1], dtype=label_dtype))
    with pytest.raises(ValueError, match=rf"^softmax_cross_entropy: label {label} is out of "
                                         r"range \[0, 3\) for 3 classes$"):
        ops.softmax_cross_entropy(logits, labels)
    loss, _ = ops.softmax_cross_entropy(logits, ops.asarray(np.array([0, 2, 2, 1], label_dtype)))
    assert float(host(loss)) == pytest.approx(np.log(3))


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


def torch_loss(name, out, target, dtype):
    """(value, d value / d out) of torch.nn.<name>() in ``dtype``, or a skip without torch."""
    torch = pytest.importorskip("torch")
    tdtype = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}
    o = torch.tensor(np.asarray(out, dtype), dtype=tdtype[np.dtype(dtype)], requires_grad=True)
    value = getattr(torch.nn, name)()(o, torch.tensor(np.asarray(target, dtype)))
    value.backward()
    return value.item(), o.grad.numpy()


#: Saturated probabilities: exactly 0 and 1, within 1e-30 and 1e-7 of either end.
SATURATED_P = [0.0, 1.0, 1e-30, 1 - 1e-30, 1e-7, 1 - 1e-7, 0.5, 0.9]
SATURATED_T = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.3, 1.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_saturated_matches_torch(backend, dtype):
    """PyTorch's BCELoss: logs clamped at -100, gradient (p - t) / max(p(1-p), 1e-12) / n."""
    P = np.array([SATURATED_P, SATURATED_P[::-1]], dtype=dtype)
    T = np.array([SATURATED_T, SATURATED_T[::-1]])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        value, grad = run(backend, sn.BinaryCrossEntropy(), P, T)
    tv, tg = torch_loss("BCELoss", P, T, dtype)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert close(value, tv, dtype)
    np.testing.assert_allclose(grad, tg, rtol=1e-6 if dtype == "float32" else 1e-13)
    # and the formula itself, independently of torch
    p = P.astype(np.float64)
    expected_grad = (p - T) / np.maximum(p * (1 - p), float(np.float32(1e-12))) / P.size
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6 if dtype == "float32" else 1e-13)


def test_binary_cross_entropy_wrong_certainty_costs_100(backend):
    value, grad = run(backend, sn.BinaryCrossEntropy(), np.array([[0.0, 1.0]]),
                      np.array([[1.0, 0.0]]))
    assert value == 100.0
    # (p - t) / 1e-12 / 2, with PyTorch's 1e-12 rounded to float32 (9.99999996e-13)
    np.testing.assert_allclose(grad, [[-0.5e12, 0.5e12]], rtol=1e-8)


def test_binary_cross_entropy_rejects_logits(backend):
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\].*"
                                         "BinaryCrossEntropyWithLogits"):
        run(backend, sn.BinaryCrossEntropy(), np.array([[2.0], [-1.0]]), [1.0, 0.0])


def test_binary_cross_entropy_rejects_targets_outside_0_1(backend):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run(backend, sn.BinaryCrossEntropy(), np.full((2, 1), 0.5), [0.0, 2.0])


# --- BinaryCrossEntropyWithLogits -----------------------------------------------

LOGITS = [-1e4, -100.0, -20.0, -3.0, -1e-3, 0.0, 1e-20, 0.7, 5.0, 20.0, 100.0, 1e4]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_matches_torch(backend, dtype):
    rng = np.random.default_rng(12)
    Z = np.array([LOGITS, LOGITS[::-1], rng.normal(scale=4, size=len(LOGITS))], dtype=dtype)
    T = rng.integers(0, 2, size=Z.shape).astype(float)
    T[2, ::2] = rng.uniform(size=T[2, ::2].shape)  # soft targets too
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        value, grad = run(backend, sn.BinaryCrossEntropyWithLogits(), Z, T)
    tv, tg = torch_loss("BCEWithLogitsLoss", Z, T, dtype)
    assert close(value, tv, dtype)
    np.testing.assert_allclose(grad, tg, rtol=1e-6 if dtype == "float32" else 1e-13,
                               atol=1e-9 if dtype == "float32" else 1e-18)
    # and the formula itself, independently of torch: exact for any z
    z = Z.astype(np.float64)
    expected = (np.maximum(z, 0) - z * T + np.log1p(np.exp(-np.abs(z)))).mean()
    assert close(value, expected, dtype)
    assert_close(grad, (0.5 * (1 + np.tanh(z / 2)) - T) / Z.size, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_equals_sigmoid_then_bce(backend, dtype):
    """Where the sigmoid is not saturated, the fused loss is Sigmoid + BinaryCrossEntropy."""
    rng = np.random.default_rng(13)
    Z = rng.normal(scale=2, size=(6, 3)).astype(dtype)
    T = rng.integers(0, 2, size=(6, 3)).astype(float)
    v1, g1 = run(backend, sn.BCEWithLogits(), Z, T)
    P = (1 / (1 + np.exp(-Z.astype(np.float64)))).astype(dtype)
    v2, g2 = run(backend, sn.BinaryCrossEntropy(), P, T)
    assert close(v1, v2, dtype)
    assert_close(g1, g2 * P * (1 - P), dtype, rtol=1e-4 if dtype == "float32" else 1e-9)


def test_bce_with_logits_any_rank_and_1d_targets(backend):
    rng = np.random.default_rng(14)
    Z = rng.normal(scale=3, size=(4, 2, 3))
    T = rng.integers(0, 2, size=(4, 2, 3)).astype(float)
    value, grad = run(backend, sn.BCEWithLogits(), Z, T)
    tv, tg = torch_loss("BCEWithLogitsLoss", Z, T, "float64")
    assert value == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(grad, tg, rtol=1e-12)
    value, grad = run(backend, sn.BCEWithLogits(), Z[:, :1, 0], T[:, 0, 0])   # (N, 1), (N,)
    tv, tg = torch_loss("BCEWithLogitsLoss", Z[:, :1, 0], T[:, :1, 0], "float64")
    assert value == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(grad, tg, rtol=1e-12)


def test_bce_with_logits_accuracy_thresholds_at_zero(backend):
    ops = get_ops(backend)
    loss = sn.BCEWithLogits()
    Z = ops.asarray(np.array([[0.5, -2.0], [0.1, 0.2], [-0.1, -3.0], [0.0, -1.0]]))
    T = loss.prepare_targets(np.array([[1, 0], [1, 0], [0, 0], [1, 0]]), Z.shape, ops, Z.dtype)
    # rows: both right; second wrong; both right; z = 0 predicts 0, target 1: wrong
    assert int(loss.count_correct(Z, T, ops)) == 2
    Z3 = ops.asarray(np.array([[[1.0], [-1.0]], [[1.0], [1.0]]]))
    T3 = loss.prepare_targets(np.array([[[1], [0]], [[1], [0]]]), Z3.shape, ops, Z3.dtype)
    assert int(loss.count_correct(Z3, T3, ops)) == 1
    p = sn.BinaryCrossEntropy()
    assert int(p.count_correct(Z3 * 0 + 0.7, T3, ops)) == 0   # 0.7 > 0.5: all predict 1


def test_bce_with_logits_by_name_and_checks(backend):
    assert isinstance(sn.losses.get_loss("binary_cross_entropy_with_logits"),
                      sn.BinaryCrossEntropyWithLogits)
    assert sn.BCEWithLogits is sn.BinaryCrossEntropyWithLogits
    with pytest.raises(ValueError, match=r"BinaryCrossEntropyWithLogits targets .*\[0, 1\]"):
        run(backend, sn.BCEWithLogits(), np.zeros((2, 1)), [0.0, 2.0])
    with pytest.raises(ValueError, match="same shape"):
        run(backend, sn.BCEWithLogits(), np.zeros((2, 3)), np.zeros((2, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7, 1), (33, 5), (4, 3, 2), (300, 257)])
def test_sigmoid_bce_primitive_matches_numpy(ops, ref, dtype, shape):
    """ops.sigmoid_bce on every backend against the NumPy backend's composed default."""
    rng = np.random.default_rng(15)
    z = (rng.normal(size=shape) * 8).astype(dtype)
    z.reshape(-1)[:3] = [80.0, -80.0, 0.0][: z.size]
    t = rng.uniform(size=shape).astype(dtype)
    loss, grad = ops.sigmoid_bce(ops.asarray(z), ops.asarray(t))
    rloss, rgrad = ref.sigmoid_bce(z, t)
    assert host(grad).dtype == np.dtype(dtype) and host(grad).shape == shape
    assert host(loss).dtype == np.dtype(dtype) and host(loss).shape == ()
    tol = dict(rtol=1e-5, atol=1e-7 / z.size) if dtype == "float32" else \
        dict(rtol=1e-12, atol=1e-15 / z.size)
    np.testing.assert_allclose(host(loss), rloss, rtol=tol["rtol"])
    np.testing.assert_allclose(host(grad), rgrad, **tol)


def test_sigmoid_bce_primitive_noncontiguous_and_other_dtypes(ops, ref):
    rng = np.random.default_rng(16)
    z = rng.normal(size=(9, 8))
    t = rng.uniform(size=(9, 8))
    loss, grad = ops.sigmoid_bce(ops.asarray(z)[:, ::2], ops.asarray(t)[:, ::2])
    rloss, rgrad = ref.sigmoid_bce(z[:, ::2], t[:, ::2])
    np.testing.assert_allclose(host(loss), rloss, rtol=1e-12)
    np.testing.assert_allclose(host(grad), rgrad, rtol=1e-12)
    z16 = z.astype(np.float16)
    loss, grad = ops.sigmoid_bce(ops.asarray(z16), ops.asarray(t.astype(np.float16)))
    assert host(grad).dtype == np.float16
    with pytest.raises(ValueError, match="empty"):
        ops.sigmoid_bce(ops.asarray(np.zeros((0, 3))), ops.asarray(np.zeros((0, 3))))


def test_bce_with_logits_gradcheck(backend):
    rng = np.random.default_rng(17)
    X = rng.normal(size=(6, 4))
    for model, y in [
            (sn.Sequential([sn.Dense(4, 5), sn.Tanh(), sn.Dense(5, 3)], seed=17, dtype="float64",
                           backend=backend), rng.integers(0, 2, size=(6, 3)).astype(float)),
            (sn.Sequential([sn.Dense(4, 1)], seed=18, dtype="float64", backend=backend),
             rng.uniform(size=6))]:
        res = sn.gradcheck(model, sn.BCEWithLogits(), X, y)
        assert res, repr(res)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["bce", "bce_with_logits"])
def test_saturated_wrong_output_takes_network2s_step(backend, dtype, loss):
    """One weight, z = w x = 20 with x = 1, target 0, one SGD step with lr 1.

    Cross-entropy exists so that dC/dw = (sigmoid(z) - t) x: network2.py moves w
    to 20 - sigmoid(20) = 19.000000002. BinaryCrossEntropy used to divide by
    p(1 - p) after clipping p to 1 - 1e-7 and moved w only to 19.979. In
    float32 sigmoid(20) rounds to exactly 1, so only the loss on logits can
    take the step there (PyTorch's Sigmoid + BCELoss does not move either)."""
    layers = [sn.Dense(1, 1, bias=False)] + ([sn.Sigmoid()] if loss == "bce" else [])
    model = sn.Sequential(layers, seed=0, dtype=dtype, backend=backend)
    model.layers[0].W[...] = model.ops.asarray(np.array([[20.0]], dtype=dtype))
    criterion = sn.BinaryCrossEntropy() if loss == "bce" else sn.BCEWithLogits()
    criterion.forward(model.forward(np.ones((1, 1), dtype=dtype), training=True), [0.0])
    model.backward(criterion.backward())
    sn.SGD(lr=1.0).step(model)
    w = float(host(model.layers[0].W)[0, 0])
    if loss == "bce" and dtype == "float32":
        assert w == 20.0
    else:
        assert w == pytest.approx(20 - 1 / (1 + np.exp(-20.0)),
                                  abs=1e-6 if dtype == "float32" else 1e-12)


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
                                  sn.BinaryCrossEntropy, sn.BinaryCrossEntropyWithLogits])
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
