"""The activation table: its entries' formulas, the code generated from it (the
Numba dispatch, the CUDA header), and a new entry registered at run time
reaching every CPU backend with nothing else changed."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchnet import activations
from scratchnet.activations import (ACTIVATIONS, ActivationSpec, cli_choices, exp_nonpos,
                                    get_activation)
from scratchnet.backends import BackendUnavailableError, get_ops
from scratchnet.backends.cuda_header import cuda_header

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "kernels" / "activations.cuh"


# ------------------------------------------------------------ a new entry
# softplus, as a user would add it: f(z) = log(1 + e^z), and from y = f(z),
# f'(z) = sigmoid(z) = 1 - e^-y.
def _softplus(xp, z, alpha, out):
    return xp.add(xp.maximum(z, 0), xp.log1p(xp.exp(-xp.abs(z))), out=out)


def _softplus_grad(xp, y, alpha):
    return -xp.expm1(-y)


def _softplus_scalar(z, alpha):
    zero = type(z)(0)
    return (z if z > zero else zero) + math.log1p(exp_nonpos(-abs(z)))


def _softplus_grad_scalar(y, alpha):
    return type(y)(1) - exp_nonpos(-y)


SOFTPLUS = ActivationSpec(
    "softplus", 7, False, _softplus, _softplus_grad, _softplus_scalar, _softplus_grad_scalar,
    c_forward="(z > T(0) ? z : T(0)) + sn_log1p(sn_exp(-sn_abs(z)))",
    c_derivative="T(1) - sn_exp(-y)")


def softplus_reference(z):
    return np.logaddexp(0.0, z), 1 / (1 + np.exp(-z))  # f(z), f'(z)


@pytest.fixture
def softplus():
    """SOFTPLUS in the table for the test, and out of it afterwards."""
    activations.register(SOFTPLUS)
    try:
        yield SOFTPLUS
    finally:
        activations.unregister(SOFTPLUS.name)


# ------------------------------------------------------------------ table
def test_builtin_names_codes_and_cli_choices():
    assert ACTIVATIONS == ("identity", "relu", "leaky_relu", "sigmoid", "tanh")
    assert [get_activation(name).code for name in ACTIVATIONS] == [0, 1, 2, 3, 4]
    assert activations.names() == ACTIVATIONS
    assert cli_choices() == ("relu", "leaky_relu", "sigmoid", "tanh")
    # The Numba backend leaves tanh's and identity's forward to NumPy (faster).
    assert [s.name for s in activations.entries() if not s.numba_forward] == \
        ["identity", "tanh"]
    assert [s.name for s in activations.entries() if s.passes_gradient] == ["identity"]


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'; expected one of "
                                         r"identity, relu, leaky_relu, sigmoid, tanh"):
        get_activation("gelu")
    with pytest.raises(ValueError, match=r"unknown activation \['relu'\]"):
        get_activation(["relu"])


def test_entries_are_immutable_and_checked():
    with pytest.raises(AttributeError):
        get_activation("relu").code = 9
    relu = get_activation("relu")
    fields = dict(name=relu.name, code=relu.code, cli=relu.cli, forward=relu.forward,
                  derivative=relu.derivative, scalar_forward=relu.scalar_forward,
                  scalar_derivative=relu.scalar_derivative, c_forward=relu.c_forward,
                  c_derivative=relu.c_derivative)
    with pytest.raises(ValueError, match="identifier"):
        ActivationSpec(**{**fields, "name": "my-relu"})
    with pytest.raises(ValueError, match="code must be an int >= 0"):
        ActivationSpec(**{**fields, "code": -1})
    with pytest.raises(ValueError, match="all three derivative forms"):
        ActivationSpec(**{**fields, "c_derivative": None})


def test_register_refuses_taken_names_and_codes(softplus):
    with pytest.raises(ValueError, match="'softplus' is already registered"):
        activations.register(softplus)
    with pytest.raises(ValueError, match="code 3 of 'sigmoid2' is already used by 'sigmoid'"):
        activations.register(ActivationSpec(**{**vars(get_activation("sigmoid")),
                                               "name": "sigmoid2"}))
    with pytest.raises(TypeError, match="ActivationSpec"):
        activations.register("softplus")


def test_register_and_unregister_change_the_version():
    before = activations.version()
    activations.register(SOFTPLUS)
    assert activations.version() != before and "softplus" in activations.names()
    activations.unregister("softplus")
    assert "softplus" not in activations.names()
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        activations.unregister("softplus")


# --------------------------------------------------------------- formulas
GRID = np.concatenate([np.linspace(-6, 6, 97), [-40.0, -1e-3, 1e-3, 40.0]])


@pytest.mark.parametrize("spec", activations.builtin() + (SOFTPLUS,), ids=lambda s: s.name)
def test_scalar_forms_equal_the_array_forms(spec):
    """The Numba form (run as plain Python here) and the NumPy form are one formula."""
    z = GRID.copy()
    y = spec.forward(np, z.copy(), 0.1, None)
    y_scalar = np.array([spec.scalar_forward(v, 0.1) for v in z])
    np.testing.assert_allclose(y_scalar, y, rtol=1e-13, atol=1e-300)
    if not spec.passes_gradient:
        d = np.broadcast_to(spec.derivative(np, y, 0.1), y.shape)
        d_scalar = np.array([spec.scalar_derivative(v, 0.1) for v in y])
        np.testing.assert_allclose(d_scalar, d, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("spec", activations.builtin() + (SOFTPLUS,), ids=lambda s: s.name)
def test_derivative_from_the_output_matches_finite_differences(spec):
    z = GRID[np.abs(GRID) > 1e-2]  # away from relu's kink
    h = 1e-6
    numeric = (spec.forward(np, z + h, 0.1, None) - spec.forward(np, z - h, 0.1, None)) / (2 * h)
    y = spec.forward(np, z.copy(), 0.1, None)
    analytic = np.ones_like(z) if spec.passes_gradient else \
        np.broadcast_to(spec.derivative(np, y, 0.1), z.shape).astype(float)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_softplus_entry_is_right():
    """The test's own entry against an independent formula."""
    f, df = softplus_reference(GRID)
    np.testing.assert_allclose(_softplus(np, GRID, 0, None), f, rtol=1e-14)
    np.testing.assert_allclose(-np.expm1(-f), df, rtol=1e-12, atol=1e-300)


