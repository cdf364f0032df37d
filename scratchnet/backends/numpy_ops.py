"""The NumPy backend: the reference every other backend is tested against.

It is the base class's composed defaults, unchanged: readable, and correct by
construction. Faster backends live beside it (``numba_ops``, ``cupy_ops``).
"""

import numpy

from .base import Ops


class NumpyOps(Ops):
    name = "numpy"
    xp = numpy

    def check_available(self):
        """NumPy is a hard dependency: always available."""
