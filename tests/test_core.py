"""The core for every kind of network: N-D inputs and Flatten, layers used more
than once, summary, the training loop in parts (batch source, train steps,
gradient hooks, clipping), parameter groups and network2's L2, the flat
parameter buffer, fusion owned by the layer, layers that register themselves."""

import io
import re

import numpy as np
import pytest

import scratchnet as sn
from scratchnet import layers as L
from scratchnet.training import BatchSource, MatrixStep, PerSampleStep
from conftest import to_host as host


def tied_model(backend, dtype="float64", seed=0):
    d = sn.Dense(4, 4, init="xavier")
    return sn.Sequential([d, sn.Tanh(), d, sn.Tanh(), sn.Dense(4, 3)], seed=seed, dtype=dtype,
                         backend=backend), d


def data(n=10, d=4, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, size=n)


# --- layers used more than once ------------------------------------------------

def test_tied_layer_is_one_parameter_set(backend):
    model, d = tied_model(backend)
    paths = [p for p, _, _ in model.named_parameters()]
    assert paths == ["0.W", "0.b", "4.W", "4.b"]
    assert model.count_params() == 4 * 4 + 4 + 4 * 3 + 3


def test_tied_layer_gradient_is_the_sum_over_its_uses(backend):
    model, d = tied_model(backend)
    result = sn.gradcheck(model, sn.SoftmaxCrossEntropy(), *data())
    assert result.passed, result
    assert set(result.errors) == {"0.W", "0.b", "4.W", "4.b", "input"}


def test_tied_layer_gradient_by_hand(backend):
    """The same tied network written out in NumPy: dW = sum over both uses."""
    model, d = tied_model(backend)
    X, y = data()
    W, b = host(d.W).copy(), host(d.b).copy()
    W2, b2 = host(model.layers[4].W).copy(), host(model.layers[4].b).copy()
    loss = sn.SoftmaxCrossEntropy()
    loss.forward(model.forward(X, training=True), y)
    model.backward(loss.backward())
    # by hand
    h1 = np.tanh(X @ W + b)
    h2 = np.tanh(h1 @ W + b)
    z = h2 @ W2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1
    dz /= len(y)
    dh2 = dz @ W2.T
    da2 = dh2 * (1 - h2 ** 2)
    dW = h1.T @ da2
    db = da2.sum(0)
    dh1 = da2 @ W.T
    da1 = dh1 * (1 - h1 ** 2)
    dW += X.T @ da1
    db += da1.sum(0)
    np.testing.assert_allclose(host(d.dW), dW, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(d.db), db, rtol=1e-10, atol=1e-12)


def test_tied_layer_against_torch(backend):
    torch = pytest.importorskip("torch")
    model, d = tied_model(backend, seed=2)
    X, y = data(seed=3)
    lin = torch.nn.Linear(4, 4).double()
    out = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(host(d.W).T))
        lin.bias.copy_(torch.tensor(host(d.b)))
        out.weight.copy_(torch.tensor(host(model.layers[4].W).T))
        out.bias.copy_(torch.tensor(host(model.layers[4].b)))
    params = list(lin.parameters()) + list(out.parameters())
    topt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    opt = sn.SGD(lr=0.1, momentum=0.9)
    loss = sn.SoftmaxCrossEntropy()
    for step in range(5):
        value = loss.forward(model.forward(X, training=True), y)
        model.backward(loss.backward())
        opt.step(model)
        topt.zero_grad()
        ref = torch.nn.functional.cross_entropy(
            out(torch.tanh(lin(torch.tanh(lin(torch.tensor(X)))))), torch.tensor(y))
        ref.backward()
        topt.step()
        assert value == pytest.approx(ref.item(), rel=1e-10)
    np.testing.assert_allclose(host(d.W), lin.weight.detach().numpy().T, rtol=1e-9, atol=1e-12)


def test_tied_model_per_sample_equals_minibatch(backend):
    a, _ = tied_model(backend, seed=5)
    b = a.copy()
    X, y = data(n=12, seed=6)
    kw = dict(loss=sn.SoftmaxCrossEntropy(), epochs=2, batch_size=4, shuffle=False)
    a.fit(X, y, optimizer=sn.SGD(0.1), mode="minibatch", **kw)
    b.fit(X, y, optimizer=sn.SGD(0.1), mode="per_sample", **kw)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(host(pa), host(pb), rtol=1e-12, atol=1e-14)


