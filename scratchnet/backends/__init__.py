"""Choosing a backend: ``set_backend``, ``use_backend``, ``get_backend``.

Backends are imported lazily, by name, the first time they are asked for, so
``import scratchnet`` imports neither numba nor cupy. A backend that cannot
run raises ``BackendUnavailableError`` naming the cause; nothing falls back
silently to another backend.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os

from .base import ACTIVATIONS, Ops

__all__ = ["Ops", "ACTIVATIONS", "BackendUnavailableError", "BACKENDS", "get_ops",
           "set_backend", "use_backend", "get_backend", "available_backends",
           "backend_status", "resolve_auto"]

log = logging.getLogger("scratchnet")

#: name -> (module, class). Order is the order of preference for "auto", reversed.
BACKENDS = {
    "numpy": ("scratchnet.backends.numpy_ops", "NumpyOps"),
    "numba": ("scratchnet.backends.numba_ops", "NumbaOps"),
    "cupy": ("scratchnet.backends.cupy_ops", "CupyOps"),
}

ENV_VAR = "SCRATCHNET_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message names the cause."""


_instances: dict[str, Ops] = {}
_failures: dict[str, str] = {}
_global_name: str | None = None
_current: contextvars.ContextVar = contextvars.ContextVar("scratchnet_backend", default=None)


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {type(name).__name__}")
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of "
                         f"{', '.join(['auto', *BACKENDS])}")


def get_ops(name) -> Ops:
    """The backend object called ``name`` ("numpy", "numba", "cupy" or "auto").

    Raises BackendUnavailableError with the cause when it cannot run here.
    """
    if isinstance(name, Ops):
        return name
    _check_name(name)
    if name == "auto":
        return get_ops(resolve_auto())
    if name in _instances:
        return _instances[name]
    if name in _failures:
        raise BackendUnavailableError(_failures[name])
    module_name, class_name = BACKENDS[name]
    try:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise BackendUnavailableError(f"the {name} backend could not be imported: {err}") from err
        ops = getattr(module, class_name)()
        ops.check_available()
    except BackendUnavailableError as err:
        _failures[name] = str(err)
        raise
    _instances[name] = ops
    return ops


def backend_status() -> dict[str, str | None]:
    """name -> None when the backend works, else the reason it cannot run."""
    status = {}
    for name in BACKENDS:
        try:
            get_ops(name)
            status[name] = None
        except BackendUnavailableError as err:
            status[name] = str(err)
    return status


def available_backends() -> list[str]:
    """Names of the backends that work on this machine, e.g. ``['numpy', 'numba']``."""
    return [name for name, why in backend_status().items() if why is None]


def resolve_auto() -> str:
    """cupy when a CUDA device works, else numba when installed, else numpy."""
    reasons = []
    for name in ("cupy", "numba"):
        try:
            get_ops(name)
        except BackendUnavailableError as err:
            reasons.append(f"{name}: {err}")
            continue
        log.info("scratchnet: 'auto' picked the %s backend", name)
        return name
    log.info("scratchnet: 'auto' picked the numpy backend (%s)", "; ".join(reasons))
    return "numpy"


def set_backend(name) -> Ops:
    """Make ``name`` the default backend for new models; returns the backend."""
    global _global_name
    ops = get_ops(name)
    _global_name = ops.name
    return ops


@contextlib.contextmanager
def use_backend(name):
    """``with use_backend("numba"): ...`` -- the backend within the block (and its thread)."""
    ops = get_ops(name)
    token = _current.set(ops)
    try:
        yield ops
    finally:
        _current.reset(token)


def get_backend() -> Ops:
    """The current backend: ``use_backend`` block, else ``set_backend``, else
    ``$SCRATCHNET_BACKEND``, else numpy."""
    ops = _current.get()
    if ops is not None:
        return ops
    if _global_name is not None:
        return get_ops(_global_name)
    # Read the variable each time until set_backend is called, so a change to
    # the environment is seen; get_ops caches the backend objects.
    requested = os.environ.get(ENV_VAR, "").strip() or "numpy"
    try:
        return get_ops(requested)
    except (ValueError, BackendUnavailableError) as err:
        raise type(err)(f"${ENV_VAR}={requested!r}: {err}") from None
