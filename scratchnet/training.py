"""The training loop, in parts.

``Sequential.fit`` assembles these and runs them; each part can be used, read
or replaced on its own:

* ``BatchSource``: which rows each step trains on (order, shuffling) and the
  gather of those rows into a reused buffer, for inputs of any rank.
* a *train step*, ``step(Xb, yb) -> (loss, correct)``, that fills the
  gradients: ``MatrixStep`` (backprop on the whole batch as matrix products)
  and ``PerSampleStep`` (the classic loop: one sample at a time, gradients
  summed), side by side, giving the same update.
* *gradient hooks*, ``hook(model)``, run after backward and before the update
  (``ClipGradNorm``; ``distributed.AllreduceGradients``, the data-parallel
  gradient average).
* *callbacks*: objects with any of ``on_train_begin(model)``,
  ``on_epoch_begin(model, epoch)``, ``on_batch_end(model, step)``,
  ``on_epoch_end(model, epoch, logs)``, ``on_train_end(model, history)``
  (``ProgressBar``, ``DivergenceCheck``, ``diagnostics.Recorder``).
* ``Trainer``: the epoch loop that calls them in order; an optional
  ``epoch_sync(model, epoch, sums)`` runs after each epoch's last step, before
  its logs (the data-parallel reduction of loss and accuracy,
  ``scratchnet.distributed``).
* ``Checkpoint`` and ``load_checkpoint``: the model, optimizer state, random
  generators and epoch count after every epoch, written atomically; a run
  resumed from one continues the same trajectory.
"""

from __future__ import annotations

import math
import sys
import time

import numpy

from ._progress import Progress
from ._validate import check_number


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


# -- the batch source -------------------------------------------------------------

class BatchSource:
    """The index arrays of one epoch's mini-batches, and the gather.

    n: rows in the data; batch_size: rows per step; shuffle: a new order each
    epoch drawn from ``rng``; min_batch: a last batch with fewer rows is
    folded into the one before it (BatchNorm needs 2 rows for batch
    statistics: a data set of 129 rows at batch 64 gives batches of 64 and
    65, not 64, 64 and 1).
    """

    def __init__(self, n, batch_size, shuffle=True, rng=None, min_batch=1):
        self.n, self.batch_size, self.shuffle = int(n), int(batch_size), bool(shuffle)
        self.rng = rng if rng is not None else numpy.random.default_rng()
        self.min_batch = int(min_batch)
        self._bufs = {}

    def bounds(self):
        """``[(start, stop), ...]`` into the epoch's order."""
        bs, n = min(self.batch_size, self.n), self.n
        cuts = list(range(0, n, bs)) + [n]
        if len(cuts) > 2 and cuts[-1] - cuts[-2] < self.min_batch:
            del cuts[-2]
        return list(zip(cuts[:-1], cuts[1:]))

    def __len__(self):
        return len(self.bounds())

    def order(self):
        """This epoch's row order (advances the shuffling generator)."""
        return self.rng.permutation(self.n) if self.shuffle else numpy.arange(self.n)

    def epoch(self, ops):
        """The index arrays of one epoch, on backend ``ops``."""
        order = ops.asarray(self.order())
        return [order[a:b] for a, b in self.bounds()]

    def gather(self, ops, X, idx):
        """``X[idx]`` gathered into a buffer reused between steps (one per batch
        shape: a full batch and the epoch's last, shorter one)."""
        key = (len(idx), tuple(X.shape[1:]), X.dtype.str)
        buf = self._bufs.get(key)
        if buf is None:
            if len(self._bufs) > 2:
                self._bufs.clear()
            buf = self._bufs[key] = ops.empty((len(idx), *X.shape[1:]), X.dtype)
        if X.ndim == 2:
            return ops.take_rows(X, idx, out=buf)
        flat = ops.take_rows(X.reshape(X.shape[0], -1), idx, out=buf.reshape(len(idx), -1))
        return flat.reshape(buf.shape)


# -- train steps -------------------------------------------------------------------

