"""Layers: forward values against hand-written NumPy, backward against the NumPy
backend, and the behaviour each layer promises (shapes, stability, dropout
statistics, BatchNorm's running statistics, the residual skip, fusion)."""

import warnings

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import get_ops
from conftest import to_host as host

DTYPES = ["float32", "float64"]


def assert_close(actual, expected, dtype, rtol=None):
    """float32: ~1e-5 relative (to the array's scale); float64: tight."""
    actual, expected = host(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    tol = rtol if rtol is not None else (1e-5 if np.dtype(dtype) == np.float32 else 1e-10)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale + 1e-30)


def layer_on(backend, make, dtype, seed=0, name="layer"):
    """A layer built for ``backend`` and ``dtype`` from a seeded generator."""
    layer = make()
    layer.build(get_ops(backend), np.random.default_rng(seed), dtype, name)
    return layer


def inputs(shape, dtype, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))      # 1 / (1 + exp(-z)), without overflow


HAND = {
    "relu": (sn.ReLU, lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
    "leaky_relu": (lambda: sn.LeakyReLU(0.2), lambda z: np.where(z > 0, z, 0.2 * z),
                   lambda z: np.where(z > 0, 1.0, 0.2)),
    "sigmoid": (sn.Sigmoid, sigmoid, lambda z: sigmoid(z) * (1 - sigmoid(z))),
    "tanh": (sn.Tanh, np.tanh, lambda z: 1 - np.tanh(z) ** 2),
}


# --- Dense ----------------------------------------------------------------------

def test_dense_shapes(backend):
    layer = layer_on(backend, lambda: sn.Dense(5, 3), "float32")
    assert layer.W.shape == (5, 3) and layer.b.shape == (3,)
    assert layer.dW.shape == (5, 3) and layer.db.shape == (3,)
    assert layer.W.dtype == np.float32 and layer.b.dtype == np.float32
    np.testing.assert_array_equal(host(layer.b), 0)
    Y = layer.forward(inputs((7, 5), "float32"))
    assert Y.shape == (7, 3)
    dX = layer.backward(layer.ops.asarray(inputs((7, 3), "float32", 1)))
    assert dX.shape == (7, 5)
    assert layer.dW.shape == (5, 3) and layer.db.shape == (3,)


def test_dense_without_bias(backend):
    layer = layer_on(backend, lambda: sn.Dense(4, 2, bias=False), "float64")
    assert layer.b is None and layer.param_names == ("W",)
    X = inputs((3, 4), "float64")
    assert_close(layer.forward(X), X @ host(layer.W), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_backward(backend, dtype):
    layer = layer_on(backend, lambda: sn.Dense(6, 4), dtype)
    ops = layer.ops
    layer.b[...] = ops.asarray(inputs((4,), dtype, 9))
    W, b = host(layer.W).astype(np.float64), host(layer.b).astype(np.float64)
    X, dY = inputs((5, 6), dtype, 1), inputs((5, 4), dtype, 2)
    assert_close(layer.forward(X), X @ W + b, dtype)
    dX = layer.backward(ops.asarray(dY))
    assert_close(dX, dY @ W.T, dtype)
    assert_close(layer.dW, X.T.astype(np.float64) @ dY, dtype)
    assert_close(layer.db, dY.sum(axis=0), dtype)
    assert host(dX).dtype == np.dtype(dtype) and host(layer.dW).dtype == np.dtype(dtype)


def test_dense_gradients_are_overwritten(backend):
    layer = layer_on(backend, lambda: sn.Dense(3, 2), "float64")
    X, dY = inputs((4, 3), "float64"), inputs((4, 2), "float64", 1)
    for _ in range(3):
        layer.forward(X)
        layer.backward(layer.ops.asarray(dY))
    assert_close(layer.dW, X.T @ dY, "float64")
    assert_close(layer.db, dY.sum(axis=0), "float64")


def test_same_seed_same_weights_on_every_backend(backend):
    def make():
        return sn.Sequential([sn.Dense(4, 6, init="he"), sn.ReLU(), sn.Dense(6, 2)], seed=3,
                             backend=backend)
    ref = sn.Sequential([sn.Dense(4, 6, init="he"), sn.ReLU(), sn.Dense(6, 2)], seed=3,
                        backend="numpy")
    for (k, v), (k2, v2) in zip(make().state_arrays().items(), ref.state_arrays().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)


# --- activations ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(HAND))
def test_activation_forward_backward(backend, kind, dtype):
    make, f, df = HAND[kind]
    layer = layer_on(backend, make, dtype)
    X, dY = inputs((6, 5), dtype, 3, scale=3.0), inputs((6, 5), dtype, 4)
    Z = X.astype(np.float64)
    Y = layer.forward(X)
    assert host(Y).dtype == np.dtype(dtype)
    assert_close(Y, f(Z), dtype)
    assert_close(layer.backward(layer.ops.asarray(dY)), dY * df(Z), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_forward_backward(backend, dtype):
    layer = layer_on(backend, sn.Softmax, dtype)
    X, dY = inputs((4, 5), dtype, 5, scale=3.0), inputs((4, 5), dtype, 6)
    Z = X.astype(np.float64)
    e = np.exp(Z - Z.max(axis=1, keepdims=True))
    P = e / e.sum(axis=1, keepdims=True)
    assert_close(layer.forward(X), P, dtype)
    # Jacobian of softmax row i: diag(p) - p p^T
    expected = np.stack([(np.diag(p) - np.outer(p, p)) @ g for p, g in zip(P, dY)])
    assert_close(layer.backward(layer.ops.asarray(dY)), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_activations_stable_at_large_inputs(backend, kind, dtype):
    make = sn.Softmax if kind == "softmax" else HAND[kind][0]
    layer = layer_on(backend, make, dtype)
    X = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [3.0, -3.0, 1e4]], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        Y = host(layer.forward(X))
        dX = host(layer.backward(layer.ops.asarray(np.ones_like(X))))
    assert np.isfinite(Y).all() and np.isfinite(dX).all()
    Z = X.astype(np.float64)
    if kind == "softmax":
        assert_close(Y[0], [1, 0, 0], dtype)
        assert_close(Y[1], [0, 0, 1], dtype)
    else:
        assert_close(Y, HAND[kind][1](Z), dtype)


def test_leaky_relu_alpha_is_used(backend):
    layer = layer_on(backend, lambda: sn.LeakyReLU(0.5), "float64")
    X = np.array([[-2.0, 4.0]])
    assert_close(layer.forward(X), [[-1.0, 4.0]], "float64")
    assert_close(layer.backward(layer.ops.asarray(np.ones((1, 2)))), [[0.5, 1.0]], "float64")


# --- fused Dense + activation == the two layers called separately --------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(HAND))
def test_fused_dense_activation_equals_unfused(backend, kind, dtype):
    make = HAND[kind][0]
    model = sn.Sequential([sn.Dense(7, 5), make()], seed=4, dtype=dtype, backend=backend)
    dense, act = model.layers
    dense.b[...] = model.ops.asarray(inputs((5,), dtype, 7))
    X, dY = inputs((9, 7), dtype, 8), inputs((9, 5), dtype, 9)

    # fused: Sequential runs Dense+activation as one step
    Y_fused = host(model.forward(X, training=True)).copy()
    dX_fused = host(model.backward(model.ops.asarray(dY))).copy()
    dW_fused, db_fused = host(dense.dW).copy(), host(dense.db).copy()

    # unfused: each layer on its own
    Z = dense.forward(X, training=True)
    Y = act.forward(Z, training=True)
    dZ = act.backward(model.ops.asarray(dY))
    dX = dense.backward(dZ)

    assert_close(Y_fused, host(Y), dtype)
    assert_close(dX_fused, host(dX), dtype)
    assert_close(dW_fused, host(dense.dW), dtype)
    assert_close(db_fused, host(dense.db), dtype)


# --- backward on every backend == the NumPy backend -----------------------------

LAYERS = {
    "dense": lambda: sn.Dense(6, 6),
    "relu": sn.ReLU, "leaky_relu": lambda: sn.LeakyReLU(0.1), "sigmoid": sn.Sigmoid,
    "tanh": sn.Tanh, "softmax": sn.Softmax,
    "batchnorm": lambda: sn.BatchNorm(6),
    "residual": lambda: sn.Residual([sn.Dense(6, 6), sn.Tanh()]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_backward_matches_numpy_backend(backend, kind, dtype):
    layer = layer_on(backend, LAYERS[kind], dtype, seed=5)
    ref = layer_on("numpy", LAYERS[kind], dtype, seed=5)
    X, dY = inputs((8, 6), dtype, 10), inputs((8, 6), dtype, 11)
    assert_close(layer.forward(X, training=True), host(ref.forward(X, training=True)), dtype)
    assert_close(layer.backward(layer.ops.asarray(dY)), host(ref.backward(dY)), dtype)
    for lay, rlay in zip([layer, *layer.children()], [ref, *ref.children()]):
        for p in lay.param_names:
            assert_close(getattr(lay, "d" + p), host(getattr(rlay, "d" + p)), dtype)


# --- Dropout --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_eval_is_identity(backend, dtype):
    layer = layer_on(backend, lambda: sn.Dropout(0.5), dtype)
    X = inputs((10, 8), dtype)
    np.testing.assert_array_equal(host(layer.forward(X)), X)
    np.testing.assert_array_equal(host(layer.forward(X, training=False)), X)
    dY = inputs((10, 8), dtype, 1)
    np.testing.assert_array_equal(host(layer.backward(layer.ops.asarray(dY))), dY)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_training_scales_kept_units(backend, p):
    layer = layer_on(backend, lambda: sn.Dropout(p), "float64")
    X = np.random.default_rng(0).uniform(1, 2, size=(200, 100))      # never 0
    Y = host(layer.forward(X, training=True))
    dropped = Y == 0
    assert abs(dropped.mean() - p) < 0.02
    np.testing.assert_allclose(Y[~dropped], X[~dropped] / (1 - p), rtol=1e-12)
    dY = np.ones_like(X)
    dX = host(layer.backward(layer.ops.asarray(dY)))
    np.testing.assert_array_equal(dX == 0, dropped)
    np.testing.assert_allclose(dX[~dropped], 1 / (1 - p), rtol=1e-12)
    # a fresh mask each forward pass
    Y2 = host(layer.forward(X, training=True))
    assert ((Y2 == 0) != dropped).any()
    # mean preserved (inverted dropout)
    assert abs(Y.mean() / X.mean() - 1) < 0.05


def test_dropout_float32_mask(backend):
    layer = layer_on(backend, lambda: sn.Dropout(0.3), "float32")
    X = np.ones((50, 40), np.float32)
    Y = host(layer.forward(X, training=True))
    assert Y.dtype == np.float32
    kept = Y[Y != 0]
    assert 0 < kept.size < Y.size
    np.testing.assert_allclose(kept, 1 / 0.7, rtol=1e-6)


def test_dropout_p0_is_identity_in_training(backend):
    layer = layer_on(backend, lambda: sn.Dropout(0.0), "float32")
    X = inputs((10, 8), "float32")
    np.testing.assert_array_equal(host(layer.forward(X, training=True)), X)
    dY = inputs((10, 8), "float32", 1)
    np.testing.assert_array_equal(host(layer.backward(layer.ops.asarray(dY))), dY)


def test_dropout_masks_follow_the_model_seed(backend):
    def masks(seed):
        model = sn.Sequential([sn.Dense(4, 30), sn.Dropout(0.5)], seed=seed, backend=backend)
        X = np.ones((6, 4), np.float32)
        return [host(model.forward(X, training=True)) == 0 for _ in range(2)]
    a, b, c = masks(1), masks(1), masks(2)
    for m1, m2 in zip(a, b):
        np.testing.assert_array_equal(m1, m2)
    assert any((m1 != m3).any() for m1, m3 in zip(a, c))


# --- BatchNorm ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_training_forward_and_running_stats(backend, dtype):
    n = 4
    layer = layer_on(backend, lambda: sn.BatchNorm(n), dtype)
    ops = layer.ops
    gamma, beta = inputs((n,), dtype, 1) + 1, inputs((n,), dtype, 2)
    layer.gamma[...] = ops.asarray(gamma)
    layer.beta[...] = ops.asarray(beta)
    assert layer.eps == 1e-5 and layer.momentum == 0.1
    rm, rv = np.zeros(n), np.ones(n)
    for step in range(3):
        X = inputs((8, n), dtype, 10 + step, scale=2.0) + step
        Z = X.astype(np.float64)
        mean, var = Z.mean(axis=0), Z.var(axis=0)
        Y = layer.forward(X, training=True)
        assert_close(Y, (Z - mean) / np.sqrt(var + 1e-5) * gamma + beta, dtype)
        # PyTorch: running var uses the unbiased batch variance; momentum 0.1
        rm = 0.9 * rm + 0.1 * mean
        rv = 0.9 * rv + 0.1 * Z.var(axis=0, ddof=1)
        assert_close(layer.running_mean, rm, dtype)
        assert_close(layer.running_var, rv, dtype)
    # evaluation: normalise with the running statistics, which stay put
    X = inputs((5, n), dtype, 20)
    Y = layer.forward(X, training=False)
    assert_close(Y, (X - rm) / np.sqrt(rv + 1e-5) * gamma + beta, dtype)
    assert_close(layer.running_mean, rm, dtype)
    assert_close(layer.running_var, rv, dtype)
    assert host(layer.running_var).dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_backward(backend, dtype):
    n = 3
    layer = layer_on(backend, lambda: sn.BatchNorm(n), dtype)
    gamma = inputs((n,), dtype, 1) + 1
    layer.gamma[...] = layer.ops.asarray(gamma)
    X, dY = inputs((6, n), dtype, 2), inputs((6, n), dtype, 3)
    Z, G = X.astype(np.float64), dY.astype(np.float64)
    inv = 1 / np.sqrt(Z.var(axis=0) + 1e-5)
    xhat = (Z - Z.mean(axis=0)) * inv
    layer.forward(X, training=True)
    dX = layer.backward(layer.ops.asarray(dY))
    dxhat = G * gamma
    expected = inv * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
    assert_close(dX, expected, dtype, rtol=1e-4 if dtype == "float32" else None)
    assert_close(layer.dgamma, (G * xhat).sum(axis=0), dtype)
    assert_close(layer.dbeta, G.sum(axis=0), dtype)
    # evaluation mode: the statistics are constants
    layer.forward(X, training=False)
    dX = layer.backward(layer.ops.asarray(dY))
    rv = host(layer.running_var).astype(np.float64)
    assert_close(dX, G * gamma / np.sqrt(rv + 1e-5), dtype)


def test_batchnorm_custom_momentum_and_eps(backend):
    layer = layer_on(backend, lambda: sn.BatchNorm(2, eps=1e-3, momentum=0.5), "float64")
    X = inputs((5, 2), "float64", 1)
    Y = layer.forward(X, training=True)
    assert_close(Y, (X - X.mean(0)) / np.sqrt(X.var(0) + 1e-3), "float64")
    assert_close(layer.running_mean, 0.5 * X.mean(0), "float64")
    assert_close(layer.running_var, 0.5 + 0.5 * X.var(0, ddof=1), "float64")


# --- Residual -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_adds_skip(backend, dtype):
    layer = layer_on(backend, lambda: sn.Residual([sn.Dense(4, 4)]), dtype)
    dense = layer.layers[0]
    dense.b[...] = dense.ops.asarray(inputs((4,), dtype, 3))
    W, b = host(dense.W).astype(np.float64), host(dense.b).astype(np.float64)
    X, dY = inputs((5, 4), dtype, 1), inputs((5, 4), dtype, 2)
    assert_close(layer.forward(X), X + X @ W + b, dtype)
    assert_close(layer.backward(layer.ops.asarray(dY)), dY + dY @ W.T, dtype)
    assert_close(dense.dW, X.T.astype(np.float64) @ dY, dtype)


def test_residual_with_activation(backend):
    layer = layer_on(backend, lambda: sn.Residual([sn.Dense(3, 3), sn.ReLU()]), "float64")
    W, b = host(layer.layers[0].W), host(layer.layers[0].b)
    X = inputs((4, 3), "float64")
    assert_close(layer.forward(X), X + np.maximum(X @ W + b, 0), "float64")


def test_residual_must_keep_feature_count(backend):
    with pytest.raises(ValueError, match="keep the feature count"):
        sn.Sequential([sn.Residual([sn.Dense(4, 3)])], backend=backend)


@pytest.mark.parametrize("kind", ["identity", "relu", "leaky_relu", "sigmoid", "tanh"])
def test_base_primitives_write_into_out(kind):
    """The composed defaults honour ``out=`` for every activation."""
    from scratchnet.backends.numpy_ops import NumpyOps
    ops = NumpyOps()
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(5, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    out = np.empty_like(Z)
    Y = ops.bias_act(Z.copy(), b, kind, 0.1, out=out)
    assert Y is out
    np.testing.assert_allclose(out, ops.bias_act(Z.copy(), b, kind, 0.1), rtol=1e-6)
    dY = rng.normal(size=Z.shape).astype(np.float32)
    dout = np.empty_like(Z)
    dZ = ops.act_backward(dY, Y, kind, 0.1, out=dout)
    assert dZ is dout
    np.testing.assert_allclose(dout, ops.act_backward(dY, Y, kind, 0.1), rtol=1e-6)
