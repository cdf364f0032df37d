"""The convolution, pooling and 2-D batch-norm primitives of every backend
against plain-loop references written here (float64 sums, one window at a
time), against torch.nn.functional when it is installed, and the fused
backends against the base class on the same inputs; then what is particular
to the Numba kernels: the composed default for what they do not cover,
contexts from another backend, argmax ties and NaNs, wide windows (int32
indices), large means in batch norm, an activation registered at run time,
and the reference CNN's training step on every backend.
"""

import itertools

import numpy as np
import pytest

import scratchnet as sn
from scratchnet import activations
from scratchnet.backends import get_ops
from scratchnet.backends.base import Ops

from conftest import to_host

DTYPES = [np.float64, np.float32]

#: n, (C, H, W), O, (kh, kw), (sh, sw), (ph, pw)
CONV_CASES = [
    (3, (1, 28, 28), 4, (3, 3), (1, 1), (1, 1)),     # the reference network's first layer
    (2, (5, 9, 9), 6, (3, 3), (1, 1), (1, 1)),       # "same" conv: one run per tap
    (2, (3, 7, 6), 4, (3, 3), (2, 2), (1, 1)),       # stride 2, odd and non-square input
    (2, (2, 6, 9), 3, (2, 3), (1, 2), (2, 1)),       # non-square kernel, stride, padding
    (2, (3, 5, 4), 2, (1, 1), (1, 1), (0, 0)),       # 1x1
    (2, (2, 8, 7), 3, (1, 1), (2, 3), (0, 0)),       # 1x1, strided
    (1, (2, 3, 3), 2, (5, 5), (1, 1), (2, 2)),       # kernel larger than the input
    (2, (2, 6, 6), 3, (3, 3), (3, 2), (3, 1)),       # padding as wide as the kernel
    (2, (2, 5, 7), 2, (2, 2), (3, 3), (0, 0)),       # stride larger than the kernel
    (3, (2, 4, 4), 2, (3, 3), (1, 1), (0, 0)),       # no padding
]
ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
#: (pool, stride), and the input's (H, W)
POOL_CASES = [((2, 2), (2, 2), (28, 28)), ((2, 2), (2, 2), (7, 9)), ((3, 3), (2, 2), (9, 8)),
              ((2, 3), (3, 2), (8, 9)), ((3, 2), (1, 1), (6, 5)), ((1, 1), (2, 2), (5, 6)),
              ((3, 3), (3, 3), (10, 11)), ((4, 4), (1, 3), (7, 9))]


def tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-11} if dtype == np.float64 else \
        {"rtol": 2e-4, "atol": 2e-5}


def close(got, want, dtype, scale=1.0):
    got = to_host(got)
    assert got.dtype == dtype and got.shape == want.shape
    t = tol(dtype)
    np.testing.assert_allclose(got, want, rtol=t["rtol"], atol=t["atol"] * scale)


