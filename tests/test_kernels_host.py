"""The CUDA kernels, run on the CPU and compared with the NumPy backend.

kernels/scratchnet_kernels.cu, kernels/conv_kernels.cu and
kernels/recurrent_kernels.cu are compiled by g++ through
tests/kernel_host_shim.h (kernel_host_shim.cpp, kernel_host_shim_conv.cpp and
kernel_host_shim_recurrent.cpp, whose recurrent cells are tested in
tests/test_recurrent_kernels.py), which runs every launch serially over its
grid (see the header). The kernels are
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
from scratchnet.backends.cupy_ops import (BLOCK, CONV_KERNEL_FILE, CupyOps, FLOAT_CTYPES,
                                          KERNEL_FILE, RECURRENT_KERNEL_FILE, chunking,
                                          kernel_file, launch_grid, name_expressions)
from scratchnet.backends.numpy_ops import NumpyOps

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "kernels"
SHIM = Path(__file__).with_name("kernel_host_shim.cpp")
#: The host shim of each kernel file.
SHIMS = {KERNEL_FILE: SHIM, CONV_KERNEL_FILE: Path(__file__).with_name("kernel_host_shim_conv.cpp"),
         RECURRENT_KERNEL_FILE: Path(__file__).with_name("kernel_host_shim_recurrent.cpp")}
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
def build_shim(out_dir, kernel_dir=KERNEL_DIR, source=KERNEL_FILE):
    """Build the kernel file ``source`` in ``kernel_dir`` for the host: (ctypes
    library, {name expression: C arg types} or None without nm)."""
    lib_path = out_dir / f"lib{Path(source).stem}_host.so"
    cmd = [CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-shared", "-fPIC",
           f"-I{kernel_dir}", str(SHIMS[source]), "-o", str(lib_path)]
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


@pytest.fixture(scope="module")
def conv_shim(tmp_path_factory):
    """The host build of the convolution kernels (conv_kernels.cu)."""
    return build_shim(tmp_path_factory.mktemp("conv_kernels_host"), source=CONV_KERNEL_FILE)


def symbol(expr):
    """'softmax_xent_rows<float, long long>' -> 'sn_softmax_xent_rows_f32_i64'."""
    base, targs = expr.rstrip(">").split("<")
    short = {"float": "f32", "double": "f64", "int": "i32", "long long": "i64",
             "unsigned char": "u8"}
    return "sn_" + base + "".join("_" + short[t.strip()] for t in targs.split(","))


_SCALAR_C = {numpy.int32: ("int", ctypes.c_int), numpy.int64: ("long long", ctypes.c_longlong),
             numpy.float32: ("float", ctypes.c_float),
             numpy.float64: ("double", ctypes.c_double)}
_ARRAY_C = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double",
            numpy.dtype(numpy.int32): "int", numpy.dtype(numpy.int64): "long long",
            numpy.dtype(numpy.uint8): "unsigned char"}


class HostKernelOps(CupyOps):
    """CupyOps on NumPy arrays, launching the host build of the kernels."""

    name = "cupy-host-shim"

    def __init__(self, shim, launch, conv_shim=None, recurrent_shim=None):
        # No super().__init__(): that imports CuPy.
        self.xp = numpy
        self._unavailable = None
        self.lib, self.signatures = shim
        self.shims = {KERNEL_FILE: shim, CONV_KERNEL_FILE: conv_shim,
                      RECURRENT_KERNEL_FILE: recurrent_shim}
        self.launch = launch
        self.launched = []

    @staticmethod
    def _check_device(name, arr):
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"{name} must be a numpy array here, got {type(arr).__name__}")

    def _launch(self, expr, n, args, block=BLOCK):
        source = kernel_file(expr)
        assert expr in name_expressions(source), f"{expr} is not compiled by CupyOps"
        lib, signatures = self.shims[source]
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
        if signatures is not None:
            declared = [t.replace(" const", "").replace(" ", "") for t in signatures[expr]]
            assert len(declared) == len(c_types), f"{expr}: {c_types} vs {declared}"
            for got, want in zip(c_types, declared):
                assert got.replace(" ", "") == want or (got == "*" and want.endswith("*")), \
                    f"{expr}: packed {c_types}, kernel takes {declared}"
        grid, block = (launch_grid(n, 1 << 30, block), block) if self.launch == "cover" \
            else self.launch
        fn = getattr(lib, symbol(expr))
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint, *ctypes_args]
        fn.restype = None
        fn(grid, block, *values)
        self.launched.append(expr)


@pytest.fixture(scope="module", params=LAUNCHES, ids=lambda p: "cover" if p == "cover"
                else f"grid{p[0]}x{p[1]}")
def ops(shim, conv_shim, request):
    return HostKernelOps(shim, request.param, conv_shim)


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


# ------------------------------------------- convolution, pooling, 2-D batch norm
#: n, (C, H, W), O, (kh, kw), (sh, sw), (ph, pw)
CONV_SHAPES = [(2, (1, 6, 6), 3, (3, 3), (1, 1), (1, 1)),
               (2, (3, 7, 5), 4, (3, 2), (2, 1), (1, 2)),
               (1, (2, 3, 3), 2, (5, 5), (1, 1), (2, 2)),
               (3, (2, 6, 7), 3, (1, 1), (2, 3), (0, 0))]
#: (pool, stride, (H, W))
POOL_SHAPES = [((2, 2), (2, 2), (6, 7)), ((3, 3), (2, 2), (9, 8)), ((3, 2), (1, 1), (5, 5)),
               ((17, 16), (2, 2), (19, 18))]


def test_every_conv_name_expression_is_instantiated(conv_shim):
    lib, signatures = conv_shim
    for expr in name_expressions(CONV_KERNEL_FILE):
        assert hasattr(lib, symbol(expr)), symbol(expr)
        if signatures is not None:
            assert expr in signatures, f"{expr} not instantiated in {KERNEL_DIR}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv2d(ops, case, dtype, activation):
    n, (c, h, w), o, k, stride, padding = case
    X, W, b = data((n, c, h, w), dtype), data((o, c) + k, dtype, seed=1, scale=0.5), \
        data(o, dtype, seed=2)
    for bias in (b, None):
        Y, ctx = ops.conv2d_forward(X, W, bias, stride, padding, activation, 0.1)
        Y_want, ctx_want = REF.conv2d_forward(X, W, bias, stride, padding, activation, 0.1)
        numpy.testing.assert_allclose(Y, Y_want, **tol(dtype))
        dY = data(Y.shape, dtype, seed=3)
        got = ops.conv2d_backward(dY, Y, ctx, W, activation, 0.1)
        want = REF.conv2d_backward(dY, Y_want, ctx_want, W, activation, 0.1)
        for g, w_ in zip(got, want):
            if w_ is None:
                assert g is None
                continue
            assert g.dtype == dtype and g.shape == w_.shape
            # sums in another order: bound the error by the sum of magnitudes
            numpy.testing.assert_allclose(g, w_, rtol=tol(dtype)["rtol"],
                                          atol=50 * numpy.finfo(dtype).eps * Y.size)
        assert ops.conv2d_backward(dY, Y, ctx, W, activation, 0.1, need_dX=False)[0] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool, stride, hw", POOL_SHAPES)
def test_pooling(ops, pool, stride, hw, dtype):
    X = data((2, 3) + hw, dtype)
    X[0, 0, :3, :3] = 1.5                       # ties: the first maximum wins
    X[1, 1, 0, 1] = numpy.nan                   # a NaN is the maximum
    Y, ctx = ops.maxpool2d_forward(X, pool, stride)
    Y_want, ctx_want = REF.maxpool2d_forward(X, pool, stride)
    numpy.testing.assert_array_equal(Y, Y_want)
    assert ctx.idx.dtype == (numpy.uint8 if pool[0] * pool[1] <= 256 else numpy.int32)
    dY = data(Y.shape, dtype, seed=1)
    numpy.testing.assert_allclose(ops.maxpool2d_backward(dY, ctx),
                                  REF.maxpool2d_backward(dY, ctx_want), **tol(dtype))
    X[1, 1, 0, 1] = 0.0
    Y, ctx = ops.avgpool2d_forward(X, pool, stride)
    Y_want, ctx_want = REF.avgpool2d_forward(X, pool, stride)
    numpy.testing.assert_allclose(Y, Y_want, **tol(dtype))
    numpy.testing.assert_allclose(ops.avgpool2d_backward(dY, ctx),
                                  REF.avgpool2d_backward(dY, ctx_want), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 5, 1, 1), (300, 2, 15, 16)])
def test_batchnorm2d(ops, shape, dtype):
    X = data(shape, dtype) + dtype(40)          # the shift keeps the variance exact
    gamma, beta = data(shape[1], dtype, seed=1), data(shape[1], dtype, seed=2)
    got = ops.batchnorm2d_forward(X, gamma, beta, 1e-5)
    want = REF.batchnorm2d_forward(X, gamma, beta, 1e-5)
    for g, w in zip(got, want):
        numpy.testing.assert_allclose(g, w, rtol=10 * tol(dtype)["rtol"],
                                      atol=10 * tol(dtype)["atol"])
    dY = data(shape, dtype, seed=3)
    m = shape[0] * shape[2] * shape[3]
    # dX = gamma*inv_std/m * (m*dY - dbeta - xhat*dgamma) cancels: bound by its terms
    terms = numpy.abs(gamma * want[4]).max() * numpy.abs(dY).max()
    got = ops.batchnorm2d_backward(dY, got[1], gamma, got[4])
    want = REF.batchnorm2d_backward(dY, want[1], gamma, want[4])
    for g, w, scale in zip(got, want, (terms, m * numpy.abs(dY).max(), m * numpy.abs(dY).max())):
        numpy.testing.assert_allclose(g, w, rtol=10 * tol(dtype)["rtol"],
                                      atol=100 * numpy.finfo(dtype).eps * scale)


def test_conv_bias_gradient_uses_two_passes(ops):
    """db sums (chunk)s of each row of dZ, then the chunks (row_chunk > 1 chunk)."""
    X, W = data((40, 2, 30, 30), numpy.float64), data((3, 2, 3, 3), numpy.float64, seed=1)
    Y, ctx = ops.conv2d_forward(X, W, W[:, 0, 0, 0].copy(), (1, 1), (1, 1))
    ops.launched.clear()
    _, _, db = ops.conv2d_backward(Y, Y, ctx, W, need_dX=False)
    assert ops.launched == ["conv_act_backward<double>", "conv_row_sums<double>",
                            "conv_row_sums<double>"]
    numpy.testing.assert_allclose(db, Y.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_conv_wrappers_reject_bad_arguments(ops):
    X, W = data((2, 2, 5, 5), numpy.float32), data((3, 2, 3, 3), numpy.float32)
    with pytest.raises(TypeError, match="W must have dtype float32"):
        ops.conv2d_forward(X, W.astype(numpy.float64), None, (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        ops.conv2d_forward(X, W, numpy.zeros(2, numpy.float32), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="X must be C-contiguous"):
        ops.conv2d_forward(numpy.asfortranarray(X), W, None, (1, 1), (1, 1))
    Y, ctx = ops.conv2d_forward(X, W, None, (1, 1), (1, 1), "relu")
    with pytest.raises(ValueError, match=r"dY must have shape \(2, 3, 5, 5\)"):
        ops.conv2d_backward(Y[:1], Y, ctx, W, "relu")
    with pytest.raises(TypeError, match="dY must have dtype float32"):
        ops.conv2d_backward(Y.astype(numpy.float64), Y, ctx, W, "relu")
    with pytest.raises(ValueError, match="Y must have the shape of dY"):
        ops.conv2d_backward(Y, Y[:1], ctx, W, "relu")
    P, pctx = ops.maxpool2d_forward(X, (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"dY must have shape \(2, 2, 2, 2\)"):
        ops.maxpool2d_backward(P[:1], pctx)
    with pytest.raises(ValueError, match=r"gamma must have shape \(2,\)"):
        ops.batchnorm2d_forward(X, numpy.ones(3, numpy.float32), numpy.ones(2, numpy.float32),
                                1e-5)


def test_conv_contexts_of_the_composed_default_go_back_to_it(ops):
    """float16 runs the base class's forward; its context goes to its backward."""
    ops.launched.clear()
    X, W = data((2, 2, 5, 5), numpy.float16), data((3, 2, 3, 3), numpy.float16)
    Y, ctx = ops.conv2d_forward(X, W, None, (1, 1), (1, 1), "relu")
    dX, dW, _ = ops.conv2d_backward(Y, Y, ctx, W, "relu")
    want = REF.conv2d_backward(Y, Y, REF.conv2d_forward(X, W, None, (1, 1), (1, 1), "relu")[1],
                               W, "relu")
    numpy.testing.assert_array_equal(dX, want[0])
    P, pctx = ops.maxpool2d_forward(X, (2, 2), (2, 2))
    numpy.testing.assert_array_equal(ops.maxpool2d_backward(P, pctx),
                                     REF.maxpool2d_backward(P, REF.maxpool2d_forward(
                                         X, (2, 2), (2, 2))[1]))
    assert ops.launched == []