def test_gradcheck_catches_a_broken_backward_in_a_tied_model(backend):
    class Broken(sn.Dense):
        def backward(self, dY, need_input_grad=True):
            dX = super().backward(dY, need_input_grad)
            self.dW *= 1.01               # a 1% error in the weight gradient
            return dX

    d = Broken(4, 4)
    model = sn.Sequential([d, sn.Tanh(), d, sn.Dense(4, 3)], seed=0, dtype="float64",
                          backend=backend)
    result = sn.gradcheck(model, sn.SoftmaxCrossEntropy(), *data())
    assert not result.passed
    assert result.errors["0.W"] > 1e-3


def test_gradcheck_checks_the_model_itself_and_leaves_it_unchanged(backend):
    model = sn.Sequential([sn.Dense(4, 5), sn.BatchNorm(5), sn.ReLU(), sn.Dropout(0.3),
                           sn.Dense(5, 3)], seed=1, dtype="float32", backend=backend)
    before = [host(p).copy() for p in model.parameters()]
    bn = model.layers[1]
    stats = host(bn.running_mean).copy(), host(bn.running_var).copy()
    state = model.ops.rng_state(model.layers[3].rng)
    result = sn.gradcheck(model, sn.SoftmaxCrossEntropy(), *data())
    assert result.passed, result
    assert model.dtype == np.float32 and model.layers[0].W.dtype == np.float32
    for p, q in zip(before, model.parameters()):
        np.testing.assert_array_equal(p, host(q))
    np.testing.assert_array_equal(stats[0], host(bn.running_mean))
    np.testing.assert_array_equal(stats[1], host(bn.running_var))
    assert model.ops.rng_state(model.layers[3].rng) == state
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1))   # still trains


def test_a_layer_cannot_join_two_models():
    layers = [sn.Dense(4, 3), sn.ReLU()]
    first = sn.Sequential(layers, seed=0)
    W = host(first.layers[0].W).copy()
    with pytest.raises(ValueError, match="already belongs to another model.*model.copy"):
        sn.Sequential(layers, seed=1)
    np.testing.assert_array_equal(host(first.layers[0].W), W)    # not re-initialised
    with pytest.raises(ValueError, match="already belongs"):
        sn.Sequential([sn.Residual([layers[0]])])


def test_a_layer_is_free_again_when_its_model_is_gone():
    layers = [sn.Dense(4, 3)]
    first = sn.Sequential(layers, seed=0)
    del first
    sn.Sequential(layers, seed=1)


def test_tied_layers_survive_copy_and_save(backend, tmp_path):
    model, d = tied_model(backend)
    X, y = data()
    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01), epochs=2)
    clone = model.copy()
    assert clone.layers[0] is clone.layers[2]
    model.save(tmp_path / "tied.npz")
    loaded = sn.load(tmp_path / "tied.npz", backend=backend)
    assert loaded.layers[0] is loaded.layers[2]
    assert loaded.count_params() == model.count_params()
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-12)
    # training continues identically from the file
    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=model.optimizer, epochs=1)
    loaded.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=loaded.optimizer, epochs=1)
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-12)


# --- shapes, Flatten, summary -------------------------------------------------------

def image_model(backend, dtype="float64"):
    return sn.Sequential([sn.Flatten(), sn.Dense(28 * 28, 16, activation="relu"),
                          sn.Dense(16, 10)], seed=0, dtype=dtype, backend=backend)


def test_flatten_feeds_images_to_dense(backend):
    rng = np.random.default_rng(0)
    X = rng.random((20, 1, 28, 28))
    y = rng.integers(0, 10, 20)
    model = image_model(backend)
    assert model.forward(X).shape == (20, 10)
    assert model.predict(X, batch_size=7).shape == (20, 10)
    hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(1e-2), epochs=3,
                     batch_size=8, validation_data=(X[:5], y[:5]))
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert set(model.evaluate(X, y, loss=sn.SoftmaxCrossEntropy())) == {"loss", "accuracy"}
    dX = model.backward(model.ops.asarray(np.ones((20, 10))))
    assert dX.shape == X.shape
    result = sn.gradcheck(model, sn.SoftmaxCrossEntropy(), X[:3], y[:3], max_entries=16)
    assert result.passed, result


