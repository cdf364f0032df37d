"""Shared by the fused backends' convolution and pooling (Numba, CuPy): which
geometries their kernels cover, and the contexts their forwards hand to their
backwards.

A context records the backend that made it (``owner``): a backward given a
context of another kind, or of another backend, leaves it to the base class,
whose composed forward made it (a forward falls back for dtypes and layouts
its kernels do not cover).
"""

from __future__ import annotations


def _ints(pair):
    """``pair`` as a tuple of two Python ints, or None."""
    try:
        a, b = pair
        if int(a) == a and int(b) == b:
            return int(a), int(b)
    except (TypeError, ValueError):
        pass
    return None


def conv_geometry(X, W, stride, padding):
    """``((sh, sw), (ph, pw), (Ho, Wo))`` when the kernels cover this convolution
    of X (N, C, H, W) by W (O, C, kh, kw), else None (the composed default then
    runs, and raises for what is wrong)."""
    if not (getattr(X, "ndim", 0) == 4 and getattr(W, "ndim", 0) == 4
            and X.shape[1] == W.shape[1] and min(X.shape) > 0 and min(W.shape) > 0):
        return None
    stride, padding = _ints(stride), _ints(padding)
    if stride is None or padding is None or min(stride) < 1 or min(padding) < 0:
        return None
    (sh, sw), (ph, pw) = stride, padding
    ho = (X.shape[2] + 2 * ph - W.shape[2]) // sh + 1
    wo = (X.shape[3] + 2 * pw - W.shape[3]) // sw + 1
    if ho < 1 or wo < 1:
        return None
    return stride, padding, (ho, wo)


def pool_geometry(X, pool, stride):
    """``((kh, kw), (sh, sw), (Ho, Wo))`` when the kernels cover this pooling of
    X (N, C, H, W), else None."""
    pool, stride = _ints(pool), _ints(stride)
    if not (getattr(X, "ndim", 0) == 4 and min(X.shape) > 0 and pool and stride
            and min(pool) >= 1 and min(stride) >= 1):
        return None
    ho, wo = (X.shape[2] - pool[0]) // stride[0] + 1, (X.shape[3] - pool[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        return None
    return pool, stride, (ho, wo)


class ConvContext:
    """What a fused conv2d_backward needs from its forward: the column matrix,
    or the input X itself when the backward builds the columns again."""

    __slots__ = ("owner", "cols", "X", "shape", "dtype", "stride", "padding", "has_bias")

    def __init__(self, owner, shape, dtype, stride, padding, has_bias, cols=None, X=None):
        self.owner = owner            # the backend's name
        self.cols = cols              # (C*kh*kw, N*Ho*Wo): the forward's column matrix, or None
        self.X = X                    # the forward's input (kept, not copied), or None
        self.shape = tuple(shape)     # X's shape
        self.dtype = dtype
        self.stride, self.padding, self.has_bias = stride, padding, has_bias

    def belongs_to(self, ops):
        return self.owner == ops.name


class PoolContext:
    """What a fused pooling backward needs from its forward."""

    __slots__ = ("owner", "shape", "pool", "stride", "idx")

    def __init__(self, owner, shape, pool, stride, idx):
        self.owner = owner
        self.shape, self.pool, self.stride = tuple(shape), pool, stride
        self.idx = idx                # max pooling: each window's argmax; average: None

    def belongs_to(self, ops, max_pool):
        return self.owner == ops.name and (self.idx is not None) == max_pool