def rand(shape, seed, dtype=np.float64, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ------------------------------------------------------------------ references
def act_forward(activation, z, alpha):
    return np.asarray(activations.get_activation(activation).forward(np, z, alpha, None), z.dtype)


def act_grad(activation, dy, y, alpha):
    spec = activations.get_activation(activation)
    return dy if spec.passes_gradient else dy * spec.derivative(np, y, alpha)


def ref_conv(X, W, b, stride, padding):
    """Cross-correlation as PyTorch, one output position at a time, in float64."""
    X, W = X.astype(np.float64), W.astype(np.float64)
    n, c, h, w = X.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    Xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    Xp[:, :, ph:ph + h, pw:pw + w] = X
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    Z = np.zeros((n, o, ho, wo))
    for i, j in itertools.product(range(ho), range(wo)):
        patch = Xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
        Z[:, :, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        Z += b.astype(np.float64)[:, None, None]
    return Z


def ref_conv_backward(dZ, X, W, stride, padding):
    """(dX, dW, db) of ``ref_conv`` for the gradient dZ of its output."""
    X, W = X.astype(np.float64), W.astype(np.float64)
    n, c, h, w = X.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    Xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    Xp[:, :, ph:ph + h, pw:pw + w] = X
    dXp, dW = np.zeros_like(Xp), np.zeros_like(W)
    for i, j in itertools.product(range(dZ.shape[2]), range(dZ.shape[3])):
        win = (slice(None), slice(None), slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))
        dW += np.tensordot(dZ[:, :, i, j], Xp[win], axes=([0], [0]))
        dXp[win] += np.tensordot(dZ[:, :, i, j], W, axes=([1], [0]))
    return dXp[:, :, ph:ph + h, pw:pw + w], dW, dZ.sum(axis=(0, 2, 3))


def windows(X, pool, stride):
    """[(i, j, window (N, C, kh, kw))] over the output positions."""
    (kh, kw), (sh, sw) = pool, stride
    ho, wo = (X.shape[2] - kh) // sh + 1, (X.shape[3] - kw) // sw + 1
    return [(i, j, X[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw])
            for i, j in itertools.product(range(ho), range(wo))], (ho, wo)


def ref_maxpool(X, pool, stride, dY=None):
    """(Y, dX): dY of each window goes to its first maximum (numpy.argmax's rule)."""
    wins, (ho, wo) = windows(X, pool, stride)
    Y = np.zeros(X.shape[:2] + (ho, wo), X.dtype)
    dX = np.zeros(X.shape)
    for i, j, win in wins:
        flat = win.reshape(win.shape[0], win.shape[1], -1)
        k = flat.argmax(axis=2)
        Y[:, :, i, j] = np.take_along_axis(flat, k[..., None], 2)[..., 0]
        if dY is not None:
            for n, c in itertools.product(range(X.shape[0]), range(X.shape[1])):
                a, b = divmod(int(k[n, c]), pool[1])
                dX[n, c, i * stride[0] + a, j * stride[1] + b] += dY[n, c, i, j]
    return Y, dX


def ref_avgpool(X, pool, stride, dY=None):
    wins, (ho, wo) = windows(X.astype(np.float64), pool, stride)
    Y = np.zeros(X.shape[:2] + (ho, wo))
    dX = np.zeros(X.shape)
    area = pool[0] * pool[1]
    for i, j, win in wins:
        Y[:, :, i, j] = win.sum(axis=(2, 3)) / area
        if dY is not None:
            dX[:, :, i * stride[0]:i * stride[0] + pool[0],
               j * stride[1]:j * stride[1] + pool[1]] += dY[:, :, i, j, None, None] / area
    return Y, dX


def ref_batchnorm2d(X, gamma, beta, eps, dY):
    X = X.astype(np.float64)
    m = X.shape[0] * X.shape[2] * X.shape[3]
    mean = X.mean(axis=(0, 2, 3))
    var = ((X - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))
    inv_std = 1 / np.sqrt(var + eps)
    xhat = (X - mean[:, None, None]) * inv_std[:, None, None]
    Y = xhat * gamma[:, None, None] + beta[:, None, None]
    dbeta = dY.sum(axis=(0, 2, 3))
    dgamma = (dY * xhat).sum(axis=(0, 2, 3))
    dX = (gamma * inv_std / m)[:, None, None] * (m * dY - dbeta[:, None, None]
                                                 - xhat * dgamma[:, None, None])
    return (Y, xhat, mean, var, inv_std), (dX, dgamma, dbeta)


# ------------------------------------------- every backend against the references
def conv_inputs(case, dtype, seed=0):
    n, (c, h, w), o, k, s, p = case
    X = rand((n, c, h, w), seed, dtype)
    W = rand((o, c) + k, seed + 1, dtype, scale=0.5)
    b = rand((o,), seed + 2, dtype)
    return X, W, b, s, p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[1])) + f"-k{c[3]}"
                         f"-s{c[4]}-p{c[5]}")