def test_flatten_per_sample_equals_minibatch(backend):
    rng = np.random.default_rng(1)
    X, y = rng.random((12, 2, 3, 4)), rng.integers(0, 3, 12)
    a = sn.Sequential([sn.Flatten(), sn.Dense(24, 5), sn.Sigmoid(), sn.Dense(5, 3)], seed=0,
                      dtype="float64", backend=backend)
    b = a.copy()
    kw = dict(loss=sn.SoftmaxCrossEntropy(), optimizer=None, epochs=2, batch_size=5)
    a.fit(X, y, **{**kw, "optimizer": sn.SGD(0.5)}, mode="minibatch")
    b.fit(X, y, **{**kw, "optimizer": sn.SGD(0.5)}, mode="per_sample")
    np.testing.assert_allclose(a.flat_parameters(), b.flat_parameters(), rtol=1e-12, atol=1e-14)


def test_image_input_errors_name_the_shapes(backend):
    model = image_model(backend)
    with pytest.raises(ValueError, match=r"X of shape \(4, 1, 28, 27\) does not fit.*784.*756"):
        model.predict(np.zeros((4, 1, 28, 27)))
    with pytest.raises(ValueError, match=r"X must be 2-D.*\(784,\)"):
        model.predict(np.zeros(784))
    dense_first = sn.Sequential([sn.Dense(784, 10)], backend=backend)
    with pytest.raises(ValueError, match=r"must be 2-D with shape \(N, 784\).*Flatten"):
        dense_first.predict(np.zeros((2, 1, 28, 28)))
    with pytest.raises(ValueError, match=r"expects 784 input features.*gives \(N, 28, 28\).*"
                                         r"Flatten"):
        sn.Sequential([sn.Dense(784, 10)]).summary(input_shape=(28, 28))


def test_output_shape_per_layer():
    assert sn.Flatten().output_shape((3, 4, 5)) == (60,)
    assert sn.Dense(60, 7).output_shape((60,)) == (7,)
    assert sn.ReLU().output_shape((3, 4)) == (3, 4)
    with pytest.raises(ValueError, match="BatchNorm"):
        sn.BatchNorm(5).output_shape((4,))


def test_summary_rows_shapes_and_total():
    model = sn.Sequential([sn.Flatten(), sn.Dense(784, 32, activation="relu"), sn.Dropout(0.1),
                           sn.Dense(32, 10)], seed=0)
    text = model.summary(input_shape=(1, 28, 28))
    lines = text.splitlines()
    assert re.match(r"#\s+layer\s+output shape\s+params$", lines[0])
    rows = lines[2:6]
    assert "(N, 784)" in rows[0] and rows[0].rstrip().endswith(" 0")
    assert "(N, 32)" in rows[1] and rows[1].rstrip().endswith("25,120")
    assert "(N, 10)" in rows[3] and rows[3].rstrip().endswith("330")
    # aligned columns: the output-shape column starts at the same place in every row
    starts = {line.index("(N,") for line in rows}
    assert len(starts) == 1
    assert "total parameters: 25,450" in lines[-1]
    assert model.count_params() == 25_450


def test_summary_without_data_and_with_a_tied_layer():
    model, _ = tied_model("numpy")
    text = model.summary()
    assert "(tied)" in text and "(N, 3)" in text
    unknown = sn.Sequential([sn.Flatten(), sn.Dense(12, 2)]).summary()
    assert "?" in unknown.splitlines()[2]


# --- fusion belongs to the layer -----------------------------------------------------

@pytest.mark.parametrize("kind, layer", [("relu", sn.ReLU), ("sigmoid", sn.Sigmoid),
                                         ("tanh", sn.Tanh), ("leaky_relu", sn.LeakyReLU)])
