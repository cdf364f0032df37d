"""Layers for sequence models: ``RNN``, ``LSTM``, ``GRU`` and ``Embedding``.

Sequences are batch-first, (N, T, F), and hidden and cell states start at
zero. The recurrent layers follow PyTorch's equations and gate orders, with
our (in, out) weight layout:

* ``RNN``: h_t = f(x_t W + h_{t-1} U + b), f tanh or relu. W (F, H), U (H, H),
  b (H,).
* ``LSTM``: [i, f, g, o] = x_t W + h_{t-1} U + b; i, f, o sigmoid, g tanh;
  c_t = f c_{t-1} + i g; h_t = o tanh(c_t). W (F, 4H), U (H, 4H), b (4H,),
  where b plays the part of PyTorch's b_ih + b_hh.
* ``GRU``: [r, z] = sigmoid(x_t W_rz + b_rz + h_{t-1} U_rz + bU_rz);
  n = tanh(x_t W_n + b_n + r (h_{t-1} U_n + bU_n)); h_t = (1 - z) n + z h_{t-1}.
  W (F, 3H), U (H, 3H); b (3H,) is the input bias (PyTorch's b_ih) and bU
  (3H,) the hidden bias (b_hh), which must stay apart because r multiplies
  the hidden part of n.

PyTorch's ``weight_ih_l0`` is our ``W.T`` and ``weight_hh_l0`` our ``U.T``, so
weights copy across. The output is the last step's hidden state (N, H), or
every step's (N, T, H) with ``return_sequences=True`` (to feed another
recurrent layer, or a ``Dense`` applied to every step).

Initialisation is PyTorch's: every weight and bias uniform in
(-1/sqrt(H), 1/sqrt(H)). ``LSTM(forget_bias=1.0)`` sets the forget gate's
part of b to 1 instead (so the cell keeps its contents from the start,
Jozefowicz et al. 2015); the default 0 keeps PyTorch's initialisation.

How the work is split: the layer computes the input projection of every
time step as ONE matrix product, XW = X (N*T, F) @ W + b; the backend's
``rnn_forward`` / ``lstm_forward`` / ``gru_forward`` runs the recurrence
(one h @ U product per step); the backward primitive returns dL/dXW, from
which the layer gets dW, db and dX with one product each (again over all
N*T rows), and dU summed over the steps. After each backward,
``layer.dh_norms`` holds ||dL/dh_t|| for every step t, over the batch (a
backend array (T,); ``layer.ops.to_host`` reads it): how much gradient
reaches each step through time.

``Embedding(num_embeddings, dim)`` maps integer ids (N, T) to vectors
(N, T, dim) (rows of W, initialised N(0, 1) as PyTorch's). As a model's first
layer its ``input_dtype = "int64"`` tells the model to pass X as integer ids
(whole numbers), not to cast it to floats.
"""

from __future__ import annotations

import math

import numpy

from ._validate import as_host_numeric, check_backend_of, check_number, check_positive_int
from .layers import Layer, _is_int, _shape_str, register_layer

__all__ = ["RNN", "LSTM", "GRU", "Embedding"]

#: Activations ``RNN`` offers (PyTorch's nn.RNN nonlinearity choices).
RNN_ACTIVATIONS = ("tanh", "relu")