def test_conv2d_matches_the_loop_reference(ops, case, activation, dtype):
    X, W, b, s, p = conv_inputs(case, dtype)
    alpha = 0.1
    for bias in (b, None):
        Y, ctx = ops.conv2d_forward(ops.asarray(X), ops.asarray(W),
                                    None if bias is None else ops.asarray(bias), s, p,
                                    activation, alpha)
        Y_want = act_forward(activation, ref_conv(X, W, bias, s, p), alpha)
        close(Y, Y_want, dtype)
        dY = rand(Y_want.shape, 7, dtype)
        dZ = act_grad(activation, dY.astype(np.float64), to_host(Y).astype(np.float64), alpha)
        dX_want, dW_want, db_want = ref_conv_backward(dZ, X, W, s, p)
        dX, dW, db = ops.conv2d_backward(ops.asarray(dY), Y, ctx, ops.asarray(W), activation,
                                         alpha)
        close(dX, dX_want, dtype, scale=W.shape[0])
        close(dW, dW_want, dtype, scale=dY.size / W.shape[0])
        if bias is None:
            assert db is None
        else:
            close(db, db_want, dtype, scale=dY.size / W.shape[0])
        no_dX, dW2, _ = ops.conv2d_backward(ops.asarray(dY), Y, ctx, ops.asarray(W),
                                            activation, alpha, need_dX=False)
        assert no_dX is None
        close(dW2, dW_want, dtype, scale=dY.size / W.shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool, stride, hw", POOL_CASES)
def test_pooling_matches_the_loop_reference(ops, pool, stride, hw, dtype):
    X = rand((2, 3) + hw, 3, dtype)
    X[0, 0, :3, :3] = 0.5                      # ties inside windows
    X[1, 2] = np.round(X[1, 2])                # many more ties
    Y, ctx = ops.maxpool2d_forward(ops.asarray(X), pool, stride)
    dY = rand(to_host(Y).shape, 4, dtype)
    Y_want, dX_want = ref_maxpool(X, pool, stride, dY)
    np.testing.assert_array_equal(to_host(Y), Y_want)
    close(ops.maxpool2d_backward(ops.asarray(dY), ctx), dX_want, dtype)
    Y, ctx = ops.avgpool2d_forward(ops.asarray(X), pool, stride)
    Y_want, dX_want = ref_avgpool(X, pool, stride, dY)
    close(Y, Y_want, dtype)
    close(ops.avgpool2d_backward(ops.asarray(dY), ctx), dX_want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, offset", [((4, 3, 5, 6), 0.0), ((2, 5, 1, 1), 0.0),
                                           ((8, 2, 7, 7), 1e3), ((1, 3, 4, 5), -50.0)])
def test_batchnorm2d_matches_the_reference(ops, shape, offset, dtype):
    X = rand(shape, 5, dtype) * dtype(2) + dtype(offset)
    gamma, beta = rand(shape[1], 6, dtype), rand(shape[1], 7, dtype)
    dY = rand(shape, 8, dtype)
    fwd_want, bwd_want = ref_batchnorm2d(X, gamma, beta, 1e-5, dY.astype(np.float64))
    fwd = ops.batchnorm2d_forward(ops.asarray(X), ops.asarray(gamma), ops.asarray(beta), 1e-5)
    # float32 rounds X itself around a large mean: compare there at the data's precision
    scale = 1.0 if dtype == np.float64 else 1 + abs(offset) / 10
    for got, want in zip(fwd, fwd_want):
        close(got, want, dtype, scale=scale)
    bwd = ops.batchnorm2d_backward(ops.asarray(dY), fwd[1], ops.asarray(gamma), fwd[4])
    for got, want in zip(bwd, bwd_want):
        close(got, want, dtype, scale=scale * shape[0] * shape[2] * shape[3])