# --------------------------------------------------------------- generated
def test_committed_cuda_header_is_the_generated_one():
    assert HEADER.read_text() == cuda_header(activations.builtin()), \
        ("kernels/activations.cuh differs from the table: regenerate it with "
         "python3 -m scratchnet.backends.cuda_header > kernels/activations.cuh")


def test_cuda_header_command_prints_the_committed_header():
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "scratchnet.backends.cuda_header"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == HEADER.read_text()


@pytest.mark.parametrize("name", ["scratchnet_kernels.cu", "conv_kernels.cu",
                                  "recurrent_kernels.cu"])
def test_kernel_files_take_their_activations_and_math_from_the_headers(name):
    """Each kernel file includes the two headers and defines neither's contents;
    what NVRTC gets has both inlined and no #include left."""
    from scratchnet.backends.cupy_ops import KERNEL_FILES, kernel_source, nvrtc_source
    assert name in KERNEL_FILES
    text = kernel_source(name)
    assert '#include "activations.cuh"' in text and '#include "common.cuh"' in text
    assert "#define SN_ACT_" not in text and "case SN_ACT_" not in text
    assert "#define SN_GRID_STRIDE" not in text and "float sn_exp(float x)" not in text
    compiled = nvrtc_source(name)
    assert '#include "' not in compiled and cuda_header() in compiled
    assert kernel_source("common.cuh") in compiled and compiled.count("#define SN_GRID_STRIDE") == 1


