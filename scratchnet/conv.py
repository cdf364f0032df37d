"""Layers for convolutional networks: ``Conv2D``, ``MaxPool2D``, ``AvgPool2D``,
``GlobalAvgPool2D`` and ``BatchNorm2D``.

Images are (N, C, H, W), as in PyTorch, and so are the kernels: a Conv2D's
``W`` is (out_channels, in_channels, kh, kw) and ``b`` is (out_channels,), so
weights copy across from ``torch.nn.Conv2d`` unchanged. Sizes follow PyTorch's
formula, H_out = (H + 2 * padding - kernel) // stride + 1; padding is zeros;
pooling is in floor mode without padding.

The layers keep the contract of ``scratchnet.layers`` (per-call contexts,
gradients added over the uses of a tied layer, errors naming the layer and
the shapes); the array work is the backend's ``conv2d_*``, ``maxpool2d_*``,
``avgpool2d_*`` and ``batchnorm2d_*`` primitives (``backends/base.py``).
"""

from __future__ import annotations

import numbers

import numpy

from ._validate import check_number, check_positive_int
from .init import get_initializer, initial_weights
from .layers import (BatchStatistics, FusedActivation, Layer, _shape_str,
                     register_layer)

__all__ = ["Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm2D"]


def _pair(value, name, allow_zero=False):
    """An int or a pair of ints (a tuple or list of two) as a pair; TypeError or
    ValueError naming ``name`` otherwise."""
    bound = ">= 0" if allow_zero else "> 0"
    what = f"{name} must be an integer {bound} or a pair of them (rows, cols)"
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what}, got {len(value)} values {tuple(value)!r}")
        items = tuple(value)
    else:
        items = (value, value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"{what}, got {value!r}")
        if item < 0 or (item == 0 and not allow_zero):
            raise ValueError(f"{what}, got {value!r}")
    return int(items[0]), int(items[1])


def _plain(pair):
    """A pair as the user would write it: an int when both are equal."""
    return pair[0] if pair[0] == pair[1] else list(pair)


