"""Every optional import lives here, probed without importing heavy modules.

``import scratchnet`` must not import numba or cupy (and must never initialise
CUDA): these helpers look at ``sys.modules`` or ask ``importlib`` whether a
module could be imported, nothing more.
"""

import importlib.util
import sys


def module_installed(name):
    """True when ``import name`` would find a module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def is_cupy_array(x):
    """True for a CuPy array, decided without importing CuPy."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


def array_library(x):
    """'numpy', 'cupy' or None (not an array), for error messages."""
    if is_cupy_array(x):
        return "cupy"
    if type(x).__module__ == "numpy" and hasattr(x, "dtype"):
        return "numpy"
    return None
