"""Sequence layers against PyTorch as the oracle: torch.nn.RNN (tanh and relu),
LSTM, GRU and Embedding on copied weights -- outputs, input gradients and every
weight gradient, in float64 --, the gradient reaching each hidden state
through time against torch's cells, cross-entropy on sequences, and an
LSTM classifier's Adam trajectory."""

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import get_ops
from conftest import to_host as host

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = dict(rtol=1e-10, atol=1e-10)


pytestmark = pytest.mark.usefixtures("one_torch_and_blas_thread")


def t(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


def torch_twin(layer):
    """The torch.nn module with ``layer``'s weights: weight_ih = W.T,
    weight_hh = U.T; LSTM/RNN: b_ih = b, b_hh = 0; GRU: b_ih = b, b_hh = bU."""
    f, h = layer.input_size, layer.hidden_size
    if isinstance(layer, sn.LSTM):
        module = torch.nn.LSTM(f, h, batch_first=True)
    elif isinstance(layer, sn.GRU):
        module = torch.nn.GRU(f, h, batch_first=True)
    else:
        module = torch.nn.RNN(f, h, nonlinearity=layer.activation, batch_first=True)
    module = module.double()
    with torch.no_grad():
        module.weight_ih_l0.copy_(t(host(layer.W).T))
        module.weight_hh_l0.copy_(t(host(layer.U).T))
        module.bias_ih_l0.copy_(t(host(layer.b)))
        if isinstance(layer, sn.GRU):
            module.bias_hh_l0.copy_(t(host(layer.bU)))
        else:
            module.bias_hh_l0.zero_()
    return module


def make(kind, f, h, return_sequences):
    if kind.startswith("rnn"):
        return sn.RNN(f, h, activation=kind.split("-")[1], return_sequences=return_sequences)
    if kind == "lstm":
        return sn.LSTM(f, h, return_sequences=return_sequences, forget_bias=1.0)
    return sn.GRU(f, h, return_sequences=return_sequences)


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("n, steps", [(3, 7), (1, 1), (2, 12)])
@pytest.mark.parametrize("kind", ["rnn-tanh", "rnn-relu", "lstm", "gru"])
def test_recurrent_layer_matches_torch(backend, kind, n, steps, return_sequences):
    rng = np.random.default_rng(steps)
    f, h = 4, 5
    layer = make(kind, f, h, return_sequences)
    model = sn.Sequential([layer], seed=0, dtype="float64", backend=backend)
    module = torch_twin(layer)
    X = rng.normal(size=(n, steps, f))
    tX = t(X, True)
    tY, _ = module(tX)
    if not return_sequences:
        tY = tY[:, -1]
    dY = rng.normal(size=tuple(tY.shape))
    tY.backward(t(dY))
    Y = host(model.forward(X))
    dX = host(model.backward(model.ops.asarray(dY)))
    np.testing.assert_allclose(Y, tY.detach().numpy(), err_msg="Y", **TOL)
    np.testing.assert_allclose(dX, tX.grad.numpy(), err_msg="dX", **TOL)
    np.testing.assert_allclose(host(layer.dW), module.weight_ih_l0.grad.numpy().T,
                               err_msg="dW", **TOL)
    np.testing.assert_allclose(host(layer.dU), module.weight_hh_l0.grad.numpy().T,
                               err_msg="dU", **TOL)
    np.testing.assert_allclose(host(layer.db), module.bias_ih_l0.grad.numpy(), err_msg="db",
                               **TOL)
    if kind == "gru":
        np.testing.assert_allclose(host(layer.dbU), module.bias_hh_l0.grad.numpy(),
                                   err_msg="dbU", **TOL)
    else:      # b_ih and b_hh enter the same sum: their gradients are equal
        np.testing.assert_allclose(module.bias_hh_l0.grad.numpy(), host(layer.db), **TOL)


@pytest.mark.parametrize("kind", ["rnn-tanh", "lstm", "gru"])
def test_gradient_through_time_matches_torch_cells(backend, kind):
    """dh_norms[t] is ||dL/dh_t||: the gradient reaching h_t from the output at t
    and from step t+1, as torch computes it for the hidden state of a cell loop."""
    rng = np.random.default_rng(0)
    n, steps, f, h = 3, 6, 2, 4
    layer = make(kind, f, h, return_sequences=True)
    model = sn.Sequential([layer], seed=1, dtype="float64", backend=backend)
    module = torch_twin(layer)
    cell = {"rnn-tanh": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell,
            "gru": torch.nn.GRUCell}[kind](f, h).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(module, name + "_l0"))
    X = rng.normal(size=(n, steps, f))
    dY = rng.normal(size=(n, steps, h))
    state = torch.zeros(n, h, dtype=torch.float64)
    c = torch.zeros(n, h, dtype=torch.float64)
    hs = []
    for s in range(steps):
        if kind == "lstm":
            state, c = cell(t(X[:, s]), (state, c))
        else:
            state = cell(t(X[:, s]), state)
        state.retain_grad()
        hs.append(state)
    (torch.stack(hs, dim=1) * t(dY)).sum().backward()
    want = [float(x.grad.norm()) for x in hs]
    model.forward(X)
    model.backward(model.ops.asarray(dY))
    np.testing.assert_allclose(host(layer.dh_norms), want, **TOL)


