"""Layers: ``forward(X, training) -> Y`` and ``backward(dY) -> dX``.

Shapes. Inputs are batch-major, ``(N, *sample_shape)``. Every layer states
the per-sample shape it outputs for a per-sample input shape
(``output_shape(input_shape)``), and refuses an input that does not fit with
a message naming the layer and both shapes. ``Flatten`` turns (N, ...) into
(N, prod(...)), so that image-shaped data can feed ``Dense``.

Calling a layer more than once. What backward needs from a forward pass is
kept *per call*: each forward pushes a context (``self._push``) and each
backward pops the most recent one (``self._pop``), so a layer used at several
places of a model (a tied ``Dense``) runs backward through each use in turn.
Inside a model's pass, gradients of all uses are *added*: the model resets
each layer's use count (``zero_grad``) before backward, the first use writes
``d<name>`` and later uses add to it (``self._store_grad``). A layer called
directly (outside a model's pass) keeps one context and overwrites its
gradients, as a plain function would.

Parameters and their gradients are ``<name>`` and ``d<name>`` attributes
(``W``/``dW``, ``b``/``db``, ``gamma``/``dgamma``...); a model may replace them
by views of one contiguous buffer, so layers update them in place and never
rebind them after ``build``. All array work goes through ``self.ops``.

New layer classes register themselves with ``@register_layer`` so that
``save``/``load`` know them by name; ``get_config()`` returns the constructor
arguments.
"""

from __future__ import annotations

import math
import weakref

import numpy

from ._validate import as_host_numeric, check_backend_of, check_number, check_positive_int
from .backends import get_backend
from .init import get_initializer, initial_weights

#: Layer classes by name, for ``load`` (filled by ``@register_layer``).
LAYER_REGISTRY: dict = {}