def _image_shape(layer, input_shape):
    """(C, H, W) from a per-sample shape, or ValueError naming the layer."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        hint = " (images as flat rows? load them with flat=False, or reshape X to " \
               "(N, C, H, W))" if len(shape) == 1 else ""
        raise ValueError(f"{layer.name} expects an image per sample, (N, C, H, W) in a batch, "
                         f"but gets {_shape_str(shape)}{hint}")
    return shape


def _out_size(layer, size, kernel, stride, padding, axis, kernel_name):
    """PyTorch's output length along one axis; ValueError when the window does
    not fit the (padded) input."""
    padded = size + 2 * padding
    if kernel > padded:
        extra = f" padded by {padding} on each side to {padded}" if padding else ""
        raise ValueError(f"{layer.name}: {kernel_name} {kernel} is larger than the input's "
                         f"{axis} {size}{extra}")
    return (padded - kernel) // stride + 1


@register_layer
class Conv2D(FusedActivation, Layer):
    """2-D convolution (PyTorch's cross-correlation): ``Y = f(conv(X, W) + b)``.

    Input (N, in_channels, H, W); output (N, out_channels, H_out, W_out) with
    H_out = (H + 2 ph - kh) // sh + 1 (likewise W_out).
    kernel_size, stride, padding: an int or a pair (rows, cols); padding is
    zeros on each side.
    init: an initialiser of ``scratchnet.init``, drawn for the kernel shape
    with fan_in = in_channels*kh*kw and fan_out = out_channels*kh*kw
    (PyTorch's fans); default ``"he"``. Biases start at zero; ``bias=False``
    drops b.
    activation: None or an activation name ("relu", ...): the fused form.
    ``[Conv2D(...), ReLU()]`` in a model is fused the same way, as for Dense.
    """

    can_skip_input_grad = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, init="he",
                 bias=True, activation=None):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "Conv2D in_channels")
        self.out_channels = check_positive_int(out_channels, "Conv2D out_channels")
        self.kernel_size = _pair(kernel_size, "Conv2D kernel_size")
        self.stride = _pair(stride, "Conv2D stride")
        self.padding = _pair(padding, "Conv2D padding", allow_zero=True)
        get_initializer(init)  # fail now on an unknown name
        self.init, self.bias = init, bool(bias)
        self._set_activation(activation)
        self.param_names = ("W", "b") if self.bias else ("W",)
        self.b = self.db = None
        self._init_params(numpy.random.default_rng())

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def _init_params(self, rng):
        ops, dt = self.ops, self.dtype
        kh, kw = self.kernel_size
        shape = self.weight_shape
        self.W = ops.asarray(initial_weights(self.init, rng, self.in_channels * kh * kw,
                                             self.out_channels * kh * kw, dt, shape=shape))
        self.dW = ops.zeros(shape, dt)
        if self.bias:
            self.b = ops.zeros((self.out_channels,), dt)
            self.db = ops.zeros((self.out_channels,), dt)

    def output_shape(self, input_shape):
        c, h, w = _image_shape(self, input_shape)
        if c != self.in_channels:
            raise ValueError(f"{self.name} expects {self.in_channels} input channel(s) but gets "
                             f"{c} (input {_shape_str(input_shape)})")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (self.out_channels,
                _out_size(self, h, kh, sh, ph, "height", "kernel height"),
                _out_size(self, w, kw, sw, pw, "width", "kernel width"))

    @classmethod
    def state_shapes(cls, config):
        try:
            o = check_positive_int(config.get("out_channels"), "out_channels")
            c = check_positive_int(config.get("in_channels"), "in_channels")
            kh, kw = _pair(config.get("kernel_size"), "kernel_size")
        except (TypeError, ValueError):
            return None     # the constructor refuses it
        shapes = {"W": (o, c, kh, kw)}
        if config.get("bias", True):
            shapes["b"] = (o,)
        return shapes

    def get_config(self):
        init = self.init if isinstance(self.init, str) else "custom"
        config = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                  "kernel_size": _plain(self.kernel_size), "stride": _plain(self.stride),
                  "padding": _plain(self.padding), "init": init, "bias": self.bias}
        if self.activation is not None:
            config["activation"] = self.activation
        return config

    def __repr__(self):
        config = self.get_config()
        parts = [str(self.in_channels), str(self.out_channels),
                 f"kernel_size={config['kernel_size']!r}"]
        defaults = {"stride": 1, "padding": 0, "init": "he", "bias": True}
        parts += [f"{k}={config[k]!r}" for k, v in defaults.items() if config[k] != v]
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        return f"Conv2D({', '.join(parts)})"

    def forward(self, X, training=False):
        """X: (N, in_channels, H, W) -> (N, out_channels, H_out, W_out)."""
        return self.forward_fused(X, training, None)

    def forward_fused(self, X, training, act):
        """Forward with the following activation layer ``act`` run in the same
        pass (its output is kept on ``act.Y`` for diagnostics)."""
        X = self._as_input(X)
        kind, alpha = self._activation_of(act)
        X = self.ops.xp.ascontiguousarray(X)
        Y, ctx = self.ops.conv2d_forward(X, self.W, self.b, self.stride, self.padding,
                                         kind, alpha)
        self._push((ctx, Y, kind, alpha))
        if act is not None:
            act.Y = Y
        return Y

    def backward(self, dY, need_input_grad=True):
        """dY: (N, out_channels, H_out, W_out) -> dX (N, in_channels, H, W), or
        None when ``need_input_grad`` is False (a model's first layer)."""
        ctx, Y, kind, alpha = self._pop()
        if tuple(dY.shape) != tuple(Y.shape):
            raise ValueError(f"{self.name}: dY has shape {tuple(dY.shape)}, the forward output "
                             f"had shape {tuple(Y.shape)}")
        dY = self.ops.xp.ascontiguousarray(dY)
        dX, dW, db = self.ops.conv2d_backward(dY, Y, ctx, self.W, kind, alpha,
                                              need_dX=need_input_grad)
        self._store_grad("W", dW)
        if self.bias:
            self._store_grad("b", db)
        self._done_backward()
        return dX


class _Pool2D(Layer):
    """Shared by MaxPool2D and AvgPool2D: windows of ``pool_size``, moved by
    ``stride`` (default: pool_size), floor mode, no padding."""

    _kind = "pool"

    def __init__(self, pool_size=2, stride=None):
        super().__init__()
        cls = type(self).__name__
        self.pool_size = _pair(pool_size, f"{cls} pool_size")
        self.stride = self.pool_size if stride is None else _pair(stride, f"{cls} stride")
        self._stride_given = stride is not None

    def output_shape(self, input_shape):
        c, h, w = _image_shape(self, input_shape)
        (ph, pw), (sh, sw) = self.pool_size, self.stride
        return (c, _out_size(self, h, ph, sh, 0, "height", "pool height"),
                _out_size(self, w, pw, sw, 0, "width", "pool width"))

    @classmethod
    def state_shapes(cls, config):
        return {}

    def get_config(self):
        return {"pool_size": _plain(self.pool_size),
                "stride": _plain(self.stride) if self._stride_given else None}

    def forward(self, X, training=False):
        X = self._as_input(X)
        X = self.ops.xp.ascontiguousarray(X)
        Y, ctx = getattr(self.ops, f"{self._kind}_forward")(X, self.pool_size, self.stride)
        self._push((ctx, Y.shape))
        return Y

    def backward(self, dY):
        ctx, shape = self._pop()
        if tuple(dY.shape) != tuple(shape):
            raise ValueError(f"{self.name}: dY has shape {tuple(dY.shape)}, the forward output "
                             f"had shape {tuple(shape)}")
        dX = getattr(self.ops, f"{self._kind}_backward")(self.ops.xp.ascontiguousarray(dY), ctx)
        self._done_backward()
        return dX


@register_layer
class MaxPool2D(_Pool2D):
    """Max over each window. Ties send the gradient to one element per window,
    the first maximum in row-major order (as PyTorch)."""

    _kind = "maxpool2d"


@register_layer
class AvgPool2D(_Pool2D):
    """Mean over each window."""

    _kind = "avgpool2d"


@register_layer
class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): the mean of each channel over its H x W positions."""

    def output_shape(self, input_shape):
        c, _, _ = _image_shape(self, input_shape)
        return (c,)

    @classmethod
    def state_shapes(cls, config):
        return {}

    def forward(self, X, training=False):
        X = self._as_input(X)
        self._push(X.shape)
        return X.mean(axis=(2, 3))

    def backward(self, dY):
        shape = self._pop()
        if tuple(dY.shape) != tuple(shape[:2]):
            raise ValueError(f"{self.name}: dY has shape {tuple(dY.shape)}, the forward output "
                             f"had shape {tuple(shape[:2])}")
        dX = self.ops.empty(shape, dY.dtype)
        dX[...] = (dY * dY.dtype.type(1.0 / (shape[2] * shape[3])))[:, :, None, None]
        self._done_backward()
        return dX


@register_layer
class BatchNorm2D(BatchStatistics):
    """Batch normalisation of (N, C, H, W) images, per channel over (N, H, W).

    Training: normalise with the batch's mean and (biased) variance of each
    channel, then scale by ``gamma`` and shift by ``beta`` (C,); update
    ``running_mean`` and ``running_var`` (unbiased, n = N*H*W) with
    ``momentum``, as PyTorch's ``BatchNorm2d``. Evaluation: normalise with the
    running statistics.
    """

    size_name = "channels"

    def __init__(self, channels, eps=1e-5, momentum=0.1):
        super().__init__(channels, eps, momentum)

    def output_shape(self, input_shape):
        c, _, _ = _image_shape(self, input_shape)
        if c != self.channels:
            raise ValueError(f"{self.name} normalises {self.channels} channel(s) but gets {c} "
                             f"(input {_shape_str(input_shape)})")
        return tuple(input_shape)

    def forward(self, X, training=False):
        X = self._as_input(X)
        if not training:
            inv_std = 1 / self.ops.xp.sqrt(self.running_var + self.dtype.type(self.eps))
            xhat = (X - self.running_mean[:, None, None]) * inv_std[:, None, None]
            self._push((False, xhat, inv_std))
            return xhat * self.gamma[:, None, None] + self.beta[:, None, None]
        n = X.shape[0] * X.shape[2] * X.shape[3]
        if n < 2:
            raise ValueError(f"{self.name} needs more than 1 value per channel in training "
                             f"(batch statistics over N, H, W), got input {tuple(X.shape)}")
        Y, xhat, mean, var, inv_std = self.ops.batchnorm2d_forward(X, self.gamma, self.beta,
                                                                   self.eps)
        self._push((True, xhat, inv_std))
        self._update_running(mean, var, n)
        return Y

    def backward(self, dY):
        training, xhat, inv_std = self._pop()
        if tuple(dY.shape) != tuple(xhat.shape):
            raise ValueError(f"{self.name}: dY has shape {tuple(dY.shape)}, the forward output "
                             f"had shape {tuple(xhat.shape)}")
        if not training:   # statistics are constants in evaluation mode
            self._store_grad("beta", dY.sum(axis=(0, 2, 3)))
            self._store_grad("gamma", (dY * xhat).sum(axis=(0, 2, 3)))
            dX = dY * (self.gamma * inv_std)[:, None, None]
        else:
            dX, dgamma, dbeta = self.ops.batchnorm2d_backward(dY, xhat, self.gamma, inv_std)
            self._store_grad("gamma", dgamma)
            self._store_grad("beta", dbeta)
        self._done_backward()
        return dX
