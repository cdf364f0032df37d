"""The @njit kernels behind ``NumbaOps`` (imported only when that backend is used).

Every kernel takes C-contiguous float32 or float64 arrays (plus Python
scalars) and is compiled lazily, once per dtype, on its first call;
``NumbaOps`` does the checking, allocating and falling back, so the kernels
stay plain loops.

Two things shape the code:

* llvmlite here has no SVML, so ``math.exp``/``math.tanh`` in a loop become
  scalar libm calls (on 4096x1000 float32 a scalar ``exp`` loop took 7.9 ms
  against NumPy's 1.5 ms, ``tanh`` 58 ms against 0.8 ms). ``exp_nonpos`` below
  is plain arithmetic and a bit cast, which LLVM vectorises (0.9 ms, within
  1 ulp); sigmoid and softmax need exp only of non-positive numbers. NumPy's
  own float32 tanh stays faster than one built on it (1.1 against 2.8 ms), so
  tanh's entry in the activation table says ``numba_forward=False`` and
  ``NumbaOps`` leaves its forward to NumPy (see ``NumbaOps.bias_act``).
* loops over short rows (10 classes) vectorise badly, so the row-wise kernels
  work on blocks of whole rows: a C-contiguous block of rows is one flat 1-D
  loop, and it stays in L1 cache between the passes over it.

Threading: all kernels are serial (no ``parallel=True``). On the 2-core
machine OpenBLAS keeps its threads spinning after each matrix product, and a
numba thread pool fights them; see ``numba_ops.py`` for the measurements.

``fastmath`` is used in one place only: ``_row_sums`` (``reassoc``) so that
the softmax row sums vectorise; tests compare it with NumPy at 1e-12 (float64).

``SCRATCHNET_NUMBA_CACHE=0`` turns off numba's on-disk cache (on by default).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.core.caching import FunctionCache
from numba.extending import intrinsic, overload

from .. import activations as _table

CACHE = os.environ.get("SCRATCHNET_NUMBA_CACHE", "1").strip() != "0"

#: The kernels ``NumbaOps`` calls (``warmup`` compiles each of them).
KERNELS = ("take_rows", "bias_act", "act_backward", "column_sum", "softmax_cross_entropy",
           "count_correct", "sigmoid_bce", "sgd_update", "adam_update", "adamw_update", "rmsprop_update",
           "adagrad_update", "dropout", "im2col", "col2im", "conv_bias_act", "conv_act_backward",
           "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
           "batchnorm2d_forward", "batchnorm2d_backward", "lstm_cell_forward",
           "lstm_cell_backward", "gru_cell_forward", "gru_cell_backward", "rnn_cell_forward",
           "rnn_cell_backward")

#: Elements per block of rows (16 KiB of float32): the passes over a block
#: hit L1 cache, and a block of 10-class rows is still a long flat loop.
BLOCK = 4096

# error_model="numpy": float division by zero gives inf/nan instead of raising,
# which would put a branch in every loop and stop LLVM vectorising it.
jit = njit(nogil=True, cache=CACHE, error_model="numpy")


# --------------------------------------------------------------------- exp
@intrinsic
def _bits_to_float(typingctx, bits):
    """Reinterpret int32 bits as float32 and int64 bits as float64."""
    ftype = {types.int32: types.float32, types.int64: types.float64}.get(bits)
    if ftype is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(ftype))

    return ftype(bits), codegen


# exp(x) = 2**-k * exp(r), r = x + k*ln2 in [-ln2/2, ln2/2]; expm1(r) by its
# Taylor series (degree 7 for float32, 13 for float64: measured within 2 ulp
# over the whole range). ln2 is split in two (Cody-Waite) so that k*LN2_HI is
# exact. Below X_MIN the result would be subnormal: it is 0.
_F32_X_MIN = np.float32(-87.0)
_F32_LN2_HI = np.float32(0.693359375)
_F32_LN2_LO = np.float32(-2.12194440e-4)
_F32_INV_LN2 = np.float32(1.4426950408889634)
_F32_HALF = np.float32(0.5)
_F32_ZERO = np.float32(0.0)
_F32_TAYLOR = [np.float32(1.0 / math.factorial(n)) for n in range(2, 8)]
_F32_C2, _F32_C3, _F32_C4, _F32_C5, _F32_C6, _F32_C7 = _F32_TAYLOR

_F64_X_MIN = -708.0
_F64_LN2_HI = 6.93147180369123816490e-01
_F64_LN2_LO = 1.90821492927058770002e-10
_F64_INV_LN2 = 1.4426950408889634


@jit
def _exp_parts_f32(x):
    """(s, p) with exp(x) = s + s*p, for float32 x <= 0; (0, 0) below X_MIN."""
    xc = x if x >= _F32_X_MIN else _F32_X_MIN  # also maps NaN: keeps k finite
    k = np.int32(xc * -_F32_INV_LN2 + _F32_HALF)  # round(-x/ln2); trunc is round for >= 0
    kf = np.float32(k)
    r = x + kf * _F32_LN2_HI + kf * _F32_LN2_LO  # from x, so that NaN propagates
    p = r * _F32_C7  # r/7!, then Horner down to r/1!
    p = r * (p + _F32_C6)
    p = r * (p + _F32_C5)
    p = r * (p + _F32_C4)
    p = r * (p + _F32_C3)
    p = r * (p + _F32_C2)
    p = r * (p + np.float32(1.0))  # expm1(r)
    s = _bits_to_float(np.int32(np.int32(127 - k) << 23))  # 2**-k
    small = x < _F32_X_MIN
    return (_F32_ZERO if small else s), (_F32_ZERO if small else p)


@jit
def _exp_parts_f64(x):
    """(s, p) with exp(x) = s + s*p, for float64 x <= 0; (0, 0) below X_MIN."""
    xc = x if x >= _F64_X_MIN else _F64_X_MIN
    k = np.int64(xc * -_F64_INV_LN2 + 0.5)
    kf = np.float64(k)
    r = x + kf * _F64_LN2_HI + kf * _F64_LN2_LO
    p = r * (1.0 / 6227020800.0)  # r/13!, then Horner down to r/1!
    p = r * (p + 1.0 / 479001600.0)
    p = r * (p + 1.0 / 39916800.0)
    p = r * (p + 1.0 / 3628800.0)
    p = r * (p + 1.0 / 362880.0)
    p = r * (p + 1.0 / 40320.0)
    p = r * (p + 1.0 / 5040.0)
    p = r * (p + 1.0 / 720.0)
    p = r * (p + 1.0 / 120.0)
    p = r * (p + 1.0 / 24.0)
    p = r * (p + 1.0 / 6.0)
    p = r * (p + 0.5)
    p = r * (p + 1.0)
    s = _bits_to_float(np.int64(1023 - k) << 52)
    small = x < _F64_X_MIN
    return (0.0 if small else s), (0.0 if small else p)


def _exp_parts(x):
    """Pure-Python stand-in; inside kernels the overload below picks the dtype."""
    raise NotImplementedError("only callable from numba kernels")


@overload(_exp_parts)
def _exp_parts_overload(x):
    parts = {types.float32: _exp_parts_f32, types.float64: _exp_parts_f64}.get(x)
    if parts is not None:
        return lambda x: parts(x)
    return None


@jit
def exp_nonpos(x):
    """exp(x) for x <= 0, in the dtype of x; vectorisable."""
    s, p = _exp_parts(x)
    return s + s * p


# -------------------------------------------------------------- activation
# The activations come from the table in scratchnet/activations.py. Each
# entry's scalar formulas are compiled with njit, and the per-code dispatch
# (``_activate``, ``_derivative``: one branch per code, one flat loop per
# branch calling the formula) is generated from the table, so a new entry
# needs no code here. The formulas are small and LLVM inlines them into the
# loops, which still vectorise (relu, leaky_relu, sigmoid: timed the same as
# hand-written loops).
#
# ``refresh_activations()`` builds ``bias_act`` and ``act_backward`` (and the
# convolution's ``conv_bias_act`` and ``conv_act_backward``, below) for the
# table as it is, at import and again whenever the table changes (NumbaOps
# calls it). numba's disk cache checks only the stamp of the file a kernel is
# defined in (this one), not of activations.py, so the cache of these is
# keyed also by a fingerprint of the table; kernels built from a table with
# entries added at run time are not cached on disk.

@overload(_table.exp_nonpos)
def _table_exp_nonpos(x):
    """The scalar formulas' ``exp_nonpos``, inside kernels: the vectorisable one."""
    if x in (types.float32, types.float64):
        return lambda x: exp_nonpos(x)
    return None