def register_layer(cls):
    """Class decorator: make ``cls`` loadable by ``scratchnet.load`` under its
    class name. Its ``get_config()`` must return its constructor arguments
    (sub-layers as layer objects, which are saved by ``layer_config``)."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer expects a Layer subclass, got {cls!r}")
    name = cls.__name__
    other = LAYER_REGISTRY.get(name)
    if other is not None and other is not cls and \
            (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"a layer class named {name!r} is already registered "
                         f"({other.__module__}.{other.__qualname__}); rename one of them")
    LAYER_REGISTRY[name] = cls
    return cls


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _shape_str(shape):
    return "(N, " + ", ".join(map(str, shape)) + ")" if shape else "(N,)"


class Layer:
    """Base class.

    Subclasses set ``param_names`` (each with a gradient ``d<name>``) and
    ``buffer_names`` (state saved with the model but not trained), create
    them in ``_init_params(rng)``, and implement ``forward``, ``backward`` and,
    when they change the shape, ``output_shape``.
    """

    param_names: tuple = ()
    buffer_names: tuple = ()
    #: True when ``backward(dY, need_input_grad=False)`` may skip dL/dX (the
    #: first layer of a model never needs it in training).
    can_skip_input_grad = False
    #: None: a model casts X to its float dtype. A layer that takes something
    #: else as a model's first layer names the dtype the model passes X as
    #: (``Embedding``: "int64" ids, whole numbers only).
    input_dtype = None

    def __init__(self):
        self.ops = get_backend()
        self.dtype = numpy.dtype("float32")
        self.name = type(self).__name__
        self._reuse = False      # set by the training loop: reuse work buffers
        self._bufs = {}
        self._saved = []         # one context per forward call not yet backpropagated
        self._grad_uses = 0      # backward calls since zero_grad (inside a model's pass)
        self._in_pass = False    # a model is running forward or backward through this layer
        self._owner = None       # weak reference to the model holding this layer

    # -- building and moving ---------------------------------------------
    def build(self, ops, rng, dtype, name):
        """(Re)create parameters for ``ops`` and ``dtype``, drawing from ``rng``."""
        self.ops, self.dtype, self.name = ops, numpy.dtype(dtype), name
        self._bufs = {}
        self._saved = []
        self._init_params(rng)

    def _init_params(self, rng):
        """Create parameters and gradients; layers without any do nothing."""

    def to(self, ops):
        """Move parameters, gradients and buffers to backend ``ops``."""
        for attr in self._array_attrs():
            value = getattr(self, attr, None)
            if value is not None:
                setattr(self, attr, ops.asarray(self.ops.to_host(value)))
        self.ops = ops
        self._bufs = {}
        self._saved = []
        for child in self.children():
            child.to(ops)

    def _array_attrs(self):
        return [*self.param_names, *("d" + p for p in self.param_names), *self.buffer_names]

    def children(self):
        """Sub-layers (Residual has some)."""
        return []

    def output_shape(self, input_shape):
        """Per-sample output shape for a per-sample ``input_shape`` (a tuple,
        without the batch axis); raises ValueError naming the layer when the
        input does not fit. The default keeps the shape."""
        return tuple(input_shape)

    def input_shape(self):
        """The per-sample input shape this layer fixes, or None when it takes
        several (used by ``summary`` before any data was seen)."""
        return None

    def count_params(self):
        return int(sum(getattr(self, p).size for p in self.param_names))

    @classmethod
    def state_shapes(cls, config):
        """``{name: shape}`` of the parameters and buffers a layer built from
        ``config`` would have, or None when unknown; ``load`` checks a file's
        arrays against it before building anything."""
        return None

    def get_config(self):
        """Constructor arguments, for ``save``/``load``."""
        return {}

    def set_reuse(self, flag):
        """Let the training loop reuse this layer's work arrays between steps."""
        self._reuse = flag
        for child in self.children():
            child.set_reuse(flag)

    def zero_grad(self):
        """Start a new backward pass: the next use writes the gradients, later
        uses add to them (no pass over the arrays)."""
        self._grad_uses = 0

    # -- forward and backward --------------------------------------------
    def forward(self, X, training=False):
        raise NotImplementedError

    def backward(self, dY):
        raise NotImplementedError

    def __call__(self, X, training=False):
        return self.forward(X, training=training)

    # -- fusion ------------------------------------------------------------
    def absorbs(self, nxt):
        """True when this layer can run ``nxt`` (the layer after it) inside its
        own forward and backward (``forward_fused``); Dense absorbs a following
        activation so that the bias add and the activation are one pass."""
        return False

    # -- per-call state and gradient accumulation ---------------------------
    def _push(self, ctx):
        """Keep what backward needs from this forward call."""
        if self._in_pass:
            self._saved.append(ctx)
        else:
            self._saved = [ctx]

    def _pop(self):
        """The context of the most recent forward call not yet backpropagated."""
        if not self._saved:
            raise RuntimeError(f"{self.name}: backward() called without a forward() first")
        if self._in_pass and len(self._saved) > 1:
            return self._saved.pop()
        return self._saved[-1]      # kept: backward may be repeated for the same forward

    def _use_index(self):
        """Which use of this layer the current forward call is (for work buffers)."""
        return len(self._saved) if self._in_pass else 0

    def _grad_out(self, name):
        """The array to write this use's gradient of ``name`` into directly, or
        None when it must be added to earlier uses' (see ``_store_grad``)."""
        return getattr(self, "d" + name) if self._first_use() else None

    def _store_grad(self, name, value):
        """Write (first use) or add (later uses) ``value`` into ``d<name>``."""
        grad = getattr(self, "d" + name)
        if value is grad:
            return
        if self._first_use():
            grad[...] = value
        else:
            grad += value

    def _first_use(self):
        return not self._in_pass or self._grad_uses == 0

    def _done_backward(self):
        if self._in_pass:
            self._grad_uses += 1

    # -- helpers -----------------------------------------------------------
    def _buffer(self, key, shape):
        """A reusable work array during training; None (allocate fresh) otherwise."""
        if not self._reuse:
            return None
        full = (key, tuple(shape), self._use_index())
        buf = self._bufs.get(full)
        if buf is None:
            buf = self._bufs[full] = self.ops.empty(shape, self.dtype)
        return buf

    def _as_input(self, X):
        """X as an array of this layer's backend and dtype (refuses other backends)."""
        if not self.ops.is_own_array(X):
            check_backend_of(X, self.ops, f"input of {self.name}")
            X = self.ops.asarray(as_host_numeric(X, f"input of {self.name}"))
        if X.dtype != self.dtype:
            X = X.astype(self.dtype)
        self._check_input(X)
        return X

    def _check_input(self, X):
        """Raise, naming this layer, when X (N, ...) does not fit it."""
        if X.ndim < 1:
            raise ValueError(f"{self.name} expected a batch (N, ...), got a scalar")
        try:
            self.output_shape(tuple(X.shape[1:]))
        except ValueError as err:
            raise ValueError(f"{self.name}: input of shape {tuple(X.shape)} does not fit: "
                             f"{err}") from None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _activation_spec(activation):
    """(kind, alpha) for an activation name or layer; None for no activation."""
    if activation is None or activation == "identity":
        return None
    if isinstance(activation, str) and activation in ACTIVATION_LAYERS:
        layer = ACTIVATION_LAYERS[activation]()      # its default alpha (LeakyReLU: 0.01)
        return layer.kind, layer.alpha
    raise ValueError(f"unknown activation {activation!r}; expected None or one of "
                     f"{sorted(ACTIVATION_LAYERS)}")


