"""``Sequential``: a list of layers, trained by backprop on one backend.

One training step, in full (``_train_step``)::

    Xb  = ops.take_rows(X, idx)              # gather the mini-batch
    out = run_forward(plan, Xb, True)        # Dense+activation fused per step
    L   = loss._compute(out, yb, ops)        # loss and dL/dout, on the backend
    run_backward(plan, dL/dout, need_input_grad=False)   # every dW, db
    optimizer.step(model)                    # one fused update per parameter

``mode="per_sample"`` replaces the middle three lines by the classic loop
over the batch's rows, one sample's backprop at a time, summing gradients.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

import numpy

from . import layers as L
from ._validate import (as_dtype, check_backend_of, check_features, check_labels, check_number,
                        check_positive_int)
from .backends import get_backend, get_ops
from .losses import get_loss
from .optimizers import OPTIMIZERS, Optimizer

MODES = ("minibatch", "per_sample", "full_batch")


class TrainingDivergedError(FloatingPointError, RuntimeError):
    """The training loss became NaN or infinite."""


class History:
    """What ``fit`` returns: ``history.history["loss"]`` etc., one value per epoch;
    ``history.diagnostics`` holds the recorder's report when ``fit`` was asked
    for one (else None)."""

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.diagnostics = None

    def append(self, epoch, logs):
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class Sequential:
    """Layers applied in order.

    ``Sequential(layers, seed=None, dtype="float32", backend=None)``: parameters
    are (re)initialised from ``seed`` on construction (same seed, same
    weights, on every backend); ``backend`` defaults to the current one
    (``scratchnet.get_backend()``).
    """

    def __init__(self, layers, seed=None, dtype="float32", backend=None):
        self.layers = L.check_layer_list(layers, "Sequential")
        self.dtype = as_dtype(dtype)
        self.ops = get_ops(backend) if backend is not None else get_backend()
        if seed is not None:
            check_positive_int(seed, "seed", allow_zero=True)
        self.seed = seed
        seeds = numpy.random.SeedSequence(seed)
        init_rng, data_seed = numpy.random.default_rng(seeds.spawn(1)[0]), seeds.spawn(1)[0]
        self._data_rng = numpy.random.default_rng(data_seed)
        for i, layer in enumerate(self.layers):
            layer.build(self.ops, init_rng, self.dtype, f"layer {i} ({type(layer).__name__})")
        self._plan = L.fusion_plan(self.layers)
        self._params = list(_named_parameters(self.layers, ""))
        self.n_in = _input_features(self.layers)
        self.n_out = self._infer_features(self.n_in) if self.n_in is not None else None
        self.optimizer = None
        self._xbufs = {}

    # -- structure ----------------------------------------------------------
    def _infer_features(self, n_in):
        n = n_in
        for layer in self.layers:
            n = layer.out_features(n)
        return n

    def named_parameters(self):
        """``[(path, layer, attribute)]``, e.g. ``("0.W", dense, "W")``; the gradient
        is ``getattr(layer, "d" + attribute)``."""
        return self._params

    def parameters(self):
        """The parameter arrays, in ``named_parameters`` order."""
        return [getattr(layer, name) for _, layer, name in self._params]

    def count_params(self):
        return int(sum(getattr(layer, name).size for _, layer, name in self._params))

    def summary(self):
        """A table of layers, output features and parameter counts."""
        rows, n = [], self.n_in
        for i, layer in enumerate(self.layers):
            n = layer.out_features(n) if n is not None else None
            count = sum(getattr(lay, p).size for _, lay, p in _named_parameters([layer], ""))
            rows.append(f"{i:>3}  {layer!r:<44} {str(n):>8} {count:>10,}")
        head = f"{'#':>3}  {'layer':<44} {'out':>8} {'params':>10}"
        return "\n".join([head, *rows, f"total parameters: {self.count_params():,}  "
                          f"dtype {self.dtype.name}  backend {self.ops.name}"])

    def __repr__(self):
        return f"Sequential({self.layers!r}, dtype={self.dtype.name!r}, backend={self.ops.name!r})"

    # -- forward and backward ----------------------------------------------
    def _input(self, X, name="X"):
        """Validate and convert an input batch to this model's backend and dtype."""
        X = check_features(X, self.ops, self.n_in, name)
        return self.ops.asarray(X, dtype=self.dtype)

    def forward(self, X, training=False):
        """Output for X (N, n_in); keeps what backward needs. ``training`` turns
        on dropout and batch statistics. Returns a fresh array."""
        with self._reusing(False):
            out = L.run_forward(self._plan, self._input(X), training)
        self._out_shape = out.shape
        return out

    __call__ = forward

    def backward(self, dY):
        """Backprop dL/dout through every layer, overwriting each layer's
        gradients; returns dL/dX."""
        check_backend_of(dY, self.ops, "dY")
        dY = self.ops.asarray(dY, dtype=self.dtype)
        shape = getattr(self, "_out_shape", None)
        if shape is None:
            raise RuntimeError("backward() needs a forward() first")
        if tuple(dY.shape) != tuple(shape):
            raise ValueError(f"backward: dY has shape {tuple(dY.shape)}, the last output had "
                             f"shape {tuple(shape)}")
        with self._reusing(False):
            return L.run_backward(self._plan, dY, need_input_grad=True)

    def predict(self, X, batch_size=1024):
        """Model outputs for X as a NumPy array (N, n_out), in evaluation mode."""
        X = self._input(X)
        with self._reusing(False):     # each batch's output must survive the next
            outs = [self.ops.to_host(L.run_forward(self._plan, X[i:i + batch_size], False))
                    for i in range(0, X.shape[0], batch_size)]
        return numpy.concatenate(outs) if len(outs) > 1 else numpy.array(outs[0])

    def predict_classes(self, X, batch_size=1024):
        """Predicted class per row (argmax of the outputs), int64 (N,)."""
        return self.predict(X, batch_size).argmax(axis=1)

    def evaluate(self, X, y, loss=None, batch_size=1024):
        """``{"loss": float, "accuracy": float}`` over (X, y) in evaluation mode
        (loss omitted when no ``loss`` is given)."""
        loss = get_loss(loss) if loss is not None else None
        X = self._input(X)
        if loss is None:
            y = self._labels_only(y, X.shape[0])
        else:
            y = loss.prepare_targets(y, (X.shape[0], self.n_out), self.ops, self.dtype)
        return self._evaluate(X, y, loss, batch_size)

    def _labels_only(self, y, n):
        return self.ops.asarray(check_labels(y, n, self.n_out))

    def _evaluate(self, X, y, loss, batch_size=1024):
        ops, n = self.ops, X.shape[0]
        total = correct = 0
        # without a loss, y holds integer labels: argmax accuracy
        count_correct = loss.count_correct if loss is not None else \
            (lambda out, yb, ops: ops.count_correct(out, yb))
        track_acc = loss is None or loss.tracks_accuracy(y)
        with self._reusing(True):
            for i in range(0, n, batch_size):
                out = L.run_forward(self._plan, X[i:i + batch_size], False)
                yb = y[i:i + batch_size]
                if loss is not None:
                    total = total + loss._compute(out, yb, ops) * out.shape[0]
                if track_acc:
                    correct = correct + count_correct(out, yb, ops)
        result = {}
        if loss is not None:
            result["loss"] = float(total) / n
        if track_acc:
            result["accuracy"] = float(correct) / n
        return result

    @contextlib.contextmanager
    def _reusing(self, flag):
        """Within the block, layers reuse their work arrays between calls (True:
        the training loop) or allocate fresh ones (False: results the caller
        keeps); the previous setting comes back afterwards."""
        previous = [layer._reuse for layer in self.layers]
        for layer in self.layers:
            layer.set_reuse(flag)
        try:
            yield
        finally:
            for layer, was in zip(self.layers, previous):
                layer.set_reuse(was)

    # -- training -------------------------------------------------------------
    def fit(self, X, y, loss, optimizer, epochs=1, batch_size=32, mode="minibatch",
            validation_data=None, shuffle=True, progress=False, lr_schedule=None,
            callbacks=None, diagnostics=False):
        """Train; returns a ``History`` with per-epoch ``loss``, ``accuracy`` and,
        with ``validation_data=(Xv, yv)``, ``val_loss`` and ``val_accuracy``.

        mode: "minibatch" (matrix backprop per batch), "per_sample" (one
        sample's backprop at a time, gradients summed over the batch: the
        classic loop, same update) or "full_batch" (one step per epoch).
        lr_schedule: callable epoch -> lr (see ``scratchnet.schedules``).
        callbacks: objects with any of ``on_train_begin(model)``,
        ``on_epoch_begin(model, epoch)``, ``on_batch_end(model, step)``,
        ``on_epoch_end(model, epoch, logs)``, ``on_train_end(model, history)``.
        diagnostics: True records per-layer training statistics (see
        ``scratchnet.diagnostics``) in ``history.diagnostics``.
        Data is moved to the backend once; loss and accuracy stay on the
        backend until the end of each epoch.
        """
        loss = get_loss(loss)
        optimizer = _get_optimizer(optimizer)
        epochs = check_positive_int(epochs, "epochs", allow_zero=True)
        batch_size = check_positive_int(batch_size, "batch_size")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if mode == "per_sample" and any(isinstance(x, L.BatchNorm) for x in L.walk(self.layers)):
            raise ValueError("mode='per_sample' cannot train BatchNorm (batch statistics of one "
                             "sample); use mode='minibatch'")
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError("lr_schedule must be a callable epoch -> lr")
        ops = self.ops
        X = self._input(X)
        if self.n_out is None:
            self.n_out = self._infer_features(X.shape[1])
        y = loss.prepare_targets(y, (X.shape[0], self.n_out), ops, self.dtype)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a tuple (X_val, y_val)")
            Xv = self._input(validation_data[0], "X_val")
            val = (Xv, loss.prepare_targets(validation_data[1], (Xv.shape[0], self.n_out), ops,
                                            self.dtype))
        callbacks = list(callbacks or [])
        if diagnostics:
            from .diagnostics import Recorder
            callbacks.append(diagnostics if not isinstance(diagnostics, bool) else Recorder())
        n = X.shape[0]
        bs = n if mode == "full_batch" else min(batch_size, n)
        history = History()
        track_acc = loss.tracks_accuracy(y)
        _call(callbacks, "on_train_begin", self)
        with self._reusing(True):
            for epoch in range(epochs):
                if lr_schedule is not None:
                    optimizer.lr = check_number(lr_schedule(epoch), "lr_schedule(epoch)", low=0.0)
                _call(callbacks, "on_epoch_begin", self, epoch)
                t0 = time.perf_counter()
                order = self._data_rng.permutation(n) if shuffle else numpy.arange(n)
                total, correct = self._train_epoch(X, y, ops.asarray(order), bs, loss, optimizer,
                                                   mode, callbacks, epoch, epochs, progress)
                logs = {"loss": float(total) / n}
                if not math.isfinite(logs["loss"]):
                    raise TrainingDivergedError(
                        f"training diverged: the loss became {logs['loss']} in epoch {epoch + 1}; "
                        f"lower the learning rate (now {optimizer.lr:g}) or check the data")
                if track_acc:
                    logs["accuracy"] = float(correct) / n
                if val is not None:
                    logs.update({"val_" + k: v for k, v in self._evaluate(*val, loss).items()})
                logs["lr"] = optimizer.lr
                logs["time"] = time.perf_counter() - t0
                history.append(epoch, logs)
                _call(callbacks, "on_epoch_end", self, epoch, logs)
                if progress:
                    _print_epoch(epoch, epochs, logs)
        _call(callbacks, "on_train_end", self, history)
        for cb in callbacks:
            if hasattr(cb, "report"):
                history.diagnostics = cb.report()
        return history

    def _train_epoch(self, X, y, order, bs, loss, optimizer, mode, callbacks, epoch, epochs,
                     progress):
        ops, n = self.ops, X.shape[0]
        total = correct = 0
        check_each_step = ops.xp is numpy        # free on the CPU; a sync on a GPU
        n_batches = -(-n // bs)
        tick = max(1, n_batches // 40)
        on_batch_end = [cb.on_batch_end for cb in callbacks if hasattr(cb, "on_batch_end")]
        per_sample = mode == "per_sample"
        show_bar = progress and sys.stderr.isatty()   # epoch lines only, in logs and pipes
        for b, start in enumerate(range(0, n, bs)):
            idx = order[start:start + bs]
            Xb = ops.take_rows(X, idx, out=self._batch_buffer(X, len(idx)))
            yb = ops.take_rows(y, idx)
            if per_sample:
                value, hits = self._per_sample_gradients(Xb, yb, loss)
            else:
                out = L.run_forward(self._plan, Xb, True)
                value = loss._compute(out, yb, ops)
                L.run_backward(self._plan, loss.backward(), need_input_grad=False)
                hits = loss.count_correct(out, yb, ops)
            if check_each_step and not math.isfinite(value):
                raise TrainingDivergedError(
                    f"training diverged: the loss became {float(value)} at step {b + 1} of epoch "
                    f"{epoch + 1}; lower the learning rate (now {optimizer.lr:g}) or check the data")
            optimizer.step(self)
            total = total + value * len(idx)
            correct = correct + hits
            for fn in on_batch_end:
                fn(self, b)
            if show_bar and (b % tick == 0 or b == n_batches - 1):
                _print_bar(epoch, epochs, b + 1, n_batches)
        return total, correct

    def _batch_buffer(self, X, rows):
        """The array each mini-batch of ``rows`` rows is gathered into (reused:
        a full batch and the epoch's last, shorter one)."""
        key = (rows, X.shape[1], X.dtype.str)
        if key not in self._xbufs:
            if len(self._xbufs) > 2:
                self._xbufs.clear()
            self._xbufs[key] = self.ops.empty((rows, X.shape[1]), X.dtype)
        return self._xbufs[key]

    def _per_sample_gradients(self, Xb, yb, loss):
        """The classic loop: backprop one sample (one row) at a time and sum the
        gradients; the mean over the batch is the mini-batch gradient."""
        ops, n = self.ops, Xb.shape[0]
        sums = [ops.zeros(getattr(layer, "d" + name).shape, self.dtype)
                for _, layer, name in self._params]
        total = correct = 0
        for i in range(n):
            x, t = Xb[i:i + 1], yb[i:i + 1]
            out = L.run_forward(self._plan, x, True)
            total = total + loss._compute(out, t, ops)
            correct = correct + loss.count_correct(out, t, ops)
            L.run_backward(self._plan, loss.backward(), need_input_grad=False)
            for acc, (_, layer, name) in zip(sums, self._params):
                acc += getattr(layer, "d" + name)
        scale = self.dtype.type(1.0 / n)
        for acc, (_, layer, name) in zip(sums, self._params):
            getattr(layer, "d" + name)[...] = acc * scale
        return total / n, correct

    # -- moving, copying, saving -------------------------------------------------
    def to(self, backend):
        """Move parameters, buffers and optimizer state to ``backend`` (a name);
        returns the model."""
        ops = get_ops(backend)
        old = self.ops
        for layer in self.layers:
            layer.to(ops)
        if self.optimizer is not None:
            self.optimizer.to(ops, old)
        self._xbufs = {}
        self.ops = ops
        return self

    def get_config(self):
        return {"layers": [L.layer_config(layer) for layer in self.layers],
                "dtype": self.dtype.name, "seed": self.seed}

    def state_arrays(self):
        """Parameters and buffers as host arrays, keyed ``param:<path>`` /
        ``buffer:<path>``."""
        out = {}
        for path, layer, name in self._params:
            out["param:" + path] = self.ops.to_host(getattr(layer, name))
        for path, layer, name in _named_buffers(self.layers, ""):
            out["buffer:" + path] = self.ops.to_host(getattr(layer, name))
        return out

    def load_state_arrays(self, arrays, source="state"):
        """Set parameters and buffers from ``state_arrays()``-style host arrays;
        shapes must match exactly."""
        wanted = {"param:" + p: (layer, name) for p, layer, name in self._params}
        wanted.update({"buffer:" + p: (layer, name) for p, layer, name in
                       _named_buffers(self.layers, "")})
        missing = sorted(set(wanted) - set(arrays))
        extra = sorted(set(arrays) - set(wanted))
        if missing or extra:
            raise ValueError(f"{source} does not match the model: missing {missing}, "
                             f"unexpected {extra}")
        for key, (layer, name) in wanted.items():
            current = getattr(layer, name)
            value = numpy.asarray(arrays[key])
            if value.shape != tuple(current.shape):
                raise ValueError(f"{source}: {key} has shape {value.shape}, the model expects "
                                 f"{tuple(current.shape)}")
            # a copy: the source may be another model's live arrays (copy())
            setattr(layer, name, self.ops.asarray(numpy.array(value, dtype=self.dtype)))

    def copy(self, dtype=None, backend=None, seed=None):
        """An independent copy of the weights and buffers, optionally in another
        dtype or on another backend; ``seed`` (default: this model's) seeds the
        copy's data order and dropout masks."""
        clone = Sequential([L.layer_from_config(s) for s in self.get_config()["layers"]],
                           seed=self.seed if seed is None else seed,
                           dtype=dtype or self.dtype, backend=backend or self.ops)
        clone.load_state_arrays(self.state_arrays())
        return clone

    def save(self, path):
        """Write the model (and its optimizer's state, if any) to ``path`` (.npz),
        atomically: a failed save leaves any previous file intact."""
        from .io import save_model
        save_model(self, path)


def _get_optimizer(opt):
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, str) and opt.lower() in OPTIMIZERS:
        return OPTIMIZERS[opt.lower()]()
    raise ValueError(f"unknown optimizer {opt!r}; expected an Optimizer (sn.SGD, sn.Adam) "
                     f"or one of {sorted(OPTIMIZERS)}")


def _call(callbacks, method, *args):
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            fn(*args)


def _named_parameters(layers, prefix):
    for i, layer in enumerate(layers):
        for name in layer.param_names:
            yield f"{prefix}{i}.{name}", layer, name
        yield from _named_parameters(layer.children(), f"{prefix}{i}.")


def _named_buffers(layers, prefix):
    for i, layer in enumerate(layers):
        for name in layer.buffer_names:
            yield f"{prefix}{i}.{name}", layer, name
        yield from _named_buffers(layer.children(), f"{prefix}{i}.")


def _input_features(layers):
    """Input feature count fixed by the first Dense/BatchNorm, or None."""
    for layer in layers:
        if isinstance(layer, L.Dense):
            return layer.n_in
        if isinstance(layer, L.BatchNorm):
            return layer.n
        if layer.children():
            n = _input_features(layer.children())
            if n is not None:
                return n
    return None


def _print_bar(epoch, epochs, done, total, width=30):
    filled = width * done // total
    sys.stderr.write(f"\repoch {epoch + 1}/{epochs} [{'=' * filled}{'.' * (width - filled)}] "
                     f"{done}/{total}")
    sys.stderr.flush()


def _print_epoch(epoch, epochs, logs):
    parts = [f"{k} {v:.4f}" for k, v in logs.items() if k not in ("lr", "time")]
    sys.stderr.write(f"\repoch {epoch + 1}/{epochs}  " + "  ".join(parts) +
                     f"  ({logs['time']:.2f} s)" + " " * 10 + "\n")
    sys.stderr.flush()
