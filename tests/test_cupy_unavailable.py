"""The cupy backend where CuPy or a GPU is missing: no GPU needed, not gpu-marked.

Covers the reasons ``get_ops("cupy")`` gives, the argument checks of the kernel
wrappers (plain functions, exercised here with NumPy arrays), finding the kernel
source, and that ``import scratchnet`` imports neither CuPy nor numba.
"""

import inspect
import subprocess
import sys
import types
from pathlib import Path

import numpy
import pytest

import scratchnet.backends as backends
from scratchnet._compat import module_installed
from scratchnet.backends import BackendUnavailableError, Ops, get_ops
from scratchnet.backends import cupy_ops
from scratchnet.backends.cupy_ops import (CupyOps, check_array, check_device, check_labels,
                                          check_like, describe_cuda_error, kernel_source)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_registry(monkeypatch):
    """Empty backend caches, restored afterwards."""
    monkeypatch.setattr(backends, "_instances", {})
    monkeypatch.setattr(backends, "_failures", {})


# -------------------------------------------------------------- reasons
def test_get_ops_without_cupy_says_how_to_install(monkeypatch, fresh_registry):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now fails
    with pytest.raises(BackendUnavailableError, match="pip install") as err:
        get_ops("cupy")
    assert str(err.value) == cupy_ops.NOT_INSTALLED
    # The failure is remembered, with the same reason.
    with pytest.raises(BackendUnavailableError, match="CuPy is not installed"):
        get_ops("cupy")


def test_auto_without_cupy_does_not_pick_cupy(monkeypatch, fresh_registry):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert backends.resolve_auto() != "cupy"


@pytest.mark.parametrize("body", [
    "raise ImportError('CuPy is not correctly installed: libcudart.so.13 not found')",
    "import fastrlock_that_is_missing",
])
def test_broken_cupy_install_is_not_called_missing(monkeypatch, tmp_path, fresh_registry,
                                                    body):
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(body + "\n")
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailableError,
                       match="CuPy is installed but cannot be imported: .*(libcudart|fastrlock)"):
        get_ops("cupy")


class FakeCUDAError(RuntimeError):
    pass


