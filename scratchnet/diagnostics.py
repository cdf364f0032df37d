"""Training diagnostics: vanishing gradients, dead ReLUs, saturation, overfitting.

``model.fit(..., diagnostics=True)`` (or ``diagnostics=Recorder(every=1)``)
records, per layer and per epoch, the statistics below and leaves a
``Diagnostics`` report in ``history.diagnostics``::

    d = model.fit(X, y, loss, opt, epochs=5, validation_data=(Xv, yv),
                  diagnostics=True).diagnostics
    print(d.summary())          # plain-language findings, with numbers
    d.problems                  # [Problem(kind, layer, message, numbers)]
    d.plot("diag/")             # gradient_norms.png, saturation.png, ... summary.txt

What is recorded (layers are numbered as in ``model.summary()``; layers inside
a ``Residual`` block get a path string such as ``"3.1"``):

================  ===============  ==================================================
layer             key              meaning (per epoch)
================  ===============  ==================================================
Dense             ``grad_norm``    mean over sampled steps of ||dW|| (Frobenius)
Dense             ``weight_norm``  ||W|| at the end of the epoch
Dense             ``update_ratio`` mean over sampled steps of ||W_after - W_before||
                                   / ||W_after||: the relative size of one step
activation        ``mean, std``    of all outputs of the sampled steps
ReLU              ``dead_fraction``  fraction of units (columns) that were zero for
                                   every sample of every tracked step of the epoch
Sigmoid, Tanh     ``saturated_fraction``  fraction of outputs in the flat tails:
                                   sigmoid < 0.01 or > 0.99; |tanh| > 0.99
RNN, LSTM, GRU    ``grad_through_time``  a list of T values: for each time step t,
                                   the mean over sampled steps of ||dL/dh_t|| (the
                                   layer's ``dh_norms``): the gradient reaching
                                   each step through time
================  ===============  ==================================================

plus the epoch's ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
``lr`` and ``time`` from ``fit``'s logs; ``steps``, ``sampled_steps``,
``dead_tracked_steps``, ``every`` (the sampling period at the epoch's end) and
``recorder_time`` (host seconds spent in the recorder's hooks).

Cost: every statistic is computed with the model's backend (``model.ops.xp``)
and accumulated on the device; the recorder reads the device once per epoch
(one ``ops.to_host`` of one small vector), so it runs unchanged on CuPy.
Norms, update ratios and activation moments are taken on every k-th step of
an epoch (steps 0, k, 2k, ...; each sampled step's update ratio is exact: W is
copied at the end of the step before it); dead units are tracked (one max
over the batch per ReLU layer) on every step. ``Recorder(every="auto")``,
the default, times itself against the training step and thins both so that
it stays within ``budget`` (2%) of the training time. Measured on NumPy
(one CPU thread): a 784-256-128-10 MLP at batch 128 got every ~15th step
sampled and dead units tracked on every 2nd, costing ~2-3% of the epoch; the
64-128-64-10 digits MLP (85-microsecond steps) got step 0 of each epoch and
dead units on every ~10th step, ~3% in the hooks, ~5% wall time in all.
``Recorder(every=1)`` records everything (about +9% and +40% there).
With ``mode="per_sample"`` the activation statistics see only the last
sample of each batch. Norms are float32 dot products on float32 models:
gradients below ~1e-20 per element read as 0 (still flagged as vanishing).

Findings (``Diagnostics.problems``), from the final epoch unless said
otherwise; the thresholds are the module constants below:

* ``vanishing_gradients``: the first Dense layer's gradient norm is below
  ``VANISHING_RATIO`` (1e-3) times the last Dense layer's.
* ``exploding_gradients``: the first Dense layer's gradient norm is above
  ``EXPLODING_RATIO`` (1e3) times the last's, or a gradient norm is not finite.
* ``dead_relu``: a ReLU layer with more than ``DEAD_FRACTION`` (25%) dead units.
* ``saturation``: a sigmoid/tanh layer with more than ``SATURATED_FRACTION``
  (25%) of its outputs in the tails.
* ``vanishing_through_time``: a recurrent layer that outputs its last step
  only (``return_sequences=False``) whose gradient at the first step is below
  ``VANISHING_RATIO`` times its gradient at the last step.
* ``overfitting`` (needs ``validation_data``): over the last
  ``OVERFIT_EPOCHS`` (3) epochs, validation loss rose every epoch while
  training loss fell, or validation accuracy fell every epoch while training
  accuracy rose.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import dataclass, field

import numpy

from . import layers as L
from ._plotting import plain_log_ticks
from ._progress import plural

__all__ = ["Recorder", "Diagnostics", "Problem"]

VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
DEAD_FRACTION = 0.25
SATURATED_FRACTION = 0.25
OVERFIT_EPOCHS = 3
#: Saturation tails: sigmoid outside [SIGMOID_LOW, 1 - SIGMOID_LOW]; |tanh| > TANH_HIGH.
SIGMOID_LOW = 0.01
TANH_HIGH = 0.99

DENSE_KEYS = ("grad_norm", "weight_norm", "update_ratio")
LOG_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time")

PLOT_MISSING = "Diagnostics.plot needs matplotlib: pip install scratchnet[plot]"


@dataclass
class Problem:
    """One finding: ``kind`` ("vanishing_gradients", "exploding_gradients",
    "dead_relu", "saturation" or "overfitting"), ``layer`` (its index as in
    ``model.summary()``, a path string inside a Residual, None for the whole
    model), ``message`` (one line of plain text), the ``numbers`` behind it
    and a ``hint`` (what to try)."""

    kind: str
    layer: object
    message: str
    numbers: dict = field(default_factory=dict)
    hint: str = ""

    def __str__(self):
        return self.message


def _walk(layers, prefix=""):
    """(path, layer) for every layer, depth first; top-level paths are ints."""
    for i, layer in enumerate(layers):
        path = i if not prefix else f"{prefix}.{i}"
        yield path, layer
        yield from _walk(layer.children(), str(path))


def _describe(layer):
    if isinstance(layer, L.Dense):
        return f"Dense {layer.n_in}->{layer.n_out}"
    if _is_recurrent(layer):
        return f"{type(layer).__name__} {layer.input_size}->{layer.hidden_size}"
    return type(layer).__name__


def _is_recurrent(layer):
    from .recurrent import _Recurrent
    return isinstance(layer, _Recurrent)


def _act_kind(layer):
    """'relu', 'sigmoid', 'tanh', ... for activation layers; None otherwise."""
    if isinstance(layer, L.Activation):
        return layer.kind
    return None


class _Slots:
    """Named 0-d float64 accumulators on the device, read back as one vector."""

    def __init__(self, xp):
        self.xp = xp
        self.names = []
        self.arrays = []

    def add(self, name):
        self.names.append(name)
        self.arrays.append(self.xp.zeros((), dtype=numpy.float64))
        return self.arrays[-1]

    def reset(self):
        for a in self.arrays:
            a[...] = 0


class _Dense:
    """What the recorder keeps for one Dense layer."""

    def __init__(self, info, layer, slots, xp):
        self.info, self.layer = info, layer
        self.prev = xp.empty(layer.W.shape, layer.W.dtype)   # W before the next sampled step
        self.grad = slots.add((info["layer"], "grad"))       # sum of ||dW||
        self.ratio = slots.add((info["layer"], "ratio"))     # sum of ||dW_step|| / ||W||


class _Act:
    """What the recorder keeps for one activation layer."""

    def __init__(self, info, layer, slots):
        self.info, self.layer, self.kind = info, layer, info["kind"]
        path = info["layer"]
        self.s1 = slots.add((path, "sum"))                   # sum of outputs
        self.s2 = slots.add((path, "sumsq"))                 # sum of squared outputs
        self.sat = slots.add((path, "sat")) if self.kind in ("sigmoid", "tanh") else None
        self.n = 0                                            # outputs summed (host count)
        self.unit_max = None      # ReLU: per-unit max output over the epoch's folded steps
        self.maxes, self.row = None, 0   # per-step maxima not yet folded into unit_max

    ROWS = 32

    def track(self, Y, xp):
        """Per-unit max of this step's outputs: one reduction into a row of
        ``maxes``; every ``ROWS`` steps the rows are folded into ``unit_max``."""
        if self.maxes is None or self.maxes.shape[1] != Y.shape[1] or \
                self.maxes.dtype != Y.dtype:
            self.fold(xp)
            self.maxes, self.row = xp.empty((self.ROWS, Y.shape[1]), Y.dtype), 0
            if self.unit_max is not None and self.unit_max.shape[0] != Y.shape[1]:
                self.unit_max = None
        Y.max(axis=0, out=self.maxes[self.row])
        self.row += 1
        if self.row == self.ROWS:
            self.fold(xp)

    def fold(self, xp):
        if self.row:
            m = self.maxes[:self.row].max(axis=0)
            self.unit_max = m if self.unit_max is None else \
                xp.maximum(self.unit_max, m, out=self.unit_max)
            self.row = 0


class _Rec:
    """What the recorder keeps for one recurrent layer: the sum of its
    ``dh_norms`` over the sampled steps (a float64 device vector)."""

    def __init__(self, info, layer):
        self.info, self.layer = info, layer
        self.sum, self.n = None, 0

    def add(self, xp):
        norms = self.layer.dh_norms
        if norms is None:
            return
        if self.sum is None or self.sum.shape != norms.shape:   # a new sequence length
            self.sum, self.n = xp.zeros(norms.shape, dtype=numpy.float64), 0
        self.sum += norms
        self.n += 1


class Recorder:
    """A ``fit`` callback recording per-layer statistics; ``report()`` gives a
    ``Diagnostics``.

    every: an int k takes norms, update ratios and activation moments on
    every k-th step of each epoch (1 = every step) and tracks dead units on
    every step. The default, ``"auto"``, times the recorder's own work
    against the training step over the first steps and then samples as often
    as fits in ``budget`` (a fraction of the training time, default 2%),
    re-tuned after every epoch: dead-unit tracking (cheap) first, then the
    rest. Tiny models whose steps take microseconds get few sampled steps.
    A recorder records one ``fit`` at a time: ``on_train_begin`` starts afresh.
    """

    CALIBRATION_STEPS = 8
    MAX_EVERY = 256

    def __init__(self, every="auto", budget=0.02):
        if every != "auto" and (isinstance(every, bool) or
                                not isinstance(every, numbers.Integral) or every < 1):
            raise ValueError(f"Recorder every must be 'auto' or an int >= 1, got {every!r}")
        if not isinstance(budget, (int, float)) or not 0 < budget < 1:
            raise ValueError(f"Recorder budget must be a fraction in (0, 1), got {budget!r}")
        self.every = every if every == "auto" else int(every)
        self.budget = float(budget)
        self.layers = []
        self.epochs = []

    # -- fit hooks ------------------------------------------------------------
    def on_train_begin(self, model):
        self.ops = model.ops
        self.epochs, self.layers = [], []
        self._slots = _Slots(self.ops.xp)
        self._dense, self._acts, self._rec = [], [], []
        for path, layer in _walk(model.layers):
            kind = "dense" if isinstance(layer, L.Dense) else \
                "recurrent" if _is_recurrent(layer) else _act_kind(layer)
            if kind is None:
                continue
            info = {"layer": path, "name": _describe(layer), "kind": kind}
            self.layers.append(info)
            if kind == "recurrent":
                info["return_sequences"] = layer.return_sequences
                self._rec.append(_Rec(info, layer))
            elif kind == "dense":
                self._dense.append(_Dense(info, layer, self._slots, self.ops.xp))
            else:
                self._acts.append(_Act(info, layer, self._slots))
        self._relu = [a for a in self._acts if a.kind == "relu"]
        # "auto" calibrates on the first CALIBRATION_STEPS steps: step 0 sampled,
        # dead units tracked on each; then _tune sets both periods.
        self._k = self.CALIBRATION_STEPS if self.every == "auto" else self.every
        self._kd = 1                     # dead-unit tracking period
        self._calibrating = self.every == "auto"
        self._t_epoch_end = 0.0

    def on_epoch_begin(self, model, epoch):
        t = time.perf_counter()
        self._slots.reset()
        for a in self._acts:
            a.n, a.unit_max, a.row = 0, None, 0
        for r in self._rec:
            r.sum, r.n = None, 0
        self._n_steps = self._n_sampled = self._n_tracked = 0
        self._t_dead = self._t_sampled = 0.0
        self._snapshot()                 # W before step 0, which is always sampled
        self._t_start = time.perf_counter()
        self._t_sampled += self._t_start - t

    def on_batch_end(self, model, step):
        # Steps with nothing to do cost a few integer operations: no timers.
        self._n_steps += 1
        k = self._k
        if step % self._kd == 0:         # a unit is dead only if never > 0
            t0 = time.perf_counter()
            xp = self.ops.xp
            self._n_tracked += 1
            for a in self._relu:
                Y = getattr(a.layer, "Y", None)
                if Y is not None and Y.ndim == 2:
                    a.track(Y, xp)
            self._t_dead += time.perf_counter() - t0
        if step % k == 0 or (step + 1) % k == 0 or self._calibrating:
            t0 = time.perf_counter()
            if step % k == 0:
                self._n_sampled += 1
                self._sample(self.ops.xp)
            if self._calibrating and self._n_steps == self.CALIBRATION_STEPS:
                self._tune(t0 - self._t_start)
            if (step + 1) % self._k == 0:
                self._snapshot()         # the next step is sampled: keep W before it
            self._t_sampled += time.perf_counter() - t0

    def _sample(self, xp):
        tiny = numpy.finfo(numpy.float32).tiny
        for r in self._rec:
            r.add(xp)
        for d in self._dense:
            W, dW, prev = d.layer.W, d.layer.dW, d.prev
            d.grad += xp.sqrt(xp.vdot(dW.ravel(), dW.ravel()))
            xp.subtract(W, prev, out=prev)          # prev := this step's update
            step2 = xp.vdot(prev.ravel(), prev.ravel())
            w2 = xp.vdot(W.ravel(), W.ravel())
            d.ratio += xp.sqrt(step2 / xp.maximum(w2, tiny))
        for a in self._acts:
            Y = getattr(a.layer, "Y", None)
            if Y is None or Y.ndim != 2:
                continue
            flat = Y.ravel()
            a.s1 += Y.sum()
            a.s2 += xp.vdot(flat, flat)
            a.n += Y.size
            if a.kind == "sigmoid":
                a.sat += xp.count_nonzero(xp.abs(Y - Y.dtype.type(0.5)) >
                                          Y.dtype.type(0.5 - SIGMOID_LOW))
            elif a.kind == "tanh":
                a.sat += xp.count_nonzero(xp.abs(Y) > Y.dtype.type(TANH_HIGH))

    def _tune(self, elapsed):
        """every="auto": periods kd (dead units) and k (the rest) with
        dead/kd + sampled/k + epoch_end <= budget * step, per step, from this
        epoch's timings so far (``elapsed``: seconds since the epoch began, the
        recorder's own time included); dead-unit tracking may use half the room."""
        n = self._n_steps
        step = max(elapsed - self._t_dead - self._t_sampled, 0.0) / n
        dead = self._t_dead / max(self._n_tracked, 1)
        sampled = self._t_sampled / max(self._n_sampled, 1)
        room = self.budget * step - self._t_epoch_end / n
        if room <= 0:
            self._kd = self._k = self.MAX_EVERY
            return
        self._kd = self._period(dead, room / 2)
        self._k = self._period(sampled, room - dead / self._kd)

    def _period(self, cost, room):
        k = self.MAX_EVERY if room <= 0 else math.ceil(cost / room)
        return max(1, min(self.MAX_EVERY, k))

    def on_epoch_end(self, model, epoch, logs):
        t = time.perf_counter()
        elapsed = t - self._t_start
        xp = self.ops.xp
        values = list(self._slots.arrays)
        for d in self._dense:
            values.append(xp.sqrt(xp.vdot(d.layer.W.ravel(), d.layer.W.ravel())))
        for a in self._relu:
            a.fold(xp)
            if a.unit_max is not None:
                values.append((a.unit_max <= 0).mean())
        rec = [r for r in self._rec if r.n]
        n_scalars = len(values)
        values += [r.sum / r.n for r in rec]        # vectors (T,), after the scalars
        # the one device -> host read of the epoch
        host = [float(x) for x in self.ops.to_host(
            xp.concatenate([xp.asarray(x, dtype=numpy.float64).reshape(-1) for x in values]))]
        acc = dict(zip(self._slots.names, host))
        rest = iter(host[len(self._slots.names):n_scalars])
        at = n_scalars
        ns = self._n_sampled
        stats = {}
        for d in self._dense:
            p = d.info["layer"]
            stats[p] = {"grad_norm": acc[(p, "grad")] / ns if ns else math.nan,
                        "weight_norm": next(rest),
                        "update_ratio": acc[(p, "ratio")] / ns if ns else math.nan}
        dead = {a.info["layer"]: next(rest) for a in self._relu if a.unit_max is not None}
        for a in self._acts:
            p, st = a.info["layer"], {"mean": math.nan, "std": math.nan}
            if a.n:
                mean = acc[(p, "sum")] / a.n
                st.update(mean=mean, std=math.sqrt(max(acc[(p, "sumsq")] / a.n - mean * mean,
                                                       0.0)))
            if a.kind == "relu":
                st["dead_fraction"] = dead.get(p, math.nan)
            if a.sat is not None:
                st["saturated_fraction"] = acc[(p, "sat")] / a.n if a.n else math.nan
            stats[p] = st
        for r in rec:
            steps = r.sum.shape[0]
            stats[r.info["layer"]] = {"grad_through_time": host[at:at + steps]}
            at += steps
        self._t_epoch_end = time.perf_counter() - t
        busy = self._t_dead + self._t_sampled + self._t_epoch_end
        record = {"epoch": epoch}
        record.update({k: logs[k] for k in LOG_KEYS if k in logs})
        record.update(steps=self._n_steps, sampled_steps=ns, dead_tracked_steps=self._n_tracked,
                      every=self._k, recorder_time=busy, layers=stats)
        self.epochs.append(record)
        if self.every == "auto" and self._n_steps:
            self._calibrating = False
            self._tune(elapsed)

    def on_train_end(self, model, history):
        self._dense, self._acts, self._relu, self._rec = [], [], [], []    # free the W copies

    def report(self):
        """The recorded statistics as a ``Diagnostics``."""
        return Diagnostics([dict(x) for x in self.layers], list(self.epochs))

    def _snapshot(self):
        for d in self._dense:
            W = d.layer.W
            if d.prev.shape != W.shape or d.prev.dtype != W.dtype:   # model changed
                d.prev = self.ops.xp.empty(W.shape, W.dtype)
            d.prev[...] = W


