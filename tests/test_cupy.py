"""The cupy backend on a real GPU: the kernels compile and match the NumPy backend.

Every test needs a working CUDA device; where there is none the ``ops`` fixture
skips with the reason ``get_ops("cupy")`` gives. CPU-only runs deselect the
whole module with ``-m "not gpu"`` (nothing here imports CuPy at collection).
"""

import numpy
import pytest

from scratchnet.backends import ACTIVATIONS, BackendUnavailableError, get_ops
from scratchnet.backends.cupy_ops import KERNEL_FILES, chunking, name_expressions
from scratchnet.backends.numpy_ops import NumpyOps

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1), (127, 10), (4099, 1000)]
DTYPES = [numpy.float32, numpy.float64]
REF = NumpyOps()


@pytest.fixture(scope="module")
def ops():
    try:
        return get_ops("cupy")
    except BackendUnavailableError as err:
        pytest.skip(f"cupy backend unavailable: {err}")


@pytest.fixture(scope="module")
def cp(ops):
    return ops.xp


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == numpy.float32 else \
        {"rtol": 1e-12, "atol": 1e-14}


def data(shape, dtype, seed=0, scale=3.0):
    return (numpy.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def host(ops, x):
    out = ops.to_host(x)
    assert isinstance(out, numpy.ndarray)
    return out


# ----------------------------------------------------------------- set-up
def test_every_kernel_compiles(ops):
    every = [expr for source in KERNEL_FILES for expr in name_expressions(source)]
    assert ops.compile_kernels() == every
    assert len(ops._functions) >= len(every)


def test_describe_names_the_device(ops):
    assert ops.describe().startswith("cupy: cupy ")


@pytest.mark.parametrize("dtype", DTYPES + [numpy.int64])
def test_asarray_to_host_round_trip(ops, cp, dtype):
    x = numpy.arange(12, dtype=dtype).reshape(3, 4)
    d = ops.asarray(x)
    assert isinstance(d, cp.ndarray) and ops.is_own_array(d) and not ops.is_own_array(x)
    assert ops.asarray(d) is d
    back = ops.to_host(d)
    assert isinstance(back, numpy.ndarray) and back.dtype == dtype
    numpy.testing.assert_array_equal(back, x)
    assert ops.asarray(x, dtype=numpy.float32).dtype == numpy.float32
    ops.synchronize()


def test_host_arrays_are_rejected_with_the_fix(ops):
    with pytest.raises(TypeError, match=r"Z is a numpy array .*ops.asarray\(Z\)"):
        ops.bias_act(numpy.zeros((2, 2), numpy.float32), None, "relu")


def test_other_dtypes_use_the_composed_default(ops, cp):
    Z = cp.asarray(data((5, 4), numpy.float16))
    numpy.testing.assert_array_equal(host(ops, ops.bias_act(Z, None, "relu")),
                                     numpy.maximum(host(ops, Z), 0))


# ------------------------------------------------------------- activation
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_act(ops, cp, shape, dtype, activation):
    Z = data(shape, dtype)
    Z.flat[::7] *= 3000.0
    b = data(shape[1], dtype, seed=1)
    got = host(ops, ops.bias_act(cp.asarray(Z), cp.asarray(b), activation, alpha=0.2))
    want = REF.bias_act(Z.copy(), b, activation, alpha=0.2)
    assert got.dtype == dtype and numpy.isfinite(got).all()
    numpy.testing.assert_allclose(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_in_place(ops, cp, dtype):
    Z = data((127, 10), dtype)
    dZ = cp.asarray(Z)
    got = ops.bias_act(dZ, cp.asarray(Z[0]), "sigmoid", out=dZ)
    assert got is dZ
    numpy.testing.assert_allclose(host(ops, dZ), REF.bias_act(Z.copy(), Z[0], "sigmoid"),
                                  **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_act_backward_and_bias(ops, cp, shape, dtype, activation):
    Y = REF.bias_act(data(shape, dtype), None, activation, alpha=0.1).astype(dtype)
    dY = data(shape, dtype, seed=3)
    want = REF.act_backward(dY, Y, activation, alpha=0.1)
    got = host(ops, ops.act_backward(cp.asarray(dY), cp.asarray(Y), activation, alpha=0.1))
    numpy.testing.assert_allclose(got, want, **tol(dtype))

    dZ, db = ops.act_backward_bias(cp.asarray(dY), cp.asarray(Y), activation, alpha=0.1)
    numpy.testing.assert_allclose(host(ops, dZ), want, **tol(dtype))
    db_want = want.sum(axis=0)
    scale = numpy.abs(want).sum(axis=0) + 1
    numpy.testing.assert_array_less(numpy.abs(host(ops, db) - db_want) / scale,
                                    20 * numpy.finfo(dtype).eps)


def test_act_backward_bias_two_pass_shape_is_exercised():
    assert chunking(4099, 1000)[1] > 1 and chunking(1, 1)[1] == 1


# ---------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("huge", [False, True], ids=["normal", "1e4"])
def test_softmax_cross_entropy(ops, cp, shape, dtype, huge):
    n, c = shape
    rng = numpy.random.default_rng(6)
    logits = data(shape, dtype)
    if huge:
        logits = (rng.choice([-1e4, 1e4], size=shape) + logits).astype(dtype)
    labels = rng.integers(0, c, n)
    loss, grad = ops.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels))
    assert isinstance(loss, cp.ndarray) and loss.shape == () and loss.dtype == dtype
    loss_want, grad_want = REF.softmax_cross_entropy(logits, labels)
    rtol = (1e-4 if huge else 1e-5) if dtype == numpy.float32 else 1e-10
    numpy.testing.assert_allclose(host(ops, loss), loss_want, rtol=rtol)
    numpy.testing.assert_allclose(host(ops, grad), grad_want, rtol=max(rtol, 1e-4)
                                  if dtype == numpy.float32 else rtol,
                                  atol=tol(dtype)["atol"] / n)


@pytest.mark.parametrize("label_dtype", [numpy.int32, numpy.int64, numpy.uint8])
def test_softmax_cross_entropy_label_dtypes(ops, cp, label_dtype):
    logits = data((127, 10), numpy.float32)
    labels = numpy.random.default_rng(1).integers(0, 10, 127).astype(label_dtype)
    loss, grad = ops.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels))
    loss_want, grad_want = REF.softmax_cross_entropy(logits, labels.astype(numpy.int64))
    numpy.testing.assert_allclose(host(ops, loss), loss_want, rtol=1e-5)
    numpy.testing.assert_allclose(host(ops, grad), grad_want, rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------- optimizers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.9, False, 1e-2), (0.9, True, 5e-3)])
