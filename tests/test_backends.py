"""Choosing backends: lazy imports, set/get/use_backend, $SCRATCHNET_BACKEND,
"auto", unavailable backends, and every backend keeping the base signatures."""

import importlib
import inspect
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import scratchnet as sn
from scratchnet import backends
from scratchnet.backends import BACKENDS, BackendUnavailableError, Ops, get_ops
from scratchnet.backends.numpy_ops import NumpyOps

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter; returns the CompletedProcess."""
    full = {k: v for k, v in os.environ.items() if k != "SCRATCHNET_BACKEND"}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=120)


def available(name):
    try:
        get_ops(name)
        return True
    except BackendUnavailableError:
        return False


@pytest.fixture(autouse=True)
def keep_global_backend(monkeypatch):
    """Every test here may call set_backend: restore the process-wide choice."""
    monkeypatch.setattr(backends, "_global_name", backends._global_name)


class FakeOps(NumpyOps):
    """A second backend that is always there (NumPy under another name)."""
    name = "fake"


@pytest.fixture
def fake(monkeypatch):
    ops = FakeOps()
    monkeypatch.setitem(BACKENDS, "fake", (__name__, "FakeOps"))
    monkeypatch.setitem(backends._instances, "fake", ops)
    return ops


# --- lazy imports --------------------------------------------------------------

def test_import_does_not_import_numba_or_cupy():
    code = """
import sys, json
import numpy as np
import scratchnet as sn
after_import = sorted(m for m in ("numba", "cupy") if m in sys.modules)
model = sn.Sequential([sn.Dense(3, 4), sn.ReLU(), sn.Dense(4, 2)], seed=0)
model.fit(np.zeros((8, 3)), np.zeros(8, dtype=int), loss=sn.SoftmaxCrossEntropy(),
          optimizer=sn.Adam(), epochs=1)
after_fit = sorted(m for m in ("numba", "cupy") if m in sys.modules)
print(json.dumps([after_import, after_fit, sn.get_backend().name]))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    after_import, after_fit, name = json.loads(proc.stdout.strip().splitlines()[-1])
    assert after_import == [], f"import scratchnet imported {after_import}"
    assert after_fit == [], f"training on numpy imported {after_fit}"
    assert name == "numpy"


# --- available_backends, auto ------------------------------------------------------

def test_available_backends():
    names = sn.available_backends()
    assert "numpy" in names
    assert names == [n for n in BACKENDS if n in names]          # registry order
    status = backends.backend_status()
    assert set(status) == set(BACKENDS)
    for name, why in status.items():
        assert (why is None) == (name in names)
        if why is not None:
            assert isinstance(why, str) and why.strip(), name
            with pytest.raises(BackendUnavailableError):
                get_ops(name)
        else:
            assert get_ops(name).name == name


def test_auto_prefers_cupy_then_numba_then_numpy():
    names = sn.available_backends()
    expected = "cupy" if "cupy" in names else "numba" if "numba" in names else "numpy"
    assert backends.resolve_auto() == expected
    assert get_ops("auto").name == expected
    assert sn.set_backend("auto").name == expected
    assert sn.get_backend().name == expected
    from scratchnet._compat import module_installed
    if not module_installed("numba") and "cupy" not in names:
        assert expected == "numpy"


def test_backend_objects(backend):
    ops = get_ops(backend)
    assert isinstance(ops, Ops) and ops.name == backend
    assert get_ops(backend) is ops                               # one instance per name
    assert get_ops(ops) is ops
    assert backend in ops.describe() and backend in repr(ops)
    x = ops.asarray(np.arange(6.0).reshape(2, 3))
    assert ops.is_own_array(x)
    np.testing.assert_array_equal(ops.to_host(x), np.arange(6.0).reshape(2, 3))
    assert isinstance(ops.to_host(x), np.ndarray)
    assert ops.zeros((2, 2)).dtype == np.float32
    ops.synchronize()


