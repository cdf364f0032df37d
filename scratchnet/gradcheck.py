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
    (X, y) against central differences, on a float64 copy of the model.

    Up to ``max_entries`` entries per array are checked (chosen with ``seed``),
    all of them for smaller arrays. Returns a ``GradCheckResult``.
    """
    loss = get_loss(loss)
    m = model.copy(dtype="float64")
    ops = m.ops
    X = m._input(X)
    y = loss.prepare_targets(y, (X.shape[0], m.n_out), ops, m.dtype)
    drops = [layer for layer in L.walk(m.layers) if isinstance(layer, L.Dropout)]

    def value():
        return float(loss._compute(L.run_forward(m._plan, X, training), y, ops))

    value()
    for d in drops:                       # freeze the masks just drawn
        d.fixed_mask = d.mask
    value()
    dX = L.run_backward(m._plan, loss.backward(), need_input_grad=True)
    targets = [(path, layer, name, ops.to_host(getattr(layer, "d" + name)).copy())
               for path, layer, name in m.named_parameters()]
    rng = numpy.random.default_rng(seed)
    errors = {}
    for path, layer, name, analytic in targets:
        errors[path] = _check_array(getattr(layer, name), analytic, value, eps, floor,
                                    max_entries, rng)
    if check_input:
        errors["input"] = _check_array(X, ops.to_host(dX).copy(), value, eps, floor,
                                       max_entries, rng)
    for d in drops:
        d.fixed_mask = None
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

