"""The CUDA kernels, run on the CPU and compared with the NumPy backend.

kernels/scratchnet_kernels.cu is compiled by g++ through tests/kernel_host_shim.h,
which runs every launch serially over its grid (see the header). The kernels are
driven through the *real* Python wrappers of ``CupyOps`` -- argument checks,
scalar casts, chunking, launch shapes -- by ``HostKernelOps``, a subclass whose
``xp`` is NumPy and whose ``_launch`` calls the shim through ctypes. Every launch
also checks that the packed arguments have exactly the C types of the kernel's
signature (read from the library's symbols), which is what a real launch through
``cupy.RawKernel`` needs to be right. No GPU and no CuPy are required.
"""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy
import pytest

from scratchnet.backends import ACTIVATIONS
from scratchnet.backends.cupy_ops import (BLOCK, CupyOps, FLOAT_CTYPES, chunking,
                                          launch_grid, name_expressions)
from scratchnet.backends.numpy_ops import NumpyOps

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "kernels"
SHIM = Path(__file__).with_name("kernel_host_shim.cpp")
CXX = shutil.which("g++")
NM = shutil.which("nm")

pytestmark = pytest.mark.skipif(CXX is None, reason="g++ is not on PATH: cannot build "
                                                     "the host shim for the CUDA kernels")

SHAPES = [(1, 1), (127, 10), (300, 257)]
DTYPES = [numpy.float32, numpy.float64]
#: (grid, block) forced on every launch, or "cover": the backend's own block size
#: and enough blocks that each thread owns at most one work item.
LAUNCHES = [(3, 32), (1, 1), "cover"]

REF = NumpyOps()


def tol(dtype):
    return {"rtol": 2e-5, "atol": 1e-6} if dtype == numpy.float32 else \
        {"rtol": 1e-12, "atol": 1e-14}


# ----------------------------------------------------------------- building
def build_shim(out_dir, kernel_dir=KERNEL_DIR):
    """Build the kernels in ``kernel_dir`` for the host: (ctypes library, {name
    expression: C arg types} or None without nm)."""
    lib_path = out_dir / "libscratchnet_kernels_host.so"
    cmd = [CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-shared", "-fPIC",
           f"-I{kernel_dir}", str(SHIM), "-o", str(lib_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"host build of the kernels failed:\n{' '.join(cmd)}\n{proc.stderr}")
    assert "warning" not in proc.stderr, proc.stderr
    signatures = None
    if NM is not None:
        out = subprocess.run([NM, "-C", "--defined-only", str(lib_path)],
                             capture_output=True, text=True, check=True).stdout
        signatures = {}
        for line in out.splitlines():
            decl = line.split(" ", 2)[-1]
            if decl.startswith("void ") and "(" in decl:
                name, args = decl[len("void "):].split("(", 1)
                signatures[name] = [a.strip() for a in args.rstrip(")").split(",")]
    return ctypes.CDLL(str(lib_path)), signatures


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    """The host build of the kernels: (ctypes library, {name expression: C arg types})."""
    return build_shim(tmp_path_factory.mktemp("kernels_host"))


def symbol(expr):
    """'softmax_xent_rows<float, long long>' -> 'sn_softmax_xent_rows_f32_i64'."""
    base, targs = expr.rstrip(">").split("<")
    short = {"float": "f32", "double": "f64", "int": "i32", "long long": "i64"}
    return "sn_" + base + "".join("_" + short[t.strip()] for t in targs.split(","))


_SCALAR_C = {numpy.int32: ("int", ctypes.c_int), numpy.int64: ("long long", ctypes.c_longlong),
             numpy.float32: ("float", ctypes.c_float),
             numpy.float64: ("double", ctypes.c_double)}
_ARRAY_C = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double",
            numpy.dtype(numpy.int32): "int", numpy.dtype(numpy.int64): "long long"}


