"""One table defines each activation.

An entry (an ``ActivationSpec``) gives an activation's name, the integer code
the kernels use, whether ``scratchnet train --activation`` offers it, and its
two formulas: the forward f(z) and the derivative f' written from the
forward *output* y = f(z) (so the backward pass needs no copy of z). Each
formula comes in the three forms the backends need:

* an array form in ``xp`` (NumPy or CuPy): the composed default of
  ``Ops.bias_act`` / ``Ops.act_backward`` in ``backends/base.py``;
* a scalar Python form, which the Numba backend compiles with ``njit`` and
  calls inside its loops. Keep it branch-light arithmetic on ``z``'s own type
  (``type(z)(1)``, not a bare ``1``, which would promote float32 to float64)
  and call ``exp_nonpos`` rather than ``math.exp``, so that LLVM inlines the
  call and vectorises the loop;
* a C form for the CUDA kernels: an expression, or statements ending in a
  ``return``, in the float type ``T`` and the ``sn_*`` math helpers of
  ``kernels/scratchnet_kernels.cu``.

The Numba backend generates its per-code dispatch from the table
(``backends/_numba_kernels.py``), and ``kernels/activations.cuh`` (the
``SN_ACT_*`` codes and the CUDA switch) is generated from it
(``backends/cuda_header.py``) by::

    python3 -m scratchnet.backends.cuda_header > kernels/activations.cuh

so a new activation is one entry plus its formulas. ``register`` adds one at
run time; the backends rebuild their activation kernels when the table
changes. (The layer classes and the CLI name activations by ``name``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["ActivationSpec", "ACTIVATIONS", "get_activation", "names", "entries",
           "builtin", "cli_choices", "register", "unregister", "version", "exp_nonpos"]


def exp_nonpos(x):
    """exp(x) for x <= 0, for the scalar formulas.

    Plain ``math.exp`` here; inside Numba kernels it is replaced by an exp
    that LLVM can vectorise (``_numba_kernels.exp_nonpos``), which a libm
    call is not.
    """
    return math.exp(x)


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: its name, kernel code, CLI flag and formulas.

    ``forward(xp, z, alpha, out)`` returns f(z), written into ``out`` when it
    can (``out`` may be ``z`` or None; the caller copies the result into
    ``out`` otherwise). ``derivative(xp, y, alpha)`` returns f'(z) from the
    output y = f(z), as an array the caller multiplies the incoming gradient
    by. ``scalar_forward(z, alpha)`` / ``scalar_derivative(y, alpha)`` are
    the same formulas on one number, with ``alpha`` already in z's dtype.
    ``c_forward`` / ``c_derivative`` are the C forms, in ``z`` (or ``y``)
    and ``alpha`` of type ``T``.

    ``alpha`` is the one parameter an activation may have (LeakyReLU's slope);
    the others ignore it.

    The three derivative forms are all None for an activation whose
    derivative is 1 everywhere (identity): its backward returns the incoming
    gradient untouched, with no pass over the data and no need for y.

    ``numba_forward`` False means the Numba backend leaves the forward to the
    composed NumPy default because that is faster (tanh: NumPy's SIMD tanh
    beats a loop of scalar libm calls; identity: one ``numpy.add``).
    """

    name: str
    code: int
    cli: bool
    forward: Callable
    derivative: Optional[Callable]
    scalar_forward: Callable
    scalar_derivative: Optional[Callable]
    c_forward: str
    c_derivative: Optional[str]
    numba_forward: bool = True

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            # The name becomes a C macro (SN_ACT_<NAME>) and a C function name.
            raise ValueError(f"activation name must be an identifier, got {self.name!r}")
        if isinstance(self.code, bool) or not isinstance(self.code, int) or self.code < 0:
            raise ValueError(f"activation {self.name!r}: code must be an int >= 0, "
                             f"got {self.code!r}")
        grads = (self.derivative, self.scalar_derivative, self.c_derivative)
        if any(g is None for g in grads) and not all(g is None for g in grads):
            raise ValueError(f"activation {self.name!r}: give all three derivative forms "
                             f"(xp, scalar, C), or none for a derivative of 1")

    @property
    def passes_gradient(self):
        """True when f' is 1 everywhere: backward is the incoming gradient itself."""
        return self.derivative is None


# ------------------------------------------------------------------ formulas
# identity: f(z) = z
def _identity(xp, z, alpha, out):
    return z


def _identity_scalar(z, alpha):
    return z


# relu: f(z) = max(z, 0); f' = 1 where y > 0
def _relu(xp, z, alpha, out):
    return xp.maximum(z, 0, out=out)  # NaN passes through


def _relu_grad(xp, y, alpha):
    return y > 0


def _relu_scalar(z, alpha):
    zero = type(z)(0)
    return zero if z < zero else z  # NaN passes through, as numpy.maximum


