"""Shared by the fused backends' recurrent cells (Numba, CuPy): which calls
their kernels cover, and the context a forward hands to its backward.

A context records the backend and the cell that made it; a backward given a
context of another kind (the composed forward ran, e.g. for float16, or
another backend made it) leaves it to the base class.
"""

from __future__ import annotations

#: Gate blocks per hidden unit: U is (H, GATES[cell] * H).
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def recurrent_dims(XW, U, cell, bU=None):
    """``(N, T, H)`` when XW (N, T, G) and U (H, G) (and bU (G,)) fit ``cell``
    with G = GATES[cell] * H and nothing empty, else None (the composed
    default then runs, and raises for what is wrong)."""
    if not (getattr(XW, "ndim", 0) == 3 and getattr(U, "ndim", 0) == 2):
        return None
    n, T, G = XW.shape
    H = U.shape[0]
    if min(n, T, H) < 1 or G != GATES[cell] * H or U.shape[1] != G:
        return None
    if bU is not None and tuple(getattr(bU, "shape", ())) != (G,):
        return None
    return n, T, H


class RecurrentContext:
    """What a fused cell's backward needs from its forward: ``arrays``, by
    name (the gates after their non-linearities, cell states, previous hidden
    states, ...; which ones depends on the cell and the backend)."""

    __slots__ = ("owner", "cell", "dims", "dtype", "return_sequences", "activation", "arrays")

    def __init__(self, owner, cell, dims, dtype, return_sequences, arrays, activation=None):
        self.owner = owner                  # the backend's name
        self.cell = cell                    # "rnn", "lstm" or "gru"
        self.dims = dims                    # (N, T, H)
        self.dtype = dtype
        self.return_sequences = bool(return_sequences)
        self.activation = activation        # the RNN's activation, else None
        self.arrays = arrays

    def belongs_to(self, ops, cell):
        return self.owner == ops.name and self.cell == cell

    def output_shape(self):
        """The shape of the forward's output, which dH must have."""
        n, T, H = self.dims
        return (n, T, H) if self.return_sequences else (n, H)
