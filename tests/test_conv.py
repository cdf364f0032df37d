"""Convolutional networks: Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D and
BatchNorm2D -- gradients by central differences, every backend against the
NumPy reference (layers and the primitives themselves), the per-sample loop,
save/load, summary, errors, image datasets, a real run and the CLI."""

import gzip
import math
import re
import struct

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import get_ops
from scratchnet.cli import main
from conftest import to_host as host

LOSS = sn.SoftmaxCrossEntropy()


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).normal(size=(n, c, h, w))


def labels(n, classes=3, seed=1):
    return np.random.default_rng(seed).integers(0, classes, size=n)


def head(layers, sample_shape, classes=3):
    """``layers`` then Flatten and a Dense to ``classes`` logits, so a
    classification loss checks the layers under test."""
    shape = tuple(sample_shape)
    for layer in layers:
        shape = layer.output_shape(shape)
    return [*layers, sn.Flatten(), sn.Dense(math.prod(shape), classes)]


def check(model, X, y, **kwargs):
    result = sn.gradcheck(model, LOSS, X, y, **kwargs)
    assert result.passed, result
    return result


# --- gradients by central differences (float64) ---------------------------------------

CONV_CASES = [
    # n, (C, H, W), out, kernel, stride, padding
    (3, (2, 5, 5), 3, 3, 1, 0),
    (2, (2, 7, 6), 3, 3, 2, 1),                   # odd, non-square input, stride 2
    (2, (1, 6, 9), 2, (2, 3), (1, 2), (2, 1)),    # non-square kernel and stride, padding 2
    (2, (3, 5, 4), 2, 1, 1, 0),                   # 1x1
    (2, (2, 8, 7), 2, 1, 2, 0),                   # 1x1, stride 2
    (2, (2, 6, 7), 2, 4, 2, 2),                   # kernel larger than the stride
    (1, (2, 5, 6), 3, (3, 2), 2, (0, 2)),         # batch of one
    (2, (1, 3, 3), 2, 5, 1, 1),                   # kernel larger than the input, padded
]


@pytest.mark.parametrize("n, shape, out, k, s, p", CONV_CASES)
def test_conv2d_gradcheck(backend, n, shape, out, k, s, p):
    conv = sn.Conv2D(shape[0], out, k, stride=s, padding=p, init="xavier")
    model = sn.Sequential(head([conv, sn.Tanh()], shape), seed=0, dtype="float64",
                          backend=backend)
    rng = np.random.default_rng(5)
    conv.b[...] = model.ops.asarray(rng.normal(size=out))     # a bias that is not zero
    result = check(model, images(n, *shape), labels(n))
    assert set(result.errors) == {"0.W", "0.b", "3.W", "3.b", "input"}


def test_conv2d_without_bias_gradcheck(backend):
    conv = sn.Conv2D(2, 3, 3, padding=1, bias=False)
    model = sn.Sequential(head([conv], (2, 4, 5)), seed=0, dtype="float64", backend=backend)
    assert [p for p, _, _ in model.named_parameters()] == ["0.W", "2.W", "2.b"]
    check(model, images(2, 2, 4, 5), labels(2))


@pytest.mark.parametrize("form", ["argument", "layer"])
@pytest.mark.parametrize("kind", ["tanh", "sigmoid"])
def test_conv2d_fused_activation_gradcheck(backend, form, kind):
    if form == "argument":
        layers = [sn.Conv2D(2, 3, 3, stride=2, padding=1, activation=kind)]
    else:
        layers = [sn.Conv2D(2, 3, 3, stride=2, padding=1),
                  {"tanh": sn.Tanh, "sigmoid": sn.Sigmoid}[kind]()]
    model = sn.Sequential(head(layers, (2, 7, 6)), seed=0, dtype="float64", backend=backend)
    if form == "layer":     # the activation runs inside the convolution's step
        assert model._plan[0] == (layers[0], layers[1])
    check(model, images(3, 2, 7, 6), labels(3))


def test_conv2d_argument_and_layer_fusion_agree(backend):
    X, y = images(3, 2, 6, 6), labels(3)
    a = sn.Sequential(head([sn.Conv2D(2, 3, 3, activation="relu")], (2, 6, 6)), seed=0,
                      dtype="float64", backend=backend)
    b = sn.Sequential(head([sn.Conv2D(2, 3, 3), sn.ReLU()], (2, 6, 6)), seed=0,
                      dtype="float64", backend=backend)
    np.testing.assert_array_equal(host(a.flat_parameters()), host(b.flat_parameters()))
    for m in (a, b):
        LOSS.forward(m.forward(X, training=True), y)
        m.backward(LOSS.backward())
    np.testing.assert_allclose(host(a.flat_gradients()), host(b.flat_gradients()), rtol=1e-12,
                               atol=1e-14)
    assert b.layers[1].Y is not None and b.layers[1].Y.shape == (3, 3, 4, 4)


