"""Layers: ``forward(X, training) -> Y`` and ``backward(dY) -> dX``.

Every layer keeps what its backward pass needs from the last forward pass
(Dense its input, activations their *output*), and writes its parameter
gradients into ``d<name>`` (``dW``, ``db``, ``dgamma``, ``dbeta``),
overwriting the previous ones. All array work goes through ``self.ops``.

Shapes: inputs are batch-major (N, features); Dense's ``W`` is (in, out) and
``b`` is (out,).
"""

from __future__ import annotations

import numpy

from ._validate import as_host_numeric, check_backend_of, check_number, check_positive_int
from .backends import get_backend
from .init import get_initializer, initial_weights


class Layer:
    """Base class. Subclasses set ``param_names`` (each with a gradient ``d<name>``)
    and ``buffer_names`` (state saved with the model but not trained)."""

    param_names: tuple = ()
    buffer_names: tuple = ()

    def __init__(self):
        self.ops = get_backend()
        self.dtype = numpy.dtype("float32")
        self.name = type(self).__name__
        self._reuse = False      # set by the training loop: reuse work buffers
        self._bufs = {}

    # -- building and moving ---------------------------------------------
    def build(self, ops, rng, dtype, name):
        """(Re)create parameters for ``ops`` and ``dtype``, drawing from ``rng``."""
        self.ops, self.dtype, self.name = ops, numpy.dtype(dtype), name
        self._bufs = {}
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
        for child in self.children():
            child.to(ops)

    def _array_attrs(self):
        return [*self.param_names, *("d" + p for p in self.param_names), *self.buffer_names]

    def children(self):
        """Sub-layers (Residual has some)."""
        return []

    def out_features(self, n_in):
        """Features this layer outputs for ``n_in`` input features (checks they fit)."""
        return n_in

    def get_config(self):
        """Constructor arguments, for ``save``/``load``."""
        return {}

    def set_reuse(self, flag):
        """Let the training loop reuse this layer's work arrays between steps."""
        self._reuse = flag
        for child in self.children():
            child.set_reuse(flag)

    # -- forward and backward --------------------------------------------
    def forward(self, X, training=False):
        raise NotImplementedError

    def backward(self, dY):
        raise NotImplementedError

    def __call__(self, X, training=False):
        return self.forward(X, training=training)

    # -- helpers -----------------------------------------------------------
    def _buffer(self, key, shape):
        """A reusable work array during training; None (allocate fresh) otherwise."""
        if not self._reuse:
            return None
        buf = self._bufs.get((key, shape))
        if buf is None:
            buf = self._bufs[(key, shape)] = self.ops.empty(shape, self.dtype)
        return buf

    def _as_input(self, X):
        """X as an array of this layer's backend and dtype (refuses other backends)."""
        if not self.ops.is_own_array(X):
            check_backend_of(X, self.ops, f"input of {self.name}")
            X = self.ops.asarray(as_host_numeric(X, f"input of {self.name}"))
        if X.dtype != self.dtype:
            X = X.astype(self.dtype)
        return X

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer: ``Y = X @ W + b``.

    n_in, n_out: feature counts; W is (n_in, n_out), b is (n_out,).
    init: weight initialiser name (see ``scratchnet.init``); default
    ``"xavier"`` (Glorot uniform), a safe choice for any activation; use
    ``"he"`` before ReLU. Biases start at zero. ``bias=False`` drops b.
    """

    def __init__(self, n_in, n_out, init="xavier", bias=True):
        super().__init__()
        self.n_in = check_positive_int(n_in, "Dense n_in")
        self.n_out = check_positive_int(n_out, "Dense n_out")
        get_initializer(init)  # fail now on an unknown name
        self.init, self.bias = init, bool(bias)
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

    def out_features(self, n_in):
        if n_in != self.n_in:
            raise ValueError(f"{self.name} expects {self.n_in} input features but the layer "
                             f"before it gives {n_in}")
        return self.n_out

    def get_config(self):
        init = self.init if isinstance(self.init, str) else "custom"
        return {"n_in": self.n_in, "n_out": self.n_out, "init": init, "bias": self.bias}

    def forward(self, X, training=False, activation=None):
        """X: (N, n_in) -> (N, n_out). With ``activation`` (an Activation layer),
        bias add and activation run as one fused backend call."""
        X = self._as_input(X)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"{self.name} ({self.n_in}->{self.n_out}) expected input of shape "
                             f"(N, {self.n_in}), got {tuple(X.shape)}")
        self.X = X
        Z = self.ops.matmul(X, self.W, out=self._buffer("Z", (X.shape[0], self.n_out)))
        if activation is None:
            return self.ops.bias_act(Z, self.b, "identity", out=Z)
        activation.Y = self.ops.bias_act(Z, self.b, activation.kind, activation.alpha, out=Z)
        return activation.Y

    def backward(self, dY, activation=None, need_input_grad=True):
        """dY: (N, n_out) -> dX (N, n_in), or None when ``need_input_grad`` is False
        (the first layer's input gradient is never used in training)."""
        ops = self.ops
        kind, Y, alpha = ("identity", None, 0.0) if activation is None else \
            (activation.kind, activation.Y, activation.alpha)
        dZ, db = ops.act_backward_bias(dY, Y, kind, alpha, out=self._buffer("dZ", dY.shape))
        ops.matmul(self.X.T, dZ, out=self.dW)
        if self.bias:
            self.db[...] = db
        if not need_input_grad:
            return None
        return ops.matmul(dZ, self.W.T, out=self._buffer("dX", self.X.shape))


class Activation(Layer):
    """Element-wise activation; backward uses the forward *output* ``Y``."""

    kind = "identity"
    alpha = 0.0

    def forward(self, X, training=False):
        X = self._as_input(X)
        self.Y = self.ops.bias_act(X, None, self.kind, self.alpha,
                                   out=self._buffer("Y", X.shape))
        return self.Y

    def backward(self, dY):
        return self.ops.act_backward(dY, self.Y, self.kind, self.alpha,
                                     out=self._buffer("dX", dY.shape))


class ReLU(Activation):
    """max(x, 0)."""
    kind = "relu"


class LeakyReLU(Activation):
    """x for x > 0, alpha * x otherwise (alpha >= 0, default 0.01)."""
    kind = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = check_number(alpha, "LeakyReLU alpha", low=0.0)

    def get_config(self):
        return {"alpha": self.alpha}


class Sigmoid(Activation):
    """1 / (1 + exp(-x)), computed stably for large |x|."""
    kind = "sigmoid"


class Tanh(Activation):
    kind = "tanh"


class Softmax(Layer):
    """Row-wise softmax over (N, C). For training, prefer ``SoftmaxCrossEntropy``
    on logits (no Softmax layer): it is fused and numerically safer."""

    def forward(self, X, training=False):
        self.Y = self.ops.softmax(self._as_input(X))
        return self.Y

    def backward(self, dY):
        return self.ops.softmax_backward(dY, self.Y)


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
            return X
        if self.fixed_mask is not None:
            self.mask = self.fixed_mask
            return X * self.mask
        Y, self.mask = self.ops.dropout(X, self.p, self.rng)
        return Y

    def backward(self, dY):
        return dY if self.mask is None else self.ops.dropout_backward(dY, self.mask)


class BatchNorm(Layer):
    """Batch normalisation over the rows of (N, n) inputs.

    Training: normalise with the batch's mean and (biased) variance, then
    scale by ``gamma`` and shift by ``beta``; update ``running_mean`` and
    ``running_var`` (unbiased) with ``momentum`` (PyTorch's convention).
    Evaluation: normalise with the running statistics.
    """

    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")

    def __init__(self, n, eps=1e-5, momentum=0.1):
        super().__init__()
        self.n = check_positive_int(n, "BatchNorm n")
        self.eps = check_number(eps, "BatchNorm eps", low=0.0, low_open=True)
        self.momentum = check_number(momentum, "BatchNorm momentum", low=0.0, high=1.0)
        self._init_params(None)

    def _init_params(self, rng):
        ops, dt, n = self.ops, self.dtype, self.n
        self.gamma = ops.asarray(numpy.ones(n, dt))
        self.beta = ops.zeros((n,), dt)
        self.dgamma = ops.zeros((n,), dt)
        self.dbeta = ops.zeros((n,), dt)
        self.running_mean = ops.zeros((n,), dt)
        self.running_var = ops.asarray(numpy.ones(n, dt))

    def out_features(self, n_in):
        if n_in != self.n:
            raise ValueError(f"{self.name} normalises {self.n} features but the layer before "
                             f"it gives {n_in}")
        return n_in

    def get_config(self):
        return {"n": self.n, "eps": self.eps, "momentum": self.momentum}

    def forward(self, X, training=False):
        X = self._as_input(X)
        if X.ndim != 2 or X.shape[1] != self.n:
            raise ValueError(f"{self.name} expected input of shape (N, {self.n}), got "
                             f"{tuple(X.shape)}")
        self.training = training
        if not training:
            self.inv_std = 1 / self.ops.xp.sqrt(self.running_var + self.dtype.type(self.eps))
            self.xhat = (X - self.running_mean) * self.inv_std
            return self.xhat * self.gamma + self.beta
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"{self.name} needs more than 1 sample per batch in training "
                             f"(batch statistics), got {n}")
        Y, self.xhat, mean, var, self.inv_std = self.ops.batchnorm_forward(
            X, self.gamma, self.beta, self.eps)
        m = self.momentum
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += (m * n / (n - 1)) * var
        return Y

    def backward(self, dY):
        if not self.training:   # statistics are constants in evaluation mode
            self.dbeta[...] = dY.sum(axis=0)
            self.dgamma[...] = (dY * self.xhat).sum(axis=0)
            return dY * (self.gamma * self.inv_std)
        dX, dgamma, dbeta = self.ops.batchnorm_backward(dY, self.xhat, self.gamma, self.inv_std)
        self.dgamma[...] = dgamma
        self.dbeta[...] = dbeta
        return dX