def test_numba_dispatch_source_has_a_branch_per_entry():
    pytest.importorskip("numba")
    from scratchnet.backends import _numba_kernels as kernels
    source = kernels._dispatch_source(activations.entries() + (SOFTPLUS,))
    for spec in activations.entries() + (SOFTPLUS,):
        assert (f"code == {spec.code}:  # {spec.name}" in source) == \
            (spec.numba_forward or not spec.passes_gradient)
        assert (f"forward_{spec.code}(" in source) == spec.numba_forward
        assert (f"derivative_{spec.code}(" in source) == (not spec.passes_gradient)


# ---------------------------------------------- a new entry on every backend
def _cpu_backends():
    names = []
    for name in ("numpy", "numba"):
        try:
            get_ops(name)
        except BackendUnavailableError as err:
            names.append(pytest.param(name, marks=pytest.mark.skip(reason=str(err))))
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_registered_activation_runs_on_the_cpu_backends(softplus, backend, dtype):
    ops = get_ops(backend)
    rng = np.random.default_rng(0)
    Z = (rng.standard_normal((37, 129)) * 5).astype(dtype)
    Z[0, :4] = [60.0, -60.0, 0.0, 1e-20]
    b = rng.standard_normal(129).astype(dtype)
    dY = rng.standard_normal(Z.shape).astype(dtype)
    f, df = softplus_reference(Z.astype(np.float64) + b.astype(np.float64))
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)

    Y = ops.bias_act(Z.copy(), b, "softplus")
    assert Y.dtype == dtype
    np.testing.assert_allclose(Y, f, **tol)
    out = Z.copy()
    assert ops.bias_act(out, b, "softplus", out=out) is out
    np.testing.assert_allclose(out, f, **tol)

    np.testing.assert_allclose(ops.act_backward(dY, Y, "softplus"), dY * df, **tol)
    dZ, db = ops.act_backward_bias(dY, Y, "softplus")
    np.testing.assert_allclose(dZ, dY * df, **tol)
    np.testing.assert_allclose(db, (dY * df).sum(axis=0), rtol=tol["rtol"],
                               atol=tol["atol"] * len(dY))
    if backend == "numba":
        # The kernels rebuilt from the table ran (no fallback to NumPy): the
        # dispatchers built for this table compiled a signature for this dtype.
        from scratchnet.backends import _numba_kernels as kernels
        assert kernels.built_version == activations.version()
        for kernel in (kernels.bias_act, kernels.act_backward):
            assert any(sig[0].dtype.name == np.dtype(dtype).name
                       for sig in kernel.signatures)


@pytest.mark.parametrize("backend", _cpu_backends())
def test_unregistered_activation_is_gone_from_the_backends(backend):
    ops = get_ops(backend)
    Z = np.ones((2, 3), np.float32)
    activations.register(SOFTPLUS)
    try:
        np.testing.assert_allclose(ops.bias_act(Z.copy(), None, "softplus"), np.log1p(np.e),
                                   rtol=1e-6)
    finally:
        activations.unregister("softplus")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        ops.bias_act(Z.copy(), None, "softplus")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        ops.act_backward_bias(Z, Z, "softplus")
    # and the built-in ones still run, from kernels rebuilt for the built-in table
    np.testing.assert_allclose(ops.bias_act(Z.copy(), None, "sigmoid"), 1 / (1 + np.exp(-1)),
                               rtol=1e-6)


def test_registered_activation_reaches_the_cuda_header(softplus):
    header = cuda_header()
    assert "#define SN_ACT_SOFTPLUS 7" in header
    assert "case SN_ACT_SOFTPLUS:\n        return sn_act_softplus(z, alpha);" in header
    assert "return dy * sn_act_softplus_grad(y, alpha);" in header
    assert "return (z > T(0) ? z : T(0)) + sn_log1p(sn_exp(-sn_abs(z)));" in header
    from scratchnet.backends.cupy_ops import nvrtc_source
    assert "SN_ACT_SOFTPLUS" in nvrtc_source()
