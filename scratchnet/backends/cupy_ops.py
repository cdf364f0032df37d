"""The CuPy backend: the base class's composed defaults on the GPU, with the hot
primitives replaced by scratchnet's own CUDA kernels.

The kernels live in ``kernels/scratchnet_kernels.cu``, for convolutional
networks ``kernels/conv_kernels.cu`` and for recurrent ones
``kernels/recurrent_kernels.cu`` (shipped in the wheel as
``scratchnet.kernels``); each file is compiled once per device, lazily, the
first time one of its kernels runs, through ``cupy.RawModule`` and NVRTC. Each fused
method handles float32 and float64 C-contiguous CuPy arrays and calls
``super()`` for any other dtype. Wrong arguments raise before anything is
launched, naming the argument.

Importing this module imports neither CuPy nor CUDA: CuPy is imported when
``CupyOps()`` is constructed, and CUDA is touched first by
``check_available()``.
"""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path

import numpy

from . import BackendUnavailableError
from ._conv import ConvContext, PoolContext, conv_geometry, pool_geometry
from ._recurrent import RecurrentContext, recurrent_dims
from .base import Ops
from .cuda_header import cuda_header
from .. import activations
from .._compat import array_library, is_cupy_array

#: The kernel source file, and the kernels it defines.
KERNEL_FILE = "scratchnet_kernels.cu"
#: Kernels templated on the float type T.
KERNELS_T = ("bias_act", "act_backward", "act_backward_bias", "column_sum", "sigmoid_bce",
             "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad", "dropout")
#: Kernels templated on the float type T and the label type L.
KERNELS_TL = ("softmax_xent_rows", "softmax_xent_grad")

#: The convolution, pooling and 2-D batch-norm kernels: a second source file,
#: compiled as its own module (the matrix products run in cuBLAS).
CONV_KERNEL_FILE = "conv_kernels.cu"
#: Its kernels templated on the float type T.
CONV_KERNELS_T = ("conv_im2col", "conv_col2im", "conv_bias_act", "conv_act_backward",
                  "conv_row_sums", "avgpool_forward", "avgpool_backward", "bn2d_partial_stats",
                  "bn2d_stats", "bn2d_apply", "bn2d_partial_grads", "bn2d_grad_sums",
                  "bn2d_backward_apply")
#: Its kernels templated on the float type T and the argmax index type I.
CONV_KERNELS_TI = ("maxpool_forward", "maxpool_backward")
#: The recurrent cells (LSTM, GRU, RNN), forward and backward: a third source
#: file, its own module (the recurrent products run in cuBLAS).
RECURRENT_KERNEL_FILE = "recurrent_kernels.cu"
#: Its kernels, templated on the float type T.
RECURRENT_KERNELS_T = ("lstm_cell_forward", "lstm_cell_backward", "gru_cell_forward",
                       "gru_cell_backward", "rnn_cell_forward", "rnn_cell_backward")
#: Every kernel source file, each compiled as one module.
KERNEL_FILES = (KERNEL_FILE, CONV_KERNEL_FILE, RECURRENT_KERNEL_FILE)

#: The header the kernel file includes: activation codes (SN_ACT_*) and formulas,
#: generated from the activation table (``backends/cuda_header.py``).
ACT_HEADER = "activations.cuh"
#: The header every kernel file starts with: the grid-stride loop and the sn_* math.
COMMON_HEADER = "common.cuh"

FLOAT_CTYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}
LABEL_CTYPES = {numpy.dtype(numpy.int32): "int", numpy.dtype(numpy.int64): "long long"}
#: Max pooling's argmax within a window: one byte up to 256 elements per window.
INDEX_CTYPES = {numpy.dtype(numpy.uint8): "unsigned char", numpy.dtype(numpy.int32): "int"}

NOT_INSTALLED = "CuPy is not installed: pip install scratchnet[cuda12] (or [cuda13])"

#: Threads per block for elementwise launches; the grid is capped (grid-stride loops).
BLOCK = 256
#: Threads per block for kernels with one thread per row or per (chunk, column):
#: fewer work items, so smaller blocks spread them over more multiprocessors.
SMALL_BLOCK = 32
#: Row/column counts are C ints in the kernels.
_INT_MAX = 2**31 - 1


# ------------------------------------------------------------------ sources
def kernel_source(name=KERNEL_FILE):
    """Text of the kernel file ``name``.

    Looked up first in the installed package ``scratchnet.kernels`` (where the
    wheel puts the top-level ``kernels/`` folder), then in the ``kernels/``
    folder of a source checkout, beside the ``scratchnet/`` package.
    """
    tried = []
    try:
        resource = importlib.resources.files("scratchnet.kernels") / name
        if resource.is_file():
            return resource.read_text(encoding="utf-8")
        tried.append(f"package scratchnet.kernels ({resource})")
    except ModuleNotFoundError:
        tried.append("package scratchnet.kernels (not installed)")
    checkout = Path(__file__).resolve().parents[2] / "kernels" / name
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    tried.append(f"source checkout ({checkout})")
    raise FileNotFoundError(f"CUDA kernel source {name!r} not found; looked in "
                            + " and in ".join(tried))


def nvrtc_source(name=KERNEL_FILE):
    """The kernel file ``name`` as NVRTC compiles it.

    NVRTC reads no files, so ``#include "common.cuh"`` is replaced by that
    file's text and ``#include "activations.cuh"`` by the header generated
    from the live activation table: for the built-in table that is the
    committed header (a test checks it), and an activation added with
    ``activations.register`` is compiled in too.
    """
    return (kernel_source(name)
            .replace(f'#include "{COMMON_HEADER}"', kernel_source(COMMON_HEADER))
            .replace(f'#include "{ACT_HEADER}"', cuda_header()))


def name_expressions(name=KERNEL_FILE):
    """Every kernel instantiation of the file ``name``, as NVRTC name expressions
    (``"adam<float>"``)."""
    floats = FLOAT_CTYPES.values()
    if name == CONV_KERNEL_FILE:
        return ([f"{k}<{t}>" for t in floats for k in CONV_KERNELS_T]
                + [f"{k}<{t}, {it}>" for t in floats for it in INDEX_CTYPES.values()
                   for k in CONV_KERNELS_TI])
    if name == RECURRENT_KERNEL_FILE:
        return [f"{k}<{t}>" for t in floats for k in RECURRENT_KERNELS_T]
    if name != KERNEL_FILE:
        raise ValueError(f"unknown kernel file {name!r}; expected one of {KERNEL_FILES}")
    names = [f"{k}<{t}>" for t in floats for k in KERNELS_T]
    names += [f"{k}<{t}, {lt}>" for t in floats
              for lt in LABEL_CTYPES.values() for k in KERNELS_TL]
    return names


