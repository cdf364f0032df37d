"""Losses: ``forward(out, y) -> float`` then ``backward() -> dL/dout``.

All losses are means over the batch (MSE and binary cross-entropy: over every
element, as PyTorch does), so per-sample gradients summed over a batch and
divided by its size equal the batch gradient.

=========================  ==========================  ==========================
loss                       ``out`` (model output)      ``y``
=========================  ==========================  ==========================
``SoftmaxCrossEntropy``    logits (N, C)               int labels (N,) or (N, C)
                                                       one-hot / probabilities
                           sequences (N, T, C)         int labels (N, T)
``CrossEntropy``           probabilities (N, C)        same as above
``BinaryCrossEntropy``     probabilities (N, M)        0/1 (or soft) targets,
                                                       same shape ((N,) if M=1)
``BCEWithLogits``          logits (N, ...)             0/1 (or soft) targets,
                                                       same shape
``MSE``                    any (N, M)                  same shape; int labels
                                                       (N,) mean one-hot
=========================  ==========================  ==========================

``BCEWithLogits`` is ``BinaryCrossEntropyWithLogits``: sigmoid and binary
cross-entropy in one, the loss to use instead of a ``Sigmoid`` layer followed
by ``BinaryCrossEntropy``.
"""

from __future__ import annotations

import numpy

from ._compat import is_cupy_array
from ._validate import as_host_numeric, check_labels, check_number, check_targets


