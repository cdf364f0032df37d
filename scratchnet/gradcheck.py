"""``gradcheck``: compare backprop's gradients with central differences, in float64.

For a parameter entry p, the numerical gradient is
(L(p + eps) - L(p - eps)) / (2 eps); each entry's error is
|analytic - numerical| / max(|analytic|, |numerical|, floor). Dropout layers
keep the mask of the first forward pass for every evaluation, so the loss is a
deterministic function of the parameters.
"""

from __future__ import annotations

import numpy

from . import layers as L
from .losses import get_loss


class GradCheckResult(float):
    """The largest error found (a float), true when it is within ``tol``.

    ``result.errors`` maps each checked array ("0.W", ..., "input") to its
    largest error; ``result.passed`` is ``bool(result)``.
    """

    def __new__(cls, max_error, tol, errors):
        self = super().__new__(cls, max_error)
        self.tol, self.errors, self.passed = tol, errors, bool(max_error <= tol)
        return self

    def __bool__(self):
        return self.passed

    def __repr__(self):
        worst = max(self.errors, key=self.errors.get) if self.errors else None
        return (f"GradCheckResult({'passed' if self.passed else 'FAILED'}: max error "
                f"{float(self):.2e} (tol {self.tol:.0e}) at {worst!r})")


def gradcheck(model, loss, X, y, eps=1e-6, tol=1e-5, floor=1e-3, max_entries=64, seed=0,
              training=True, check_input=True):
    """Check every parameter gradient (and dL/dX) of ``model`` for ``loss`` on
    (X, y) against central differences, in float64.

    The model itself is checked, as it is (a layer used at several places
    keeps its tied weights): a float32 model is switched to float64 for the
    check and back afterwards. Its parameters, buffers (BatchNorm's running
    statistics) and random streams are as before when it returns.

    Up to ``max_entries`` entries per array are checked (chosen with ``seed``),
    all of them for smaller arrays. Returns a ``GradCheckResult``.
    """
    loss = get_loss(loss)
    m = model
    dtype = m.dtype
    saved = m._snapshot()
    drops = [layer for layer in L.unique_layers(m.layers) if isinstance(layer, L.Dropout)]
    rng_states = [m.ops.rng_state(d.rng) for d in drops]
    if dtype != numpy.float64:
        m._set_dtype("float64")
    try:
        return _check(m, loss, X, y, eps, tol, floor, max_entries, seed, training, check_input,
                      drops)
    finally:
        for d in drops:
            d.fixed_mask = None
        if dtype != numpy.float64:
            m._set_dtype(dtype)
        m._restore(saved)
        for d, state in zip(drops, rng_states):
            m.ops.set_rng_state(d.rng, state)


def _check(m, loss, X, y, eps, tol, floor, max_entries, seed, training, check_input, drops):
    ops = m.ops
    X = m._input(X)
    y = m._targets(loss, y, X)

    def value():
        return float(loss._compute(m._run_forward(X, training), y, ops))

    value()
    for d in drops:                       # freeze the masks just drawn
        d.fixed_mask = d.mask
    value()
    m.zero_grad()
    dX = m._run_backward(loss.backward(), need_input_grad=True)
    targets = [(path, layer, name, ops.to_host(getattr(layer, "d" + name)).copy())
               for path, layer, name in m.named_parameters()]
    rng = numpy.random.default_rng(seed)
    errors = {}
    for path, layer, name, analytic in targets:
        errors[path] = _check_array(getattr(layer, name), analytic, value, eps, floor,
                                    max_entries, rng)
    if check_input and X.dtype.kind == "f":     # integer ids (Embedding) have no gradient
        errors["input"] = _check_array(X, ops.to_host(dX).copy(), value, eps, floor,
                                       max_entries, rng)
    return GradCheckResult(max(errors.values(), default=0.0), tol, errors)


def _check_array(arr, analytic, value, eps, floor, max_entries, rng):
    size = analytic.size
    picks = numpy.arange(size) if size <= max_entries else rng.choice(size, max_entries, replace=False)
    worst = 0.0
    for flat in picks:
        pos = numpy.unravel_index(int(flat), analytic.shape)
        orig = float(arr[pos])
        arr[pos] = orig + eps
        up = value()
        arr[pos] = orig - eps
        down = value()
        arr[pos] = orig
        numeric = (up - down) / (2 * eps)
        a = float(analytic[pos])
        worst = max(worst, abs(a - numeric) / max(abs(a), abs(numeric), floor))
    return worst

