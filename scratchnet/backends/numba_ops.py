"""The Numba backend: NumPy arrays, with the hot primitives as fused @njit kernels.

Each fused method handles float32 and float64 NumPy arrays; any other dtype,
shape or layout it does not cover goes to the base class's composed default
(``super()``). Inputs that are only read are made C-contiguous with
``numpy.ascontiguousarray``; arrays written in place must already be.

Importing this module does not import numba: ``check_available()`` does, and
the kernels (``_numba_kernels``) compile lazily, once per (kernel, dtype), on
first use -- or all at once with ``warmup()``. Compiled kernels are cached on
disk unless ``SCRATCHNET_NUMBA_CACHE=0``.

Threading: every kernel is serial (no ``parallel=True``). Measured on the
2-core machine, float32, microseconds, best of 7 batches over two runs;
"alone" is the kernel in a loop, "step" is ``X @ W`` (OpenBLAS, 2 threads)
then the kernel, as in training; a ``prange`` over row blocks for parallel:

    X (N, in) @ W (in, out)  kernel     serial       omp layer     workqueue
                                      alone/step     alone/step    alone/step
    (32, 784) @ 256          relu      2.6/72        4.2/6005      36/149
    (128, 256) @ 128         sigmoid   9.4/49        5.9/7999      43/101
    (512, 784) @ 256         softmax   95/964        49/7973      173/1064
    (512, 128) @ 10          softmax   6.8/20        6.9/7185      42/60
    (4096, 1000) @ 1000      sigmoid   2464/37139  1180/42689    1292/35008
    (4096, 1000) @ 1000      softmax   3565/38160  3179/47836    1838/36844
    (the products alone: 69, 39, 845, 10 and 34060 us)

A thread pool halves a kernel run alone, but between matrix products its
threads and OpenBLAS's spinning threads take turns on the two cores: with
numba's default (omp) layer every step costs ~7 ms more, and the workqueue
layer's wake-up (~35 us) loses at every MLP shape and gains at most 2 ms
(5%, near the noise) of a 35 ms step at 4096x1000. So the kernels run in the
calling thread and BLAS keeps both cores.

The one exception is the recurrence of the RNN, LSTM and GRU cells: its
products are too small for BLAS to use two threads well, so it runs on
chunks of the batch's rows in Python threads, BLAS at one thread each while
they run (see the recurrent section below).
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import numpy

from . import BackendUnavailableError
from ._conv import ConvContext, PoolContext, conv_geometry, pool_geometry
from ._recurrent import RecurrentContext, recurrent_dims
from .base import Ops
from .. import activations
from .._compat import module_installed

NOT_INSTALLED = "numba is not installed: pip install scratchnet[numba]"

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))

#: The kernels generated from the activation table (rebuilt when it changes).
ACTIVATION_KERNELS = ("bias_act", "act_backward", "conv_bias_act", "conv_act_backward")

#: count_correct uses its kernel up to this many classes (see the method).
COUNT_CORRECT_MAX_CLASSES = 16

#: The RNN activations the fused cells cover, by their code in the kernels
#: (``_numba_kernels.RNN_TANH``, ``RNN_RELU``); any other runs composed.
_RNN_ACTIVATIONS = {"tanh": 0, "relu": 1}

#: A recurrence runs on several threads only with at least this many rows per thread.
RECURRENT_MIN_ROWS = 32

#: A convolution runs in chunks of samples whose column matrix takes about this
#: many bytes, so that each chunk is built, multiplied and used while in cache.
CONV_CHUNK_BYTES = 1 << 20


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


def _floats(*arrays):
    """True when every array is a plain NumPy float32/float64 array of one dtype."""
    dtype = getattr(arrays[0], "dtype", None)
    if dtype not in _FLOATS:
        return False
    for a in arrays:  # a loop, not all(...): this runs on every call
        if type(a) is not numpy.ndarray or a.dtype != dtype:
            return False
    return True


def _writable(out, shape, dtype):
    """True when a kernel can write a (shape, dtype) result into ``out`` in place."""
    return (type(out) is numpy.ndarray and out.shape == shape and out.dtype == dtype
            and out.flags.c_contiguous and out.flags.writeable)


def _labels(labels, n):
    """``labels`` as a C-contiguous (n,) intp array, or None if they are not integers."""
    labels = numpy.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        return None
    return numpy.ascontiguousarray(labels, dtype=numpy.intp)


def check_like_forward(name, arr, shape, dtype):
    """Raise unless ``arr`` is a NumPy array of ``shape`` and ``dtype`` (any float
    the kernels take when dtype is None): a backward's gradient against its forward."""
    if type(arr) is not numpy.ndarray:
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if (arr.dtype != dtype) if dtype is not None else (arr.dtype not in _FLOATS):
        want = f"{dtype} (that of the forward)" if dtype is not None else "float32 or float64"
        raise TypeError(f"{name} must have dtype {want}, got {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (that of the forward's "
                         f"output), got {arr.shape}")


