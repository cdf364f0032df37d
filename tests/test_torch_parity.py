"""Parity with PyTorch (float64): losses, every gradient, optimizer trajectories and
BatchNorm, computed by torch from the same weights."""

import numpy as np
import pytest

import scratchnet as sn
from conftest import to_host as host

torch = pytest.importorskip("torch")
nn = torch.nn

TIGHT = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds contention (100x slower on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t64(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


ACTS = {"relu": (sn.ReLU, nn.ReLU), "leaky_relu": (lambda: sn.LeakyReLU(0.1),
                                                     lambda: nn.LeakyReLU(0.1)),
        "sigmoid": (sn.Sigmoid, nn.Sigmoid), "tanh": (sn.Tanh, nn.Tanh)}


def twin(backend, act="relu", seed=0):
    """A scratchnet model and a torch nn.Sequential with the same weights."""
    ours_act, torch_act = ACTS[act]
    model = sn.Sequential([sn.Dense(5, 8, init="he"), ours_act(), sn.Dense(8, 6), sn.Tanh(),
                           sn.Dense(6, 3)], seed=seed, dtype="float64", backend=backend)
    rng = np.random.default_rng(seed + 100)
    for layer in model.layers:
        if isinstance(layer, sn.Dense):
            layer.b[...] = model.ops.asarray(rng.normal(scale=0.1, size=layer.b.shape))
    net = nn.Sequential(nn.Linear(5, 8), torch_act(), nn.Linear(8, 6), nn.Tanh(),
                        nn.Linear(6, 3)).double()
    with torch.no_grad():
        for ours, theirs in zip(dense_layers(model), [m for m in net if isinstance(m, nn.Linear)]):
            theirs.weight.copy_(t64(host(ours.W).T))     # torch keeps (out, in)
            theirs.bias.copy_(t64(host(ours.b)))
    return model, net


def dense_layers(model):
    return [layer for layer in model.layers if isinstance(layer, sn.Dense)]


def batch(seed=1, n=12):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, size=n)


def compare_params(model, net, **tol):
    for ours, theirs in zip(dense_layers(model), [m for m in net if isinstance(m, nn.Linear)]):
        np.testing.assert_allclose(host(ours.W), theirs.weight.detach().numpy().T, **tol)
        np.testing.assert_allclose(host(ours.b), theirs.bias.detach().numpy(), **tol)


@pytest.mark.parametrize("act", sorted(ACTS))
def test_loss_and_every_gradient(backend, act):
    model, net = twin(backend, act)
    X, y = batch()
    loss = sn.SoftmaxCrossEntropy()
    value = loss.forward(model.forward(X, training=True), y)
    dX = host(model.backward(loss.backward()))

    Xt = t64(X).requires_grad_(True)
    ref = nn.CrossEntropyLoss()(net(Xt), torch.tensor(y))
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dX, Xt.grad.numpy(), **TIGHT)
    for ours, theirs in zip(dense_layers(model), [m for m in net if isinstance(m, nn.Linear)]):
        np.testing.assert_allclose(host(ours.dW), theirs.weight.grad.numpy().T, **TIGHT)
        np.testing.assert_allclose(host(ours.db), theirs.bias.grad.numpy(), **TIGHT)


