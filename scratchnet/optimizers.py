"""Optimizers: ``opt.step(model)`` updates every parameter from its gradient.

The maths follows PyTorch's ``torch.optim.SGD`` and ``torch.optim.Adam``
exactly (weight decay as an L2 term added to the gradient), so trajectories
can be compared step by step. The update itself is one backend call per
parameter (``ops.sgd_update`` / ``ops.adam_update``), fused on fast backends.

State (velocities, moments) is kept per parameter under the parameter's path
in the model (``"0.W"``), so it moves with ``model.to(...)`` and is saved with
the model.
"""

from __future__ import annotations

from ._validate import check_number


class Optimizer:
    state_names: tuple = ()

    def __init__(self, lr):
        self.lr = check_number(lr, f"{type(self).__name__} lr", low=0.0)
        self.state = {}        # path -> {"step": int, name: array}

    def step(self, model):
        """Apply one update to every parameter of ``model`` from its gradients."""
        model.optimizer = self
        ops = model.ops
        for path, layer, name in model.named_parameters():
            st = self.state.get(path)
            if st is None:
                param = getattr(layer, name)
                st = self.state[path] = {"step": 0, **{k: ops.zeros(param.shape, param.dtype)
                                                       for k in self.state_names}}
            st["step"] += 1
            self._update(ops, getattr(layer, name), getattr(layer, "d" + name), st)

    def _update(self, ops, param, grad, st):
        raise NotImplementedError

    def to(self, ops, from_ops):
        """Move the state arrays to backend ``ops``."""
        for st in self.state.values():
            for k in self.state_names:
                st[k] = ops.asarray(from_ops.to_host(st[k]))

    def get_config(self):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum and
    weight decay: v = momentum*v + g; p -= lr * (g + momentum*v if nesterov else v)."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = check_number(momentum, "SGD momentum", low=0.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = check_number(weight_decay, "SGD weight_decay", low=0.0)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD nesterov=True needs momentum > 0")
        self.state_names = ("velocity",) if self.momentum else ()

    def _update(self, ops, param, grad, st):
        ops.sgd_update(param, grad, st.get("velocity"), self.lr, self.momentum, self.nesterov,
                       self.weight_decay)

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba; PyTorch's definition).

    ``Adam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)``;
    ``betas=(b1, b2)`` (PyTorch's spelling) and ``b1=``/``b2=`` are accepted too.
    """

    state_names = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, *,
                 betas=None, b1=None, b2=None):
        super().__init__(lr)
        if betas is not None:
            beta1, beta2 = betas
        beta1 = beta1 if b1 is None else b1
        beta2 = beta2 if b2 is None else b2
        self.beta1 = check_number(beta1, "Adam beta1", low=0.0, high=1.0, high_open=True)
        self.beta2 = check_number(beta2, "Adam beta2", low=0.0, high=1.0, high_open=True)
        self.eps = check_number(eps, "Adam eps", low=0.0)
        self.weight_decay = check_number(weight_decay, "Adam weight_decay", low=0.0)

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _update(self, ops, param, grad, st):
        ops.adam_update(param, grad, st["m"], st["v"], st["step"], self.lr, self.beta1,
                        self.beta2, self.eps, self.weight_decay)

    def get_config(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def optimizer_from_config(spec):
    cls = OPTIMIZERS.get(str(spec.get("class", "")).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {spec.get('class')!r} in saved config")
    return cls(**spec.get("config", {}))