def _dispatch_source(specs):
    """Python source of ``_activate`` and ``_derivative`` for the entries ``specs``.

    ``_activate(a, code, alpha)`` applies f in place to 1-D ``a`` (entries
    with ``numba_forward`` only; any other code leaves ``a``);
    ``_derivative(dy, y, code, alpha, dz)`` writes dz = dy * f'(y) on 1-D
    arrays (entries whose derivative is not 1). ``forward_<code>`` and
    ``derivative_<code>`` are the compiled scalar formulas.
    """
    lines = ["def _activate(a, code, alpha):",
             "    alpha = a.dtype.type(alpha)"]
    branch = "if"
    for spec in specs:
        if spec.numba_forward:
            lines += [f"    {branch} code == {spec.code}:  # {spec.name}",
                      "        for k in range(a.shape[0]):",
                      f"            a[k] = forward_{spec.code}(a[k], alpha)"]
            branch = "elif"
    lines += ["", "", "def _derivative(dy, y, code, alpha, dz):",
              "    alpha = y.dtype.type(alpha)"]
    branch = "if"
    for spec in specs:
        if not spec.passes_gradient:
            lines += [f"    {branch} code == {spec.code}:  # {spec.name}",
                      "        for k in range(dz.shape[0]):",
                      f"            dz[k] = dy[k] * derivative_{spec.code}(y[k], alpha)"]
            branch = "elif"
    return "\n".join(lines) + "\n"


def _bias_act(Z, b, code, alpha, out):
    """out = f(Z + b). Z, out: (N, M), may be the same array; b: (M,) or (0,) for none.

    code: an activation code whose entry has ``numba_forward`` (any other code
    leaves Z + b); alpha: the LeakyReLU slope (a float, used in Z's dtype).
    """
    n, m = Z.shape
    rows = max(1, BLOCK // max(m, 1))
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        if b.shape[0]:
            for i in range(i0, i1):
                for j in range(m):
                    out[i, j] = Z[i, j] + b[j]
        else:
            for i in range(i0, i1):
                for j in range(m):
                    out[i, j] = Z[i, j]
        _activate(out[i0:i1].reshape(-1), code, alpha)


def _act_backward(dY, Y, code, alpha, out, db):
    """out = dY * f'(Y) and, when db has M entries, db = out summed over rows.

    dY, Y, out: (N, M) (out may be dY or Y); db: (M,) or (0,) for no bias
    gradient; code is that of an activation whose derivative is not 1 (for
    identity, see ``column_sum``).
    """
    n, m = dY.shape
    rows = max(1, BLOCK // max(m, 1))
    with_db = db.shape[0] > 0
    if with_db:
        db[:] = 0
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        _derivative(dY[i0:i1].reshape(-1), Y[i0:i1].reshape(-1), code, alpha,
                    out[i0:i1].reshape(-1))
        if with_db:
            _add_rows(out, i0, i1, db)


class _TableKeyedCache(FunctionCache):
    """numba's disk cache for a kernel, with the table's fingerprint in every key."""

    def __init__(self, py_func, fingerprint):
        self._fingerprint = fingerprint
        super().__init__(py_func)

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), self._fingerprint)


def _table_fingerprint(specs, source):
    """A hash of what the activation kernels are built from, or None when that
    cannot be known (entries registered at run time may call anything)."""
    if specs != _table.builtin():
        return None
    digest = hashlib.sha256(source.encode())
    digest.update(Path(_table.__file__).read_bytes())  # the formulas and their helpers
    return digest.hexdigest()


#: The table version that ``bias_act`` and ``act_backward`` were built from.
built_version = None


def refresh_activations():
    """(Re)build the kernels that apply the table's formulas (``bias_act``,
    ``act_backward``, ``conv_bias_act``, ``conv_act_backward``) if the
    activation table has changed since they were built; returns True when it
    rebuilt them."""
    global _activate, _derivative, bias_act, act_backward, built_version
    global conv_bias_act, conv_act_backward
    version = _table.version()
    if version == built_version:
        return False
    specs = _table.entries()
    source = _dispatch_source(specs)
    namespace = {}
    for spec in specs:
        if spec.numba_forward:
            namespace[f"forward_{spec.code}"] = njit(error_model="numpy")(spec.scalar_forward)
        if not spec.passes_gradient:
            namespace[f"derivative_{spec.code}"] = njit(error_model="numpy")(
                spec.scalar_derivative)
    exec(compile(source, "<activation dispatch generated from scratchnet.activations>",
                 "exec"), namespace)
    # The dispatchers are compiled only inside the two kernels, which carry the cache.
    _activate = njit(nogil=True, error_model="numpy")(namespace["_activate"])
    _derivative = njit(nogil=True, error_model="numpy")(namespace["_derivative"])
    fingerprint = _table_fingerprint(specs, source)
    # Fresh dispatchers: they compile against the _activate/_derivative above.
    bias_act = njit(nogil=True, error_model="numpy")(_bias_act)
    act_backward = njit(nogil=True, error_model="numpy")(_act_backward)
    conv_bias_act = njit(nogil=True, error_model="numpy")(_conv_bias_act)
    conv_act_backward = njit(nogil=True, error_model="numpy")(_conv_act_backward)
    if CACHE and fingerprint is not None:
        bias_act._cache = _TableKeyedCache(_bias_act, fingerprint)
        act_backward._cache = _TableKeyedCache(_act_backward, fingerprint)
        conv_bias_act._cache = _TableKeyedCache(_conv_bias_act, fingerprint)
        conv_act_backward._cache = _TableKeyedCache(_conv_act_backward, fingerprint)
    built_version = version
    return True