def test_dense_activation_argument_equals_two_layers(backend, kind, layer, tmp_path):
    fused = sn.Sequential([sn.Dense(5, 4, activation=kind), sn.Dense(4, 3)], seed=0,
                          dtype="float64", backend=backend)
    pair = sn.Sequential([sn.Dense(5, 4), layer(), sn.Dense(4, 3)], seed=0, dtype="float64",
                         backend=backend)
    X, y = data(d=5)
    np.testing.assert_allclose(fused.predict(X), pair.predict(X), rtol=1e-13)
    assert sn.gradcheck(fused, sn.SoftmaxCrossEntropy(), X, y).passed
    fused.save(tmp_path / "f.npz")
    assert sn.load(tmp_path / "f.npz").layers[0].activation == kind


def test_unknown_activation_name():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        sn.Dense(3, 2, activation="swish")


# --- the training loop in parts --------------------------------------------------------

def test_batch_source_covers_every_row_once_per_epoch():
    src = BatchSource(103, 10, shuffle=True, rng=np.random.default_rng(0))
    batches = src.epoch(sn.get_backend())
    assert len(batches) == len(src) == 11
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))


def test_batch_source_folds_a_short_last_batch():
    src = BatchSource(21, 10, shuffle=False, min_batch=2)
    assert src.bounds() == [(0, 10), (10, 21)]
    assert BatchSource(21, 10, shuffle=False).bounds() == [(0, 10), (10, 20), (20, 21)]


def test_batch_source_gathers_any_rank(backend):
    ops = sn.use_backend  # noqa: F841 (the fixture picks the backend below)
    from scratchnet.backends import get_ops
    ops = get_ops(backend)
    X = ops.asarray(np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3))
    src = BatchSource(5, 2, shuffle=False)
    idx = ops.asarray(np.array([4, 1]))
    np.testing.assert_array_equal(host(src.gather(ops, X, idx)), host(X)[[4, 1]])


def test_train_steps_side_by_side_give_the_same_gradient(backend):
    model = sn.Sequential([sn.Dense(4, 6), sn.Tanh(), sn.Dense(6, 3)], seed=0, dtype="float64",
                          backend=backend)
    X, y = data(n=8)
    X, y = model.ops.asarray(X), model.ops.asarray(y)
    loss = sn.SoftmaxCrossEntropy()
    v1, _ = MatrixStep(model, loss)(X, y)
    g1 = host(model.flat_gradients()).copy()
    v2, _ = PerSampleStep(model, loss)(X, y)
    np.testing.assert_allclose(host(model.flat_gradients()), g1, rtol=1e-12, atol=1e-15)
    assert float(v1) == pytest.approx(float(v2), rel=1e-12)


def test_gradient_hooks_run_between_backward_and_update(backend):
    model = sn.Sequential([sn.Dense(4, 3)], seed=0, backend=backend)
    seen = []

    def record(m):
        seen.append(float(np.abs(host(m.flat_gradients())).sum()))

    def freeze(m):
        m.flat_gradients()[...] = 0

    before = host(model.flat_parameters()).copy()
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=1,
              batch_size=5, grad_hooks=[record, freeze])
    assert len(seen) == 2 and all(s > 0 for s in seen)
    np.testing.assert_array_equal(host(model.flat_parameters()), before)
    with pytest.raises(TypeError, match="grad_hooks"):
        model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1),
                  grad_hooks=["clip"])


def test_clip_grad_norm_matches_torch(backend):
    torch = pytest.importorskip("torch")
    model = sn.Sequential([sn.Dense(4, 6), sn.Tanh(), sn.Dense(6, 3)], seed=0, dtype="float64",
                          backend=backend)
    loss = sn.SoftmaxCrossEntropy()
    X, y = data()
    loss.forward(model.forward(X, training=True), y)
    model.backward(loss.backward())
    grads = [torch.tensor(host(g).copy()) for g in
             (getattr(layer, "d" + name) for _, layer, name in model.named_parameters())]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(params, 0.05)
    norm = sn.clip_grad_norm(model, 0.05)
    assert float(norm) == pytest.approx(ref_norm.item(), rel=1e-12)
    for (_, layer, name), p in zip(model.named_parameters(), params):
        np.testing.assert_allclose(host(getattr(layer, "d" + name)), p.grad.numpy(),
                                   rtol=1e-12, atol=1e-15)


