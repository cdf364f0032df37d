"""Optimizers: 5-step trajectories equal hand-written NumPy versions of PyTorch's
update rules (torch.optim.SGD, torch.optim.Adam), on every backend."""

import zlib

import numpy as np
import pytest

import scratchnet as sn
from conftest import to_host as host

DTYPES = ["float32", "float64"]
STEPS = 5


# --- PyTorch's rules, as its documentation writes them --------------------------

def torch_sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    def step(p, g, state, t):
        g = g + weight_decay * p if weight_decay else g
        if momentum:
            b = g if t == 1 else momentum * state["b"] + g       # dampening 0
            state["b"] = b
            g = g + momentum * b if nesterov else b
        return p - lr * g
    return step


def torch_adam(lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    def step(p, g, state, t):
        g = g + weight_decay * p if weight_decay else g
        state["m"] = beta1 * state.get("m", 0) + (1 - beta1) * g
        state["v"] = beta2 * state.get("v", 0) + (1 - beta2) * g * g
        m_hat = state["m"] / (1 - beta1 ** t)
        v_hat = state["v"] / (1 - beta2 ** t)
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return step


CASES = {
    "sgd": (lambda: sn.SGD(lr=0.1), torch_sgd(0.1)),
    "sgd_momentum": (lambda: sn.SGD(lr=0.1, momentum=0.9), torch_sgd(0.1, 0.9)),
    "sgd_nesterov": (lambda: sn.SGD(lr=0.05, momentum=0.8, nesterov=True),
                     torch_sgd(0.05, 0.8, nesterov=True)),
    "sgd_weight_decay": (lambda: sn.SGD(lr=0.1, weight_decay=0.1),
                         torch_sgd(0.1, weight_decay=0.1)),
    "sgd_momentum_weight_decay": (lambda: sn.SGD(lr=0.1, momentum=0.9, weight_decay=0.05),
                                  torch_sgd(0.1, 0.9, weight_decay=0.05)),
    "sgd_nesterov_weight_decay": (
        lambda: sn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
        torch_sgd(0.1, 0.9, nesterov=True, weight_decay=0.05)),
    "adam": (lambda: sn.Adam(lr=0.01), torch_adam(0.01)),
    "adam_weight_decay": (lambda: sn.Adam(lr=0.01, weight_decay=0.1),
                          torch_adam(0.01, weight_decay=0.1)),
    "adam_betas": (lambda: sn.Adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6),
                   torch_adam(0.02, 0.8, 0.99, 1e-6)),
}


def small_model(backend, dtype):
    return sn.Sequential([sn.Dense(3, 4), sn.Tanh(), sn.BatchNorm(4), sn.Dense(4, 2)], seed=0,
                         dtype=dtype, backend=backend)


def gradient(p, t, path):
    """A made-up gradient that depends on the parameter (so errors compound)."""
    seed = zlib.crc32(f"{path}/{t}".encode())
    return 0.5 * p + np.random.default_rng(seed).normal(size=p.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectory_matches_pytorch_rules(backend, case, dtype):
    make, rule = CASES[case]
    model, opt = small_model(backend, dtype), make()
    ops = model.ops
    params = {path: host(getattr(layer, name)).astype(dtype)
              for path, layer, name in model.named_parameters()}
    expected = {k: v.astype(np.float64) for k, v in params.items()}
    states = {k: {} for k in params}
    for t in range(1, STEPS + 1):
        for path, layer, name in model.named_parameters():
            g = gradient(host(getattr(layer, name)).astype(np.float64), t, path).astype(dtype)
            getattr(layer, "d" + name)[...] = ops.asarray(g)
            expected[path] = rule(expected[path], g.astype(np.float64), states[path], t)
        opt.step(model)
        for path, layer, name in model.named_parameters():
            p = host(getattr(layer, name))
            assert p.dtype == np.dtype(dtype), path
            tol = 1e-5 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(p, expected[path], rtol=tol, atol=tol,
                                       err_msg=f"{case} step {t} {path}")
    assert set(opt.state) == set(params)
    assert all(st["step"] == STEPS for st in opt.state.values())


def test_state_is_kept_per_parameter_path(backend):
    model = small_model(backend, "float32")
    opt = sn.Adam()
    opt.step(model)
    assert set(opt.state) == {"0.W", "0.b", "2.gamma", "2.beta", "3.W", "3.b"}
    for path, layer, name in model.named_parameters():
        st = opt.state[path]
        assert st["m"].shape == getattr(layer, name).shape
        assert st["m"].dtype == np.float32 and st["v"].dtype == np.float32
    assert model.optimizer is opt


def test_plain_sgd_keeps_no_velocity(backend):
    model = small_model(backend, "float32")
    opt = sn.SGD(lr=0.1)
    opt.step(model)
    assert all(set(st) == {"step"} for st in opt.state.values())


def test_zero_gradient_leaves_parameters(backend):
    model = small_model(backend, "float64")
    before = [host(p).copy() for p in model.parameters()]
    for opt in (sn.SGD(0.1, momentum=0.9), sn.Adam(0.1)):
        for _, layer, name in model.named_parameters():
            getattr(layer, "d" + name)[...] = 0
        opt.step(model)
    for b, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(host(p), b)


def test_adam_spellings():
    assert sn.Adam(betas=(0.8, 0.95)).betas == (0.8, 0.95)
    assert sn.Adam(b1=0.7, b2=0.9).betas == (0.7, 0.9)
    assert sn.Adam().get_config() == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                      "weight_decay": 0.0}


@pytest.mark.parametrize("make", [lambda: sn.SGD(lr=-0.1), lambda: sn.Adam(lr=-1e-3),
                                  lambda: sn.SGD(-1), lambda: sn.Adam(-1)],
                         ids=["sgd", "adam", "sgd_positional", "adam_positional"])
def test_negative_learning_rate(make):
    with pytest.raises(ValueError, match="lr"):
        make()


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.1, "momentum": -0.5}, "momentum"),
    ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
    ({"lr": 0.1, "nesterov": True}, "nesterov"),
    ({"lr": float("nan")}, "lr"),
])
def test_bad_sgd_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sn.SGD(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"beta1": 1.0}, "beta1"), ({"beta2": -0.1}, "beta2"), ({"eps": -1.0}, "eps"),
    ({"weight_decay": -0.1}, "weight_decay"),
])
def test_bad_adam_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sn.Adam(**kwargs)


def test_learning_rate_must_be_a_number():
    with pytest.raises(TypeError, match="lr"):
        sn.SGD(lr="0.1")