@jit
def _add_rows(X, i0, i1, acc):
    """acc += X[i0:i1].sum(axis=0), row after row as NumPy does (same rounding)."""
    for i in range(i0, i1):
        for j in range(X.shape[1]):
            acc[j] += X[i, j]


@jit
def column_sum(X, out):
    """out = X.sum(axis=0). X: (N, M); out: (M,)."""
    out[:] = 0
    _add_rows(X, 0, X.shape[0], out)


# ----------------------------------------------------------------- softmax
@jit
def _shift_rows(logits, labels, i0, i1, shifted):
    """shifted[i] = logits[i] - max(logits[i]) for rows i0:i1.

    Returns the sum over those rows of -shifted[i, labels[i]], the label term
    of the loss. Raises on a label outside [0, C): the kernels don't bounds-check.
    """
    c = logits.shape[1]
    total = 0.0
    for i in range(i0, i1):
        top = logits[i, 0]
        for j in range(1, c):
            v = logits[i, j]
            top = v if v > top else top  # NaN-blind, but a NaN still reaches the loss
        for j in range(c):
            shifted[i, j] = logits[i, j] - top
        label = labels[i]
        if label < 0 or label >= c:
            raise IndexError("softmax_cross_entropy: label out of range [0, C)")
        total -= shifted[i, label]
    return total


@njit(nogil=True, cache=CACHE, error_model="numpy", fastmath={"reassoc"})
def _row_sums(X, i0, i1, sums):
    """sums[i - i0] = X[i].sum() in float64; reassoc lets LLVM vectorise the sum."""
    for i in range(i0, i1):
        s = 0.0
        for j in range(X.shape[1]):
            s += X[i, j]
        sums[i - i0] = s