class Diagnostics:
    """Per-layer, per-epoch training statistics and the problems they show.

    layers: ``[{"layer": path, "name": "Dense 64->64", "kind": "dense"|"relu"|
    "sigmoid"|...}]`` in model order.
    epochs: one dict per epoch: ``{"epoch", "loss", "accuracy", "val_loss",
    "val_accuracy", "lr", "time", "steps", "sampled_steps", "dead_tracked_steps",
    "every", "recorder_time", "layers": {path: {stat: float}}}`` (see the module
    docstring; validation keys only with validation data).
    problems: the findings, ``[Problem]``; ``summary()`` says them in words.
    ``series(layer, key)`` / ``metric(key)`` give one value per epoch as an array.
    """

    def __init__(self, layers, epochs):
        self.layers = layers
        self.epochs = epochs
        self.problems = self._find_problems()

    def __repr__(self):
        return (f"Diagnostics(epochs={len(self.epochs)}, layers={len(self.layers)}, "
                f"problems={[p.kind for p in self.problems]})")

    # -- access ---------------------------------------------------------------
    def series(self, layer, key):
        """``key`` of ``layer`` (its path) per epoch, float64 array (NaN where absent)."""
        return numpy.array([e["layers"].get(layer, {}).get(key, math.nan) for e in self.epochs],
                           dtype=numpy.float64)

    def metric(self, key):
        """A training log (``"loss"``, ``"val_accuracy"``, ...) per epoch (NaN where absent)."""
        return numpy.array([e.get(key, math.nan) for e in self.epochs], dtype=numpy.float64)

    def _label(self, info):
        return f"layer {info['layer']} ({info['name']})"

    def _of_kind(self, *kinds):
        return [x for x in self.layers if x["kind"] in kinds]

    # -- findings -------------------------------------------------------------
    def _find_problems(self):
        if not self.epochs:
            return []
        last = self.epochs[-1]["layers"]
        found = self._gradient_problems(last)
        for x in self._of_kind("relu"):
            dead = last.get(x["layer"], {}).get("dead_fraction", math.nan)
            if dead > DEAD_FRACTION:
                found.append(Problem(
                    "dead_relu", x["layer"],
                    f"{self._label(x)}: {dead:.0%} of units dead (zero for every sample seen in "
                    f"the last epoch, so they pass no gradient)", {"dead_fraction": dead},
                    "a lower learning rate, init='he' and zero biases, or LeakyReLU"))
        for x in self._of_kind("sigmoid", "tanh"):
            sat = last.get(x["layer"], {}).get("saturated_fraction", math.nan)
            if sat > SATURATED_FRACTION:
                tails = "< 0.01 or > 0.99" if x["kind"] == "sigmoid" else "|y| > 0.99"
                found.append(Problem(
                    "saturation", x["layer"],
                    f"{self._label(x)}: {sat:.0%} of outputs saturated ({tails}), where the "
                    f"gradient is nearly zero", {"saturated_fraction": sat},
                    "inputs scaled to about [-1, 1], init='xavier', a lower learning rate, "
                    "or BatchNorm before the activation"))
        for x in self._of_kind("recurrent"):
            g = last.get(x["layer"], {}).get("grad_through_time")
            if not g or x.get("return_sequences") or len(g) < 2:
                continue
            first, final = g[0], g[-1]
            if final > 0 and first < VANISHING_RATIO * final:
                how = f"{final / first:.1e}x smaller than" if first > 0 else "against"
                found.append(Problem(
                    "vanishing_through_time", x["layer"],
                    f"{self._label(x)}: the gradient reaching its first time step, "
                    f"||dL/dh_1|| = {first:.2g}, is {how} at its last step ({final:.2g}) "
                    f"(vanishing gradients through time: the first of {len(g)} steps barely "
                    f"affect learning)", {"first": first, "last": final, "steps": len(g)},
                    ("LSTM or GRU instead of a plain RNN, " if x["name"].startswith("RNN ")
                     else "more training (the gates learn to keep their state), ")
                    + "LSTM(forget_bias=1.0), or shorter sequences"))
        found.extend(self._overfitting())
        return found

    def _gradient_problems(self, last):
        dense = [x for x in self._of_kind("dense") if x["layer"] in last]
        if len(dense) < 2:
            return []
        for x in dense:
            g = last[x["layer"]]["grad_norm"]
            if not math.isfinite(g) and not math.isnan(g):
                return [Problem("exploding_gradients", x["layer"],
                                f"{self._label(x)}: gradient norm {g} (exploding gradients)",
                                {"grad_norm": g}, "a lower learning rate or a smaller init")]
        first, final = dense[0], dense[-1]
        g0, g1 = last[first["layer"]]["grad_norm"], last[final["layer"]]["grad_norm"]
        nums = {"first_grad_norm": g0, "last_grad_norm": g1,
                "ratio": g0 / g1 if g1 > 0 else math.inf, "first_layer": first["layer"],
                "last_layer": final["layer"]}
        if g0 < VANISHING_RATIO * g1:
            how = f"{g1 / g0:.1e}x smaller than" if g0 > 0 else "against"
            still = last[first["layer"]].get("update_ratio") == 0
            nums["first_update_ratio"] = last[first["layer"]].get("update_ratio", math.nan)
            return [Problem(
                "vanishing_gradients", first["layer"],
                f"{self._label(first)}: gradient norm {g0:.2g}, {how} "
                f"{self._label(final)} at {g1:.2g} (vanishing gradients: the first layers "
                + ("do not learn: their float32 weights did not change at all)" if still
                   else "barely learn)"), nums,
                "ReLU with init='he', init='xavier' for sigmoid/tanh, fewer layers, or "
                "BatchNorm")]
        if g0 > EXPLODING_RATIO * g1:
            return [Problem(
                "exploding_gradients", first["layer"],
                f"{self._label(first)}: gradient norm {g0:.2g}, {g0 / g1:.1e}x larger than "
                f"{self._label(final)} at {g1:.2g} (exploding gradients)", nums,
                "a lower learning rate, a smaller init, or BatchNorm")]
        return []

    def _overfitting(self):
        k = OVERFIT_EPOCHS
        if len(self.epochs) < k + 1:
            return []
        e0 = len(self.epochs) - 1 - k          # the window: epochs e0 .. last (0-based)
        tl, vl = self.metric("loss")[e0:], self.metric("val_loss")[e0:]
        ta, va = self.metric("accuracy")[e0:], self.metric("val_accuracy")[e0:]
        first, final = e0 + 1, len(self.epochs)  # 1-based epoch numbers for messages
        best = self.metric("val_loss")
        hint = "Dropout, weight_decay, more data, or stopping earlier"
        if numpy.isfinite(best).any():
            hint += f" (validation loss was lowest at epoch {int(numpy.nanargmin(best)) + 1})"
        if numpy.all(numpy.diff(vl) > 0) and tl[-1] < tl[0]:
            return [Problem("overfitting", None,
                            f"validation loss rising for {plural(k, 'epoch')} in a row "
                            f"({vl[0]:#.4g} at "
                            f"epoch {first} -> {vl[-1]:#.4g} at epoch {final}) while training "
                            f"loss falls ({tl[0]:#.4g} -> {tl[-1]:#.4g}) (overfitting)",
                            {"epochs": k, "val_loss": [float(x) for x in vl],
                             "loss": [float(x) for x in tl]}, hint)]
        if numpy.all(numpy.diff(va) < 0) and ta[-1] > ta[0]:
            return [Problem("overfitting", None,
                            f"validation accuracy falling for {plural(k, 'epoch')} in a row "
                            f"({va[0]:.2%} at epoch {first} -> {va[-1]:.2%} at epoch {final}) "
                            f"while training accuracy rises ({ta[0]:.2%} -> {ta[-1]:.2%}) "
                            f"(overfitting)",
                            {"epochs": k, "val_accuracy": [float(x) for x in va],
                             "accuracy": [float(x) for x in ta]}, hint)]
        return []

    # -- text -----------------------------------------------------------------
    def summary(self):
        """Plain-language report: the problems found (with numbers), then the final
        epoch's statistics per layer and the training curves' endpoints."""
        if not self.epochs:
            return "Training diagnostics: no epochs recorded."
        n_dense = len(self._of_kind("dense"))
        steps = sum(e.get("steps", 0) for e in self.epochs)
        sampled = sum(e.get("sampled_steps", 0) for e in self.epochs)
        tracked = sum(e.get("dead_tracked_steps", 0) for e in self.epochs)
        lines = [f"Training diagnostics: {plural(len(self.epochs), 'epoch')}, "
                 f"{plural(len(self.layers), 'recorded layer')} ({n_dense} Dense); norms and "
                 f"activation statistics from {sampled} of {plural(steps, 'step')}"
                 + (f", dead units from {tracked}" if self._of_kind("relu") else "")
                 + ("." if sampled == steps else " (Recorder(every=1) records every step).")]
        if self.problems:
            lines.append(f"Problems found ({len(self.problems)}):")
            for p in self.problems:
                lines.append(f"  - {p.message}")
                if p.hint:
                    lines.append(f"    try: {p.hint}")
        else:
            lines.append("No problems found.")
        if "val_loss" not in self.epochs[-1]:
            lines.append("  (no validation data: overfitting not checked)")
        lines.append("")
        lines.append("Final epoch, per layer:")
        lines.append(f"  {'layer':<24} {'grad norm':>10} {'weight norm':>11} {'update/W':>9} "
                     f"{'act mean':>9} {'act std':>9} {'dead':>6} {'saturated':>9}")
        last = self.epochs[-1]["layers"]
        for info in self.layers:
            st = last.get(info["layer"], {})
            cells = [_fmt(st.get("grad_norm"), "{:10.2e}", 10),
                     _fmt(st.get("weight_norm"), "{:11.3g}", 11),
                     _fmt(st.get("update_ratio"), "{:9.1e}", 9),
                     _fmt(st.get("mean"), "{:9.3g}", 9), _fmt(st.get("std"), "{:9.3g}", 9),
                     _fmt(st.get("dead_fraction"), "{:6.0%}", 6),
                     _fmt(st.get("saturated_fraction"), "{:9.0%}", 9)]
            label = f"{info['layer']} {info['name']}"
            lines.append((f"  {label:<24} " + " ".join(cells)).rstrip())
        for info in self._of_kind("recurrent"):
            g = last.get(info["layer"], {}).get("grad_through_time")
            if g:
                picks = sorted({0, (len(g) - 1) // 2, len(g) - 1})
                lines.append(f"  {info['layer']} {info['name']}: gradient through time "
                             f"||dL/dh_t|| at t = " + ", ".join(str(t + 1) for t in picks)
                             + ": " + ", ".join(f"{g[t]:.2e}" for t in picks))
        lines.append("")
        first, final = self.epochs[0], self.epochs[-1]
        for key, name, fmt in (("loss", "training loss", "{:.4g}"),
                               ("accuracy", "training accuracy", "{:.2%}"),
                               ("val_loss", "validation loss", "{:.4g}"),
                               ("val_accuracy", "validation accuracy", "{:.2%}")):
            if key in final:
                lines.append(f"{name}: {fmt.format(first[key])} (epoch 1) -> "
                             f"{fmt.format(final[key])} (epoch {len(self.epochs)})")
        busy = sum(e.get("recorder_time", 0.0) for e in self.epochs)
        total = sum(e.get("time", 0.0) for e in self.epochs)
        if total > 0:
            lines.append(f"recorder host time: {busy:.3g} s of {total:.3g} s of training "
                         f"({busy / total:.1%})")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    # -- plots ----------------------------------------------------------------
    def plot(self, directory):
        """Write the figures of ``figures()`` as PNGs and ``summary.txt`` into
        ``directory`` (created if needed); returns the paths written. Needs
        matplotlib (``pip install scratchnet[plot]``)."""
        figures = self.figures()
        os.makedirs(directory, exist_ok=True)
        written = []
        for name, fig in figures.items():
            path = os.path.join(directory, name)
            fig.savefig(path, dpi=100, bbox_inches="tight")
            written.append(path)
        path = os.path.join(directory, "summary.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.summary() + "\n")
        written.append(path)
        return written

    def figures(self):
        """The plots that apply to this model, as matplotlib Figures by file name:

        * ``gradient_norms.png``, ``update_ratios.png``: per Dense layer (log scale);
        * ``dead_units.png`` (only with ReLU layers): the fraction of dead units;
        * ``saturation.png`` (only with sigmoid/tanh layers): the fraction of
          saturated outputs, and the spread (std) of the outputs, which falls
          towards 0 when a layer outputs nearly the same value for every input;
        * ``grad_through_time.png`` (only with RNN/LSTM/GRU layers):
          ||dL/dh_t|| against the time step t, in the first and the last epoch;
        * ``curves.png``: loss and accuracy, training and validation.

        Layers whose curves are equal are drawn as one line with one label, so
        no line hides another. Legends sit outside the plotting area.
        """
        Figure = _figure_class()
        x = numpy.arange(1, len(self.epochs) + 1)
        figures = {}
        dense = self._of_kind("dense")
        for fname, key, title, ylabel in (
                ("gradient_norms.png", "grad_norm", "Gradient norm per layer", "||dW||"),
                ("update_ratios.png", "update_ratio", "Update-to-weight ratio per layer",
                 "||ΔW|| / ||W|| per step")):
            fig = Figure(figsize=(7, 4.5))
            ax = fig.add_subplot()
            spread = self._draw(ax, x, dense, key, positive=True)
            ax.set_yscale("log")
            if spread and spread < 1e3:    # a few decades: plain numbers read best
                plain_log_ticks(ax.yaxis, spread)
            _epoch_axis(ax)
            ax.set_ylabel(ylabel + " (log scale)")
            ax.set_title(title)
            fig.tight_layout()
            figures[fname] = fig

        relu = self._of_kind("relu")
        if relu:
            fig = Figure(figsize=(7, 4.5))
            ax = fig.add_subplot()
            self._draw(ax, x, relu, "dead_fraction")
            _fraction_axis(ax, "fraction of units dead")
            _epoch_axis(ax)
            ax.set_title("Dead ReLU units (zero for every sample seen in the epoch)")
            fig.tight_layout()
            figures["dead_units.png"] = fig

        squashing = self._of_kind("sigmoid", "tanh")
        if squashing:
            fig = Figure(figsize=(7.5, 7))
            ax_sat, ax_std = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
            self._draw(ax_sat, x, squashing, "saturated_fraction")
            _fraction_axis(ax_sat, "fraction of outputs saturated")
            kinds = {info["kind"] for info in squashing}
            tails = [t for k, t in (("sigmoid", f"sigmoid < {SIGMOID_LOW:g} or > "
                                                f"{1 - SIGMOID_LOW:g}"),
                                    ("tanh", f"|tanh| > {TANH_HIGH:g}")) if k in kinds]
            ax_sat.set_title(f"Saturated outputs ({', '.join(tails)})")
            spread = self._draw(ax_std, x, squashing, "std", positive=True)
            ax_std.set_yscale("log")
            if spread:
                plain_log_ticks(ax_std.yaxis, spread)
            ax_std.set_ylabel("std of the outputs (log scale)")
            ax_std.set_title("Spread of the outputs (near 0: the same output for every input)")
            for ax in (ax_sat, ax_std):
                _epoch_axis(ax)
            fig.tight_layout()
            figures["saturation.png"] = fig

        recurrent = [(info, [e["layers"].get(info["layer"], {}).get("grad_through_time")
                             for e in (self.epochs[0], self.epochs[-1])])
                     for info in self._of_kind("recurrent")]
        recurrent = [(info, g) for info, g in recurrent if g[0] or g[1]]
        if recurrent:
            fig = Figure(figsize=(7, 4.5))
            ax = fig.add_subplot()
            for i, (info, (g0, g1)) in enumerate(recurrent):
                curves = [(g1, "-", f"epoch {len(self.epochs)}")]
                if len(self.epochs) > 1:
                    curves.insert(0, (g0, ":", "epoch 1"))
                for g, style, when in curves:
                    if g:
                        y = numpy.array(g, dtype=numpy.float64)
                        ax.plot(numpy.arange(1, len(y) + 1), numpy.where(y > 0, y, numpy.nan),
                                ls=style, color=f"C{i % 10}",
                                label=f"{self._label(info)}, {when}")
            ax.set_yscale("log")
            ax.set_xlabel("time step t")
            ax.set_ylabel("||dL/dh_t|| (log scale)")
            ax.set_title("Gradient reaching each time step")
            ax.grid(alpha=0.3)
            _legend_outside(ax)
            fig.tight_layout()
            figures["grad_through_time.png"] = fig

        fig = Figure(figsize=(10, 4.4))
        handles = {}
        for i, (key, title) in enumerate((("loss", "Loss"), ("accuracy", "Accuracy"))):
            ax = fig.add_subplot(1, 2, i + 1)
            for k, label, color in ((key, "training", "tab:blue"),
                                    ("val_" + key, "validation", "tab:orange")):
                y = self.metric(k)
                if numpy.isfinite(y).any():
                    handles[label], = ax.plot(x, y, marker="o", ms=3, color=color, label=label)
            _epoch_axis(ax)
            ax.set_ylabel(key)
            ax.set_title(title)
            ax.grid(alpha=0.3)
        if handles:     # one legend for both panels, below them
            fig.legend(list(handles.values()), list(handles), loc="lower center",
                       ncol=len(handles), frameon=False)
        fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
        figures["curves.png"] = fig
        return figures

    def _draw(self, ax, x, infos, key, positive=False):
        """One line per distinct series of ``key`` over ``infos``' layers; layers
        with the same values share one dark dashed line and its label. Each
        layer keeps its colour (its place in ``infos``) across panels.
        ``positive``: values <= 0 cannot be drawn (log axes); the legend says
        in how many epochs a layer's value was 0. Returns max / min of the
        values drawn (None when there are none)."""
        colours = {info["layer"]: f"C{i % 10}" for i, info in enumerate(infos)}
        groups = []             # [(infos, y)]
        for info in infos:
            y = self.series(info["layer"], key)
            for members, other in groups:
                if numpy.allclose(y, other, rtol=1e-6, atol=0, equal_nan=True):
                    members.append(info)
                    break
            else:
                groups.append(([info], y))
        drawn = []
        for members, y in groups:
            style = ({"color": colours[members[0]["layer"]]} if len(members) == 1 else
                     {"color": "0.2", "ls": "--"})
            label = _group_label(members)
            if positive:
                zero = int((y == 0).sum())
                if zero:
                    label += (": always 0" if zero == len(y) else
                              f": 0 in {plural(zero, 'epoch')}") + " (not drawn)"
                y = numpy.where(y > 0, y, numpy.nan)
            ax.plot(x, y, marker="o", ms=3, label=label, **style)
            drawn.append(y)
        ax.grid(alpha=0.3)
        if groups:
            _legend_outside(ax)
        if len(groups) == 1 and len(infos) > 1:
            ax.text(0.02, 0.95, f"all {len(infos)} layers: the same values", va="top",
                    transform=ax.transAxes, fontsize="small", color="0.3")
        values = numpy.concatenate(drawn) if drawn else numpy.array([])
        values = values[numpy.isfinite(values) & (values > 0)]
        return float(values.max() / values.min()) if values.size else None


def _fmt(value, spec, width):
    if value is None:
        return " " * width
    if isinstance(value, float) and math.isnan(value):
        return f"{'-':>{width}}"
    return spec.format(value)


def _legend_outside(ax):
    """The legend to the right of the axes, never over a curve; the figure is
    widened for long labels so that the plot keeps its width."""
    legend = ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    longest = max((len(t.get_text()) for t in legend.get_texts()), default=0)
    # about 5 inches of plot and labels, 0.07 inch per character of small text
    needed = 5.8 + 0.07 * longest
    if ax.figure.get_figwidth() < needed:
        ax.figure.set_figwidth(needed)


def _group_label(infos):
    """'layer 1 (Sigmoid)', or 'layers 1, 3, 5 (Sigmoid)' for layers sharing a line."""
    if len(infos) == 1:
        return f"layer {infos[0]['layer']} ({infos[0]['name']})"
    names = {info["name"] for info in infos}
    if len(names) == 1:
        return f"layers {', '.join(str(i['layer']) for i in infos)} ({names.pop()})"
    return "layers " + ", ".join(f"{i['layer']} ({i['name']})" for i in infos)


def _epoch_axis(ax):
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _fraction_axis(ax, label):
    from matplotlib.ticker import PercentFormatter
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel(label)


def _figure_class():
    """matplotlib's ``Figure`` (no pyplot, no global backend change), or a clear error."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(PLOT_MISSING) from err
    return Figure