def test_sgd_update(ops, cp, shape, dtype, momentum, nesterov, weight_decay):
    p_want = data(shape, dtype)
    p_got = cp.asarray(p_want)
    v_want = numpy.zeros(shape, dtype) if momentum else None
    v_got = cp.zeros(shape, dtype) if momentum else None
    for step in range(3):
        g = data(shape, dtype, seed=10 + step)
        ops.sgd_update(p_got, cp.asarray(g), v_got, 0.05, momentum, nesterov, weight_decay)
        REF.sgd_update(p_want, g, v_want, 0.05, momentum, nesterov, weight_decay)
    numpy.testing.assert_allclose(host(ops, p_got), p_want, **tol(dtype))
    if momentum:
        numpy.testing.assert_allclose(host(ops, v_got), v_want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update(ops, cp, shape, dtype, weight_decay):
    p_want = data(shape, dtype)
    m_want, v_want = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    p_got, m_got, v_got = cp.asarray(p_want), cp.zeros(shape, dtype), cp.zeros(shape, dtype)
    for step in range(1, 5):
        g = data(shape, dtype, seed=20 + step)
        ops.adam_update(p_got, cp.asarray(g), m_got, v_got, step, 1e-3,
                        weight_decay=weight_decay)
        REF.adam_update(p_want, g, m_want, v_want, step, 1e-3, weight_decay=weight_decay)
    for got, want in ((p_got, p_want), (m_got, m_want), (v_got, v_want)):
        numpy.testing.assert_allclose(host(ops, got), want, **tol(dtype))


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_dropout(ops, cp, shape, dtype, p):
    X = data(shape, dtype)
    out, mask = ops.dropout(cp.asarray(X), p, ops.make_rng(0))
    out, mask = host(ops, out), host(ops, mask)
    assert out.dtype == mask.dtype == dtype
    numpy.testing.assert_array_equal(out, X * mask)
    assert set(numpy.unique(mask)) <= {dtype(0), dtype(1 / (1 - p))}
    if p == 0:
        assert (mask == 1).all()
    elif X.size > 10000:
        assert abs((mask == 0).mean() - p) < 0.01
    # Same seed, same mask.
    numpy.testing.assert_array_equal(host(ops, ops.dropout(cp.asarray(X), p,
                                                            ops.make_rng(0))[1]), mask)


def test_rng_state_round_trip(ops, cp):
    rng = ops.make_rng(3)
    X = cp.ones((64, 64), cp.float32)
    try:
        state = ops.rng_state(rng)
    except NotImplementedError as err:
        pytest.skip(str(err))
    first = host(ops, ops.dropout(X, 0.5, rng)[1])
    ops.set_rng_state(rng, state)
    numpy.testing.assert_array_equal(host(ops, ops.dropout(X, 0.5, rng)[1]), first)