# ---------------------------------------------------------------- against PyTorch
TORCH_ACTS = {"identity": lambda t, F: t, "relu": lambda t, F: F.relu(t),
              "sigmoid": lambda t, F: t.sigmoid(), "tanh": lambda t, F: t.tanh(),
              "leaky_relu": lambda t, F: F.leaky_relu(t, 0.1)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("case", CONV_CASES[:4] + CONV_CASES[6:8])
def test_conv2d_matches_torch(ops, case, activation, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    X, W, b, s, p = conv_inputs(case, dtype, seed=3)
    tX, tW, tb = (torch.tensor(a, requires_grad=True) for a in (X, W, b))
    tY = TORCH_ACTS[activation](F.conv2d(tX, tW, tb, stride=s, padding=p), F)
    dY = rand(tuple(tY.shape), 9, dtype)
    tY.backward(torch.tensor(dY))
    Y, ctx = ops.conv2d_forward(ops.asarray(X), ops.asarray(W), ops.asarray(b), s, p,
                                activation, 0.1)
    close(Y, tY.detach().numpy(), dtype)
    dX, dW, db = ops.conv2d_backward(ops.asarray(dY), Y, ctx, ops.asarray(W), activation, 0.1)
    for got, want in ((dX, tX.grad), (dW, tW.grad), (db, tb.grad)):
        close(got, want.numpy(), dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool, stride, hw", POOL_CASES)
def test_pooling_matches_torch(ops, pool, stride, hw, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    X = rand((2, 3) + hw, 11, dtype)
    dY = None
    for name, fn in (("maxpool2d", F.max_pool2d), ("avgpool2d", F.avg_pool2d)):
        tX = torch.tensor(X, requires_grad=True)
        tY = fn(tX, pool, stride)
        dY = rand(tuple(tY.shape), 12, dtype) if dY is None else dY
        tY.backward(torch.tensor(dY))
        Y, ctx = getattr(ops, f"{name}_forward")(ops.asarray(X), pool, stride)
        close(Y, tY.detach().numpy(), dtype)
        close(getattr(ops, f"{name}_backward")(ops.asarray(dY), ctx), tX.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm2d_matches_torch(ops, dtype):
    torch = pytest.importorskip("torch")
    X = rand((6, 4, 5, 3), 13, dtype) + dtype(3)
    gamma, beta, dY = rand(4, 14, dtype), rand(4, 15, dtype), rand(X.shape, 16, dtype)
    tX, tg, tb = (torch.tensor(a, requires_grad=True) for a in (X, gamma, beta))
    tY = torch.nn.functional.batch_norm(tX, None, None, tg, tb, training=True, eps=1e-5)
    tY.backward(torch.tensor(dY))
    Y, xhat, mean, var, inv_std = ops.batchnorm2d_forward(
        ops.asarray(X), ops.asarray(gamma), ops.asarray(beta), 1e-5)
    close(Y, tY.detach().numpy(), dtype)
    close(mean, X.astype(np.float64).mean(axis=(0, 2, 3)), dtype)
    dX, dgamma, dbeta = ops.batchnorm2d_backward(ops.asarray(dY), xhat, ops.asarray(gamma),
                                                 inv_std)
    for got, want in ((dX, tX.grad), (dgamma, tg.grad), (dbeta, tb.grad)):
        close(got, want.numpy(), dtype, scale=100)


# ------------------------------------------ the fused backends against the base class
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_the_composed_default(ops, case, dtype):
    X, W, b, s, p = (ops.asarray(a) if hasattr(a, "shape") else a
                     for a in conv_inputs(case, dtype, seed=4))
    Y, ctx = ops.conv2d_forward(X, W, b, s, p, "relu")
    Yb, ctxb = Ops.conv2d_forward(ops, X, W, b, s, p, "relu")
    close(Y, to_host(Yb), dtype)
    dY = ops.asarray(rand(Y.shape, 17, dtype))
    got = ops.conv2d_backward(dY, Y, ctx, W, "relu")
    want = Ops.conv2d_backward(ops, dY, Yb, ctxb, W, "relu")
    for g, w in zip(got, want):
        close(g, to_host(w), dtype, scale=100)


# ------------------------------------------------------------ what the kernels do
@pytest.fixture(scope="module")
def nb():
    pytest.importorskip("numba")
    ops = get_ops("numba")
    return ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_bytes", [1, 12000, 1 << 40])
@pytest.mark.parametrize("case", [(5, (2, 6, 6), 3, (3, 3), (1, 1), (1, 1)),
                                  (5, (3, 7, 6), 2, (2, 3), (2, 1), (0, 2))])
def test_conv2d_in_chunks_of_samples(nb, monkeypatch, case, chunk_bytes, dtype):
    """One sample per chunk, chunks of 2 (float64) or 4 (float32) samples with a
    shorter last one, and the whole batch at once give the reference's result."""
    monkeypatch.setattr(nb, "conv_chunk_bytes", chunk_bytes)
    X, W, b, s, p = conv_inputs(case, dtype, seed=5)
    Y, ctx = nb.conv2d_forward(X, W, b, s, p, "relu")
    close(Y, act_forward("relu", ref_conv(X, W, b, s, p), 0.0), dtype)
    dY = rand(Y.shape, 6, dtype)
    dZ = act_grad("relu", dY.astype(np.float64), Y.astype(np.float64), 0.0)
    for got, want in zip(nb.conv2d_backward(dY, Y, ctx, W, "relu"),
                         ref_conv_backward(dZ, X, W, s, p)):
        close(got, want, dtype, scale=10)


def test_uncovered_dtypes_run_the_composed_default_and_its_backward(nb):
    """float16 runs the base class's forward; its context goes back to the base
    class's backward, which is what the NumPy backend computes."""
    ref = get_ops("numpy")
    X, W, b = rand((2, 2, 5, 5), 0, np.float16), rand((3, 2, 3, 3), 1, np.float16), None
    Y, ctx = nb.conv2d_forward(X, W, b, (1, 1), (1, 1), "relu")
    Yr, ctxr = ref.conv2d_forward(X, W, b, (1, 1), (1, 1), "relu")
    assert Y.dtype == np.float16
    np.testing.assert_array_equal(Y, Yr)
    for got, want in zip(nb.conv2d_backward(Y, Y, ctx, W, "relu"),
                         ref.conv2d_backward(Yr, Yr, ctxr, W, "relu")):
        assert (got is None and want is None) or np.array_equal(got, want)
    for kind in ("maxpool2d", "avgpool2d"):
        Y, ctx = getattr(nb, f"{kind}_forward")(X, (2, 2), (2, 2))
        Yr, ctxr = getattr(ref, f"{kind}_forward")(X, (2, 2), (2, 2))
        np.testing.assert_array_equal(Y, Yr)
        np.testing.assert_array_equal(getattr(nb, f"{kind}_backward")(Y, ctx),
                                      getattr(ref, f"{kind}_backward")(Yr, ctxr))
    g = np.ones(2, np.float16)
    for got, want in zip(nb.batchnorm2d_forward(X, g, g, 1e-3), ref.batchnorm2d_forward(X, g, g, 1e-3)):
        np.testing.assert_array_equal(got, want)


def test_mixed_dtypes_and_odd_geometry_use_the_default(nb):
    ref = get_ops("numpy")
    X, W = rand((2, 2, 5, 5), 0, np.float32), rand((3, 2, 3, 3), 1, np.float64)
    Y, ctx = nb.conv2d_forward(X, W, None, (1, 1), (0, 0))
    np.testing.assert_array_equal(Y, ref.conv2d_forward(X, W, None, (1, 1), (0, 0))[0])
    assert not type(ctx).__name__ == "ConvContext"


def test_non_contiguous_inputs_give_the_same_result(nb):
    X = rand((2, 3, 6, 7), 0, np.float32)
    W = rand((4, 3, 3, 3), 1, np.float32)
    Xt = np.ascontiguousarray(X.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    Wt = np.ascontiguousarray(W[:, ::-1])[:, ::-1]
    assert not Xt.flags.c_contiguous and not Wt.flags.c_contiguous
    Y, ctx = nb.conv2d_forward(X, W, None, (1, 1), (1, 1), "relu")
    Y2, ctx2 = nb.conv2d_forward(Xt, Wt, None, (1, 1), (1, 1), "relu")
    np.testing.assert_array_equal(Y, Y2)
    dY = rand(Y.shape, 2, np.float32)
    for a, b in zip(nb.conv2d_backward(dY, Y, ctx, W, "relu"),
                    nb.conv2d_backward(dY[:, ::-1].copy()[:, ::-1], Y2, ctx2, Wt, "relu")):
        assert (a is None and b is None) or np.array_equal(a, b)
    P, pctx = nb.maxpool2d_forward(Xt, (2, 2), (2, 2))
    np.testing.assert_array_equal(P, nb.maxpool2d_forward(X, (2, 2), (2, 2))[0])


def test_a_context_of_another_backend_goes_to_the_base_class(nb):
    ref = get_ops("numpy")
    X, W = rand((2, 2, 5, 5), 0), rand((3, 2, 3, 3), 1)
    Y, ctx = ref.conv2d_forward(X, W, None, (1, 1), (1, 1))
    want = ref.conv2d_backward(Y, Y, ctx, W)
    for a, b in zip(nb.conv2d_backward(Y, Y, ctx, W), want):
        assert (a is None and b is None) or np.array_equal(a, b)
    P, pctx = ref.maxpool2d_forward(X, (2, 2), (2, 2))
    np.testing.assert_array_equal(nb.maxpool2d_backward(P, pctx), ref.maxpool2d_backward(P, pctx))


def test_backward_names_a_gradient_that_does_not_fit(nb):
    X, W = rand((2, 2, 5, 5), 0, np.float32), rand((3, 2, 3, 3), 1, np.float32)
    Y, ctx = nb.conv2d_forward(X, W, None, (1, 1), (1, 1), "relu")
    with pytest.raises(TypeError, match="dY must have dtype float32"):
        nb.conv2d_backward(Y.astype(np.float64), Y, ctx, W, "relu")
    with pytest.raises(ValueError, match=r"dY must have shape \(2, 3, 5, 5\)"):
        nb.conv2d_backward(Y[:1], Y, ctx, W, "relu")
    P, pctx = nb.maxpool2d_forward(X, (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"dY must have shape \(2, 2, 2, 2\)"):
        nb.maxpool2d_backward(P[:, :1], pctx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_nan_is_the_maximum_and_the_first_one_wins(nb, dtype):
    X = np.zeros((1, 1, 4, 4), dtype)
    X[0, 0, 0, 1] = np.nan          # window (0, 0): NaN at tap 1
    X[0, 0, 1, 0] = np.nan          # ... and again at tap 2: the first one wins
    X[0, 0, 2, 3] = 5.0             # window (1, 1): max at tap 1
    X[0, 0, 3, 3] = np.nan          # ... but a later NaN is the maximum
    X[0, 0, 1, 2] = 2.0             # window (0, 1): ties at taps 1 and 3
    X[0, 0, 1, 3] = 2.0
    Y, ctx = nb.maxpool2d_forward(X, (2, 2), (2, 2))
    assert np.isnan(Y[0, 0, 0, 0]) and np.isnan(Y[0, 0, 1, 1]) and Y[0, 0, 0, 1] == 2.0
    np.testing.assert_array_equal(ctx.idx[0, 0], [[1, 2], [0, 3]])
    want = ref_maxpool(X, (2, 2), (2, 2))[0]
    np.testing.assert_array_equal(Y, want)
    dX = nb.maxpool2d_backward(np.ones_like(Y), ctx)
    assert dX[0, 0, 0, 1] == 1 and dX[0, 0, 1, 0] == 0 and dX[0, 0, 1, 2] == 1 and dX.sum() == 4
    # the general loops (3x3 windows) follow the same rule
    Y3, ctx3 = nb.maxpool2d_forward(X, (3, 3), (1, 1))
    np.testing.assert_array_equal(Y3, ref_maxpool(X, (3, 3), (1, 1))[0])


def test_wide_windows_keep_int32_indices(nb):
    X = rand((1, 2, 20, 20), 0, np.float32)
    for pool, dtype in (((16, 16), np.uint8), ((17, 16), np.int32)):
        Y, ctx = nb.maxpool2d_forward(X, pool, (2, 2))
        assert ctx.idx.dtype == dtype
        dY = rand(Y.shape, 1, np.float32)
        Y_want, dX_want = ref_maxpool(X, pool, (2, 2), dY)
        np.testing.assert_array_equal(Y, Y_want)
        close(nb.maxpool2d_backward(dY, ctx), dX_want, np.float32)


def test_batchnorm2d_constant_channel_and_huge_mean(nb):
    X = np.full((4, 2, 3, 3), 7.0)
    X[:, 1] = 1e8 + np.arange(36).reshape(4, 3, 3)   # variance 107.9 under a mean of 1e8
    g, b = np.ones(2), np.zeros(2)
    Y, xhat, mean, var, inv_std = nb.batchnorm2d_forward(X, g, b, 1e-5)
    assert var[0] == 0 and np.all(Y[:, 0] == 0)
    np.testing.assert_allclose(var[1], np.arange(36).var(), rtol=1e-12)
    np.testing.assert_allclose(mean[1], 1e8 + 17.5, rtol=1e-15)


def test_conv_kernels_follow_a_registered_activation(nb):
    """softplus, registered at run time, reaches the convolution's fused
    epilogue and prologue (rebuilt from the table), forward and backward."""
    from test_activations import SOFTPLUS, softplus_reference
    X, W, b = rand((2, 2, 6, 6), 0), rand((3, 2, 3, 3), 1), rand(3, 2)
    activations.register(SOFTPLUS)
    try:
        Y, ctx = nb.conv2d_forward(X, W, b, (1, 1), (1, 1), "softplus")
        f, df = softplus_reference(ref_conv(X, W, b, (1, 1), (1, 1)))
        np.testing.assert_allclose(Y, f, rtol=1e-12, atol=1e-12)
        dY = rand(Y.shape, 3)
        dX, dW, db = nb.conv2d_backward(dY, Y, ctx, W, "softplus")
        want = ref_conv_backward(dY * df, X, W, (1, 1), (1, 1))
        for got, w in zip((dX, dW, db), want):
            np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-10)
    finally:
        activations.unregister(SOFTPLUS.name)


# ------------------------------------------------- the reference CNN, one step
def reference_cnn(backend, dtype="float32", batchnorm=False):
    layers = [sn.Conv2D(1, 8, 3, padding=1, bias=not batchnorm)]  # BN cancels a bias: its gradient is noise
    layers += [sn.BatchNorm2D(8)] if batchnorm else []
    layers += [sn.ReLU(), sn.MaxPool2D(2), sn.Conv2D(8, 16, 3, padding=1), sn.ReLU(),
               sn.MaxPool2D(2), sn.Flatten(), sn.Dense(16 * 7 * 7, 32, activation="relu"),
               sn.Dense(32, 10)]
    return sn.Sequential(layers, seed=0, dtype=dtype, backend=backend)


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reference_cnn_steps_match_numpy(backend, dtype, batchnorm):
    """Three Adam steps of the reference network (narrower) on every backend:
    the same losses and weights as the NumPy backend."""
    rng = np.random.default_rng(0)
    X = rng.random((16, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 16)
    results = {}
    for name in ("numpy", backend):
        ops = get_ops(name)
        model = reference_cnn(name, dtype, batchnorm)
        opt, loss = sn.Adam(1e-3), sn.SoftmaxCrossEntropy()
        step = sn.training.MatrixStep(model, loss)
        losses = []
        for _ in range(3):
            value, _ = step(ops.asarray(X), ops.asarray(y))
            opt.step(model)
            losses.append(float(to_host(value)))
        results[name] = (losses, to_host(model.flat_parameters()))
    rtol = 1e-9 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(results[backend][0], results["numpy"][0], rtol=rtol)
    np.testing.assert_allclose(results[backend][1], results["numpy"][1], rtol=rtol,
                               atol=rtol * 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_full_reference_cnn_on_the_gpu_matches_numpy(dtype):
    """The reference network at full width (32 and 64 channels, dense 3136->128),
    two SGD-momentum steps on a batch of 32: CuPy (the CUDA kernels and cuBLAS)
    against the NumPy backend."""
    from scratchnet.backends import BackendUnavailableError
    try:
        get_ops("cupy")
    except BackendUnavailableError as err:
        pytest.skip(f"cupy backend unavailable: {err}")
    rng = np.random.default_rng(1)
    X = rng.random((32, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 32)
    results = {}
    for name in ("numpy", "cupy"):
        ops = get_ops(name)
        model = sn.Sequential([
            sn.Conv2D(1, 32, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2),
            sn.Conv2D(32, 64, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2),
            sn.Flatten(), sn.Dense(3136, 128, activation="relu"), sn.Dense(128, 10)],
            seed=0, dtype=dtype, backend=name)
        opt = sn.SGD(0.05, momentum=0.9)
        step = sn.training.MatrixStep(model, sn.SoftmaxCrossEntropy())
        losses = []
        for _ in range(2):
            value, _ = step(ops.asarray(X), ops.asarray(y))
            opt.step(model)
            losses.append(float(to_host(value)))
        results[name] = (losses, to_host(model.flat_parameters()))
    rtol = 1e-9 if dtype == "float64" else 1e-3
    np.testing.assert_allclose(results["cupy"][0], results["numpy"][0], rtol=rtol)
    np.testing.assert_allclose(results["cupy"][1], results["numpy"][1], rtol=rtol,
                               atol=rtol * 1e-2)