class FusedActivation:
    """What Dense and Conv2D share: an activation of their own (``activation=``)
    or the activation layer after them (which they ``absorb``), applied inside
    their forward (``forward_fused``) in the same pass as the bias."""

    def _set_activation(self, activation):
        self._act = _activation_spec(activation)
        self.activation = None if self._act is None else activation

    def absorbs(self, nxt):
        return self._act is None and isinstance(nxt, Activation)

    def _activation_of(self, act):
        """(kind, alpha) to apply: the absorbed layer ``act``'s, else this layer's
        own, else the identity."""
        spec = self._act if act is None else (act.kind, act.alpha)
        return spec if spec is not None else ("identity", 0.0)


@register_layer
class Dense(FusedActivation, Layer):
    """Fully connected layer: ``Y = f(X @ W + b)``.

    n_in, n_out: feature counts; W is (n_in, n_out), b is (n_out,); input
    (N, n_in), output (N, n_out). Like ``torch.nn.Linear`` it applies to the
    last axis of any input: (N, ..., n_in) -> (N, ..., n_out), e.g. every time
    step of a sequence (N, T, n_in) at once (the leading axes are folded into
    the rows of one matrix product).
    init: weight initialiser name (see ``scratchnet.init``); default
    ``"xavier"`` (Glorot uniform), a safe choice for any activation; use
    ``"he"`` before ReLU. Biases start at zero. ``bias=False`` drops b.
    activation: None (linear) or an activation name ("relu", "leaky_relu",
    "sigmoid", "tanh"): the fused form, bias add and activation in one pass.
    ``[Dense(...), ReLU()]`` in a model is fused the same way.
    """

    can_skip_input_grad = True

    def __init__(self, n_in, n_out, init="xavier", bias=True, activation=None):
        super().__init__()
        self.n_in = check_positive_int(n_in, "Dense n_in")
        self.n_out = check_positive_int(n_out, "Dense n_out")
        get_initializer(init)  # fail now on an unknown name
        self.init, self.bias = init, bool(bias)
        self._set_activation(activation)
        self.param_names = ("W", "b") if self.bias else ("W",)
        self.b = self.db = None
        self._init_params(numpy.random.default_rng())

    def _init_params(self, rng):
        ops, dt = self.ops, self.dtype
        self.W = ops.asarray(initial_weights(self.init, rng, self.n_in, self.n_out, dt))
        self.dW = ops.zeros((self.n_in, self.n_out), dt)
        if self.bias:
            self.b = ops.zeros((self.n_out,), dt)
            self.db = ops.zeros((self.n_out,), dt)

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if not input_shape or input_shape[-1] != self.n_in:
            got = input_shape[0] if len(input_shape) == 1 else _shape_str(input_shape)
            hint = " (add a Flatten() before it)" if len(input_shape) > 1 and \
                math.prod(input_shape) == self.n_in else ""
            axis = " on the last axis" if len(input_shape) > 1 else ""
            raise ValueError(f"{self.name} expects {self.n_in} input features{axis} but the "
                             f"layer before it gives {got}{hint}")
        return (*input_shape[:-1], self.n_out)

    def _check_input(self, X):
        if X.ndim < 2 or X.shape[-1] != self.n_in:
            raise ValueError(f"{self.name} ({self.n_in}->{self.n_out}) expected input of shape "
                             f"(N, {self.n_in}) or (N, ..., {self.n_in}), got {tuple(X.shape)}")

    def input_shape(self):
        return (self.n_in,)

    @classmethod
    def state_shapes(cls, config):
        n_in, n_out = config.get("n_in"), config.get("n_out")
        if not (_is_int(n_in) and _is_int(n_out)):
            return None     # the constructor refuses it
        shapes = {"W": (n_in, n_out)}
        if config.get("bias", True):
            shapes["b"] = (n_out,)
        return shapes

    def get_config(self):
        init = self.init if isinstance(self.init, str) else "custom"
        config = {"n_in": self.n_in, "n_out": self.n_out, "init": init, "bias": self.bias}
        if self.activation is not None:
            config["activation"] = self.activation
        return config

    def forward(self, X, training=False):
        """X: (N, n_in) -> (N, n_out); (N, ..., n_in) -> (N, ..., n_out)."""
        return self.forward_fused(X, training, None)

    def forward_fused(self, X, training, act):
        """Forward with the following activation layer ``act`` run in the same
        pass (its output is kept on ``act.Y`` for diagnostics)."""
        X = self._as_input(X)
        kind, alpha = self._activation_of(act)
        lead = tuple(X.shape[:-1])
        if X.ndim > 2:       # (N, ..., n_in) as the rows of one product
            X = self.ops.xp.ascontiguousarray(X).reshape(-1, self.n_in)
        Z = self.ops.matmul(X, self.W, out=self._buffer("Z", (X.shape[0], self.n_out)))
        Y = self.ops.bias_act(Z, self.b, kind, alpha, out=Z)
        self._push((X, Y, kind, alpha, lead))
        Y = Y.reshape(*lead, self.n_out)
        if act is not None:
            act.Y = Y
        return Y

    def backward(self, dY, need_input_grad=True):
        """dY: (N, n_out) -> dX (N, n_in) (or (N, ..., n_out) -> (N, ..., n_in)),
        or None when ``need_input_grad`` is False (a model's first layer in
        training)."""
        ops = self.ops
        X, Y, kind, alpha, lead = self._pop()
        if tuple(dY.shape) != (*lead, self.n_out):
            raise ValueError(f"{self.name}: dY has shape {tuple(dY.shape)}, the forward output "
                             f"had shape {(*lead, self.n_out)}")
        if dY.ndim > 2:
            dY = ops.xp.ascontiguousarray(dY).reshape(-1, self.n_out)
        dZ, db = ops.act_backward_bias(dY, Y, kind, alpha, out=self._buffer("dZ", dY.shape))
        dW = ops.matmul(X.T, dZ, out=self._grad_out("W"))
        self._store_grad("W", dW)
        if self.bias:
            self._store_grad("b", db)
        self._done_backward()
        if not need_input_grad:
            return None
        dX = ops.matmul(dZ, self.W.T, out=self._buffer("dX", X.shape))
        return dX if len(lead) == 1 else dX.reshape(*lead, self.n_in)