class _Recurrent(Layer):
    """Shared by RNN, LSTM and GRU: shapes, parameters, the input projection
    and the backward's products; subclasses name their primitive and gates."""

    #: Gate blocks in W, U and b: G = gates * hidden_size.
    gates = 1
    param_names = ("W", "U", "b")
    can_skip_input_grad = True

    def __init__(self, input_size, hidden_size, return_sequences=False):
        super().__init__()
        cls = type(self).__name__
        self.input_size = check_positive_int(input_size, f"{cls} input_size")
        self.hidden_size = check_positive_int(hidden_size, f"{cls} hidden_size")
        if not isinstance(return_sequences, (bool, numpy.bool_)):
            raise TypeError(f"{cls} return_sequences must be True or False, got "
                            f"{return_sequences!r}")
        self.return_sequences = bool(return_sequences)
        self.dh_norms = None
        self._init_params(numpy.random.default_rng())

    @classmethod
    def _shapes(cls, input_size, hidden_size):
        g = cls.gates * hidden_size
        shapes = {"W": (input_size, g), "U": (hidden_size, g), "b": (g,)}
        if "bU" in cls.param_names:
            shapes["bU"] = (g,)
        return shapes

    def _init_params(self, rng):
        ops, dt = self.ops, self.dtype
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in self._shapes(self.input_size, self.hidden_size).items():
            value = rng.uniform(-k, k, size=shape).astype(dt)
            self._adjust_init(name, value)
            setattr(self, name, ops.asarray(value))
            setattr(self, "d" + name, ops.zeros(shape, dt))

    def _adjust_init(self, name, value):
        """Change a freshly drawn initial ``value`` of parameter ``name`` in place."""

    @classmethod
    def state_shapes(cls, config):
        f, h = config.get("input_size"), config.get("hidden_size")
        if not (_is_int(f) and _is_int(h) and f > 0 and h > 0):
            return None     # the constructor refuses it
        return cls._shapes(f, h)

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences}

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 2:
            hint = " (one step per sample? reshape X to (N, 1, features))" \
                if len(shape) == 1 else ""
            raise ValueError(f"{self.name} expects sequences (N, T, {self.input_size}), batch "
                             f"first, but gets {_shape_str(shape)}{hint}")
        steps, features = shape
        if features != self.input_size:
            raise ValueError(f"{self.name} expects {self.input_size} features per time step but "
                             f"gets {features} (input {_shape_str(shape)})")
        if steps < 1:
            raise ValueError(f"{self.name} needs at least one time step, got input "
                             f"{_shape_str(shape)}")
        return (steps, self.hidden_size) if self.return_sequences else (self.hidden_size,)

    # -- the work ------------------------------------------------------------
    def _run(self, XW):
        """The backend's forward primitive on XW (N, T, G): ``(H_out, ctx)``."""
        raise NotImplementedError

    def _run_backward(self, dY, ctx):
        """The backend's backward primitive: ``(dXW, dU, dh_norms)``, storing
        any extra parameter gradient itself."""
        raise NotImplementedError

    def forward(self, X, training=False):
        """X (N, T, input_size) -> (N, hidden_size), or (N, T, hidden_size)
        with ``return_sequences``."""
        ops = self.ops
        X = self._as_input(X)
        n, steps, f = X.shape
        X2 = ops.xp.ascontiguousarray(X).reshape(n * steps, f)
        XW = ops.matmul(X2, self.W)           # one product for every time step
        XW = ops.bias_act(XW, self.b, "identity", 0.0, out=XW).reshape(n, steps, -1)
        out, ctx = self._run(XW)
        self._push((X2, ctx, tuple(out.shape)))
        return out

    def backward(self, dY, need_input_grad=True):
        """dL/dY -> dL/dX (N, T, input_size), or None when ``need_input_grad`` is
        False (a model's first layer in training). Fills dW, dU, db (and
        GRU's dbU) and ``dh_norms``."""
        ops = self.ops
        X2, ctx, shape = self._pop()
        if tuple(dY.shape) != shape:
            raise ValueError(f"{self.name}: dY has shape {tuple(dY.shape)}, the forward output "
                             f"had shape {shape}")
        dY = ops.xp.ascontiguousarray(dY)
        dXW, dU, norms = self._run_backward(dY, ctx)
        dXW2 = dXW.reshape(X2.shape[0], -1)
        self._store_grad("W", ops.matmul(X2.T, dXW2, out=self._grad_out("W")))
        self._store_grad("U", dU)
        self._store_grad("b", dXW2.sum(axis=0))
        self.dh_norms = norms       # a backend array: no device sync here
        self._done_backward()
        if not need_input_grad:
            return None
        return ops.matmul(dXW2, self.W.T).reshape(dY.shape[0], -1, self.input_size)