class Loss:
    """Base class. ``_compute`` does the work on the backend and keeps the
    gradient; ``forward`` adds input checks and returns a Python float."""

    def __init__(self):
        self._grad = None

    def forward(self, out, y):
        """Loss value (float) for model output ``out`` and targets ``y``."""
        ops = _ops_of(out)
        return float(self._compute(out, self.prepare_targets(y, out.shape, ops, out.dtype), ops))

    __call__ = forward

    def backward(self):
        """dL/dout from the last ``forward``, same shape as ``out``."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward()")
        return self._grad

    # -- used by the training loop (targets prepared once per fit) --------
    def prepare_targets(self, y, out_shape, ops, dtype):
        """Check targets on the host; return them as backend arrays
        (integer labels as int64, real targets as ``dtype``)."""
        raise NotImplementedError

    def tracks_accuracy(self, y):
        """Whether accuracy means something for these prepared targets."""
        return True

    def _compute(self, out, y, ops):
        """Loss as a 0-d backend array (no host sync); stores the gradient."""
        raise NotImplementedError

    def count_correct(self, out, y, ops):
        """Correct predictions in the batch, as a 0-d backend array; for
        sequences (N, T, C) the correct steps / T, so that the count over the
        data divided by N is the per-step accuracy."""
        if out.ndim == 3 and y.ndim == 2:
            n, steps, classes = out.shape
            hits = ops.count_correct(ops.xp.ascontiguousarray(out).reshape(n * steps, classes),
                                     y.reshape(-1))
            return hits / steps
        if y.ndim == 1:
            return ops.count_correct(out, y)
        return ops.count_correct(out, y.argmax(axis=1))

    def get_config(self):
        return {}

    def __repr__(self):
        return f"{type(self).__name__}()"


def _ops_of(out):
    from .backends import get_backend, get_ops
    from ._compat import is_cupy_array
    if is_cupy_array(out):
        return get_ops("cupy")
    ops = get_backend()     # a host array with a GPU default backend: compute on the host
    return ops if ops.is_own_array(out) else get_ops("numpy")


class _ClassTargets(Loss):
    """Targets are integer labels (N,) or a (N, C) target distribution."""

    #: Whether (N, T, C) outputs with (N, T) labels are taken (one class per step).
    takes_sequences = False

    def prepare_targets(self, y, out_shape, ops, dtype):
        if len(out_shape) == 3 and self.takes_sequences:
            return ops.asarray(_sequence_labels(y, out_shape))
        if len(out_shape) != 2:
            seq = " or (N, T, C)" if self.takes_sequences else ""
            raise ValueError(f"{type(self).__name__} expects model output of shape (N, C){seq}, "
                             f"got {tuple(out_shape)}")
        if getattr(y, "ndim", None) == 2 or (not hasattr(y, "ndim") and _is_nested(y)):
            t = check_targets(y, out_shape, "y")
            return ops.asarray(t, dtype=dtype)
        return ops.asarray(check_labels(y, out_shape[0], out_shape[1]))


def _sequence_labels(y, out_shape):
    """Integer labels (N, T) for sequence logits (N, T, C): an int64 host array."""
    n, steps, classes = out_shape
    arr = as_host_numeric(y, "y")
    if is_cupy_array(arr):
        arr = arr.get()
    if tuple(arr.shape) != (n, steps):
        raise ValueError(f"y must hold one integer label per time step, shape (N, T) = "
                         f"{(n, steps)} for model output (N, T, C) = {tuple(out_shape)}, got "
                         f"shape {tuple(arr.shape)}")
    return check_labels(arr.reshape(-1), n * steps, classes).reshape(n, steps)


def _is_nested(y):
    return isinstance(y, (list, tuple)) and len(y) > 0 and isinstance(y[0], (list, tuple))


class SoftmaxCrossEntropy(_ClassTargets):
    """Softmax and cross-entropy fused, on logits: loss = mean(-log softmax(z)[y]).

    The gradient is (softmax(z) - onehot(y)) / N: the softmax Jacobian
    cancels, which is both faster and stabler than Softmax + CrossEntropy.

    Sequences: logits (N, T, C) with integer labels (N, T) are N*T
    predictions; the loss is the mean over all N*T of them (as PyTorch's
    ``cross_entropy`` on the logits permuted to (N, C, T)), and accuracy counts
    per step.
    """

    takes_sequences = True

    def _compute(self, out, y, ops):
        if out.ndim == 3:
            n, steps, classes = out.shape
            loss, grad = ops.softmax_cross_entropy(
                ops.xp.ascontiguousarray(out).reshape(n * steps, classes), y.reshape(-1))
            self._grad = grad.reshape(out.shape)
            return loss
        if y.ndim == 1:
            loss, self._grad = ops.softmax_cross_entropy(out, y)
            return loss
        n = out.shape[0]
        logp = ops.log_softmax(out)
        t = y.astype(out.dtype, copy=False)
        # softmax * sum(t) - t: rows of t need not sum to 1 (PyTorch accepts any weights)
        self._grad = (ops.xp.exp(logp) * t.sum(axis=1, keepdims=True) - t) / out.dtype.type(n)
        return -(t * logp).sum() / n


class CrossEntropy(_ClassTargets):
    """Categorical cross-entropy on probabilities (e.g. after ``Softmax``):
    loss = mean(-log p[y]); probabilities are clipped to [eps, 1]."""

    def __init__(self, eps=1e-12):
        super().__init__()
        self.eps = check_number(eps, "CrossEntropy eps", low=0.0, high=1.0, high_open=True)

    def _compute(self, out, y, ops):
        # On every path (forward, fit, evaluate): logits would give a negative
        # "loss" that training happily drives to -inf. Two reductions over the
        # (N, C) output, cheap next to the layers that produced it.
        if bool(out.min() < 0) or bool(out.max() > 1):
            raise ValueError("CrossEntropy expects probabilities in [0, 1] (e.g. after a Softmax "
                             "layer), got values outside [0, 1]; for logits use "
                             "SoftmaxCrossEntropy")
        xp, n = ops.xp, out.shape[0]
        p = xp.clip(out, out.dtype.type(self.eps), None)
        if y.ndim == 1:
            rows = xp.arange(n)
            picked = p[rows, y]
            grad = xp.zeros_like(out)
            grad[rows, y] = -1 / (picked * n)
            self._grad = grad
            return -xp.log(picked).mean()
        t = y.astype(out.dtype, copy=False)
        self._grad = -t / (p * n)
        return -(t * xp.log(p)).sum() / n

    def get_config(self):
        return {"eps": self.eps}


class _BinaryTargets(Loss):
    """Targets in [0, 1] with the output's shape ((N,) for one output per
    sample). A sample counts as correct when every one of its outputs lies on
    the side of ``threshold`` that its target (> 0.5 or not) names."""

    #: The output value that separates a predicted 1 from a predicted 0.
    threshold = 0.5

    def prepare_targets(self, y, out_shape, ops, dtype):
        t = check_targets(y, out_shape, "y")
        if (t < 0).any() or (t > 1).any():
            raise ValueError(f"{type(self).__name__} targets must lie in [0, 1]")
        return ops.asarray(t, dtype=dtype)

    def count_correct(self, out, y, ops):
        hits = (out > self.threshold) == (y > 0.5)
        if hits.ndim == 1:
            return hits.sum()
        return hits.reshape(hits.shape[0], -1).all(axis=1).sum()


class BinaryCrossEntropy(_BinaryTargets):
    """Binary cross-entropy on probabilities (e.g. after ``Sigmoid``), mean over
    all elements: PyTorch's ``BCELoss`` exactly. Each log is clamped at -100
    (so p = 0 or 1 costs at most 100, never inf), and the gradient is
    (p - t) / max(p (1 - p), 1e-12) / n: only p(1 - p) is floored, so an
    output within 1e-7 of the wrong end still gets the full-size step.

    After a ``Sigmoid`` layer prefer ``BinaryCrossEntropyWithLogits`` on the
    logits: it is exact for any logit, while a float32 sigmoid rounds to
    exactly 1 from z of about 17, and then no gradient passes back through it.
    """

    #: PyTorch's floor for each log term, and for p(1 - p) in the gradient
    #: (PyTorch's 1e-12 is a C float: float32(1e-12), in float64 too).
    LOG_FLOOR = -100.0
    GRAD_FLOOR = float(numpy.float32(1e-12))

    def _compute(self, out, y, ops):
        # On every path (forward, fit, evaluate): logits would give NaN logs.
        if bool(out.min() < 0) or bool(out.max() > 1):
            raise ValueError("BinaryCrossEntropy expects probabilities in [0, 1] (e.g. after a "
                             "Sigmoid layer), got values outside [0, 1]; for logits use "
                             "BinaryCrossEntropyWithLogits")
        xp, dt = ops.xp, out.dtype.type
        p, t = out, y
        self._grad = (p - t) / xp.maximum(p * (1 - p), dt(self.GRAD_FLOOR)) / dt(out.size)
        with numpy.errstate(divide="ignore"):  # log(0) = -inf, clamped just below
            log_p = xp.maximum(xp.log(p), dt(self.LOG_FLOOR))
            log_1mp = xp.maximum(xp.log1p(-p), dt(self.LOG_FLOOR))
        return -(t * log_p + (1 - t) * log_1mp).mean()


class BinaryCrossEntropyWithLogits(_BinaryTargets):
    """Sigmoid and binary cross-entropy fused, on logits: PyTorch's
    ``BCEWithLogitsLoss``, mean over all elements. Use it instead of a
    ``Sigmoid`` layer followed by ``BinaryCrossEntropy``.

    loss = mean(max(z, 0) - z t + log(1 + exp(-|z|))) and dL/dz =
    (sigmoid(z) - t) / n: the sigmoid's derivative cancels, so a confidently
    wrong output gets the full step (no learning slowdown), and both are exact
    for any z. One fused backend call (``ops.sigmoid_bce``). The output may
    have any shape (N, ...); a sample is counted correct when every logit has
    the sign its target names (z > 0 predicts 1).
    """

    threshold = 0.0

    def _compute(self, out, y, ops):
        loss, self._grad = ops.sigmoid_bce(out, y)
        return loss


#: Short name, as PyTorch spells it.
BCEWithLogits = BinaryCrossEntropyWithLogits


class MSE(Loss):
    """Mean squared error over every element (PyTorch's ``MSELoss``):
    loss = mean((out - y)^2). Integer labels (N,) with a (N, C>1) output are
    read as one-hot targets (the classic quadratic cost)."""

    def prepare_targets(self, y, out_shape, ops, dtype):
        ndim = getattr(y, "ndim", None)
        if ndim is None and isinstance(y, (list, tuple)):     # a list of labels, too
            ndim = 2 if _is_nested(y) else 1
        if ndim == 1 and len(out_shape) == 2 and out_shape[1] > 1:
            return ops.asarray(check_labels(y, out_shape[0], out_shape[1]))
        return ops.asarray(check_targets(y, out_shape, "y"), dtype=dtype)

    def tracks_accuracy(self, y):
        """For class labels, or one-hot target rows (the classic quadratic cost)."""
        if y.ndim == 1:
            return y.dtype.kind in "iu"
        if y.ndim != 2 or y.shape[1] < 2:
            return False
        return bool(((y == 0) | (y == 1)).all()) and bool((y.sum(axis=1) == 1).all())

    def _compute(self, out, y, ops):
        xp = ops.xp
        if y.ndim == 1 and out.ndim == 2 and out.shape[1] > 1:
            t = xp.zeros_like(out)
            t[xp.arange(out.shape[0]), y] = 1
        else:
            t = y.reshape(out.shape)
        diff = out - t
        self._grad = diff * out.dtype.type(2.0 / out.size)
        return (diff * diff).mean()


LOSSES = {"softmax_cross_entropy": SoftmaxCrossEntropy, "cross_entropy": CrossEntropy,
          "binary_cross_entropy": BinaryCrossEntropy,
          "binary_cross_entropy_with_logits": BinaryCrossEntropyWithLogits, "mse": MSE}


def get_loss(loss):
    """A loss object from an instance, a class, or a name like ``"mse"``."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise ValueError(f"unknown loss {loss!r}; expected a Loss or one of {sorted(LOSSES)}")
