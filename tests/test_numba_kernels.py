"""The Numba backend's fused kernels against the NumPy reference backend.

Every fused method is compared with ``NumpyOps`` (the base class's composed
defaults) in float32 and float64, on awkward shapes, extreme values and
non-contiguous inputs; then dropout's statistics, compilation (``warmup``)
and the base class's method signatures.
"""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from scratchnet.backends import BackendUnavailableError  # noqa: E402
from scratchnet.backends import _numba_kernels as kernels  # noqa: E402
from scratchnet.backends import numba_ops  # noqa: E402
from scratchnet.backends.base import ACTIVATIONS, Ops  # noqa: E402
from scratchnet.backends.numba_ops import NumbaOps  # noqa: E402
from scratchnet.backends.numpy_ops import NumpyOps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (7, 13), (127, 10), (129, 257)]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(scope="module")
def nb():
    ops = NumbaOps()
    ops.check_available()
    return ops


@pytest.fixture(scope="module")
def ref():
    return NumpyOps()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def close(actual, expected, dtype):
    assert actual.dtype == expected.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


def noncontiguous(a, kind):
    """The same values as ``a`` in a transposed view or a strided slice."""
    if kind == "transposed":
        view = np.ascontiguousarray(a.T).T
    else:
        big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
        big[::2, ::3] = a
        view = big[::2, ::3]
    assert not view.flags.c_contiguous or a.size <= 1
    np.testing.assert_array_equal(view, a)
    return view


# ------------------------------------------------------------------------- exp
@kernels.jit
def _exp_loop(x, out):
    for k in range(x.shape[0]):
        out[k] = kernels.exp_nonpos(x[k])


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_nonpos_is_accurate_to_an_ulp_or_two(dtype):
    rng = np.random.default_rng(0)
    x = -np.abs(np.concatenate([rng.standard_normal(20000) * s for s in (1e-6, 1, 30, 300)]))
    x = np.concatenate([x, [0.0, -0.0, -86.9, -87.5, -700.0, -708.5, -1e4, -np.inf]])
    x = x.astype(dtype)
    out = np.empty_like(x)
    _exp_loop(x, out)
    exact = np.exp(x.astype(np.float64))
    normal = exact > np.finfo(dtype).tiny * 8  # flushed to 0 below that
    rel = np.abs(out[normal] - exact[normal]) / exact[normal]
    assert rel.max() < 3 * np.finfo(dtype).eps
    assert np.all(out[~normal] <= np.finfo(dtype).tiny * 8) and np.all(out >= 0)
    assert out[-1] == 0 and out[-8] == out[-7] == 1
    nan = np.array([np.nan], dtype)
    _exp_loop(nan, out[:1])
    assert np.isnan(out[0])