class HostKernelOps(CupyOps):
    """CupyOps on NumPy arrays, launching the host build of the kernels."""

    name = "cupy-host-shim"

    def __init__(self, shim, launch):
        # No super().__init__(): that imports CuPy.
        self.xp = numpy
        self._unavailable = None
        self.lib, self.signatures = shim
        self.launch = launch
        self.launched = []

    @staticmethod
    def _check_device(name, arr):
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"{name} must be a numpy array here, got {type(arr).__name__}")

    def _launch(self, expr, n, args, block=BLOCK):
        assert expr in name_expressions(), f"{expr} is not compiled by CupyOps"
        ctypes_args, c_types, values = [], [], []
        for a in args:
            if a is None:
                c_types.append("*")
                ctypes_args.append(ctypes.c_void_p)
                values.append(None)
            elif isinstance(a, numpy.ndarray):
                assert a.flags.c_contiguous, f"{expr}: non-contiguous array launched"
                c_types.append(_ARRAY_C[a.dtype] + "*")
                ctypes_args.append(ctypes.c_void_p)
                values.append(a.ctypes.data)
            else:
                assert type(a) in _SCALAR_C, f"{expr}: argument {a!r} of type {type(a)}"
                c_name, c_type = _SCALAR_C[type(a)]
                c_types.append(c_name)
                ctypes_args.append(c_type)
                values.append(a)
        if self.signatures is not None:
            declared = [t.replace(" const", "").replace(" ", "").replace("longlong", "long long")
                        for t in self.signatures[expr]]
            assert len(declared) == len(c_types), f"{expr}: {c_types} vs {declared}"
            for got, want in zip(c_types, declared):
                assert got == want or (got == "*" and want.endswith("*")), \
                    f"{expr}: packed {c_types}, kernel takes {declared}"
        grid, block = (launch_grid(n, 1 << 30, block), block) if self.launch == "cover" \
            else self.launch
        fn = getattr(self.lib, symbol(expr))
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint, *ctypes_args]
        fn.restype = None
        fn(grid, block, *values)
        self.launched.append(expr)


@pytest.fixture(scope="module", params=LAUNCHES, ids=lambda p: "cover" if p == "cover"
                else f"grid{p[0]}x{p[1]}")
def ops(shim, request):
    return HostKernelOps(shim, request.param)


def data(shape, dtype, seed=0, scale=3.0):
    return (numpy.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ------------------------------------------------------------------ symbols
def test_every_name_expression_is_instantiated(shim):
    lib, signatures = shim
    for expr in name_expressions():
        assert hasattr(lib, symbol(expr)), symbol(expr)
        if signatures is not None:
            assert expr in signatures, f"{expr} not instantiated in {KERNEL_DIR}"


@pytest.mark.parametrize("i", [0, 1, 9, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 7,
                               3 * 2**40 + 5, 2**62 + 11])
@pytest.mark.parametrize("d", [1, 3, 10, 257, 2**31 - 1])
def test_divmod_both_branches(shim, i, d):
    lib = shim[0]
    q, r = ctypes.c_longlong(), ctypes.c_int()
    lib.sn_test_divmod.argtypes = [ctypes.c_longlong, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_longlong), ctypes.POINTER(ctypes.c_int)]
    lib.sn_test_divmod(i, d, ctypes.byref(q), ctypes.byref(r))
    assert (q.value, r.value) == divmod(i, d)