@register_layer
class RNN(_Recurrent):
    """Elman recurrent layer: h_t = f(x_t W + h_{t-1} U + b), h_0 = 0.

    input_size F, hidden_size H; W (F, H), U (H, H), b (H,), initialised
    uniform(-1/sqrt(H), 1/sqrt(H)) as PyTorch's. activation: "tanh"
    (default) or "relu". Input (N, T, F); output (N, H), the last step, or
    (N, T, H) with ``return_sequences=True``.
    """

    gates = 1

    def __init__(self, input_size, hidden_size, activation="tanh", return_sequences=False):
        if activation not in RNN_ACTIVATIONS:
            raise ValueError(f"RNN activation must be one of {RNN_ACTIVATIONS}, got "
                             f"{activation!r}")
        self.activation = activation
        super().__init__(input_size, hidden_size, return_sequences)

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "activation": self.activation, "return_sequences": self.return_sequences}

    def _run(self, XW):
        return self.ops.rnn_forward(XW, self.U, self.activation, self.return_sequences)

    def _run_backward(self, dY, ctx):
        return self.ops.rnn_backward(dY, ctx, self.U)


@register_layer
class LSTM(_Recurrent):
    """Long short-term memory, PyTorch's equations and gate order (i, f, g, o).

    input_size F, hidden_size H; W (F, 4H), U (H, 4H), b (4H,) (PyTorch's
    b_ih + b_hh in one), each block of H columns one gate; initialised
    uniform(-1/sqrt(H), 1/sqrt(H)) as PyTorch's. forget_bias: when not 0, the
    forget gate's bias b[H:2H] starts at this value (1.0 is the usual
    choice) instead of the uniform draw. Input (N, T, F); output (N, H), the
    last step, or (N, T, H) with ``return_sequences=True``.
    """

    gates = 4

    def __init__(self, input_size, hidden_size, return_sequences=False, forget_bias=0.0):
        self.forget_bias = check_number(forget_bias, "LSTM forget_bias", finite=True)
        super().__init__(input_size, hidden_size, return_sequences)

    def _adjust_init(self, name, value):
        if name == "b" and self.forget_bias != 0.0:
            h = self.hidden_size
            value[h:2 * h] = self.forget_bias

    def get_config(self):
        config = super().get_config()
        if self.forget_bias != 0.0:
            config["forget_bias"] = self.forget_bias
        return config

    def _run(self, XW):
        return self.ops.lstm_forward(XW, self.U, self.return_sequences)

    def _run_backward(self, dY, ctx):
        return self.ops.lstm_backward(dY, ctx, self.U)


@register_layer
class GRU(_Recurrent):
    """Gated recurrent unit, PyTorch's equations and gate order (r, z, n).

    input_size F, hidden_size H; W (F, 3H), U (H, 3H); b (3H,) is the input
    bias (PyTorch's b_ih) and bU (3H,) the hidden bias (b_hh), kept apart
    because the reset gate multiplies h_{t-1} U_n + bU_n. All initialised
    uniform(-1/sqrt(H), 1/sqrt(H)) as PyTorch's. Input (N, T, F); output
    (N, H), the last step, or (N, T, H) with ``return_sequences=True``.
    """

    gates = 3
    param_names = ("W", "U", "b", "bU")

    def _run(self, XW):
        return self.ops.gru_forward(XW, self.U, self.bU, self.return_sequences)

    def _run_backward(self, dY, ctx):
        dXW, dU, dbU, norms = self.ops.gru_backward(dY, ctx, self.U)
        self._store_grad("bU", dbU)
        return dXW, dU, norms