@jit
def softmax_cross_entropy(logits, labels, grad):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    logits, grad: (N, C) float; labels: (N,) intp in [0, C). Writes
    grad = (softmax(logits) - onehot(labels)) / N and returns the mean loss as
    a float64. One pass over the logits: each block of rows is shifted by its
    row max, exponentiated flat (vectorised), then normalised while in cache.
    """
    n, c = logits.shape
    rows = max(1, BLOCK // c)
    inv_n = 1.0 / n
    sums = np.empty(rows, np.float64)
    loss = 0.0
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        loss += _shift_rows(logits, labels, i0, i1, grad)
        block = grad[i0:i1].reshape(-1)
        for k in range(block.shape[0]):
            block[k] = exp_nonpos(block[k])
        _row_sums(grad, i0, i1, sums)
        for i in range(i0, i1):
            s = sums[i - i0]
            loss += math.log(s)
            scale = grad.dtype.type(inv_n / s)
            for j in range(c):
                grad[i, j] *= scale
            grad[i, labels[i]] -= grad.dtype.type(inv_n)
    return loss * inv_n


@jit
def count_correct(scores, labels):
    """Rows of scores (N, C) whose argmax equals labels (N,) intp.

    The first maximum wins and a NaN counts as the maximum, as in numpy.argmax.
    """
    n, c = scores.shape
    hits = 0
    for i in range(n):
        best = 0
        top = scores[i, 0]
        for j in range(1, c):
            v = scores[i, j]
            if v > top or (v != v and top == top):
                best = j
                top = v
        hits += best == labels[i]
    return hits


@jit
def sigmoid_bce(z, t, grad):
    """Sigmoid + binary cross-entropy on flat (P,) logits z and targets t.

    Writes grad = (sigmoid(z) - t) / P and returns the mean over the elements
    of max(z, 0) - z t + log1p(exp(-|z|)), summed in float64. exp is taken of
    -|z| only (exact for any z), and once: sigmoid and the log term share it.
    """
    n = z.shape[0]
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    inv_n = z.dtype.type(1.0 / n)
    total = 0.0
    for k in range(n):
        zk = z[k]
        tk = t[k]
        e = exp_nonpos(-abs(zk))
        grad[k] = ((one if zk >= zero else e) / (one + e) - tk) * inv_n
        total += (zk if zk > zero else zero) - zk * tk + math.log1p(e)
    return total / n


@jit
def take_rows(X, idx, out):
    """out[r] = X[idx[r]]. X: (N, F); idx: (B,) intp, negative counts from the end; out: (B, F)."""
    n = X.shape[0]
    for r in range(idx.shape[0]):
        i = idx[r]
        if i < 0:
            i += n
        if i < 0 or i >= n:
            raise IndexError("take_rows: row index out of range")
        for j in range(X.shape[1]):
            out[r, j] = X[i, j]


# -------------------------------------------------------------- optimizers
@jit
def sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    """One SGD step in place on flat (P,) arrays (the base class's operations, in order).

    Scalars arrive as floats and are used in param's dtype, as NumPy would
    (a Python float times a float32 array is float32). velocity is only
    touched when momentum != 0 (pass any (P,) array otherwise).
    """
    t = param.dtype.type
    lr, momentum, weight_decay = t(lr), t(momentum), t(weight_decay)
    for k in range(param.shape[0]):
        g = grad[k]
        if weight_decay != 0:
            g = g + weight_decay * param[k]
        if momentum != 0:
            v = momentum * velocity[k] + g
            velocity[k] = v
            g = g + momentum * v if nesterov else v
        param[k] -= lr * g


@jit
def adam_update(param, grad, m, v, step_size, beta1, beta2, one_minus_beta1,
                one_minus_beta2, sqrt_bias2, eps, weight_decay):
    """One bias-corrected Adam step in place on flat (P,) arrays.

    step_size = lr / (1 - beta1**t) and sqrt_bias2 = sqrt(1 - beta2**t); all
    scalars are used in param's dtype and the operations are the base class's,
    in order.
    """
    t = param.dtype.type
    step_size, beta1, beta2 = t(step_size), t(beta1), t(beta2)
    one_minus_beta1, one_minus_beta2 = t(one_minus_beta1), t(one_minus_beta2)
    sqrt_bias2, eps, weight_decay = t(sqrt_bias2), t(eps), t(weight_decay)
    for k in range(param.shape[0]):
        g = grad[k]
        if weight_decay != 0:
            g = g + weight_decay * param[k]
        mk = beta1 * m[k] + one_minus_beta1 * g
        vk = beta2 * v[k] + one_minus_beta2 * (g * g)
        m[k] = mk
        v[k] = vk
        param[k] -= step_size * (mk / (np.sqrt(vk) / sqrt_bias2 + eps))


@jit
def adamw_update(param, grad, m, v, decay, step_size, beta1, beta2, one_minus_beta1,
                 one_minus_beta2, sqrt_bias2, eps):
    """One AdamW step in place on flat (P,) arrays: param *= decay, then adam_update's
    step without weight decay. decay = 1 - lr * weight_decay (exactly 1 without it)."""
    t = param.dtype.type
    decay, step_size, beta1, beta2 = t(decay), t(step_size), t(beta1), t(beta2)
    one_minus_beta1, one_minus_beta2 = t(one_minus_beta1), t(one_minus_beta2)
    sqrt_bias2, eps = t(sqrt_bias2), t(eps)
    for k in range(param.shape[0]):
        g = grad[k]
        mk = beta1 * m[k] + one_minus_beta1 * g
        vk = beta2 * v[k] + one_minus_beta2 * (g * g)
        m[k] = mk
        v[k] = vk
        param[k] = param[k] * decay - step_size * (mk / (np.sqrt(vk) / sqrt_bias2 + eps))


@jit
def rmsprop_update(param, grad, square_avg, grad_avg, buf, lr, alpha, one_minus_alpha, eps,
                   weight_decay, momentum):
    """One RMSprop step in place on flat (P,) arrays (the base class's operations, in order).

    grad_avg is None unless centered, buf None unless momentum > 0. Numba
    compiles one version per combination and prunes the ``is None`` branches
    from each: with the branches left in the loop (boolean flags) the stores
    they guard stopped LLVM vectorising it (4096x1000 float32, plain RMSprop:
    8.3 ms against 1.2 ms).
    """
    t = param.dtype.type
    lr, alpha, one_minus_alpha, eps = t(lr), t(alpha), t(one_minus_alpha), t(eps)
    weight_decay, momentum = t(weight_decay), t(momentum)
    for k in range(param.shape[0]):
        g = grad[k]
        if weight_decay != 0:
            g = g + weight_decay * param[k]
        s = alpha * square_avg[k] + one_minus_alpha * (g * g)
        square_avg[k] = s
        if grad_avg is not None:
            a = alpha * grad_avg[k] + one_minus_alpha * g
            grad_avg[k] = a
            avg = np.sqrt(s - a * a) + eps
        else:
            avg = np.sqrt(s) + eps
        if buf is not None:
            b = momentum * buf[k] + g / avg
            buf[k] = b
            param[k] -= lr * b
        else:
            param[k] -= lr * (g / avg)


@jit
def adagrad_update(param, grad, state_sum, clr, eps, weight_decay):
    """One Adagrad step in place on flat (P,) arrays; clr is the decayed rate
    lr / (1 + (step - 1) * lr_decay). Scalars are used in param's dtype."""
    t = param.dtype.type
    clr, eps, weight_decay = t(clr), t(eps), t(weight_decay)
    for k in range(param.shape[0]):
        g = grad[k]
        if weight_decay != 0:
            g = g + weight_decay * param[k]
        s = state_sum[k] + g * g
        state_sum[k] = s
        param[k] -= clr * (g / (np.sqrt(s) + eps))


# ----------------------------------------------------------------- dropout
@jit
def dropout(X, uniform, p, scale, Y, mask):
    """mask = (uniform >= p) * scale; Y = X * mask. Flat (P,) arrays.

    uniform is float32, as the base class draws it, and p is compared in
    float32 as NumPy compares a Python float with a float32 array; scale is
    used in X's dtype. mask may be the uniform array itself.
    """
    zero = X.dtype.type(0)
    p = uniform.dtype.type(p)
    scale = X.dtype.type(scale)
    for k in range(X.shape[0]):
        keep = scale if uniform[k] >= p else zero
        mask[k] = keep
        Y[k] = X[k] * keep

# ----------------------------------------------------- convolution, pooling
# Images are NCHW, C-contiguous. A convolution is im2col, ONE matrix product
# (in NumbaOps, by BLAS) and a fused epilogue; its backward is a fused
# prologue, two products and col2im. The column matrix is laid out one ROW
# per kernel tap k = (c*kh + i)*kw + j (W's own order) and one column per
# output position (n, oh, ow) of a chunk of samples:
#
#     cols (C*kh*kw, S*Ho*Wo),  Z = W (O, C*kh*kw) @ cols  ->  (O, S*Ho*Wo)
#
# so that every pass around the products moves contiguous runs: im2col copies
# runs of Wo input pixels (stride 1) into a row of cols, the epilogue moves
# the run Z[o, n*P : (n+1)*P] (P = Ho*Wo) to Y[n, o] with the bias and the
# activation, the prologue moves dY[n, o] * f'(Y[n, o]) back into that run,
# and col2im adds runs of Wo back onto rows of dX. No padded copy of X is
# made: the padding is the zeros written where a tap falls outside X.

@jit
def _tap_range(Wo, sw, off, W):
    """[lo, hi): the output columns ow whose input column ow*sw + off lies in [0, W)."""
    lo = 0 if off >= 0 else (sw - 1 - off) // sw
    hi = (W - 1 - off) // sw + 1 if W - 1 - off >= 0 else 0
    lo = min(lo, Wo)
    return lo, max(lo, min(hi, Wo))


@jit
def _fill(a, value):
    for q in range(a.shape[0]):
        a[q] = value


@jit
def _zero_columns(a, Wo, r0, r1, lo, hi):
    """a[r*Wo + q] = 0 for the rows r0 <= r < r1 and the columns q < lo or q >= hi."""
    zero = a.dtype.type(0)
    for r in range(r0, r1):
        for q in range(lo):
            a[r * Wo + q] = zero
        for q in range(hi, Wo):
            a[r * Wo + q] = zero


@jit
def im2col(X, kh, kw, sh, sw, ph, pw, Ho, Wo, n0, S, cols, m0):
    """cols[(c*kh + i)*kw + j, m0 + s*P + oh*Wo + ow] = X[n0 + s, c, oh*sh - ph + i, ow*sw - pw + j]
    for the S samples n0 .. n0+S-1, 0 where that falls outside X. X: (N, C, H, W);
    cols: (C*kh*kw, M), P = Ho*Wo.

    With stride 1 and Wo == W (a "same" convolution) a tap's rows are one
    run: input and output pixels are a constant distance apart, so the
    valid rows are copied as one loop and the few wrapped-around columns
    zeroed after. Otherwise each output row is its own run."""
    C, H, W = X.shape[1], X.shape[2], X.shape[3]
    x = X.reshape(-1)
    out = cols.reshape(-1)
    P = Ho * Wo
    M = cols.shape[1]
    HW = H * W
    zero = cols.dtype.type(0)
    one_run = sh == 1 and sw == 1 and Wo == W
    for c in range(C):
        for i in range(kh):
            rlo, rhi = _tap_range(Ho, sh, i - ph, H)
            for j in range(kw):
                off = j - pw
                lo, hi = _tap_range(Wo, sw, off, W)
                r1 = rhi if lo < hi else rlo
                row = out[((c * kh + i) * kw + j) * M + m0:((c * kh + i) * kw + j + 1) * M]
                for s in range(S):
                    dst = row[s * P:(s + 1) * P]
                    x0 = ((n0 + s) * C + c) * HW
                    _fill(dst[:rlo * Wo], zero)
                    _fill(dst[r1 * Wo:], zero)
                    if r1 <= rlo:
                        continue
                    # Loops index views from 0: numba then knows the index is not
                    # negative and LLVM vectorises the copy (an offset index costs 10x).
                    if one_run:
                        a = rlo * Wo + lo
                        n = (r1 - 1) * Wo + hi - a
                        d = dst[a:a + n]
                        src = x[x0 + a + (i - ph) * W + off:]
                        for q in range(n):
                            d[q] = src[q]
                        if lo > 0 or hi < Wo:
                            _zero_columns(dst, Wo, rlo, r1, lo, hi)
                    else:
                        for oh in range(rlo, r1):
                            _fill(dst[oh * Wo:oh * Wo + lo], zero)
                            _fill(dst[oh * Wo + hi:oh * Wo + Wo], zero)
                            d = dst[oh * Wo + lo:oh * Wo + hi]
                            src = x[x0 + (oh * sh - ph + i) * W + off + lo * sw:]
                            for q in range(hi - lo):
                                d[q] = src[q * sw]


@jit
def col2im(dcols, kh, kw, sh, sw, ph, pw, Ho, Wo, n0, S, dX):
    """The adjoint of ``im2col``: dX[n0 + s] = the sum, over the taps, of the
    entries of dcols (C*kh*kw, S*P) that im2col copied from each pixel.

    Per channel, the S planes of dX (in L2 cache) are zeroed, then each tap's
    row of dcols is read once, in order, and added in runs. For a "same"
    convolution with stride 1 a tap is one run (see ``im2col``): its entries
    that im2col took from the padding are first set to 0 IN dcols, so that
    the run adds exactly 0 at the wrapped-around columns. dcols is scratch."""
    C, H, W = dX.shape[1], dX.shape[2], dX.shape[3]
    dx = dX.reshape(-1)
    g = dcols.reshape(-1)
    P = Ho * Wo
    M = dcols.shape[1]
    HW = H * W
    zero = dX.dtype.type(0)
    one_run = sh == 1 and sw == 1 and Wo == W
    for c in range(C):
        for s in range(S):
            x0 = ((n0 + s) * C + c) * HW
            _fill(dx[x0:x0 + HW], zero)
        for i in range(kh):
            rlo, rhi = _tap_range(Ho, sh, i - ph, H)
            for j in range(kw):
                off = j - pw
                lo, hi = _tap_range(Wo, sw, off, W)
                if lo >= hi or rhi <= rlo:
                    continue
                row = g[((c * kh + i) * kw + j) * M:((c * kh + i) * kw + j + 1) * M]
                for s in range(S):
                    src = row[s * P:(s + 1) * P]
                    x0 = ((n0 + s) * C + c) * HW
                    if one_run:
                        if lo > 0 or hi < Wo:
                            _zero_columns(src, Wo, rlo, rhi, lo, hi)
                        a = rlo * Wo + lo
                        n = (rhi - 1) * Wo + hi - a
                        sr = src[a:a + n]
                        d = dx[x0 + a + (i - ph) * W + off:]
                        for q in range(n):
                            d[q] += sr[q]
                    else:
                        for oh in range(rlo, rhi):
                            sr = src[oh * Wo + lo:oh * Wo + hi]
                            d = dx[x0 + (oh * sh - ph + i) * W + off + lo * sw:]
                            for q in range(hi - lo):
                                d[q * sw] += sr[q]


@njit(nogil=True, cache=CACHE, error_model="numpy", fastmath={"reassoc"})
def _run_sum(a):
    """a.sum() of a 1-D run, in float64; reassoc lets LLVM vectorise it."""
    s = 0.0
    for k in range(a.shape[0]):
        s += a[k]
    return s


def _conv_bias_act(Z, b, code, alpha, n0, Y):
    """Y[n0 + s, o] = f(Z[o, s*P:(s+1)*P] + b[o]): the convolution's epilogue.

    Z: (O, S*P), the product for samples n0 .. n0+S-1; b: (O,) or (0,) for
    none; Y: (N, O, P). code: an activation whose entry has ``numba_forward``
    (any other code leaves Z + b). Each sample's (O, P) block of Y gets the
    activation as one flat pass while it is in cache."""
    O, P = Y.shape[1], Y.shape[2]
    S = Z.shape[1] // P
    for s in range(S):
        y = Y[n0 + s]
        for o in range(O):
            src = Z[o, s * P:(s + 1) * P]
            dst = y[o]
            if b.shape[0]:
                bo = b[o]
                for p in range(P):
                    dst[p] = src[p] + bo
            else:
                for p in range(P):
                    dst[p] = src[p]
        _activate(y.reshape(-1), code, alpha)


def _conv_act_backward(dY, Y, code, alpha, passes, n0, dZ, db):
    """dZ[o, s*P:(s+1)*P] = dY[n0 + s, o] * f'(Y[n0 + s, o]): the prologue of
    the convolution's backward, into the product layout; db[o] (float64, or
    (0,) for none) gets each run's sum added.

    dY, Y: (N, O, P); dZ: (O, S*P). passes: the activation's derivative is 1
    (dZ is a copy of dY and Y is not read)."""
    O, P = dY.shape[1], dY.shape[2]
    S = dZ.shape[1] // P
    with_db = db.shape[0] > 0
    for s in range(S):
        for o in range(O):
            dst = dZ[o, s * P:(s + 1) * P]
            if passes:
                src = dY[n0 + s, o]
                for p in range(P):
                    dst[p] = src[p]
            else:
                _derivative(dY[n0 + s, o], Y[n0 + s, o], code, alpha, dst)
            if with_db:
                db[o] += _run_sum(dst)


# Pooling works one (n, c) plane at a time. The 2x2 windows of stride 2 (the
# usual pooling) have their own loops with the constants written in: LLVM
# then vectorises them with interleaved loads, where the same loops with a
# run-time stride run scalar and several times slower. A window's "first
# maximum" test is a select, ``take = not (v <= best) and best == best``: a
# larger v, or a NaN where best is not one yet (numpy.argmax's rule), so
# that ties keep the earlier element.

@jit
def _maxpool_plane_2x2(x, y, ix):
    for oh in range(y.shape[0]):
        for ow in range(y.shape[1]):
            b = x[2 * oh, 2 * ow]
            p = 0
            v = x[2 * oh, 2 * ow + 1]
            t = (not v <= b) & (b == b)
            b = v if t else b
            p = 1 if t else p
            v = x[2 * oh + 1, 2 * ow]
            t = (not v <= b) & (b == b)
            b = v if t else b
            p = 2 if t else p
            v = x[2 * oh + 1, 2 * ow + 1]
            t = (not v <= b) & (b == b)
            b = v if t else b
            p = 3 if t else p
            y[oh, ow] = b
            ix[oh, ow] = p


@jit
def _maxpool_plane(x, kh, kw, sh, sw, y, ix):
    for oh in range(y.shape[0]):
        for ow in range(y.shape[1]):
            b = x[oh * sh, ow * sw]
            p = 0
            for i in range(kh):
                for j in range(kw):
                    v = x[oh * sh + i, ow * sw + j]
                    t = (not v <= b) & (b == b)
                    b = v if t else b
                    p = i * kw + j if t else p
            y[oh, ow] = b
            ix[oh, ow] = p


@jit
def maxpool_forward(X, kh, kw, sh, sw, Y, idx):
    """Y = the max of each (kh, kw) window of X moved by (sh, sw); idx = its
    position i*kw + j in the window: the first maximum in row-major order, a
    NaN counting as the maximum (as numpy.argmax). X: (N, C, H, W); Y, idx:
    (N, C, Ho, Wo) (idx uint8 or int32)."""
    square = kh == 2 and kw == 2 and sh == 2 and sw == 2
    for n in range(X.shape[0]):
        for c in range(X.shape[1]):
            if square:
                _maxpool_plane_2x2(X[n, c], Y[n, c], idx[n, c])
            else:
                _maxpool_plane(X[n, c], kh, kw, sh, sw, Y[n, c], idx[n, c])


@jit
def _maxpool_back_plane_2x2(g, ix, d):
    zero = d.dtype.type(0)
    for oh in range(g.shape[0]):
        for ow in range(g.shape[1]):
            k = ix[oh, ow]
            v = g[oh, ow]
            d[2 * oh, 2 * ow] = v if k == 0 else zero
            d[2 * oh, 2 * ow + 1] = v if k == 1 else zero
            d[2 * oh + 1, 2 * ow] = v if k == 2 else zero
            d[2 * oh + 1, 2 * ow + 1] = v if k == 3 else zero


@jit
def maxpool_backward(dY, idx, kh, kw, sh, sw, dX):
    """dX: each window's dY added at its recorded maximum, zero elsewhere.

    2x2 windows of stride 2 write every element of dX once (the row or
    column left over by an odd size is zeroed); any other pooling zeroes the
    plane and adds, window after window in row-major order."""
    H, W = dX.shape[2], dX.shape[3]
    Ho, Wo = dY.shape[2], dY.shape[3]
    zero = dX.dtype.type(0)
    square = kh == 2 and kw == 2 and sh == 2 and sw == 2
    for n in range(dX.shape[0]):
        for c in range(dX.shape[1]):
            d = dX[n, c]
            g = dY[n, c]
            ix = idx[n, c]
            if square:
                _maxpool_back_plane_2x2(g, ix, d)
                for iw in range(W):
                    for ih in range(2 * Ho, H):
                        d[ih, iw] = zero
                for ih in range(2 * Ho):
                    for iw in range(2 * Wo, W):
                        d[ih, iw] = zero
                continue
            for ih in range(H):
                for iw in range(W):
                    d[ih, iw] = zero
            for oh in range(Ho):
                for ow in range(Wo):
                    k = ix[oh, ow]
                    i = k // kw
                    d[oh * sh + i, ow * sw + k - i * kw] += g[oh, ow]


@jit
def avgpool_forward(X, kh, kw, sh, sw, Y):
    """Y = the mean of each (kh, kw) window of X moved by (sh, sw): the
    window's sum in row-major order, times 1/(kh*kw)."""
    scale = X.dtype.type(1.0 / (kh * kw))
    for n in range(X.shape[0]):
        for c in range(X.shape[1]):
            x = X[n, c]
            y = Y[n, c]
            for oh in range(y.shape[0]):
                for ow in range(y.shape[1]):
                    acc = X.dtype.type(0)
                    for i in range(kh):
                        for j in range(kw):
                            acc += x[oh * sh + i, ow * sw + j]
                    y[oh, ow] = acc * scale


@jit
def avgpool_backward(dY, kh, kw, sh, sw, dX):
    """dX: every element of a window gets dY/(kh*kw) of it, summed over the
    windows that hold it (zeroed plane, then window after window)."""
    zero = dX.dtype.type(0)
    scale = dX.dtype.type(1.0 / (kh * kw))
    for n in range(dX.shape[0]):
        for c in range(dX.shape[1]):
            d = dX[n, c]
            g = dY[n, c]
            for ih in range(d.shape[0]):
                for iw in range(d.shape[1]):
                    d[ih, iw] = zero
            for oh in range(g.shape[0]):
                for ow in range(g.shape[1]):
                    share = g[oh, ow] * scale
                    for i in range(kh):
                        for j in range(kw):
                            d[oh * sh + i, ow * sw + j] += share


@njit(nogil=True, cache=CACHE, error_model="numpy", fastmath={"reassoc"})
def _shifted_sums(a, shift):
    """(sum(a - shift), sum((a - shift)**2)) of a 1-D run, in float64."""
    s = 0.0
    q = 0.0
    for k in range(a.shape[0]):
        d = np.float64(a[k]) - shift
        s += d
        q += d * d
    return s, q


@njit(nogil=True, cache=CACHE, error_model="numpy", fastmath={"reassoc"})
def _dot_sums(dy, xhat):
    """(sum(dy), sum(dy * xhat)) of two 1-D runs, in float64."""
    s = 0.0
    q = 0.0
    for k in range(dy.shape[0]):
        g = np.float64(dy[k])
        s += g
        q += g * xhat[k]
    return s, q


@jit
def batchnorm2d_forward(X, gamma, beta, eps, Y, xhat, mean, var, inv_std):
    """Training-mode batch norm of X (N, C, L) (L = H*W) per channel over (N, L).

    One pass for the statistics: sums of x - x[0, c, 0] and of its square in
    float64 (the shift keeps the variance exact when the mean is large), then
    one pass for xhat = (x - mean) * inv_std and Y = xhat * gamma + beta.
    mean, var (biased), inv_std: (C,) in X's dtype."""
    N, C, L = X.shape
    m = N * L
    t = X.dtype.type
    sums = np.zeros(C)
    squares = np.zeros(C)
    for n in range(N):
        for c in range(C):
            s, q = _shifted_sums(X[n, c], np.float64(X[0, c, 0]))
            sums[c] += s
            squares[c] += q
    for c in range(C):
        d = sums[c] / m
        v = max(squares[c] / m - d * d, 0.0)
        mean[c] = t(np.float64(X[0, c, 0]) + d)
        var[c] = t(v)
    # inv_std from var in X's dtype, as the composed default: 1 / sqrt(var + eps)
    for c in range(C):
        inv_std[c] = t(1) / np.sqrt(var[c] + t(eps))
    for n in range(N):
        for c in range(C):
            mu, r, g, bt = mean[c], inv_std[c], gamma[c], beta[c]
            x = X[n, c]
            xh = xhat[n, c]
            y = Y[n, c]
            for k in range(L):
                h = (x[k] - mu) * r
                xh[k] = h
                y[k] = h * g + bt


@jit
def batchnorm2d_backward(dY, xhat, gamma, inv_std, dX, dgamma, dbeta):
    """``(dX, dgamma, dbeta)`` of ``batchnorm2d_forward``: the two sums per
    channel in one pass (float64), then dX = gamma*inv_std/m * (m*dY - dbeta
    - xhat*dgamma) in a second. dY, xhat, dX: (N, C, L)."""
    N, C, L = dY.shape
    m = N * L
    t = dY.dtype.type
    s_beta = np.zeros(C)
    s_gamma = np.zeros(C)
    for n in range(N):
        for c in range(C):
            s, q = _dot_sums(dY[n, c], xhat[n, c])
            s_beta[c] += s
            s_gamma[c] += q
    for c in range(C):
        dbeta[c] = t(s_beta[c])
        dgamma[c] = t(s_gamma[c])
    fm = t(m)
    for n in range(N):
        for c in range(C):
            a = gamma[c] * inv_std[c] / fm
            db, dg = dbeta[c], dgamma[c]
            g = dY[n, c]
            xh = xhat[n, c]
            d = dX[n, c]
            for k in range(L):
                d[k] = a * (fm * g[k] - db - xh[k] * dg)


# -------------------------------------------------------------- recurrent
# One step of a recurrent cell for the whole batch, fused: the gate
# non-linearities and the state update (forward), the gate derivatives and
# the carried gradients (backward), in one pass over the step's rows. The
# recurrent products h_{t-1} U and dZ_t U^T run in BLAS between the calls
# (NumbaOps). Layouts, C-contiguous: XW, dXW (N, T, G) and the previous states
# Hprev (N, T, H) (Hprev[:, t] = h_{t-1}, Hprev[:, 0] = 0) batch-major, as the
# layer's input projection and the one product dU = Hprev^T dXW over N*T rows
# need them; what only the cell reads again (gates, c_t, tanh c_t) time-major,
# (T, N, .), so that a step's slice is one contiguous block; a step's (N, H)
# or (N, G) arguments are those slices. Gate orders are PyTorch's: LSTM
# (i, f, g, o), GRU (r, z, n).
#
# tanh here is built on ``_exp_parts`` (vectorisable, no SVML): tanh|x| =
# -expm1(-2|x|) / (2 + expm1(-2|x|)), with expm1 = (s - 1) + s*p exact near 0
# (no cancellation); NumPy's own tanh is faster alone (see bias_act), but in a
# fused cell it would cost a pass over the gates of its own.

@jit
def _sigmoid(x, one):
    """1 / (1 + exp(-x)) in x's dtype, exp taken of -|x| only."""
    e = exp_nonpos(-abs(x))
    return (one if x >= 0 else e) / (one + e)


@jit
def _tanh(x, one):
    """tanh(x) in x's dtype, within a few ulp; NaN propagates."""
    s, p = _exp_parts(-(abs(x) + abs(x)))
    em1 = (s - one) + s * p            # expm1(-2|x|) in [-1, 0]
    t = -em1 / (one + one + em1)
    return t if x >= 0 else -t


@njit(nogil=True, cache=CACHE, error_model="numpy", fastmath={"reassoc"})
def _sum_squares(a):
    """(a * a).sum() of a 1-D run, in float64; reassoc lets LLVM vectorise it."""
    s = 0.0
    for k in range(a.shape[0]):
        v = np.float64(a[k])
        s += v * v
    return s


@jit
def _store_h(hrow, Hout, n, t_out):
    """Hout[n, t_out] = hrow unless t_out < 0."""
    if t_out >= 0:
        dst = Hout[n, t_out]
        for j in range(hrow.shape[0]):
            dst[j] = hrow[j]


@jit
def _step_grad(dH, t_in, dh, n):
    """dh[n] += dH[n, t_in] (the output's gradient at this step) unless t_in < 0;
    returns the sum of squares of the row."""
    d = dh[n]
    if t_in >= 0:
        src = dH[n, t_in]
        for j in range(d.shape[0]):
            d[j] += src[j]
    return _sum_squares(d)


@jit
def lstm_cell_forward(XW, t, Z, c_prev, gates, c, tanh_c, Hprev, h_last, Hout, t_out):
    """LSTM step t: gates = XW[:, t] + Z split as (i, f, g, o); i, f, o =
    sigmoid, g = tanh; c = f c_prev + i g; h = o tanh(c).

    XW (N, T, 4H); Z (N, 4H) = h_{t-1} U (zeros at t = 0); c_prev (N, H)
    (zeros at t = 0). Writes gates (N, 4H) after their non-linearities, c and
    tanh_c (N, H), h into Hprev[:, t + 1] (h_last (N, H) at the last step) and
    into Hout[:, t_out] (Hout (N, T_out, H)) unless t_out < 0.

    A row at a time, in short loops over runs of the row that LLVM vectorises
    (one loop for all of it measured slower: 27 against 22 us for 64 rows of
    128 units, float32)."""
    N, T = XW.shape[0], XW.shape[1]
    H = c.shape[1]
    one = XW.dtype.type(1)
    for n in range(N):
        x = XW[n, t]
        z = Z[n]
        gr = gates[n]
        for j in range(2 * H):                      # i, f
            gr[j] = _sigmoid(x[j] + z[j], one)
        xg, zg, gg = x[2 * H:3 * H], z[2 * H:3 * H], gr[2 * H:3 * H]
        for j in range(H):
            gg[j] = _tanh(xg[j] + zg[j], one)
        xo, zo, go = x[3 * H:4 * H], z[3 * H:4 * H], gr[3 * H:4 * H]
        for j in range(H):
            go[j] = _sigmoid(xo[j] + zo[j], one)
        gi, gf = gr[:H], gr[H:2 * H]
        cp = c_prev[n]
        cn = c[n]
        for j in range(H):
            cn[j] = gf[j] * cp[j] + gi[j] * gg[j]
        tn = tanh_c[n]
        hrow = Hprev[n, t + 1] if t + 1 < T else h_last[n]
        for j in range(H):
            tc = _tanh(cn[j], one)
            tn[j] = tc
            hrow[j] = go[j] * tc
        _store_h(hrow, Hout, n, t_out)


@jit
def lstm_cell_backward(dH, t_in, dh, dc, gates, c_prev, tanh_c, dXW, t, sumsq):
    """LSTM step t backward, from the forward's gates, c_{t-1} (zeros at
    t = 0) and tanh(c_t).

    dh (N, H): in, dZ_{t+1} U^T (zeros at the last step); out, the whole
    dL/dh_t (plus dH[:, t_in], the output's gradient at this step, unless
    t_in < 0). dc (N, H): in, dL/dc_t from step t+1; out, dL/dc_{t-1}.
    Writes dXW[:, t] = dL/dZ_t (N, 4H) and sumsq[t] (float64) = the sum of the
    squares of dL/dh_t over these rows. Two loops per row: the output gate and
    dL/dc_t, then the other three gates (faster than one: 8.3 against 9.9 us)."""
    N, H = dh.shape
    one = dh.dtype.type(1)
    ss = 0.0
    for n in range(N):
        ss += _step_grad(dH, t_in, dh, n)
        d = dh[n]
        dcr = dc[n]
        gr = gates[n]
        out = dXW[n, t]
        go, tn, oo = gr[3 * H:4 * H], tanh_c[n], out[3 * H:4 * H]
        for j in range(H):
            o = go[j]
            tc = tn[j]
            dhj = d[j]
            dcr[j] += dhj * o * (one - tc * tc)
            oo[j] = dhj * tc * o * (one - o)
        gi, gf, gg = gr[:H], gr[H:2 * H], gr[2 * H:3 * H]
        oi, of, og = out[:H], out[H:2 * H], out[2 * H:3 * H]
        cp = c_prev[n]
        for j in range(H):
            dcj = dcr[j]
            i = gi[j]
            f = gf[j]
            g = gg[j]
            oi[j] = dcj * g * i * (one - i)
            of[j] = dcj * cp[j] * f * (one - f)
            og[j] = dcj * i * (one - g * g)
            dcr[j] = dcj * f
    sumsq[t] = ss


@jit
def gru_cell_forward(XW, t, Z, bU, gates, hUn, Hprev, h_last, Hout, t_out):
    """GRU step t (PyTorch's): with hU = Z + bU split as (r, z, n),
    r = sigmoid(XW_r + hU_r), z = sigmoid(XW_z + hU_z),
    n = tanh(XW_n + r hU_n), h = n + z (h_{t-1} - n).

    XW (N, T, 3H); Z (N, 3H) = h_{t-1} U (zeros at t = 0); bU (3H,);
    h_{t-1} is Hprev[:, t]. Writes gates (N, 3H) = (r, z, n), hUn (N, H) =
    hU_n, and h as ``lstm_cell_forward`` does. Short loops per row, as there:
    written as one loop, LLVM left it scalar (217 against 12 us for 64 rows
    of 128 units, float32)."""
    N, T = XW.shape[0], XW.shape[1]
    H = hUn.shape[1]
    one = XW.dtype.type(1)
    for n in range(N):
        x = XW[n, t]
        z = Z[n]
        gr = gates[n]
        for j in range(2 * H):                      # r, z
            gr[j] = _sigmoid(x[j] + (z[j] + bU[j]), one)
        un = hUn[n]
        zn, bn = z[2 * H:3 * H], bU[2 * H:3 * H]
        for j in range(H):
            un[j] = zn[j] + bn[j]
        xn, g_r, g_n = x[2 * H:3 * H], gr[:H], gr[2 * H:3 * H]
        for j in range(H):
            g_n[j] = _tanh(xn[j] + g_r[j] * un[j], one)
        hp = Hprev[n, t]
        hrow = Hprev[n, t + 1] if t + 1 < T else h_last[n]
        g_z = gr[H:2 * H]
        for j in range(H):
            nn = g_n[j]
            hrow[j] = nn + g_z[j] * (hp[j] - nn)
        _store_h(hrow, Hout, n, t_out)


@jit
def gru_cell_backward(dH, t_in, dh, carry, gates, hUn, Hprev, dXW, dHU, dbU, t, sumsq):
    """GRU step t backward.

    dh (N, H): in, dHU_{t+1} U^T (zeros at the last step); out, the whole
    dL/dh_t: that, carry (dL/dh_t through h_{t+1} = ... + z h_t) and dH[:, t_in]
    unless t_in < 0. carry (N, H) is then set to dL/dh_t z_t for step t-1.
    Writes dXW[:, t] = dL/d(XW_t) and dHU[:, t] = dL/d(hU_t) (they differ in
    the n block: r times it), adds dHU[:, t] summed over rows to dbU (3H,
    float64) and sets sumsq[t] as ``lstm_cell_backward`` does."""
    N, H = dh.shape
    one = dh.dtype.type(1)
    ss = 0.0
    db_r, db_z, db_n = dbU[:H], dbU[H:2 * H], dbU[2 * H:3 * H]
    for n in range(N):
        d = dh[n]
        cr = carry[n]
        for j in range(H):
            d[j] += cr[j]
        ss += _step_grad(dH, t_in, dh, n)
        gr = gates[n]
        g_r, g_z, g_n = gr[:H], gr[H:2 * H], gr[2 * H:3 * H]
        un = hUn[n]
        hp = Hprev[n, t]
        ox = dXW[n, t]
        ou = dHU[n, t]
        ox_r, ox_z, ox_n = ox[:H], ox[H:2 * H], ox[2 * H:3 * H]
        ou_r, ou_z, ou_n = ou[:H], ou[H:2 * H], ou[2 * H:3 * H]
        for j in range(H):
            dhj = d[j]
            r = g_r[j]
            u = g_z[j]
            nn = g_n[j]
            dan = dhj * (one - u) * (one - nn * nn)
            dar = dan * un[j] * r * (one - r)
            daz = dhj * (hp[j] - nn) * u * (one - u)
            dun = dan * r
            ox_r[j] = dar
            ox_z[j] = daz
            ox_n[j] = dan
            ou_r[j] = dar
            ou_z[j] = daz
            ou_n[j] = dun
            cr[j] = dhj * u
            db_r[j] += dar
            db_z[j] += daz
            db_n[j] += dun
    sumsq[t] = ss


#: The RNN activations the fused cells take (any other goes to the composed default).
RNN_TANH, RNN_RELU = 0, 1


@jit
def rnn_cell_forward(XW, t, Z, act, Hprev, h_last, Hout, t_out):
    """Elman RNN step t: h = f(XW[:, t] + Z), f tanh (act 0) or relu (act 1).
    Z (N, H) = h_{t-1} U (zeros at t = 0); h is written as ``lstm_cell_forward`` does."""
    N, T = XW.shape[0], XW.shape[1]
    H = Z.shape[1]
    one = XW.dtype.type(1)
    zero = XW.dtype.type(0)
    for n in range(N):
        x = XW[n, t]
        z = Z[n]
        hrow = Hprev[n, t + 1] if t + 1 < T else h_last[n]
        if act == RNN_TANH:
            for j in range(H):
                hrow[j] = _tanh(x[j] + z[j], one)
        else:
            for j in range(H):
                a = x[j] + z[j]
                hrow[j] = zero if a < zero else a   # NaN passes through, as numpy.maximum
        _store_h(hrow, Hout, n, t_out)


@jit
def rnn_cell_backward(dH, t_in, dh, act, Hprev, h_last, dXW, t, sumsq):
    """Elman RNN step t backward: dh (N, H) in, dXW[:, t+1] U^T (zeros at the
    last step), out the whole dL/dh_t (with dH[:, t_in] unless t_in < 0);
    dXW[:, t] = dL/dh_t * f'(h_t), f' from the output h_t (Hprev[:, t+1], or
    h_last at the last step); sumsq[t] as ``lstm_cell_backward`` sets it."""
    N, H = dh.shape
    T = dXW.shape[1]
    one = dh.dtype.type(1)
    zero = dh.dtype.type(0)
    ss = 0.0
    for n in range(N):
        ss += _step_grad(dH, t_in, dh, n)
        d = dh[n]
        y = Hprev[n, t + 1] if t + 1 < T else h_last[n]
        out = dXW[n, t]
        if act == RNN_TANH:
            for j in range(H):
                out[j] = d[j] * (one - y[j] * y[j])
        else:
            for j in range(H):
                out[j] = d[j] * (one if y[j] > zero else zero)
    sumsq[t] = ss


refresh_activations()