@pytest.mark.parametrize("dtype", sorted(FLOAT_CTYPES, key=str))
def test_every_conv_kernel_is_launched(shim, conv_shim, dtype):
    """The fused convolution, pooling and batch-norm methods launch every
    instantiation of conv_kernels.cu for dtype."""
    ops = HostKernelOps(shim, (2, 32), conv_shim)
    X, W = data((40, 3, 9, 9), dtype), data((2, 3, 3, 3), dtype)
    Y, ctx = ops.conv2d_forward(X, W, W[:, 0, 0, 0].copy(), (1, 1), (1, 1), "relu")
    ops.conv2d_backward(Y, Y, ctx, W, "relu")
    for pool in ((2, 2), (17, 16)):                 # uint8 and int32 argmax indices
        P, pctx = ops.maxpool2d_forward(data((2, 1, 18, 18), dtype), pool, (1, 1))
        ops.maxpool2d_backward(P, pctx)
    P, pctx = ops.avgpool2d_forward(X, (2, 2), (2, 2))
    ops.avgpool2d_backward(P, pctx)
    g = numpy.ones(3, dtype)
    out = ops.batchnorm2d_forward(X, g, g, 1e-5)
    ops.batchnorm2d_backward(X, out[1], g, out[4])
    ctype = FLOAT_CTYPES[numpy.dtype(dtype)]
    want = {e for e in name_expressions(CONV_KERNEL_FILE) if e.split("<")[1].startswith(ctype)}
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