# ----------------------------------------------------------------- bias_act
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_act(ops, shape, dtype, activation):
    Z = data(shape, dtype)
    Z.flat[::7] *= 3000.0  # ~1e4: sigmoid and tanh must saturate, not overflow
    b = data(shape[1], dtype, seed=1)
    for bias in (b, None):
        got = ops.bias_act(Z.copy(), bias, activation, alpha=0.2)
        want = REF.bias_act(Z.copy(), bias, activation, alpha=0.2)
        assert got.dtype == dtype and got.shape == shape
        assert numpy.isfinite(got).all()
        numpy.testing.assert_allclose(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_in_place(ops, dtype):
    Z = data((127, 10), dtype)
    b = data(10, dtype, seed=1)
    want = REF.bias_act(Z.copy(), b, "relu")
    got = ops.bias_act(Z, b, "relu", out=Z)
    assert got is Z
    numpy.testing.assert_allclose(Z, want, **tol(dtype))


# --------------------------------------------------------------- backward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_act_backward(ops, shape, dtype, activation):
    Y = REF.bias_act(data(shape, dtype), None, activation, alpha=0.1).astype(dtype)
    dY = data(shape, dtype, seed=2)
    want = REF.act_backward(dY, Y, activation, alpha=0.1)
    got = ops.act_backward(dY, Y, activation, alpha=0.1)
    numpy.testing.assert_allclose(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(1000, 3)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_act_backward_bias(ops, shape, dtype, activation):
    Y = REF.bias_act(data(shape, dtype), None, activation, alpha=0.1).astype(dtype)
    dY = data(shape, dtype, seed=3)
    dZ_want, db_want = REF.act_backward_bias(dY.copy(), Y, activation, alpha=0.1)
    dZ, db = ops.act_backward_bias(dY.copy(), Y, activation, alpha=0.1)
    numpy.testing.assert_allclose(dZ, dZ_want, **tol(dtype))
    assert db.shape == (shape[1],) and db.dtype == dtype
    # Sums in a different order: bound the error by the sum of magnitudes.
    scale = numpy.abs(dZ_want).sum(axis=0) + 1
    numpy.testing.assert_array_less(numpy.abs(db - db_want) / scale,
                                    20 * numpy.finfo(dtype).eps)


def test_act_backward_bias_uses_chunks(ops):
    """The (127, 10) and (300, 257) shapes run the two-pass path (chunks, then sums)."""
    assert chunking(127, 10)[1] > 1 and chunking(300, 257)[1] > 1
    assert chunking(1, 1) == (1, 1)
    ops.launched.clear()
    dY = data((300, 257), numpy.float32)
    ops.act_backward_bias(dY, dY, "relu")
    assert ops.launched == ["act_backward_bias<float>", "column_sum<float>"]


@pytest.mark.parametrize("n_rows,n_cols", [(1, 1), (5, 3), (1000, 7), (9, 4099)])
def test_chunking_covers_every_row(n_rows, n_cols):
    rows_per_chunk, n_chunks = chunking(n_rows, n_cols)
    assert rows_per_chunk * n_chunks >= n_rows > rows_per_chunk * (n_chunks - 1)


# ----------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_dtype", [numpy.int32, numpy.int64, numpy.uint8])
def test_softmax_cross_entropy(ops, shape, dtype, label_dtype):
    n, c = shape
    logits = data(shape, dtype)
    labels = numpy.random.default_rng(5).integers(0, min(c, 255), n).astype(label_dtype)
    loss, grad = ops.softmax_cross_entropy(logits, labels)
    loss_want, grad_want = REF.softmax_cross_entropy(logits, labels.astype(numpy.int64))
    assert numpy.asarray(loss).shape == () and loss.dtype == dtype
    assert grad.dtype == dtype and grad.shape == shape
    numpy.testing.assert_allclose(loss, loss_want, rtol=10 * tol(dtype)["rtol"])
    numpy.testing.assert_allclose(grad, grad_want, rtol=10 * tol(dtype)["rtol"],
                                  atol=tol(dtype)["atol"] / n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_cross_entropy_huge_logits(ops, shape, dtype):
    """+-1e4 logits: no overflow, and the same answer as the NumPy backend."""
    n, c = shape
    rng = numpy.random.default_rng(6)
    logits = (rng.choice([-1e4, 1e4], size=shape) + rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, c, n).astype(numpy.int64)
    loss, grad = ops.softmax_cross_entropy(logits, labels)
    loss_want, grad_want = REF.softmax_cross_entropy(logits, labels)
    assert numpy.isfinite(loss) and numpy.isfinite(grad).all()
    numpy.testing.assert_allclose(loss, loss_want, rtol=1e-4 if dtype == numpy.float32
                                  else 1e-10)
    numpy.testing.assert_allclose(grad, grad_want, rtol=1e-4, atol=1e-6 / n)
    numpy.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-5)


@pytest.mark.parametrize("label", [-1, 3])
def test_softmax_cross_entropy_bad_label(ops, label):
    """The wrapper raises as every backend does; the kernel, which cannot raise,
    gives a NaN loss and reads nothing outside the row."""
    logits = data((4, 3), numpy.float32)
    labels = numpy.array([0, 1, label, 2], numpy.int64)
    with pytest.raises(ValueError, match=rf"label {label} is out of range \[0, 3\)"):
        ops.softmax_cross_entropy(logits, labels)
    stats, loss, grad = (numpy.empty(8, numpy.float32), numpy.empty(4, numpy.float32),
                         numpy.empty_like(logits))
    rows, cols = numpy.int32(4), numpy.int32(3)
    ops._launch("softmax_xent_rows<float, long long>", 4, (logits, labels, stats, loss, rows, cols))
    ops._launch("softmax_xent_grad<float, long long>", 12, (logits, labels, stats, grad, rows, cols))
    assert numpy.isnan(loss[2]) and numpy.isfinite(loss[[0, 1, 3]]).all()
    assert numpy.isfinite(grad).all()


# ---------------------------------------------- sigmoid + binary cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(4, 3, 5)])
def test_sigmoid_bce(ops, shape, dtype):
    rng = numpy.random.default_rng(8)
    z = data(shape, dtype, scale=6.0)
    z.reshape(-1)[:4] = [60.0, -60.0, 0.0, 1e-20][: z.size]
    t = rng.uniform(0, 1, shape).astype(dtype)
    t.reshape(-1)[::3] = rng.integers(0, 2, t.reshape(-1)[::3].size)
    loss, grad = ops.sigmoid_bce(z, t)
    loss_want, grad_want = REF.sigmoid_bce(z, t)
    assert numpy.asarray(loss).shape == () and loss.dtype == dtype
    assert grad.shape == shape and grad.dtype == dtype
    numpy.testing.assert_allclose(loss, loss_want, rtol=10 * tol(dtype)["rtol"])
    numpy.testing.assert_allclose(grad, grad_want, rtol=tol(dtype)["rtol"],
                                  atol=tol(dtype)["atol"] / z.size)


def test_sigmoid_bce_rejects_mismatched_targets(ops):
    z = data((5, 2), numpy.float32)
    with pytest.raises(TypeError, match="targets must have the dtype of logits"):
        ops.sigmoid_bce(z, z.astype(numpy.float64))
    with pytest.raises(ValueError, match=r"targets must have the shape of logits \(5, 2\)"):
        ops.sigmoid_bce(z, z[:4])


# ------------------------------------------------------------- optimizers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0),
                          (0.9, True, 0.0), (0.9, True, 5e-3), (0.5, False, 1e-2)])