# --- set_backend / get_backend / use_backend ---------------------------------------

def test_set_and_get_backend(backend):
    ops = sn.set_backend(backend)
    assert ops.name == backend and sn.get_backend() is ops
    model = sn.Sequential([sn.Dense(2, 2)])
    assert model.ops is ops
    assert sn.Sequential([sn.Dense(2, 2)], backend="numpy").ops.name == "numpy"
    sn.set_backend("numpy")
    assert sn.get_backend().name == "numpy"


def test_set_backend_rejects_bad_names():
    before = sn.get_backend()
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        sn.set_backend("tpu")
    with pytest.raises(TypeError):
        sn.set_backend(None)
    assert sn.get_backend() is before


def test_use_backend(backend):
    outer = sn.get_backend()
    with sn.use_backend(backend) as ops:
        assert ops.name == backend and sn.get_backend() is ops
        assert sn.Sequential([sn.Dense(2, 2)]).ops is ops
    assert sn.get_backend() is outer


def test_use_backend_nesting(fake):
    sn.set_backend("numpy")
    with sn.use_backend("fake") as a:
        assert a is fake and sn.get_backend() is fake
        with sn.use_backend("numpy") as b:
            assert b.name == "numpy" and sn.get_backend() is b
            with sn.use_backend("fake"):
                assert sn.get_backend() is fake
            assert sn.get_backend() is b
        assert sn.get_backend() is fake
    assert sn.get_backend().name == "numpy"


def test_use_backend_wins_over_set_backend(fake):
    sn.set_backend("fake")
    with sn.use_backend("numpy"):
        assert sn.get_backend().name == "numpy"
        sn.set_backend("fake")
        assert sn.get_backend().name == "numpy"
    assert sn.get_backend() is fake


def test_use_backend_restores_after_exception(fake):
    sn.set_backend("numpy")
    with pytest.raises(ZeroDivisionError):
        with sn.use_backend("fake"):
            with sn.use_backend("numpy"):
                1 / 0
    assert sn.get_backend().name == "numpy"
    with pytest.raises(ValueError):
        with sn.use_backend("tpu"):
            pass
    assert sn.get_backend().name == "numpy"


def test_use_backend_is_per_thread(fake):
    sn.set_backend("numpy")
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with sn.use_backend("fake"):
            seen["worker_inside"] = sn.get_backend().name
            entered.set()
            release.wait(10)
        seen["worker_after"] = sn.get_backend().name

    t = threading.Thread(target=worker)
    t.start()
    assert entered.wait(10)
    seen["main_while_worker_inside"] = sn.get_backend().name
    release.set()
    t.join(10)

    def probe():
        seen["thread_while_main_inside"] = sn.get_backend().name

    with sn.use_backend("fake"):
        t = threading.Thread(target=probe)
        t.start()
        t.join(10)
        seen["main_inside"] = sn.get_backend().name
    assert seen == {"worker_inside": "fake", "main_while_worker_inside": "numpy",
                    "worker_after": "numpy", "thread_while_main_inside": "numpy",
                    "main_inside": "fake"}


# --- $SCRATCHNET_BACKEND -----------------------------------------------------------

ENV_PROBE = "import scratchnet as sn; print(sn.get_backend().name)"