class Residual(Layer):
    """``Y = X + f(X)`` where f is the given layers in sequence; f must keep the
    feature count."""

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

    def out_features(self, n_in):
        n = n_in
        for layer in self.layers:
            n = layer.out_features(n)
        if n != n_in:
            raise ValueError(f"{self.name}: its layers map {n_in} features to {n}; a residual "
                             "block must keep the feature count")
        return n_in

    def get_config(self):
        return {"layers": [layer_config(layer) for layer in self.layers]}

    def forward(self, X, training=False):
        X = self._as_input(X)
        F = run_forward(self._plan, X, training)
        if F.shape != X.shape:
            raise ValueError(f"{self.name}: the block's output shape {tuple(F.shape)} differs "
                             f"from its input shape {tuple(X.shape)}")
        return self.ops.xp.add(X, F, out=self._buffer("Y", X.shape))

    def backward(self, dY):
        dF = run_backward(self._plan, dY, need_input_grad=True)
        return self.ops.xp.add(dY, dF, out=self._buffer("dX", dY.shape))


# -- running a list of layers, with Dense+activation fused -------------------

def walk(layers):
    """Every layer, depth first, Residual blocks' layers included."""
    for layer in layers:
        yield layer
        yield from walk(layer.children())


def check_layer_list(layers, owner):
    layers = list(layers)
    if not layers:
        raise ValueError(f"{owner} needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{owner} item {i} is {type(layer).__name__}, not a scratchnet layer")
    return layers


