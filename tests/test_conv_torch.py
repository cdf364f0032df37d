"""Convolutional layers against PyTorch as the oracle: conv2d, max_pool2d (with
tied maxima), avg_pool2d and batch_norm (training mode and running
statistics), forward, input gradient and weight gradients with copied
weights, in float64; and a small CNN's training trajectory."""

import numpy as np
import pytest

import scratchnet as sn
from conftest import to_host as host

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = dict(rtol=1e-10, atol=1e-10)


pytestmark = pytest.mark.usefixtures("one_torch_and_blas_thread")


def t(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


def run_layer(layer, backend, X, dY, training=True):
    """Forward and backward of ``layer`` alone (float64): (Y, dX)."""
    model = sn.Sequential([layer], seed=0, dtype="float64", backend=backend)
    Y = host(model.forward(X, training=training))
    dX = host(model.backward(model.ops.asarray(dY)))
    return Y, dX


CONV_CASES = [
    # N, C, H, W, O, kernel, stride, padding
    (2, 3, 7, 6, 4, 3, 1, 1),
    (3, 2, 9, 8, 3, (3, 2), (2, 1), (0, 2)),
    (1, 4, 5, 5, 2, 1, 2, 0),
    (2, 2, 6, 7, 5, 4, (2, 3), 2),
    (2, 1, 4, 4, 2, 5, 1, 1),
]


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(backend, case, activation):
    n, c, h, w, o, k, s, p = case
    rng = np.random.default_rng(0)
    conv = sn.Conv2D(c, o, k, stride=s, padding=p, activation=activation)
    model = sn.Sequential([conv], seed=0, dtype="float64", backend=backend)
    W, b = rng.normal(size=conv.W.shape), rng.normal(size=o)
    conv.W[...], conv.b[...] = model.ops.asarray(W), model.ops.asarray(b)
    X = rng.normal(size=(n, c, h, w))
    tX, tW, tb = t(X, True), t(W, True), t(b, True)
    tY = F.conv2d(tX, tW, tb, stride=s, padding=p)
    tY = {None: lambda z: z, "relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
          "leaky_relu": lambda z: F.leaky_relu(z, 0.01)}[activation](tY)
    dY = rng.normal(size=tuple(tY.shape))
    tY.backward(t(dY))
    Y = host(model.forward(X, training=True))
    dX = host(model.backward(model.ops.asarray(dY)))
    np.testing.assert_allclose(Y, tY.detach().numpy(), **TOL)
    np.testing.assert_allclose(dX, tX.grad.numpy(), **TOL)
    np.testing.assert_allclose(host(conv.dW), tW.grad.numpy(), **TOL)
    np.testing.assert_allclose(host(conv.db), tb.grad.numpy(), **TOL)


def test_conv2d_weights_copy_from_torch_unchanged(backend):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 5, (3, 2), stride=(1, 2), padding=(1, 0), dtype=torch.float64)
    conv = sn.Conv2D(3, 5, (3, 2), stride=(1, 2), padding=(1, 0))
    model = sn.Sequential([conv], dtype="float64", backend=backend)
    conv.W[...] = model.ops.asarray(ref.weight.detach().numpy())
    conv.b[...] = model.ops.asarray(ref.bias.detach().numpy())
    X = np.random.default_rng(1).normal(size=(2, 3, 6, 7))
    np.testing.assert_allclose(host(model.forward(X)), ref(t(X)).detach().numpy(), **TOL)


POOLS = [((2, 2), None), ((3, 2), (1, 2)), ((3, 3), (2, 2)), ((2, 3), (3, 1)), ((1, 1), None)]


@pytest.mark.parametrize("pool, stride", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool2d_matches_torch(backend, pool, stride, ties):
    rng = np.random.default_rng(2)
    shape = (2, 3, 8, 9)
    # integers in 0..2: most windows hold their maximum more than once
    X = rng.integers(0, 3, size=shape).astype(float) if ties else rng.normal(size=shape)
    tX = t(X, True)
    tY = F.max_pool2d(tX, pool, stride)
    dY = rng.normal(size=tuple(tY.shape))
    tY.backward(t(dY))
    Y, dX = run_layer(sn.MaxPool2D(pool, stride), backend, X, dY)
    np.testing.assert_allclose(Y, tY.detach().numpy(), **TOL)
    np.testing.assert_allclose(dX, tX.grad.numpy(), **TOL)


@pytest.mark.parametrize("pool, stride", POOLS)
def test_avg_pool2d_matches_torch(backend, pool, stride):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 3, 8, 9))
    tX = t(X, True)
    tY = F.avg_pool2d(tX, pool, stride)
    dY = rng.normal(size=tuple(tY.shape))
    tY.backward(t(dY))
    Y, dX = run_layer(sn.AvgPool2D(pool, stride), backend, X, dY)
    np.testing.assert_allclose(Y, tY.detach().numpy(), **TOL)
    np.testing.assert_allclose(dX, tX.grad.numpy(), **TOL)