def test_fit_clip_grad_norm_equals_a_clipped_loop(backend):
    a = sn.Sequential([sn.Dense(4, 6), sn.ReLU(), sn.Dense(6, 3)], seed=0, dtype="float64",
                      backend=backend)
    b = a.copy()
    X, y = data(n=12)
    a.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.5), epochs=2, batch_size=4,
          shuffle=False, clip_grad_norm=0.1)
    loss, opt = sn.SoftmaxCrossEntropy(), sn.SGD(0.5)
    norms = []
    for _ in range(2):
        for i in range(0, 12, 4):
            loss.forward(b.forward(X[i:i + 4], training=True), y[i:i + 4])
            b.backward(loss.backward())
            norms.append(float(sn.clip_grad_norm(b, 0.1)))
            opt.step(b)
    assert max(norms) > 0.1               # the clipping did something
    np.testing.assert_allclose(host(a.flat_parameters()), host(b.flat_parameters()),
                               rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="clip_grad_norm must be > 0"):
        a.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.5), clip_grad_norm=0)


def test_callbacks_see_every_event_in_order():
    events = []

    class Spy(sn.Callback):
        def on_train_begin(self, model): events.append("train_begin")
        def on_epoch_begin(self, model, epoch): events.append(f"epoch_begin {epoch}")
        def on_batch_end(self, model, step): events.append(f"batch {step}")
        def on_epoch_end(self, model, epoch, logs): events.append(f"epoch_end {epoch}")
        def on_train_end(self, model, history): events.append("train_end")

    model = sn.Sequential([sn.Dense(4, 3)], seed=0)
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=2,
              batch_size=5, callbacks=[Spy()])
    assert events == ["train_begin", "epoch_begin 0", "batch 0", "batch 1", "epoch_end 0",
                      "epoch_begin 1", "batch 0", "batch 1", "epoch_end 1", "train_end"]


# --- parameters: the flat buffer, groups, network2's L2 ---------------------------------

def test_parameters_and_gradients_are_views_of_one_buffer(backend):
    model = sn.Sequential([sn.Dense(4, 5), sn.BatchNorm(5), sn.Dense(5, 3)], seed=0,
                          backend=backend)
    flat, grads = model.flat_parameters(), model.flat_gradients()
    assert flat.shape == (model.count_params(),)
    joined = np.concatenate([host(p).ravel() for p in model.parameters()])
    np.testing.assert_array_equal(host(flat), joined)
    model.layers[0].W[0, 0] = 7.0
    assert float(flat[0]) == 7.0
    loss = sn.SoftmaxCrossEntropy()
    loss.forward(model.forward(data(d=4)[0], training=True), data()[1])
    model.backward(loss.backward())
    joined = np.concatenate([host(getattr(layer, "d" + name)).ravel()
                             for _, layer, name in model.named_parameters()])
    np.testing.assert_array_equal(host(grads), joined)


def test_views_survive_moving_and_loading(backend, tmp_path):
    model = sn.Sequential([sn.Dense(4, 5), sn.Dense(5, 3)], seed=0, backend="numpy")
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01))
    model.to(backend)
    flat = model.flat_parameters()
    flat[...] = 0.5
    assert float(model.layers[1].b[0]) == 0.5
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=model.optimizer)
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz", backend=backend)
    loaded.flat_parameters()[...] = 0.25
    assert float(loaded.layers[0].W[0, 0]) == 0.25