def test_registered_activation_runs_in_the_conv_kernels(tmp_path):
    """The same for the convolution's epilogue and prologue (conv_kernels.cu)."""
    from scratchnet import activations
    from scratchnet.backends.cupy_ops import nvrtc_source
    from test_activations import SOFTPLUS, softplus_reference

    activations.register(SOFTPLUS)
    try:
        (tmp_path / CONV_KERNEL_FILE).write_text(nvrtc_source(CONV_KERNEL_FILE))
        ops = HostKernelOps((None, None), (3, 32),
                            build_shim(tmp_path, kernel_dir=tmp_path, source=CONV_KERNEL_FILE))
        X, W, b = data((2, 2, 6, 6), numpy.float64), data((3, 2, 3, 3), numpy.float64, seed=1), \
            data(3, numpy.float64, seed=2)
        Y, ctx = ops.conv2d_forward(X, W, b, (1, 1), (1, 1), "softplus")
        Z, _ = REF.conv2d_forward(X, W, b, (1, 1), (1, 1))
        f, df = softplus_reference(Z)
        numpy.testing.assert_allclose(Y, f, **tol(numpy.float64))
        dY = data(Y.shape, numpy.float64, seed=3)
        _, dW, db = ops.conv2d_backward(dY, Y, ctx, W, "softplus", need_dX=False)
        _, dW_want, db_want = REF.conv2d_backward(dY * df, Z, REF.conv2d_forward(
            X, W, b, (1, 1), (1, 1))[1], W)
        numpy.testing.assert_allclose(dW, dW_want, rtol=1e-10)
        numpy.testing.assert_allclose(db, db_want, rtol=1e-10)
    finally:
        activations.unregister(SOFTPLUS.name)