def fake_cupy(device_count=1, driver=13000, runtime=13020, kernel_error=None):
    """A stand-in for the cupy module with just what check_available() touches."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "99.0.0"

    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    rt = types.SimpleNamespace(getDeviceCount=get_device_count,
                               driverGetVersion=lambda: driver,
                               runtimeGetVersion=lambda: runtime)
    cupy.cuda = types.SimpleNamespace(runtime=rt)

    def arange(n):
        if kernel_error is not None:
            raise kernel_error
        return numpy.arange(n)

    cupy.arange = arange
    return cupy


@pytest.mark.parametrize("cupy,reason", [
    (fake_cupy(device_count=FakeCUDAError(
        "cudaErrorNoDevice: no CUDA-capable device is detected")),
     "no CUDA device: cudaErrorNoDevice: no CUDA-capable device is detected"),
    (fake_cupy(device_count=0), "no CUDA device: CuPy found 0 CUDA devices"),
    # What CuPy says on a machine without the NVIDIA driver (driver version 0).
    (fake_cupy(device_count=FakeCUDAError(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
        "runtime version"), driver=0),
     "no CUDA device: no NVIDIA driver was found (cudaErrorInsufficientDriver"),
    (fake_cupy(device_count=FakeCUDAError(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
        "runtime version"), driver=12020),
     "CUDA driver too old for this CuPy: cudaErrorInsufficientDriver"),
    (fake_cupy(kernel_error=FakeCUDAError(
        "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an "
        "unsupported toolchain."), driver=12040),
     "CUDA driver too old for this CuPy: CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
    (fake_cupy(kernel_error=RuntimeError(
        "CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot open shared "
        "object file")),
     'CuPy cannot compile CUDA kernels: CuPy failed to load libnvrtc.so.13'),
])
def test_check_available_reports_cupys_reason(monkeypatch, fresh_registry, cupy, reason):
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    with pytest.raises(BackendUnavailableError) as err:
        get_ops("cupy")
    assert str(err.value).startswith(reason), str(err.value)


def test_missing_nvrtc_says_how_to_install_it():
    err = RuntimeError("CuPy failed to load libnvrtc.so.12")
    msg = describe_cuda_error(fake_cupy(runtime=12080), err)
    assert 'pip install "cupy-cuda12x[ctk]"' in msg


def test_driver_too_old_names_both_versions():
    err = FakeCUDAError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    msg = describe_cuda_error(fake_cupy(driver=12020, runtime=13020), err)
    assert "driver supports CUDA 12.2" in msg and "CUDA 13.2" in msg


def test_fake_working_cupy_is_available(monkeypatch, fresh_registry):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    ops = get_ops("cupy")
    assert isinstance(ops, CupyOps) and ops.xp is sys.modules["cupy"]


@pytest.mark.skipif(not module_installed("cupy"), reason="CuPy is not installed")
def test_real_cupy_reason_is_one_of_ours(fresh_registry):
    """With CuPy installed, either the backend works or its reason is a known one."""
    try:
        get_ops("cupy")
    except BackendUnavailableError as err:
        assert str(err).startswith(("no CUDA device: ", "CUDA driver too old for this CuPy: ",
                                    "CuPy is installed but cannot be imported: ",
                                    "CuPy cannot compile CUDA kernels: ")), str(err)
    else:
        pytest.skip("a CUDA device works here (see tests/test_cupy.py)")


# ------------------------------------------------------------ the class
def test_methods_keep_the_base_signatures():
    for name, method in vars(CupyOps).items():
        base = getattr(Ops, name, None)
        if callable(method) and callable(base) and not name.startswith("_"):
            assert inspect.signature(method) == inspect.signature(base), name


def test_constructing_without_cupy_does_not_raise(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    ops = CupyOps()
    assert ops.xp is None
    with pytest.raises(BackendUnavailableError, match="pip install"):
        ops.check_available()


# ------------------------------------------------------ argument checks
def test_check_array_accepts_a_good_array():
    check_array("Z", numpy.zeros((3, 4), numpy.float32), dtype=numpy.float32, ndim=2,
                shape=(3, 4))


def test_check_array_wrong_dtype_names_the_argument():
    with pytest.raises(TypeError, match="Z must have dtype float32, got float64"):
        check_array("Z", numpy.zeros((3, 4)), dtype=numpy.float32)


def test_check_array_wrong_ndim_names_the_argument():
    with pytest.raises(ValueError, match="Z must be 2-D, got 1-D"):
        check_array("Z", numpy.zeros(4, numpy.float32), ndim=2)


def test_check_array_wrong_shape_names_the_argument():
    with pytest.raises(ValueError, match=r"b must have shape \(4,\), got \(5,\)"):
        check_array("b", numpy.zeros(5, numpy.float32), shape=(4,))


def test_check_array_non_contiguous_names_the_argument():
    with pytest.raises(ValueError, match="Z must be C-contiguous"):
        check_array("Z", numpy.zeros((4, 6), numpy.float32)[:, ::2])
    with pytest.raises(ValueError, match="W must be C-contiguous"):
        check_array("W", numpy.zeros((4, 6), numpy.float32).T)


def test_check_array_rejects_non_arrays():
    with pytest.raises(TypeError, match="Z must be an array, got list"):
        check_array("Z", [[1.0]])


def test_check_like_mismatched_shapes_and_dtypes():
    ref = numpy.zeros((3, 4), numpy.float32)
    check_like("grad", numpy.ones((3, 4), numpy.float32), "param", ref)
    with pytest.raises(ValueError, match=r"grad must have the shape of param \(3, 4\), "
                                         r"got \(4, 3\)"):
        check_like("grad", numpy.zeros((4, 3), numpy.float32), "param", ref)
    with pytest.raises(TypeError, match=r"velocity must have the dtype of param \(float32\)"):
        check_like("velocity", numpy.zeros((3, 4)), "param", ref)
    with pytest.raises(ValueError, match="m must be C-contiguous"):
        check_like("m", numpy.zeros((4, 3), numpy.float32).T, "param", ref)


def test_check_labels():
    check_labels("labels", numpy.zeros(5, numpy.uint8), 5)
    with pytest.raises(TypeError, match="labels must have an integer dtype, got float32"):
        check_labels("labels", numpy.zeros(5, numpy.float32), 5)
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\), got \(4,\)"):
        check_labels("labels", numpy.zeros(4, numpy.int64), 5)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        check_labels("labels", numpy.zeros((5, 1), numpy.int64), 5)


def test_check_device_rejects_numpy_arrays_with_the_fix():
    with pytest.raises(TypeError, match=r"X is a numpy array .* ops.asarray\(X\)"):
        check_device("X", numpy.zeros(3))
    with pytest.raises(TypeError, match="Y must be a cupy array, got NoneType"):
        check_device("Y", None)


# -------------------------------------------------------- kernel source
def test_kernel_source_found_in_the_checkout():
    text = kernel_source()
    assert text == (ROOT / "kernels" / cupy_ops.KERNEL_FILE).read_text()
    for expr in cupy_ops.name_expressions():
        assert expr.split("<")[0] in text


def test_kernel_source_missing_names_both_places():
    with pytest.raises(FileNotFoundError) as err:
        kernel_source("no_such_kernels.cu")
    msg = str(err.value)
    assert "no_such_kernels.cu" in msg
    assert "scratchnet.kernels" in msg and str(ROOT / "kernels") in msg


# ------------------------------------------------------- import hygiene
def test_import_scratchnet_imports_neither_cupy_nor_numba():
    code = ("import sys, scratchnet, scratchnet.backends, scratchnet.backends.cupy_ops; "
            "print(sorted(m for m in ('cupy', 'numba') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