class MatrixStep:
    """Backprop on the whole mini-batch at once: every layer's forward and
    backward is a few matrix products over all rows."""

    def __init__(self, model, loss):
        self.model, self.loss = model, loss

    def __call__(self, Xb, yb):
        model, loss, ops = self.model, self.loss, self.model.ops
        model.zero_grad()
        out = model._run_forward(Xb, training=True)
        value = loss._compute(out, yb, ops)
        model._run_backward(loss.backward(), need_input_grad=False)
        return value, loss.count_correct(out, yb, ops)


class PerSampleStep:
    """The classic loop of *Neural Networks and Deep Learning*: backprop one
    sample at a time and sum its gradients; the mean over the batch is the
    mini-batch gradient, so the update equals ``MatrixStep``'s."""

    def __init__(self, model, loss):
        self.model, self.loss = model, loss
        self._sum = None

    def __call__(self, Xb, yb):
        model, loss, ops = self.model, self.loss, self.model.ops
        grads = model.flat_gradients()
        if self._sum is None or self._sum.shape != grads.shape:
            self._sum = ops.zeros(grads.shape, grads.dtype)
        acc = self._sum
        acc[...] = 0
        n = Xb.shape[0]
        total = correct = 0
        for i in range(n):
            x, t = Xb[i:i + 1], yb[i:i + 1]
            model.zero_grad()
            out = model._run_forward(x, training=True)
            total = total + loss._compute(out, t, ops)
            correct = correct + loss.count_correct(out, t, ops)
            model._run_backward(loss.backward(), need_input_grad=False)
            acc += grads
        ops.xp.multiply(acc, grads.dtype.type(1.0 / n), out=grads)
        return total / n, correct


STEPS = {"minibatch": MatrixStep, "full_batch": MatrixStep, "per_sample": PerSampleStep}


# -- gradient hooks ----------------------------------------------------------------

def clip_grad_norm(model, max_norm):
    """Scale every gradient of ``model`` so that their global L2 norm is at most
    ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``: the factor is
    max_norm / (norm + 1e-6), applied only when below 1. Returns the norm
    before clipping (a 0-d backend array: no host sync on a GPU)."""
    ops = model.ops
    g = model.flat_gradients()
    norm = ops.xp.sqrt(ops.xp.vdot(g, g))
    coef = ops.xp.minimum(g.dtype.type(max_norm) / (norm + g.dtype.type(1e-6)),
                          g.dtype.type(1.0))
    g *= coef.astype(g.dtype)
    return norm


class ClipGradNorm:
    """Gradient hook: ``clip_grad_norm(model, max_norm)`` before every update;
    the last norm is kept on ``last_norm``."""

    def __init__(self, max_norm):
        self.max_norm = check_number(max_norm, "clip_grad_norm", low=0.0, low_open=True,
                                     finite=True)
        self.last_norm = None

    def __call__(self, model):
        self.last_norm = clip_grad_norm(model, self.max_norm)


# -- callbacks -----------------------------------------------------------------------

class Callback:
    """Base class for callbacks; every method is optional."""

    def on_train_begin(self, model): pass
    def on_epoch_begin(self, model, epoch): pass
    def on_batch_end(self, model, step): pass
    def on_epoch_end(self, model, epoch, logs): pass
    def on_train_end(self, model, history): pass