def fusion_plan(layers):
    """Steps ``(layer, activation_or_None)``: a Dense followed by an activation
    runs as one step, so the backend can fuse bias add and activation."""
    plan, i = [], 0
    while i < len(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layers[i], Dense) and isinstance(nxt, Activation):
            plan.append((layers[i], nxt))
            i += 2
        else:
            plan.append((layers[i], None))
            i += 1
    return plan


def run_forward(plan, X, training):
    for layer, act in plan:
        X = layer.forward(X, training, act) if act is not None else layer.forward(X, training)
    return X


def run_backward(plan, dY, need_input_grad=True):
    """Backward through ``plan``; the first Dense skips its input gradient
    when ``need_input_grad`` is False."""
    for i in range(len(plan) - 1, -1, -1):
        layer, act = plan[i]
        if isinstance(layer, Dense):
            dY = layer.backward(dY, act, need_input_grad=need_input_grad or i > 0)
        else:
            dY = layer.backward(dY)
    return dY


LAYER_CLASSES = {cls.__name__: cls for cls in
                 (Dense, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Dropout, BatchNorm, Residual)}


def layer_config(layer):
    return {"class": type(layer).__name__, "config": layer.get_config()}


def layer_from_config(spec):
    cls = LAYER_CLASSES.get(spec.get("class"))
    if cls is None:
        raise ValueError(f"unknown layer class {spec.get('class')!r} in saved config")
    config = dict(spec.get("config", {}))
    if cls is Dense and config.get("init") == "custom":
        config["init"] = "zeros"   # a callable init is not saved; the saved weights replace it
    if cls is Residual:
        config["layers"] = [layer_from_config(s) for s in config["layers"]]
    return cls(**config)