class Activation(Layer):
    """Element-wise activation; backward uses the forward *output* ``Y``."""

    kind = "identity"
    alpha = 0.0

    def forward(self, X, training=False):
        X = self._as_input(X)
        self.Y = self.ops.bias_act(X, None, self.kind, self.alpha,
                                   out=self._buffer("Y", X.shape))
        self._push(self.Y)
        return self.Y

    def backward(self, dY):
        Y = self._pop()
        dX = self.ops.act_backward(dY, Y, self.kind, self.alpha,
                                   out=self._buffer("dX", dY.shape))
        self._done_backward()
        return dX


@register_layer
class ReLU(Activation):
    """max(x, 0)."""
    kind = "relu"


@register_layer
class LeakyReLU(Activation):
    """x for x > 0, alpha * x otherwise (0 <= alpha < 1, default 0.01)."""
    kind = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__()
        # alpha >= 1 is not a leaky ReLU (alpha = 1 is the identity, > 1 flips
        # the slopes), and backward from the output needs the sign of x == sign of y.
        self.alpha = check_number(alpha, "LeakyReLU alpha", low=0.0, high=1.0, high_open=True)

    def get_config(self):
        return {"alpha": self.alpha}


@register_layer
class Sigmoid(Activation):
    """1 / (1 + exp(-x)), computed stably for large |x|. As the last layer
    with ``BinaryCrossEntropy``, prefer no Sigmoid and ``BCEWithLogits``."""
    kind = "sigmoid"


