"""``Sequential``: a list of layers, trained by backprop on one backend.

One training step, in full (``training.MatrixStep`` and ``Trainer.run``)::

    Xb  = source.gather(ops, X, idx)         # the mini-batch, into a reused buffer
    model.zero_grad()                        # the next backward writes, later uses add
    out = run_forward(plan, Xb, True)        # Dense+activation fused per step
    L   = loss._compute(out, yb, ops)        # loss and dL/dout, on the backend
    run_backward(plan, dL/dout, need_input_grad=False)   # every dW, db
    for hook in grad_hooks: hook(model)      # e.g. clip the global gradient norm
    optimizer.step(model)                    # one fused update over the flat buffer

``mode="per_sample"`` replaces the middle lines by ``training.PerSampleStep``:
the classic loop over the batch's rows, one sample's backprop at a time,
summing gradients.

Parameters and gradients live in two contiguous buffers
(``flat_parameters()``, ``flat_gradients()``); each layer's ``W``, ``dW``...
are views of them. That makes the optimizer one call per step and gives a
gradient allreduce one buffer to send.
"""

from __future__ import annotations

import numpy

import os

from . import layers as L
from .io import read_file, write_file
from ._validate import (as_dtype, as_host_numeric, check_backend_of, check_labels, check_number,
                        check_positive_int)
from .backends import get_backend, get_ops
from .losses import get_loss
from .optimizers import get_optimizer
from .training import (STEPS, BatchSource, ClipGradNorm, History, ProgressBar, Trainer,
                       TrainingDivergedError)

MODES = ("minibatch", "per_sample", "full_batch")

__all__ = ["Sequential", "History", "TrainingDivergedError", "MODES", "load"]


class _Layout:
    """Where each parameter sits in the model's flat buffers."""

    def __init__(self, segments, params, grads):
        self.segments = segments          # [(path, layer, name, offset, shape)]
        self.params, self.grads = params, grads
        self.size = int(params.shape[0])