def test_tied_conv2d_gradient_is_the_sum_over_its_uses(backend):
    conv = sn.Conv2D(2, 2, 3, padding=1, init="xavier")
    layers = [conv, sn.Tanh(), conv, sn.Tanh()]
    model = sn.Sequential(head(layers, (2, 5, 4)), seed=0, dtype="float64", backend=backend)
    assert [p for p, _, _ in model.named_parameters()] == ["0.W", "0.b", "5.W", "5.b"]
    conv.b[...] = model.ops.asarray([0.3, -0.2])
    check(model, images(2, 2, 5, 4), labels(2))
    # by hand: the gradient of a tied layer is the sum of two untied copies' gradients
    X, y = images(2, 2, 5, 4), labels(2)
    c1, c2 = sn.Conv2D(2, 2, 3, padding=1), sn.Conv2D(2, 2, 3, padding=1)
    untied = sn.Sequential(head([c1, sn.Tanh(), c2, sn.Tanh()], (2, 5, 4)), dtype="float64",
                           backend=backend)
    for c in (c1, c2):
        c.W[...], c.b[...] = conv.W, conv.b
    untied.layers[5].W[...], untied.layers[5].b[...] = model.layers[5].W, model.layers[5].b
    for m in (model, untied):
        LOSS.forward(m.forward(X, training=True), y)
        m.backward(LOSS.backward())
    np.testing.assert_allclose(host(conv.dW), host(c1.dW) + host(c2.dW), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(conv.db), host(c1.db) + host(c2.db), rtol=1e-12, atol=1e-14)


POOL_CASES = [
    (lambda: sn.MaxPool2D(2), (2, 6, 5)),
    (lambda: sn.MaxPool2D((3, 2), stride=(1, 2)), (2, 7, 6)),      # overlapping rows
    (lambda: sn.MaxPool2D(3, stride=2), (1, 7, 7)),
    (lambda: sn.AvgPool2D(2), (2, 5, 5)),
    (lambda: sn.AvgPool2D((2, 3), stride=1), (2, 4, 6)),
    (lambda: sn.AvgPool2D(3, stride=2), (1, 7, 8)),
    (lambda: sn.GlobalAvgPool2D(), (3, 4, 5)),
]


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("make, shape", POOL_CASES)
def test_pooling_gradcheck(backend, make, shape, n):
    model = sn.Sequential(head([make()], shape), seed=0, dtype="float64", backend=backend)
    result = check(model, images(n, *shape, seed=n), labels(n))
    assert "input" in result.errors


def test_conv_pool_stack_gradcheck(backend):
    layers = [sn.Conv2D(1, 3, 3, padding=1, activation="tanh"), sn.MaxPool2D(2),
              sn.Conv2D(3, 2, 2), sn.Sigmoid(), sn.AvgPool2D(2), sn.Conv2D(2, 4, 1),
              sn.GlobalAvgPool2D()]
    model = sn.Sequential([*layers, sn.Dense(4, 3)], seed=0, dtype="float64", backend=backend)
    check(model, images(2, 1, 9, 10), labels(2))


def bn_model(backend, shape=(3, 4, 5)):
    bn = sn.BatchNorm2D(shape[0])
    model = sn.Sequential(head([sn.Conv2D(shape[0], shape[0], 1), bn], shape), seed=0,
                          dtype="float64", backend=backend)
    rng = np.random.default_rng(3)
    bn.gamma[...] = model.ops.asarray(rng.uniform(0.5, 1.5, shape[0]))
    bn.beta[...] = model.ops.asarray(rng.normal(size=shape[0]))
    return model, bn


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_gradcheck(backend, training):
    model, bn = bn_model(backend)
    if not training:
        bn.running_mean[...] = model.ops.asarray([0.2, -0.1, 0.4])
        bn.running_var[...] = model.ops.asarray([0.5, 2.0, 1.3])
    X = images(3, 3, 4, 5) * 2 + 1
    result = check(model, X, labels(3), training=training)
    assert {"1.gamma", "1.beta"} <= set(result.errors)


def test_batchnorm2d_batch_of_one_uses_its_positions(backend):
    """Statistics are over (N, H, W): one image of several positions is a batch."""
    model, bn = bn_model(backend)
    check(model, images(1, 3, 4, 5), labels(1))


# --- every backend against the NumPy reference -----------------------------------------

def tolerances(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)