OPTIMIZERS = {
    "sgd_momentum": (lambda: sn.SGD(lr=0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "sgd_momentum_wd": (lambda: sn.SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "nesterov": (lambda: sn.SGD(lr=0.05, momentum=0.9, nesterov=True),
                 lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "nesterov_wd": (lambda: sn.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02),
                    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=0.02)),
    "sgd_wd": (lambda: sn.SGD(lr=0.1, weight_decay=0.05),
               lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05)),
    "adam": (lambda: sn.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam_wd": (lambda: sn.Adam(lr=0.01, weight_decay=0.01),
                lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01)),
    "adam_betas": (lambda: sn.Adam(lr=0.005, betas=(0.8, 0.99), eps=1e-6),
                   lambda p: torch.optim.Adam(p, lr=0.005, betas=(0.8, 0.99), eps=1e-6)),
    # the optimizers added with the core rework, at PyTorch's defaults and with options
    "adamw": (lambda: sn.AdamW(), lambda p: torch.optim.AdamW(p)),
    "adamw_options": (lambda: sn.AdamW(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
                      lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6,
                                                  weight_decay=0.1)),
    "rmsprop": (lambda: sn.RMSprop(), lambda p: torch.optim.RMSprop(p)),
    "rmsprop_options": (lambda: sn.RMSprop(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.01,
                                           momentum=0.8, centered=True),
                        lambda p: torch.optim.RMSprop(p, lr=0.005, alpha=0.9, eps=1e-6,
                                                      weight_decay=0.01, momentum=0.8,
                                                      centered=True)),
    "adagrad": (lambda: sn.Adagrad(), lambda p: torch.optim.Adagrad(p)),
    "adagrad_options": (lambda: sn.Adagrad(lr=0.05, lr_decay=0.01, weight_decay=0.01,
                                           initial_accumulator_value=0.1, eps=1e-8),
                        lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.01, weight_decay=0.01,
                                                      initial_accumulator_value=0.1, eps=1e-8)),
    # no weight decay on the biases: torch's two parameter groups
    "sgd_wd_not_biases": (
        lambda: sn.SGD(lr=0.1, momentum=0.9, weight_decay=0.05, exclude_from_weight_decay=("b",)),
        lambda p: torch.optim.SGD(_groups(p), lr=0.1, momentum=0.9, weight_decay=0.05)),
    "adamw_wd_not_biases": (
        lambda: sn.AdamW(lr=0.01, weight_decay=0.1, exclude_from_weight_decay=("b",)),
        lambda p: torch.optim.AdamW(_groups(p), lr=0.01, weight_decay=0.1)),
}


def _groups(params):
    """torch parameter groups: weights decay, biases (1-D) do not."""
    params = list(params)
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_ten_step_trajectory(backend, name):
    make_ours, make_theirs = OPTIMIZERS[name]
    model, net = twin(backend, "tanh", seed=3)
    opt, topt = make_ours(), make_theirs(net.parameters())
    loss, tloss = sn.SoftmaxCrossEntropy(), nn.CrossEntropyLoss()
    for step in range(10):
        X, y = batch(seed=10 + step)
        value = loss.forward(model.forward(X, training=True), y)
        model.backward(loss.backward())
        opt.step(model)
        topt.zero_grad()
        ref = tloss(net(t64(X)), torch.tensor(y))
        ref.backward()
        topt.step()
        assert value == pytest.approx(ref.item(), rel=1e-9), f"step {step}"
    compare_params(model, net, rtol=1e-9, atol=1e-11)


def test_fit_full_batch_equals_torch_loop(backend):
    """fit(mode='full_batch') is the plain training loop, step for step."""
    model, net = twin(backend, "relu", seed=4)
    X, y = batch(seed=5, n=20)
    hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(lr=0.01), epochs=5,
                     mode="full_batch")
    topt = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        topt.zero_grad()
        ref = nn.CrossEntropyLoss()(net(t64(X)), torch.tensor(y))
        ref.backward()
        topt.step()
        losses.append(ref.item())
    np.testing.assert_allclose(hist.history["loss"], losses, rtol=1e-9)
    compare_params(model, net, rtol=1e-9, atol=1e-11)


# --- BatchNorm -------------------------------------------------------------------