def _interactive(stream):
    """A terminal or a Jupyter kernel: somewhere a live bar renders."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    return "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel")


class ProgressBar(Callback):
    """Progress of ``fit``: a tqdm bar per epoch (count, rate, ETA, running
    loss) in a terminal or a notebook (``tqdm.auto``); in a log or a pipe, one
    clean line per epoch (no carriage returns, no trailing spaces). In
    data-parallel training only rank 0 shows it (``root_only``)."""

    root_only = True

    def __init__(self, stream=None, interactive=None):
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = _interactive(self.stream) if interactive is None else interactive
        self.trainer = self.progress = None

    def on_train_begin(self, model):
        self.trainer = getattr(model, "_trainer", None)

    def on_epoch_begin(self, model, epoch):
        steps = self.trainer.steps_per_epoch if self.trainer else 1
        epochs = self.trainer.epochs if self.trainer else epoch + 1
        self.progress = Progress(steps, desc=f"epoch {epoch + 1}/{epochs}", file=self.stream,
                                 bar=self.interactive)
        self._tick, self._done = max(1, steps // 50), 0

    def on_batch_end(self, model, step):
        if not self.progress.has_bar or ((step + 1) % self._tick and
                                         step + 1 != self.trainer.steps_per_epoch):
            return
        self.progress.update(step + 1 - self._done,
                             postfix=f"loss {self.trainer.running_loss():.4f}")
        self._done = step + 1

    def on_epoch_end(self, model, epoch, logs):
        line = format_epoch(epoch, self.trainer.epochs if self.trainer else epoch + 1, logs)
        if self.progress.has_bar:
            self.progress.update(0, postfix=line.split("  ", 1)[1])
        else:
            self.progress.note(line)
        self.progress.close()


def format_epoch(epoch, epochs, logs):
    parts = [f"{k} {v:.4f}" for k, v in logs.items() if k not in ("lr", "time")]
    return f"epoch {epoch + 1}/{epochs}  " + "  ".join(parts) + f"  ({logs['time']:.2f} s)"


class DivergenceCheck(Callback):
    """Stops training when the loss becomes NaN or infinite, restoring the
    parameters and optimizer state of the start of that epoch (the last ones
    known finite), and names the likely cause."""

    def __init__(self):
        self._saved = None

    def on_epoch_begin(self, model, epoch):
        self._saved = model._snapshot()

    def check(self, model, value, optimizer, epoch, step=None):
        value = float(value)
        if math.isfinite(value):
            return
        model._restore(self._saved)
        where = f"at step {step + 1} of epoch {epoch + 1}" if step is not None else \
            f"in epoch {epoch + 1}"
        raise TrainingDivergedError(
            f"training diverged: the loss became {value} {where}; the weights were restored to "
            f"those at the start of epoch {epoch + 1}. Likely cause: {optimizer.divergence_hint()}"
            f", or check the data")


class Checkpoint(Callback):
    """Write the model -- weights, buffers, optimizer state, the positions of the
    data-order and dropout generators -- and the number of epochs done to
    ``path`` after every ``every`` epochs, atomically (``model.save``'s
    temporary file and rename): a crash leaves the last complete checkpoint.
    ``{epoch}`` in the path (``"ckpt-{epoch}.npz"``) keeps one file per epoch.
    In data-parallel training only rank 0 writes (``root_only``).

    ``model, done = load_checkpoint(path)`` and ``model.fit(..., epochs=E,
    initial_epoch=done)`` continue the run: with the same data and settings the
    parameters follow the uninterrupted trajectory.
    """

    root_only = True

    def __init__(self, path, every=1):
        from ._atomic import as_str_path
        self.path = as_str_path(path)
        self.every = int(every)
        if self.every < 1:
            raise ValueError(f"Checkpoint every must be >= 1, got {every}")
        self.written = []

    def path_for(self, epochs_done):
        return self.path.replace("{epoch}", str(epochs_done))

    def on_epoch_end(self, model, epoch, logs):
        if (epoch + 1) % self.every:
            return
        from .io import write_file
        config, arrays = model.get_state()
        config["training"] = {"epochs_done": epoch + 1}
        path = self.path_for(epoch + 1)
        write_file(path, config, arrays)
        self.written.append(path)


def load_checkpoint(path, backend=None):
    """``(model, epochs_done)`` from a file written by ``Checkpoint`` (or
    ``model.save``, which counts as 0 epochs done); the model comes with its
    optimizer and generator positions."""
    import os as _os
    from .io import read_file
    from .model import Sequential
    config, arrays = read_file(path)
    source = _os.fsdecode(path) if isinstance(path, bytes) else _os.fspath(path)
    training = config.get("training") or {}
    done = training.get("epochs_done", 0) if isinstance(training, dict) else None
    if isinstance(done, bool) or not isinstance(done, int) or done < 0:
        raise ValueError(f"{source}: not a valid checkpoint: 'training.epochs_done' must be an "
                         f"integer >= 0, got {done!r}")
    return Sequential.from_state(config, arrays, backend=backend, source=source), done


# -- the loop ----------------------------------------------------------------------------

class Trainer:
    """Runs epochs of ``source`` through ``step``, ``grad_hooks`` and the
    optimizer, calling ``callbacks``; returns a ``History``."""

    def __init__(self, model, loss, optimizer, step, source, grad_hooks=(), callbacks=(),
                 lr_schedule=None, validation=None, epoch_sync=None):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.step, self.source = step, source
        self.grad_hooks, self.callbacks = list(grad_hooks), list(callbacks)
        self.lr_schedule, self.validation = lr_schedule, validation
        self.epoch_sync = epoch_sync
        self.divergence = DivergenceCheck()
        self.steps_per_epoch = len(source)
        self.epochs = 0
        self._total, self._rows = 0, 0

    def _call(self, method, *args):
        for cb in self.callbacks:
            fn = getattr(cb, method, None)
            if fn is not None:
                fn(*args)

    def running_loss(self):
        """Mean loss of this epoch so far (a host sync: for progress only)."""
        return float(self._total) / max(self._rows, 1)

    def run(self, X, y, epochs, initial_epoch=0):
        """Train epochs ``initial_epoch`` .. ``epochs - 1`` (a resumed run starts
        where its checkpoint ended: the schedule and the epoch numbers continue)."""
        model, ops, opt = self.model, self.model.ops, self.optimizer
        self.epochs = epochs
        history = History()
        track_acc = self.loss.tracks_accuracy(y)
        # Checking every step's loss is free on the CPU, a sync on a GPU.
        check_each_step = ops.xp is numpy
        batch_end = [cb.on_batch_end for cb in self.callbacks if hasattr(cb, "on_batch_end")]
        model._trainer = self
        try:
            self._call("on_train_begin", model)
            for epoch in range(initial_epoch, epochs):
                if self.lr_schedule is not None:
                    opt.lr = check_number(self.lr_schedule(epoch), "lr_schedule(epoch)", low=0.0,
                                          finite=True)
                self.divergence.on_epoch_begin(model, epoch)
                self._call("on_epoch_begin", model, epoch)
                t0 = time.perf_counter()
                self._total = correct = 0
                self._rows = 0
                for b, idx in enumerate(self.source.epoch(ops)):
                    Xb = self.source.gather(ops, X, idx)
                    yb = ops.take_rows(y, idx)
                    value, hits = self.step(Xb, yb)
                    if check_each_step:
                        self.divergence.check(model, value, opt, epoch, b)
                    for hook in self.grad_hooks:
                        hook(model)
                    opt.step(model)
                    self._total = self._total + value * len(idx)
                    self._rows += len(idx)
                    correct = correct + hits
                    for fn in batch_end:
                        fn(model, b)
                sums = {"loss": self._total, "correct": correct, "rows": self._rows}
                if self.epoch_sync is not None:      # e.g. the sums over every rank
                    sums = self.epoch_sync(model, epoch, sums)
                logs = {"loss": float(sums["loss"]) / sums["rows"]}
                self.divergence.check(model, logs["loss"], opt, epoch)
                if track_acc:
                    logs["accuracy"] = float(sums["correct"]) / sums["rows"]
                if self.validation is not None:
                    logs.update({"val_" + k: v for k, v in
                                 model._evaluate(*self.validation, self.loss).items()})
                logs["lr"] = opt.lr
                logs["time"] = time.perf_counter() - t0
                history.append(epoch, logs)
                self._call("on_epoch_end", model, epoch, logs)
            self._call("on_train_end", model, history)
        finally:
            model._trainer = None
        for cb in self.callbacks:
            if hasattr(cb, "report"):
                history.diagnostics = cb.report()
        return history