def test_global_avg_pool2d_matches_torch(backend):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3, 4, 5, 6))
    tX = t(X, True)
    tY = F.adaptive_avg_pool2d(tX, 1).flatten(1)
    dY = rng.normal(size=(3, 4))
    tY.backward(t(dY))
    Y, dX = run_layer(sn.GlobalAvgPool2D(), backend, X, dY)
    np.testing.assert_allclose(Y, tY.detach().numpy(), **TOL)
    np.testing.assert_allclose(dX, tX.grad.numpy(), **TOL)


def test_batchnorm2d_matches_torch(backend):
    rng = np.random.default_rng(5)
    c = 4
    bn = sn.BatchNorm2D(c, eps=1e-5, momentum=0.1)
    model = sn.Sequential([bn], dtype="float64", backend=backend)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    bn.gamma[...], bn.beta[...] = model.ops.asarray(gamma), model.ops.asarray(beta)
    ref = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(t(gamma))
        ref.bias.copy_(t(beta))
    ref.train()
    for step in range(3):          # running statistics after several batches
        X = rng.normal(size=(3, c, 5, 4)) * (step + 1) + step
        tX = t(X, True)
        ref.zero_grad()
        tY = ref(tX)
        dY = rng.normal(size=X.shape)
        tY.backward(t(dY))
        Y = host(model.forward(X, training=True))
        dX = host(model.backward(model.ops.asarray(dY)))
        np.testing.assert_allclose(Y, tY.detach().numpy(), **TOL)
        np.testing.assert_allclose(dX, tX.grad.numpy(), **TOL)
        np.testing.assert_allclose(host(bn.dgamma), ref.weight.grad.numpy(), **TOL)
        np.testing.assert_allclose(host(bn.dbeta), ref.bias.grad.numpy(), **TOL)
        np.testing.assert_allclose(host(bn.running_mean), ref.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(host(bn.running_var), ref.running_var.numpy(), **TOL)
    # evaluation: the running statistics, and gradients through them as constants
    ref.eval()
    ref.zero_grad()
    X = rng.normal(size=(2, c, 3, 3))
    tX = t(X, True)
    tY = ref(tX)
    dY = rng.normal(size=X.shape)
    tY.backward(t(dY))
    Y = host(model.forward(X, training=False))
    dX = host(model.backward(model.ops.asarray(dY)))
    np.testing.assert_allclose(Y, tY.detach().numpy(), **TOL)
    np.testing.assert_allclose(dX, tX.grad.numpy(), **TOL)
    np.testing.assert_allclose(host(bn.dgamma), ref.weight.grad.numpy(), **TOL)


def test_small_cnn_training_matches_torch(backend):
    """Three SGD-with-momentum steps of a small CNN: same weights after each."""
    rng = np.random.default_rng(6)
    model = sn.Sequential([
        sn.Conv2D(1, 4, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2),
        sn.Conv2D(4, 6, 3, stride=2, padding=1), sn.BatchNorm2D(6), sn.Tanh(), sn.AvgPool2D(2),
        sn.Flatten(), sn.Dense(6, 5)], seed=0, dtype="float64", backend=backend)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.nn.BatchNorm2d(6), torch.nn.Tanh(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(6, 5)).double()
    with torch.no_grad():
        for i in (0, 3):
            ref[i].weight.copy_(t(host(model.layers[i].W)))
            ref[i].bias.copy_(t(host(model.layers[i].b)))
        ref[8].weight.copy_(t(host(model.layers[8].W).T))
        ref[8].bias.copy_(t(host(model.layers[8].b)))
    X, y = rng.normal(size=(6, 1, 8, 8)), rng.integers(0, 5, size=6)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(lr=0.1, momentum=0.9),
              epochs=3, batch_size=6, shuffle=False)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(ref(t(X)), torch.tensor(y)).backward()
        opt.step()
    np.testing.assert_allclose(host(model.layers[0].W), ref[0].weight.detach().numpy(), **TOL)
    np.testing.assert_allclose(host(model.layers[3].W), ref[3].weight.detach().numpy(), **TOL)
    np.testing.assert_allclose(host(model.layers[4].gamma), ref[4].weight.detach().numpy(), **TOL)
    np.testing.assert_allclose(host(model.layers[4].running_var), ref[4].running_var.numpy(),
                               **TOL)
    np.testing.assert_allclose(host(model.layers[8].W), ref[8].weight.detach().numpy().T, **TOL)