def test_batchnorm_matches_batchnorm1d(backend):
    n = 5
    model = sn.Sequential([sn.BatchNorm(n)], dtype="float64", backend=backend)
    bn = model.layers[0]
    tbn = nn.BatchNorm1d(n, eps=1e-5, momentum=0.1).double()
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 1.5, n), rng.normal(size=n)
    bn.gamma[...] = model.ops.asarray(gamma)
    bn.beta[...] = model.ops.asarray(beta)
    with torch.no_grad():
        tbn.weight.copy_(t64(gamma))
        tbn.bias.copy_(t64(beta))
    tbn.train()
    for step in range(3):
        X = rng.normal(loc=step, scale=2.0, size=(8, n))
        dY = rng.normal(size=(8, n))
        Y = model.forward(X, training=True)
        dX = model.backward(model.ops.asarray(dY))
        Xt = t64(X).requires_grad_(True)
        tbn.zero_grad()
        Yt = tbn(Xt)
        Yt.backward(t64(dY))
        np.testing.assert_allclose(host(Y), Yt.detach().numpy(), **TIGHT)
        np.testing.assert_allclose(host(dX), Xt.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(host(bn.dgamma), tbn.weight.grad.numpy(), **TIGHT)
        np.testing.assert_allclose(host(bn.dbeta), tbn.bias.grad.numpy(), **TIGHT)
        np.testing.assert_allclose(host(bn.running_mean), tbn.running_mean.numpy(), **TIGHT)
        np.testing.assert_allclose(host(bn.running_var), tbn.running_var.numpy(), **TIGHT)
    tbn.eval()
    X = rng.normal(size=(4, n))
    dY = rng.normal(size=(4, n))
    Y = model.forward(X, training=False)
    dX = model.backward(model.ops.asarray(dY))
    Xt = t64(X).requires_grad_(True)
    tbn.zero_grad()
    Yt = tbn(Xt)
    Yt.backward(t64(dY))
    np.testing.assert_allclose(host(Y), Yt.detach().numpy(), **TIGHT)
    np.testing.assert_allclose(host(model.predict(X)), Yt.detach().numpy(), **TIGHT)
    np.testing.assert_allclose(host(dX), Xt.grad.numpy(), **TIGHT)
    np.testing.assert_allclose(host(bn.dgamma), tbn.weight.grad.numpy(), **TIGHT)


# --- losses ----------------------------------------------------------------------

def loss_and_grad_ours(backend, loss, out, y):
    with sn.use_backend(backend) as ops:
        value = loss.forward(ops.asarray(out), y)
        return value, host(loss.backward())


def loss_and_grad_torch(fn, out, target):
    ot = t64(out).requires_grad_(True)
    value = fn(ot, target)
    value.backward()
    return value.item(), ot.grad.numpy()


def test_mse_loss(backend):
    rng = np.random.default_rng(1)
    out, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    v, g = loss_and_grad_ours(backend, sn.MSE(), out, y)
    tv, tg = loss_and_grad_torch(nn.MSELoss(), out, t64(y))
    assert v == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(g, tg, **TIGHT)


def test_bce_loss(backend):
    rng = np.random.default_rng(2)
    out, y = rng.uniform(0.01, 0.99, size=(6, 2)), rng.integers(0, 2, size=(6, 2)).astype(float)
    v, g = loss_and_grad_ours(backend, sn.BinaryCrossEntropy(), out, y)
    tv, tg = loss_and_grad_torch(nn.BCELoss(), out, t64(y))
    assert v == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(g, tg, **TIGHT)


def test_cross_entropy_loss_on_logits(backend):
    rng = np.random.default_rng(3)
    out, y = rng.normal(scale=3, size=(7, 4)), rng.integers(0, 4, size=7)
    v, g = loss_and_grad_ours(backend, sn.SoftmaxCrossEntropy(), out, y)
    tv, tg = loss_and_grad_torch(nn.CrossEntropyLoss(), out, torch.tensor(y))
    assert v == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(g, tg, **TIGHT)


def test_cross_entropy_loss_probability_targets(backend):
    rng = np.random.default_rng(4)
    out = rng.normal(scale=3, size=(5, 4))
    T = rng.uniform(size=(5, 4))
    T /= T.sum(axis=1, keepdims=True)
    v, g = loss_and_grad_ours(backend, sn.SoftmaxCrossEntropy(), out, T)
    tv, tg = loss_and_grad_torch(nn.CrossEntropyLoss(), out, t64(T))
    assert v == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(g, tg, **TIGHT)


def test_cross_entropy_loss_unnormalised_targets(backend):
    rng = np.random.default_rng(6)
    out, T = rng.normal(scale=2, size=(5, 4)), rng.uniform(0, 2, size=(5, 4))
    v, g = loss_and_grad_ours(backend, sn.SoftmaxCrossEntropy(), out, T)
    tv, tg = loss_and_grad_torch(nn.CrossEntropyLoss(), out, t64(T))
    assert v == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(g, tg, **TIGHT)


def test_cross_entropy_on_probabilities_is_nll_of_log(backend):
    rng = np.random.default_rng(5)
    P = torch.softmax(t64(rng.normal(size=(6, 3))), dim=1).numpy()
    y = rng.integers(0, 3, size=6)
    v, g = loss_and_grad_ours(backend, sn.CrossEntropy(), P, y)
    tv, tg = loss_and_grad_torch(lambda p, t: nn.NLLLoss()(torch.log(p), t), P, torch.tensor(y))
    assert v == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(g, tg, **TIGHT)