def test_embedding_matches_torch(backend):
    rng = np.random.default_rng(0)
    emb = sn.Embedding(10, 4)
    model = sn.Sequential([emb], seed=0, dtype="float64", backend=backend)
    module = torch.nn.Embedding(10, 4).double()
    with torch.no_grad():
        module.weight.copy_(t(host(emb.W)))
    ids = np.array([[1, 1, 9, 0, 1], [4, 9, 9, 2, 0]])      # repeats add up
    tY = module(torch.tensor(ids))
    dY = rng.normal(size=tuple(tY.shape))
    tY.backward(t(dY))
    np.testing.assert_allclose(host(model.forward(ids)), tY.detach().numpy(), **TOL)
    model.backward(model.ops.asarray(dY))
    np.testing.assert_allclose(host(emb.dW), module.weight.grad.numpy(), **TOL)


def test_sequence_cross_entropy_matches_torch(backend):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 5)) * 3
    y = rng.integers(0, 5, size=(4, 6))
    tz = t(logits, True)
    tl = F.cross_entropy(tz.permute(0, 2, 1), torch.tensor(y))     # (N, C, T), mean over N*T
    tl.backward()
    ops = get_ops(backend)
    loss = sn.SoftmaxCrossEntropy()
    assert loss.forward(ops.asarray(logits), y) == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(host(loss.backward()), tz.grad.numpy(), **TOL)


def test_character_model_matches_torch(backend):
    """Embedding -> LSTM(return_sequences) -> Dense on every step, with
    cross-entropy over every step: the language model's stack."""
    rng = np.random.default_rng(3)
    v, d, h, n, steps = 7, 3, 4, 2, 5
    model = sn.Sequential([sn.Embedding(v, d), sn.LSTM(d, h, return_sequences=True),
                           sn.Dense(h, v)], seed=0, dtype="float64", backend=backend)
    emb, lstm, dense = model.layers
    temb = torch.nn.Embedding(v, d).double()
    tlstm = torch_twin(lstm)
    tdense = torch.nn.Linear(h, v).double()
    with torch.no_grad():
        temb.weight.copy_(t(host(emb.W)))
        tdense.weight.copy_(t(host(dense.W).T))
        tdense.bias.copy_(t(host(dense.b)))
    ids = rng.integers(0, v, size=(n, steps))
    y = rng.integers(0, v, size=(n, steps))
    tout = tdense(tlstm(temb(torch.tensor(ids)))[0])
    tl = F.cross_entropy(tout.reshape(-1, v), torch.tensor(y).reshape(-1))
    tl.backward()
    loss = sn.SoftmaxCrossEntropy()
    out = model.forward(ids, training=True)
    assert loss.forward(out, y) == pytest.approx(tl.item(), rel=1e-12)
    model.backward(loss.backward())
    np.testing.assert_allclose(host(emb.dW), temb.weight.grad.numpy(), **TOL)
    np.testing.assert_allclose(host(lstm.dU), tlstm.weight_hh_l0.grad.numpy().T, **TOL)
    np.testing.assert_allclose(host(dense.dW), tdense.weight.grad.numpy().T, **TOL)


def test_lstm_classifier_adam_trajectory_matches_torch(backend):
    rng = np.random.default_rng(1)
    n, steps, f, h, c = 16, 5, 3, 6, 4
    X = rng.normal(size=(n, steps, f))
    y = rng.integers(0, c, size=n)
    model = sn.Sequential([sn.LSTM(f, h, return_sequences=True), sn.GRU(h, h),
                           sn.Dense(h, c)], seed=0, dtype="float64", backend=backend)
    lstm, gru, dense = model.layers
    tl, tg = torch_twin(lstm), torch_twin(gru)
    td = torch.nn.Linear(h, c).double()
    with torch.no_grad():
        td.weight.copy_(t(host(dense.W).T))
        td.bias.copy_(t(host(dense.b)))
    # b_hh of the LSTM is not a parameter of ours: keep torch's at zero
    tl.bias_hh_l0.requires_grad_(False)
    params = [p for p in [*tl.parameters(), *tg.parameters(), *td.parameters()] if p.requires_grad]
    topt = torch.optim.Adam(params, lr=1e-2)
    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(1e-2), epochs=3,
              batch_size=8, shuffle=False)
    for _ in range(3):
        for start in range(0, n, 8):
            topt.zero_grad()
            out = td(tg(tl(t(X[start:start + 8]))[0])[0][:, -1])
            F.cross_entropy(out, torch.tensor(y[start:start + 8])).backward()
            topt.step()
    np.testing.assert_allclose(host(lstm.U), tl.weight_hh_l0.detach().numpy().T, rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(host(gru.bU), tg.bias_hh_l0.detach().numpy(), rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(host(dense.W), td.weight.detach().numpy().T, rtol=1e-9, atol=1e-9)