@register_layer
class Tanh(Activation):
    kind = "tanh"


#: Activation layer classes by their kernel name (for ``Dense(activation=...)``).
ACTIVATION_LAYERS = {cls.kind: cls for cls in (ReLU, LeakyReLU, Sigmoid, Tanh)}


@register_layer
class Softmax(Layer):
    """Softmax over the last axis. For training, prefer ``SoftmaxCrossEntropy``
    on logits (no Softmax layer): it is fused and numerically safer."""

    def forward(self, X, training=False):
        X = self._as_input(X)
        X2 = X.reshape(-1, X.shape[-1])
        Y = self.ops.softmax(X2)
        self._push(Y)
        self.Y = Y.reshape(X.shape)
        return self.Y

    def backward(self, dY):
        Y = self._pop()
        dX = self.ops.softmax_backward(dY.reshape(Y.shape), Y)
        self._done_backward()
        return dX.reshape(dY.shape)


@register_layer
class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...): the first layer that changes rank."""

    def output_shape(self, input_shape):
        return (int(math.prod(input_shape)),)

    def forward(self, X, training=False):
        X = self._as_input(X)
        self._push(X.shape)
        return X.reshape(X.shape[0], -1)

    def backward(self, dY):
        shape = self._pop()
        self._done_backward()
        return dY.reshape(shape)


@register_layer
class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and
    scale the rest by 1/(1-p); in evaluation, the identity."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = check_number(p, "Dropout p", low=0.0, high=1.0, high_open=True)
        self.mask = None
        self.fixed_mask = None    # when set, training uses this mask (gradient checks)
        self._seed = int(numpy.random.default_rng().integers(2**63))
        self.rng = self.ops.make_rng(self._seed)

    def _init_params(self, rng):
        self._seed = int(rng.integers(2**63))
        self.rng = self.ops.make_rng(self._seed)

    def to(self, ops):
        old_ops, old_rng = self.ops, self.rng
        super().to(ops)
        self.rng = ops.make_rng(self._seed)
        if type(self.rng) is type(old_rng):   # same generator kind: keep its position
            ops.set_rng_state(self.rng, old_ops.rng_state(old_rng))

    def get_config(self):
        return {"p": self.p}

    def forward(self, X, training=False):
        X = self._as_input(X)
        if not training or self.p == 0.0:
            self.mask = None
            Y = X
        elif self.fixed_mask is not None:
            self.mask = self.fixed_mask
            Y = X * self.mask
        else:
            Y, self.mask = self.ops.dropout(X, self.p, self.rng)
        self._push(self.mask)
        return Y

    def backward(self, dY):
        mask = self._pop()
        self._done_backward()
        return dY if mask is None else self.ops.dropout_backward(dY, mask)


class BatchStatistics(Layer):
    """What BatchNorm and BatchNorm2D share: ``gamma``/``beta`` per feature (or
    channel), the running statistics for evaluation, and PyTorch's update of
    them (``momentum``; the running variance is the unbiased one)."""

    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")
    uses_batch_statistics = True    # no per-sample training; batches of 2 rows or more
    size_name = "n"                 # the constructor argument that gives the size

    def __init__(self, size, eps=1e-5, momentum=0.1):
        super().__init__()
        cls = type(self).__name__
        setattr(self, self.size_name, check_positive_int(size, f"{cls} {self.size_name}"))
        self.eps = check_number(eps, f"{cls} eps", low=0.0, low_open=True)
        self.momentum = check_number(momentum, f"{cls} momentum", low=0.0, high=1.0)
        self._init_params(None)

    @property
    def size(self):
        return getattr(self, self.size_name)

    def _init_params(self, rng):
        ops, dt, n = self.ops, self.dtype, self.size
        self.gamma = ops.asarray(numpy.ones(n, dt))
        self.beta = ops.zeros((n,), dt)
        self.dgamma = ops.zeros((n,), dt)
        self.dbeta = ops.zeros((n,), dt)
        self.running_mean = ops.zeros((n,), dt)
        self.running_var = ops.asarray(numpy.ones(n, dt))

    @classmethod
    def state_shapes(cls, config):
        n = config.get(cls.size_name)
        if not _is_int(n):
            return None
        return {name: (n,) for name in cls.param_names + cls.buffer_names}

    def get_config(self):
        return {self.size_name: self.size, "eps": self.eps, "momentum": self.momentum}

    def _update_running(self, mean, var, n):
        """Running statistics after a training batch of ``n`` values per feature."""
        m = self.momentum
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += (m * n / (n - 1)) * var


@register_layer
class BatchNorm(BatchStatistics):
    """Batch normalisation over the rows of (N, n) inputs.

    Training: normalise with the batch's mean and (biased) variance, then
    scale by ``gamma`` and shift by ``beta``; update ``running_mean`` and
    ``running_var`` (unbiased) with ``momentum`` (PyTorch's convention).
    Evaluation: normalise with the running statistics.
    """

    def __init__(self, n, eps=1e-5, momentum=0.1):
        super().__init__(n, eps, momentum)

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.n,):
            got = input_shape[0] if len(input_shape) == 1 else _shape_str(input_shape)
            raise ValueError(f"{self.name} normalises {self.n} features but the layer before it "
                             f"gives {got}")
        return (self.n,)

    def input_shape(self):
        return (self.n,)

    def forward(self, X, training=False):
        X = self._as_input(X)
        if not training:
            inv_std = 1 / self.ops.xp.sqrt(self.running_var + self.dtype.type(self.eps))
            xhat = (X - self.running_mean) * inv_std
            self._push((False, xhat, inv_std))
            return xhat * self.gamma + self.beta
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"{self.name} needs more than 1 sample per batch in training "
                             f"(batch statistics), got {n}")
        Y, xhat, mean, var, inv_std = self.ops.batchnorm_forward(X, self.gamma, self.beta, self.eps)
        self._push((True, xhat, inv_std))
        self._update_running(mean, var, n)
        return Y

    def backward(self, dY):
        training, xhat, inv_std = self._pop()
        if not training:   # statistics are constants in evaluation mode
            self._store_grad("beta", dY.sum(axis=0))
            self._store_grad("gamma", (dY * xhat).sum(axis=0))
            dX = dY * (self.gamma * inv_std)
        else:
            dX, dgamma, dbeta = self.ops.batchnorm_backward(dY, xhat, self.gamma, inv_std)
            self._store_grad("gamma", dgamma)
            self._store_grad("beta", dbeta)
        self._done_backward()
        return dX


@register_layer
class Residual(Layer):
    """``Y = X + f(X)`` where f is the given layers in sequence; f must keep the
    shape."""

    def __init__(self, layers):
        super().__init__()
        self.layers = check_layer_list(layers, "Residual")
        self._plan = fusion_plan(self.layers)

    def children(self):
        return self.layers

    def build(self, ops, rng, dtype, name):
        super().build(ops, rng, dtype, name)
        for i, layer in enumerate(self.layers):
            layer.build(ops, rng, dtype, f"{name}.{i} {type(layer).__name__}")

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        if shape != tuple(input_shape):
            raise ValueError(f"{self.name}: its layers map {_shape_str(input_shape)} to "
                             f"{_shape_str(shape)}; a residual block must keep the feature count "
                             f"(its input shape)")
        return shape

    def input_shape(self):
        return first_input_shape(self.layers)

    def get_config(self):
        return {"layers": list(self.layers)}

    def forward(self, X, training=False):
        X = self._as_input(X)
        F = run_forward(self._plan, X, training)
        self._push(None)
        return self.ops.xp.add(X, F, out=self._buffer("Y", X.shape))

    def backward(self, dY):
        self._pop()
        dF = run_backward(self._plan, dY, need_input_grad=True)
        self._done_backward()
        return self.ops.xp.add(dY, dF, out=self._buffer("dX", dY.shape))


# -- running a list of layers, with fusion --------------------------------------

def walk(layers):
    """Every layer, depth first, Residual blocks' layers included (a layer used
    twice appears twice)."""
    for layer in layers:
        yield layer
        yield from walk(layer.children())


def unique_layers(layers):
    """``walk`` without repeats: each layer object once, at its first place."""
    seen = set()
    for layer in walk(layers):
        if id(layer) not in seen:
            seen.add(id(layer))
            yield layer


def first_input_shape(layers):
    """The per-sample input shape fixed by the first layer that fixes one."""
    for layer in layers:
        shape = layer.input_shape()
        if shape is not None:
            return shape
        if type(layer).output_shape is not Layer.output_shape or layer.children():
            return None     # shape-changing layer first: its input is not inferable
    return None


def check_layer_list(layers, owner):
    if isinstance(layers, Layer):
        raise TypeError(f"{owner} takes a list of layers, got a single {type(layers).__name__}; "
                        f"wrap it in a list")
    layers = list(layers)
    if not layers:
        raise ValueError(f"{owner} needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{owner} item {i} is {type(layer).__name__}, not a scratchnet layer")
    return layers


def fusion_plan(layers):
    """Steps ``(layer, absorbed_or_None)``: a layer that ``absorbs`` the next
    one (Dense then an activation) runs both as one step."""
    plan, i = [], 0
    while i < len(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is not None and layers[i].absorbs(nxt):
            plan.append((layers[i], nxt))
            i += 2
        else:
            plan.append((layers[i], None))
            i += 1
    return plan


def run_forward(plan, X, training):
    for layer, absorbed in plan:
        X = layer.forward(X, training) if absorbed is None else \
            layer.forward_fused(X, training, absorbed)
    return X


def run_backward(plan, dY, need_input_grad=True):
    """Backward through ``plan`` in reverse; the first step skips its input
    gradient when ``need_input_grad`` is False and the layer can."""
    for i in range(len(plan) - 1, -1, -1):
        layer = plan[i][0]
        if i == 0 and not need_input_grad and layer.can_skip_input_grad:
            dY = layer.backward(dY, need_input_grad=False)
        else:
            dY = layer.backward(dY)
    return dY


def layer_config(layer):
    """``{"class": name, "config": {...}}``; sub-layers are saved recursively."""
    config = {}
    for key, value in layer.get_config().items():
        if isinstance(value, Layer):
            value = layer_config(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value):
            value = [layer_config(v) for v in value]
        config[key] = value
    return {"class": type(layer).__name__, "config": config}


def layer_from_config(spec):
    """Rebuild one layer from ``layer_config``'s output (registered classes only)."""
    from .state import layers_from_config
    return layers_from_config({"layers": [spec]})[0]


def claim(layers, model):
    """Mark ``layers`` (and their sub-layers) as belonging to ``model``. A layer
    already in another live model raises: two models never share a layer
    silently (build new layers, or use ``model.copy()``)."""
    for layer in walk(layers):
        owner = layer._owner() if layer._owner is not None else None
        if owner is not None and owner is not model:
            raise ValueError(f"{layer!r} already belongs to another model; a layer object can be "
                             f"in one model only (its weights would be re-initialised and "
                             f"shared). Build new layers, or use model.copy()")
    ref = weakref.ref(model)
    for layer in walk(layers):
        layer._owner = ref