def test_environment_variable_picks_backend(backend):
    proc = run_python(ENV_PROBE, SCRATCHNET_BACKEND=backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == backend


def test_environment_variable_default_and_auto():
    proc = run_python(ENV_PROBE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "numpy"
    proc = run_python(ENV_PROBE, SCRATCHNET_BACKEND=" auto ")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == backends.resolve_auto()


def test_environment_variable_does_not_override_set_backend():
    code = "import scratchnet as sn; sn.set_backend('numpy'); print(sn.get_backend().name)"
    proc = run_python(code, SCRATCHNET_BACKEND="bogus")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "numpy"


def test_environment_variable_unavailable_backend():
    missing = [name for name in BACKENDS if not available(name)]
    if not missing:
        pytest.skip("every backend is available here")
    proc = run_python(ENV_PROBE, SCRATCHNET_BACKEND=missing[0])
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "BackendUnavailableError" in last and "SCRATCHNET_BACKEND" in last, last


# --- an unavailable backend ----------------------------------------------------------

@pytest.fixture
def fresh_registry(monkeypatch):
    """Empty backend caches, and numba's backend modules forgotten, so the next
    get_ops('numba') imports them again; everything restored afterwards."""
    monkeypatch.setattr(backends, "_instances", {})
    monkeypatch.setattr(backends, "_failures", {})
    saved = {k: v for k, v in sys.modules.items()
             if k.startswith("scratchnet.") and "numba" in k}
    attrs = {k: getattr(backends, k) for k in dir(backends) if "numba" in k}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k.startswith("scratchnet.") and "numba" in k]:
        del sys.modules[k]
    sys.modules.update(saved)
    for k in [k for k in dir(backends) if "numba" in k]:
        delattr(backends, k)
    for k, v in attrs.items():
        setattr(backends, k, v)


def test_unavailable_backend_raises_with_reason(fresh_registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)         # "numba is not installed"
    with pytest.raises(BackendUnavailableError, match="numba") as info:
        get_ops("numba")
    reason = str(info.value)
    assert len(reason) > len("numba")
    # remembered, and reported the same way everywhere
    with pytest.raises(BackendUnavailableError) as again:
        get_ops("numba")
    assert str(again.value) == reason
    assert "numba" not in sn.available_backends() and "numpy" in sn.available_backends()
    assert backends.backend_status()["numba"] == reason
    with pytest.raises(BackendUnavailableError):
        sn.set_backend("numba")
    with pytest.raises(BackendUnavailableError):
        with sn.use_backend("numba"):
            pass
    assert backends.resolve_auto() in ("numpy", "cupy")
    assert backends.resolve_auto() != "numba"


def test_registry_restored_after_simulation():
    """The fixture above put everything back (this runs after it)."""
    assert get_ops("numpy").name == "numpy"
    assert isinstance(backends._instances, dict) and "numpy" in backends._instances


def test_cupy_unavailable_reason():
    if available("cupy"):
        pytest.skip("CuPy works here")
    with pytest.raises(BackendUnavailableError) as info:
        get_ops("cupy")
    assert any(w in str(info.value) for w in ("CuPy", "CUDA", "cupy")), str(info.value)


# --- every backend keeps the base class's signatures ----------------------------------

def _signature(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_keeps_base_signatures(name):
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        pytest.skip(f"{module_name} cannot be imported here: {err}")
    cls = getattr(module, class_name)
    assert issubclass(cls, Ops) and cls.name == name
    assert callable(getattr(cls, "check_available", None))
    checked = 0
    for attr, value in vars(cls).items():
        base = getattr(Ops, attr, None)
        if not callable(base) or attr.startswith("__") or not callable(value):
            continue
        fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        assert _signature(fn) == _signature(base), (
            f"{class_name}.{attr}{inspect.signature(fn)} differs from "
            f"Ops.{attr}{inspect.signature(base)}")
        checked += 1
    if name != "numpy":
        assert checked > 0, f"{class_name} overrides nothing"


def test_environment_variable_is_read_until_set_backend(monkeypatch):
    import scratchnet.backends as B
    monkeypatch.setattr(B, "_global_name", None)
    monkeypatch.setenv("SCRATCHNET_BACKEND", "numpy")
    assert sn.get_backend().name == "numpy"
    monkeypatch.setenv("SCRATCHNET_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SCRATCHNET_BACKEND='bogus'"):
        sn.get_backend()
    sn.set_backend("numpy")        # an explicit choice wins over the variable
    assert sn.get_backend().name == "numpy"