@register_layer
class Embedding(Layer):
    """A table of ``num_embeddings`` vectors of size ``dim``: integer ids
    (N, T) -> (N, T, dim) (any shape of ids (N, ...) -> (N, ..., dim)).

    W (num_embeddings, dim), initialised N(0, 1) as PyTorch's. Ids must be
    whole numbers in [0, num_embeddings); anything else raises ValueError
    naming the layer, the id and where it is. As a model's first layer it
    makes the model pass X as int64 ids (``input_dtype``). Ids are not
    differentiable: the input gradient is zero.
    """

    param_names = ("W",)
    can_skip_input_grad = True
    #: What a model passes this layer as its input: integer ids, not floats.
    input_dtype = "int64"

    def __init__(self, num_embeddings, dim):
        super().__init__()
        self.num_embeddings = check_positive_int(num_embeddings, "Embedding num_embeddings")
        self.dim = check_positive_int(dim, "Embedding dim")
        self._init_params(numpy.random.default_rng())

    def _init_params(self, rng):
        shape = (self.num_embeddings, self.dim)
        self.W = self.ops.asarray(rng.standard_normal(shape).astype(self.dtype))
        self.dW = self.ops.zeros(shape, self.dtype)

    @classmethod
    def state_shapes(cls, config):
        v, d = config.get("num_embeddings"), config.get("dim")
        if not (_is_int(v) and _is_int(d) and v > 0 and d > 0):
            return None
        return {"W": (v, d)}

    def get_config(self):
        return {"num_embeddings": self.num_embeddings, "dim": self.dim}

    def output_shape(self, input_shape):
        return (*tuple(input_shape), self.dim)

    def _as_input(self, X):
        """X as int64 ids on this backend, every one in range; ValueError naming
        the layer and the first bad id otherwise."""
        ops = self.ops
        if not ops.is_own_array(X):
            check_backend_of(X, ops, f"input of {self.name}")
            X = ops.asarray(as_integer_ids(as_host_numeric(X, f"input of {self.name}"),
                                           f"input of {self.name}"))
        elif X.dtype.kind not in "iu":
            X = ops.asarray(as_integer_ids(ops.to_host(X), f"input of {self.name}"))
        if X.ndim < 1:
            raise ValueError(f"{self.name} expected a batch of ids (N, ...), got a scalar")
        if X.size:
            lo, hi = int(X.min()), int(X.max())
            if lo < 0 or hi >= self.num_embeddings:
                host = ops.to_host(X)
                where = numpy.argwhere((host < 0) | (host >= self.num_embeddings))[0]
                raise ValueError(f"{self.name}: id {int(host[tuple(where)])} at "
                                 f"X[{', '.join(map(str, where))}] is out of range "
                                 f"[0, {self.num_embeddings}) for {self.num_embeddings} "
                                 f"embeddings")
        return X.astype(numpy.int64, copy=False)

    def forward(self, X, training=False):
        ids = self._as_input(X)
        self._push(ids)
        return self.ops.embedding_forward(self.W, ids)

    def backward(self, dY, need_input_grad=True):
        """Adds each row of dY to the gradient row of its id; returns a zero
        input gradient (None when ``need_input_grad`` is False)."""
        ids = self._pop()
        shape = (*ids.shape, self.dim)
        if tuple(dY.shape) != shape:
            raise ValueError(f"{self.name}: dY has shape {tuple(dY.shape)}, the forward output "
                             f"had shape {shape}")
        self._store_grad("W", self.ops.embedding_backward(dY, ids, self.num_embeddings))
        self._done_backward()
        if not need_input_grad:
            return None
        return self.ops.zeros(ids.shape, self.dtype)


def as_integer_ids(arr, name="X"):
    """A host array of ids as int64: integers as they are, floats only when
    every value is a whole number; TypeError or ValueError naming ``name`` and
    the first bad value otherwise."""
    arr = numpy.asarray(arr)
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold integer ids, got booleans")
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and arr.max() > numpy.iinfo(numpy.int64).max:
            raise ValueError(f"{name} holds an id beyond the int64 range")
        return arr.astype(numpy.int64, copy=False)
    if arr.dtype.kind == "f":
        bad = ~numpy.isfinite(arr) | (arr != numpy.round(arr))
        if bad.any():
            where = tuple(numpy.argwhere(bad)[0])
            raise ValueError(f"{name} must hold integer ids, but {name}"
                             f"[{', '.join(map(str, where))}] is {float(arr[where])!r}")
        return arr.astype(numpy.int64)
    raise TypeError(f"{name} must hold integer ids, got an array of dtype {arr.dtype}")