# ------------------------------------------------------------------ bias + act
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_bias_act_matches_numpy(nb, ref, rng, dtype, shape, activation, bias):
    Z = (rng.standard_normal(shape) * 4).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype) if bias else None
    expected = ref.bias_act(Z.copy(), b, activation, alpha=0.05)
    close(nb.bias_act(Z.copy(), b, activation, alpha=0.05), expected, dtype)
    # in place (out is Z) and into a separate out
    Zi = Z.copy()
    assert nb.bias_act(Zi, b, activation, alpha=0.05, out=Zi) is Zi
    close(Zi, expected, dtype)
    out = np.full_like(Z, np.nan)
    assert nb.bias_act(Z, b, activation, alpha=0.05, out=out) is out
    close(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_act_is_stable_for_huge_inputs(nb, ref, dtype, activation):
    Z = np.array([[1e4, -1e4, 88.0, -88.0, 710.0, -710.0, 0.0, -0.0, 1e-30, -1e-30]], dtype)
    with np.errstate(all="raise"):
        out = nb.bias_act(Z.copy(), None, activation)
    assert np.all(np.isfinite(out))
    with np.errstate(over="ignore"):
        close(out, ref.bias_act(Z.copy(), None, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["transposed", "strided"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_bias_act_noncontiguous(nb, ref, rng, dtype, kind, activation):
    Z = rng.standard_normal((33, 17)).astype(dtype)
    b = rng.standard_normal(34).astype(dtype)[::2]
    expected = ref.bias_act(Z.copy(), b, activation)
    Zv = noncontiguous(Z, kind)
    close(nb.bias_act(Zv, b, activation), expected, dtype)
    np.testing.assert_array_equal(Zv, Z)  # a read-only input is left alone
    out = noncontiguous(np.zeros_like(Z), kind)  # not writable by a kernel: the fallback
    close(nb.bias_act(Z, b, activation, out=out), expected, dtype)


def test_bias_act_falls_back_for_other_dtypes_and_names(nb, ref):
    Z = np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4)
    np.testing.assert_array_equal(nb.bias_act(Z, None, "relu"), ref.bias_act(Z, None, "relu"))
    with pytest.raises(ValueError, match="unknown activation"):
        nb.bias_act(Z.astype(np.float32), None, "swish")


# ---------------------------------------------------------------- act backward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_act_backward_bias_matches_numpy(nb, ref, rng, dtype, shape, activation):
    Y = ref.bias_act((rng.standard_normal(shape) * 2).astype(dtype), None, activation, 0.1)
    dY = rng.standard_normal(shape).astype(dtype)
    dZ, db = nb.act_backward_bias(dY, Y, activation, 0.1)
    rdZ, rdb = ref.act_backward_bias(dY, Y, activation, 0.1)
    close(dZ, rdZ, dtype)
    close(db, rdb, dtype)
    close(nb.act_backward(dY, Y, activation, 0.1), ref.act_backward(dY, Y, activation, 0.1),
          dtype)
    if activation == "identity":
        assert dZ is dY  # no copy
    else:
        out = dY.copy()  # in place over dY
        assert nb.act_backward_bias(out, Y, activation, 0.1, out=out)[0] is out
        close(out, rdZ, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["transposed", "strided"])
@pytest.mark.parametrize("activation", ["identity", "leaky_relu", "sigmoid"])
def test_act_backward_bias_noncontiguous(nb, ref, rng, dtype, kind, activation):
    Y = ref.bias_act(rng.standard_normal((31, 19)).astype(dtype), None, activation)
    dY = rng.standard_normal((31, 19)).astype(dtype)
    rdZ, rdb = ref.act_backward_bias(dY, Y, activation)
    dZ, db = nb.act_backward_bias(noncontiguous(dY, kind), noncontiguous(Y, kind), activation)
    close(np.asarray(dZ), rdZ, dtype)
    close(db, rdb, dtype)


# --------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(3, 5000)])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_cross_entropy_matches_numpy(nb, ref, rng, dtype, shape, scale):
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    loss, grad = nb.softmax_cross_entropy(logits, labels)
    rloss, rgrad = ref.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    close(loss, np.asarray(rloss), dtype)
    close(grad, rgrad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits(nb, ref, dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)
    labels = np.array([1, 2, 0], np.int32)
    loss, grad = nb.softmax_cross_entropy(logits, labels)
    rloss, rgrad = ref.softmax_cross_entropy(logits, labels)
    close(loss, np.asarray(rloss), dtype)
    close(grad, rgrad, dtype)
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["transposed", "strided"])
def test_softmax_cross_entropy_noncontiguous(nb, ref, rng, dtype, kind):
    logits = rng.standard_normal((65, 11)).astype(dtype)
    labels = rng.integers(0, 11, 130)[::2]  # strided labels too
    loss, grad = nb.softmax_cross_entropy(noncontiguous(logits, kind), labels)
    rloss, rgrad = ref.softmax_cross_entropy(logits, labels)
    close(loss, np.asarray(rloss), dtype)
    close(grad, rgrad, dtype)


def test_softmax_cross_entropy_nan_reaches_the_loss(nb):
    logits = np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]], np.float32)
    loss, _ = nb.softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.isnan(loss)


@pytest.mark.parametrize("label", [-1, 3])
def test_softmax_cross_entropy_rejects_labels_out_of_range(nb, label):
    with pytest.raises(ValueError, match=rf"label {label} is out of range \[0, 3\)"):
        nb.softmax_cross_entropy(np.zeros((2, 3), np.float32), np.array([0, label]))
    # the kernel itself still refuses to read outside the row (it does not bounds-check)
    with pytest.raises(IndexError, match="label"):
        kernels.softmax_cross_entropy(np.zeros((2, 3), np.float32), np.array([0, label]),
                                      np.empty((2, 3), np.float32))


