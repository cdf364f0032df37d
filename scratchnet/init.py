"""Weight initialisers: ``(rng, fan_in, fan_out, size=None) -> array``, by
default of shape (fan_in, fan_out); ``size`` draws another shape with the same
distribution (Conv2D's kernels, see ``initial_weights``).

Weights are drawn on the host with a NumPy generator seeded by the model, then
moved to the backend, so the same seed gives the same initial weights on
every backend.

==================  =======================================================
name                distribution
==================  =======================================================
``he``              He/Kaiming normal: N(0, 2/fan_in)  (alias ``he_normal``)
``he_uniform``      U(-a, a), a = sqrt(6/fan_in)
``xavier``          Glorot/Xavier uniform: U(-a, a), a = sqrt(6/(fan_in+fan_out))
                    (aliases ``xavier_uniform``, ``glorot``, ``glorot_uniform``)
``xavier_normal``   N(0, 2/(fan_in+fan_out))  (alias ``glorot_normal``)
``normal``          N(0, 0.01^2): "small random weights", the classic setting
                    that makes deep sigmoid networks' gradients vanish
``zeros``           all zeros
==================  =======================================================
"""

import math

import numpy


def he_normal(rng, fan_in, fan_out, size=None):
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=size or (fan_in, fan_out))


def he_uniform(rng, fan_in, fan_out, size=None):
    a = math.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, size=size or (fan_in, fan_out))


def xavier_uniform(rng, fan_in, fan_out, size=None):
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=size or (fan_in, fan_out))


def xavier_normal(rng, fan_in, fan_out, size=None):
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=size or (fan_in, fan_out))


def small_normal(rng, fan_in, fan_out, size=None):
    return rng.normal(0.0, 0.01, size=size or (fan_in, fan_out))


def zeros(rng, fan_in, fan_out, size=None):
    return numpy.zeros(size or (fan_in, fan_out))


INITIALIZERS = {
    "he": he_normal, "he_normal": he_normal, "kaiming": he_normal, "kaiming_normal": he_normal,
    "he_uniform": he_uniform, "kaiming_uniform": he_uniform,
    "xavier": xavier_uniform, "xavier_uniform": xavier_uniform, "glorot": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal, "glorot_normal": xavier_normal,
    "normal": small_normal, "zeros": zeros,
}


def get_initializer(init):
    """An initialiser by name, or ``init`` itself when it is callable."""
    if callable(init):
        return init
    if not isinstance(init, str) or init.lower() not in INITIALIZERS:
        raise ValueError(f"unknown init {init!r}; expected one of {sorted(INITIALIZERS)} "
                         "or a callable (rng, fan_in, fan_out) -> array")
    return INITIALIZERS[init.lower()]


def initial_weights(init, rng, fan_in, fan_out, dtype, shape=None):
    """Draw a host array of ``dtype`` and check its shape and values.

    ``shape`` defaults to (fan_in, fan_out) (Dense). A layer whose weights
    are not that matrix gives its own shape and fans: Conv2D draws its
    (out_channels, in_channels, kh, kw) kernel with fan_in = in_channels*kh*kw
    and fan_out = out_channels*kh*kw (PyTorch's fans). The built-in
    initialisers draw ``shape`` directly (their ``size`` argument); a callable
    ``init(rng, fan_in, fan_out)`` must return an array of ``shape``.
    """
    shape = (fan_in, fan_out) if shape is None else tuple(shape)
    fn = get_initializer(init)
    if fn in INITIALIZERS.values():
        W = numpy.asarray(fn(rng, fan_in, fan_out, size=shape), dtype=dtype)
    else:
        W = numpy.asarray(fn(rng, fan_in, fan_out), dtype=dtype)
    if W.shape != shape:
        raise ValueError(f"init {init!r} returned shape {W.shape}, expected {shape}")
    if not numpy.isfinite(W).all():
        bad = int((~numpy.isfinite(W)).sum())
        raise ValueError(f"init {init!r} returned {bad} NaN or infinite weight(s) (in "
                         f"{numpy.dtype(dtype).name})")
    return numpy.ascontiguousarray(W)