def kernel_file(expr):
    """The source file that defines the kernel of name expression ``expr``."""
    base = expr.split("<", 1)[0]
    if base in RECURRENT_KERNELS_T:
        return RECURRENT_KERNEL_FILE
    return CONV_KERNEL_FILE if base in CONV_KERNELS_T + CONV_KERNELS_TI else KERNEL_FILE


def row_chunk(n_rows, n_cols, target_tasks=1 << 16, min_cols=64):
    """Columns per (row, chunk) task of ``conv_row_sums``: about ``target_tasks``
    tasks, at least ``min_cols`` columns each."""
    n_rows, n_cols = max(int(n_rows), 1), max(int(n_cols), 1)
    return max(min_cols, -(-n_rows * n_cols // target_tasks))


def bn_chunk(n, channel_size, target_tasks=1 << 16):
    """``(rows_per_chunk, n_chunks)``: the rows n of (N, C, L) cut so that the
    (chunk, c, l) tasks of the 2-D batch-norm sums are about ``target_tasks``."""
    n = max(int(n), 1)
    n_chunks = max(1, min(n, target_tasks // max(int(channel_size), 1)))
    rows = -(-n // n_chunks)
    return rows, -(-n // rows)


# ---------------------------------------------------------- argument checks
# Plain functions on anything with .shape/.dtype/.flags, so that the tests can
# exercise them with NumPy arrays where CuPy is absent.
def check_array(name, arr, dtype=None, ndim=None, shape=None):
    """Raise unless ``arr`` is a C-contiguous array of the given dtype/ndim/shape.

    TypeError for a non-array or a wrong dtype, ValueError for a wrong ndim,
    shape or layout; the message names the argument.
    """
    if not (hasattr(arr, "shape") and hasattr(arr, "dtype") and hasattr(arr, "flags")):
        raise TypeError(f"{name} must be an array, got {type(arr).__name__}")
    if dtype is not None and arr.dtype != numpy.dtype(dtype):
        raise TypeError(f"{name} must have dtype {numpy.dtype(dtype)}, got {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {arr.ndim}-D with shape "
                         f"{tuple(arr.shape)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass xp.ascontiguousarray({name})")


def check_like(name, arr, ref_name, ref):
    """Raise unless ``arr`` has the dtype and shape of ``ref`` (and is contiguous)."""
    if not (hasattr(arr, "shape") and hasattr(arr, "dtype") and hasattr(arr, "flags")):
        raise TypeError(f"{name} must be an array like {ref_name}, got {type(arr).__name__}")
    if arr.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), "
                        f"got {arr.dtype}")
    if tuple(arr.shape) != tuple(ref.shape):
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, "
                         f"got {tuple(arr.shape)}")
    check_array(name, arr)


def check_labels(name, labels, n_rows):
    """Raise unless ``labels`` is a contiguous (n_rows,) integer array."""
    if not (hasattr(labels, "dtype") and hasattr(labels, "shape")):
        raise TypeError(f"{name} must be an integer array, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    check_array(name, labels, ndim=1, shape=(n_rows,))


def check_counts(name, n_rows, n_cols):
    if n_rows > _INT_MAX or n_cols > _INT_MAX:
        raise ValueError(f"{name} has shape ({n_rows}, {n_cols}); the kernels take "
                         f"at most {_INT_MAX} rows and columns")


def check_device(name, arr):
    """Raise TypeError unless ``arr`` is a CuPy array."""
    if not is_cupy_array(arr):
        lib = array_library(arr)
        if lib is None:
            raise TypeError(f"{name} must be a cupy array, got {type(arr).__name__}")
        raise TypeError(f"{name} is a {lib} array but the cupy backend computes on cupy "
                        f"arrays: move it with ops.asarray({name})")


def chunking(n_rows, n_cols, target_tasks=1 << 16, min_rows=8):
    """``(rows_per_chunk, n_chunks)`` for the fused activation-backward + bias kernel.

    Enough (chunk, column) tasks to fill the GPU (about ``target_tasks``), but
    at least ``min_rows`` rows per chunk. One chunk means no second pass.
    """
    n_rows, n_cols = max(int(n_rows), 1), max(int(n_cols), 1)
    n_chunks = max(1, min(-(-n_rows // min_rows), target_tasks // n_cols))
    rows_per_chunk = -(-n_rows // n_chunks)
    return rows_per_chunk, -(-n_rows // rows_per_chunk)


def launch_grid(n, max_blocks, block=BLOCK):
    """Blocks for ``n`` grid-stride work items: enough to cover them, at most max_blocks."""
    return max(1, min(-(-int(n) // block), int(max_blocks)))


# ------------------------------------------------------------ availability
def _import_cupy():
    """``(cupy, None)``, or ``(None, reason)`` when CuPy cannot be imported."""
    try:
        import cupy
    except ModuleNotFoundError as err:
        if err.name == "cupy":
            return None, NOT_INSTALLED
        return None, f"CuPy is installed but cannot be imported: {err}"
    except Exception as err:  # CuPy raises ImportError/RuntimeError for bad installs
        return None, f"CuPy is installed but cannot be imported: {err}"
    return cupy, None


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"


def device_name(cupy):
    """The current CUDA device's name, e.g. 'NVIDIA H100 80GB HBM3'."""
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else name


_DRIVER_TOO_OLD = ("InsufficientDriver", "INSUFFICIENT_DRIVER", "UnsupportedPtxVersion",
                   "UNSUPPORTED_PTX_VERSION", "cudaErrorCallRequiresNewerDriver")


def describe_cuda_error(cupy, err):
    """Turn what CuPy raised while probing the device into the backend's reason."""
    msg = str(err) or type(err).__name__
    if any(token in msg for token in _DRIVER_TOO_OLD):
        try:
            driver = cupy.cuda.runtime.driverGetVersion()
        except Exception:
            driver = 0
        if not driver:
            # cudart reports a missing driver (no libcuda) as "insufficient".
            return f"no CUDA device: no NVIDIA driver was found ({msg})"
        try:
            built = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
        except Exception:
            built = "unknown"
        return (f"CUDA driver too old for this CuPy: {msg} (the driver supports CUDA "
                f"{_cuda_version(driver)}, CuPy uses CUDA {built})")
    if "nvrtc" in msg.lower():
        # A GPU and a driver, but no runtime compiler: cupy-cudaNNx without [ctk].
        try:
            major = cupy.cuda.runtime.runtimeGetVersion() // 1000
        except Exception:
            major = "NN"
        return (f"CuPy cannot compile CUDA kernels: {msg} (install NVRTC with "
                f"pip install \"cupy-cuda{major}x[ctk]\", or install the CUDA toolkit)")
    return f"no CUDA device: {msg}"


# ------------------------------------------------------------------ backend
class CupyOps(Ops):
    """CuPy arrays, scratchnet's CUDA kernels for the fused primitives."""

    name = "cupy"
    xp = None  # the cupy module, set by __init__

    def __init__(self):
        self.xp, self._unavailable = _import_cupy()
        self._raw_modules = {}  # kernel file -> cupy.RawModule
        self._functions = {}  # (device id, name expression) -> RawKernel
        self._table_version = activations.version()  # the table the module is built from
        self._max_blocks = {}  # device id -> grid cap

    # ------------------------------------------------------------ set-up
    def check_available(self):
        """Raise BackendUnavailableError naming the cause when CuPy cannot compute here."""
        if self._unavailable:
            raise BackendUnavailableError(self._unavailable)
        cupy = self.xp
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:
            raise BackendUnavailableError(describe_cuda_error(cupy, err)) from err
        if count < 1:
            raise BackendUnavailableError("no CUDA device: CuPy found 0 CUDA devices")
        try:
            # A tiny kernel, run to completion: catches driver/runtime mismatches
            # that getDeviceCount() does not.
            int(cupy.arange(2).sum())
        except Exception as err:
            raise BackendUnavailableError(describe_cuda_error(cupy, err)) from err

    def describe(self):
        cupy = self.xp
        dev = cupy.cuda.Device()
        return (f"{self.name}: cupy {cupy.__version__} on {device_name(cupy)} "
                f"(compute capability {dev.compute_capability}, CUDA runtime "
                f"{_cuda_version(cupy.cuda.runtime.runtimeGetVersion())})")

    def compile_kernels(self):
        """Compile (once) and load every kernel on the current device; returns their names."""
        names = [expr for name in KERNEL_FILES for expr in name_expressions(name)]
        for expr in names:
            self._function(expr)
        return names

    def _function(self, expr):
        cupy = self.xp
        if self._table_version != activations.version():
            # An activation was registered or removed: recompile from the new table.
            self._raw_modules, self._functions = {}, {}
            self._table_version = activations.version()
        key = (cupy.cuda.get_device_id(), expr)
        fn = self._functions.get(key)
        if fn is None:
            name = kernel_file(expr)
            module = self._raw_modules.get(name)
            if module is None:
                module = self._raw_modules[name] = cupy.RawModule(
                    code=nvrtc_source(name), options=("-std=c++17",),
                    name_expressions=name_expressions(name))
            fn = self._functions[key] = module.get_function(expr)
        return fn

    def _launch(self, expr, n, args, block=BLOCK):
        """Launch kernel ``expr`` over ``n`` grid-stride work items."""
        cupy = self.xp
        dev = cupy.cuda.get_device_id()
        cap = self._max_blocks.get(dev)
        if cap is None:
            sms = cupy.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"]
            cap = self._max_blocks[dev] = 32 * sms
        self._function(expr)((launch_grid(n, cap, block),), (block,), args)

    @staticmethod
    def _check_device(name, arr):
        check_device(name, arr)

    @staticmethod
    def _fused(arr):
        """True when the kernels cover ``arr``'s dtype (else: the composed default)."""
        return getattr(arr, "dtype", None) in FLOAT_CTYPES

    def _out(self, name, out, like):
        if out is None:
            return self.xp.empty_like(like)
        self._check_device(name, out)
        check_like(name, out, "the input", like)
        return out

    # ------------------------------------------------------------ arrays
    def asarray(self, x, dtype=None):
        return self.xp.asarray(x, dtype=dtype)

    def to_host(self, x):
        return self.xp.asnumpy(x)

    def is_own_array(self, x):
        return isinstance(x, self.xp.ndarray)

    def synchronize(self):
        self.xp.cuda.Device().synchronize()

    def make_rng(self, seed=None):
        """A ``cupy.random.Generator`` (XORWOW), drawing on the device."""
        return self.xp.random.default_rng(seed)

    def rng_state(self, rng):
        """A host copy of the generator's state (CuPy keeps it in device memory)."""
        bits = rng.bit_generator
        state = getattr(bits, "_state", None)
        if state is None:
            raise NotImplementedError(f"cannot read the state of {type(bits).__name__} "
                                      f"in CuPy {self.xp.__version__}")
        return {"bit_generator": type(bits).__name__, "state": self.xp.asnumpy(state)}

    def set_rng_state(self, rng, state):
        bits = rng.bit_generator
        if getattr(bits, "_state", None) is None or \
                state.get("bit_generator") != type(bits).__name__:
            raise ValueError(f"state of a {state.get('bit_generator')} generator cannot "
                             f"be set on a {type(bits).__name__}")
        bits._state[...] = self.xp.asarray(state["state"])

    # ------------------------------------------------------------ activation
    def bias_act(self, Z, b, activation, alpha=0.01, out=None):
        if not self._fused(Z) or (activation == "identity" and b is None):
            return super().bias_act(Z, b, activation, alpha, out=out)
        code = activations.get_activation(activation).code
        self._check_device("Z", Z)
        check_array("Z", Z, ndim=2)
        n_rows, n_cols = Z.shape
        check_counts("Z", n_rows, n_cols)
        if b is not None:
            self._check_device("b", b)
            check_array("b", b, dtype=Z.dtype, shape=(n_cols,))
        out = self._out("out", out, Z)
        if Z.size:
            T = Z.dtype.type
            self._launch(f"bias_act<{FLOAT_CTYPES[Z.dtype]}>", Z.size,
                         (Z, b, out, numpy.int32(n_rows), numpy.int32(n_cols),
                          numpy.int32(code), T(alpha)))
        return out

    def act_backward(self, dY, Y, activation, alpha=0.01, out=None):
        if not self._fused(dY):
            return super().act_backward(dY, Y, activation, alpha, out=out)
        spec = activations.get_activation(activation)
        self._check_device("dY", dY)
        check_array("dY", dY)
        if spec.passes_gradient:
            if out is None or out is dY:
                return dY
            out = self._out("out", out, dY)
            out[...] = dY
            return out
        self._check_device("Y", Y)
        check_like("Y", Y, "dY", dY)
        out = self._out("out", out, dY)
        if dY.size:
            self._launch(f"act_backward<{FLOAT_CTYPES[dY.dtype]}>", dY.size,
                         (dY, Y, out, numpy.int64(dY.size), numpy.int32(spec.code),
                          dY.dtype.type(alpha)))
        return out

    def act_backward_bias(self, dY, Y, activation, alpha=0.01, out=None):
        if not self._fused(dY) or getattr(dY, "size", 0) == 0:
            return super().act_backward_bias(dY, Y, activation, alpha, out=out)
        spec = activations.get_activation(activation)
        self._check_device("dY", dY)
        check_array("dY", dY, ndim=2)
        if spec.passes_gradient:
            dZ = self.act_backward(dY, Y, activation, alpha, out=out)
            return dZ, dZ.sum(axis=0)
        self._check_device("Y", Y)
        check_like("Y", Y, "dY", dY)
        n_rows, n_cols = dY.shape
        check_counts("dY", n_rows, n_cols)
        dZ = self._out("out", out, dY)
        ctype = FLOAT_CTYPES[dY.dtype]
        rows_per_chunk, n_chunks = chunking(n_rows, n_cols)
        db = self.xp.empty(n_cols, dtype=dY.dtype)
        partial = db if n_chunks == 1 else self.xp.empty((n_chunks, n_cols), dtype=dY.dtype)
        self._launch(f"act_backward_bias<{ctype}>", n_chunks * n_cols,
                     (dY, Y, dZ, partial, numpy.int32(n_rows), numpy.int32(n_cols),
                      numpy.int32(rows_per_chunk), numpy.int32(spec.code),
                      dY.dtype.type(alpha)), block=SMALL_BLOCK)
        if n_chunks > 1:
            self._launch(f"column_sum<{ctype}>", n_cols,
                         (partial, db, numpy.int32(n_chunks), numpy.int32(n_cols)),
                         block=SMALL_BLOCK)
        return dZ, db

    # ---------------------------------------------------------------- softmax
    def softmax_cross_entropy(self, logits, labels):
        if not self._fused(logits) or getattr(logits, "size", 0) == 0:
            return super().softmax_cross_entropy(logits, labels)
        self._check_device("logits", logits)
        check_array("logits", logits, ndim=2)
        n_rows, n_cols = logits.shape
        check_counts("logits", n_rows, n_cols)
        self._check_device("labels", labels)
        check_labels("labels", labels, n_rows)
        if labels.dtype not in LABEL_CTYPES:
            labels = labels.astype(numpy.int64)
        # A kernel cannot raise (a bad label gives a NaN loss there), so check
        # here, as every backend does: one small device-to-host copy.
        self.check_label_range(labels, n_cols, "softmax_cross_entropy")
        xp = self.xp
        ctypes_ = f"{FLOAT_CTYPES[logits.dtype]}, {LABEL_CTYPES[labels.dtype]}"
        stats = xp.empty(2 * n_rows, dtype=logits.dtype)
        losses = xp.empty(n_rows, dtype=logits.dtype)
        grad = xp.empty_like(logits)
        rows, cols = numpy.int32(n_rows), numpy.int32(n_cols)
        self._launch(f"softmax_xent_rows<{ctypes_}>", n_rows,
                     (logits, labels, stats, losses, rows, cols), block=SMALL_BLOCK)
        self._launch(f"softmax_xent_grad<{ctypes_}>", logits.size,
                     (logits, labels, stats, grad, rows, cols))
        return losses.mean(), grad  # 0-d device array: no host sync

    # ------------------------------------------ sigmoid + binary cross-entropy
    def sigmoid_bce(self, logits, targets):
        if not self._fused(logits) or getattr(logits, "size", 0) == 0:
            return super().sigmoid_bce(logits, targets)
        self._check_device("logits", logits)
        check_array("logits", logits)
        self._check_device("targets", targets)
        check_like("targets", targets, "logits", logits)
        losses = self.xp.empty_like(logits)
        grad = self.xp.empty_like(logits)
        self._launch(f"sigmoid_bce<{FLOAT_CTYPES[logits.dtype]}>", logits.size,
                     (logits, targets, losses, grad, numpy.int64(logits.size),
                      logits.dtype.type(1.0 / logits.size)))
        return losses.mean(), grad  # 0-d device array: no host sync

    # ---------------------------------------------------------------- dropout
    def dropout(self, X, p, rng):
        if not self._fused(X):
            return super().dropout(X, p, rng)
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate p must be in [0, 1), got {p}")
        self._check_device("X", X)
        check_array("X", X)
        xp = self.xp
        u = xp.asarray(rng.random(X.shape, dtype=numpy.float32))
        out = xp.empty_like(X)
        mask = xp.empty_like(X)
        if X.size:
            self._launch(f"dropout<{FLOAT_CTYPES[X.dtype]}>", X.size,
                         (X, u, out, mask, numpy.int64(X.size), numpy.float32(p),
                          X.dtype.type(1.0 / (1.0 - p))))
        return out, mask

    # ------------------------------------------------------------- optimizers
    def _check_state(self, param, **arrays):
        self._check_device("param", param)
        check_array("param", param)
        for name, arr in arrays.items():
            self._check_device(name, arr)
            check_like(name, arr, "param", param)

    def sgd_update(self, param, grad, velocity, lr, momentum=0.0, nesterov=False,
                   weight_decay=0.0):
        if not self._fused(param):
            return super().sgd_update(param, grad, velocity, lr, momentum, nesterov,
                                      weight_decay)
        if momentum:
            if velocity is None:
                raise ValueError(f"velocity is None but momentum={momentum}")
            self._check_state(param, grad=grad, velocity=velocity)
        else:
            velocity = None
            self._check_state(param, grad=grad)
        if param.size:
            T = param.dtype.type
            self._launch(f"sgd_momentum<{FLOAT_CTYPES[param.dtype]}>", param.size,
                         (param, grad, velocity, numpy.int64(param.size), T(lr),
                          T(momentum), numpy.int32(bool(nesterov)), T(weight_decay)))

    def adam_update(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0):
        if not self._fused(param):
            return super().adam_update(param, grad, m, v, step, lr, beta1, beta2, eps,
                                       weight_decay)
        if step < 1:
            raise ValueError(f"step is the 1-based count after this update, got {step}")
        self._check_state(param, grad=grad, m=m, v=v)
        if param.size:
            T = param.dtype.type
            step_size = lr / (1 - beta1 ** step)
            bc2_sqrt = math.sqrt(1 - beta2 ** step)
            self._launch(f"adam<{FLOAT_CTYPES[param.dtype]}>", param.size,
                         (param, grad, m, v, numpy.int64(param.size), T(step_size),
                          T(beta1), T(1 - beta1), T(beta2), T(1 - beta2), T(bc2_sqrt),
                          T(eps), T(weight_decay)))

    def adamw_update(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=1e-2):
        if not self._fused(param):
            return super().adamw_update(param, grad, m, v, step, lr, beta1, beta2, eps,
                                        weight_decay)
        if step < 1:
            raise ValueError(f"step is the 1-based count after this update, got {step}")
        self._check_state(param, grad=grad, m=m, v=v)
        if param.size:
            T = param.dtype.type
            self._launch(f"adamw<{FLOAT_CTYPES[param.dtype]}>", param.size,
                         (param, grad, m, v, numpy.int64(param.size),
                          T(1 - lr * weight_decay), T(lr / (1 - beta1 ** step)), T(beta1),
                          T(1 - beta1), T(beta2), T(1 - beta2),
                          T(math.sqrt(1 - beta2 ** step)), T(eps)))

    def rmsprop_update(self, param, grad, square_avg, lr, alpha=0.99, eps=1e-8,
                       weight_decay=0.0, momentum=0.0, buf=None, centered=False,
                       grad_avg=None):
        if not self._fused(param):
            return super().rmsprop_update(param, grad, square_avg, lr, alpha, eps,
                                          weight_decay, momentum, buf, centered, grad_avg)
        if momentum > 0 and buf is None:
            raise ValueError(f"buf is None but momentum={momentum}")
        if centered and grad_avg is None:
            raise ValueError("grad_avg is None but centered=True")
        # The kernel reads "null" as "not used": pass only the arrays in use.
        buf = buf if momentum > 0 else None
        grad_avg = grad_avg if centered else None
        used = {"grad": grad, "square_avg": square_avg, "buf": buf, "grad_avg": grad_avg}
        self._check_state(param, **{k: a for k, a in used.items() if a is not None})
        if param.size:
            T = param.dtype.type
            self._launch(f"rmsprop<{FLOAT_CTYPES[param.dtype]}>", param.size,
                         (param, grad, square_avg, grad_avg, buf, numpy.int64(param.size),
                          T(lr), T(alpha), T(1 - alpha), T(eps), T(weight_decay),
                          T(momentum)))

    def adagrad_update(self, param, grad, state_sum, step, lr, lr_decay=0.0,
                       weight_decay=0.0, eps=1e-10):
        if not self._fused(param):
            return super().adagrad_update(param, grad, state_sum, step, lr, lr_decay,
                                          weight_decay, eps)
        if step < 1:
            raise ValueError(f"step is the 1-based count after this update, got {step}")
        self._check_state(param, grad=grad, state_sum=state_sum)
        if param.size:
            T = param.dtype.type
            self._launch(f"adagrad<{FLOAT_CTYPES[param.dtype]}>", param.size,
                         (param, grad, state_sum, numpy.int64(param.size),
                          T(lr / (1 + (step - 1) * lr_decay)), T(eps), T(weight_decay)))

    # ------------------------------------------------- convolution, pooling
    # The layout of the Numba backend (see kernels/conv_kernels.cu): im2col into
    # a (C*kh*kw, N*Ho*Wo) column matrix, one cuBLAS product each for Y, dW and
    # dcols, a fused epilogue (bias, activation, NCHW) and prologue
    # (activation backward into the product's layout), col2im as a gather.

    def _conv_geometry_args(self, shape, W_shape, stride, padding, hw_out):
        n, c, h, w = shape
        _, _, kh, kw = W_shape
        return tuple(numpy.int32(v) for v in (n, c, h, w, kh, kw, *stride, *padding, *hw_out))

    def _row_sums(self, A):
        """A.sum(axis=1) of a (rows, cols) array: partial sums per (row, chunk), then per row."""
        xp = self.xp
        rows, cols = A.shape
        ctype = FLOAT_CTYPES[A.dtype]
        chunk = row_chunk(rows, cols)
        n_chunks = -(-cols // chunk)
        partial = xp.empty((rows, n_chunks), A.dtype)
        self._launch(f"conv_row_sums<{ctype}>", rows * n_chunks,
                     (A, partial, numpy.int32(rows), numpy.int64(cols), numpy.int64(chunk)),
                     block=SMALL_BLOCK)
        if n_chunks == 1:
            return partial.reshape(rows)
        out = xp.empty(rows, A.dtype)
        self._launch(f"conv_row_sums<{ctype}>", rows,
                     (partial, out, numpy.int32(rows), numpy.int64(n_chunks),
                      numpy.int64(n_chunks)), block=SMALL_BLOCK)
        return out

    def conv2d_forward(self, X, W, b, stride, padding, activation="identity", alpha=0.0):
        geometry = conv_geometry(X, W, stride, padding)
        if not (geometry and self._fused(X)):
            return super().conv2d_forward(X, W, b, stride, padding, activation, alpha)
        spec = activations.get_activation(activation)
        self._check_device("X", X)
        check_array("X", X)
        self._check_device("W", W)
        check_array("W", W, dtype=X.dtype)
        o = W.shape[0]
        if b is not None:
            self._check_device("b", b)
            check_array("b", b, dtype=X.dtype, shape=(o,))
        stride, padding, (ho, wo) = geometry
        n, c = X.shape[0], X.shape[1]
        k = c * W.shape[2] * W.shape[3]
        check_counts("the column matrix", k, n * ho * wo)
        xp, ctype = self.xp, FLOAT_CTYPES[X.dtype]
        geo = self._conv_geometry_args(X.shape, W.shape, stride, padding, (ho, wo))
        cols = xp.empty((k, n * ho * wo), X.dtype)
        self._launch(f"conv_im2col<{ctype}>", cols.size, (X, cols, *geo))
        Z = xp.matmul(W.reshape(o, k), cols)                          # (O, N*Ho*Wo)
        Y = xp.empty((n, o, ho, wo), X.dtype)
        self._launch(f"conv_bias_act<{ctype}>", Y.size,
                     (Z, b, Y, numpy.int32(n), numpy.int32(o), numpy.int64(ho * wo),
                      numpy.int32(spec.code), X.dtype.type(alpha)))
        return Y, ConvContext(self.name, X.shape, X.dtype, stride, padding, b is not None,
                              cols=cols)

    def conv2d_backward(self, dY, Y, ctx, W, activation="identity", alpha=0.0, need_dX=True):
        if not (isinstance(ctx, ConvContext) and ctx.belongs_to(self)):
            return super().conv2d_backward(dY, Y, ctx, W, activation, alpha, need_dX)
        spec = activations.get_activation(activation)
        cols = ctx.cols
        n, c, h, w = ctx.shape
        (sh, sw), (ph, pw) = ctx.stride, ctx.padding
        self._check_device("W", W)
        check_array("W", W, dtype=cols.dtype, ndim=4)
        o, _, kh, kw = W.shape
        if c * kh * kw != cols.shape[0]:
            raise ValueError(f"W has shape {tuple(W.shape)}, but the forward of this context "
                             f"had {c} input channels and a column matrix of "
                             f"{cols.shape[0]} rows")
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        self._check_device("dY", dY)
        check_array("dY", dY, dtype=cols.dtype, shape=(n, o, ho, wo))
        if not spec.passes_gradient:
            self._check_device("Y", Y)
            check_like("Y", Y, "dY", dY)
        xp, ctype, T = self.xp, FLOAT_CTYPES[cols.dtype], cols.dtype.type
        dZ = xp.empty((o, n * ho * wo), cols.dtype)
        self._launch(f"conv_act_backward<{ctype}>", dZ.size,
                     (dY, dY if spec.passes_gradient else Y, dZ, numpy.int32(n), numpy.int32(o),
                      numpy.int64(ho * wo), numpy.int32(spec.code), T(alpha)))
        db = self._row_sums(dZ) if ctx.has_bias else None
        dW = xp.matmul(dZ, cols.T).reshape(W.shape)
        dX = None
        if need_dX:
            dcols = xp.matmul(W.reshape(o, c * kh * kw).T, dZ)           # (C*kh*kw, N*Ho*Wo)
            dX = xp.empty(ctx.shape, cols.dtype)
            geo = self._conv_geometry_args(ctx.shape, W.shape, ctx.stride, ctx.padding,
                                           (ho, wo))
            self._launch(f"conv_col2im<{ctype}>", dX.size, (dcols, dX, *geo))
        return dX, dW, db

    def _pool_args(self, shape, pool, stride, hw_out):
        n, c, h, w = shape
        check_counts("the pooled input", n * c, h * w)
        return tuple(numpy.int32(v) for v in (n * c, h, w, *pool, *stride, *hw_out))

    def maxpool2d_forward(self, X, pool, stride):
        geometry = pool_geometry(X, pool, stride)
        if not (geometry and self._fused(X)):
            return super().maxpool2d_forward(X, pool, stride)
        self._check_device("X", X)
        check_array("X", X)
        pool, stride, hw_out = geometry
        xp = self.xp
        Y = xp.empty(X.shape[:2] + hw_out, X.dtype)
        idx = xp.empty(Y.shape, numpy.uint8 if pool[0] * pool[1] <= 256 else numpy.int32)
        self._launch(f"maxpool_forward<{FLOAT_CTYPES[X.dtype]}, {INDEX_CTYPES[idx.dtype]}>",
                     Y.size, (X, Y, idx, *self._pool_args(X.shape, pool, stride, hw_out)))
        return Y, PoolContext(self.name, X.shape, pool, stride, idx)

    def maxpool2d_backward(self, dY, ctx):
        if not (isinstance(ctx, PoolContext) and ctx.belongs_to(self, max_pool=True)):
            return super().maxpool2d_backward(dY, ctx)
        self._check_device("dY", dY)
        if not self._fused(dY):
            raise TypeError(f"dY must have dtype float32 or float64, got {dY.dtype}")
        check_array("dY", dY, shape=ctx.idx.shape)
        dX = self.xp.empty(ctx.shape, dY.dtype)
        self._launch(f"maxpool_backward<{FLOAT_CTYPES[dY.dtype]}, "
                     f"{INDEX_CTYPES[ctx.idx.dtype]}>", dX.size,
                     (dY, ctx.idx, dX, *self._pool_args(ctx.shape, ctx.pool, ctx.stride,
                                                        tuple(dY.shape[2:]))))
        return dX

    def avgpool2d_forward(self, X, pool, stride):
        geometry = pool_geometry(X, pool, stride)
        if not (geometry and self._fused(X)):
            return super().avgpool2d_forward(X, pool, stride)
        self._check_device("X", X)
        check_array("X", X)
        pool, stride, hw_out = geometry
        Y = self.xp.empty(X.shape[:2] + hw_out, X.dtype)
        self._launch(f"avgpool_forward<{FLOAT_CTYPES[X.dtype]}>", Y.size,
                     (X, Y, *self._pool_args(X.shape, pool, stride, hw_out)))
        return Y, PoolContext(self.name, X.shape, pool, stride, None)

    def avgpool2d_backward(self, dY, ctx):
        if not (isinstance(ctx, PoolContext) and ctx.belongs_to(self, max_pool=False)):
            return super().avgpool2d_backward(dY, ctx)
        n, c, h, w = ctx.shape
        (kh, kw), (sh, sw) = ctx.pool, ctx.stride
        self._check_device("dY", dY)
        if not self._fused(dY):
            raise TypeError(f"dY must have dtype float32 or float64, got {dY.dtype}")
        check_array("dY", dY, shape=(n, c, (h - kh) // sh + 1, (w - kw) // sw + 1))
        dX = self.xp.empty(ctx.shape, dY.dtype)
        self._launch(f"avgpool_backward<{FLOAT_CTYPES[dY.dtype]}>", dX.size,
                     (dY, dX, *self._pool_args(ctx.shape, ctx.pool, ctx.stride,
                                               tuple(dY.shape[2:]))))
        return dX

    def batchnorm2d_forward(self, X, gamma, beta, eps):
        if not (getattr(X, "ndim", 0) == 4 and self._fused(X) and X.size):
            return super().batchnorm2d_forward(X, gamma, beta, eps)
        self._check_device("X", X)
        check_array("X", X)
        n, c, h, w = X.shape
        for name, a in (("gamma", gamma), ("beta", beta)):
            self._check_device(name, a)
            check_array(name, a, dtype=X.dtype, shape=(c,))
        xp, ctype, T = self.xp, FLOAT_CTYPES[X.dtype], X.dtype.type
        l = h * w
        rows, chunks = bn_chunk(n, c * l)
        psum = xp.empty(chunks * c * l, numpy.float64)
        psq = xp.empty(chunks * c * l, numpy.float64)
        self._launch(f"bn2d_partial_stats<{ctype}>", psum.size,
                     (X, psum, psq, numpy.int32(n), numpy.int32(c), numpy.int64(l),
                      numpy.int32(rows)))
        mean, var, inv_std = (xp.empty(c, X.dtype) for _ in range(3))
        self._launch(f"bn2d_stats<{ctype}>", c,
                     (X, psum, psq, mean, var, inv_std, numpy.int32(c), numpy.int64(l),
                      numpy.int32(chunks), numpy.int64(n * l), T(eps)), block=SMALL_BLOCK)
        xhat, Y = xp.empty_like(X), xp.empty_like(X)
        self._launch(f"bn2d_apply<{ctype}>", X.size,
                     (X, mean, inv_std, gamma, beta, xhat, Y, numpy.int32(c), numpy.int64(l),
                      numpy.int64(X.size)))
        return Y, xhat, mean, var, inv_std

    def batchnorm2d_backward(self, dY, xhat, gamma, inv_std):
        if not (getattr(dY, "ndim", 0) == 4 and self._fused(dY) and dY.size):
            return super().batchnorm2d_backward(dY, xhat, gamma, inv_std)
        self._check_device("dY", dY)
        check_array("dY", dY)
        self._check_device("xhat", xhat)
        check_like("xhat", xhat, "dY", dY)
        n, c, h, w = dY.shape
        for name, a in (("gamma", gamma), ("inv_std", inv_std)):
            self._check_device(name, a)
            check_array(name, a, dtype=dY.dtype, shape=(c,))
        xp, ctype, T = self.xp, FLOAT_CTYPES[dY.dtype], dY.dtype.type
        l = h * w
        rows, chunks = bn_chunk(n, c * l)
        psum = xp.empty(chunks * c * l, numpy.float64)
        pdot = xp.empty(chunks * c * l, numpy.float64)
        self._launch(f"bn2d_partial_grads<{ctype}>", psum.size,
                     (dY, xhat, psum, pdot, numpy.int32(n), numpy.int32(c), numpy.int64(l),
                      numpy.int32(rows)))
        dgamma, dbeta = xp.empty(c, dY.dtype), xp.empty(c, dY.dtype)
        self._launch(f"bn2d_grad_sums<{ctype}>", c,
                     (psum, pdot, dgamma, dbeta, numpy.int32(c), numpy.int64(l),
                      numpy.int32(chunks)), block=SMALL_BLOCK)
        dX = xp.empty_like(dY)
        self._launch(f"bn2d_backward_apply<{ctype}>", dY.size,
                     (dY, xhat, gamma, inv_std, dgamma, dbeta, dX, numpy.int32(c),
                      numpy.int64(l), numpy.int64(dY.size), T(n * l)))
        return dX, dgamma, dbeta

    # ------------------------------------------------------------- recurrent
    # kernels/recurrent_kernels.cu: one launch per step, a fused cell for the
    # whole batch (one thread per (row, unit)), between the recurrent products
    # in cuBLAS. What the next product and dU read is kept time-major, so that
    # every product takes contiguous (N, .) slices: the hidden states Hs
    # (T, N, H) forward, the gates' gradients dZ (T, N, G) backward (the kernel
    # writes them into dXW (N, T, G) too), and dU is ONE product over the
    # (T-1)*N rows of Hs[:-1] and dZ[1:]. The norms of dL/dh_t are one
    # reduction of the (T, N, H) gradients after the loop.

    def _recurrent_inputs(self, XW, U, bU=None):
        """Check XW, U (and bU) before any launch."""
        self._check_device("XW", XW)
        check_array("XW", XW, ndim=3)
        self._check_device("U", U)
        check_array("U", U, dtype=XW.dtype)
        if bU is not None:
            self._check_device("bU", bU)
            check_array("bU", bU, dtype=XW.dtype)
        n, T, G = XW.shape
        check_counts("XW", n * T, G)

    def _recurrent_grad_inputs(self, dH, ctx, U, width):
        """Check dH and U of a backward against its forward; ``(dh_steps, t_in of t)``."""
        n, T, H = ctx.dims
        self._check_device("U", U)
        check_array("U", U, dtype=ctx.dtype, shape=(H, width))
        self._check_device("dH", dH)
        check_array("dH", dH, dtype=ctx.dtype, shape=ctx.output_shape())
        if ctx.return_sequences:
            return T, lambda t: t
        return 1, lambda t: 0 if t == T - 1 else -1

    def _step_args(self, n, T, H, t):
        return numpy.int32(n), numpy.int32(T), numpy.int32(H), numpy.int32(t)

    def _weight_grad(self, Hs, dZ):
        """dU = sum over t >= 1 of h_{t-1}^T dZ_t: one product over (T-1)*N rows."""
        T, n, H = Hs.shape
        if T == 1:
            return self.xp.zeros((H, dZ.shape[2]), Hs.dtype)
        return self.xp.matmul(Hs[:-1].reshape((T - 1) * n, H).T,
                              dZ[1:].reshape((T - 1) * n, dZ.shape[2]))

    def _norms(self, dh_all):
        return self.xp.sqrt((dh_all * dh_all).sum(axis=(1, 2)))

    def lstm_forward(self, XW, U, return_sequences):
        dims = recurrent_dims(XW, U, "lstm")
        if not (dims and self._fused(XW)):
            return super().lstm_forward(XW, U, return_sequences)
        self._recurrent_inputs(XW, U)
        n, T, H = dims
        xp, dtype = self.xp, XW.dtype
        expr = f"lstm_cell_forward<{FLOAT_CTYPES[dtype]}>"
        gates = xp.empty((T, n, 4 * H), dtype)
        C, tanh_C, Hs = (xp.empty((T, n, H), dtype) for _ in range(3))
        Hout = xp.empty((n, T, H), dtype) if return_sequences else None
        Z = xp.empty((n, 4 * H), dtype)
        out_steps = numpy.int32(T if return_sequences else 1)
        for t in range(T):
            if t:
                xp.matmul(Hs[t - 1], U, out=Z)
            self._launch(expr, n * H,
                         (XW, Z if t else None, C[t - 1] if t else None, gates[t], C[t],
                          tanh_C[t], Hs[t], Hout, *self._step_args(n, T, H, t), out_steps,
                          numpy.int32(t if return_sequences else -1)))
        ctx = RecurrentContext(self.name, "lstm", dims, dtype, return_sequences,
                               {"gates": gates, "C": C, "tanh_C": tanh_C, "Hs": Hs})
        return (Hout if return_sequences else Hs[T - 1].copy()), ctx

    def lstm_backward(self, dH, ctx, U):
        if not (isinstance(ctx, RecurrentContext) and ctx.belongs_to(self, "lstm")):
            return super().lstm_backward(dH, ctx, U)
        n, T, H = ctx.dims
        dh_steps, t_in = self._recurrent_grad_inputs(dH, ctx, U, 4 * H)
        xp, dtype, a = self.xp, ctx.dtype, ctx.arrays
        expr = f"lstm_cell_backward<{FLOAT_CTYPES[dtype]}>"
        dZ = xp.empty((T, n, 4 * H), dtype)
        dXW = xp.empty((n, T, 4 * H), dtype)
        dh_all = xp.empty((T, n, H), dtype)
        dc, dh = xp.zeros((n, H), dtype), xp.empty((n, H), dtype)
        UT = U.T
        C = a["C"]
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                xp.matmul(dZ[t + 1], UT, out=dh)
            self._launch(expr, n * H,
                         (dH, numpy.int32(dh_steps), numpy.int32(t_in(t)),
                          dh if t < T - 1 else None, dc, a["gates"][t],
                          C[t - 1] if t else None, a["tanh_C"][t], dZ[t], dXW, dh_all[t],
                          *self._step_args(n, T, H, t)))
        return dXW, self._weight_grad(a["Hs"], dZ), self._norms(dh_all)

    def gru_forward(self, XW, U, bU, return_sequences):
        dims = recurrent_dims(XW, U, "gru", bU)
        if not (dims and self._fused(XW)):
            return super().gru_forward(XW, U, bU, return_sequences)
        self._recurrent_inputs(XW, U, bU)
        n, T, H = dims
        xp, dtype = self.xp, XW.dtype
        expr = f"gru_cell_forward<{FLOAT_CTYPES[dtype]}>"
        gates = xp.empty((T, n, 3 * H), dtype)
        hUn, Hs = xp.empty((T, n, H), dtype), xp.empty((T, n, H), dtype)
        Hout = xp.empty((n, T, H), dtype) if return_sequences else None
        Z = xp.empty((n, 3 * H), dtype)
        out_steps = numpy.int32(T if return_sequences else 1)
        for t in range(T):
            if t:
                xp.matmul(Hs[t - 1], U, out=Z)
            self._launch(expr, n * H,
                         (XW, Z if t else None, bU, Hs[t - 1] if t else None, gates[t], hUn[t],
                          Hs[t], Hout, *self._step_args(n, T, H, t), out_steps,
                          numpy.int32(t if return_sequences else -1)))
        ctx = RecurrentContext(self.name, "gru", dims, dtype, return_sequences,
                               {"gates": gates, "hUn": hUn, "Hs": Hs})
        return (Hout if return_sequences else Hs[T - 1].copy()), ctx

    def gru_backward(self, dH, ctx, U):
        if not (isinstance(ctx, RecurrentContext) and ctx.belongs_to(self, "gru")):
            return super().gru_backward(dH, ctx, U)
        n, T, H = ctx.dims
        dh_steps, t_in = self._recurrent_grad_inputs(dH, ctx, U, 3 * H)
        xp, dtype, a = self.xp, ctx.dtype, ctx.arrays
        expr = f"gru_cell_backward<{FLOAT_CTYPES[dtype]}>"
        dHU = xp.empty((T, n, 3 * H), dtype)     # dL/d(h_{t-1} U + bU), time-major
        dXW = xp.empty((n, T, 3 * H), dtype)
        dh_all = xp.empty((T, n, H), dtype)
        carry, dh = xp.zeros((n, H), dtype), xp.empty((n, H), dtype)
        UT, Hs = U.T, a["Hs"]
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                xp.matmul(dHU[t + 1], UT, out=dh)
            self._launch(expr, n * H,
                         (dH, numpy.int32(dh_steps), numpy.int32(t_in(t)),
                          dh if t < T - 1 else None, carry, a["gates"][t], a["hUn"][t],
                          Hs[t - 1] if t else None, dHU[t], dXW, dh_all[t],
                          *self._step_args(n, T, H, t)))
        return (dXW, self._weight_grad(Hs, dHU), dHU.sum(axis=(0, 1)), self._norms(dh_all))

    def rnn_forward(self, XW, U, activation, return_sequences):
        spec = activations.get_activation(activation)   # unknown names raise, as in the base
        dims = recurrent_dims(XW, U, "rnn")
        if not (dims and self._fused(XW)):
            return super().rnn_forward(XW, U, activation, return_sequences)
        self._recurrent_inputs(XW, U)
        n, T, H = dims
        xp, dtype = self.xp, XW.dtype
        expr = f"rnn_cell_forward<{FLOAT_CTYPES[dtype]}>"
        Hs = xp.empty((T, n, H), dtype)
        Hout = xp.empty((n, T, H), dtype) if return_sequences else None
        Z = xp.empty((n, H), dtype)
        out_steps = numpy.int32(T if return_sequences else 1)
        for t in range(T):
            if t:
                xp.matmul(Hs[t - 1], U, out=Z)
            self._launch(expr, n * H,
                         (XW, Z if t else None, Hs[t], Hout, *self._step_args(n, T, H, t),
                          out_steps, numpy.int32(t if return_sequences else -1),
                          numpy.int32(spec.code), dtype.type(0.0)))
        ctx = RecurrentContext(self.name, "rnn", dims, dtype, return_sequences, {"Hs": Hs},
                               activation=spec.code)
        return (Hout if return_sequences else Hs[T - 1].copy()), ctx

    def rnn_backward(self, dH, ctx, U):
        if not (isinstance(ctx, RecurrentContext) and ctx.belongs_to(self, "rnn")):
            return super().rnn_backward(dH, ctx, U)
        n, T, H = ctx.dims
        dh_steps, t_in = self._recurrent_grad_inputs(dH, ctx, U, H)
        xp, dtype, Hs = self.xp, ctx.dtype, ctx.arrays["Hs"]
        expr = f"rnn_cell_backward<{FLOAT_CTYPES[dtype]}>"
        dZ = xp.empty((T, n, H), dtype)
        dXW = xp.empty((n, T, H), dtype)
        dh_all = xp.empty((T, n, H), dtype)
        dh = xp.empty((n, H), dtype)
        UT = U.T
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                xp.matmul(dZ[t + 1], UT, out=dh)
            self._launch(expr, n * H,
                         (dH, numpy.int32(dh_steps), numpy.int32(t_in(t)),
                          dh if t < T - 1 else None, Hs[t], dZ[t], dXW, dh_all[t],
                          *self._step_args(n, T, H, t), numpy.int32(ctx.activation),
                          dtype.type(0.0)))
        return dXW, self._weight_grad(Hs, dZ), self._norms(dh_all)
