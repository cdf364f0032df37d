"""The backend seam: one ``Ops`` object does every piece of array work.

Layers, losses and optimizers call only the methods below. Each method has a
*composed default* written in ``self.xp`` (NumPy or CuPy), so a new backend is
correct the moment it sets ``xp``; a fast backend then overrides the hot
methods and calls ``super()`` for anything it does not cover.

Conventions (all methods):

* arrays are batch-major: ``X`` is (N, features), ``W`` is (in, out);
* float32 by default, float64 on request; no method silently changes dtype;
* ``out=`` (where offered) may alias an input: the result overwrites it.
"""

from __future__ import annotations

import math

import numpy

from ..activations import ACTIVATIONS, get_activation  # noqa: F401  (ACTIVATIONS: re-export)


def _into(result, out):
    """``result``, copied into ``out`` when one is given (and is another array)."""
    if out is None or out is result:
        return result
    out[...] = result
    return out


class Ops:
    """Base backend: composed defaults for every primitive, written in ``self.xp``."""

    name = "base"
    xp = numpy

    # ------------------------------------------------------------------ arrays
    def asarray(self, x, dtype=None):
        """Return ``x`` as an array of this backend (no copy when already one)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_host(self, x):
        """Return ``x`` as a NumPy array (a copy only when it lives elsewhere)."""
        return numpy.asarray(x)

    def zeros(self, shape, dtype="float32"):
        return self.xp.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype="float32"):
        return self.xp.empty(shape, dtype=dtype)

    def is_own_array(self, x):
        """True when ``x`` is an array this backend computes on."""
        return isinstance(x, self.xp.ndarray)

    def synchronize(self):
        """Wait for queued device work (no-op on the CPU)."""

    def make_rng(self, seed=None):
        """A seeded random generator used for dropout masks on this backend."""
        return numpy.random.default_rng(seed)

    def rng_state(self, rng):
        return rng.bit_generator.state

    def set_rng_state(self, rng, state):
        rng.bit_generator.state = state

    # ---------------------------------------------------------------- products
    def matmul(self, a, b, out=None):
        """``a @ b``; transposed views are passed to BLAS without a copy."""
        return self.xp.matmul(a, b, out=out)

    def take_rows(self, X, idx, out=None):
        """Gather ``X[idx]`` (a mini-batch) into ``out`` when given."""
        return self.xp.take(X, idx, axis=0, out=out)

    # ------------------------------------------------------------- activation
    def bias_act(self, Z, b, activation, alpha=0.01, out=None):
        """Forward of Dense+activation: ``f(Z + b)``.

        Z: (N, M) pre-activation without bias (usually ``X @ W``); b: (M,) or
        None; activation: a name in the activation table
        (``scratchnet.activations``), whose array formula f this applies;
        alpha: LeakyReLU slope. Writes into ``out`` when given (``out`` may be ``Z``).
        """
        spec = get_activation(activation)
        xp = self.xp
        if b is not None:
            Z = xp.add(Z, b, out=out)
            out = Z
        return _into(spec.forward(xp, Z, alpha, out), out)

    def act_backward(self, dY, Y, activation, alpha=0.01, out=None):
        """``dZ = dY * f'(Z)``, written in terms of the forward *output* ``Y``.

        The table gives f' as a function of the output (ReLU, LeakyReLU with
        alpha >= 0, sigmoid, tanh all allow it), so the forward pass need not
        keep its input. An activation whose derivative is 1 (identity) returns
        ``dY`` itself when no ``out`` is given (nothing to compute, nothing to
        copy) and does not read ``Y``.
        """
        spec = get_activation(activation)
        if spec.passes_gradient:
            return dY if out is None else _into(dY, out)
        return self.xp.multiply(dY, spec.derivative(self.xp, Y, alpha), out=out)

    def act_backward_bias(self, dY, Y, activation, alpha=0.01, out=None):
        """Activation backward and the bias gradient: returns ``(dZ, db)``.

        dZ = dY * f'(Y) (N, M) and db = dZ summed over rows (M,). Fused
        backends do both in one pass over dY.
        """
        if get_activation(activation).passes_gradient:     # dZ is dY: no pass, no copy
            return dY, dY.sum(axis=0)
        dZ = self.act_backward(dY, Y, activation, alpha, out=out)
        return dZ, dZ.sum(axis=0)

    # ---------------------------------------------------------------- softmax
    def softmax(self, Z, out=None):
        """Row-wise softmax of (N, C) logits, stable for large values."""
        xp = self.xp
        e = xp.exp(Z - Z.max(axis=1, keepdims=True))
        return xp.divide(e, e.sum(axis=1, keepdims=True), out=out)

    def softmax_backward(self, dY, Y):
        """Backward of softmax from its output: ``Y * (dY - sum(dY*Y))``."""
        return Y * (dY - (dY * Y).sum(axis=1, keepdims=True))

    def log_softmax(self, Z):
        xp = self.xp
        shifted = Z - Z.max(axis=1, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))

    def softmax_cross_entropy(self, logits, labels):
        """Fused softmax + cross-entropy from integer labels.

        logits: (N, C) float; labels: (N,) integer in [0, C), else ValueError
        (``check_label_range``; every backend raises the same one). Returns
        ``(loss, grad)``: ``loss`` is the mean negative log-likelihood as a
        0-d array on this backend (not read back), ``grad`` is dL/dlogits
        = (softmax(logits) - onehot(labels)) / N, shape (N, C).
        """
        xp = self.xp
        labels = xp.asarray(labels)
        self.check_label_range(labels, logits.shape[1], "softmax_cross_entropy")
        n = logits.shape[0]
        logp = self.log_softmax(logits)
        rows = xp.arange(n)
        loss = -logp[rows, labels].mean()
        grad = xp.exp(logp)
        grad[rows, labels] -= 1
        grad /= n
        return loss, grad

    def check_label_range(self, labels, n_classes, where):
        """Raise ValueError naming the first out-of-range label unless every
        label lies in [0, n_classes).

        Without it NumPy would read label -1 as the last class. The check is
        a min and a max, cheap enough for every step (about 2 us for a batch
        of labels on the CPU; on a GPU, the two numbers are copied to the
        host); only a failure looks further.
        """
        if labels.size == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            bad = labels[(labels < 0) | (labels >= n_classes)][0]
            raise ValueError(f"{where}: label {int(bad)} is out of range [0, {n_classes}) "
                             f"for {n_classes} classes")

    def count_correct(self, scores, labels):
        """Number of rows whose argmax equals the label (0-d array, no sync)."""
        return (scores.argmax(axis=1) == labels).sum()

    # ------------------------------------------- sigmoid + binary cross-entropy
    def sigmoid_bce(self, logits, targets):
        """Fused sigmoid + binary cross-entropy on logits (PyTorch's ``BCEWithLogitsLoss``).

        logits: float array of any shape, treated as n flat elements; targets:
        the same shape, in [0, 1]. Returns ``(loss, grad)``: ``loss`` = mean of
        max(z, 0) - z t + log(1 + exp(-|z|)) as a 0-d array (no host sync),
        ``grad`` = (sigmoid(z) - t) / n, shape and dtype of logits. exp is taken
        of -|z| <= 0 only, so both are exact for any z: no overflow, and a
        confidently wrong output still gets the full gradient.
        """
        if logits.size == 0:
            raise ValueError("sigmoid_bce: logits are empty; the mean needs at least one element")
        xp = self.xp
        z, t = logits, targets
        e = xp.exp(-xp.abs(z))
        loss = (xp.maximum(z, 0) - z * t + xp.log1p(e)).mean()
        p = xp.where(z >= 0, 1 / (1 + e), e / (1 + e))
        # times 1/n, as PyTorch scales the gradient of a mean
        grad = (p - t) * z.dtype.type(1.0 / z.size)
        return loss, grad.astype(z.dtype, copy=False)

    # ---------------------------------------------------------------- dropout
    def dropout(self, X, p, rng):
        """Inverted dropout: returns ``(X * mask, mask)``.

        mask is 0 with probability p and 1/(1-p) otherwise, drawn from ``rng``
        (a generator from ``make_rng``), same dtype as X.
        """
        xp = self.xp
        keep = rng.random(X.shape, dtype=numpy.float32) >= p
        mask = xp.asarray(keep, dtype=X.dtype) * X.dtype.type(1.0 / (1.0 - p))
        return X * mask, mask

    def dropout_backward(self, dY, mask):
        return dY * mask

    # ------------------------------------------------------------- batch norm
    def batchnorm_forward(self, X, gamma, beta, eps):
        """Training-mode batch norm over rows. Returns ``(Y, xhat, mean, var, inv_std)``."""
        xp = self.xp
        mean = X.mean(axis=0)
        var = X.var(axis=0)
        inv_std = 1 / xp.sqrt(var + X.dtype.type(eps))
        xhat = (X - mean) * inv_std
        return xhat * gamma + beta, xhat, mean, var, inv_std

    def batchnorm_backward(self, dY, xhat, gamma, inv_std):
        """Returns ``(dX, dgamma, dbeta)`` for the training-mode forward above."""
        n = dY.shape[0]
        dbeta = dY.sum(axis=0)
        dgamma = (dY * xhat).sum(axis=0)
        dX = (gamma * inv_std / n) * (n * dY - dbeta - xhat * dgamma)
        return dX, dgamma, dbeta

    # ------------------------------------------------------------ convolution
    # Images are (N, C, H, W), kernels (O, C, kh, kw): PyTorch's layouts, its
    # cross-correlation and its output size Ho = (H + 2 ph - kh) // sh + 1.
    # stride, padding and pool are (rows, cols) pairs of ints.
    #
    # Each forward returns ``(Y, ctx)``. ``ctx`` is private to the backend that
    # made it: only that backend's matching backward reads it. So a backend
    # overrides a forward/backward pair together or neither (conv2d_forward
    # with conv2d_backward, maxpool2d_* together, avgpool2d_* together,
    # batchnorm2d_* together).
    #
    # The defaults below are the readable reference. A convolution is im2col
    # on a strided window view of the zero-padded input, then ONE matrix
    # product for each of the forward, dW and dX; the bias and activation run
    # through ``bias_act`` / ``act_backward_bias`` on the (N*Ho*Wo, O) product,
    # the formulas of Dense. col2im (for dX) is one strided add per kernel
    # offset (kh*kw adds). Pooling uses the same strided views: max-pool keeps
    # the index of each window's first maximum, its backward (and average
    # pooling's) is one strided add per window offset.

    def _windows(self, X, kh, kw, sh, sw):
        """A view (N, C, Ho, Wo, kh, kw) of X (N, C, H, W), no copy: window
        [n, c, i, j] is X[n, c, i*sh : i*sh + kh, j*sw : j*sw + kw]."""
        n, c, h, w = X.shape
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        s_n, s_c, s_h, s_w = X.strides
        return self.xp.lib.stride_tricks.as_strided(
            X, shape=(n, c, ho, wo, kh, kw), strides=(s_n, s_c, s_h * sh, s_w * sw, s_h, s_w))

    @staticmethod
    def _at_offset(i, j, ho, wo, sh, sw):
        """Index of the (Ho, Wo) grid of input positions that kernel offset
        (i, j) touches: rows i, i+sh, ..., cols j, j+sw, ... (4-D)."""
        return (slice(None), slice(None), slice(i, i + sh * (ho - 1) + 1, sh),
                slice(j, j + sw * (wo - 1) + 1, sw))

    def conv2d_forward(self, X, W, b, stride, padding, activation="identity", alpha=0.0):
        """``Y = f(conv(X, W) + b)``: X (N, C, H, W), W (O, C, kh, kw), b (O,)
        or None; returns ``(Y, ctx)``, Y (N, O, Ho, Wo). activation: a name of
        the activation table, with the formulas of ``bias_act``."""
        xp = self.xp
        n, c, h, w = X.shape
        o, _, kh, kw = W.shape
        (sh, sw), (ph, pw) = stride, padding
        Xp = xp.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else X
        win = self._windows(Xp, kh, kw, sh, sw)
        ho, wo = win.shape[2], win.shape[3]
        # im2col: one row per (c, i, j) of the kernel (W's own order), one
        # column per output position (n, y, x); the reshape of the strided
        # view is the copy, in runs of Wo (a faster copy than rows of kh*kw).
        cols = win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * ho * wo)
        Z = self.matmul(cols.T, W.reshape(o, c * kh * kw).T)        # (N*Ho*Wo, O)
        Z = self.bias_act(Z, b, activation, alpha, out=Z)
        Y = xp.ascontiguousarray(Z.reshape(n, ho, wo, o).transpose(0, 3, 1, 2))
        return Y, (cols, (n, c, h, w), (sh, sw), (ph, pw), b is not None)

    def conv2d_backward(self, dY, Y, ctx, W, activation="identity", alpha=0.0, need_dX=True):
        """``(dX, dW, db)`` for ``conv2d_forward``: dZ = dY * f'(Y) from the
        output; dW (O, C, kh, kw); db (O,), None when the forward had no b;
        dX (N, C, H, W), None when ``need_dX`` is False."""
        xp = self.xp
        cols, (n, c, h, w), (sh, sw), (ph, pw), has_b = ctx
        o, _, kh, kw = W.shape
        ho, wo = dY.shape[2], dY.shape[3]

        def rows(A):        # (N, O, Ho, Wo) -> (N*Ho*Wo, O), the forward's product layout
            return A.transpose(0, 2, 3, 1).reshape(n * ho * wo, o)

        reads_y = not get_activation(activation).passes_gradient
        dZ, db = self.act_backward_bias(rows(dY), rows(Y) if reads_y else None,
                                        activation, alpha)
        dW = self.matmul(dZ.T, cols.T).reshape(W.shape)
        dX = None
        if need_dX:
            dcols = self.matmul(W.reshape(o, c * kh * kw).T, dZ.T)  # (C*kh*kw, N*Ho*Wo)
            parts = dcols.reshape(c, kh, kw, n, ho, wo)
            dXp = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dY.dtype)
            for i in range(kh):             # col2im: one strided add per kernel offset
                for j in range(kw):
                    dXp[self._at_offset(i, j, ho, wo, sh, sw)] += \
                        parts[:, i, j].transpose(1, 0, 2, 3)
            dX = xp.ascontiguousarray(dXp[:, :, ph:ph + h, pw:pw + w]) if ph or pw else dXp
        return dX, dW, (db if has_b else None)

    def maxpool2d_forward(self, X, pool, stride):
        """Max over each (ph, pw) window, floor mode, no padding; returns
        ``(Y, ctx)``, ctx keeping the index of each window's maximum."""
        xp = self.xp
        (ph, pw), (sh, sw) = pool, stride
        ho, wo = (X.shape[2] - ph) // sh + 1, (X.shape[3] - pw) // sw + 1
        # Each window offset is a strided view (N, C, Ho, Wo) of X.
        offsets = [self._at_offset(i, j, ho, wo, sh, sw) for i in range(ph) for j in range(pw)]
        Y = xp.array(X[offsets[0]])
        for at in offsets[1:]:
            xp.maximum(Y, X[at], out=Y)              # NaN propagates
        # idx: the first offset in row-major window order that holds the
        # maximum (or a NaN): the one element a tie sends the gradient to.
        idx = xp.zeros(Y.shape, dtype=xp.int32)
        found = xp.zeros(Y.shape, dtype=bool)
        for k, at in enumerate(offsets):
            v = X[at]
            hit = ((v == Y) | (v != v)) & ~found
            idx += hit * xp.int32(k)
            found |= hit
        return Y, (idx, X.shape, (ph, pw), (sh, sw))

    def maxpool2d_backward(self, dY, ctx):
        """dX: each window's gradient goes to one element, its first maximum
        (PyTorch's rule for ties); overlapping windows add up."""
        idx, shape, (ph, pw), (sh, sw) = ctx
        ho, wo = dY.shape[2], dY.shape[3]
        dX = self.xp.zeros(shape, dtype=dY.dtype)
        for i in range(ph):
            for j in range(pw):
                dX[self._at_offset(i, j, ho, wo, sh, sw)] += dY * (idx == i * pw + j)
        return dX

    def avgpool2d_forward(self, X, pool, stride):
        """Mean over each (ph, pw) window, floor mode, no padding; returns ``(Y, ctx)``."""
        Y = self._windows(X, *pool, *stride).mean(axis=(4, 5))
        return Y, (X.shape, tuple(pool), tuple(stride))

    def avgpool2d_backward(self, dY, ctx):
        shape, (ph, pw), (sh, sw) = ctx
        ho, wo = dY.shape[2], dY.shape[3]
        share = dY * dY.dtype.type(1.0 / (ph * pw))
        dX = self.xp.zeros(shape, dtype=dY.dtype)
        for i in range(ph):
            for j in range(pw):
                dX[self._at_offset(i, j, ho, wo, sh, sw)] += share
        return dX

    def batchnorm2d_forward(self, X, gamma, beta, eps):
        """Training-mode batch norm of (N, C, H, W) per channel, over (N, H, W).
        Returns ``(Y, xhat, mean, var, inv_std)``; mean, var (biased), inv_std are (C,)."""
        xp = self.xp
        mean = X.mean(axis=(0, 2, 3))
        var = X.var(axis=(0, 2, 3))
        inv_std = 1 / xp.sqrt(var + X.dtype.type(eps))
        xhat = (X - mean[:, None, None]) * inv_std[:, None, None]
        return xhat * gamma[:, None, None] + beta[:, None, None], xhat, mean, var, inv_std

    def batchnorm2d_backward(self, dY, xhat, gamma, inv_std):
        """``(dX, dgamma, dbeta)`` for ``batchnorm2d_forward``."""
        n = dY.shape[0] * dY.shape[2] * dY.shape[3]
        dbeta = dY.sum(axis=(0, 2, 3))
        dgamma = (dY * xhat).sum(axis=(0, 2, 3))
        scale = (gamma * inv_std / n)[:, None, None]
        dX = scale * (n * dY - dbeta[:, None, None] - xhat * dgamma[:, None, None])
        return dX, dgamma, dbeta

    # -------------------------------------------------------------- recurrent
    # Sequences are batch-first. ``XW`` (N, T, G) is the input projection
    # x_t W + b of every time step, which the layer computes as ONE matrix
    # product (N*T, F) @ (F, G) before the recurrence; the primitives below run
    # the recurrence itself, step by step: one (N, H) @ (H, G) product per step,
    # then the gate non-linearities and the state update. Hidden and cell
    # states start at zero. G is H (RNN), 4H (LSTM, gates i, f, g, o) or 3H
    # (GRU, gates r, z, n): PyTorch's orders.
    #
    # Each forward returns ``(H_out, ctx)``: H_out is (N, T, H) with
    # ``return_sequences``, else the last step (N, H). ``ctx`` is private to the
    # backend that made it, so a backend overrides a forward/backward pair
    # together or neither. Each backward takes dL/dH_out and returns dL/dXW
    # (N, T, G) -- from which the layer gets dW, db and dX with one product
    # each -- the recurrent weight gradient dU (H, G), summed over the steps
    # as ONE product after the loop (h_{t-1}^T dgates_t stacked over N*T
    # rows), and ``dh_norms`` (T,): the norm ||dL/dh_t|| over the whole batch
    # of the gradient that reaches h_t (from the output at t and from step
    # t+1), the gradient-through-time diagnostic, as a backend array.

    def _sequence_output(self, Hs, return_sequences):
        return Hs if return_sequences else self.xp.ascontiguousarray(Hs[:, -1])

    def _grad_into_step(self, dH, dh_next, t, T, return_sequences):
        """dL/dh_t: the output's gradient at step t (every step with
        ``return_sequences``, else only the last) plus what step t+1 sends back."""
        if return_sequences:
            return dH[:, t] if dh_next is None else dH[:, t] + dh_next
        return dH if t == T - 1 else dh_next

    def _prev_states_grad(self, Hs, dA):
        """sum over t of h_{t-1}^T dA_t (h_{-1} = 0) as one product over N*(T-1) rows."""
        n, T, H = Hs.shape
        return self.matmul(Hs[:, :-1].reshape(n * (T - 1), H).T,
                           dA[:, 1:].reshape(n * (T - 1), dA.shape[2]))

    def _norm(self, a):
        return self.xp.sqrt((a * a).sum())

    def _sigmoid_into(self, A):
        """A = sigmoid(A) in place (A may be a view): the activation table's formula."""
        A[...] = get_activation("sigmoid").forward(self.xp, A, 0.0, None)

    def rnn_forward(self, XW, U, activation, return_sequences):
        """Elman RNN, h_t = f(XW_t + h_{t-1} U): XW (N, T, H), U (H, H);
        activation a name of the activation table ("tanh", "relu")."""
        xp, spec = self.xp, get_activation(activation)
        n, T, H = XW.shape
        Hs = xp.empty((n, T, H), dtype=XW.dtype)
        for t in range(T):
            A = XW[:, t].copy() if t == 0 else XW[:, t] + self.matmul(Hs[:, t - 1], U)
            Hs[:, t] = _into(spec.forward(xp, A, 0.0, A), A)
        return self._sequence_output(Hs, return_sequences), (Hs, activation, return_sequences)

    def rnn_backward(self, dH, ctx, U):
        """``(dXW, dU, dh_norms)`` for ``rnn_forward``."""
        Hs, activation, return_sequences = ctx
        xp, spec = self.xp, get_activation(activation)
        n, T, H = Hs.shape
        dA = xp.empty_like(Hs)
        norms = xp.empty(T, dtype=Hs.dtype)
        dh = None
        for t in range(T - 1, -1, -1):
            dh = self._grad_into_step(dH, dh, t, T, return_sequences)
            norms[t] = self._norm(dh)
            dA[:, t] = dh if spec.passes_gradient else dh * spec.derivative(xp, Hs[:, t], 0.0)
            dh = self.matmul(dA[:, t], U.T)
        return dA, self._prev_states_grad(Hs, dA), norms

    def lstm_forward(self, XW, U, return_sequences):
        """LSTM, PyTorch's equations: gates = XW_t + h_{t-1} U split as
        (i, f, g, o); i, f, o sigmoid, g tanh; c_t = f c_{t-1} + i g;
        h_t = o tanh(c_t). XW (N, T, 4H), U (H, 4H)."""
        xp = self.xp
        n, T, H4 = XW.shape
        H = H4 // 4
        gates = xp.empty((n, T, H4), dtype=XW.dtype)       # after their non-linearities
        C = xp.empty((n, T, H), dtype=XW.dtype)
        tanhC = xp.empty((n, T, H), dtype=XW.dtype)
        Hs = xp.empty((n, T, H), dtype=XW.dtype)
        for t in range(T):
            A = XW[:, t].copy() if t == 0 else XW[:, t] + self.matmul(Hs[:, t - 1], U)
            self._sigmoid_into(A[:, :2 * H])
            xp.tanh(A[:, 2 * H:3 * H], out=A[:, 2 * H:3 * H])
            self._sigmoid_into(A[:, 3 * H:])
            i, f, g, o = A[:, :H], A[:, H:2 * H], A[:, 2 * H:3 * H], A[:, 3 * H:]
            C[:, t] = i * g if t == 0 else f * C[:, t - 1] + i * g
            xp.tanh(C[:, t], out=tanhC[:, t])
            Hs[:, t] = o * tanhC[:, t]
            gates[:, t] = A
        return self._sequence_output(Hs, return_sequences), \
            (gates, C, tanhC, Hs, return_sequences)

    def lstm_backward(self, dH, ctx, U):
        """``(dXW, dU, dh_norms)`` for ``lstm_forward``: backpropagation
        through time, the cell's gradient carried alongside the hidden one."""
        gates, C, tanhC, Hs, return_sequences = ctx
        xp = self.xp
        n, T, H = Hs.shape
        dA = xp.empty_like(gates)
        norms = xp.empty(T, dtype=Hs.dtype)
        dh = dc = None
        for t in range(T - 1, -1, -1):
            dh = self._grad_into_step(dH, dh, t, T, return_sequences)
            norms[t] = self._norm(dh)
            G = gates[:, t]
            i, f, g, o = G[:, :H], G[:, H:2 * H], G[:, 2 * H:3 * H], G[:, 3 * H:]
            tc = tanhC[:, t]
            dct = dh * o * (1 - tc * tc)
            dc = dct if dc is None else dc + dct
            d = dA[:, t]
            d[:, :H] = dc * g * i * (1 - i)
            if t > 0:
                d[:, H:2 * H] = dc * C[:, t - 1] * f * (1 - f)
            else:
                d[:, H:2 * H] = 0
            d[:, 2 * H:3 * H] = dc * i * (1 - g * g)
            d[:, 3 * H:] = dh * tc * o * (1 - o)
            dc = dc * f
            dh = self.matmul(d, U.T)
        return dA, self._prev_states_grad(Hs, dA), norms

    def gru_forward(self, XW, U, bU, return_sequences):
        """GRU, PyTorch's equations: with hU = h_{t-1} U + bU split as
        (r, z, n), r = sigmoid(XW_r + hU_r), z = sigmoid(XW_z + hU_z),
        n = tanh(XW_n + r * hU_n), h_t = (1 - z) n + z h_{t-1}. XW (N, T, 3H)
        holds the input bias; U (H, 3H); bU (3H,) is the hidden bias."""
        xp = self.xp
        n, T, H3 = XW.shape
        H = H3 // 3
        gates = xp.empty((n, T, H3), dtype=XW.dtype)       # r, z, n
        hUn = xp.empty((n, T, H), dtype=XW.dtype)          # h_{t-1} U_n + bU_n
        Hs = xp.empty((n, T, H), dtype=XW.dtype)
        for t in range(T):
            hU = xp.broadcast_to(bU, (n, H3)) if t == 0 else self.matmul(Hs[:, t - 1], U) + bU
            A = gates[:, t]
            A[:, :2 * H] = XW[:, t, :2 * H] + hU[:, :2 * H]
            self._sigmoid_into(A[:, :2 * H])
            r, z = A[:, :H], A[:, H:2 * H]
            hUn[:, t] = hU[:, 2 * H:]
            A[:, 2 * H:] = xp.tanh(XW[:, t, 2 * H:] + r * hUn[:, t])
            nt = A[:, 2 * H:]
            Hs[:, t] = nt - z * nt if t == 0 else nt + z * (Hs[:, t - 1] - nt)
        return self._sequence_output(Hs, return_sequences), (gates, hUn, Hs, return_sequences)

    def gru_backward(self, dH, ctx, U):
        """``(dXW, dU, dbU, dh_norms)`` for ``gru_forward``."""
        gates, hUn, Hs, return_sequences = ctx
        xp = self.xp
        n, T, H = Hs.shape
        dA = xp.empty_like(gates)       # dL/dXW
        dHU = xp.empty_like(gates)      # dL/d(h_{t-1} U + bU)
        norms = xp.empty(T, dtype=Hs.dtype)
        dh = None
        for t in range(T - 1, -1, -1):
            dh = self._grad_into_step(dH, dh, t, T, return_sequences)
            norms[t] = self._norm(dh)
            G = gates[:, t]
            r, z, nt = G[:, :H], G[:, H:2 * H], G[:, 2 * H:]
            hp = Hs[:, t - 1] if t > 0 else 0
            dan = dh * (1 - z) * (1 - nt * nt)
            d, dh_U = dA[:, t], dHU[:, t]
            d[:, :H] = dan * hUn[:, t] * r * (1 - r)
            d[:, H:2 * H] = dh * (hp - nt) * z * (1 - z)
            d[:, 2 * H:] = dan
            dh_U[:, :2 * H] = d[:, :2 * H]
            dh_U[:, 2 * H:] = dan * r
            dh = dh * z + self.matmul(dh_U, U.T)
        dbU = dHU.sum(axis=(0, 1))
        return dA, self._prev_states_grad(Hs, dHU), dbU, norms

    def embedding_forward(self, W, ids):
        """Rows of W (V, D) for integer ``ids`` of any shape: (*ids.shape, D)."""
        flat = ids.reshape(-1)
        return self.take_rows(W, flat).reshape(*ids.shape, W.shape[1])

    def embedding_backward(self, dY, ids, num_embeddings):
        """dL/dW (V, D) for ``embedding_forward``: each row of dY added to the row
        of its id (ids that repeat add up)."""
        D = dY.shape[-1]
        dW = self.xp.zeros((num_embeddings, D), dtype=dY.dtype)
        self.xp.add.at(dW, ids.reshape(-1), dY.reshape(-1, D))
        return dW

    # ------------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, velocity, lr, momentum=0.0, nesterov=False,
                   weight_decay=0.0):
        """One SGD step in place, PyTorch's definition (dampening 0).

        g = grad + weight_decay * param; v = momentum * v + g;
        step = g + momentum * v (Nesterov) or v; param -= lr * step.
        ``velocity`` is None when momentum == 0.
        """
        g = grad
        if weight_decay:
            g = grad + weight_decay * param
        if momentum:
            velocity *= momentum
            velocity += g
            g = g + momentum * velocity if nesterov else velocity
        param -= param.dtype.type(lr) * g

    def adam_update(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0):
        """One bias-corrected Adam step in place, PyTorch's definition.

        ``step`` is the 1-based step count after this update.
        """
        xp = self.xp
        g = grad
        if weight_decay:
            g = grad + weight_decay * param
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        step_size = lr / (1 - beta1 ** step)
        denom = xp.sqrt(v) / math.sqrt(1 - beta2 ** step) + param.dtype.type(eps)
        param -= param.dtype.type(step_size) * (m / denom)

    def adamw_update(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=1e-2):
        """One AdamW step in place, PyTorch's definition (amsgrad off).

        Decoupled weight decay: param *= 1 - lr * weight_decay, then the
        bias-corrected Adam step on ``grad`` alone (no L2 term).
        ``step`` is the 1-based step count after this update.
        """
        if weight_decay:
            param *= param.dtype.type(1 - lr * weight_decay)
        # The base class's composed Adam step, named explicitly so that this
        # default stays composed on a backend that fuses adam_update.
        Ops.adam_update(self, param, grad, m, v, step, lr, beta1, beta2, eps)

    def rmsprop_update(self, param, grad, square_avg, lr, alpha=0.99, eps=1e-8,
                       weight_decay=0.0, momentum=0.0, buf=None, centered=False,
                       grad_avg=None):
        """One RMSprop step in place, PyTorch's definition.

        g = grad + weight_decay * param; s = alpha s + (1 - alpha) g^2;
        centered: a = alpha a + (1 - alpha) g, avg = sqrt(s - a^2) + eps,
        else avg = sqrt(s) + eps; momentum > 0: buf = momentum buf + g / avg,
        param -= lr * buf; else param -= lr * g / avg.
        ``buf`` is needed when momentum > 0, ``grad_avg`` when centered.
        """
        if momentum > 0 and buf is None:
            raise ValueError(f"buf is None but momentum={momentum}")
        if centered and grad_avg is None:
            raise ValueError("grad_avg is None but centered=True")
        xp = self.xp
        T = param.dtype.type
        g = grad
        if weight_decay:
            g = grad + weight_decay * param
        square_avg *= alpha
        square_avg += (1 - alpha) * (g * g)
        if centered:
            grad_avg *= alpha
            grad_avg += (1 - alpha) * g
            avg = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = xp.sqrt(square_avg)
        avg += T(eps)
        if momentum > 0:
            buf *= momentum
            buf += g / avg
            param -= T(lr) * buf
        else:
            param -= T(lr) * (g / avg)

    def adagrad_update(self, param, grad, state_sum, step, lr, lr_decay=0.0,
                       weight_decay=0.0, eps=1e-10):
        """One Adagrad step in place, PyTorch's definition.

        g = grad + weight_decay * param; clr = lr / (1 + (step - 1) lr_decay);
        state_sum += g^2; param -= clr * g / (sqrt(state_sum) + eps).
        ``step`` is the 1-based step count after this update.
        """
        T = param.dtype.type
        g = grad
        if weight_decay:
            g = grad + weight_decay * param
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum += g * g
        param -= T(clr) * (g / (self.xp.sqrt(state_sum) + T(eps)))

    # ------------------------------------------------------------- reporting
    def describe(self):
        """One-line description for ``scratchnet info``."""
        return f"{self.name}: {self.xp.__name__} {self.xp.__version__}"

    def __repr__(self):
        return f"<scratchnet backend {self.name!r}>"