def test_weight_decay_skips_excluded_parameters(backend):
    model = sn.Sequential([sn.Dense(3, 2)], seed=0, dtype="float64", backend=backend)
    W, b = host(model.layers[0].W).copy(), host(model.layers[0].b).copy() + 1
    model.layers[0].b[...] = model.ops.asarray(b)
    model.layers[0].dW[...] = 0
    model.layers[0].db[...] = 0
    sn.SGD(lr=0.1, weight_decay=0.5, exclude_from_weight_decay=("b",)).step(model)
    np.testing.assert_allclose(host(model.layers[0].W), W * (1 - 0.05), rtol=1e-14)
    np.testing.assert_array_equal(host(model.layers[0].b), b)
    sn.Adam(lr=0.1, weight_decay=0.5, exclude_from_weight_decay=("0.W",)).step(model)
    np.testing.assert_allclose(host(model.layers[0].W), W * (1 - 0.05), rtol=1e-14)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def network2_sgd_l2(weights, biases, X, T, eta, lmbda, n, batch):
    """network2.py's update_mini_batch with L2 and the cross-entropy cost, in
    float64: per sample backprop (column vectors), delta = a - y at the output,
    w <- (1 - eta*lmbda/n) w - eta/m * nabla_w, b <- b - eta/m * nabla_b."""
    weights = [w.copy() for w in weights]
    biases = [b.copy() for b in biases]
    for start in range(0, len(X), batch):
        xs, ts = X[start:start + batch], T[start:start + batch]
        nabla_w = [np.zeros_like(w) for w in weights]
        nabla_b = [np.zeros_like(b) for b in biases]
        for x, t in zip(xs, ts):
            a, acts, zs = x.reshape(-1, 1), [x.reshape(-1, 1)], []
            for w, b in zip(weights, biases):
                z = w @ a + b
                zs.append(z)
                a = _sigmoid(z)
                acts.append(a)
            delta = acts[-1] - t.reshape(-1, 1)
            nabla_b[-1] += delta
            nabla_w[-1] += delta @ acts[-2].T
            for k in range(2, len(weights) + 1):
                sp = _sigmoid(zs[-k]) * (1 - _sigmoid(zs[-k]))
                delta = (weights[-k + 1].T @ delta) * sp
                nabla_b[-k] += delta
                nabla_w[-k] += delta @ acts[-k - 1].T
        m = len(xs)
        weights = [(1 - eta * lmbda / n) * w - (eta / m) * nw for w, nw in zip(weights, nabla_w)]
        biases = [b - (eta / m) * nb for b, nb in zip(biases, nabla_b)]
    return weights, biases


@pytest.mark.parametrize("mode", ["minibatch", "per_sample"])
def test_network2_l2_update_is_exact(backend, mode):
    """SGD(lr=eta*M, weight_decay=lmbda/(n*M), exclude_from_weight_decay=("b",)) with
    BinaryCrossEntropy after a Sigmoid output of M units is network2.py's L2 step."""
    rng = np.random.default_rng(0)
    n, M, eta, lmbda, batch = 30, 4, 0.5, 5.0, 10
    X = rng.random((n, 6))
    labels = rng.integers(0, M, n)
    T = np.eye(M)[labels]
    model = sn.Sequential([sn.Dense(6, 5, init="normal"), sn.Sigmoid(), sn.Dense(5, M),
                           sn.Sigmoid()], seed=1, dtype="float64", backend=backend)
    for layer in (model.layers[0], model.layers[2]):
        layer.b[...] = model.ops.asarray(rng.normal(size=layer.b.shape))
        layer.W[...] = model.ops.asarray(rng.normal(size=layer.W.shape))
    weights = [host(model.layers[i].W).T.copy() for i in (0, 2)]
    biases = [host(model.layers[i].b).reshape(-1, 1).copy() for i in (0, 2)]
    opt = sn.SGD(lr=eta * M, weight_decay=lmbda / (n * M), exclude_from_weight_decay=("b",))
    model.fit(X, T, loss=sn.BinaryCrossEntropy(), optimizer=opt, epochs=2, batch_size=batch,
              shuffle=False, mode=mode)
    for _ in range(2):
        weights, biases = network2_sgd_l2(weights, biases, X, T, eta, lmbda, n, batch)
    for i, w, b in zip((0, 2), weights, biases):
        np.testing.assert_allclose(host(model.layers[i].W), w.T, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(host(model.layers[i].b), b.ravel(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop",
                                  "adagrad"])
def test_every_optimizer_trains_and_backends_agree(backend, name):
    X, y = data(n=40, seed=4)

    def run(b):
        model = sn.Sequential([sn.Dense(4, 8), sn.ReLU(), sn.Dense(8, 3)], seed=0,
                              dtype="float64", backend=b)
        hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.get_optimizer(name),
                         epochs=5, batch_size=8)
        return hist.history["loss"], model

    losses, model = run(backend)
    ref_losses, ref = run("numpy")
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    np.testing.assert_allclose(host(model.flat_parameters()), host(ref.flat_parameters()),
                               rtol=1e-9, atol=1e-12)


