"""Optimizers: ``opt.step(model)`` updates every parameter from its gradient.

The maths follows PyTorch's ``torch.optim`` definitions and default arguments
exactly (SGD, Adam, AdamW, RMSprop, Adagrad), so trajectories can be compared
step by step; the parity tests do when PyTorch is installed.

A model keeps its parameters, and their gradients, as views of one contiguous
buffer (``model.flat_parameters()``), so an update is one backend call per
*run* of consecutive parameters that share their hyper-parameters: one call
for the whole model unless some parameters are excluded from weight decay.
The optimizer's state (velocities, moments) is a flat buffer of the same
layout; ``state[path]`` holds views of it per parameter, for saving.

``exclude_from_weight_decay=("b", ...)``: parameters whose attribute name
(``"b"``, ``"beta"``) or path in the model (``"0.W"``) is listed get no
weight decay. The default excludes nothing, as PyTorch.
"""

from __future__ import annotations

from ._validate import check_number

_PROB = dict(low=0.0, high=1.0, high_open=True, finite=True)


class Optimizer:
    """Base class: subclasses set ``state_names`` and implement ``_update``."""

    state_names: tuple = ()

    def __init__(self, lr, weight_decay=0.0, exclude_from_weight_decay=()):
        cls = type(self).__name__
        self.lr = check_number(lr, f"{cls} lr", low=0.0, finite=True)
        self.weight_decay = check_number(weight_decay, f"{cls} weight_decay", low=0.0,
                                         finite=True)
        if isinstance(exclude_from_weight_decay, str):
            exclude_from_weight_decay = (exclude_from_weight_decay,)
        names = tuple(exclude_from_weight_decay or ())
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"{cls} exclude_from_weight_decay must hold parameter names "
                                f"(strings such as 'b'), got {n!r}")
        self.exclude_from_weight_decay = names
        self.steps = 0         # updates applied so far
        self.state = {}        # path -> {"step": int, name: view of the flat state}
        self._layout = None    # (model reference, runs, flat state) once bound to a model

    # -- binding to a model's parameter layout ----------------------------------
    def _decays(self, path, name):
        return self.weight_decay > 0 and name not in self.exclude_from_weight_decay \
            and path not in self.exclude_from_weight_decay

    def _bind(self, model):
        """Lay the state out like ``model``'s flat parameter buffer and group
        consecutive parameters with the same weight decay into runs."""
        layout = model._param_layout()
        if self._layout is not None:
            if self._layout[0] is layout:
                return self._layout
            if self._layout[3] != [(p, shape) for p, _, _, _, shape in layout.segments]:
                raise ValueError(f"this {type(self).__name__} holds state for another model (other "
                                 "parameters); create a new optimizer for this model")
        ops, dtype = model.ops, model.dtype
        flat_state = {k: ops.zeros((layout.size,), dtype) for k in self.state_names}
        old = self.state
        self.state = {}
        runs = []
        for path, layer, name, offset, shape in layout.segments:
            size = _size(shape)
            decay = self._decays(path, name)
            if runs and runs[-1][2] == decay and runs[-1][1] == offset:
                runs[-1][1] = offset + size
            else:
                runs.append([offset, offset + size, decay])
            st = {"step": self.steps}
            for k in self.state_names:
                view = flat_state[k][offset:offset + size].reshape(shape)
                if path in old and k in old[path]:        # state moved or loaded earlier
                    view[...] = ops.asarray(old[path][k])
                st[k] = view
            self.state[path] = st
        sig = [(p, shape) for p, _, _, _, shape in layout.segments]
        self._layout = (layout, [tuple(r) for r in runs], flat_state, sig)
        return self._layout

    # -- the update ------------------------------------------------------------
    def step(self, model):
        """Apply one update to every parameter of ``model`` from its gradients."""
        model.optimizer = self
        layout, runs, flat_state, _ = self._bind(model)
        self.steps += 1
        ops, params, grads = model.ops, layout.params, layout.grads
        for start, stop, decay in runs:
            state = {k: v[start:stop] for k, v in flat_state.items()}
            self._update(ops, params[start:stop], grads[start:stop], state,
                         self.weight_decay if decay else 0.0)
        for st in self.state.values():
            st["step"] = self.steps

    def _update(self, ops, param, grad, state, weight_decay):
        raise NotImplementedError

    # -- moving, saving -------------------------------------------------------
    def to(self, ops, from_ops):
        """Move the state to backend ``ops``; it is laid out again at the next step."""
        for st in self.state.values():
            for k in self.state_names:
                st[k] = ops.asarray(from_ops.to_host(st[k]))
        self._layout = None

    def load_state(self, steps, arrays):
        """Set the step count and per-parameter state (``{path: {name: array}}``);
        it is laid out over the model at the next step."""
        self.steps = int(steps)
        self.state = {p: {"step": self.steps, **a} for p, a in arrays.items()}
        self._layout = None

    def get_config(self):
        config = {"lr": self.lr, **self._hyper(), "weight_decay": self.weight_decay}
        if self.exclude_from_weight_decay:
            config["exclude_from_weight_decay"] = list(self.exclude_from_weight_decay)
        return config

    def _hyper(self):
        return {}

    def divergence_hint(self):
        """The likely cause of a diverging run, named from the hyper-parameters."""
        return f"lower the learning rate (now {self.lr:g})"

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum and
    weight decay (PyTorch's ``torch.optim.SGD``, dampening 0):
    g = grad + wd*p; v = momentum*v + g; p -= lr * (g + momentum*v if nesterov else v)."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 exclude_from_weight_decay=()):
        super().__init__(lr, weight_decay, exclude_from_weight_decay)
        self.momentum = check_number(momentum, "SGD momentum", **_PROB)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD nesterov=True needs momentum > 0")
        self.state_names = ("velocity",) if self.momentum else ()

    def _update(self, ops, param, grad, state, weight_decay):
        ops.sgd_update(param, grad, state.get("velocity"), self.lr, self.momentum,
                       self.nesterov, weight_decay)

    def _hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def divergence_hint(self):
        hint = super().divergence_hint()
        if self.momentum > 0.99:
            hint += f", or lower the momentum (now {self.momentum:g})"
        if self.weight_decay * self.lr >= 1:
            hint += f"; weight_decay x lr = {self.weight_decay * self.lr:g} >= 1 flips the weights"
        return hint


def _betas(cls, beta1, beta2, betas):
    if betas is not None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{cls} betas must be a pair (beta1, beta2), got {betas!r}")
        beta1, beta2 = betas
    return (check_number(beta1, f"{cls} beta1", **_PROB),
            check_number(beta2, f"{cls} beta2", **_PROB))


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba; PyTorch's ``torch.optim.Adam``).

    ``Adam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)``;
    ``betas=(b1, b2)`` (PyTorch's spelling) and ``b1=``/``b2=`` are accepted too.
    Weight decay is an L2 term added to the gradient; see ``AdamW`` for the
    decoupled form.
    """

    state_names = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, *,
                 betas=None, b1=None, b2=None, exclude_from_weight_decay=()):
        super().__init__(lr, weight_decay, exclude_from_weight_decay)
        cls = type(self).__name__
        beta1 = beta1 if b1 is None else b1
        beta2 = beta2 if b2 is None else b2
        self.beta1, self.beta2 = _betas(cls, beta1, beta2, betas)
        # eps = 0 divides 0 by 0 for any parameter whose gradient stays 0
        self.eps = check_number(eps, f"{cls} eps", low=0.0, low_open=True, finite=True)

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def divergence_hint(self):
        hint = super().divergence_hint()
        if self.eps < 1e-12:
            hint += f", or raise eps (now {self.eps:g}: tiny second moments blow the step up)"
        return hint

    def _update(self, ops, param, grad, state, weight_decay):
        ops.adam_update(param, grad, state["m"], state["v"], self.steps, self.lr, self.beta1,
                        self.beta2, self.eps, weight_decay)

    def _hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's
    ``torch.optim.AdamW``): p *= 1 - lr*wd, then the Adam step on the raw
    gradient. Defaults as PyTorch: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
    weight_decay 1e-2."""

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, *,
                 betas=None, b1=None, b2=None, exclude_from_weight_decay=()):
        super().__init__(lr, beta1, beta2, eps, weight_decay, betas=betas, b1=b1, b2=b2,
                         exclude_from_weight_decay=exclude_from_weight_decay)

    def _update(self, ops, param, grad, state, weight_decay):
        ops.adamw_update(param, grad, state["m"], state["v"], self.steps, self.lr, self.beta1,
                         self.beta2, self.eps, weight_decay)