class NumbaOps(Ops):
    name = "numba"
    xp = numpy

    def __init__(self):
        #: "kernel[dtype]" -> seconds its first call took (compiling or loading it).
        self.compile_times = {}
        self._ready = {}  # (kernel name, dtype char) -> kernel, once it has run
        self._kernels = None
        self._no_array = {}
        self._table_version = None  # the activation table our activation kernels come from
        #: Bytes of column matrix per chunk of samples in the convolutions.
        self.conv_chunk_bytes = CONV_CHUNK_BYTES
        #: Threads a recurrence runs on (chunks of the batch's rows); None: as many
        #: as BLAS uses (threadpoolctl), else 1.
        self.recurrent_threads = None
        self._blas = None       # threadpoolctl's BLAS selection, False without it
        self._pool = None       # (pid, workers, ThreadPoolExecutor) for the recurrences

    # ------------------------------------------------------------ plumbing
    def check_available(self):
        """Raise BackendUnavailableError, naming the cause, unless numba and the kernels import."""
        try:
            import numba  # noqa: F401
        except Exception as err:  # an ImportError, or a broken install's own error
            if not module_installed("numba"):
                raise BackendUnavailableError(NOT_INSTALLED) from err
            raise BackendUnavailableError(
                f"numba is installed but cannot be imported: {type(err).__name__}: {err}"
            ) from err
        try:
            self._k()
        except Exception as err:  # e.g. a numba too old or too new for the kernels
            raise BackendUnavailableError(
                f"numba {numba.__version__} cannot load scratchnet's kernels: "
                f"{type(err).__name__}: {err}") from err

    def _k(self):
        """The kernels module, imported on first use (it imports numba)."""
        if self._kernels is None:
            from . import _numba_kernels
            self._kernels = _numba_kernels
        return self._kernels

    def _run(self, name, dtype, *args):
        """Call kernel ``name``; its first call per dtype compiles it: time that."""
        kernel = self._ready.get((name, dtype.char))  # not f"{dtype}": str() is slow
        if kernel is not None:
            return kernel(*args)
        kernel = getattr(self._k(), name)
        start = time.perf_counter()
        result = kernel(*args)
        self.compile_times[f"{name}[{dtype}]"] = time.perf_counter() - start
        self._ready[name, dtype.char] = kernel
        return result

    def _activation_code(self, spec):
        """The entry's code, with the activation kernels built for the table as it is."""
        if self._table_version != activations.version():
            # An activation was registered or removed: rebuild the kernels from
            # the table and forget the ones compiled from the old one.
            self._k().refresh_activations()
            for key in [key for key in self._ready if key[0] in ACTIVATION_KERNELS]:
                del self._ready[key]
            self._table_version = activations.version()
        return spec.code

    def _none(self, dtype):
        """An empty (0,) array: the kernels' stand-in for "no bias"."""
        if dtype not in self._no_array:
            self._no_array[dtype] = numpy.empty(0, dtype)
        return self._no_array[dtype]

    # ------------------------------------------------------------ products
    def take_rows(self, X, idx, out=None):
        """Gather ``X[idx]`` (B, F) from X (N, F), into ``out`` when given.

        A copy loop beats ``numpy.take`` on mini-batches (60000x784 float32:
        2.7 against 6.1 us for 32 rows, 48 against 125 us for 512).
        """
        idx = numpy.asarray(idx)
        if not (getattr(X, "ndim", 0) == 2 and _floats(X) and X.flags.c_contiguous
                and idx.ndim == 1 and idx.dtype.kind in "iu"):
            return super().take_rows(X, idx, out=out)
        shape = (idx.shape[0], X.shape[1])
        if out is None:
            out = numpy.empty(shape, X.dtype)
        elif not _writable(out, shape, X.dtype):
            return super().take_rows(X, idx, out=out)
        self._run("take_rows", X.dtype, X, numpy.ascontiguousarray(idx, numpy.intp), out)
        return out

    # ---------------------------------------------------------- activation
    def bias_act(self, Z, b, activation, alpha=0.01, out=None):
        """``f(Z + b)`` in one pass. Z: (N, M); b: (M,) or None; into ``out`` if given.

        The kernel covers the activations whose table entry has
        ``numba_forward`` (relu, leaky_relu, sigmoid). identity (one
        ``numpy.add``) and tanh go to the base class: NumPy's SIMD tanh beats
        one built on the kernels' exp (4096x1000 float32: 1.1 against 2.8 ms),
        and with the bias add in a kernel neither gained (0.7x-1.2x; slower
        on the small shapes, where the call overhead dominates).
        """
        spec = activations.get_activation(activation)  # unknown names raise, as in the base
        if not (spec.numba_forward and getattr(Z, "ndim", 0) == 2
                and _floats(Z, *(() if b is None else (b,)))
                and (b is None or b.shape == (Z.shape[1],))
                and (out is None or _writable(out, Z.shape, Z.dtype))):
            return super().bias_act(Z, b, activation, alpha, out=out)
        Zc = numpy.ascontiguousarray(Z)
        if out is None:
            out = Zc if Zc is not Z else numpy.empty_like(Zc)  # reuse our own copy
        b = self._none(Z.dtype) if b is None else numpy.ascontiguousarray(b)
        self._run("bias_act", Z.dtype, Zc, b, self._activation_code(spec), float(alpha), out)
        return out

    def _act_backward(self, dY, Y, activation, alpha, out, with_db):
        """``(dZ, db or None)`` from the kernels, or None where they don't apply."""
        spec = activations.get_activation(activation)  # unknown names raise, as in the base
        if not (getattr(dY, "ndim", 0) == 2
                and _floats(dY, Y) and Y.shape == dY.shape
                and (out is None or _writable(out, dY.shape, dY.dtype))):
            return None
        dYc = numpy.ascontiguousarray(dY)
        db = numpy.empty(dY.shape[1], dY.dtype) if with_db else self._none(dY.dtype)
        if spec.passes_gradient:  # dZ is dY itself, as in the base class
            if with_db:
                self._run("column_sum", dY.dtype, dYc, db)
            return dY, (db if with_db else None)
        if out is None:
            out = dYc if dYc is not dY else numpy.empty_like(dYc)
        self._run("act_backward", dY.dtype, dYc, numpy.ascontiguousarray(Y),
                  self._activation_code(spec), float(alpha), out, db)
        return out, (db if with_db else None)

    def act_backward(self, dY, Y, activation, alpha=0.01, out=None):
        """``dZ = dY * f'(Y)`` from the forward output Y (N, M); into ``out`` if given."""
        fused = self._act_backward(dY, Y, activation, alpha, out, with_db=False)
        if fused is None:
            return super().act_backward(dY, Y, activation, alpha, out=out)
        return fused[0]

    def act_backward_bias(self, dY, Y, activation, alpha=0.01, out=None):
        """``(dZ, db)``: dZ (N, M) as ``act_backward``, db (M,) its column sum, one pass."""
        fused = self._act_backward(dY, Y, activation, alpha, out, with_db=True)
        if fused is None:
            return super().act_backward_bias(dY, Y, activation, alpha, out=out)
        return fused

    # ------------------------------------------------------------- softmax
    def softmax_cross_entropy(self, logits, labels):
        """Fused softmax + cross-entropy: ``(loss, grad)``, loss a 0-d array of logits' dtype.

        logits: (N, C) float; labels: (N,) integers in [0, C) (ValueError otherwise,
        as in the base class).
        """
        lab = None
        if getattr(logits, "ndim", 0) == 2 and _floats(logits) and logits.size:
            lab = _labels(labels, logits.shape[0])
        if lab is None:
            return super().softmax_cross_entropy(logits, labels)
        self.check_label_range(lab, logits.shape[1], "softmax_cross_entropy")
        logits = numpy.ascontiguousarray(logits)
        grad = numpy.empty_like(logits)
        loss = self._run("softmax_cross_entropy", logits.dtype, logits, lab, grad)
        return numpy.asarray(loss, dtype=logits.dtype), grad

    def count_correct(self, scores, labels):
        """Rows whose argmax equals the label, as a NumPy integer.

        The kernel only for narrow rows: argmax does not vectorise in LLVM,
        and NumPy's SIMD argmax wins from about 32 classes (512 rows: 10
        classes 2.3 against 4.3 us, 32 classes a tie, 100 classes 26 against 10).
        """
        lab = None
        if (getattr(scores, "ndim", 0) == 2 and _floats(scores)
                and 0 < scores.shape[1] <= COUNT_CORRECT_MAX_CLASSES):
            lab = _labels(labels, scores.shape[0])
        if lab is None:
            return super().count_correct(scores, labels)
        scores = numpy.ascontiguousarray(scores)
        return numpy.int64(self._run("count_correct", scores.dtype, scores, lab))

    # --------------------------------------- sigmoid + binary cross-entropy
    def sigmoid_bce(self, logits, targets):
        """Fused sigmoid + binary cross-entropy: ``(loss, grad)`` in one pass.

        logits: float32/float64 of any shape (flat elements); targets: the same
        shape and dtype. Anything else goes to the base class.
        """
        if not (_floats(logits, targets) and targets.shape == logits.shape and logits.size):
            return super().sigmoid_bce(logits, targets)
        z = numpy.ascontiguousarray(logits)
        grad = numpy.empty_like(z)
        loss = self._run("sigmoid_bce", z.dtype, z.reshape(-1),
                         numpy.ascontiguousarray(targets).reshape(-1), grad.reshape(-1))
        return numpy.asarray(loss, dtype=z.dtype), grad

    # ---------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, velocity, lr, momentum=0.0, nesterov=False,
                   weight_decay=0.0):
        """One fused SGD step in place (PyTorch's definition, as the base class)."""
        written = (param, velocity) if momentum else (param,)
        if not (_floats(param, grad, *written[1:])
                and all(_writable(a, param.shape, param.dtype) for a in written)
                and grad.shape == param.shape):
            return super().sgd_update(param, grad, velocity, lr, momentum, nesterov,
                                      weight_decay)
        # Scalars go as Python floats (numba's dispatch is fastest for those);
        # the kernel uses them in the parameter's dtype, as the base class does.
        grad = numpy.ascontiguousarray(grad).reshape(-1)
        self._run("sgd_update", param.dtype, param.reshape(-1), grad,
                  written[-1].reshape(-1), float(lr), float(momentum), bool(nesterov),
                  float(weight_decay))

    def adam_update(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0):
        """One fused bias-corrected Adam step in place (PyTorch's definition)."""
        if not (_floats(param, grad, m, v) and grad.shape == param.shape
                and all(_writable(a, param.shape, param.dtype) for a in (param, m, v))):
            return super().adam_update(param, grad, m, v, step, lr, beta1, beta2, eps,
                                       weight_decay)
        grad = numpy.ascontiguousarray(grad).reshape(-1)
        self._run("adam_update", param.dtype, param.reshape(-1), grad, m.reshape(-1),
                  v.reshape(-1), float(lr / (1 - beta1 ** step)), float(beta1),
                  float(beta2), float(1 - beta1), float(1 - beta2),
                  float(math.sqrt(1 - beta2 ** step)), float(eps), float(weight_decay))

    def adamw_update(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=1e-2):
        """One fused AdamW step in place (PyTorch's definition, as the base class)."""
        if not (_floats(param, grad, m, v) and grad.shape == param.shape
                and all(_writable(a, param.shape, param.dtype) for a in (param, m, v))):
            return super().adamw_update(param, grad, m, v, step, lr, beta1, beta2, eps,
                                        weight_decay)
        grad = numpy.ascontiguousarray(grad).reshape(-1)
        self._run("adamw_update", param.dtype, param.reshape(-1), grad, m.reshape(-1),
                  v.reshape(-1), float(1 - lr * weight_decay), float(lr / (1 - beta1 ** step)),
                  float(beta1), float(beta2), float(1 - beta1), float(1 - beta2),
                  float(math.sqrt(1 - beta2 ** step)), float(eps))

    def rmsprop_update(self, param, grad, square_avg, lr, alpha=0.99, eps=1e-8,
                       weight_decay=0.0, momentum=0.0, buf=None, centered=False,
                       grad_avg=None):
        """One fused RMSprop step in place (PyTorch's definition, as the base class)."""
        use_momentum, centered = bool(momentum > 0), bool(centered)
        written = ((param, square_avg) + ((buf,) if use_momentum else ())
                   + ((grad_avg,) if centered else ()))
        # A missing buf/grad_avg fails _floats; the base class then names it.
        if not (_floats(param, grad, *written[1:]) and grad.shape == param.shape
                and all(_writable(a, param.shape, param.dtype) for a in written)):
            return super().rmsprop_update(param, grad, square_avg, lr, alpha, eps,
                                          weight_decay, momentum, buf, centered, grad_avg)
        grad = numpy.ascontiguousarray(grad).reshape(-1)
        # None for unused state: the kernel is compiled without that branch.
        self._run("rmsprop_update", param.dtype, param.reshape(-1), grad,
                  square_avg.reshape(-1), grad_avg.reshape(-1) if centered else None,
                  buf.reshape(-1) if use_momentum else None, float(lr), float(alpha),
                  float(1 - alpha), float(eps), float(weight_decay), float(momentum))

    def adagrad_update(self, param, grad, state_sum, step, lr, lr_decay=0.0,
                       weight_decay=0.0, eps=1e-10):
        """One fused Adagrad step in place (PyTorch's definition, as the base class)."""
        if not (_floats(param, grad, state_sum) and grad.shape == param.shape
                and all(_writable(a, param.shape, param.dtype) for a in (param, state_sum))):
            return super().adagrad_update(param, grad, state_sum, step, lr, lr_decay,
                                          weight_decay, eps)
        grad = numpy.ascontiguousarray(grad).reshape(-1)
        self._run("adagrad_update", param.dtype, param.reshape(-1), grad,
                  state_sum.reshape(-1), float(lr / (1 + (step - 1) * lr_decay)), float(eps),
                  float(weight_decay))

    # ------------------------------------------------------------- dropout
    def dropout(self, X, p, rng):
        """``(X * mask, mask)``; the same uniforms as the base class, so the same mask."""
        if not _floats(X):
            return super().dropout(X, p, rng)
        uniform = rng.random(X.shape, dtype=numpy.float32)
        X = numpy.ascontiguousarray(X)
        Y = numpy.empty_like(X)
        # The float32 uniforms become the float32 mask in place.
        mask = uniform if X.dtype == numpy.float32 else numpy.empty_like(X)
        self._run("dropout", X.dtype, X.reshape(-1), uniform.reshape(-1), float(p),
                  float(1.0 / (1.0 - p)), Y.reshape(-1), mask.reshape(-1))
        return Y, mask

    # --------------------------------------------------- convolution, pooling
    # The products run in BLAS (numpy.matmul), the passes around them in the
    # kernels; see the layout note in _numba_kernels.py. Each forward returns a
    # context of this backend's own class; a context of another class (the
    # composed forward ran, e.g. for float16) goes to the base class's backward.
    # These kernels are serial too: the big ones move memory, and a prange over
    # the planes of the 2x2 max-pool backward (128x32x28x28, float32) ran no
    # faster than the serial loop, alone or right after a product (1.3 ms,
    # workqueue layer; omp: 0.8 against 1.3 ms at best, 4.1 against 1.4 ms median).
    # Nor did cutting the batch's samples into one part per core, each part on
    # its own Python thread with one-thread products, as the recurrences do
    # below: a layer alone ran faster (conv2 of the reference CNN backward 13
    # against 15 ms, a max-pool 0.6 against 1.0 ms), but the whole step, 60
    # steps interleaved with the serial ones, took 57 against 38 ms (median;
    # pools alone split: 40 against 38; every product at one BLAS thread and
    # the convs split: 55 against 47): the parts start while OpenBLAS's
    # threads still spin after the previous product.
    # Fusing the max-pool into the convolution's epilogue (bias, activation
    # and the 2x2 pool on each chunk's product while in cache, writing only
    # the pooled output and its argmax; the backward's prologue scattering
    # dP * f'(P) straight into the product's layout) was measured too, and
    # left out: the reference CNN's conv1 forward 2.41 against 1.87 ms
    # separately, conv2 7.13 against 7.52, the backwards 3.15 against 3.34
    # and 13.3 against 13.5 ms: 0.2 ms of a 29 ms step, for a fourth layer
    # kind in the fusion plan.

    def _conv_chunk(self, n, rows, p, itemsize):
        """Samples per chunk: the chunk's columns (rows x chunk*p) fit ``conv_chunk_bytes``."""
        return max(1, min(n, self.conv_chunk_bytes // max(rows * p * itemsize, 1)))

    def conv2d_forward(self, X, W, b, stride, padding, activation="identity", alpha=0.0):
        """``Y = f(conv(X, W) + b)``: im2col, one product and a fused epilogue.

        X (N, C, H, W), W (O, C, kh, kw), b (O,) or None, float32/float64 of
        one dtype; anything else goes to the base class. Returns ``(Y, ctx)``,
        Y (N, O, Ho, Wo). The batch runs in chunks of samples whose column
        matrix fits in cache (``conv_chunk_bytes``): each chunk's columns are
        built, multiplied and moved to Y while they are there. ctx keeps X
        itself (not a copy, so X must not change before the backward): the
        backward builds the columns again, chunk by chunk, which measured
        faster than keeping them (the reference network, one thread: 48.6
        against 49.6 ms a step) and keeps no (C*kh*kw, N*Ho*Wo) matrix alive.
        """
        spec = activations.get_activation(activation)  # unknown names raise, as in the base
        geometry = conv_geometry(X, W, stride, padding)
        if not (geometry and _floats(X, W, *(() if b is None else (b,)))
                and (b is None or b.shape == (W.shape[0],))):
            return super().conv2d_forward(X, W, b, stride, padding, activation, alpha)
        (sh, sw), (ph, pw), (ho, wo) = geometry
        n, c, h, w = X.shape
        o, _, kh, kw = W.shape
        dtype = X.dtype
        X = numpy.ascontiguousarray(X)
        k, p = c * kh * kw, ho * wo
        Wm = numpy.ascontiguousarray(W).reshape(o, k)
        bias = self._none(dtype) if b is None else numpy.ascontiguousarray(b)
        code = self._activation_code(spec)
        chunk = self._conv_chunk(n, k, p, dtype.itemsize)
        cols = numpy.empty((k, chunk * p), dtype)
        Z = numpy.empty((o, chunk * p), dtype)
        Y = numpy.empty((n, o, ho, wo), dtype)
        Y3 = Y.reshape(n, o, p)
        for n0 in range(0, n, chunk):
            s = min(chunk, n - n0)
            self._run("im2col", dtype, X, kh, kw, sh, sw, ph, pw, ho, wo, n0, s, cols, 0)
            z = Z if s == chunk else numpy.empty((o, s * p), dtype)
            numpy.matmul(Wm, cols[:, :s * p], out=z)
            self._run("conv_bias_act", dtype, z, bias, code, float(alpha), n0, Y3)
        if not spec.numba_forward:  # tanh: NumPy's SIMD tanh (see bias_act); identity: nothing
            result = spec.forward(numpy, Y, alpha, Y)
            if result is not Y:
                Y[...] = result
        return Y, ConvContext(self.name, X.shape, dtype, (sh, sw), (ph, pw), b is not None, X=X)

    def conv2d_backward(self, dY, Y, ctx, W, activation="identity", alpha=0.0, need_dX=True):
        """``(dX, dW, db)`` of ``conv2d_forward``, chunk after chunk of samples: a
        fused prologue (dZ = dY * f'(Y) into the product's layout, and db), the
        chunk's columns again, the products for dW and the chunk's column
        gradient, and col2im."""
        if not (isinstance(ctx, ConvContext) and ctx.belongs_to(self)):
            return super().conv2d_backward(dY, Y, ctx, W, activation, alpha, need_dX)
        spec = activations.get_activation(activation)
        X, dtype = ctx.X, ctx.dtype
        n, c, h, w = ctx.shape
        (sh, sw), (ph, pw) = ctx.stride, ctx.padding
        o, _, kh, kw = W.shape if getattr(W, "ndim", 0) == 4 else (0, 0, 0, 0)
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if W.shape[1:2] != (c,) or ho < 1 or wo < 1:
            raise ValueError(f"conv2d_backward: W {tuple(W.shape)} does not fit the forward "
                             f"of this context (input {ctx.shape})")
        check_like_forward("dY", dY, (n, o, ho, wo), dtype)
        passes = spec.passes_gradient
        if not passes:
            check_like_forward("Y", Y, dY.shape, dtype)
        k, p = c * kh * kw, ho * wo
        code = self._activation_code(spec)
        dY3 = numpy.ascontiguousarray(dY).reshape(n, o, p)
        Y3 = dY3 if passes else numpy.ascontiguousarray(Y).reshape(n, o, p)
        db64 = numpy.zeros(o) if ctx.has_bias else self._none(numpy.dtype(numpy.float64))
        WmT = numpy.ascontiguousarray(W, dtype=dtype).reshape(o, k).T
        chunk = self._conv_chunk(n, k, p, dtype.itemsize)
        cols = numpy.empty((k, chunk * p), dtype)
        dZ = numpy.empty((o, chunk * p), dtype)
        dcols = numpy.empty((k, chunk * p), dtype) if need_dX else None
        dW = numpy.empty((o, k), dtype)
        part = numpy.empty((o, k), dtype) if chunk < n else None
        dX = numpy.empty(ctx.shape, dtype) if need_dX else None
        for n0 in range(0, n, chunk):
            s = min(chunk, n - n0)
            dz = dZ if s == chunk else numpy.empty((o, s * p), dtype)
            self._run("conv_act_backward", dtype, dY3, Y3, code, float(alpha), passes, n0, dz,
                      db64)
            self._run("im2col", dtype, X, kh, kw, sh, sw, ph, pw, ho, wo, n0, s, cols, 0)
            if n0 == 0:
                numpy.matmul(dz, cols[:, :s * p].T, out=dW)
            else:
                numpy.matmul(dz, cols[:, :s * p].T, out=part)
                dW += part
            if need_dX:
                dc = dcols if s == chunk else numpy.empty((k, s * p), dtype)
                numpy.matmul(WmT, dz, out=dc)
                self._run("col2im", dtype, dc, kh, kw, sh, sw, ph, pw, ho, wo, n0, s, dX)
        return dX, dW.reshape(W.shape), (db64.astype(dtype) if ctx.has_bias else None)

    def maxpool2d_forward(self, X, pool, stride):
        """Max pooling in one pass, keeping each window's argmax (uint8 when the
        window has at most 256 elements, else int32) for the backward."""
        geometry = pool_geometry(X, pool, stride)
        if not (geometry and _floats(X)):
            return super().maxpool2d_forward(X, pool, stride)
        (kh, kw), (sh, sw), (ho, wo) = geometry
        X = numpy.ascontiguousarray(X)
        Y = numpy.empty(X.shape[:2] + (ho, wo), X.dtype)
        idx = numpy.empty(Y.shape, numpy.uint8 if kh * kw <= 256 else numpy.int32)
        self._run("maxpool_forward", X.dtype, X, kh, kw, sh, sw, Y, idx)
        return Y, PoolContext(self.name, X.shape, (kh, kw), (sh, sw), idx)

    def maxpool2d_backward(self, dY, ctx):
        """dX: each window's gradient scattered to its recorded maximum."""
        if not (isinstance(ctx, PoolContext) and ctx.belongs_to(self, max_pool=True)):
            return super().maxpool2d_backward(dY, ctx)
        check_like_forward("dY", dY, ctx.idx.shape, None)
        dY = numpy.ascontiguousarray(dY)
        dX = numpy.empty(ctx.shape, dY.dtype)
        self._run("maxpool_backward", dY.dtype, dY, ctx.idx, *ctx.pool, *ctx.stride, dX)
        return dX

    def avgpool2d_forward(self, X, pool, stride):
        """Average pooling in one pass."""
        geometry = pool_geometry(X, pool, stride)
        if not (geometry and _floats(X)):
            return super().avgpool2d_forward(X, pool, stride)
        (kh, kw), (sh, sw), (ho, wo) = geometry
        X = numpy.ascontiguousarray(X)
        Y = numpy.empty(X.shape[:2] + (ho, wo), X.dtype)
        self._run("avgpool_forward", X.dtype, X, kh, kw, sh, sw, Y)
        return Y, PoolContext(self.name, X.shape, (kh, kw), (sh, sw), None)

    def avgpool2d_backward(self, dY, ctx):
        if not (isinstance(ctx, PoolContext) and ctx.belongs_to(self, max_pool=False)):
            return super().avgpool2d_backward(dY, ctx)
        n, c, h, w = ctx.shape
        (kh, kw), (sh, sw) = ctx.pool, ctx.stride
        check_like_forward("dY", dY, (n, c, (h - kh) // sh + 1, (w - kw) // sw + 1), None)
        dY = numpy.ascontiguousarray(dY)
        dX = numpy.empty(ctx.shape, dY.dtype)
        self._run("avgpool_backward", dY.dtype, dY, kh, kw, sh, sw, dX)
        return dX

    def batchnorm2d_forward(self, X, gamma, beta, eps):
        """Batch norm per channel of (N, C, H, W): the statistics in one pass, then
        xhat and Y in one more. Returns ``(Y, xhat, mean, var, inv_std)``."""
        if not (getattr(X, "ndim", 0) == 4 and _floats(X, gamma, beta) and X.size
                and gamma.shape == beta.shape == (X.shape[1],)):
            return super().batchnorm2d_forward(X, gamma, beta, eps)
        n, c, h, w = X.shape
        X3 = numpy.ascontiguousarray(X).reshape(n, c, h * w)
        Y, xhat = numpy.empty(X.shape, X.dtype), numpy.empty(X.shape, X.dtype)
        mean, var, inv_std = (numpy.empty(c, X.dtype) for _ in range(3))
        self._run("batchnorm2d_forward", X.dtype, X3, numpy.ascontiguousarray(gamma),
                  numpy.ascontiguousarray(beta), float(eps), Y.reshape(X3.shape),
                  xhat.reshape(X3.shape), mean, var, inv_std)
        return Y, xhat, mean, var, inv_std

    def batchnorm2d_backward(self, dY, xhat, gamma, inv_std):
        """``(dX, dgamma, dbeta)``: the two channel sums in one pass, dX in one more."""
        if not (getattr(dY, "ndim", 0) == 4 and _floats(dY, xhat, gamma, inv_std)
                and dY.size and xhat.shape == dY.shape
                and gamma.shape == inv_std.shape == (dY.shape[1],)):
            return super().batchnorm2d_backward(dY, xhat, gamma, inv_std)
        n, c, h, w = dY.shape
        dY3 = numpy.ascontiguousarray(dY).reshape(n, c, h * w)
        dX = numpy.empty(dY.shape, dY.dtype)
        dgamma, dbeta = numpy.empty(c, dY.dtype), numpy.empty(c, dY.dtype)
        self._run("batchnorm2d_backward", dY.dtype, dY3,
                  numpy.ascontiguousarray(xhat).reshape(dY3.shape),
                  numpy.ascontiguousarray(gamma), numpy.ascontiguousarray(inv_std),
                  dX.reshape(dY3.shape), dgamma, dbeta)
        return dX, dgamma, dbeta

    # ------------------------------------------------------------ recurrent
    # The recurrence runs step by step: one BLAS product per step (h_{t-1} U
    # forward, dZ_{t+1} U^T backward, on strided (N, H) / (N, G) views of the
    # batch-major arrays, which BLAS takes without a copy) and one fused cell
    # kernel per step (see the layout note in _numba_kernels.py); dU is one
    # product over all the rows and steps after the loop.
    #
    # The rows of a batch never meet in the recurrence, so it runs on chunks of
    # rows in parallel threads, each with its own single-threaded products and
    # kernels and its own part of dU (``_run_row_chunks``): as many chunks as
    # BLAS would use threads, of at least RECURRENT_MIN_ROWS rows. A product
    # per step is too small for two BLAS threads to share well: on the 2-core
    # machine the reference LSTM's forward (128 rows x 28 steps x 128 units,
    # float32) took 6.0 ms serial with one BLAS thread, 5.8 ms (and often
    # 13) with two, and 3.3 ms as two chunks of 64 rows on two threads with
    # BLAS at one thread each; single-threaded, each (64, 128) @ (128, 512)
    # product runs at the core's peak (80 us, 105 GFLOP/s). The kernels stay
    # serial (no numba thread pool, see above): the threads are the caller's.
    # The step loop stays in Python: the same forward as one @njit loop calling
    # np.dot (which needs SciPy's BLAS) took 6.26 against 6.11 ms (one thread).

    def _blas_threads(self):
        """threadpoolctl's view of the loaded BLAS libraries, or None without it."""
        if self._blas is None:
            try:
                from threadpoolctl import ThreadpoolController
                self._blas = ThreadpoolController().select(user_api="blas")
            except Exception:               # not installed, or it cannot inspect
                self._blas = False
        return self._blas or None

    def _row_chunks(self, n):
        """[(lo, hi)]: the rows of a batch of n cut into one chunk per thread."""
        threads = self.recurrent_threads
        if threads is None:
            blas = self._blas_threads()
            threads = 1
            if blas is not None and blas.lib_controllers:
                threads = min(max(lib.num_threads for lib in blas.lib_controllers),
                              _usable_cores())
        k = max(1, min(int(threads), n // RECURRENT_MIN_ROWS))
        bounds = [n * i // k for i in range(k + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def _run_row_chunks(self, chunks, run):
        """``[run(lo, hi) for (lo, hi) in chunks]``, each chunk in its own thread (the
        first in this one) with BLAS limited to one thread while they run."""
        if len(chunks) == 1:
            return [run(*chunks[0])]
        pid = os.getpid()
        from concurrent.futures import ThreadPoolExecutor, wait
        if self._pool is None or self._pool[0] != pid or self._pool[1] < len(chunks) - 1:
            self._pool = (pid, len(chunks) - 1, ThreadPoolExecutor(
                len(chunks) - 1, thread_name_prefix="scratchnet-recurrence"))
        pool = self._pool[2]
        blas = self._blas_threads()
        limit = blas.limit(limits=1) if blas is not None else contextlib.nullcontext()
        with limit:
            futures = [pool.submit(run, lo, hi) for lo, hi in chunks[1:]]
            try:
                first = run(*chunks[0])
            finally:
                wait(futures)
            return [first] + [f.result() for f in futures]

    def _sequence_target(self, h_last, return_sequences):
        """(Hout, t_out of step t): the (N, T, H) output, or a stand-in with no writes."""
        n, H = h_last.shape
        if return_sequences:
            return lambda T: numpy.empty((n, T, H), h_last.dtype), lambda t: t
        return lambda T: h_last.reshape(n, 1, H), lambda t: -1

    def _output_grad(self, ctx, dH):
        """dH as the kernels read it, (N, T_out, H), and t_in of step t."""
        n, T, H = ctx.dims
        check_like_forward("dH", dH, ctx.output_shape(), ctx.dtype)
        dH = numpy.ascontiguousarray(dH)
        if ctx.return_sequences:
            return dH, lambda t: t
        return dH.reshape(n, 1, H), lambda t: 0 if t == T - 1 else -1

    @staticmethod
    def _check_recurrent_weight(name, U, ctx, width):
        n, T, H = ctx.dims
        if type(U) is not numpy.ndarray:
            raise TypeError(f"{name} must be a numpy array, got {type(U).__name__}")
        if U.dtype != ctx.dtype:
            raise TypeError(f"{name} must have dtype {ctx.dtype} (that of the forward), "
                            f"got {U.dtype}")
        if U.shape != (H, width):
            raise ValueError(f"{name} must have shape {(H, width)} (that of the forward), "
                             f"got {U.shape}")

    def _recurrent_start(self, XW, cell, return_sequences):
        """The arrays every cell's forward fills: Hprev (N, T, H) with Hprev[:, 0] = 0,
        h_last (N, H), the output Hout and t_out(t)."""
        n, T, G = XW.shape
        H = G // {"rnn": 1, "lstm": 4, "gru": 3}[cell]
        Hprev = numpy.empty((n, T, H), XW.dtype)
        Hprev[:, 0] = 0
        h_last = numpy.empty((n, H), XW.dtype)
        make_out, t_out = self._sequence_target(h_last, return_sequences)
        return Hprev, h_last, make_out(T), t_out

    @staticmethod
    def _chunk_weight_grad(Hprev, dZ):
        """A chunk's part of dU = sum over its rows and steps of h_{t-1}^T dZ_t: one
        product over the chunk's rows*T rows (h_{-1} = 0 rows add nothing)."""
        rows = Hprev.shape[0] * Hprev.shape[1]
        return numpy.matmul(Hprev.reshape(rows, Hprev.shape[2]).T,
                            dZ.reshape(rows, dZ.shape[2]))

    @staticmethod
    def _sum_parts(parts):
        total = parts[0]
        for part in parts[1:]:
            total += part
        return total

    @staticmethod
    def _norms(sumsq, dtype):
        """||dL/dh_t|| per step from the chunks' (T,) sums of squares."""
        return numpy.sqrt(numpy.sum(sumsq, axis=0)).astype(dtype)

    def lstm_forward(self, XW, U, return_sequences):
        """LSTM over the sequence, PyTorch's equations (see the base class): a fused
        cell kernel per step between the recurrent products. Returns ``(H_out, ctx)``.

        XW (N, T, 4H), U (H, 4H), float32/float64 of one dtype; anything else
        goes to the base class. ctx keeps the gates after their non-linearities,
        c_t and tanh(c_t), time-major (T, N, .), and the previous hidden states
        (N, T, H) for the one dU product."""
        dims = recurrent_dims(XW, U, "lstm")
        if not (dims and _floats(XW, U)):
            return super().lstm_forward(XW, U, return_sequences)
        n, T, H = dims
        dtype = XW.dtype
        XW, U = numpy.ascontiguousarray(XW), numpy.ascontiguousarray(U)
        gates = numpy.empty((T, n, 4 * H), dtype)
        C, tanh_C = numpy.empty((T, n, H), dtype), numpy.empty((T, n, H), dtype)
        Hprev, h_last, Hout, t_out = self._recurrent_start(XW, "lstm", return_sequences)

        def run(lo, hi):
            x, hp, hl, ho = XW[lo:hi], Hprev[lo:hi], h_last[lo:hi], Hout[lo:hi]
            Z = numpy.zeros((hi - lo, 4 * H), dtype)
            zeros = numpy.zeros((hi - lo, H), dtype)
            for t in range(T):
                if t:
                    numpy.matmul(hp[:, t], U, out=Z)
                self._run("lstm_cell_forward", dtype, x, t, Z,
                          C[t - 1, lo:hi] if t else zeros, gates[t, lo:hi], C[t, lo:hi],
                          tanh_C[t, lo:hi], hp, hl, ho, t_out(t))

        self._run_row_chunks(self._row_chunks(n), run)
        ctx = RecurrentContext(self.name, "lstm", dims, dtype, return_sequences,
                               {"gates": gates, "C": C, "tanh_C": tanh_C, "Hprev": Hprev})
        return (Hout if return_sequences else h_last), ctx

    def lstm_backward(self, dH, ctx, U):
        """``(dXW, dU, dh_norms)`` of ``lstm_forward``: backpropagation through time,
        a fused cell kernel per step (dL/dh_t, dL/dc_t carried, the four gate
        derivatives) after the product dZ_{t+1} U^T; dU as one product."""
        if not (isinstance(ctx, RecurrentContext) and ctx.belongs_to(self, "lstm")):
            return super().lstm_backward(dH, ctx, U)
        n, T, H = ctx.dims
        dtype, a = ctx.dtype, ctx.arrays
        self._check_recurrent_weight("U", U, ctx, 4 * H)
        dH3, t_in = self._output_grad(ctx, dH)
        UT = U.T
        dXW = numpy.empty((n, T, 4 * H), dtype)
        gates, C, tanh_C = a["gates"], a["C"], a["tanh_C"]

        def run(lo, hi):
            dh, dc = numpy.zeros((hi - lo, H), dtype), numpy.zeros((hi - lo, H), dtype)
            zeros = numpy.zeros((hi - lo, H), dtype)
            sumsq = numpy.empty(T)
            g, d = dH3[lo:hi], dXW[lo:hi]
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    numpy.matmul(d[:, t + 1], UT, out=dh)
                self._run("lstm_cell_backward", dtype, g, t_in(t), dh, dc, gates[t, lo:hi],
                          C[t - 1, lo:hi] if t else zeros, tanh_C[t, lo:hi], d, t, sumsq)
            return sumsq, self._chunk_weight_grad(a["Hprev"][lo:hi], d)

        sumsq, dU = zip(*self._run_row_chunks(self._row_chunks(n), run))
        return dXW, self._sum_parts(dU), self._norms(sumsq, dtype)

    def gru_forward(self, XW, U, bU, return_sequences):
        """GRU over the sequence, PyTorch's equations (see the base class), a fused
        cell kernel per step. XW (N, T, 3H) (with the input bias), U (H, 3H),
        bU (3H,), one float dtype; anything else goes to the base class."""
        dims = recurrent_dims(XW, U, "gru", bU)
        if not (dims and _floats(XW, U, bU)):
            return super().gru_forward(XW, U, bU, return_sequences)
        n, T, H = dims
        dtype = XW.dtype
        XW, U, bU = (numpy.ascontiguousarray(x) for x in (XW, U, bU))
        gates = numpy.empty((T, n, 3 * H), dtype)
        hUn = numpy.empty((T, n, H), dtype)
        Hprev, h_last, Hout, t_out = self._recurrent_start(XW, "gru", return_sequences)

        def run(lo, hi):
            x, hp, hl, ho = XW[lo:hi], Hprev[lo:hi], h_last[lo:hi], Hout[lo:hi]
            Z = numpy.zeros((hi - lo, 3 * H), dtype)
            for t in range(T):
                if t:
                    numpy.matmul(hp[:, t], U, out=Z)
                self._run("gru_cell_forward", dtype, x, t, Z, bU, gates[t, lo:hi],
                          hUn[t, lo:hi], hp, hl, ho, t_out(t))

        self._run_row_chunks(self._row_chunks(n), run)
        ctx = RecurrentContext(self.name, "gru", dims, dtype, return_sequences,
                               {"gates": gates, "hUn": hUn, "Hprev": Hprev})
        return (Hout if return_sequences else h_last), ctx

    def gru_backward(self, dH, ctx, U):
        """``(dXW, dU, dbU, dh_norms)`` of ``gru_forward``."""
        if not (isinstance(ctx, RecurrentContext) and ctx.belongs_to(self, "gru")):
            return super().gru_backward(dH, ctx, U)
        n, T, H = ctx.dims
        dtype, a = ctx.dtype, ctx.arrays
        self._check_recurrent_weight("U", U, ctx, 3 * H)
        dH3, t_in = self._output_grad(ctx, dH)
        UT = U.T
        dXW = numpy.empty((n, T, 3 * H), dtype)
        dHU = numpy.empty((n, T, 3 * H), dtype)        # dL/d(h_{t-1} U + bU)
        gates, hUn, Hprev = a["gates"], a["hUn"], a["Hprev"]

        def run(lo, hi):
            dh, carry = numpy.zeros((hi - lo, H), dtype), numpy.zeros((hi - lo, H), dtype)
            db = numpy.zeros(3 * H)
            sumsq = numpy.empty(T)
            g, hp, dx, du = dH3[lo:hi], Hprev[lo:hi], dXW[lo:hi], dHU[lo:hi]
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    numpy.matmul(du[:, t + 1], UT, out=dh)
                self._run("gru_cell_backward", dtype, g, t_in(t), dh, carry, gates[t, lo:hi],
                          hUn[t, lo:hi], hp, dx, du, db, t, sumsq)
            return sumsq, db, self._chunk_weight_grad(hp, du)

        sumsq, db, dU = zip(*self._run_row_chunks(self._row_chunks(n), run))
        return (dXW, self._sum_parts(dU), numpy.sum(db, axis=0).astype(dtype),
                self._norms(sumsq, dtype))

    def rnn_forward(self, XW, U, activation, return_sequences):
        """Elman RNN over the sequence, h_t = f(XW_t + h_{t-1} U), a fused cell
        kernel per step for f = tanh or relu; any other activation, dtype or
        shape goes to the base class."""
        spec = activations.get_activation(activation)  # unknown names raise, as in the base
        dims = recurrent_dims(XW, U, "rnn")
        act = _RNN_ACTIVATIONS.get(spec.name)
        if not (dims and act is not None and _floats(XW, U)):
            return super().rnn_forward(XW, U, activation, return_sequences)
        n, T, H = dims
        dtype = XW.dtype
        XW, U = numpy.ascontiguousarray(XW), numpy.ascontiguousarray(U)
        Hprev, h_last, Hout, t_out = self._recurrent_start(XW, "rnn", return_sequences)

        def run(lo, hi):
            x, hp, hl, ho = XW[lo:hi], Hprev[lo:hi], h_last[lo:hi], Hout[lo:hi]
            Z = numpy.zeros((hi - lo, H), dtype)
            for t in range(T):
                if t:
                    numpy.matmul(hp[:, t], U, out=Z)
                self._run("rnn_cell_forward", dtype, x, t, Z, act, hp, hl, ho, t_out(t))

        self._run_row_chunks(self._row_chunks(n), run)
        ctx = RecurrentContext(self.name, "rnn", dims, dtype, return_sequences,
                               {"Hprev": Hprev, "h_last": h_last}, activation=act)
        # h_last stays in ctx (the backward reads h_T from it): hand out a copy
        return (Hout if return_sequences else h_last.copy()), ctx

    def rnn_backward(self, dH, ctx, U):
        """``(dXW, dU, dh_norms)`` of ``rnn_forward``."""
        if not (isinstance(ctx, RecurrentContext) and ctx.belongs_to(self, "rnn")):
            return super().rnn_backward(dH, ctx, U)
        n, T, H = ctx.dims
        dtype, a = ctx.dtype, ctx.arrays
        self._check_recurrent_weight("U", U, ctx, H)
        dH3, t_in = self._output_grad(ctx, dH)
        UT = U.T
        dXW = numpy.empty((n, T, H), dtype)
        Hprev, h_last = a["Hprev"], a["h_last"]

        def run(lo, hi):
            dh = numpy.zeros((hi - lo, H), dtype)
            sumsq = numpy.empty(T)
            g, hp, hl, d = dH3[lo:hi], Hprev[lo:hi], h_last[lo:hi], dXW[lo:hi]
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    numpy.matmul(d[:, t + 1], UT, out=dh)
                self._run("rnn_cell_backward", dtype, g, t_in(t), dh, ctx.activation, hp, hl,
                          d, t, sumsq)
            return sumsq, self._chunk_weight_grad(hp, d)

        sumsq, dU = zip(*self._run_row_chunks(self._row_chunks(n), run))
        return dXW, self._sum_parts(dU), self._norms(sumsq, dtype)

    # ------------------------------------------------------------ reporting
    def warmup(self, dtype="float32"):
        """Compile (or load from the cache) every kernel for ``dtype``; returns seconds.

        Runs each fused method once on tiny arrays, so it compiles exactly the
        signatures that training uses; per-kernel times land in ``compile_times``.
        """
        dtype = numpy.dtype(dtype)
        start = time.perf_counter()
        rng = numpy.random.default_rng(0)
        Z = rng.standard_normal((3, 5)).astype(dtype)
        b = numpy.zeros(5, dtype)
        labels = numpy.array([0, 4, 2])
        self.take_rows(Z, numpy.array([2, 0]))
        Y = self.bias_act(Z.copy(), b, "relu")
        self.act_backward_bias(Z, Y, "relu")
        self.act_backward_bias(Z, Y, "identity")
        self.softmax_cross_entropy(Z, labels)
        self.count_correct(Z, labels)
        self.sigmoid_bce(Z, (Z > 0).astype(dtype))
        self.sgd_update(Z.copy(), Z, numpy.zeros_like(Z), 0.1, momentum=0.9)
        self.adam_update(Z.copy(), Z, numpy.zeros_like(Z), numpy.zeros_like(Z), 1, 0.1)
        self.adamw_update(Z.copy(), Z, numpy.zeros_like(Z), numpy.zeros_like(Z), 1, 0.1)
        # One rmsprop kernel per (momentum, centered) combination.
        for momentum, centered in ((0.0, False), (0.9, False), (0.0, True), (0.9, True)):
            self.rmsprop_update(Z.copy(), Z, numpy.zeros_like(Z), 0.1, momentum=momentum,
                                buf=numpy.zeros_like(Z), centered=centered,
                                grad_avg=numpy.zeros_like(Z))
        self.adagrad_update(Z.copy(), Z, numpy.zeros_like(Z), 1, 0.1)
        self.dropout(Z, 0.5, rng)
        img = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
        W = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
        Y, ctx = self.conv2d_forward(img, W, b[:3].copy(), (1, 1), (1, 1), "relu")
        self.conv2d_backward(Y, Y, ctx, W, "relu")
        Y, ctx = self.maxpool2d_forward(img, (2, 2), (2, 2))
        self.maxpool2d_backward(Y, ctx)
        Y, ctx = self.avgpool2d_forward(img, (2, 2), (2, 2))
        self.avgpool2d_backward(Y, ctx)
        Y, xhat, _, _, inv_std = self.batchnorm2d_forward(img, b[:2].copy() + 1, b[:2].copy(),
                                                          1e-5)
        self.batchnorm2d_backward(Y, xhat, b[:2].copy() + 1, inv_std)
        seq = rng.standard_normal((2, 3, 4)).astype(dtype)
        U = rng.standard_normal((1, 4)).astype(dtype)
        H, ctx = self.lstm_forward(seq, U, True)
        self.lstm_backward(H, ctx, U)
        H, ctx = self.gru_forward(seq[..., :3], U[:, :3], b[:3].copy(), False)
        self.gru_backward(H, ctx, U[:, :3])
        H, ctx = self.rnn_forward(seq[..., :1], U[:, :1], "tanh", True)
        self.rnn_backward(H, ctx, U[:, :1])
        return time.perf_counter() - start

    def describe(self):
        """One line for ``scratchnet info``: versions, threading, compile time so far."""
        import numba
        compiled = (f"{len(self.compile_times)} kernels compiled/loaded in "
                    f"{sum(self.compile_times.values()):.2f} s" if self.compile_times
                    else "no kernels compiled yet")
        cache = "on" if self._k().CACHE else "off (SCRATCHNET_NUMBA_CACHE=0)"
        return (f"{self.name}: numba {numba.__version__} on numpy {numpy.__version__}; "
                f"serial kernels (no numba thread pool: BLAS keeps the cores); "
                f"disk cache {cache}; {compiled}")