class Sequential:
    """Layers applied in order.

    ``Sequential(layers, seed=None, dtype="float32", backend=None)``: parameters
    are (re)initialised from ``seed`` on construction (same seed, same
    weights, on every backend); ``backend`` defaults to the current one
    (``scratchnet.get_backend()``).

    A layer object may appear more than once (tied weights): it is built
    once, listed once in the parameters and updated once per step, and its
    gradient is the sum over its uses. A layer object belongs to one model:
    giving it to a second one raises (use ``model.copy()``).
    """

    def __init__(self, layers, seed=None, dtype="float32", backend=None):
        self.layers = L.check_layer_list(layers, "Sequential")
        self.dtype = as_dtype(dtype)
        self.ops = get_ops(backend) if backend is not None else get_backend()
        if seed is not None:
            check_positive_int(seed, "seed", allow_zero=True)
        self.seed = seed
        L.claim(self.layers, self)
        seeds = numpy.random.SeedSequence(seed)
        init_rng, data_seed = numpy.random.default_rng(seeds.spawn(1)[0]), seeds.spawn(1)[0]
        self._data_rng = numpy.random.default_rng(data_seed)
        self._unique = list(L.unique_layers(self.layers))
        built = set()
        for i, layer in enumerate(self.layers):
            if id(layer) not in built:
                layer.build(self.ops, init_rng, self.dtype, f"layer {i} ({type(layer).__name__})")
                built.update(id(x) for x in L.walk([layer]))
        self._plan = L.fusion_plan(self.layers)
        self._params = list(_named(self.layers, "param_names"))
        self._buffers = list(_named(self.layers, "buffer_names"))
        self.input_shape = L.first_input_shape(self.layers)
        self._shapes = {}
        if self.input_shape is not None:
            self._output_shape(self.input_shape)       # the layers must chain
        self.optimizer = None
        self._trainer = None
        self._layout = None
        #: Whatever the user keeps with the model (JSON-able: a character
        #: vocabulary, the data set's name...); saved and loaded with it.
        self.metadata = {}
        self._pack()

    # -- structure ----------------------------------------------------------
    def _output_shape(self, sample_shape, name=None):
        """Per-sample output shape for per-sample input ``sample_shape``; raises
        ValueError naming the layer that does not fit (and ``name``, the input)."""
        sample_shape = tuple(int(s) for s in sample_shape)
        out = self._shapes.get(sample_shape)
        if out is None:
            shape = sample_shape
            for layer in self.layers:
                shape = layer.output_shape(shape)
            out = self._shapes[sample_shape] = shape
        return out

    @property
    def n_in(self):
        """Input features, for a model whose input is (N, features); else None."""
        s = self.input_shape
        return s[0] if s is not None and len(s) == 1 else None

    @property
    def n_out(self):
        """Output features, for a model whose output is (N, features); else None."""
        if self.input_shape is None:
            return None
        out = self._output_shape(self.input_shape)
        return out[0] if len(out) == 1 else None

    def named_parameters(self):
        """``[(path, layer, attribute)]``, e.g. ``("0.W", dense, "W")``; the gradient
        is ``getattr(layer, "d" + attribute)``. A layer used twice is listed once."""
        return self._params

    def parameters(self):
        """The parameter arrays, in ``named_parameters`` order."""
        return [getattr(layer, name) for _, layer, name in self._params]

    def count_params(self):
        return int(sum(getattr(layer, name).size for _, layer, name in self._params))

    def summary(self, input_shape=None):
        """A table: one row per layer with its output shape and parameter count,
        then the total. ``input_shape`` (per sample, e.g. ``(1, 28, 28)``) is
        needed only when the first layers do not fix it and no data was seen."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape
        rows, seen = [], set()
        for i, layer in enumerate(self.layers):
            if shape is not None:
                shape = layer.output_shape(shape)
            params = [p for p in L.unique_layers([layer]) if id(p) not in seen]
            seen.update(id(p) for p in params)
            count = sum(p.count_params() for p in params)
            tied = " (tied)" if not params else ""
            out = "(N, " + ", ".join(map(str, shape)) + ")" if shape is not None else "?"
            rows.append((str(i), repr(layer) + tied, out, f"{count:,}"))
        head = ("#", "layer", "output shape", "params")
        widths = [max(len(r[k]) for r in [head, *rows]) for k in range(4)]
        widths[1] = min(widths[1], 60)

        def line(r):
            name = r[1] if len(r[1]) <= widths[1] else r[1][:widths[1] - 3] + "..."
            return (f"{r[0]:>{widths[0]}}  {name:<{widths[1]}}  {r[2]:<{widths[2]}}  "
                    f"{r[3]:>{widths[3]}}")
        rule = "-" * len(line(head))
        return "\n".join([line(head), rule, *map(line, rows), rule,
                          f"total parameters: {self.count_params():,}  dtype {self.dtype.name}  "
                          f"backend {self.ops.name}"])

    def __repr__(self):
        return f"Sequential({self.layers!r}, dtype={self.dtype.name!r}, backend={self.ops.name!r})"

    # -- the flat parameter and gradient buffers -----------------------------------
    def _pack(self):
        """Lay every parameter and gradient out in one contiguous buffer each;
        the layers' attributes become views of them."""
        ops, dt = self.ops, self.dtype
        segments, offset = [], 0
        for path, layer, name in self._params:
            shape = tuple(getattr(layer, name).shape)
            segments.append((path, layer, name, offset, shape))
            offset += int(numpy.prod(shape, dtype=numpy.int64))
        params, grads = ops.empty((offset,), dt), ops.zeros((offset,), dt)
        for path, layer, name, start, shape in segments:
            size = int(numpy.prod(shape, dtype=numpy.int64))
            view = params[start:start + size].reshape(shape)
            view[...] = ops.asarray(getattr(layer, name), dtype=dt)
            setattr(layer, name, view)
            setattr(layer, "d" + name, grads[start:start + size].reshape(shape))
        self._layout = _Layout(segments, params, grads)

    def _set_dtype(self, dtype):
        """Convert every parameter, gradient and buffer to ``dtype`` in place of
        the old arrays (gradcheck runs float32 models in float64 this way)."""
        dt = as_dtype(dtype)
        for layer in self._unique:
            for attr in layer._array_attrs():
                value = getattr(layer, attr, None)
                if value is not None:
                    setattr(layer, attr, value.astype(dt))
            layer.dtype, layer._bufs = dt, {}
        self.dtype = dt
        self._pack()

    def _param_layout(self):
        return self._layout

    def flat_parameters(self):
        """Every parameter, as one contiguous 1-D array (the layers hold views)."""
        return self._layout.params

    def flat_gradients(self):
        """Every gradient, as one contiguous 1-D array (the layers hold views)."""
        return self._layout.grads

    def zero_grad(self):
        """Start a new backward pass (gradients of tied layers add up within it)."""
        for layer in self._unique:
            layer.zero_grad()

    def _snapshot(self):
        """Copies of the parameters, buffers and optimizer state (to restore
        after a diverged step)."""
        opt = self.optimizer
        opt_state = None
        if opt is not None and opt._layout is not None and opt._layout[0] is self._layout:
            opt_state = (opt.steps, {k: v.copy() for k, v in opt._layout[2].items()})
        return (self._layout.params.copy(),
                [getattr(layer, name).copy() for _, layer, name in self._buffers], opt, opt_state)

    def _restore(self, snap):
        params, buffers, opt, opt_state = snap
        self._layout.params[...] = params
        for (_, layer, name), value in zip(self._buffers, buffers):
            getattr(layer, name)[...] = value
        if opt_state is not None and opt._layout is not None:
            opt.steps = opt_state[0]
            for k, v in opt_state[1].items():
                opt._layout[2][k][...] = v

    # -- forward and backward ----------------------------------------------
    def _input(self, X, name="X"):
        """Validate X (N, *sample_shape) against the layers and convert it to
        this model's backend and dtype; NaN/inf, also from overflow in the
        cast, are refused naming ``name``. A first layer with an
        ``input_dtype`` (``Embedding``: "int64") gets X as that integer dtype,
        whole numbers only, instead."""
        check_backend_of(X, self.ops, name)
        arr = as_host_numeric(X, name)
        if arr.ndim < 2:
            expected = self.input_shape or ("features",)
            hint = " (one sample? use X.reshape(1, -1))" if arr.ndim == 1 else ""
            raise ValueError(f"{name} must be {len(expected) + 1}-D with shape "
                             f"{_shape_str(expected)}, got shape {tuple(arr.shape)}{hint}")
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
        expected = self.input_shape
        if expected is not None and tuple(arr.shape[1:]) != tuple(expected) and \
                not self._fits(arr.shape[1:]):     # Dense also takes (N, ..., features)
            if len(expected) == 1 and arr.ndim == 2:
                raise ValueError(f"{name} has {arr.shape[1]} features per sample but the model "
                                 f"expects {expected[0]}: expected shape {_shape_str(expected)}, "
                                 f"got {tuple(arr.shape)}")
            if len(expected) == 1:
                raise ValueError(f"{name} must be 2-D with shape {_shape_str(expected)} (or "
                                 f"(N, ..., {expected[0]})), got shape {tuple(arr.shape)} (add "
                                 f"sn.Flatten() as the first layer for image-shaped input)")
            raise ValueError(f"{name} has per-sample shape {tuple(arr.shape[1:])} but the model "
                             f"expects {tuple(expected)}: expected shape {_shape_str(expected)}, "
                             f"got {tuple(arr.shape)}")
        try:
            self._output_shape(arr.shape[1:])
        except ValueError as err:
            raise ValueError(f"{name} of shape {tuple(arr.shape)} does not fit the model: "
                             f"{err}") from None
        input_dtype = getattr(self.layers[0], "input_dtype", None)
        if input_dtype is not None:     # integer ids (Embedding): never through a float
            from .recurrent import as_integer_ids
            host = self.ops.to_host(arr) if not isinstance(arr, numpy.ndarray) else arr
            return self.ops.asarray(as_integer_ids(host, name), dtype=input_dtype)
        with numpy.errstate(over="ignore"):      # overflow is reported below, naming X
            out = self.ops.asarray(arr, dtype=self.dtype)
        if not _all_finite(out, self.ops):
            bad = int((~self.ops.xp.isfinite(out)).sum())
            src = numpy.asarray(arr) if isinstance(arr, numpy.ndarray) else None
            overflow = src is not None and src.dtype.kind == "f" and \
                bool(numpy.isfinite(src).all())
            why = (f" (finite in {src.dtype}, but beyond the range of {self.dtype.name}: "
                   f"scale the data, or use dtype='float64')") if overflow else \
                "; clean the data first"
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s){why}")
        return out

    def _fits(self, sample_shape):
        try:
            self._output_shape(sample_shape)
        except ValueError:
            return False
        return True

    def _set_pass(self, flag):
        for layer in self._unique:
            layer._in_pass = flag

    def _run_forward(self, X, training):
        """Forward through every layer, each use of a layer keeping its own
        context for backward."""
        self._set_pass(True)
        try:
            for layer in self._unique:
                layer._saved.clear()
            return L.run_forward(self._plan, X, training)
        finally:
            self._set_pass(False)

    def _run_backward(self, dY, need_input_grad):
        """Backward through every layer; gradients of a layer's uses add up
        (call ``zero_grad`` first to start from zero)."""
        self._set_pass(True)
        try:
            return L.run_backward(self._plan, dY, need_input_grad=need_input_grad)
        finally:
            self._set_pass(False)

    def forward(self, X, training=False):
        """Output for X (N, ...); keeps what backward needs. ``training`` turns
        on dropout and batch statistics. Returns a fresh array."""
        with self._reusing(False):
            out = self._run_forward(self._input(X), training)
        self._out_shape = out.shape
        return out

    __call__ = forward

    def backward(self, dY):
        """Backprop dL/dout through every layer, overwriting each layer's
        gradients (summed over the uses of a tied layer); returns dL/dX."""
        check_backend_of(dY, self.ops, "dY")
        dY = self.ops.asarray(dY, dtype=self.dtype)
        shape = getattr(self, "_out_shape", None)
        if shape is None:
            raise RuntimeError("backward() needs a forward() first")
        if tuple(dY.shape) != tuple(shape):
            raise ValueError(f"backward: dY has shape {tuple(dY.shape)}, the last output had "
                             f"shape {tuple(shape)}")
        self.zero_grad()
        with self._reusing(False):
            return self._run_backward(dY, need_input_grad=True)

    def predict(self, X, batch_size=1024):
        """Model outputs for X as a NumPy array (N, ...), in evaluation mode."""
        batch_size = check_positive_int(batch_size, "batch_size")
        X = self._input(X)
        with self._reusing(False):     # each batch's output must survive the next
            outs = [self.ops.to_host(self._run_forward(X[i:i + batch_size], False))
                    for i in range(0, X.shape[0], batch_size)]
        return numpy.concatenate(outs) if len(outs) > 1 else numpy.array(outs[0])

    def predict_classes(self, X, batch_size=1024):
        """Predicted class per row (argmax of the outputs), int64 (N,); per
        step (N, T) for sequence outputs (N, T, C)."""
        return self.predict(X, batch_size).argmax(axis=-1)

    def _targets(self, loss, y, X, name="y"):
        out_shape = (X.shape[0], *self._output_shape(X.shape[1:]))
        if loss is None:
            n_out = out_shape[1] if len(out_shape) == 2 else None
            return self.ops.asarray(check_labels(y, X.shape[0], n_out, name))
        return loss.prepare_targets(y, out_shape, self.ops, self.dtype)

    def evaluate(self, X, y, loss=None, batch_size=1024):
        """``{"loss": float, "accuracy": float}`` over (X, y) in evaluation mode
        (loss omitted when no ``loss`` is given)."""
        loss = get_loss(loss) if loss is not None else None
        batch_size = check_positive_int(batch_size, "batch_size")
        X = self._input(X)
        return self._evaluate(X, self._targets(loss, y, X), loss, batch_size)

    def _evaluate(self, X, y, loss, batch_size=1024):
        ops, n = self.ops, X.shape[0]
        total = correct = 0
        # without a loss, y holds integer labels: argmax accuracy
        count_correct = loss.count_correct if loss is not None else \
            (lambda out, yb, ops: ops.count_correct(out, yb))
        track_acc = loss is None or loss.tracks_accuracy(y)
        with self._reusing(True):
            for i in range(0, n, batch_size):
                out = self._run_forward(X[i:i + batch_size], False)
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

    class _Reusing:
        def __init__(self, model, flag):
            self.model, self.flag = model, flag

        def __enter__(self):
            self.previous = [layer._reuse for layer in self.model._unique]
            for layer in self.model._unique:
                layer._reuse = self.flag

        def __exit__(self, *exc):
            for layer, was in zip(self.model._unique, self.previous):
                layer._reuse = was

    def _reusing(self, flag):
        """Within the block, layers reuse their work arrays between calls (True:
        the training loop) or allocate fresh ones (False: results the caller
        keeps); the previous setting comes back afterwards."""
        return Sequential._Reusing(self, flag)

    # -- training -------------------------------------------------------------
    def fit(self, X, y, loss, optimizer, epochs=1, batch_size=32, mode="minibatch",
            validation_data=None, shuffle=True, progress=False, lr_schedule=None,
            callbacks=None, diagnostics=False, clip_grad_norm=None, grad_hooks=None,
            initial_epoch=0, distributed=None):
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
        clip_grad_norm: clip the global gradient norm to this value before
        every update (as ``torch.nn.utils.clip_grad_norm_``).
        grad_hooks: callables ``hook(model)`` run after backward and before
        every update, in order (after the clipping); they may read or change
        the gradients (``model.flat_gradients()``).
        progress: a tqdm bar in a terminal or notebook; one line per epoch in
        a log or pipe.
        With BatchNorm, a last batch of one row is folded into the batch
        before it (batch statistics need two rows).
        Data is moved to the backend once; loss and accuracy stay on the
        backend until the end of each epoch.
        initial_epoch: the epochs already done (a run resumed from a
        ``training.Checkpoint``): trains epochs initial_epoch .. epochs - 1.
        distributed: data-parallel training across the processes of an MPI
        job (``True``, a ``scratchnet.distributed.init()`` world or a
        ``scratchnet.distributed.DataParallel``): every rank passes the same
        X, y and settings and trains on its shard of each global batch of
        ``world_size * batch_size`` rows (``batch_size`` is per rank); the
        gradients are averaged every step, loss and accuracy are global, and
        progress and ``root_only`` callbacks run on rank 0. An exception on
        one rank stops every rank. Without an MPI launcher it is the plain
        single-process run.
        """
        if distributed:
            from .distributed import DataParallel
            dp = DataParallel.of(distributed)
            with dp.guard():         # an error on one rank must end every rank
                return self._fit(X, y, loss, optimizer, epochs, batch_size, mode,
                                 validation_data, shuffle, progress, lr_schedule, callbacks,
                                 diagnostics, clip_grad_norm, grad_hooks, initial_epoch, dp)
        return self._fit(X, y, loss, optimizer, epochs, batch_size, mode, validation_data,
                         shuffle, progress, lr_schedule, callbacks, diagnostics,
                         clip_grad_norm, grad_hooks, initial_epoch, None)

    def _fit(self, X, y, loss, optimizer, epochs, batch_size, mode, validation_data, shuffle,
             progress, lr_schedule, callbacks, diagnostics, clip_grad_norm, grad_hooks,
             initial_epoch, dp):
        loss = get_loss(loss)
        optimizer = get_optimizer(optimizer)
        epochs = check_positive_int(epochs, "epochs", allow_zero=True)
        initial_epoch = check_positive_int(initial_epoch, "initial_epoch", allow_zero=True)
        if initial_epoch > epochs:
            raise ValueError(f"initial_epoch ({initial_epoch}) is past epochs ({epochs}): "
                             f"epochs counts every epoch, those already done included")
        batch_size = check_positive_int(batch_size, "batch_size")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        has_bn = any(getattr(x, "uses_batch_statistics", False) for x in L.walk(self.layers))
        if mode == "per_sample" and has_bn:
            raise ValueError("mode='per_sample' cannot train BatchNorm (batch statistics of one "
                             "sample); use mode='minibatch'")
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError("lr_schedule must be a callable epoch -> lr")
        hooks = [ClipGradNorm(clip_grad_norm)] if clip_grad_norm is not None else []
        for hook in grad_hooks or ():
            if not callable(hook):
                raise TypeError(f"grad_hooks must hold callables hook(model), got {hook!r}")
            hooks.append(hook)
        X = self._input(X)
        y = self._targets(loss, y, X)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a tuple (X_val, y_val)")
            Xv = self._input(validation_data[0], "X_val")
            val = (Xv, self._targets(loss, validation_data[1], Xv, "y_val"))
        self._check_parameters_finite()
        if has_bn and X.shape[0] < 2:
            raise ValueError("BatchNorm needs at least 2 training samples (batch statistics), "
                             f"got {X.shape[0]}")
        callbacks = list(callbacks or [])
        if diagnostics:
            from .diagnostics import Recorder
            callbacks.append(diagnostics if not isinstance(diagnostics, bool) else Recorder())
        if progress:
            callbacks.append(progress if not isinstance(progress, bool) else ProgressBar())
        n = X.shape[0]
        step = STEPS[mode](self, loss)
        if dp is None:
            source = BatchSource(n, n if mode == "full_batch" else batch_size, shuffle=shuffle,
                                 rng=self._data_rng, min_batch=2 if has_bn else 1)
        else:      # the sharded source, the gradient allreduce first among the hooks
            source, step, hooks, callbacks = dp.assemble(
                self, step, n, batch_size, mode, shuffle, 2 if has_bn else 1, hooks, callbacks)
            dp.start(self, optimizer, X, y, {"batch_size": batch_size, "epochs": epochs,
                                             "initial_epoch": initial_epoch, "mode": mode,
                                             "shuffle": bool(shuffle)})
        trainer = Trainer(self, loss, optimizer, step, source,
                          grad_hooks=hooks, callbacks=callbacks, lr_schedule=lr_schedule,
                          validation=val, epoch_sync=dp.epoch_sync if dp is not None else None)
        self.optimizer = optimizer
        with self._reusing(True):
            return trainer.run(X, y, epochs, initial_epoch)

    def _check_parameters_finite(self):
        """Refuse to train from non-finite weights (a bad init, a corrupt file,
        an earlier divergence), naming the parameter."""
        if _all_finite(self._layout.params, self.ops):
            return
        for path, layer, name in self._params:
            if not _all_finite(getattr(layer, name), self.ops):
                raise ValueError(f"parameter {path} ({layer.name}) contains NaN or infinite "
                                 "values (from its init, a loaded file or an earlier diverged "
                                 "run); re-initialise the model")

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
        self.ops = ops
        self._pack()
        return self

    def get_config(self):
        return {"layers": [L.layer_config(layer) for layer in self.layers],
                "dtype": self.dtype.name, "seed": self.seed, "tied": self._tied_positions()}

    def _tied_positions(self):
        """For each place in ``walk(layers)``, the first place of the same layer
        object (a list, or None when no layer is used twice)."""
        first, out = {}, []
        for i, layer in enumerate(L.walk(self.layers)):
            out.append(first.setdefault(id(layer), i))
        return out if len(first) < len(out) else None

    def state_arrays(self):
        """Parameters and buffers as host arrays, keyed ``param:<path>`` /
        ``buffer:<path>``."""
        out = {}
        for path, layer, name in self._params:
            out["param:" + path] = self.ops.to_host(getattr(layer, name))
        for path, layer, name in self._buffers:
            out["buffer:" + path] = self.ops.to_host(getattr(layer, name))
        return out

    def load_state_arrays(self, arrays, source="state"):
        """Set parameters and buffers from ``state_arrays()``-style host arrays;
        shapes must match exactly. Values are copied in place."""
        wanted = {"param:" + p: (layer, name) for p, layer, name in self._params}
        wanted.update({"buffer:" + p: (layer, name) for p, layer, name in self._buffers})
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
            current[...] = self.ops.asarray(numpy.array(value, dtype=self.dtype))

    def get_state(self):
        """The whole model as ``(config, arrays)``: a JSON-able config (layers,
        dtype, seed, tied layers, optimizer, random-generator positions) and
        host arrays (parameters, buffers, optimizer state). ``from_state``
        turns it back into a model; ``io`` writes it to a file."""
        config = {**self.get_config(), "backend": self.ops.name, "optimizer": None,
                  "rng": self._rng_states(), "metadata": _json_metadata(self.metadata)}
        arrays = self.state_arrays()
        opt = self.optimizer
        if opt is not None:
            config["optimizer"] = {"class": type(opt).__name__, "config": opt.get_config(),
                                   "steps": {p: st["step"] for p, st in opt.state.items()}}
            for p, st in opt.state.items():
                for k in opt.state_names:
                    arrays[f"opt:{p}:{k}"] = self.ops.to_host(st[k])
        return config, arrays

    @classmethod
    def from_state(cls, config, arrays, backend=None, source="state"):
        """Rebuild a model from ``get_state()``'s output (checked: a config or
        arrays that do not match raise ValueError naming ``source``)."""
        from .optimizers import optimizer_from_config
        from .state import check_state
        ops = get_ops(backend) if backend is not None else None
        layers = check_state(config, arrays, source)
        try:
            model = cls(layers, seed=config.get("seed"), dtype=config["dtype"], backend=ops)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{source}: not a valid scratchnet model: {err}") from None
        arrays = dict(arrays)
        opt_arrays = {k: arrays.pop(k) for k in list(arrays) if k.startswith("opt:")}
        model.load_state_arrays(arrays, source=source)
        model._restore_rng_states(config.get("rng") or {})
        model.metadata = dict(config.get("metadata") or {})
        if config.get("optimizer"):
            try:
                opt = optimizer_from_config(config["optimizer"])
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from None
            shapes = {p: tuple(getattr(layer, name).shape) for p, layer, name in model._params}
            steps = config["optimizer"].get("steps", {})
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in steps.values()):
                raise ValueError(f"{source}: the optimizer's step counts must be integers >= 0")
            state = {}
            for p, step in steps.items():
                if p not in shapes:
                    raise ValueError(f"{source}: optimizer state for unknown parameter {p!r}")
                state[p] = {}
                for k in opt.state_names:
                    key = f"opt:{p}:{k}"
                    if key not in opt_arrays:
                        raise ValueError(f"{source}: optimizer state {key} is missing")
                    if opt_arrays[key].shape != shapes[p]:
                        raise ValueError(f"{source}: optimizer state {key} has shape "
                                         f"{opt_arrays[key].shape}, the parameter {shapes[p]}")
                    state[p][k] = model.ops.asarray(opt_arrays[key], dtype=model.dtype)
            opt.load_state(max(steps.values(), default=0), state)
            model.optimizer = opt
        return model

    def _rng_states(self):
        """Positions of the shuffling and dropout generators, so that training
        resumed from a file continues the same random streams. A backend whose
        generator state is not plain data (JSON) leaves its dropout streams out."""
        import json
        states = {"data": self._data_rng.bit_generator.state, "dropout": {},
                  "backend": self.ops.name}
        for i, layer in enumerate(L.walk(self.layers)):
            if isinstance(layer, L.Dropout):
                try:
                    state = self.ops.rng_state(layer.rng)
                    json.dumps(state)
                except (TypeError, ValueError, NotImplementedError):
                    continue
                states["dropout"][str(i)] = state
        return states

    def _restore_rng_states(self, states):
        if "data" in states:
            self._data_rng.bit_generator.state = states["data"]
        if states.get("backend") != self.ops.name:
            return     # another backend's dropout generator: start from the seed
        for i, layer in enumerate(L.walk(self.layers)):
            state = states.get("dropout", {}).get(str(i))
            if isinstance(layer, L.Dropout) and state is not None:
                self.ops.set_rng_state(layer.rng, state)

    def copy(self, dtype=None, backend=None, seed=None):
        """An independent copy of the weights and buffers (tied layers stay tied
        in the copy), optionally in another dtype or on another backend;
        ``seed`` (default: this model's) seeds the copy's data order and dropout
        masks."""
        from .state import layers_from_config
        config = self.get_config()
        clone = Sequential(layers_from_config(config), seed=self.seed if seed is None else seed,
                           dtype=dtype or self.dtype, backend=backend or self.ops)
        clone.load_state_arrays(self.state_arrays())
        clone.metadata = _json_metadata(self.metadata)
        return clone

    def save(self, path):
        """Write the model (and its optimizer's state, if any) to ``path`` (.npz),
        atomically: a failed save leaves any previous file intact."""
        write_file(path, *self.get_state())


def load(path, backend=None):
    """Load a model saved with ``model.save``; onto ``backend`` (a name) or the
    current backend. A model saved on a GPU loads on a CPU-only machine."""
    config, arrays = read_file(path)
    source = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    return Sequential.from_state(config, arrays, backend=backend, source=source)


def _named(layers, kind):
    """``(path, layer, attribute)`` for every parameter (``kind="param_names"``)
    or buffer; a layer used at several places is listed at its first."""
    seen = set()

    def visit(layers, prefix):
        for i, layer in enumerate(layers):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            for name in getattr(layer, kind):
                yield f"{prefix}{i}.{name}", layer, name
            yield from visit(layer.children(), f"{prefix}{i}.")

    yield from visit(layers, "")


def _shape_str(shape):
    return "(N, " + ", ".join(map(str, shape)) + ")"


def _json_metadata(metadata):
    """A copy of ``model.metadata`` through JSON (what a model file keeps);
    TypeError naming what is not JSON-able."""
    import json
    if not isinstance(metadata, dict):
        raise TypeError(f"model.metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as err:
        raise TypeError(f"model.metadata must hold JSON data (str, numbers, lists, dicts): "
                        f"{err}") from None


def _all_finite(arr, ops):
    """No NaN or inf: min and max propagate NaN and show inf, in two vectorised
    passes with no temporary as large as the data."""
    xp = ops.xp
    if arr.size == 0 or arr.dtype.kind not in "fc":
        return True
    return bool(xp.isfinite(arr.min())) and bool(xp.isfinite(arr.max()))