def same_model(backend, dtype, layers_fn, shape):
    return [sn.Sequential(head(layers_fn(), shape), seed=7, dtype=dtype, backend=b)
            for b in ("numpy", backend)]


def compare_models(ref, other, X, y, dtype, training=True):
    outs, dXs = [], []
    for m in (ref, other):
        out = m.forward(X, training=training)
        LOSS.forward(out, y)
        outs.append(host(out))
        dXs.append(host(m.backward(LOSS.backward())))
    tol = tolerances(dtype)
    np.testing.assert_allclose(outs[1], outs[0], **tol)
    np.testing.assert_allclose(dXs[1], dXs[0], **tol)
    for (path, la, name), (_, lb, _) in zip(ref.named_parameters(), other.named_parameters()):
        np.testing.assert_allclose(host(getattr(lb, "d" + name)), host(getattr(la, "d" + name)),
                                   err_msg=f"d{path}", **tol)


LAYER_STACKS = {
    "conv": (lambda: [sn.Conv2D(2, 4, 3, stride=2, padding=1)], (2, 9, 8)),
    "conv-relu": (lambda: [sn.Conv2D(2, 4, (3, 2), padding=(1, 0)), sn.ReLU()], (2, 6, 7)),
    "conv-leaky": (lambda: [sn.Conv2D(2, 4, 3, activation="leaky_relu")], (2, 6, 6)),
    "conv-sigmoid-nobias": (lambda: [sn.Conv2D(2, 3, 2, stride=(2, 1), bias=False),
                                     sn.Sigmoid()], (2, 7, 6)),
    "conv-tanh-1x1": (lambda: [sn.Conv2D(3, 4, 1, activation="tanh")], (3, 5, 4)),
    "maxpool": (lambda: [sn.Conv2D(2, 3, 3, padding=1), sn.MaxPool2D(2)], (2, 7, 6)),
    "maxpool-overlap": (lambda: [sn.MaxPool2D(3, stride=(1, 2))], (2, 7, 8)),
    "avgpool": (lambda: [sn.AvgPool2D((2, 3), stride=(2, 1))], (2, 7, 8)),
    "global": (lambda: [sn.Conv2D(2, 3, 3), sn.GlobalAvgPool2D()], (2, 6, 5)),
    "batchnorm2d": (lambda: [sn.Conv2D(2, 3, 3), sn.BatchNorm2D(3), sn.ReLU()], (2, 6, 5)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("stack", sorted(LAYER_STACKS))
def test_layers_match_numpy_backend(backend, stack, dtype):
    layers_fn, shape = LAYER_STACKS[stack]
    ref, other = same_model(backend, dtype, layers_fn, shape)
    X, y = images(4, *shape, seed=2), labels(4)
    compare_models(ref, other, X, y, dtype)
    if stack == "batchnorm2d":
        bn_ref, bn_other = ref.layers[1], other.layers[1]
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(host(getattr(bn_other, name)),
                                       host(getattr(bn_ref, name)), **tolerances(dtype))
        compare_models(ref, other, X, y, dtype, training=False)


PRIMITIVE_CONV_CASES = [
    # N, C, H, W, O, kh, kw, stride, padding, bias
    (3, 2, 7, 6, 4, 3, 3, (1, 1), (1, 1), True),
    (2, 3, 9, 8, 5, 3, 2, (2, 1), (0, 2), False),
    (1, 1, 5, 5, 2, 1, 1, (2, 2), (0, 0), True),
    (2, 4, 6, 7, 3, 4, 4, (2, 3), (2, 1), True),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ["identity", "relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("case", PRIMITIVE_CONV_CASES)
def test_conv2d_primitives_match_numpy(ops, ref, case, activation, dtype):
    n, c, h, w, o, kh, kw, stride, padding, bias = case
    rng = np.random.default_rng(11)
    X = rng.normal(size=(n, c, h, w)).astype(dtype)
    W = rng.normal(size=(o, c, kh, kw)).astype(dtype)
    b = rng.normal(size=o).astype(dtype) if bias else None
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    dY = rng.normal(size=(n, o, ho, wo)).astype(dtype)
    results = []
    for backend in (ref, ops):
        args = [backend.asarray(a) if a is not None else None for a in (X, W, b)]
        Y, ctx = backend.conv2d_forward(*args, stride, padding, activation, 0.1)
        assert Y.shape == (n, o, ho, wo) and Y.dtype == np.dtype(dtype)
        grads = backend.conv2d_backward(backend.asarray(dY), Y, ctx, args[1], activation, 0.1)
        dX, dW, db = grads
        assert dX.shape == X.shape and dW.shape == W.shape and dX.dtype == np.dtype(dtype)
        assert (db is None) == (not bias)
        no_dx = backend.conv2d_backward(backend.asarray(dY), Y, ctx, args[1], activation, 0.1,
                                        need_dX=False)
        assert no_dx[0] is None
        np.testing.assert_allclose(host(no_dx[1]), host(dW), rtol=1e-6, atol=1e-6)
        results.append([host(Y), host(dX), host(dW)] + ([host(db)] if bias else []))
    for got, want, what in zip(results[1], results[0], ["Y", "dX", "dW", "db"]):
        np.testing.assert_allclose(got, want, err_msg=what, **tolerances(dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("pool, stride", [((2, 2), (2, 2)), ((3, 2), (1, 2)), ((3, 3), (2, 2)),
                                          ((1, 1), (1, 1)), ((2, 3), (3, 1))])
def test_pool_primitives_match_numpy(ops, ref, pool, stride, dtype):
    rng = np.random.default_rng(4)
    X = rng.integers(0, 3, size=(2, 3, 8, 9)).astype(dtype)     # many tied maxima
    ho, wo = (8 - pool[0]) // stride[0] + 1, (9 - pool[1]) // stride[1] + 1
    dY = rng.normal(size=(2, 3, ho, wo)).astype(dtype)
    for kind in ("maxpool2d", "avgpool2d"):
        results = []
        for backend in (ref, ops):
            Y, ctx = getattr(backend, kind + "_forward")(backend.asarray(X), pool, stride)
            dX = getattr(backend, kind + "_backward")(backend.asarray(dY), ctx)
            assert Y.shape == (2, 3, ho, wo) and dX.shape == X.shape
            assert Y.dtype == dX.dtype == np.dtype(dtype)
            results.append((host(Y), host(dX)))
        for got, want in zip(results[1], results[0]):
            np.testing.assert_allclose(got, want, err_msg=kind, **tolerances(dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batchnorm2d_primitives_match_numpy(ops, ref, dtype):
    rng = np.random.default_rng(6)
    X = (rng.normal(size=(3, 4, 5, 6)) * 3 + 2).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, 4).astype(dtype), rng.normal(size=4).astype(dtype)
    dY = rng.normal(size=X.shape).astype(dtype)
    results = []
    for backend in (ref, ops):
        fwd = backend.batchnorm2d_forward(backend.asarray(X), backend.asarray(gamma),
                                          backend.asarray(beta), 1e-5)
        Y, xhat, mean, var, inv_std = fwd
        bwd = backend.batchnorm2d_backward(backend.asarray(dY), xhat, backend.asarray(gamma),
                                           inv_std)
        assert Y.shape == xhat.shape == X.shape and mean.shape == var.shape == (4,)
        results.append([host(a) for a in (*fwd, *bwd)])
    names = ["Y", "xhat", "mean", "var", "inv_std", "dX", "dgamma", "dbeta"]
    for got, want, what in zip(results[1], results[0], names):
        np.testing.assert_allclose(got, want, err_msg=what, **tolerances(dtype))


def test_maxpool_ties_send_the_gradient_to_the_first_maximum(ops):
    X = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, 2.0, 5.0, 5.0],
                    [7.0, 7.0, 4.0, 4.0],
                    [7.0, 7.0, 4.0, 4.0]]]])
    Y, ctx = ops.maxpool2d_forward(ops.asarray(X), (2, 2), (2, 2))
    dX = host(ops.maxpool2d_backward(ops.asarray(np.array([[[[1.0, 2.0], [3.0, 4.0]]]])), ctx))
    np.testing.assert_array_equal(host(Y), [[[[3.0, 5.0], [7.0, 4.0]]]])
    np.testing.assert_array_equal(dX, [[[[0, 1, 0, 0],
                                          [0, 0, 2, 0],
                                          [3, 0, 4, 0],
                                          [0, 0, 0, 0]]]])


def test_maxpool_propagates_nan(ops):
    """As PyTorch: a window holding a NaN has a NaN maximum."""
    X = np.array([[[[1.0, np.nan, 3.0, 2.0],
                    [2.0, 5.0, 1.0, np.nan]]]])
    Y, _ = ops.maxpool2d_forward(ops.asarray(X), (2, 2), (2, 2))
    assert np.isnan(host(Y)).all()


def test_first_layer_skips_its_input_gradient(backend):
    conv = sn.Conv2D(1, 2, 3)
    model = sn.Sequential(head([conv], (1, 5, 5)), seed=0, dtype="float64", backend=backend)
    X, y = images(2, 1, 5, 5), labels(2)
    LOSS.forward(model.forward(X, training=True), y)
    dX = model.backward(LOSS.backward())
    dW = host(conv.dW).copy()
    dY = model.layers[1].backward(model.layers[2].backward(LOSS.backward()))
    assert conv.backward(dY, need_input_grad=False) is None
    np.testing.assert_allclose(host(conv.dW), dW, rtol=1e-12)
    assert dX.shape == X.shape


# --- the per-sample loop, save/load, summary ---------------------------------------------

def small_cnn(backend, batchnorm=False, dtype="float64"):
    layers = [sn.Conv2D(1, 3, 3, padding=1)]
    if batchnorm:
        layers.append(sn.BatchNorm2D(3))
    layers += [sn.ReLU(), sn.MaxPool2D(2), sn.Conv2D(3, 4, 2, stride=2, activation="tanh"),
               sn.Flatten(), sn.Dense(4 * 2 * 2, 10)]
    return sn.Sequential(layers, seed=3, dtype=dtype, backend=backend)


def test_per_sample_equals_minibatch(backend):
    (X, y), _ = sn.datasets.load_digits(flat=False)
    X, y = X[:40], y[:40]
    params = []
    for mode in ("per_sample", "minibatch"):
        model = small_cnn(backend)
        model.fit(X, y, loss=LOSS, optimizer=sn.SGD(lr=0.1), epochs=2, batch_size=8, mode=mode,
                  shuffle=False)
        params.append(host(model.flat_parameters()))
    np.testing.assert_allclose(params[0], params[1], rtol=0, atol=1e-12)
    assert np.abs(params[0] - host(small_cnn(backend).flat_parameters())).max() > 1e-3


def test_save_load_round_trip_with_batchnorm2d(backend, tmp_path):
    (X, y), _ = sn.datasets.load_digits(flat=False)
    model = small_cnn(backend, batchnorm=True, dtype="float32")
    model.fit(X[:64], y[:64], loss=LOSS, optimizer=sn.Adam(1e-2), epochs=2, batch_size=16)
    path = tmp_path / "cnn.npz"
    model.save(path)
    loaded = sn.load(path, backend=backend)
    assert [type(x).__name__ for x in loaded.layers] == [type(x).__name__ for x in model.layers]
    assert loaded.get_config()["layers"] == model.get_config()["layers"]
    assert host(model.layers[1].running_var).std() > 0     # the statistics moved, and came back
    for name in ("running_mean", "running_var", "gamma", "beta"):
        np.testing.assert_array_equal(host(getattr(loaded.layers[1], name)),
                                      host(getattr(model.layers[1], name)))
    np.testing.assert_array_equal(loaded.predict(X[64:96]), model.predict(X[64:96]))
    # training continues identically from the file (optimizer state and data order)
    for m in (model, loaded):
        m.fit(X[:64], y[:64], loss=LOSS, optimizer=m.optimizer, epochs=1, batch_size=16)
    np.testing.assert_allclose(host(loaded.flat_parameters()), host(model.flat_parameters()),
                               rtol=1e-6, atol=1e-7)


def reference_cnn(backend="numpy"):
    return sn.Sequential([
        sn.Conv2D(1, 32, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2),
        sn.Conv2D(32, 64, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2),
        sn.Flatten(), sn.Dense(3136, 128), sn.ReLU(), sn.Dense(128, 10)], seed=0, backend=backend)


def test_summary_of_the_reference_network():
    model = reference_cnn()
    assert model.count_params() == 421_642
    text = model.summary(input_shape=(1, 28, 28))
    shapes = [re.search(r"\(N, [\d, ]+\)", line).group(0)
              for line in text.splitlines()[2:12]]
    assert shapes == ["(N, 32, 28, 28)", "(N, 32, 28, 28)", "(N, 32, 14, 14)",
                      "(N, 64, 14, 14)", "(N, 64, 14, 14)", "(N, 64, 7, 7)", "(N, 3136)",
                      "(N, 128)", "(N, 128)", "(N, 10)"]
    assert "total parameters: 421,642" in text
    assert "320" in text.splitlines()[2] and "18,496" in text.splitlines()[5]


def test_conv2d_weights_use_pytorch_layout_and_fans():
    conv = sn.Conv2D(16, 32, (3, 5))
    sn.Sequential([conv], seed=0, dtype="float64")
    W = host(conv.W)
    assert W.shape == (32, 16, 3, 5) and conv.b.shape == (32,)
    assert abs(W.std() - math.sqrt(2 / (16 * 15))) < 0.05 * math.sqrt(2 / (16 * 15))
    x = sn.Conv2D(16, 32, 3, init="xavier")
    sn.Sequential([x], seed=0, dtype="float64")
    bound = math.sqrt(6 / (16 * 9 + 32 * 9))
    assert host(x.W).max() <= bound and host(x.W).max() > 0.95 * bound
    # the same seed gives the same kernels on every backend
    assert np.array_equal(host(sn.Sequential([sn.Conv2D(2, 3, 3)], seed=4).layers[0].W),
                          host(sn.Sequential([sn.Conv2D(2, 3, 3)], seed=4).layers[0].W))


def test_conv2d_custom_init_must_give_the_kernel_shape():
    ok = sn.Conv2D(2, 3, 3, init=lambda rng, fan_in, fan_out: np.full((3, 2, 3, 3), 0.5))
    sn.Sequential([ok], seed=0)
    assert (host(ok.W) == 0.5).all()
    with pytest.raises(ValueError, match=r"returned shape \(18, 27\), expected \(3, 2, 3, 3\)"):
        sn.Conv2D(2, 3, 3, init=lambda rng, fan_in, fan_out: np.zeros((fan_in, fan_out)))


# --- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, message", [
    ({"kernel_size": 0}, ValueError, "Conv2D kernel_size must be an integer > 0"),
    ({"kernel_size": -3}, ValueError, "Conv2D kernel_size"),
    ({"kernel_size": 2.0}, TypeError, "Conv2D kernel_size"),
    ({"kernel_size": (3, 3, 3)}, ValueError, "Conv2D kernel_size .* got 3 values"),
    ({"kernel_size": (3, 0)}, ValueError, "Conv2D kernel_size"),
    ({"kernel_size": True}, TypeError, "Conv2D kernel_size"),
    ({"stride": 0}, ValueError, "Conv2D stride must be an integer > 0"),
    ({"stride": -1}, ValueError, "Conv2D stride"),
    ({"stride": 1.5}, TypeError, "Conv2D stride"),
    ({"stride": (1, 2, 1)}, ValueError, "Conv2D stride"),
    ({"padding": -1}, ValueError, "Conv2D padding must be an integer >= 0"),
    ({"padding": 1.0}, TypeError, "Conv2D padding"),
    ({"padding": (1, 1, 1)}, ValueError, "Conv2D padding"),
    ({"in_channels": 0}, ValueError, "Conv2D in_channels must be > 0"),
    ({"out_channels": 2.0}, TypeError, "Conv2D out_channels"),
    ({"init": "orthogonal"}, ValueError, "unknown init 'orthogonal'"),
    ({"activation": "swish"}, ValueError, "unknown activation 'swish'"),
])
def test_conv2d_argument_errors(kwargs, exc, message):
    args = {"in_channels": 1, "out_channels": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(exc, match=message):
        sn.Conv2D(**args)


@pytest.mark.parametrize("make, exc, message", [
    (lambda: sn.MaxPool2D(0), ValueError, "MaxPool2D pool_size must be an integer > 0"),
    (lambda: sn.MaxPool2D(2.0), TypeError, "MaxPool2D pool_size"),
    (lambda: sn.MaxPool2D((2, 2, 2)), ValueError, "MaxPool2D pool_size"),
    (lambda: sn.MaxPool2D(2, stride=0), ValueError, "MaxPool2D stride"),
    (lambda: sn.AvgPool2D(-2), ValueError, "AvgPool2D pool_size"),
    (lambda: sn.AvgPool2D(2, stride=(1, 1.5)), TypeError, "AvgPool2D stride"),
    (lambda: sn.BatchNorm2D(0), ValueError, "BatchNorm2D channels must be > 0"),
    (lambda: sn.BatchNorm2D(3, eps=0), ValueError, "BatchNorm2D eps"),
    (lambda: sn.BatchNorm2D(3, momentum=2), ValueError, "BatchNorm2D momentum"),
])
def test_pool_and_batchnorm2d_argument_errors(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_wrong_channel_count_names_the_layer_and_shapes(backend):
    model = sn.Sequential([sn.Conv2D(3, 4, 3), sn.Flatten(), sn.Dense(4 * 3 * 3, 2)],
                          backend=backend)
    with pytest.raises(ValueError, match=r"Conv2D\) expects 3 input channel\(s\) but gets 1 "
                                         r"\(input \(N, 1, 5, 5\)\)"):
        model.forward(np.zeros((2, 1, 5, 5)))
    bn = sn.Sequential([sn.BatchNorm2D(4)], backend=backend)
    with pytest.raises(ValueError, match=r"BatchNorm2D\) normalises 4 channel\(s\) but gets 3"):
        bn.forward(np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2D\) expects 3 input channel\(s\) but "
                                         r"gets 2 \(input \(N, 2, 7, 7\)\)"):
        sn.Sequential([sn.Conv2D(1, 2, 3), sn.Conv2D(3, 4, 3)]).summary(input_shape=(1, 9, 9))


def test_too_small_input_names_the_layer_and_sizes(backend):
    model = sn.Sequential([sn.Conv2D(1, 2, 5, padding=1), sn.Flatten()], backend=backend)
    with pytest.raises(ValueError, match=r"kernel height 5 is larger than the input's height 2 "
                                         r"padded by 1 on each side to 4"):
        model.forward(np.zeros((1, 1, 2, 9)))
    with pytest.raises(ValueError, match=r"kernel width 5 is larger than the input's width 3 "
                                         r"padded by 1 on each side to 5|kernel width 5"):
        model.forward(np.zeros((1, 1, 9, 2)))
    pool = sn.Sequential([sn.MaxPool2D(3)], backend=backend)
    with pytest.raises(ValueError, match=r"MaxPool2D\): pool width 3 is larger than the "
                                         r"input's width 2"):
        pool.forward(np.zeros((1, 1, 4, 2)))
    stack = sn.Sequential([sn.MaxPool2D(2), sn.MaxPool2D(2), sn.MaxPool2D(2)], backend=backend)
    with pytest.raises(ValueError, match=r"layer 2 \(MaxPool2D\).*pool height 2 is larger than "
                                         r"the input's height 1"):
        stack.forward(np.zeros((1, 1, 4, 4)))


def test_flat_input_to_an_image_layer_is_named(backend):
    for layer in (sn.Conv2D(1, 2, 3), sn.MaxPool2D(), sn.AvgPool2D(), sn.GlobalAvgPool2D(),
                  sn.BatchNorm2D(1)):
        model = sn.Sequential([layer], backend=backend)
        with pytest.raises(ValueError, match=rf"{type(layer).__name__}\) expects an image per "
                                             rf"sample, \(N, C, H, W\) in a batch, but gets "
                                             rf"\(N, 64\) \(images as flat rows\? load them "
                                             rf"with flat=False"):
            model.forward(np.zeros((2, 64)))
    with pytest.raises(ValueError, match=r"Conv2D\) expects an image.*gets \(N, 12\)"):
        sn.Sequential([sn.Flatten(), sn.Conv2D(1, 2, 3)]).summary(input_shape=(1, 3, 4))


def test_backward_with_a_wrong_gradient_shape(backend):
    conv = sn.Conv2D(1, 2, 3)
    sn.Sequential([conv], backend=backend)
    conv.forward(np.zeros((2, 1, 5, 5)))
    with pytest.raises(ValueError, match=r"dY has shape \(2, 2, 4, 4\), the forward output had "
                                         r"shape \(2, 2, 3, 3\)"):
        conv.backward(conv.ops.zeros((2, 2, 4, 4), conv.dtype))


# --- image datasets, a real run -----------------------------------------------------------

def test_load_digits_as_images():
    (Xf, yf), (Xtf, ytf) = sn.datasets.load_digits()
    (Xi, yi), (Xti, yti) = sn.datasets.load_digits(flat=False)
    assert Xi.shape == (len(Xf), 1, 8, 8) and Xti.shape == (len(Xtf), 1, 8, 8)
    np.testing.assert_array_equal(Xi.reshape(len(Xi), -1), Xf)
    np.testing.assert_array_equal(yi, yf)
    np.testing.assert_array_equal(Xti.reshape(len(Xti), -1), Xtf)


def _idx(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return gzip.compress(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
                         + arr.tobytes())


@pytest.mark.parametrize("loader", ["load_fashion_mnist", "load_mnist"])
def test_idx_datasets_as_images(tmp_path, loader):
    rng = np.random.default_rng(0)
    pixels = {"train": rng.integers(0, 256, (4, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    for split, arr in pixels.items():
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(_idx(arr))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(len(arr))))
    load = getattr(sn.datasets, loader)
    (Xi, yi), (Xti, _) = load(data_dir=tmp_path, flat=False)
    (Xf, _), _ = load(data_dir=tmp_path)
    assert Xi.shape == (4, 1, 28, 28) and Xti.shape == (3, 1, 28, 28) and Xf.shape == (4, 784)
    np.testing.assert_array_equal(Xi[:, 0], pixels["train"].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(yi, np.arange(4))


def test_a_small_cnn_learns_the_digits():
    (X, y), (Xt, yt) = sn.datasets.load_digits(flat=False)
    model = sn.Sequential([sn.Conv2D(1, 8, 3, padding=1, activation="relu"), sn.MaxPool2D(2),
                           sn.Flatten(), sn.Dense(8 * 4 * 4, 10)], seed=0)
    model.fit(X, y, loss=LOSS, optimizer=sn.Adam(1e-2), epochs=6, batch_size=32)
    assert model.evaluate(Xt, yt)["accuracy"] > 0.9


# --- the command line --------------------------------------------------------------------

def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_trains_a_cnn(capsys, tmp_path):
    path = tmp_path / "cnn.npz"
    code, out, err = run_cli(capsys, "train", "--model", "cnn", "--dataset", "digits", "--conv",
                             "8,16", "--epochs", "2", "--backend", "numpy", "--save", str(path))
    assert code == 0, err
    # --model cnn's defaults: BatchNorm2D, dropout after the dense layer, a
    # cosine schedule, no validation split
    assert "digits: 1437 train / 360 test, 1x8x8 images, 10 classes" in out
    assert "schedule cosine" in out
    assert "(N, 16, 2, 2)" in out and "epoch 2/2" in err
    line = [x for x in out.splitlines() if x.startswith("test accuracy")][0]
    assert float(line.split()[2]) > 0.3
    model = sn.load(path)
    assert [type(x).__name__ for x in model.layers] == [
        "Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "Conv2D", "BatchNorm2D", "ReLU",
        "MaxPool2D", "Flatten", "Dense", "BatchNorm", "ReLU", "Dropout", "Dense"]
    assert model.layers[4].W.shape == (16, 8, 3, 3) and model.layers[9].W.shape == (64, 128)
    assert model.layers[12].p == 0.3


def test_cli_cnn_reference_network(capsys, tmp_path):
    """--no-batchnorm --dropout 0 builds the reference CNN: no BatchNorm, no Dropout."""
    path = tmp_path / "cnn.npz"
    code, out, err = run_cli(capsys, "train", "--model", "cnn", "--no-batchnorm", "--dropout",
                             "0", "--schedule", "constant", "--epochs", "0", "--backend",
                             "numpy", "--quiet", "--save", str(path))
    assert code == 0, err
    assert [type(x).__name__ for x in sn.load(path).layers] == [
        "Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "ReLU",
        "Dense"]


def test_cli_cnn_options(capsys, tmp_path):
    path = tmp_path / "cnn.npz"
    code, out, err = run_cli(capsys, "train", "--model", "cnn", "--conv", "4", "--hidden", "16",
                             "--batchnorm", "--dropout", "0.2", "--activation", "tanh",
                             "--epochs", "1", "--backend", "numpy", "--quiet", "--save", str(path))
    assert code == 0, err
    kinds = [type(x).__name__ for x in sn.load(path).layers]
    assert kinds == ["Conv2D", "BatchNorm2D", "Tanh", "MaxPool2D", "Flatten", "Dense",
                     "BatchNorm", "Tanh", "Dropout", "Dense"]


def test_cli_cnn_per_sample(capsys):
    code, out, err = run_cli(capsys, "train", "--model", "cnn", "--conv", "2", "--hidden", "8",
                             "--epochs", "1", "--mode", "per_sample", "--backend", "numpy",
                             "--quiet")
    assert code == 0, err
    assert "test accuracy" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "cnn", "--conv", ""], "--conv must be comma-separated integers > 0 such as "
                                       "32,64; got '' (an empty size)"),
    (["--model", "cnn", "--conv", "32,,64"], "--conv must be comma-separated integers > 0"),
    (["--model", "cnn", "--conv", "8,x"], "got '8,x' ('x')"),
    (["--model", "cnn", "--conv", "0"], "--conv must be comma-separated integers > 0"),
    (["--conv", "8"], "--conv applies to --model cnn, not --model mlp"),
    (["--model", "cnn", "--conv", "4,4,4,4"], "--conv 4,4,4,4 has 4 conv+pool blocks, each "
                                              "halving the image, but the 8x8 images of digits "
                                              "allow at most 3"),
    (["--model", "cnn", "--dataset", "fashion-mnist", "--conv", "1,1,1,1,1"],
     "the 28x28 images of fashion-mnist allow at most 4"),
    (["--model", "transformer"], "invalid choice: 'transformer'"),
])
def test_cli_cnn_option_errors_before_loading_data(capsys, monkeypatch, argv, message):
    from scratchnet import cli

    def refuse(args):
        raise AssertionError("the data set was loaded before the options were checked")
    monkeypatch.setattr(cli, "load_data", refuse)
    for command in ("train", "compare"):
        code, out, err = run_cli(capsys, command, *argv)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("scratchnet") and message in lines[0], lines[0]
        assert "Traceback" not in err