def test_get_optimizer_is_the_one_factory():
    opt = sn.get_optimizer("momentum", lr=0.3)
    assert isinstance(opt, sn.SGD) and opt.momentum == 0.9 and opt.lr == 0.3
    assert sn.get_optimizer("adam", lr=None).lr == 1e-3
    assert isinstance(sn.get_optimizer("AdamW"), sn.AdamW)
    with pytest.raises(ValueError, match=r"'adam' \(Adam\) does not take momentum"):
        sn.get_optimizer("adam", momentum=0.9)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        sn.get_optimizer("lbfgs")
    same = sn.SGD(0.1)
    assert sn.get_optimizer(same) is same


def test_optimizer_refuses_a_second_model():
    opt = sn.SGD(0.1, momentum=0.9)
    a = sn.Sequential([sn.Dense(4, 3)], seed=0)
    a.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=opt)
    b = sn.Sequential([sn.Dense(4, 5), sn.Dense(5, 3)], seed=0)
    with pytest.raises(ValueError, match="holds state for another model"):
        b.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=opt)


# --- layers register themselves ---------------------------------------------------------

@sn.register_layer
class Scale(sn.Layer):
    """y = x * s, a trainable scalar per feature (a layer defined outside the library)."""

    param_names = ("s",)

    def __init__(self, n):
        super().__init__()
        self.n = n
        self._init_params(None)

    def _init_params(self, rng):
        self.s = self.ops.asarray(np.full(self.n, 2.0, self.dtype))
        self.ds = self.ops.zeros((self.n,), self.dtype)

    def get_config(self):
        return {"n": self.n}

    def forward(self, X, training=False):
        X = self._as_input(X)
        self._push(X)
        return X * self.s

    def backward(self, dY):
        X = self._pop()
        self._store_grad("s", (dY * X).sum(axis=0))
        self._done_backward()
        return dY * self.s


def test_a_registered_custom_layer_trains_saves_and_loads(tmp_path, backend):
    model = sn.Sequential([sn.Dense(4, 3), Scale(3)], seed=0, dtype="float64", backend=backend)
    assert sn.gradcheck(model, sn.SoftmaxCrossEntropy(), *data()).passed
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01), epochs=2)
    model.save(tmp_path / "custom.npz")
    loaded = sn.load(tmp_path / "custom.npz", backend=backend)
    assert isinstance(loaded.layers[1], Scale)
    np.testing.assert_allclose(loaded.predict(data()[0]), model.predict(data()[0]), rtol=1e-12)


def test_an_unregistered_layer_is_named_on_load(tmp_path):
    class Plain(sn.Layer):
        def forward(self, X, training=False):
            return X

        def backward(self, dY):
            return dY

    sn.Sequential([sn.Dense(4, 3), Plain()], seed=0).save(tmp_path / "p.npz")
    with pytest.raises(ValueError, match=r"unknown layer class 'Plain'.*register_layer"):
        sn.load(tmp_path / "p.npz")


def test_two_classes_cannot_register_one_name():
    with pytest.raises(ValueError, match="already registered"):
        @sn.register_layer
        class Dense(sn.Layer):   # noqa: F811 (a clash on purpose)
            pass
    assert L.LAYER_REGISTRY["Dense"] is sn.Dense


def test_io_only_reads_and_writes_the_format():
    """io imports nothing of the model: the model turns itself into (config,
    arrays) and back, io writes and reads them (no import circle)."""
    src = open(sn.io.__file__).read()
    assert "from .model" not in src and "from .layers" not in src and "model." not in src
    config, arrays = sn.Sequential([sn.Dense(3, 2)], seed=0).get_state()
    assert set(arrays) == {"param:0.W", "param:0.b"}
    assert sn.Sequential.from_state(config, arrays).count_params() == 8


def test_progress_writes_clean_lines_to_a_pipe():
    stream = io.StringIO()
    model = sn.Sequential([sn.Dense(4, 3)], seed=0)
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=2,
              progress=sn.training.ProgressBar(stream=stream))
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ")
    assert all(line == line.rstrip() for line in lines)


def test_progress_bar_in_a_terminal_shows_count_rate_and_loss():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    model = sn.Sequential([sn.Dense(4, 3)], seed=0)
    model.fit(*data(n=40), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=1,
              batch_size=4, progress=sn.training.ProgressBar(stream=stream, interactive=True))
    text = stream.getvalue()
    assert "10/10" in text and "loss" in text and "step/s" in text