# ----------------------------------------------------- count_correct, take_rows
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (127, 10), (33, 16), (40, 100)])
def test_count_correct_matches_numpy(nb, ref, rng, dtype, shape):
    scores = rng.standard_normal(shape).astype(dtype)
    scores[0, 0] = scores[0, -1] = 9.0  # a tie: the first maximum wins
    labels = rng.integers(0, shape[1], shape[0])
    labels[: shape[0] // 2] = scores[: shape[0] // 2].argmax(axis=1)
    assert nb.count_correct(scores, labels) == ref.count_correct(scores, labels)
    assert nb.count_correct(noncontiguous(scores, "transposed"), labels) == \
        ref.count_correct(scores, labels)


def test_count_correct_nan_is_the_argmax(nb, ref):
    scores = np.array([[1, np.nan, 3, np.nan], [np.nan, 1, 2, 3], [0, 1, 2, 3]], np.float32)
    for labels in ([1, 0, 3], [3, 3, 3], [2, 0, 0]):
        labels = np.array(labels)
        assert nb.count_correct(scores, labels) == ref.count_correct(scores, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_take_rows_matches_numpy(nb, ref, rng, dtype):
    X = rng.standard_normal((50, 9)).astype(dtype)
    idx = np.array([3, 0, 49, -1, 3, -50], np.int32)
    np.testing.assert_array_equal(nb.take_rows(X, idx), ref.take_rows(X, idx))
    out = np.empty((6, 9), dtype)
    assert nb.take_rows(X, idx, out=out) is out
    np.testing.assert_array_equal(out, X[idx])
    Xv = noncontiguous(X, "strided")  # falls back to numpy.take
    np.testing.assert_array_equal(nb.take_rows(Xv, idx), X[idx])
    with pytest.raises(IndexError):
        nb.take_rows(X, np.array([0, 50]))


# ------------------------------------------------------------------ optimizers
PARAM_SHAPES = [(1,), (13,), (1, 1), (7, 13), (129, 257)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PARAM_SHAPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_sgd_update_matches_numpy(nb, ref, rng, dtype, shape, momentum, nesterov,
                                  weight_decay):
    param = rng.standard_normal(shape).astype(dtype)
    velocity = np.zeros_like(param) if momentum else None
    p_ref, v_ref = param.copy(), None if velocity is None else velocity.copy()
    for _ in range(3):
        grad = rng.standard_normal(shape).astype(dtype)
        nb.sgd_update(param, grad, velocity, 0.1, momentum, nesterov, weight_decay)
        ref.sgd_update(p_ref, grad, v_ref, 0.1, momentum, nesterov, weight_decay)
    close(param, p_ref, dtype)
    if momentum:
        close(velocity, v_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PARAM_SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update_matches_numpy(nb, ref, rng, dtype, shape, weight_decay):
    param = rng.standard_normal(shape).astype(dtype)
    m, v = np.zeros_like(param), np.zeros_like(param)
    p_ref, m_ref, v_ref = param.copy(), m.copy(), v.copy()
    for step in range(1, 6):
        grad = rng.standard_normal(shape).astype(dtype)
        nb.adam_update(param, grad, m, v, step, 1e-2, weight_decay=weight_decay)
        ref.adam_update(p_ref, grad, m_ref, v_ref, step, 1e-2, weight_decay=weight_decay)
    close(param, p_ref, dtype)
    close(m, m_ref, dtype)
    close(v, v_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizers_with_noncontiguous_arrays(nb, ref, rng, dtype):
    """A strided grad is copied; a strided parameter goes to the base class."""
    base = rng.standard_normal((9, 16)).astype(dtype)
    grad = noncontiguous(rng.standard_normal((9, 8)).astype(dtype), "transposed")
    for param in (base[:, ::2], base[:, ::2].copy()):
        expected = np.array(param)
        ref.sgd_update(expected, grad, np.zeros_like(expected), 0.1, 0.9, True, 1e-2)
        nb.sgd_update(param, grad, np.zeros_like(expected), 0.1, 0.9, True, 1e-2)
        close(np.asarray(param), expected, dtype)
        expected, m, v = np.array(param), np.zeros_like(expected), np.zeros_like(expected)
        ref.adam_update(expected, grad, m.copy(), v.copy(), 1, 1e-3)
        nb.adam_update(param, grad, m, v, 1, 1e-3)
        close(np.asarray(param), expected, dtype)


# --------------------------------------------------------------------- dropout
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_values_and_fraction(nb, dtype, p):
    X = np.ones((1000, 1000), dtype)
    Y, mask = nb.dropout(X, p, nb.make_rng(0))
    assert mask.dtype == Y.dtype == dtype and mask.shape == X.shape
    scale = dtype(1.0 / (1.0 - p))
    assert set(np.unique(mask).tolist()) == {0.0, float(scale)}
    assert abs(np.mean(mask == 0) - p) < 0.003  # 1e6 draws: sd ~5e-4
    np.testing.assert_array_equal(Y, X * mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_is_deterministic_and_matches_numpy(nb, ref, rng, dtype):
    X = noncontiguous(rng.standard_normal((64, 33)).astype(dtype), "transposed")
    Y1, m1 = nb.dropout(X, 0.3, nb.make_rng(7))
    Y2, m2 = nb.dropout(X, 0.3, nb.make_rng(7))
    Yr, mr = ref.dropout(X, 0.3, ref.make_rng(7))  # the same uniforms, so the same mask
    for Y, m in ((Y2, m2), (Yr, mr)):
        np.testing.assert_array_equal(Y1, Y)
        np.testing.assert_array_equal(m1, m)
    assert not np.array_equal(nb.dropout(X, 0.3, nb.make_rng(8))[1], m1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_p0_is_identity(nb, rng, dtype):
    X = rng.standard_normal((5, 7)).astype(dtype)
    Y, mask = nb.dropout(X, 0.0, nb.make_rng(0))
    np.testing.assert_array_equal(Y, X)
    np.testing.assert_array_equal(mask, np.ones_like(X))


# ----------------------------------------------------- compiling and reporting
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_warmup_compiles_every_kernel(dtype):
    ops = NumbaOps()
    seconds = ops.warmup(dtype)
    assert isinstance(seconds, float) and seconds > 0
    assert set(ops.compile_times) == {f"{name}[{dtype}]" for name in kernels.KERNELS}
    assert all(t > 0 for t in ops.compile_times.values())
    for name in kernels.KERNELS:
        signatures = getattr(kernels, name).signatures
        assert any(sig[0].dtype == getattr(numba, dtype) for sig in signatures), name
    info = ops.describe()
    assert numba.__version__ in info and "serial" in info and "kernels compiled" in info


def test_overrides_keep_the_base_signatures():
    overridden = [name for name, attr in vars(NumbaOps).items()
                  if callable(attr) and hasattr(Ops, name) and not name.startswith("__")]
    assert {"bias_act", "act_backward", "act_backward_bias", "softmax_cross_entropy",
            "sgd_update", "adam_update", "dropout"} <= set(overridden)
    for name in overridden:
        assert inspect.signature(getattr(NumbaOps, name)) == \
            inspect.signature(getattr(Ops, name)), name


def _run_python(code, **env):
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                         os.environ.get("PYTHONPATH", "")]))
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=120)


def test_module_import_does_not_import_numba_and_cache_switch():
    proc = _run_python("import sys, scratchnet.backends.numba_ops as m; "
                       "print('numba' in sys.modules); m.NumbaOps(); print('numba' in sys.modules)")
    assert proc.stdout.split() == ["False", "False"], proc.stderr
    proc = _run_python("from scratchnet.backends import _numba_kernels as k; print(k.CACHE)",
                       SCRATCHNET_NUMBA_CACHE="0")
    assert proc.stdout.strip() == "False", proc.stderr


def test_check_available_names_the_cause(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now fails
    with pytest.raises(BackendUnavailableError) as info:
        NumbaOps().check_available()
    assert str(info.value) == "numba is not installed: pip install scratchnet[numba]"
    monkeypatch.setattr(numba_ops, "module_installed", lambda name: True)  # installed, broken
    with pytest.raises(BackendUnavailableError,
                       match="installed but cannot be imported: .*import of numba halted"):
        NumbaOps().check_available()