class RMSprop(Optimizer):
    """RMSprop (PyTorch's ``torch.optim.RMSprop``): a running mean of squared
    gradients scales each step. Defaults as PyTorch: lr 1e-2, alpha 0.99,
    eps 1e-8, weight_decay 0, momentum 0, centered False."""

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, exclude_from_weight_decay=()):
        super().__init__(lr, weight_decay, exclude_from_weight_decay)
        self.alpha = check_number(alpha, "RMSprop alpha", low=0.0, high=1.0, finite=True)
        self.eps = check_number(eps, "RMSprop eps", low=0.0, low_open=True, finite=True)
        self.momentum = check_number(momentum, "RMSprop momentum", **_PROB)
        self.centered = bool(centered)
        self.state_names = ("square_avg",) + (("momentum_buffer",) if self.momentum else ()) \
            + (("grad_avg",) if self.centered else ())

    def _update(self, ops, param, grad, state, weight_decay):
        ops.rmsprop_update(param, grad, state["square_avg"], self.lr, self.alpha, self.eps,
                           weight_decay, self.momentum, state.get("momentum_buffer"),
                           self.centered, state.get("grad_avg"))

    def _hyper(self):
        return {"alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad (PyTorch's ``torch.optim.Adagrad``): each parameter's step is
    scaled by its accumulated squared gradients. Defaults as PyTorch: lr 1e-2,
    lr_decay 0, weight_decay 0, initial_accumulator_value 0, eps 1e-10."""

    state_names = ("sum",)

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, exclude_from_weight_decay=()):
        super().__init__(lr, weight_decay, exclude_from_weight_decay)
        self.lr_decay = check_number(lr_decay, "Adagrad lr_decay", low=0.0, finite=True)
        self.initial_accumulator_value = check_number(
            initial_accumulator_value, "Adagrad initial_accumulator_value", low=0.0, finite=True)
        self.eps = check_number(eps, "Adagrad eps", low=0.0, low_open=True, finite=True)

    def _bind(self, model):
        fresh = self._layout is None and not self.state
        layout = super()._bind(model)
        if fresh and self.initial_accumulator_value:
            layout[2]["sum"][...] = self.initial_accumulator_value
        return layout

    def _update(self, ops, param, grad, state, weight_decay):
        ops.adagrad_update(param, grad, state["sum"], self.steps, self.lr, self.lr_decay,
                           weight_decay, self.eps)

    def _hyper(self):
        return {"lr_decay": self.lr_decay,
                "initial_accumulator_value": self.initial_accumulator_value, "eps": self.eps}


#: Optimizer classes by name (``get_optimizer``, saved files).
OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}

#: Named recipes: the CLI's ``--optimizer`` choices and ``compare``'s presets.
#: Each maps to (class, default lr, extra arguments).
PRESETS = {
    "sgd": (SGD, 0.1, {}),
    "momentum": (SGD, 0.05, {"momentum": 0.9}),
    "nesterov": (SGD, 0.05, {"momentum": 0.9, "nesterov": True}),
    "adam": (Adam, 1e-3, {}),
    "adamw": (AdamW, 1e-3, {}),
    "rmsprop": (RMSprop, 1e-3, {}),
    "adagrad": (Adagrad, 1e-2, {}),
}


def get_optimizer(spec, **kwargs):
    """The one place an optimizer is built from a name.

    ``spec``: an ``Optimizer`` (returned as is; no ``kwargs`` then), or a name
    from ``PRESETS`` ("sgd", "momentum", "nesterov", "adam", "adamw",
    "rmsprop", "adagrad"). ``kwargs`` override the preset's arguments
    (``lr=None`` keeps the preset's learning rate). An argument the optimizer
    does not take (``momentum`` for adam) is an error naming it.
    """
    if isinstance(spec, Optimizer):
        if kwargs:
            raise TypeError(f"get_optimizer: arguments {sorted(kwargs)} given with an optimizer "
                            "object; set them on the object instead")
        return spec
    if not isinstance(spec, str) or spec.lower() not in PRESETS:
        raise ValueError(f"unknown optimizer {spec!r}; expected an Optimizer (sn.SGD, sn.Adam, "
                         f"...) or one of {sorted(PRESETS)}")
    cls, lr, extra = PRESETS[spec.lower()]
    args = {"lr": lr, **extra}
    for key, value in kwargs.items():
        if value is None:
            continue
        args[key] = value
    try:
        return cls(**args)
    except TypeError as err:
        import inspect
        accepted = [p for p in inspect.signature(cls).parameters if p not in ("self",)]
        unknown = [k for k in args if k not in accepted]
        if unknown:
            raise ValueError(f"optimizer {spec!r} ({cls.__name__}) does not take "
                             f"{', '.join(unknown)}; it takes {', '.join(accepted)}") from None
        raise


def optimizer_from_config(spec):
    if not isinstance(spec, dict):
        raise ValueError(f"the optimizer entry must be an object, got {type(spec).__name__}")
    cls = OPTIMIZERS.get(str(spec.get("class", "")).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {spec.get('class')!r} in saved config")
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"the optimizer config must be an object, got {type(config).__name__}")
    try:
        return cls(**config)
    except TypeError as err:
        raise ValueError(f"optimizer {cls.__name__}: {err}") from None