def _relu_grad_scalar(y, alpha):
    return type(y)(1) if y > type(y)(0) else type(y)(0)


# leaky_relu: f(z) = z for z > 0, alpha * z otherwise (alpha >= 0, so y > 0 iff z > 0)
def _leaky_relu(xp, z, alpha, out):
    return xp.where(z > 0, z, z * z.dtype.type(alpha))


def _leaky_relu_grad(xp, y, alpha):
    return xp.where(y > 0, y.dtype.type(1), y.dtype.type(alpha))


def _leaky_relu_scalar(z, alpha):
    return z if z > type(z)(0) else z * alpha


def _leaky_relu_grad_scalar(y, alpha):
    return type(y)(1) if y > type(y)(0) else alpha


# sigmoid: f(z) = 1 / (1 + exp(-z)), from exp(-|z|) only: never overflows, and
# keeps the small tail for large |z|; f' = y (1 - y)
def _sigmoid(xp, z, alpha, out):
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def _sigmoid_grad(xp, y, alpha):
    return y * (1 - y)


def _sigmoid_scalar(z, alpha):
    one = type(z)(1)
    e = exp_nonpos(-abs(z))
    return (one if z >= type(z)(0) else e) / (one + e)


def _sigmoid_grad_scalar(y, alpha):
    return y * (type(y)(1) - y)


# tanh: f' = 1 - y^2
def _tanh(xp, z, alpha, out):
    return xp.tanh(z, out=out)


def _tanh_grad(xp, y, alpha):
    return 1 - y * y


def _tanh_scalar(z, alpha):
    return math.tanh(z)


def _tanh_grad_scalar(y, alpha):
    return type(y)(1) - y * y


_SIGMOID_C = "T e = sn_exp(-sn_abs(z));\nreturn z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);"

#: The built-in activations, in code order (the code is what a kernel is passed).
_BUILTIN = (
    ActivationSpec("identity", 0, False, _identity, None, _identity_scalar, None,
                   "z", None, numba_forward=False),
    ActivationSpec("relu", 1, True, _relu, _relu_grad, _relu_scalar, _relu_grad_scalar,
                   "z < T(0) ? T(0) : z", "y > T(0) ? T(1) : T(0)"),
    ActivationSpec("leaky_relu", 2, True, _leaky_relu, _leaky_relu_grad, _leaky_relu_scalar,
                   _leaky_relu_grad_scalar, "z > T(0) ? z : z * alpha",
                   "y > T(0) ? T(1) : alpha"),
    ActivationSpec("sigmoid", 3, True, _sigmoid, _sigmoid_grad, _sigmoid_scalar,
                   _sigmoid_grad_scalar, _SIGMOID_C, "y * (T(1) - y)"),
    ActivationSpec("tanh", 4, True, _tanh, _tanh_grad, _tanh_scalar, _tanh_grad_scalar,
                   "sn_tanh(z)", "T(1) - y * y", numba_forward=False),
)

# ------------------------------------------------------------------ the table
_table: dict = {spec.name: spec for spec in _BUILTIN}
_version = 0

#: Names of the built-in activations, in code order.
ACTIVATIONS = tuple(spec.name for spec in _BUILTIN)


def get_activation(name):
    """The ``ActivationSpec`` called ``name``; ValueError naming the choices otherwise."""
    try:
        return _table[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise ValueError(f"unknown activation {name!r}; expected one of "
                         f"{', '.join(names())}") from None


def entries():
    """Every activation in the table, in code order."""
    return tuple(sorted(_table.values(), key=lambda spec: spec.code))


def names():
    """Names of every activation in the table, in code order."""
    return tuple(spec.name for spec in entries())


def cli_choices():
    """Names that ``scratchnet train --activation`` offers, in code order."""
    return tuple(spec.name for spec in entries() if spec.cli)


def builtin():
    """The built-in entries, in code order: the table as shipped."""
    return _BUILTIN


def version():
    """A number that changes whenever the table does (backends rebuild kernels on it)."""
    return _version


def register(spec):
    """Add ``spec`` to the table; its name and code must be new."""
    global _version
    if not isinstance(spec, ActivationSpec):
        raise TypeError(f"register expects an ActivationSpec, got {type(spec).__name__}")
    if spec.name in _table:
        raise ValueError(f"activation {spec.name!r} is already registered")
    for other in _table.values():
        if other.code == spec.code:
            raise ValueError(f"activation code {spec.code} of {spec.name!r} is already "
                             f"used by {other.name!r}")
    _table[spec.name] = spec
    _version += 1
    return spec


def unregister(name):
    """Remove the activation called ``name`` from the table."""
    global _version
    get_activation(name)  # the error names the choices
    del _table[name]
    _version += 1