def test_sgd_update(ops, shape, dtype, momentum, nesterov, weight_decay):
    p_got, p_want = data(shape, dtype), data(shape, dtype)
    v_got = numpy.zeros(shape, dtype) if momentum else None
    v_want = numpy.zeros(shape, dtype) if momentum else None
    for step in range(4):
        g = data(shape, dtype, seed=10 + step)
        ops.sgd_update(p_got, g, v_got, 0.05, momentum, nesterov, weight_decay)
        REF.sgd_update(p_want, g, v_want, 0.05, momentum, nesterov, weight_decay)
    numpy.testing.assert_allclose(p_got, p_want, **tol(dtype))
    if momentum:
        numpy.testing.assert_allclose(v_got, v_want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update(ops, shape, dtype, weight_decay):
    p_got, p_want = data(shape, dtype), data(shape, dtype)
    m_got, v_got = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    m_want, v_want = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    for step in range(1, 6):
        g = data(shape, dtype, seed=20 + step)
        ops.adam_update(p_got, g, m_got, v_got, step, 1e-3, weight_decay=weight_decay)
        REF.adam_update(p_want, g, m_want, v_want, step, 1e-3, weight_decay=weight_decay)
    for got, want in ((p_got, p_want), (m_got, m_want), (v_got, v_want)):
        numpy.testing.assert_allclose(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adamw_update(ops, shape, dtype, weight_decay):
    p_got, p_want = data(shape, dtype), data(shape, dtype)
    m_got, v_got = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    m_want, v_want = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    for step in range(1, 6):
        g = data(shape, dtype, seed=30 + step)
        ops.adamw_update(p_got, g, m_got, v_got, step, 1e-2, weight_decay=weight_decay)
        REF.adamw_update(p_want, g, m_want, v_want, step, 1e-2, weight_decay=weight_decay)
    for got, want in ((p_got, p_want), (m_got, m_want), (v_got, v_want)):
        numpy.testing.assert_allclose(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum,centered,weight_decay",
                         [(0.0, False, 0.0), (0.0, True, 0.0), (0.9, False, 0.0),
                          (0.9, True, 1e-2), (0.5, False, 1e-2)])
def test_rmsprop_update(ops, shape, dtype, momentum, centered, weight_decay):
    p_got, p_want = data(shape, dtype), data(shape, dtype)
    got = {"square_avg": numpy.zeros(shape, dtype),
           "buf": numpy.zeros(shape, dtype) if momentum else None,
           "grad_avg": numpy.zeros(shape, dtype) if centered else None}
    want = {k: None if a is None else a.copy() for k, a in got.items()}
    for step in range(5):
        g = data(shape, dtype, seed=40 + step)
        ops.rmsprop_update(p_got, g, got["square_avg"], 1e-2, 0.9, 1e-8, weight_decay,
                           momentum, got["buf"], centered, got["grad_avg"])
        REF.rmsprop_update(p_want, g, want["square_avg"], 1e-2, 0.9, 1e-8, weight_decay,
                           momentum, want["buf"], centered, want["grad_avg"])
    numpy.testing.assert_allclose(p_got, p_want, **tol(dtype))
    for name, a in got.items():
        if a is not None:
            numpy.testing.assert_allclose(a, want[name], **tol(dtype), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lr_decay,weight_decay", [(0.0, 0.0), (0.1, 0.0), (0.1, 1e-2)])
def test_adagrad_update(ops, shape, dtype, lr_decay, weight_decay):
    p_got, p_want = data(shape, dtype), data(shape, dtype)
    s_got, s_want = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    for step in range(1, 6):
        g = data(shape, dtype, seed=50 + step)
        ops.adagrad_update(p_got, g, s_got, step, 0.1, lr_decay, weight_decay)
        REF.adagrad_update(p_want, g, s_want, step, 0.1, lr_decay, weight_decay)
    numpy.testing.assert_allclose(p_got, p_want, **tol(dtype))
    numpy.testing.assert_allclose(s_got, s_want, **tol(dtype))


def test_rmsprop_passes_only_the_state_in_use(ops):
    """buf without momentum and grad_avg without centering are neither read nor written."""
    shape, dtype = (127, 10), numpy.float64
    p_got, p_want = data(shape, dtype), data(shape, dtype)
    s_got, s_want = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    buf, grad_avg = numpy.full(shape, 7.0), numpy.full(shape, 7.0)
    g = data(shape, dtype, seed=1)
    ops.rmsprop_update(p_got, g, s_got, 1e-2, buf=buf, grad_avg=grad_avg)
    REF.rmsprop_update(p_want, g, s_want, 1e-2)
    numpy.testing.assert_allclose(p_got, p_want, **tol(dtype))
    assert (buf == 7.0).all() and (grad_avg == 7.0).all()


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5])
def test_dropout(ops, shape, dtype, p):
    X = data(shape, dtype)
    out, mask = ops.dropout(X, p, numpy.random.default_rng(7))
    out_want, mask_want = REF.dropout(X, p, numpy.random.default_rng(7))
    assert out.dtype == mask.dtype == dtype
    numpy.testing.assert_array_equal(mask, mask_want)  # same uniforms, same mask
    numpy.testing.assert_array_equal(out, X * mask)
    scale = dtype(1 / (1 - p))
    assert set(numpy.unique(mask)) <= {dtype(0), scale}
    if p == 0.0:
        assert (mask == 1).all()
    elif X.size > 1000:
        assert abs((mask == 0).mean() - p) < 0.02


class FixedUniforms:
    """A stand-in generator whose uniforms include the threshold p itself."""

    def __init__(self, values):
        self.values = numpy.asarray(values, numpy.float32)

    def random(self, shape, dtype=numpy.float64):
        return numpy.resize(self.values, shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_keeps_uniforms_equal_to_p(ops, dtype):
    p = 0.25
    rng = FixedUniforms([0.0, numpy.nextafter(numpy.float32(p), 0), p, 0.5, 0.999])
    X = numpy.ones((3, 5), dtype)
    out, mask = ops.dropout(X, p, rng)
    numpy.testing.assert_array_equal(mask, REF.dropout(X, p, rng)[1])
    numpy.testing.assert_array_equal(mask[0], numpy.array([0, 0, 1, 1, 1], dtype) / dtype(0.75))


# ------------------------------------------------------- wrapper behaviour
def test_other_dtypes_use_the_composed_default(ops):
    ops.launched.clear()
    Z = data((5, 4), numpy.float16)
    got = ops.bias_act(Z, None, "relu")
    numpy.testing.assert_array_equal(got, numpy.maximum(Z, 0))
    assert ops.launched == []


def test_wrappers_reject_bad_arguments(ops):
    Z = data((5, 4), numpy.float32)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        ops.bias_act(Z, numpy.zeros(4, numpy.float64), "relu")
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        ops.bias_act(Z, numpy.zeros(5, numpy.float32), "relu")
    with pytest.raises(ValueError, match="Z must be C-contiguous"):
        ops.bias_act(numpy.asfortranarray(data((5, 4), numpy.float32)), None, "relu")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        ops.bias_act(Z, None, "gelu")
    with pytest.raises(ValueError, match="Y must have the shape of dY"):
        ops.act_backward(Z, Z[:3], "relu")
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        ops.softmax_cross_entropy(Z, numpy.zeros(5, numpy.float32))
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        ops.softmax_cross_entropy(Z, numpy.zeros(4, numpy.int64))
    with pytest.raises(ValueError, match="velocity is None"):
        ops.sgd_update(Z, Z, None, 0.1, momentum=0.9)
    with pytest.raises(TypeError, match="m must have the dtype of param"):
        ops.adam_update(Z, Z, Z.astype(numpy.float64), Z, 1, 1e-3)
    with pytest.raises(ValueError, match="step is the 1-based count"):
        ops.adamw_update(Z, Z, Z.copy(), Z.copy(), 0, 1e-3)
    with pytest.raises(ValueError, match="buf is None but momentum=0.9"):
        ops.rmsprop_update(Z, Z, Z.copy(), 1e-3, momentum=0.9)
    with pytest.raises(ValueError, match="grad_avg is None but centered=True"):
        ops.rmsprop_update(Z, Z, Z.copy(), 1e-3, centered=True)
    with pytest.raises(ValueError, match=r"square_avg must have the shape of param \(5, 4\)"):
        ops.rmsprop_update(Z, Z, Z[:3].copy(), 1e-3)
    with pytest.raises(TypeError, match="state_sum must have the dtype of param"):
        ops.adagrad_update(Z, Z, Z.astype(numpy.float64), 1, 1e-2)
    with pytest.raises(ValueError, match="dropout rate p"):
        ops.dropout(Z, 1.0, numpy.random.default_rng(0))


@pytest.mark.parametrize("dtype", sorted(FLOAT_CTYPES, key=str))
def test_every_kernel_is_launched(shim, dtype):
    """One pass through every fused method launches every instantiation for dtype."""
    ops = HostKernelOps(shim, (2, 32))
    X = data((40, 9), dtype)
    ops.bias_act(X, X[0].copy(), "tanh")
    ops.act_backward(X, X, "relu")
    ops.act_backward_bias(X, X, "sigmoid")
    for labels in (numpy.zeros(40, numpy.int32), numpy.zeros(40, numpy.int64)):
        ops.softmax_cross_entropy(X, labels)
    ops.sigmoid_bce(X, (X > 0).astype(dtype))
    ops.sgd_update(X.copy(), X, numpy.zeros_like(X), 0.1, momentum=0.9)
    ops.adam_update(X.copy(), X, numpy.zeros_like(X), numpy.zeros_like(X), 1, 1e-3)
    ops.adamw_update(X.copy(), X, numpy.zeros_like(X), numpy.zeros_like(X), 1, 1e-3)
    ops.rmsprop_update(X.copy(), X, numpy.zeros_like(X), 1e-3)
    ops.adagrad_update(X.copy(), X, numpy.zeros_like(X), 1, 1e-2)
    ops.dropout(X, 0.5, numpy.random.default_rng(0))
    ctype = FLOAT_CTYPES[numpy.dtype(dtype)]
    want = {e for e in name_expressions() if e.split("<")[1].startswith(ctype)}
    assert set(ops.launched) == want


# ------------------------------------------------- a new activation entry
def test_registered_activation_runs_in_the_cuda_kernels(tmp_path):
    """An activation registered at run time reaches the CUDA kernels: the source
    that CupyOps hands NVRTC (the header generated from the live table inlined)
    builds, and its bias_act / act_backward(_bias) compute the new formulas."""
    from scratchnet import activations
    from scratchnet.backends.cupy_ops import KERNEL_FILE, nvrtc_source
    from test_activations import SOFTPLUS, softplus_reference

    activations.register(SOFTPLUS)
    try:
        (tmp_path / KERNEL_FILE).write_text(nvrtc_source())
        ops = HostKernelOps(build_shim(tmp_path, kernel_dir=tmp_path), (3, 32))
        for dtype in DTYPES:
            Z, b, dY = data((300, 257), dtype), data(257, dtype, seed=1), data((300, 257), dtype)
            f, df = softplus_reference(Z.astype(numpy.float64) + b)
            Y = ops.bias_act(Z, b, "softplus")
            numpy.testing.assert_allclose(Y, f, **tol(dtype))
            numpy.testing.assert_allclose(ops.act_backward(dY, Y, "softplus"), dY * df,
                                          **tol(dtype))
            dZ, db = ops.act_backward_bias(dY, Y, "softplus")
            numpy.testing.assert_allclose(dZ, dY * df, **tol(dtype))
            numpy.testing.assert_allclose(db, (dY * df).sum(axis=0), rtol=tol(dtype)["rtol"],
                                          atol=300 * tol(dtype)["atol"])
    finally:
        activations.unregister(SOFTPLUS.name)
